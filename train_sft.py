"""Supervised fine-tuning on arithmetic problems (paper section 3.2).

    python train_sft.py --config configs/tiny.yaml          # built-in tiny model, CPU, minutes
    python train_sft.py                                      # the paper's TinyLlama-1.1B-Chat run (GPU)
    python train_sft.py --learning_rate 1e-4 --num_epochs 1 --output_dir runs/try1
    python train_sft.py --config configs/tiny.yaml --init_from checkpoints/tiny/sft/step_250 --max_train_seconds 60
    python train_sft.py --config configs/tiny.yaml --resume_from auto    # continue an interrupted run
    python train_sft.py --config configs/tiny_reasoning.yaml   # worked solutions as targets (sft_target: solution)
    torchrun --standalone --nproc_per_node 2 train_sft.py --config configs/tiny.yaml   # k processes (README)
    torchrun --standalone --nproc_per_node 2 train_sft.py --config configs/tiny.yaml --fsdp true   # sharded

Writes OUTPUT_DIR/metrics.jsonl, OUTPUT_DIR/eval_samples.jsonl, OUTPUT_DIR/step_N/ and OUTPUT_DIR/final/
(Hugging Face model + tokenizer, resolved config, training state, run summary). `init_from` starts from a
checkpoint instead of model_name; `max_train_seconds` ends the run after the optimizer step at which training
time (wall time minus evaluation and checkpoint saving; `elapsed_s` in metrics.jsonl) reaches it, and
summary.json says `stopped_by_time`. The loss is mathrl/objectives.py's `sft_loss`; the training step computes it
with the shared-prefix fast path beside it (mathrl/fast_paths.py), which gives the same loss and gradients.
SIGINT / SIGTERM stop the run after the current
optimizer step with a saved step_N/ and the command that resumes it (`--resume_from auto|DIR`, exact on CPU:
mathrl/resume.py); a NaN or infinite loss or gradient norm stops it with an error, and no non-finite checkpoint is
written.

How this departs from the paper:
- The loss covers the answer tokens and a trailing EOS only (prompt and padding masked), so the model learns
  to stop after the answer; the paper's reference code trained on the whole sequence and never trained EOS.
  `--loss_on all` restores the whole-sequence loss (EOS is still appended).
- The answer's tokens are those that follow the prompt when prompt and answer are tokenized together
  (mathrl/prompts.py), and the prompt is formatted with the chat template for chat models (`prompt_format:
  chat`, BOS added when the template lacks it); `plain` is the paper's `prompt + " " + answer`.
- Cosine schedule with optional warmup, gradient accumulation and mixed precision through accelerate; held-out
  greedy accuracy is measured during training, not only at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mathrl.checkpoint import METRICS_NAME, MetricsLog, RunClock, save_final, save_periodic
from mathrl.config import require_positive
from mathrl.distributed import any_process, local_rows, loss_divisor, sum_over_processes
from mathrl.errors import UserError, run_cli
from mathrl.evaluation import evaluate_sets, load_eval_sets
from mathrl.fast_paths import shared_prefix_sft_loss
from mathrl.lora import apply_lora
from mathrl.modeling import (apply_memory_options, clip_gradients, gradient_sync_off, load_model_and_tokenizer,
                             make_accelerator, prepare_policy)
from mathrl.objectives import IGNORE_INDEX, sft_labels
from mathrl.prompts import encode_example
from mathrl.resume import Batches, StopSignals, check_finite, resume_run, start_run
from mathrl.tracking import make_tracker
from mathrl.validation import load_train_examples

NUM_EVAL_SAMPLES_LOGGED = 8


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int, loss_on: str) -> dict[str, torch.Tensor]:
    """Right-pad (prompt, completion) id pairs; labels mask the prompt (unless loss_on=all) and padding."""
    sequences = [p + c for p, c in batch]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    prompt_lengths = [len(p) for p, _ in batch]
    labels = sft_labels(prompt_lengths, input_ids, attention_mask, train_on_prompt=(loss_on == "all"))  # [B, T]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_train_loader(examples, tokenizer, config) -> DataLoader:
    if config["loss_on"] not in ("completion", "all"):
        raise UserError(f'loss_on "{config["loss_on"]}": expected completion or all')
    encoded = [encode_example(tokenizer, e, config) for e in examples]
    generator = torch.Generator().manual_seed(config["seed"])
    return DataLoader(encoded, batch_size=config["batch_size"], shuffle=True, generator=generator,
                      collate_fn=lambda b: collate(b, tokenizer.pad_token_id, config["loss_on"]))


@dataclass
class SFTSetup:
    """What the training loop needs, built by `setup` (main() and bench/bench_sft.py both build it there)."""
    accelerator: Accelerator
    model: torch.nn.Module        # as prepare_policy prepared it (forward, backward, clipping)
    unwrapped: torch.nn.Module    # the same model unwrapped (evaluation, saving)
    tokenizer: object
    train_loader: DataLoader      # the global batches (each process trains on its rows of them)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int          # optimizer steps per pass over the training set
    total_steps: int


def setup(config: dict, init_from: str) -> SFTSetup:
    """The model (from init_from), the training batches, AdamW and the cosine schedule; model, optimizer and schedule
    prepared by accelerate (the model sharded instead with `fsdp: true` on several processes: mathrl/fsdp.py).

    batch_size is global: every process draws the batches one process would take from the same seeded loader, and
    `train_step` trains each on its rows (mathrl/distributed.py), so the schedule counts optimizer steps of that
    global batch. (accelerate's sharded loader would fill an epoch's last partial batch up with repeated examples.)"""
    accelerator = make_accelerator(config)
    model, tokenizer = load_model_and_tokenizer(init_from, config)
    apply_memory_options(model, config)
    model = apply_lora(model, config)
    train_examples = load_train_examples(tokenizer, config)
    model, optimizer = prepare_policy(accelerator, model, config)  # DDP-wrapped, or sharded with fsdp: true
    train_loader = build_train_loader(train_examples, tokenizer, config)
    steps_per_epoch = math.ceil(len(train_loader) / config["gradient_accumulation_steps"])
    total_steps = config["max_steps"] if config["max_steps"] > 0 else config["num_epochs"] * steps_per_epoch
    scheduler = accelerator.prepare(get_cosine_schedule_with_warmup(optimizer, config["warmup_steps"], total_steps))
    return SFTSetup(accelerator, model, accelerator.unwrap_model(model), tokenizer, train_loader, optimizer,
                    scheduler, steps_per_epoch, total_steps)


def accumulation_windows(batches, window_size: int):
    """The micro-batches of each optimizer step: window_size at a time, fewer at the end of an epoch."""
    window = []
    for batch in batches:
        window.append(batch)
        if len(window) == window_size:
            yield window
            window = []
    if window:
        yield window


def train_step(run: SFTSetup, window: list[dict], max_grad_norm: float) -> tuple[float, torch.Tensor]:
    """One optimizer step over an accumulation window of global micro-batches, each process training on its rows
    of each: forward and backward of each, then gradient clipping and the optimizer and schedule steps.

    The loss is the mean over every completion token of the window (distributed.loss_divisor), so micro-batches
    weigh by their tokens and k processes take the update of one. Returns (that loss, the gradient norm before
    clipping)."""
    accelerator = run.accelerator
    global_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
    divisor = loss_divisor(global_tokens, accelerator.num_processes)
    summed = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(window):
        rows = local_rows(batch, accelerator.device)
        # Gradients are averaged across processes once per window, at its last micro-batch.
        sync = contextlib.nullcontext() if i == len(window) - 1 else gradient_sync_off(accelerator, run.model)
        with sync:
            if rows is None:  # fewer rows than processes: take part in the averaging with a zero gradient
                loss = shared_prefix_sft_loss(run.model, local_rows(batch, accelerator.device, rank=0), divisor) * 0
            else:
                loss = shared_prefix_sft_loss(run.model, rows, divisor)  # = objectives.sft_loss(model, rows, divisor)
            accelerator.backward(loss)
        summed += loss.detach()
    grad_norm = clip_gradients(accelerator, run.model, max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    # summed * divisor is this process's token-loss sum: the mean over processes of summed is the window's mean.
    return float(sum_over_processes(summed)) / accelerator.num_processes, grad_norm


def evaluate_and_log(model, tokenizer, eval_sets, config, metrics, samples_log, step, epoch,
                     train_seconds) -> float:
    """Greedy accuracy on each eval set, logged to metrics.jsonl; a few completions kept for reading."""
    record, results = evaluate_sets(model, tokenizer, eval_sets, config)
    metrics.log({"step": step, "epoch": round(epoch, 3), **record, "elapsed_s": train_seconds})
    for name, result in results.items():
        for p in result["predictions"][:NUM_EVAL_SAMPLES_LOGGED]:
            samples_log.log({"step": step, "eval_set": name, **p})
    return record["eval_accuracy"]


def validate(config: dict) -> None:
    require_positive(config, "batch_size", "max_prompt_length", "max_completion_length",
                     "gradient_accumulation_steps", "log_every")
    if config["max_steps"] <= 0:
        require_positive(config, "num_epochs")


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    config, init_from, resume_from, output_dir = start_run("sft", __doc__.split("\n")[0], validate)

    # ---- model, data, optimizer and schedule ----------------------------------------------------------
    run = setup(config, init_from)
    eval_sets = load_eval_sets(config)

    # ---- train ----------------------------------------------------------------------------------------
    metrics = MetricsLog(output_dir / METRICS_NAME, tracker=make_tracker(config, output_dir))
    samples_log = MetricsLog(output_dir / "eval_samples.jsonl")
    main_process = run.accelerator.is_main_process
    clock, step, window_tokens, window_start = RunClock(), 0, 0, time.perf_counter()
    stopped_by_time = False
    eval_every = config["eval_every"] or run.steps_per_epoch
    batches, stop = Batches(run.train_loader), StopSignals()
    if resume_from:
        step = resume_run(resume_from, run.unwrapped, run.optimizer, run.scheduler, clock, batches.fast_forward,
                          (METRICS_NAME, "eval_samples.jsonl"), total_steps=run.total_steps)
    progress = tqdm(total=run.total_steps, initial=step, desc="sft", dynamic_ncols=True, disable=not main_process)
    run.model.train()
    while step < run.total_steps and not stopped_by_time:
        for window in accumulation_windows(batches, config["gradient_accumulation_steps"]):
            lr = run.scheduler.get_last_lr()[0]  # the rate this step's update uses (logged after the scheduler moves)
            loss, grad_norm = train_step(run, window, config["max_grad_norm"])
            # Tokens of the global batch (every process's rows), so tokens_per_s is the launch's throughput.
            batch_tokens = sum(int(b["attention_mask"].sum()) for b in window)
            window_tokens += batch_tokens
            clock.tokens += batch_tokens
            step += 1
            check_finite(step, output_dir, run.accelerator, loss=loss, grad_norm=float(grad_norm))
            progress.update(1)
            epoch = step / run.steps_per_epoch
            # elapsed_s in metrics.jsonl is training time: evaluation and checkpoint saving are paused.
            stopped_by_time = any_process(0 < config["max_train_seconds"] <= clock.train_seconds())
            last = step >= run.total_steps or stopped_by_time
            if step % config["log_every"] == 0 or last:
                elapsed = time.perf_counter() - window_start
                metrics.log({"step": step, "epoch": round(epoch, 3), "loss": loss,
                             "lr": lr, "grad_norm": float(grad_norm),
                             "tokens_per_s": window_tokens / elapsed, "elapsed_s": clock.train_seconds()})
                progress.set_postfix(loss=f"{loss:.3f}")
                window_tokens, window_start = 0, time.perf_counter()
            if step % eval_every == 0 or last:
                train_seconds = clock.train_seconds()
                with clock.paused():
                    accuracy = evaluate_and_log(run.unwrapped, run.tokenizer, eval_sets, config, metrics, samples_log,
                                                step, epoch, train_seconds)
                if main_process:
                    progress.write(f"step {step}: held-out greedy accuracy {accuracy:.3f}")
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if not last:  # the last step is saved as final/
                stopping = stop.requested_on_any_process()  # save this step whatever save_every says, then exit
                save_periodic(output_dir, run.unwrapped, run.tokenizer, config, run.optimizer, run.scheduler, clock,
                              step, batches_drawn=batches.drawn, always=stopping)
                if stopping:
                    stop.exit(output_dir / f"step_{step}")
            if last:
                break
    progress.close()

    # ---- save -----------------------------------------------------------------------------------------
    metrics.close()
    samples_log.close()
    save_final(output_dir, run.unwrapped, run.tokenizer, config, run.optimizer, run.scheduler, clock, step=step,
               batches_drawn=batches.drawn, accuracy=accuracy, init_from=init_from, stopped_by_time=stopped_by_time)


if __name__ == "__main__":
    run_cli(main)
