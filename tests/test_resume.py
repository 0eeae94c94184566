"""Runs that survive (mathrl/resume.py, mathrl/checkpoint.py): exact resume, SIGINT / SIGTERM, the non-finite
guard and crash-safe saving, on the micro model.

Exact resume: a run is stopped after step k by a real SIGTERM (sent by the process to itself from its metrics
log when step k is logged, so k is the same on every machine), resumed with the command it prints, and compared
with the same run never stopped: metrics.jsonl (timing fields aside), the samples file and the final weights
must be identical. The stopped and resumed runs execute the script's `__main__` in this process (conftest's
in-process runner; one torch import instead of three), the uninterrupted one as a subprocess meanwhile; both
use one thread. test_sigterm_from_outside_leaves_a_resumable_run sends the signal from outside, at whatever
step the run has reached, and resumes with `--resume_from auto` as README.md shows.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_OVERRIDES, TINY_CONFIG, assert_user_error, start_script
from mathrl import checkpoint
from mathrl.checkpoint import MetricsLog, save_checkpoint
from mathrl.data import read_jsonl
from mathrl.data import load_jsonl, write_jsonl
from mathrl.errors import UserError
from mathrl import resume
from mathrl.resume import Batches, StopSignals, resume_command, sampling_guard

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMING_KEYS = {"tokens_per_s", "elapsed_s", "eval_seconds", "step_seconds", "generation_seconds",
               "generation_share", "generated_tokens_per_s"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_jsonl(root / "train.jsonl", load_jsonl(REPO_ROOT / "data/tiny_train.jsonl")[:32])
    write_jsonl(root / "eval.jsonl", load_jsonl(REPO_ROOT / "data/tiny_eval.jsonl")[:8])
    write_jsonl(root / "ood.jsonl", load_jsonl(REPO_ROOT / "data/tiny_ood.jsonl")[:4])
    return root


def sft_args(data: Path, *extra) -> list:
    # 4 micro-batches an epoch, 3 per optimizer step: epochs end mid-window, so the stop at step 3 lies inside
    # the second epoch with the accumulation and the epoch boundary both in play. Warmup and cosine: lr changes.
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--train_file", data / "train.jsonl",
            "--eval_file", data / "eval.jsonl", "--ood_eval_file", data / "ood.jsonl", "--batch_size", "8",
            "--gradient_accumulation_steps", "3", "--max_steps", "8", "--warmup_steps", "2", "--log_every", "1",
            "--eval_every", "4", "--save_every", "0", *extra]


def grpo_args(data: Path, *extra) -> list:
    # Shaped rewards give the untrained model reward variance, so the weights move; kl_coeff > 0 checks that the
    # resumed run's reference is the initial model, not the step_N weights.
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--train_file", data / "train.jsonl",
            "--eval_file", data / "eval.jsonl", "--ood_eval_file", "null", "--max_completion_length", "4",
            "--batch_size", "4", "--group_size", "4", "--format_reward_weight", "1.0", "--length_reward_weight", "1.0",
            "--learning_rate", "1e-2", "--kl_coeff", "0.05", "--num_train_steps", "5", "--warmup_steps", "1",
            "--eval_every", "2", "--save_every", "0", "--temperature", "1.0", *extra]


def signal_at_step(monkeypatch, step: int, signum=signal.SIGTERM) -> None:
    """Make this process send itself `signum` when its metrics log records training step `step`."""
    log = MetricsLog.log

    def log_then_signal(self, record):
        log(self, record)
        if self.path.name == "metrics.jsonl" and record.get("step") == step and "loss" in record:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(MetricsLog, "log", log_then_signal)


def without_timing(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(path)]


def assert_same_run(resumed: Path, uninterrupted: Path, samples: str) -> None:
    a, b = without_timing(resumed / "metrics.jsonl"), without_timing(uninterrupted / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert a == b
    assert read_jsonl(resumed / samples) == read_jsonl(uninterrupted / samples)
    weights_a = load_file(str(resumed / "final" / "model.safetensors"))
    weights_b = load_file(str(uninterrupted / "final" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])] == []
    summary_a = json.loads((resumed / "final" / "summary.json").read_text())
    summary_b = json.loads((uninterrupted / "final" / "summary.json").read_text())
    assert summary_a["tokens_seen"] == summary_b["tokens_seen"] and summary_a["step"] == summary_b["step"]


def stop_and_resume(script, args, out: Path, step: int, monkeypatch, in_process_runner):
    """Run until step `step`, stopped by SIGTERM; check the stop; resume with the printed command."""
    with monkeypatch.context() as patch:
        signal_at_step(patch, step)
        code, _, stderr = in_process_runner(script, *args, "--output_dir", out)
    assert code == 143, stderr[-3000:]
    ckpt = out / f"step_{step}"
    assert (ckpt / "model.safetensors").is_file() and not (out / "final").exists()
    state = torch.load(ckpt / "training_state.pt", weights_only=True)  # plain tensors and types only
    assert state["step"] == step
    (command,) = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    assert command.startswith("resume with: python ") and command.endswith(f"--resume_from {ckpt}")
    argv = shlex.split(command.removeprefix("resume with: "))
    assert Path(argv[1]).name == script
    # The same command without --resume_from is refused: the stopped run is kept.
    code, _, stderr = in_process_runner(script, *args, "--output_dir", out)
    assert_user_error(code, stderr, "already holds an earlier run", "--resume_from auto")
    code, _, stderr = in_process_runner(script, *argv[2:])
    assert code == 0, stderr[-3000:]
    assert f"resuming {out} from step_{step}" in stderr
    return state


def test_sft_stopped_and_resumed_equals_uninterrupted(data, tmp_path, monkeypatch, in_process_runner):
    reference = start_script("train_sft.py", *sft_args(data), "--output_dir", tmp_path / "uninterrupted")
    state = stop_and_resume("train_sft.py", sft_args(data), tmp_path / "resumed", 3, monkeypatch, in_process_runner)
    assert state["batches_drawn"] == 7  # epoch 1 (4 micro-batches, steps 1-2) + 3 of epoch 2 (step 3)
    assert state["scheduler"]["last_epoch"] == 3
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    assert_same_run(tmp_path / "resumed", tmp_path / "uninterrupted", "eval_samples.jsonl")


def test_grpo_stopped_and_resumed_equals_uninterrupted(data, tmp_path, monkeypatch, in_process_runner):
    reference = start_script("train_grpo.py", *grpo_args(data), "--output_dir", tmp_path / "uninterrupted")
    stop_and_resume("train_grpo.py", grpo_args(data), tmp_path / "resumed", 2, monkeypatch, in_process_runner)
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    resumed = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert any(r.get("kl", 0) > 0 for r in resumed), "KL stayed 0: the reference model was not exercised"
    assert_same_run(tmp_path / "resumed", tmp_path / "uninterrupted", "samples.jsonl")


def test_sigterm_from_outside_leaves_a_resumable_run(data, tmp_path, script_runner):
    """A real SIGTERM at whatever step the run is in: it saves that step, prints the command, exits 143; the
    README command (`--resume_from auto`) finishes the run, with one metrics line per step."""
    out = tmp_path / "run"
    # 60 steps: the signal (sent as soon as metrics.jsonl appears, after step 1) lands long before the last step,
    # and the resumed run stays cheap (400 steps cost half a minute of CPU for nothing more checked).
    args = [*sft_args(data, "--max_steps", "60", "--eval_every", "60", "--gradient_accumulation_steps", "1"),
            "--output_dir", out]
    proc = start_script("train_sft.py", *args)
    deadline = time.time() + 600  # a loaded machine can take minutes to start the interpreter
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr[-3000:]
    (ckpt,) = out.glob("step_*")
    assert f"stopped by SIGTERM after {ckpt.name}; saved {ckpt}" in stderr
    assert not list(out.glob(".*tmp*"))
    code, _, stderr = script_runner("train_sft.py", *args, "--resume_from", "auto", timeout=300)
    assert code == 0, stderr[-3000:]
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 61))
    assert json.loads((out / "final" / "summary.json").read_text())["step"] == 60


def test_resume_refuses_a_changed_config_but_not_a_longer_run(data, tmp_path, monkeypatch, in_process_runner):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_at_step(patch, 1, signal.SIGINT)
        code, _, stderr = in_process_runner("train_sft.py", *sft_args(data), "--output_dir", out)
    assert code == 130 and (out / "step_1").is_dir(), stderr[-2000:]
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data), "--output_dir", out, "--resume_from", "auto",
                                        "--learning_rate", "1e-3", "--seed", "7", "--max_steps", "3")
    assert_user_error(code, stderr, "differs from the saved one in learning_rate, seed;")
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data), "--output_dir", out, "--resume_from",
                                        out / "step_1", "--max_steps", "3", "--eval_every", "3")
    assert_user_error(code, stderr, "eval_every")
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data), "--output_dir", out, "--resume_from", "auto",
                                        "--max_steps", "1")
    assert_user_error(code, stderr, "the run is at step 1 and this command ends it at step 1")
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data), "--output_dir", out, "--resume_from", "auto",
                                        "--max_steps", "3")
    assert code == 0, stderr[-2000:]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data), "--output_dir", out, "--resume_from", "auto")
    assert_user_error(code, stderr, "already finished (final/ exists)")


def test_resume_command_replaces_an_earlier_resume_from():
    argv = ["train_sft.py", "--config", "c y.yaml", "--resume_from", "auto", "--resume_from=x", "--seed", "1"]
    assert resume_command(Path("out/step_5"), argv) == \
        "python train_sft.py --config 'c y.yaml' --seed 1 --resume_from out/step_5"


def test_a_signal_on_one_process_stops_every_process_with_its_status(monkeypatch, capsys, tmp_path):
    """`kill PID` reaches one process of a launch: every process stops after the step (else one would wait in a
    collective forever), each exits with that signal's status, and only the main process prints the message."""
    def as_process(rank: int, signalled: list[int]) -> tuple[bool, int, str]:
        monkeypatch.setattr(resume, "values_over_processes", lambda value: signalled)  # every process's signal
        monkeypatch.setattr(resume, "is_main_process", lambda: rank == 0)
        stop = StopSignals.__new__(StopSignals)  # no handlers installed in the test process
        stop.signum = signalled[rank] or None
        requested = stop.requested_on_any_process()
        with pytest.raises(SystemExit) as exit_:
            stop.exit(tmp_path / "step_3")
        return requested, exit_.value.code, capsys.readouterr().err

    signalled = [0, int(signal.SIGTERM)]  # the signal reached process 1 only
    main, other = as_process(0, signalled), as_process(1, signalled)
    assert main[:2] == other[:2] == (True, 143)
    assert main[2].startswith("stopped by SIGTERM after step_3") and other[2] == ""
    quiet = StopSignals.__new__(StopSignals)
    quiet.signum = None
    monkeypatch.setattr(resume, "values_over_processes", lambda value: [0, 0])
    assert quiet.requested_on_any_process() is False and quiet.signum is None


