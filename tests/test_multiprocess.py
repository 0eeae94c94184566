"""Two processes (torchrun, gloo on CPU) against one: the README's "More than one GPU" commands.

Each launch costs two processes on a small machine, so these run behind the `multiprocess` marker
(`pytest -m multiprocess`, also run by .ci/run); one module-scoped launch serves several assertions.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_OVERRIDES, REPO_ROOT, SCRIPT_ENV

pytestmark = pytest.mark.multiprocess

# The random builtin:tiny, not configs/tiny.yaml's pretrained base: the comparison of 1 and 2 processes does not
# need the ~5 minutes of pretraining.
SFT_COMMAND = ["train_sft.py", "--config", "configs/tiny.yaml", "--model_name", "builtin:tiny", "--max_steps", "20",
               "--log_every", "1"]
GRPO_STEPS = 4


def torchrun(nproc: int) -> list[str]:
    """The launcher: `torchrun --standalone` (a free port, so parallel launches on one machine do not collide)."""
    launcher = shutil.which("torchrun")
    base = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
    return [*base, "--standalone", "--nproc_per_node", str(nproc)]


def accelerate_launch(config_file) -> list[str]:
    launcher = shutil.which("accelerate")
    base = [launcher, "launch"] if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
    return [*base, "--config_file", str(config_file)]


def launch(nproc: int, *args, launcher: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` (nproc 1) or `torchrun --standalone --nproc_per_node NPROC ARGS` (or `launcher ARGS`)."""
    if nproc == 1:
        command = [sys.executable, *map(str, args)]
    else:
        command = [*(launcher or torchrun(nproc)), *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=script_env())


def script_env() -> dict[str, str]:
    return {**os.environ, **SCRIPT_ENV, "PYTHONPATH": str(REPO_ROOT)}


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def held_out_head(tmp_path_factory, n: int):
    """A file of the first n held-out problems (n chosen so the processes get unequal evaluation batches)."""
    path = tmp_path_factory.mktemp("data") / f"eval{n}.jsonl"
    path.write_text("".join((REPO_ROOT / "data/tiny_eval.jsonl").read_text().splitlines(keepends=True)[:n]))
    return path


def accumulating_sft_command(eval_file, output_dir, steps: int, *extra) -> list[str]:
    """The micro model's SFT for `steps` steps, each two accumulated micro-batches of 8, evaluated on eval_file."""
    return ["train_sft.py", "--config", "configs/tiny.yaml", *MICRO_OVERRIDES, "--max_steps", str(steps),
            "--batch_size", "16", "--gradient_accumulation_steps", "2", "--warmup_steps", "0", "--log_every", "1",
            "--eval_file", str(eval_file), "--ood_eval_file", "null", "--eval_batch_size", "25", *map(str, extra),
            "--output_dir", str(output_dir)]


def assert_same_steps(one: list[dict], other: list[dict], steps: int) -> None:
    """Two runs' metrics.jsonl: one line per step each, and the same loss, grad_norm and lr on every step (1e-5)."""
    assert [r["step"] for r in other] == [r["step"] for r in one]  # one line per step, written once
    pairs = [(a, b) for a, b in zip(one, other) if "loss" in a]
    assert len(pairs) == steps
    for a, b in pairs:
        for key in ("loss", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a, b)


def assert_same_weights(a, b) -> None:
    """Two runs' final weights: the same tensors (a tied output head written once) and values within 1e-5."""
    weights = [load_file(run / "final" / "model.safetensors") for run in (a, b)]
    assert sorted(weights[0]) == sorted(weights[1])
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5, rtol=0), name


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> dict:
    """The issue's SFT command on one process and on two."""
    root = tmp_path_factory.mktemp("sft")
    runs = {n: root / f"nproc{n}" for n in (1, 2)}
    for n, out in runs.items():
        ok(launch(n, *SFT_COMMAND, "--output_dir", out))
    return runs


