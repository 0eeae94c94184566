"""FSDP (`--fsdp true`, mathrl/fsdp.py) on two processes (torchrun, gloo on CPU) against one: the README's command.

The micro model and a 101-example eval set (shares of 51 and 50 prompts in batches of 25: three generate calls on
one process, two on the other, so the lockstep evaluation is exercised), gradient accumulation over two
micro-batches (FSDP's form of no_sync). The launches run behind the `multiprocess` marker (pytest -m multiprocess).
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from conftest import MICRO_OVERRIDES, REPO_ROOT
from test_multiprocess import (accumulating_sft_command, assert_same_steps, assert_same_weights, held_out_head,
                              launch, ok, read_jsonl, script_env, torchrun)

SFT_STEPS = 8


def sft_command(eval_file, output_dir, fsdp: bool) -> list[str]:
    return accumulating_sft_command(eval_file, output_dir, SFT_STEPS, "--eval_every", 4, "--fsdp", str(fsdp).lower())


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    return held_out_head(tmp_path_factory, 101)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, eval_file) -> dict:
    """The same SFT command on one process (data parallel code path) and on two with --fsdp true."""
    root = tmp_path_factory.mktemp("fsdp_sft")
    runs = {"one": root / "one", "fsdp": root / "fsdp"}
    ok(launch(1, *sft_command(eval_file, runs["one"], fsdp=False)))
    ok(launch(2, *sft_command(eval_file, runs["fsdp"], fsdp=True)))
    return runs


@pytest.mark.multiprocess
def test_fsdp_sft_on_two_processes_takes_the_steps_of_one(sft_runs):
    one, sharded = (read_jsonl(sft_runs[name] / "metrics.jsonl") for name in ("one", "fsdp"))
    assert_same_steps(one, sharded, SFT_STEPS)
    evals = [(a, b) for a, b in zip(one, sharded) if "eval_accuracy" in a]
    assert len(evals) == 2
    for a, b in evals:
        assert (a["eval_accuracy"], a["eval_completion_tokens"]) == (b["eval_accuracy"], b["eval_completion_tokens"])
    assert_same_weights(sft_runs["one"], sft_runs["fsdp"])
    # The optimizer state is saved whole (gathered from the shards), by parameter name, loadable without pickle.
    state = torch.load(sft_runs["fsdp"] / "final" / "training_state.pt", weights_only=True)
    assert "model.embed_tokens.weight" in state["optimizer"]["state"]


@pytest.mark.multiprocess
def test_fsdp_sft_stopped_and_resumed_equals_the_run_never_stopped(sft_runs, eval_file, tmp_path):
    """SIGINT to torchrun: the sharded run saves its step (weights and optimizer gathered), and the printed resume
    command loads them back into the shards and ends where the uninterrupted sharded run did."""
    out = tmp_path / "stopped"
    proc = subprocess.Popen([*torchrun(2), *sft_command(eval_file, out, fsdp=True)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert not (out / "final").exists(), "the run ended before SIGINT reached it; nothing was interrupted"
    (ckpt,) = out.glob("step_*")
    (line,) = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    resume = subprocess.run(line.removeprefix("resume with: "), shell=True, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300, env=script_env())
    ok(resume)
    assert f"from {ckpt.name}" in resume.stderr
    resumed, uninterrupted = read_jsonl(out / "metrics.jsonl"), read_jsonl(sft_runs["fsdp"] / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted):
        for key in ("loss", "lr", "grad_norm", "eval_accuracy"):
            if key in b:
                assert abs(a[key] - b[key]) <= 1e-5, (key, a, b)
    assert_same_weights(out, sft_runs["fsdp"])


@pytest.mark.multiprocess
def test_fsdp_grpo_on_two_processes(eval_file, tmp_path):
    """Sharded GRPO (synchronized sampling, full reference replica for the KL): one metrics line per step, one
    evaluation, one final/ that from_pretrained loads whole; the length reward makes the advantages non-zero."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "grpo"
    ok(launch(2, "train_grpo.py", "--config", "configs/tiny.yaml", *MICRO_OVERRIDES, "--num_train_steps", "3",
              "--batch_size", "4", "--group_size", "4", "--eval_every", "3", "--length_reward_weight", "1.0",
              "--eval_file", eval_file, "--ood_eval_file", "null", "--eval_batch_size", "25", "--fsdp", "true",
              "--output_dir", out))
    records = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert any(r["grad_norm"] > 0 for r in steps)  # it trained: a sharded update happened
    assert [r["step"] for r in records if "eval_accuracy" in r] == [3]
    assert sorted(p.name for p in out.iterdir()) == ["final", "metrics.jsonl", "samples.jsonl"]
    model, info = AutoModelForCausalLM.from_pretrained(out / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fsdp_refuses_lora_and_fp16(in_process_runner):
    from conftest import assert_user_error

    for flags, fragment in ((["--lora_r", "4"], "fsdp: true with lora_r > 0"),
                            (["--mixed_precision", "fp16"], 'fsdp: true with mixed_precision "fp16"')):
        code, _, err = in_process_runner("train_sft.py", "--config", "configs/tiny.yaml", *MICRO_OVERRIDES,
                                         "--fsdp", "true", *flags, "--output_dir", "/nonexistent/never-made")
        assert_user_error(code, err, fragment)
