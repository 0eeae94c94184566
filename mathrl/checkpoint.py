"""Checkpoints and run logs.

A checkpoint directory (`OUTPUT_DIR/step_N/` or `OUTPUT_DIR/final/`) holds the model and tokenizer in
Hugging Face format, the resolved config, the training state (optimizer, scheduler, step, RNG) and a run
summary. It is written to a temporary directory `.NAME.tmp-PID`, flushed to disk (fsync) and renamed into
place, so a crash or a kill never leaves half a checkpoint under a checkpoint's name; the debris of such a
crash is removed when a run starts or resumes in that directory. A run refuses to start in a directory that
already holds checkpoints, so no run ever overwrites an earlier one (mathrl/resume.py continues one instead).

A model sharded with FSDP (mathrl/fsdp.py) is saved in the same format: every process takes part in gathering
the full weights and the full optimizer state onto the main process, which alone writes them (the optimizer
state then keyed by parameter name instead of number; mathrl/resume.py loads either back).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mathrl.config import save_config
from mathrl import deepspeed_zero
from mathrl.deepspeed_zero import is_deepspeed_optimizer
from mathrl.distributed import gather_in_order, is_main_process, process_count, wait_for_everyone
from mathrl.errors import UserError
from mathrl.fsdp import full_optimizer_state, full_weights, is_sharded
from mathrl.lora import save_model

TRAINING_STATE_NAME = "training_state.pt"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"


def prepare_output_dir(output_dir: str | Path, resuming: bool = False) -> Path:
    """Create the run directory; refuse one that already holds an earlier run's checkpoints or metrics (unless
    this run resumes it). Debris of an interrupted save (`.step_N.tmp-PID`) is removed."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir}: is a file, expected a directory")
    if output_dir.exists() and not resuming:
        earlier = sorted(p.name for p in output_dir.iterdir() if p.name == "final" or p.name.startswith("step_"))
        if earlier or (output_dir / METRICS_NAME).exists():
            what = ", ".join(earlier[:3]) or METRICS_NAME
            raise UserError(
                f"{output_dir} already holds an earlier run ({what}); nothing was overwritten. "
                f"Pass another --output_dir, resume it with --resume_from auto, or move that directory away first"
            )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output_dir {output_dir}: cannot create the directory ({err.strerror})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise UserError(f"--output_dir {output_dir}: the directory is not writable")
    remove_save_debris(output_dir)
    wait_for_everyone()  # every process has checked the directory before the main process writes into it
    return output_dir


# The temporary directory a checkpoint is written to before its rename (group 1: the writing process's id).
TMP_CHECKPOINT = re.compile(r"\.(?:step_\d+|final)\.tmp-(\d+)")


def remove_save_debris(output_dir: Path) -> list[Path]:
    """Delete the temporary directories of saves that a crash or kill cut short (never a live process's)."""
    removed = []
    for path in output_dir.iterdir():
        match = TMP_CHECKPOINT.fullmatch(path.name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not saving yet: a leftover with its id is from an earlier process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rng_state() -> dict:
    """Every random generator a run draws from, as types `torch.load(..., weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put every generator back where rng_state() found it."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, optimizer, scheduler, clock, step: int, batches_drawn: int) -> dict:
    """What resuming needs besides the weights (RNG state is added by save_checkpoint): `batches_drawn` is the
    run's position in its seeded data stream (batches taken from it so far). Called on every process: with
    several, "process_rng" holds each one's RNG state (GRPO's processes sample from their own streams), and a
    sharded model's optimizer state is gathered from every process (complete on the main process only). A DeepSpeed
    optimizer's state is not saved (None; mathrl/deepspeed_zero.py): such a checkpoint is not resumed."""
    if is_deepspeed_optimizer(optimizer):
        optimizer_state = None
    else:
        optimizer_state = full_optimizer_state(model, optimizer) if is_sharded(model) else optimizer.state_dict()
    state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": step,
             "batches_drawn": batches_drawn, "clock": clock.state_dict()}
    if process_count() > 1:
        state["process_rng"] = gather_in_order([rng_state()])
    return state