def test_sft_on_two_processes_takes_the_steps_of_one(sft_runs):
    one, two = (read_jsonl(sft_runs[n] / "metrics.jsonl") for n in (1, 2))
    assert [r["step"] for r in two] == [r["step"] for r in one]  # one line per step, written once
    losses = [(a["loss"], b["loss"]) for a, b in zip(one, two) if "loss" in a]
    assert len(losses) == 20
    for a, b in losses:
        assert abs(a - b) <= 1e-5
    assert [r["lr"] for r in one if "lr" in r] == [r["lr"] for r in two if "lr" in r]  # one schedule step per step
    weights = [load_file(sft_runs[n] / "final" / "model.safetensors") for n in (1, 2)]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5, rtol=0), name
    # Sharded evaluation: the same accuracy and the same logged completions.
    assert one[-1]["eval_accuracy"] == two[-1]["eval_accuracy"]
    assert read_jsonl(sft_runs[1] / "eval_samples.jsonl") == read_jsonl(sft_runs[2] / "eval_samples.jsonl")


def test_sft_shares_of_uneven_and_tiny_batches(tmp_path, micro_overrides):
    """11 examples in batches of 5: rows split 3/2, 3/2 and 1/0 (a process without rows), still one process's step."""
    examples = [json.loads(line) for line in (REPO_ROOT / "data/tiny_train.jsonl").read_text().splitlines()[:11]]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(e) + "\n" for e in examples))
    runs = {n: tmp_path / f"nproc{n}" for n in (1, 2)}
    for n, out in runs.items():
        ok(launch(n, "train_sft.py", "--config", "configs/tiny.yaml", *micro_overrides, "--train_file", train_file,
                  "--batch_size", "5", "--max_steps", "3", "--warmup_steps", "0", "--log_every", "1",
                  "--ood_eval_file", "null", "--output_dir", out))
    one, two = (read_jsonl(runs[n] / "metrics.jsonl") for n in (1, 2))
    assert [r["epoch"] for r in two if "loss" in r] == [0.333, 0.667, 1.0]  # three batches: 5, 5 and 1 examples
    for a, b in zip(one, two):
        for key in ("loss", "grad_norm"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5, (a, b)
    weights = [load_file(runs[n] / "final" / "model.safetensors") for n in (1, 2)]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5, rtol=0), name


def test_sft_stopped_on_two_processes_resumes_with_its_launch_command(sft_runs, tmp_path):
    """Ctrl-C reaches torchrun alone (its workers run in sessions of their own), which passes SIGINT on to each:
    they finish the step and save it, the main process prints the command that resumes the run (the torchrun
    command, not `python ...`), and that command, on 2 processes, ends where the uninterrupted 2-process run did."""
    out = tmp_path / "stopped"
    tail = [*SFT_COMMAND, "--output_dir", str(out)]
    proc = subprocess.Popen([*torchrun(2), *tail], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=script_env())
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    (ckpt,) = out.glob("step_*")
    assert stderr.count(f"stopped by SIGINT after {ckpt.name}; saved {ckpt}") == 1, stderr[-3000:]  # once per launch
    (line,) = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[-len(tail) - 2:] == [*tail, "--resume_from", str(ckpt)]
    launcher = command[:-len(tail) - 2]
    flags = ["--standalone", "--nproc_per_node", "2"]
    assert launcher in (["python", "-m", "torch.distributed.run", *flags], [launcher[0], *flags])
    assert launcher[0] == "python" or os.path.basename(launcher[0]) == "torchrun"

    ok(subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=script_env()))
    resumed, uninterrupted = read_jsonl(out / "metrics.jsonl"), read_jsonl(sft_runs[2] / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted):
        for key in ("loss", "lr", "grad_norm", "eval_accuracy", "ood_accuracy"):
            if key in b:
                assert abs(a[key] - b[key]) <= 1e-5, (key, a, b)
    weights = [load_file(run / "final" / "model.safetensors") for run in (out, sft_runs[2])]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5, rtol=0), name


def test_accelerate_cpu_config_starts_two_processes(tmp_path):
    """accelerate 1.15 runs a MULTI_CPU (or use_cpu) config as one process; configs/accelerate/cpu.yaml starts two."""
    script = tmp_path / "processes.py"
    script.write_text("from mathrl.distributed import process_count, process_index\n"
                      "print(f'process {process_index()} of {process_count()}')\n")
    proc = ok(launch(2, script, launcher=accelerate_launch(REPO_ROOT / "configs/accelerate/cpu.yaml"), timeout=180))
    assert sorted(proc.stdout.split()) == sorted("process 0 of 2 process 1 of 2".split())


