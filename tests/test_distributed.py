"""The arithmetic of running on k processes (mathrl/distributed.py), on one process; tests/test_multiprocess.py
launches two."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_CONFIG, run_script_in_process
from mathrl import distributed
from mathrl.distributed import launcher_in, loss_divisor, process_seed, shard_bounds, token_means_over_processes


def test_loss_divisor_gives_the_token_mean_of_the_global_window():
    # Process 0 holds two micro-batches (token-loss sums 3.0 over 3 tokens, 10.0 over 5), process 1 one (4.0 over
    # 2). The update must follow (3 + 10 + 4) / (3 + 5 + 2) = 1.7.
    sums = {0: [3.0, 10.0], 1: [4.0]}
    divisor = loss_divisor(3 + 5 + 2, num_processes=2)
    assert divisor == 5.0
    per_process = [sum(s / divisor for s in sums[r]) for r in (0, 1)]  # gradients add up over the window
    assert sum(per_process) / 2 == pytest.approx(1.7)  # DDP averages over the processes
    # A token mean per micro-batch, averaged over the window and the processes, would weigh tokens unequally:
    assert ((3.0 / 3 + 10.0 / 5) / 2 + 4.0 / 2) / 2 != pytest.approx(1.7)
    assert loss_divisor(0, 2) == 0.5  # a batch without completion tokens never divides by zero


def test_token_means_over_processes_weigh_each_process_by_its_tokens(monkeypatch):
    """Process 0: kl 2.0 over 3 tokens; process 1 (simulated): kl 5.0 over 1 token. The global token mean is
    (6 + 5) / 4 = 2.75, not the mean of the two means (3.5)."""
    other = torch.tensor([5.0 * 1, 1.0], dtype=torch.float64)  # process 1's (kl x tokens, tokens)
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "state", lambda: type("State", (), {"device": "cpu"})())
    monkeypatch.setattr(distributed, "sum_over_processes", lambda mine: mine + other)
    assert token_means_over_processes({"kl": 2.0}, tokens=3) == {"kl": pytest.approx(2.75)}
    other = torch.zeros(2, dtype=torch.float64)
    assert token_means_over_processes({"kl": 0.0}, tokens=0) == {"kl": 0.0}  # no token anywhere: 0, no division by 0


def test_shard_bounds_cover_every_item_once_in_order():
    assert [shard_bounds(5, r, 2) for r in (0, 1)] == [(0, 3), (3, 5)]
    assert [shard_bounds(1, r, 2) for r in (0, 1)] == [(0, 1), (1, 1)]
    assert [shard_bounds(6, r, 3) for r in (0, 1, 2)] == [(0, 2), (2, 4), (4, 6)]


def test_launcher_in_reads_the_launch_command_off_the_parents_command_line(tmp_path, monkeypatch):
    """The resume command of a k-process run starts as the user's did: the workers' parent is the launcher, whose
    command line (/proc/PPID/cmdline) shows the interpreter running a console script."""
    script = ["train_sft.py", "--config", "c.yaml"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("torchrun", "accelerate"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    torchrun = ["/usr/bin/python3.11", str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    assert launcher_in([*torchrun, *script], script) == ["torchrun", "--standalone", "--nproc_per_node", "2"]
    accelerate = ["/venv/bin/python3", str(bin_dir / "accelerate"), "launch", "--config_file", "cpu.yaml"]
    assert launcher_in([*accelerate, *script], script) == ["accelerate", "launch", "--config_file", "cpu.yaml"]
    module = ["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert launcher_in([*module, *script], script) == ["python", "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    elsewhere = ["/usr/bin/python3", "/opt/tools/bin/torchrun", "--nproc_per_node", "2"]  # not the one on PATH
    assert launcher_in([*elsewhere, *script], script) == ["/opt/tools/bin/torchrun", "--nproc_per_node", "2"]
    assert launcher_in(["/usr/bin/python3", "other.py"], script) is None  # not started by a launcher


def test_process_seed_leaves_one_process_unchanged():
    assert process_seed(42, 0) == 42
    assert len({process_seed(42, r) for r in range(8)} | {process_seed(43, 0)}) == 9


def test_gradient_accumulation_weighs_every_token_equally(tmp_path, micro_overrides):
    """One optimizer step over 8 examples, as one batch or as two accumulated micro-batches of 4: the same loss
    and gradient. (A token mean per micro-batch, halved by the accumulation, gave neither.)"""
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"prompt": "What is 1 + 1? Answer with an integer.", "answer": "2"}) + "\n")
    records = {}
    for name, shape in (("whole", ["--batch_size", "8"]),
                        ("accumulated", ["--batch_size", "4", "--gradient_accumulation_steps", "2"])):
        code, _, err = run_script_in_process(
            "train_sft.py", "--config", TINY_CONFIG, *micro_overrides, *shape, "--max_steps", "1", "--warmup_steps",
            "0", "--eval_file", eval_file, "--ood_eval_file", "null", "--output_dir", tmp_path / name)
        assert code == 0, err
        records[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("loss", "grad_norm"):
        assert records["accumulated"][key] == pytest.approx(records["whole"][key], rel=1e-5), key


def test_compare_starts_each_run_with_the_configured_launcher():
    from compare import REPO_ROOT, script_command

    script = str(REPO_ROOT / "train_sft.py")
    assert script_command("train_sft.py", None, ["--seed", "1"], "torchrun --standalone --nproc_per_node 2") == [
        "torchrun", "--standalone", "--nproc_per_node", "2", script, "--seed", "1"]
    assert script_command("train_sft.py", "configs/tiny.yaml", [], "")[1:] == [script, "--config", "configs/tiny.yaml"]
