"""DeepSpeed ZeRO stage 2 (an accelerate DeepSpeed launch): optimizer state and gradients partitioned over the
processes, each process keeping the full weights.

    pip install deepspeed     # optional: imported only by a DeepSpeed launch
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml train_sft.py --config configs/tiny.yaml

accelerate's DeepSpeed integration wraps the policy in a DeepSpeedEngine (modeling.prepare_policy prepares it as
for DDP), and its `backward` runs the engine's backward and, at the end of an accumulation window, the engine's
step: gradient clipping, the optimizer step and zeroing the gradients; the scripts' own `optimizer.step()` and
`zero_grad()` are then no-ops (accelerate's DeepSpeed optimizer wrapper), `clip_gradients` returns the norm the
engine measured before clipping, and the schedule is stepped by the scripts as on every other launch.

One meaning per key, as on the DDP path (mathrl/distributed.py):
- `batch_size` is global, the losses are divided by `distributed.loss_divisor` and DeepSpeed averages gradients
  over the processes as DDP does, so k processes take the update of one;
- `gradient_accumulation_steps` is the scripts' own window (train_sft.py): DeepSpeed's accumulation count is set to
  1, so it does not divide the loss again, and the window's last micro-batch is marked as DeepSpeed's accumulation
  boundary (`gradient_sync_off` marks the others), so a short last window of an epoch steps too;
- `max_grad_norm` becomes DeepSpeed's `gradient_clipping`, `mixed_precision` its bf16/fp16 (through accelerate).
An accelerate config (or `accelerate launch` flag) that sets DeepSpeed's gradient accumulation or clipping itself,
or hands it a DeepSpeed JSON file, is refused rather than letting two keys mean one thing.

Checkpoints never use DeepSpeed's own format (pickled, loaded with torch.load(weights_only=False)): with ZeRO-2
every process holds the full fp32 weights, so the main process writes step_N/ and final/ through the usual save
path (model.safetensors). The optimizer state is not saved (its partitioned flat buffers would need DeepSpeed's
unpickling loader, which these scripts never call), so a DeepSpeed run cannot be resumed: `--resume_from` is
refused (start a new run from a saved step with --init_from). ZeRO stage 3 (weights partitioned too) is refused:
generation and evaluation run the unwrapped model, which needs the whole weights on every process. Not combined
with `fsdp: true` or LoRA (refused). Tested on CPU (2 processes, gloo); not yet run on GPUs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from mathrl.distributed import deepspeed_launch
from mathrl.errors import UserError

# DeepSpeed's micro-batch fields only feed its own data loader and throughput log, which these scripts do not use;
# they must still be consistent (train_batch_size = micro batch x accumulation x processes).
MICRO_BATCH_PER_PROCESS = 1


def requested() -> bool:
    """Whether this process was started by a DeepSpeed launch (`accelerate launch` with a DeepSpeed config)."""
    return deepspeed_launch()


def check_deepspeed(config: dict, resume_from: str | None) -> None:
    """Refuse, before anything is written, what a DeepSpeed launch does not support here, and a missing package."""
    if not requested():
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("a DeepSpeed launch needs the optional package deepspeed, which is not installed: "
                        "pip install deepspeed")
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if stage not in ("0", "1", "2"):
        raise UserError(f"DeepSpeed ZeRO stage {stage} is not supported: generation runs the whole model on every "
                        "process; use zero_stage: 2 (configs/accelerate/deepspeed_zero2.yaml)")
    own_fields = {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "deepspeed_config_file",
                  "ACCELERATE_GRADIENT_CLIPPING": "gradient_clipping (use max_grad_norm)",
                  "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "offload_optimizer_device",
                  "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "offload_param_device"}
    set_here = [name for env, name in own_fields.items() if os.environ.get(env, "none").lower() not in ("none", "")]
    if os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") != "1":
        set_here.append("gradient_accumulation_steps (use the scripts' gradient_accumulation_steps)")
    if set_here:
        raise UserError(f"the accelerate DeepSpeed config sets {', '.join(set_here)}, which the scripts set from "
                        "their own keys or do not support: remove it (configs/accelerate/deepspeed_zero2.yaml)")
    if config["fsdp"]:
        raise UserError("fsdp: true under a DeepSpeed launch: choose one way to shard (--fsdp false here, or a "
                        "torchrun launch for FSDP)")
    if config["lora_r"] > 0:
        raise UserError("lora_r > 0 under a DeepSpeed launch is not supported: LoRA trains few weights, run it data "
                        "parallel (configs/accelerate/ddp.yaml)")
    if resume_from is not None:
        raise UserError("--resume_from under DeepSpeed is not supported: its optimizer state is not saved (DeepSpeed's "
                        "format would need unpickling); start a new run from the saved weights: --init_from "
                        "OUTPUT_DIR/step_N --output_dir NEW_DIR, or resume on a torchrun launch")


def configure(accelerator, config: dict) -> None:
    """Set DeepSpeed's fields from the scripts' keys before the engine is built (accelerator.prepare)."""
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["gradient_accumulation_steps"] = 1  # the scripts' own windows (see the module docstring)
    ds_config["train_micro_batch_size_per_gpu"] = MICRO_BATCH_PER_PROCESS
    ds_config["train_batch_size"] = MICRO_BATCH_PER_PROCESS * accelerator.num_processes
    ds_config["gradient_clipping"] = float(config["max_grad_norm"])
    # The optimizer is the scripts' torch AdamW (make_optimizer), which ZeRO partitions.
    ds_config["zero_allow_untested_optimizer"] = True


def is_engine(model) -> bool:
    """Whether `model` is a DeepSpeedEngine (what accelerator.prepare returns under a DeepSpeed launch)."""
    return type(model).__name__ == "DeepSpeedEngine"


def full_weights(model) -> dict[str, torch.Tensor]:
    """The unwrapped model's weights as separate CPU copies, for save_pretrained. ZeRO keeps every weight as a view
    into one flat buffer per parameter group, which save_pretrained would take for tensors sharing memory; with
    stage 2 each process holds them whole, so no gathering is needed (the main process writes them)."""
    from mathrl.fsdp import without_tied_copies

    return without_tied_copies(model, {name: tensor.detach().to("cpu", copy=True)
                                       for name, tensor in model.state_dict().items()})


def is_deepspeed_optimizer(optimizer) -> bool:
    """Whether `optimizer` is accelerate's wrapper of a DeepSpeed (ZeRO) optimizer, whose state is not saved."""
    return type(optimizer).__name__ == "DeepSpeedOptimizerWrapper"


@contextlib.contextmanager
def gradient_sync_off(accelerator):
    """Accumulate this micro-batch's gradients without stepping: accelerate marks the micro-batch as not being
    DeepSpeed's accumulation boundary, so the engine neither steps nor clips until the window's last one."""
    accelerator.gradient_state._set_sync_gradients(False)
    try:
        yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)