def test_evaluate_on_two_processes_matches_one(sft_runs, tmp_path):
    """Launched as README says for accelerate: `accelerate launch --config_file configs/accelerate/cpu.yaml`.
    Greedy and sampled (`--samples`): the same accuracy, diversity and per-example predictions and samples."""
    ckpt = sft_runs[2] / "final"
    results = {}
    for n in (1, 2):
        output = tmp_path / f"eval{n}.json"
        ok(launch(n, "evaluate.py", "--config", "configs/tiny.yaml", "--ckpt", ckpt, "--output", output,
                  "--samples", "2", "--temperature", "1.0",
                  launcher=accelerate_launch(REPO_ROOT / "configs/accelerate/cpu.yaml")))
        results[n] = (json.loads(output.read_text())["results"], read_jsonl(output.with_suffix(".predictions.jsonl")))
    assert results[2] == results[1]
    summary, predictions = results[1]
    assert len(predictions) == sum(r["num_examples"] for r in summary)  # every example once, not once per process
    assert all(r["diversity"]["num_prompts"] == r["num_examples"] for r in summary)
    assert len({s for p in predictions for s in p["samples"]}) > len(predictions) // 10  # sampled, not all alike


def test_grpo_on_two_processes_writes_once(sft_runs, tmp_path):
    out = tmp_path / "grpo"
    ok(launch(2, "train_grpo.py", "--config", "configs/tiny.yaml", "--init_from", sft_runs[2] / "final",
              "--num_train_steps", GRPO_STEPS, "--batch_size", "4", "--group_size", "4", "--eval_every", GRPO_STEPS,
              "--output_dir", out))
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, GRPO_STEPS + 1))  # not one line per rank
    assert [r["step"] for r in records if "eval_accuracy" in r] == [GRPO_STEPS]
    assert sorted(p.name for p in out.iterdir()) == ["final", "metrics.jsonl", "samples.jsonl"]


def test_grpo_loss_on_two_processes_equals_one_process_on_the_same_rollouts(sft_runs, tmp_path):
    """At learning rate 0, the logged loss and gradient norm of a 2-process step equal those one process computes
    on both processes' rollouts, and so do its rewards, token means (kl, entropy) and sampling counts (groups
    drawn, generated tokens);
    token_mean is the aggregation whose divisor spans the processes."""
    out = tmp_path / "probe.json"
    ok(launch(2, "tests/grpo_processes_probe.py", out, "--init_from", sft_runs[2] / "final",
              "--loss_aggregation", "token_mean", "--length_reward_weight", "1.0"))
    probe = json.loads(out.read_text())
    shares = probe["shares"]
    assert len(shares) == 2 and not set(shares[0]) & set(shares[1])  # the processes' prompts are distinct
    assert shares[0] + shares[1] == probe["global_batch"]  # together: the batch one process would take
    processes, one = probe["processes"], probe["one_process"]
    assert abs(one["loss"]) > 1e-3  # non-zero advantages: the check can fail
    assert set(processes) == set(one)
    for key in one:  # the loss, and sampling statistics summed over both processes' groups
        assert processes[key] == pytest.approx(one[key], abs=1e-5, rel=1e-5), key


def test_bad_input_on_two_processes_ends_the_launch_with_its_message(tmp_path):
    proc = launch(2, "train_grpo.py", "--config", "configs/tiny.yaml", "--model_name", "builtin:tiny", "--batch_size",
                  "3", "--output_dir", tmp_path / "bad", timeout=180)
    assert proc.returncode != 0
    assert "error: batch_size 3 is not divisible by the 2 processes" in proc.stderr
    assert f'File "{REPO_ROOT}' not in proc.stderr  # no traceback from our code


def test_fsdp_launch_is_refused_not_run_as_something_else(tmp_path):
    """accelerate turns an FSDP config on CPU into plain DDP; the scripts refuse it and point at `--fsdp true`
    (tests/test_fsdp.py)."""
    config = (REPO_ROOT / "configs/accelerate/cpu.yaml").read_text() + (
        "fsdp_config:\n  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n")
    (tmp_path / "fsdp.yaml").write_text(config.replace("distributed_type: MULTI_GPU", "distributed_type: FSDP"))
    proc = launch(2, *SFT_COMMAND, "--output_dir", tmp_path / "out", launcher=accelerate_launch(tmp_path / "fsdp.yaml"),
                  timeout=180)
    assert proc.returncode != 0
    assert "error: accelerate's FSDP launches are not supported by these scripts" in proc.stderr
    assert "--fsdp true" in proc.stderr