def test_batches_fast_forward_continues_the_same_stream():
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=3, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    full = Batches(loader)
    expected = [b.tolist() for _ in range(3) for b in full]  # 3 epochs of 4 batches
    for skipped in (0, 2, 4, 5, 11):
        loader.generator.manual_seed(0)
        stream = Batches(loader)
        stream.fast_forward(skipped)
        assert stream.drawn == skipped
        rest = [b.tolist() for _ in range(3) for b in stream][:12 - skipped]
        assert rest == expected[skipped:], skipped


# ---------------------------------------------------------------------------------------------------------
# The non-finite guard
# ---------------------------------------------------------------------------------------------------------

def strict_json_lines(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{path}: bare {constant} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("script, args", [
    ("train_sft.py", lambda d: sft_args(d, "--gradient_accumulation_steps", "1", "--save_every", "1")),
    ("train_grpo.py", lambda d: grpo_args(d, "--save_every", "1", "--num_train_steps", "10", "--warmup_steps", "10")),
], ids=["sft", "grpo"])
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, in_process_runner,
                                                                          script, args):
    out = tmp_path / "run"
    code, _, stderr = in_process_runner(script, *args(data), "--learning_rate", "1e6", "--output_dir", out)
    assert_user_error(code, stderr, "non-finite loss at step")
    step = int(stderr.split("non-finite loss at step ")[1].split()[0])
    assert not (out / "final").exists() and not (out / f"step_{step}").exists()
    saved = sorted(out.glob("step_*"))
    assert saved, "the run diverged before any save: nothing shows that good checkpoints are kept"
    for ckpt in saved:
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values()), ckpt
    assert f"the last good checkpoint is {out / f'step_{step - 1}'}" in stderr
    strict_json_lines(out / "metrics.jsonl")


