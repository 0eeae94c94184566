"""LoRA through peft (config keys lora_r, lora_alpha, lora_dropout, lora_target_modules; lora_r 0 = off).

peft is an optional dependency, imported only when lora_r > 0. With LoRA on:
- only the adapters train (the optimizer gets the trainable parameters; make_optimizer);
- GRPO's KL reference is the same network with its adapters disabled (`reference_model`), not a second copy: at
  the start the adapters are zero, so policy == reference exactly, as with a frozen copy;
- every checkpoint (step_N/, final/) holds the merged weights as a plain Hugging Face model, so evaluate.py, the
  inference scripts and `--init_from` load it unchanged, and the adapters beside it in ADAPTER_DIR/;
- resuming loads the adapters from ADAPTER_DIR/ onto the base model the run started from (init_from), which is
  exactly the state the run was in (the merged weights would make the merged model the KL reference instead).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mathrl.errors import UserError

ADAPTER_DIR = "adapter"


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("lora_r > 0 needs the peft package: pip install peft "
                        "(or pip install -r requirements-optional.txt)") from None
    return peft


def check_lora(config: dict) -> None:
    """Fail before anything is written when the LoRA keys are out of range or peft is missing."""
    if config["lora_r"] < 0:
        raise UserError(f"lora_r must be >= 0 (0: no LoRA), got {config['lora_r']}")
    if config["lora_r"] > 0:
        if config["lora_alpha"] <= 0:
            raise UserError(f"lora_alpha must be > 0, got {config['lora_alpha']}")
        if not 0 <= config["lora_dropout"] < 1:
            raise UserError(f"lora_dropout must be in [0, 1), got {config['lora_dropout']}")
        _peft()


def target_modules(value: str) -> str | list[str]:
    """Config `lora_target_modules`: "all-linear" (peft: every linear layer but the output head) or a
    comma-separated list of module names such as "q_proj,v_proj"."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise UserError('lora_target_modules is empty: give "all-linear" or module names such as "q_proj,v_proj"')
    return names[0] if names == ["all-linear"] else names


def apply_lora(model, config: dict):
    """The model with LoRA adapters (a peft PeftModel) when lora_r > 0, else the model itself."""
    if config["lora_r"] == 0:
        return model
    peft = _peft()
    lora_config = peft.LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"],
                                  lora_dropout=config["lora_dropout"],
                                  target_modules=target_modules(config["lora_target_modules"]), task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, lora_config)
    except ValueError as err:  # e.g. a target module name the model does not have
        raise UserError(f"lora_target_modules {config['lora_target_modules']!r}: {str(err).splitlines()[0]}") from None


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


class AdaptersDisabled:
    """Calls the LoRA model with its adapters switched off: the base network, sharing its weights."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)


def reference_model(model, device):
    """GRPO's frozen KL reference: the LoRA model's base network (no copy), or a frozen copy of a full model."""
    if is_lora(model):
        return AdaptersDisabled(model)
    return copy.deepcopy(model).eval().requires_grad_(False).to(device)


def save_model(model, directory: Path) -> None:
    """save_pretrained; a LoRA model is saved merged (a plain HF model) with its adapters in ADAPTER_DIR/."""
    if not is_lora(model):
        model.save_pretrained(directory)
        return
    model.save_pretrained(directory / ADAPTER_DIR)
    merged = copy.deepcopy(model).merge_and_unload()  # a copy: the training model keeps its adapters
    merged.save_pretrained(directory)


def load_trained_weights(model, ckpt: Path) -> None:
    """Put a checkpoint's trained weights into `model` (resume): the adapters for a LoRA model, all else otherwise."""
    if is_lora(model):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = ckpt / ADAPTER_DIR / "adapter_model.safetensors"
        if not path.is_file():
            raise UserError(f"{path}: missing; a LoRA run resumes from its adapters (saved beside the merged weights)")
        result = set_peft_model_state_dict(model, load_file(str(path)))
        if result.unexpected_keys:
            raise UserError(f"{path}: adapter weights that this LoRA model does not have "
                            f"({result.unexpected_keys[0]}, ...)")
        return
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.load_state_dict(saved.state_dict())
