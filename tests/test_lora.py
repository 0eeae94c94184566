"""LoRA through peft (lora_r > 0; mathrl/lora.py), on the micro model, for both trainers.

- checkpoints are merged Hugging Face models that from_pretrained and evaluate.py load unchanged, with the adapters
  beside them; base + adapters == merged weights;
- only the adapters train; GRPO's reference is the same network with its adapters disabled (no copy), so the KL is
  exactly 0 before the first update and not after it;
- a LoRA run resumed from step_N/ ends with the same weights as the run that was never stopped.
Skipped without peft (pip install -r requirements-optional.txt).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, set_seed

import train_grpo
from conftest import MICRO_OVERRIDES, REPO_ROOT, TINY_CONFIG
from mathrl.config import resolve_config
from mathrl.errors import UserError
from mathrl.lora import ADAPTER_DIR, AdaptersDisabled, check_lora, target_modules
from mathrl.modeling import builtin_model_dir

peft = pytest.importorskip("peft", reason="LoRA needs the peft package (pip install -r requirements-optional.txt)")

LORA = ["--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj,v_proj"]


def data_args(tmp: Path) -> list[str]:
    for name in ("train", "eval", "ood"):
        lines = (REPO_ROOT / "data" / f"tiny_{name}.jsonl").read_text().splitlines()[:8]
        (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return ["--train_file", tmp / "train.jsonl", "--eval_file", tmp / "eval.jsonl",
            "--ood_eval_file", tmp / "ood.jsonl"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_sft_with_lora_saves_a_merged_model_that_evaluate_loads(tmp_path, in_process_runner, micro_config):
    out = tmp_path / "sft"
    code, _, stderr = in_process_runner("train_sft.py", "--config", TINY_CONFIG, *MICRO_OVERRIDES,
                                        *data_args(tmp_path), *LORA, "--max_steps", "3", "--batch_size", "4",
                                        "--learning_rate", "1e-1", "--warmup_steps", "0", "--output_dir", out)
    assert code == 0, stderr[-3000:]
    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    base, merged = weights(builtin_model_dir(micro_config)), weights(final)
    assert set(base) == set(merged)  # a plain model: no lora_A / base_layer names
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    # Only the targeted projections move (q_proj and v_proj of every layer): the adapters alone trained.
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed), changed

    # Base + adapters (peft's own loader) gives the merged model's logits.
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        with_adapters = peft.PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(builtin_model_dir(micro_config)), dtype=torch.float32),
            str(final / ADAPTER_DIR)).eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()(input_ids=ids).logits
    torch.testing.assert_close(plain, with_adapters, atol=1e-5, rtol=0)

    results = tmp_path / "results.json"
    code, _, stderr = in_process_runner("evaluate.py", "--config", TINY_CONFIG, *MICRO_OVERRIDES,
                                        *data_args(tmp_path), "--ckpt", final, "--output", results)
    assert code == 0, stderr[-3000:]
    assert json.loads(results.read_text())


def grpo_config(*extra: str) -> dict:
    return resolve_config("grpo", str(REPO_ROOT / TINY_CONFIG),
                          [*MICRO_OVERRIDES, *LORA, "--batch_size", "2", "--group_size", "4", "--warmup_steps", "0",
                           "--kl_coeff", "0.05", "--length_reward_weight", "1.0", "--learning_rate", "5e-2", *extra])


def test_grpo_lora_reference_is_the_policy_without_adapters():
    config = grpo_config()
    set_seed(config["seed"])
    run = train_grpo.setup(config, config["model_name"])
    assert isinstance(run.reference, AdaptersDisabled) and run.reference.model is run.unwrapped  # no second copy
    trainable = [name for name, p in run.unwrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    first = train_grpo.grpo_step(run, next(run.batches), config).metrics
    assert first["kl"] == 0.0  # zero-initialised adapters: the policy is its reference, exactly
    second = train_grpo.grpo_step(run, next(run.batches), config).metrics
    assert second["kl"] > 0  # the adapters moved the policy away from the base network


def test_grpo_lora_resume_is_exact(tmp_path, in_process_runner):
    """4 steps straight, against the same run cut back to its step_2/ and resumed to step 4."""
    args = ["--config", TINY_CONFIG, *MICRO_OVERRIDES, *data_args(tmp_path), *LORA, "--batch_size", "2",
            "--group_size", "4", "--num_train_steps", "4", "--save_every", "2", "--eval_every", "4",
            "--learning_rate", "5e-2", "--length_reward_weight", "1.0", "--warmup_steps", "0"]
    run = tmp_path / "run"
    code, _, stderr = in_process_runner("train_grpo.py", *args, "--output_dir", run)
    assert code == 0, stderr[-3000:]
    straight = tmp_path / "straight"
    shutil.copytree(run, straight)
    shutil.rmtree(run / "final")  # as if stopped after saving step_2/ (resume cuts the logs back itself)
    code, _, stderr = in_process_runner("train_grpo.py", *args, "--output_dir", run, "--resume_from", "auto")
    assert code == 0, stderr[-3000:]
    expected, actual = weights(straight / "final"), weights(run / "final")
    assert any(not torch.equal(expected[n], weights(straight / "step_2")[n]) for n in expected), "no update"
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_lora_config_errors():
    base = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    with pytest.raises(UserError, match="lora_r must be >= 0"):
        check_lora({**base, "lora_r": -1})
    with pytest.raises(UserError, match="lora_dropout"):
        check_lora({**base, "lora_dropout": 1.0})
    with pytest.raises(UserError, match="lora_target_modules is empty"):
        target_modules(" , ")
    assert target_modules("all-linear") == "all-linear"
    assert target_modules("q_proj, v_proj") == ["q_proj", "v_proj"]
