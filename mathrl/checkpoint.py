"""Checkpoints and run logs.

A checkpoint directory (`OUTPUT_DIR/step_N/` or `OUTPUT_DIR/final/`) holds the model and tokenizer in
Hugging Face format, the resolved config, the training state (optimizer, scheduler, step, RNG) and a run
summary. It is written to a temporary directory and renamed into place, so a crash never leaves half a
checkpoint, and a run refuses to start in a directory that already holds checkpoints, so no run ever
overwrites an earlier one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from mathrl.config import save_config
from mathrl.errors import UserError

TRAINING_STATE_NAME = "training_state.pt"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"


def prepare_output_dir(output_dir: str | Path) -> Path:
    """Create the run directory; refuse one that already holds an earlier run's checkpoints or metrics."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        earlier = sorted(p.name for p in output_dir.iterdir() if p.name == "final" or p.name.startswith("step_"))
        if earlier or (output_dir / METRICS_NAME).exists():
            what = ", ".join(earlier[:3]) or METRICS_NAME
            raise UserError(
                f"{output_dir} already holds an earlier run ({what}); nothing was overwritten. "
                f"Pass another --output_dir, or move that directory away first"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def training_state(optimizer, scheduler, step: int) -> dict:
    """What resuming would need besides the weights (RNG state is added by save_checkpoint)."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}


def save_checkpoint(output_dir: Path, name: str, model, tokenizer, config: dict,
                    training_state: dict | None = None, summary: dict | None = None) -> Path:
    """Write `output_dir/name/` atomically: HF model + tokenizer, config.yaml, training_state.pt, summary.json."""
    target = Path(output_dir) / name
    if target.exists():
        raise UserError(f"{target} already exists; refusing to overwrite a checkpoint")
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_config(config, tmp)
    if training_state is not None:
        torch.save({**training_state, "rng": rng_state()}, tmp / TRAINING_STATE_NAME)
    if summary is not None:
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def save_periodic(output_dir: Path, model, tokenizer, config: dict, optimizer, scheduler, clock, step: int) -> None:
    """OUTPUT_DIR/step_N/ every save_every steps (0: never), outside the training clock."""
    if config["save_every"] and step % config["save_every"] == 0:
        with clock.paused():
            save_checkpoint(output_dir, f"step_{step}", model, tokenizer, config,
                            training_state(optimizer, scheduler, step), clock.summary(step=step))


def save_final(output_dir: Path, model, tokenizer, config: dict, optimizer, scheduler, clock, *, step: int,
               accuracy: float, init_from: str, stopped_by_time: bool) -> Path:
    """Write OUTPUT_DIR/final/ with the run summary and say where it is; the last phase of both trainers."""
    summary = clock.summary(step=step, final_eval_accuracy=accuracy, init_from=init_from,
                            stopped_by_time=stopped_by_time)
    final = save_checkpoint(output_dir, "final", model, tokenizer, config,
                            training_state(optimizer, scheduler, step), summary)
    stop = " (time budget reached)" if stopped_by_time else ""
    print(f"final held-out greedy accuracy {accuracy:.3f} after {step} steps{stop}, "
          f"{summary['wall_time_s']:.0f} s; checkpoint: {final}")
    return final


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, flushed as written so a crashed run keeps its curve."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = self.path.open("a")

    def log(self, record: dict) -> None:
        # Full float precision: a KL of 1e-7 between identical models is a bug to see, not to round away.
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RunClock:
    """Wall time, training time, tokens seen, peak memory and device for a run's summary.json.

    Training time is wall time minus the blocks run under `paused()` (evaluation, checkpoint saving), so it
    measures the training steps alone and does not depend on how often a run evaluates or saves.
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.tokens = 0
        self.excluded = 0.0  # seconds spent in paused() blocks

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def train_seconds(self) -> float:
        return self.elapsed() - self.excluded

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside this block does not count as training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def summary(self, **extra) -> dict:
        return {"wall_time_s": round(self.elapsed(), 3), "train_seconds": round(self.train_seconds(), 3),
                "tokens_seen": self.tokens, "peak_memory_mb": round(peak_memory_mb(), 1),
                "device": device_name(), "torch_threads": torch.get_num_threads(), **extra}


def device_name() -> str:
    """What the run trained on, for reports: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_memory_mb() -> float:
    """Peak GPU memory if on CUDA, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