def save_checkpoint(output_dir: Path, name: str, model, tokenizer, config: dict,
                    training_state: dict | None = None, summary: dict | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `output_dir/name/` atomically: HF model + tokenizer, config.yaml, training_state.pt, summary.json.
    `weights`: a sharded model's full weights (`gathered_weights`), written in place of its state dict.

    Refuses weights that are not finite (a diverged run keeps its last good checkpoint). Every file is flushed
    to disk before the rename, so after a power cut `name/` is either complete or absent."""
    target = Path(output_dir) / name
    if target.exists():
        raise UserError(f"{target} already exists; refusing to overwrite a checkpoint")
    bad = [n for n, p in (model.state_dict() if weights is None else weights).items() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"non-finite weights ({len(bad)} tensors, first {bad[0]}); {target} was not written")
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if weights is None:
            save_model(model, tmp)  # a LoRA model: merged, with its adapters beside (mathrl/lora.py)
        else:  # (FSDP is never combined with LoRA: fsdp.check_fsdp)
            model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        save_config(config, tmp)
        if training_state is not None:
            torch.save({**training_state, "rng": rng_state()}, tmp / TRAINING_STATE_NAME)
        if summary is not None:
            (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        fsync_tree(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(err, target) from None
    return target


def write_error(err: Exception, path: Path) -> Exception:
    """A failed write as a one-line UserError naming the path (a full disk said plainly); other errors as they are."""
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
        from mathrl.resume import resume_command  # (resume.py imports this module)

        return UserError(f"no space left on device while writing {path}; its last complete step_N/ is intact: free "
                         f"space, then resume with: {resume_command('auto')}")
    if isinstance(err, OSError):
        return UserError(f"cannot write {path} ({err.strerror or err})")
    return err


def fsync_tree(directory: Path) -> None:
    """Flush every file under `directory`, and the directories themselves, to disk."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        fsync_dir(path)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gathered_weights(model) -> dict[str, torch.Tensor] | None:
    """A sharded model's full weights, on the main process ({} on the others); under DeepSpeed, copies of the
    model's (mathrl/deepspeed_zero.py); None for a model that is neither (its own state dict is saved). Called on
    every process: gathering the shards is a collective."""
    if deepspeed_zero.requested():  # whole on every process (ZeRO-2): copied where they are written
        return deepspeed_zero.full_weights(model) if is_main_process() else {}
    return full_weights(model) if is_sharded(model) else None


def save_periodic(output_dir: Path, model, tokenizer, config: dict, optimizer, scheduler, clock, step: int, *,
                  batches_drawn: int, always: bool = False) -> None:
    """OUTPUT_DIR/step_N/ every save_every steps (0: never), or now if `always`, outside the training clock."""
    due = config["save_every"] and step % config["save_every"] == 0
    if due or always:
        with clock.paused():
            state = training_state(model, optimizer, scheduler, clock, step, batches_drawn)
            weights = gathered_weights(model)
            if is_main_process() and (due or not (Path(output_dir) / f"step_{step}").exists()):
                save_checkpoint(output_dir, f"step_{step}", model, tokenizer, config, state, clock.summary(step=step),
                                weights)
            wait_for_everyone()


def save_final(output_dir: Path, model, tokenizer, config: dict, optimizer, scheduler, clock, *, step: int,
               batches_drawn: int, accuracy: float, init_from: str, stopped_by_time: bool) -> Path:
    """Write OUTPUT_DIR/final/ with the run summary and say where it is; the last phase of both trainers."""
    summary = clock.summary(step=step, final_eval_accuracy=accuracy, init_from=init_from,
                            stopped_by_time=stopped_by_time)
    state = training_state(model, optimizer, scheduler, clock, step, batches_drawn)
    weights = gathered_weights(model)
    final = Path(output_dir) / "final"
    if not is_main_process():  # only the main process writes; the others wait until final/ is complete
        wait_for_everyone()
        return final
    final = save_checkpoint(output_dir, "final", model, tokenizer, config, state, summary, weights)
    stop = " (time budget reached)" if stopped_by_time else ""
    print(f"final held-out greedy accuracy {accuracy:.3f} after {step} steps{stop}, "
          f"{summary['wall_time_s']:.0f} s; checkpoint: {final}")
    wait_for_everyone()
    return final


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, flushed as written so a crashed run keeps its curve.

    Always valid JSON: a NaN or infinite number is written as the string "nan", "inf" or "-inf" (which
    Python's float() reads back). The file is created by the first record, so a run that fails before it logs
    anything leaves nothing that would block the same command. `tracker` (mathrl/tracking.py, config key
    `report_to`) receives every record too."""

    def __init__(self, path: str | Path, tracker=None):
        self.path = Path(path)
        self._file = None
        self.tracker = tracker

    def log(self, record: dict) -> None:
        # Full float precision: a KL of 1e-7 between identical models is a bug to see, not to round away.
        if not is_main_process():  # records are reduced over the processes; one copy is written
            return
        try:
            if self._file is None:
                self._file = self.path.open("a")
            self._file.write(json.dumps({k: json_number(v) for k, v in record.items()}, allow_nan=False) + "\n")
            self._file.flush()
        except OSError as err:
            raise write_error(err, self.path) from None
        if self.tracker is not None:
            self.tracker.log(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.tracker is not None:
            self.tracker.close()


def json_number(value):
    """A float as JSON can hold it: non-finite values become the strings "nan", "inf", "-inf"."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


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

    def state_dict(self) -> dict:
        return {"elapsed_s": self.elapsed(), "excluded_s": self.excluded, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved clock: the time the run was stopped does not count."""
        self.start = time.perf_counter() - state["elapsed_s"]
        self.excluded, self.tokens = state["excluded_s"], state["tokens"]

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
