"""Runs that survive: resuming from step_N/, stopping cleanly on SIGINT / SIGTERM, and the non-finite guard.

    python train_sft.py --config configs/tiny.yaml --output_dir runs/sft --resume_from auto
    python train_grpo.py --config configs/tiny.yaml --output_dir runs/grpo --resume_from runs/grpo/step_50

A resumed run continues in its own output_dir from a complete step_N/: weights, optimizer, schedule, step, the
position in its seeded data stream (replayed: the stream is rebuilt from the seed and the batches already
trained on are drawn again and skipped), every RNG state and the run clock; metrics.jsonl and the samples file
are cut back to step N. On CPU (same thread count) the resumed run writes the same metrics (timing fields
aside) and bit-identical weights as the run that was never stopped. The config must be the saved one; only the
run length (RUN_LENGTH_KEYS) may change.

Why not accelerate's save_state / load_state: step_N/ stays one Hugging Face checkpoint (what evaluate.py and
--init_from read) with one training_state.pt beside it (tensors and plain types, loaded weights_only), and the
position in a plain shuffled DataLoader is not part of accelerate's state (only of its seedable or stateful
loaders), while replaying the seeded stream is exact by construction.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch
from transformers import set_seed

from mathrl.checkpoint import TRAINING_STATE_NAME, prepare_output_dir, set_rng_state
from mathrl.config import for_checkpoint, load_saved_config, parse_args
from mathrl.distributed import (is_main_process, launch_prefix, process_count, process_index, process_seed,
                                values_over_processes)
from mathrl import deepspeed_zero
from mathrl.errors import UserError, close_progress_bars
from mathrl.fsdp import check_fsdp, is_sharded, load_full_optimizer_state, load_full_weights
from mathrl.lora import check_lora, load_trained_weights
from mathrl.tracking import check_report_to

RESUME_AUTO = "auto"
# Keys a resumed run may change: how long it runs, nothing about how it trains.
RUN_LENGTH_KEYS = ("max_steps", "num_epochs", "num_train_steps", "max_train_seconds")
STEP_DIR_PREFIX = "step_"


def start_run(section: str, description: str, validate) -> tuple[dict, str, Path | None, Path]:
    """The first phase of both trainers: (config, the checkpoint it starts from, the step_N/ it resumes from or
    None, its output directory). Every check (the script's `validate(config)`, trackers, LoRA, the resume point)
    runs before the output directory is created, so a failed start leaves nothing that blocks the same command.
    Each process seeds its own stream (process 0 keeps `seed`): GRPO's processes must not sample alike."""
    args, config = parse_args(section, add_resume_flag(argparse.ArgumentParser(description=description)))
    validate(config)
    check_report_to(config)
    check_lora(config)
    check_fsdp(config)
    deepspeed_zero.check_deepspeed(config, args.resume_from)
    init_from = config["init_from"] or config["model_name"]
    config = for_checkpoint(config, init_from)  # prompt as init_from was trained
    set_seed(process_seed(config["seed"], process_index()))
    resume_from = resume_checkpoint(args.resume_from, config)
    output_dir = prepare_output_dir(config["output_dir"], resuming=resume_from is not None)
    return config, init_from, resume_from, output_dir


def add_resume_flag(parser):
    parser.add_argument("--resume_from", default=None, metavar="auto|DIR",
                        help="continue this run (its --output_dir) from its latest complete step_N/ (auto) or DIR")
    return parser


# ---- finding and checking the checkpoint --------------------------------------------------------------------

def step_number(path: Path) -> int | None:
    name = path.name
    if name.startswith(STEP_DIR_PREFIX) and name[len(STEP_DIR_PREFIX):].isdigit():
        return int(name[len(STEP_DIR_PREFIX):])
    return None


def complete_steps(output_dir: Path) -> list[Path]:
    """The step_N/ checkpoints of a run that hold a training state, oldest first."""
    if not output_dir.is_dir():
        return []
    steps = [p for p in output_dir.iterdir()
             if step_number(p) is not None and (p / TRAINING_STATE_NAME).is_file()]
    return sorted(steps, key=step_number)


def resume_checkpoint(resume_from: str | None, config: dict) -> Path | None:
    """The step_N/ to resume from (None: a fresh run), after checking it belongs to this run and config."""
    if resume_from is None:
        return None
    output_dir = Path(config["output_dir"])
    if (output_dir / "final").exists():
        raise UserError(f"--resume_from {resume_from}: {output_dir} already finished (final/ exists); "
                        "nothing to resume")
    steps = complete_steps(output_dir)
    if resume_from == RESUME_AUTO:
        if not steps:
            raise UserError(f"--resume_from auto: {output_dir} holds no complete step_N/ checkpoint to resume from")
        ckpt = steps[-1]
    else:
        ckpt = Path(resume_from)
        if step_number(ckpt) is None or not (ckpt / TRAINING_STATE_NAME).is_file():
            raise UserError(f"--resume_from {ckpt}: not a complete step_N/ checkpoint (no {TRAINING_STATE_NAME})")
        if ckpt.resolve().parent != output_dir.resolve():
            raise UserError(f"--resume_from {ckpt}: a run continues in its own directory, and this one is not in "
                            f"--output_dir {output_dir}; pass --output_dir {ckpt.parent}")
        later = [p.name for p in steps if step_number(p) > step_number(ckpt)]
        if later:
            raise UserError(f"--resume_from {ckpt}: {output_dir} holds later checkpoints ({', '.join(later)}); "
                            "resume from the latest (--resume_from auto) or move them away")
    changed = changed_keys(load_saved_config(ckpt), config)
    if changed:
        raise UserError(f"--resume_from {ckpt}: the config differs from the saved one in {', '.join(changed)}; "
                        f"only {', '.join(RUN_LENGTH_KEYS)} may change when resuming")
    return ckpt


def changed_keys(saved: dict, config: dict) -> list[str]:
    """Keys whose value differs between the saved and the current config (run length aside)."""
    def same(key):
        a, b = saved.get(key, "<missing>"), config.get(key, "<missing>")
        if key == "output_dir":
            return Path(str(a)).resolve() == Path(str(b)).resolve()
        return a == b
    return sorted(k for k in set(saved) | set(config) if k not in RUN_LENGTH_KEYS and not same(k))


# ---- restoring ------------------------------------------------------------------------------------------------

def resume_run(ckpt: Path, model, optimizer, scheduler, clock, skip_batches, log_names: tuple[str, ...], *,
               total_steps: int) -> int:
    """Put a run back in the state saved in `ckpt` and return its step.

    `skip_batches(n)` fast-forwards the run's data stream past the n batches already trained on. The RNG states
    are restored last, so nothing done here (loading, replaying the stream) moves them."""
    state = torch.load(ckpt / TRAINING_STATE_NAME, map_location="cpu", weights_only=True)
    if state["step"] >= total_steps:
        raise UserError(f"--resume_from {ckpt}: the run is at step {state['step']} and this command ends it at step "
                        f"{total_steps}; a resumed run must go on (raise {' or '.join(RUN_LENGTH_KEYS[:3])})")
    if state["optimizer"] is None:  # a DeepSpeed run's checkpoint (mathrl/deepspeed_zero.py)
        raise UserError(f"--resume_from {ckpt}: saved by a DeepSpeed run, without its optimizer state; start a new "
                        f"run from its weights: --init_from {ckpt} --output_dir NEW_DIR")
    if is_sharded(model):  # full weights and optimizer state (mathrl/checkpoint.py), split into this process's shards
        load_full_weights(model, saved_weights(ckpt))
        load_full_optimizer_state(model, optimizer, state["optimizer"])
    else:
        load_trained_weights(model, ckpt)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    clock.load_state_dict(state["clock"])
    if is_main_process():
        for name in log_names:
            cut_log(ckpt.parent / name, state["step"])
    skip_batches(state["batches_drawn"])
    set_rng_state(process_rng_state(state, ckpt))
    print(f"resuming {ckpt.parent} from {ckpt.name} (step {state['step']})", file=sys.stderr)
    return state["step"]


def saved_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's full weights by name (tied names included), as from_pretrained reads them. Every process
    reads the file (the checkpoint's directory must be visible to all of them)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).state_dict()


def process_rng_state(state: dict, ckpt: Path) -> dict:
    """This process's saved RNG state: "rng" with one process, its own entry of "process_rng" with several."""
    k, rank = process_count(), process_index()
    saved = len(state.get("process_rng", [state["rng"]]))
    if saved != k:
        raise UserError(f"--resume_from {ckpt}: saved by {saved} process(es), resumed on {k}; resume on {saved} "
                        "(each process's sampling stream is part of the saved state)")
    return state["process_rng"][rank] if k > 1 else state["rng"]


def cut_log(path: Path, step: int) -> None:
    """Drop the records after `step` from a JSONL log (written after the checkpoint, and written again now)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break  # the line a killed process was writing
            raise UserError(f"{path} line {n}: invalid JSON; cannot cut the log back to step {step}") from None
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def skip(iterator, n: int) -> None:
    """Draw and drop the next n items of an iterator."""
    for _ in itertools.islice(iterator, n):
        pass


class Batches:
    """A DataLoader's batches epoch after epoch, counting those drawn, so that a resumed run can skip them.

    Iterate it once per epoch, as the loader itself. Fast-forwarding draws the skipped batches for real, so the
    loader's seeded shuffling advances exactly as in the run that was never stopped."""

    def __init__(self, loader):
        self.loader = loader
        self.drawn = 0
        self._open = None  # the epoch a fast-forward stopped inside of

    def __iter__(self):
        epoch, self._open = self._open or iter(self.loader), None
        for batch in epoch:
            self.drawn += 1
            yield batch

    def fast_forward(self, n: int) -> None:
        while n > 0:
            epoch = iter(self.loader)
            if n >= len(self.loader):
                taken = sum(1 for _ in epoch)  # the whole epoch, to its end, as the run's own loop took it
            else:
                taken = sum(1 for _ in itertools.islice(epoch, n))
                self._open = epoch
            if taken == 0:
                raise UserError("the saved data position lies beyond the training data; was train_file changed?")
            self.drawn += taken
            n -= taken


# ---- stopping -------------------------------------------------------------------------------------------------

class StopSignals:
    """SIGINT and SIGTERM ask the run to stop after the current optimizer step: it saves step_N/, prints the
    command that resumes it, and exits 130 (SIGINT) or 143 (SIGTERM). A second signal stops at once."""

    def __init__(self):
        self.signum = None
        if threading.current_thread() is threading.main_thread():  # the only thread Python delivers signals to
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._handle)

    def requested_on_any_process(self) -> bool:
        """Whether a signal reached some process (`kill PID` may reach only one). Every process then stops after
        this step and takes the signal of the first process that got one, so all exit with the same status."""
        signals = [s for s in values_over_processes(self.signum or 0) if s]
        if signals and self.signum is None:
            self.signum = signals[0]
        return bool(signals)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def exit(self, ckpt: Path) -> None:
        close_progress_bars()
        if is_main_process():  # one message for the launch
            name = signal.Signals(self.signum).name
            if deepspeed_zero.requested():  # its optimizer state is not saved: no resume command to offer
                then = f"start a new run from its weights with: --init_from {ckpt} --output_dir NEW_DIR"
            else:
                then = f"resume with: {resume_command(ckpt)}"
            print(f"stopped by {name} after {ckpt.name}; saved {ckpt}\n{then}", file=sys.stderr, flush=True)
        sys.exit(128 + self.signum)


def resume_command(ckpt: Path | str, argv: list[str] | None = None) -> str:
    """The command this run was launched with (`python ...`, or its `torchrun` / `accelerate launch` command on
    several processes), with --resume_from CKPT (a step_N/ or auto; any earlier --resume_from replaced)."""
    argv = list(sys.argv if argv is None else argv)
    args, i = [], 1
    while i < len(argv):
        if argv[i] == "--resume_from":
            i += 2
            continue
        if not argv[i].startswith("--resume_from="):
            args.append(argv[i])
        i += 1
    return shlex.join([*launch_prefix(argv), argv[0], *args, "--resume_from", str(ckpt)])


# ---- the non-finite guard -------------------------------------------------------------------------------------

def check_finite(step: int, output_dir: Path, accelerator, *, loss: float, grad_norm: float) -> None:
    """Stop the run when the loss or gradient norm is NaN or infinite: nothing from this step is ever saved.

    Under fp16 loss scaling an infinite gradient norm is routine: the scaler skips that update and lowers the
    scale, so a skipped update's gradient norm is not a divergence."""
    values = {"loss": loss} if accelerator.optimizer_step_was_skipped else {"loss": loss, "grad_norm": grad_norm}
    if all(math.isfinite(v) for v in values.values()):
        return
    raise_non_finite(step, output_dir, ", ".join(f"{k} {v:.6g}" for k, v in values.items()))


def raise_non_finite(step: int, output_dir: Path, details: str) -> None:
    steps = complete_steps(Path(output_dir))
    last = f"the last good checkpoint is {steps[-1]}" if steps else "no checkpoint was written"
    raise UserError(f"non-finite loss at step {step} ({details}); {last}. Lower learning_rate or max_grad_norm")


class sampling_guard:
    """Turn torch's 'probability tensor contains either inf, nan or element < 0' (sampling from a policy whose
    weights diverged at the previous update) into the non-finite error."""

    def __init__(self, step: int, output_dir: Path):
        self.step, self.output_dir = step, output_dir

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, RuntimeError) and "probability tensor contains" in str(err):
            raise_non_finite(self.step, self.output_dir, "the policy's sampling probabilities are not finite: "
                                                         "the previous update diverged")
        return False