def test_metrics_log_writes_valid_json_for_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()  # created by the first record, not before
    log.log({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "kl": -float("inf"), "lr": 0.5})
    log.close()
    (record,) = strict_json_lines(tmp_path / "m.jsonl")
    assert record == {"step": 1, "loss": "nan", "grad_norm": "inf", "kl": "-inf", "lr": 0.5}
    assert math.isnan(float(record["loss"])) and float(record["kl"]) == -math.inf


def test_save_refuses_non_finite_weights(tmp_path, micro_model_and_tokenizer, micro_config):
    import copy

    model, tokenizer = micro_model_and_tokenizer
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters())[0, 0] = float("nan")
    with pytest.raises(UserError, match="non-finite weights"):
        save_checkpoint(tmp_path, "step_3", broken, tokenizer, micro_config)
    assert list(tmp_path.iterdir()) == []


def test_sampling_guard_names_the_step(tmp_path):
    with pytest.raises(UserError, match="non-finite loss at step 4 .*sampling probabilities"):
        with sampling_guard(4, tmp_path):
            torch.multinomial(torch.tensor([[float("nan"), 1.0]]), 1)


# ---------------------------------------------------------------------------------------------------------
# Crash-safe saving
# ---------------------------------------------------------------------------------------------------------

def test_save_flushes_every_file_before_the_rename(tmp_path, monkeypatch, micro_model_and_tokenizer, micro_config):
    model, tokenizer = micro_model_and_tokenizer
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), replace(a, b)))
    save_checkpoint(tmp_path, "step_1", model, tokenizer, micro_config, summary={"step": 1})
    renamed = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(renamed) == 1
    flushed = {Path(path).name for kind, path in events[:renamed[0]] if kind == "fsync"}
    assert {"model.safetensors", "config.json", "config.yaml", "summary.json", "tokenizer.json"} <= flushed
    assert any(kind == "fsync" and path == str(tmp_path) for kind, path in events[renamed[0]:])


