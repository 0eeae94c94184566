"""Experiment trackers (config key `report_to`): the metrics.jsonl records, sent to TensorBoard, Trackio or W&B too.

metrics.jsonl is always written and stays the record of a run; a tracker receives every record logged to it (train
steps and evaluations alike) under the same names, at the record's `step`, numbers only. Each tracker is an
optional dependency, imported only when `report_to` names it (tensorboard is in requirements-optional.txt).

    none          nothing but metrics.jsonl
    tensorboard   event files under OUTPUT_DIR/runs/ (`tensorboard --logdir OUTPUT_DIR/runs`)
    trackio       trackio.init / log / finish, project "mathrl", the run named after OUTPUT_DIR
    wandb         the same through wandb; offline (files under OUTPUT_DIR/wandb/, `wandb sync` them later) when
                  api.wandb.ai cannot be reached or WANDB_MODE says so

A resumed run sends again the steps after its checkpoint; TensorBoard shows both copies of those steps, W&B keeps
the first (its steps must increase), metrics.jsonl is cut back and holds one.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mathrl.errors import UserError

REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
PROJECT = "mathrl"
TENSORBOARD_DIR = "runs"


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers (bools and strings dropped; non-finite numbers kept as floats), without its step."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _require(package: str, tracker: str):
    try:
        return __import__(package)
    except ImportError:
        raise UserError(f"report_to {tracker} needs the {package} package: pip install {package}") from None


class TensorBoardTracker:
    def __init__(self, output_dir: Path):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))

    def log(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=record["step"])
        self.writer.flush()  # a crashed run keeps its curve, as metrics.jsonl does

    def close(self) -> None:
        self.writer.close()


class RunTracker:
    """trackio and wandb share one interface: init(project, name, config, ...), log(metrics, step), finish()."""

    def __init__(self, module, config: dict, output_dir: Path, **init_kwargs):
        self.module = module
        self.run = module.init(project=PROJECT, name=str(output_dir), config=config, **init_kwargs)

    def log(self, record: dict) -> None:
        self.module.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.module.finish()


def wandb_mode() -> str:
    """WANDB_MODE when set; otherwise online when api.wandb.ai answers within 3 s, offline when it does not."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        return "online"
    except OSError:
        return "offline"


PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def check_report_to(config: dict) -> None:
    """Fail before anything is written when `report_to` is unknown or its package is not installed."""
    choice = config["report_to"]
    if choice not in REPORT_TO:
        raise UserError(f'report_to "{choice}": expected one of {", ".join(REPORT_TO)}')
    if choice != "none":
        _require(PACKAGES[choice], choice)


def make_tracker(config: dict, output_dir: Path):
    """The tracker `report_to` names, or None for "none"."""
    check_report_to(config)
    choice = config["report_to"]
    if choice == "tensorboard":
        return TensorBoardTracker(output_dir)
    if choice == "trackio":
        return RunTracker(_require("trackio", choice), config, output_dir)
    if choice == "wandb":
        return RunTracker(_require("wandb", choice), config, output_dir, dir=str(output_dir), mode=wandb_mode())
    return None
