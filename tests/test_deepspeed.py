"""DeepSpeed ZeRO-2 (mathrl/deepspeed_zero.py) on two processes (accelerate launch, gloo on CPU) against one: the
README's command, with the micro model.

DeepSpeed is optional: every test here is skipped, with the reason, when it is not installed. The launches run
behind the `multiprocess` marker (pytest -m multiprocess); the refusals run in the default suite.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import MICRO_OVERRIDES, REPO_ROOT, assert_user_error
from test_multiprocess import (accelerate_launch, accumulating_sft_command, assert_same_steps, assert_same_weights,
                              held_out_head, launch, ok, read_jsonl)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (optional: pip install deepspeed)")

DEEPSPEED_CONFIG = REPO_ROOT / "configs/accelerate/deepspeed_zero2.yaml"
SFT_STEPS = 4


def deepspeed_launch() -> list[str]:
    return accelerate_launch(DEEPSPEED_CONFIG)


def sft_command(eval_file, output_dir) -> list[str]:
    """Gradient accumulation over two micro-batches (DeepSpeed's boundary set by the script), a checkpoint at step
    2 (a DeepSpeed run's step_N/), held-out evaluation at the end."""
    return accumulating_sft_command(eval_file, output_dir, SFT_STEPS, "--eval_every", SFT_STEPS, "--save_every", 2)


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    return held_out_head(tmp_path_factory, 50)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, eval_file) -> dict:
    """The same SFT command on one process (plain python) and on two under DeepSpeed ZeRO-2."""
    root = tmp_path_factory.mktemp("deepspeed_sft")
    runs = {"one": root / "one", "zero2": root / "zero2"}
    ok(launch(1, *sft_command(eval_file, runs["one"])))
    ok(launch(2, *sft_command(eval_file, runs["zero2"]), launcher=deepspeed_launch()))
    return runs


@pytest.mark.multiprocess
def test_deepspeed_sft_on_two_processes_takes_the_steps_of_one(sft_runs):
    one, zero2 = (read_jsonl(sft_runs[name] / "metrics.jsonl") for name in ("one", "zero2"))
    assert_same_steps(one, zero2, SFT_STEPS)
    assert_same_weights(sft_runs["one"], sft_runs["zero2"])
    # Written without DeepSpeed's pickled format: loadable with weights_only, the optimizer state left out.
    state = torch.load(sft_runs["zero2"] / "final" / "training_state.pt", weights_only=True)
    assert state["optimizer"] is None and state["step"] == SFT_STEPS
    pickled = {p.relative_to(sft_runs["zero2"]).as_posix() for p in sft_runs["zero2"].rglob("*")
               if p.suffix in (".pt", ".bin", ".pkl")}
    assert pickled == {"step_2/training_state.pt", "final/training_state.pt"}  # no DeepSpeed checkpoint files


@pytest.mark.multiprocess
def test_a_deepspeed_checkpoint_is_not_resumed(sft_runs, eval_file, in_process_runner, tmp_path):
    """Its step_N/ has no optimizer state: resuming it (on any launch) says so and how to start from its weights."""
    import shutil

    copy = tmp_path / "copy"  # the run as it was before its last step (a copy: sft_runs is shared)
    shutil.copytree(sft_runs["zero2"], copy)
    shutil.rmtree(copy / "final")
    saved_config = copy / "step_2" / "config.yaml"
    saved_config.write_text(saved_config.read_text().replace(str(sft_runs["zero2"]), str(copy)))
    code, _, err = in_process_runner(*sft_command(eval_file, copy), "--max_steps", "6", "--resume_from", "auto")
    assert_user_error(code, err, "saved by a DeepSpeed run", f"--init_from {copy / 'step_2'}")


@pytest.mark.multiprocess
def test_deepspeed_grpo_on_two_processes(eval_file, tmp_path):
    """GRPO under ZeRO-2: one metrics line per step, one evaluation, one final/ that from_pretrained loads whole."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "grpo"
    ok(launch(2, "train_grpo.py", "--config", "configs/tiny.yaml", *MICRO_OVERRIDES, "--num_train_steps", "2",
              "--batch_size", "4", "--group_size", "4", "--eval_every", "2", "--length_reward_weight", "1.0",
              "--eval_file", eval_file, "--ood_eval_file", "null", "--eval_batch_size", "25",
              "--output_dir", out, launcher=deepspeed_launch()))
    records = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert any(r["grad_norm"] > 0 for r in steps)  # it trained: the engine stepped
    assert [r["step"] for r in records if "eval_accuracy" in r] == [2]
    assert sorted(p.name for p in out.iterdir()) == ["final", "metrics.jsonl", "samples.jsonl"]
    model, info = AutoModelForCausalLM.from_pretrained(out / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("env, flags, fragment", [
    ({}, ["--resume_from", "auto"], "--resume_from under DeepSpeed is not supported"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, [], "ZeRO stage 3 is not supported"),
    ({"ACCELERATE_GRADIENT_CLIPPING": "1.0"}, [], "gradient_clipping (use max_grad_norm)"),
    ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, [], "gradient_accumulation_steps (use the scripts'"),
    ({}, ["--fsdp", "true"], "fsdp: true under a DeepSpeed launch"),
])
def test_a_deepspeed_launch_refuses_before_writing_anything(in_process_runner, monkeypatch, tmp_path, env, flags,
                                                           fragment):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "never-made"
    code, _, err = in_process_runner("train_sft.py", "--config", "configs/tiny.yaml", *MICRO_OVERRIDES, *flags,
                                     "--output_dir", str(out))
    assert_user_error(code, err, fragment)
    assert not out.exists()
