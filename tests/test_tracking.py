"""Config key `report_to` (mathrl/tracking.py): TensorBoard event files hold metrics.jsonl's numbers, train and eval
curves both, for both trainers; a tracker whose package is missing is a one-line error before anything is written."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest

from conftest import MICRO_OVERRIDES, REPO_ROOT, TINY_CONFIG, assert_user_error
from mathrl.errors import UserError
from mathrl.tracking import TENSORBOARD_DIR, check_report_to, scalars


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def event_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...] in the order written} from every TensorBoard event file under log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event files under {log_dir}"
    found: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((event.step, event.value) for event in events.Scalars(tag))
    return found


def data_args(tmp: Path) -> list[str]:
    rows = {name: (REPO_ROOT / "data" / f"tiny_{name}.jsonl").read_text().splitlines()[:8]
            for name in ("train", "eval", "ood")}
    for name, lines in rows.items():
        (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return ["--train_file", tmp / "train.jsonl", "--eval_file", tmp / "eval.jsonl",
            "--ood_eval_file", tmp / "ood.jsonl"]


RUNS = {
    "train_sft.py": ["--max_steps", "3", "--batch_size", "4", "--eval_every", "2", "--log_every", "1"],
    "train_grpo.py": ["--num_train_steps", "2", "--batch_size", "2", "--group_size", "2", "--eval_every", "1",
                      "--save_every", "0", "--max_completion_length", "8"],
}


@pytest.mark.parametrize("script", list(RUNS))
def test_tensorboard_scalars_match_metrics_jsonl(tmp_path, in_process_runner, script):
    pytest.importorskip("tensorboard", reason="report_to tensorboard needs the tensorboard package "
                                              "(pip install -r requirements-optional.txt)")
    out = tmp_path / "run"
    code, _, stderr = in_process_runner(script, "--config", TINY_CONFIG, *MICRO_OVERRIDES, *data_args(tmp_path),
                                        *RUNS[script], "--warmup_steps", "0", "--report_to", "tensorboard",
                                        "--output_dir", out)
    assert code == 0, stderr[-3000:]
    records = read_metrics(out)
    assert any("eval_accuracy" in r for r in records) and any("loss" in r for r in records)
    logged = event_scalars(out / TENSORBOARD_DIR)
    expected: dict[str, list[tuple[int, float]]] = {}  # a name can come twice at one step (train and eval lines)
    for record in records:
        for name, value in scalars(record).items():
            expected.setdefault(name, []).append((record["step"], value))
    assert set(logged) == set(expected)
    for name, points in expected.items():
        assert [step for step, _ in logged[name]] == [step for step, _ in points], name
        # Event files store float32.
        assert [v for _, v in logged[name]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-6), name


def test_scalars_keep_numbers_only():
    record = {"step": 3, "loss": 0.5, "tokens": 12, "eval_set": "eval", "stopped": True, "kl": math.inf}
    assert scalars(record) == {"loss": 0.5, "tokens": 12.0, "kl": math.inf}


@pytest.mark.parametrize("tracker, package", [("tensorboard", "tensorboard"), ("trackio", "trackio"),
                                              ("wandb", "wandb")])
def test_missing_tracker_package_names_it(monkeypatch, tracker, package):
    real_import = builtins.__import__

    def no_tracker(name, *args, **kwargs):
        if name.split(".")[0] == package:
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tracker)
    with pytest.raises(UserError, match=f"report_to {tracker} needs the {package} package: pip install {package}"):
        check_report_to({"report_to": tracker})


def test_unknown_tracker_is_a_one_line_error_before_any_output(tmp_path, in_process_runner):
    out = tmp_path / "run"
    code, _, stderr = in_process_runner("train_sft.py", "--config", TINY_CONFIG, *MICRO_OVERRIDES,
                                        "--report_to", "mlflow", "--output_dir", out)
    assert_user_error(code, stderr, 'report_to "mlflow"', "none, tensorboard, trackio, wandb")
    assert not out.exists()


class FakeRunModule:
    """Stands in for the wandb / trackio module: records init, log and finish calls."""

    def __init__(self):
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))

    def log(self, metrics, step):
        self.calls.append(("log", metrics, step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
def test_run_trackers_get_metrics_jsonl_names_and_steps(tmp_path, monkeypatch, tracker):
    import socket
    import sys

    from mathrl.checkpoint import MetricsLog
    from mathrl.tracking import make_tracker

    fake = FakeRunModule()
    monkeypatch.setitem(sys.modules, tracker, fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    config = {"report_to": tracker, "learning_rate": 1e-3}
    log = MetricsLog(tmp_path / "metrics.jsonl", tracker=make_tracker(config, tmp_path))
    log.log({"step": 1, "loss": 0.5, "eval_set": "eval"})
    log.log({"step": 2, "eval_accuracy": 0.25})
    log.close()
    init = fake.calls[0][1]
    assert init["project"] == "mathrl" and init["config"] == config and init["name"] == str(tmp_path)
    if tracker == "wandb":
        assert init["mode"] == "offline" and init["dir"] == str(tmp_path)  # no network: offline files
    assert fake.calls[1:] == [("log", {"loss": 0.5}, 1), ("log", {"eval_accuracy": 0.25}, 2), ("finish",)]