def test_full_disk_is_a_one_line_error_naming_the_path(tmp_path, monkeypatch, micro_model_and_tokenizer,
                                                      micro_config):
    import errno

    model, tokenizer = micro_model_and_tokenizer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", full)
    with pytest.raises(UserError, match=f"no space left on device while writing {tmp_path / 'step_2'}") as error:
        save_checkpoint(tmp_path, "step_2", model, tokenizer, micro_config)
    assert str(error.value).endswith("resume with: " + resume_command("auto"))  # the launch's own command
    assert list(tmp_path.iterdir()) == []  # the half-written temporary directory is gone
    if Path("/dev/full").exists():  # a device that is always full: the metrics log says so too
        with pytest.raises(UserError, match="no space left on device while writing /dev/full"):
            MetricsLog("/dev/full").log({"step": 1, "loss": 1.0})


def test_debris_of_a_killed_save_never_blocks_a_start_or_resume(data, tmp_path, monkeypatch, in_process_runner):
    """A save killed midway leaves `.step_N.tmp-PID`; a fresh start and a resume both remove it."""
    def debris(out: Path, name: str) -> Path:
        tmp = out / name
        tmp.mkdir(parents=True)
        (tmp / "model.safetensors").write_bytes(b"\0" * 10)
        return tmp

    dead_pid = 2**22 + 12345  # above Linux's default pid_max: never a live process
    fresh = tmp_path / "fresh"
    debris(fresh, f".step_2.tmp-{dead_pid}")
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data, "--max_steps", "1"), "--output_dir", fresh)
    assert code == 0, stderr[-2000:]
    assert sorted(p.name for p in fresh.iterdir()) == ["eval_samples.jsonl", "final", "metrics.jsonl"]

    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        signal_at_step(patch, 1)
        code, _, _ = in_process_runner("train_sft.py", *sft_args(data, "--max_steps", "2"), "--output_dir", out)
    assert code == 143
    debris(out, f".step_2.tmp-{dead_pid}")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "loss": 4.')  # a line cut short by the kill
    code, _, stderr = in_process_runner("train_sft.py", *sft_args(data, "--max_steps", "2"), "--output_dir", out,
                                        "--resume_from", "auto")
    assert code == 0, stderr[-2000:]
    assert not list(out.glob(".*"))


def test_live_process_saves_are_left_alone(tmp_path):
    live = tmp_path / f".step_3.tmp-{os.getppid()}"
    live.mkdir()
    checkpoint.prepare_output_dir(tmp_path)
    assert live.is_dir()


def test_building_the_tiny_model_leaves_the_callers_rng_alone(tmp_path, monkeypatch, micro_config):
    """The first run of a shape builds the built-in model; before the fix, seeding its init moved the global RNG,
    so that first GRPO run sampled differently from every later one with the same config and seed."""
    from mathrl import modeling

    monkeypatch.setattr(modeling, "BUILTIN_DIR", tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    built = modeling.builtin_model_dir(micro_config)
    assert (built / "model.safetensors").is_file()
    assert torch.equal(torch.get_rng_state(), before)
