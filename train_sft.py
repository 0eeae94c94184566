"""Supervised fine-tuning on arithmetic problems (paper section 3.2).

    python train_sft.py --config configs/tiny.yaml          # built-in tiny model, CPU, minutes
    python train_sft.py                                      # the paper's TinyLlama-1.1B-Chat run (GPU)
    python train_sft.py --learning_rate 1e-4 --num_epochs 1 --output_dir runs/try1
    python train_sft.py --config configs/tiny.yaml --init_from checkpoints/tiny/sft/step_250 --max_train_seconds 60
    python train_sft.py --config configs/tiny.yaml --resume_from auto    # continue an interrupted run

Writes OUTPUT_DIR/metrics.jsonl, OUTPUT_DIR/eval_samples.jsonl, OUTPUT_DIR/step_N/ and OUTPUT_DIR/final/
(Hugging Face model + tokenizer, resolved config, training state, run summary). `init_from` starts from a
checkpoint instead of model_name; `max_train_seconds` ends the run after the optimizer step at which training
time (wall time minus evaluation and checkpoint saving; `elapsed_s` in metrics.jsonl) reaches it, and
summary.json says `stopped_by_time`. SIGINT / SIGTERM stop the run after the current optimizer step with a saved
step_N/ and the command that resumes it (`--resume_from auto|DIR`, exact on CPU: mathrl/resume.py); a NaN or
infinite loss or gradient norm stops it with an error, and no non-finite checkpoint is written.

How this departs from the paper:
- The loss covers the answer tokens and a trailing EOS only (prompt and padding masked), so the model learns
  to stop after the answer; the paper's reference code trained on the whole sequence and never trained EOS.
  `--loss_on all` restores the whole-sequence loss (EOS is still appended).
- Prompt and answer are tokenized separately (mathrl/prompts.py) and the prompt is formatted with the chat
  template for chat models (`prompt_format: chat`); `plain` is the paper's `prompt + " " + answer`.
- Cosine schedule with optional warmup, gradient accumulation and mixed precision through accelerate; held-out
  greedy accuracy is measured during training, not only at the end.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, set_seed

from mathrl.checkpoint import (METRICS_NAME, MetricsLog, RunClock, prepare_output_dir, save_final,
                               save_periodic)
from mathrl.config import for_checkpoint, parse_args, require_positive
from mathrl.data import load_jsonl
from mathrl.errors import UserError, run_cli
from mathrl.generation import evaluate_sets, load_eval_sets
from mathrl.modeling import load_model_and_tokenizer, make_accelerator, make_optimizer
from mathrl.prompts import encode_example
from mathrl.resume import Batches, StopSignals, add_resume_flag, check_finite, resume_checkpoint, resume_run
from mathrl.rl_math import IGNORE_INDEX, sft_labels
from mathrl.validation import check_train_examples

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


def train_step(model, batch: dict, optimizer, scheduler, accelerator, max_grad_norm: float):
    """One micro-batch of the training loop: forward, backward and, at the end of an accumulation window, gradient
    clipping and the optimizer and schedule steps. Returns (loss, grad_norm); grad_norm is None mid-window."""
    with accelerator.accumulate(model):
        loss = causal_lm_loss(model, batch)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) \
            if accelerator.sync_gradients else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return loss, grad_norm


def causal_lm_loss(model, batch: dict) -> torch.Tensor:
    """`model(**batch).loss` (mean next-token cross entropy over the labelled tokens), computing only what it needs.

    Rows are right-padded and usually open with the same tokens (BOS and the start of the prompt): the keys and
    values of such leading columns are the same in every row, so they are computed once, on one row, and shared
    by all (gradients from every row flow back into them); their logits would score only unlabelled tokens.
    Columns after the last labelled token are not run at all: nothing they produce reaches the loss. The labelled
    tokens' logits are those of the one full pass (to float rounding), so loss and gradients are the same.
    """
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [B, T]
    # Columns holding a scored label (a label in column 0 is never scored: nothing comes before it).
    labelled = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1) + 1  # [K]
    if labelled.numel() == 0:
        return model(**batch).loss  # nothing to score: the plain pass (and its NaN)
    first, last = int(labelled[0]), int(labelled[-1])
    # Leading columns that hold one token in every row and whose logits score no label (column t scores t+1).
    same = ((input_ids == input_ids[:1]).all(dim=0) & (attention_mask == 1).all(dim=0))[:first - 1]  # [first-1]
    shared = int(same.long().cumprod(dim=0).sum()) if input_ids.shape[0] > 1 else 0
    past = {}
    if shared:
        cache = model(input_ids=input_ids[:1, :shared], use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(input_ids.shape[0])  # [1, ...] -> [B, ...]
        past = {"past_key_values": cache}
    # Columns shared .. last-1, attending to the shared columns; position ids default to the column index, as in
    # the full pass over right-padded rows. Their logits score the labels of columns shared+1 .. last.
    logits = model(input_ids=input_ids[:, shared:last], attention_mask=attention_mask[:, :last],
                   use_cache=bool(past), **past).logits  # [B, last-shared, V]
    targets = labels[:, shared + 1:last + 1]  # [B, last-shared]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                             ignore_index=IGNORE_INDEX)


def evaluate_and_log(model, tokenizer, eval_sets, config, metrics, samples_log, step, epoch,
                     train_seconds) -> float:
    """Greedy accuracy on each eval set, logged to metrics.jsonl; a few completions kept for reading."""
    record, results = evaluate_sets(model, tokenizer, eval_sets, config)
    metrics.log({"step": step, "epoch": round(epoch, 3), **record, "elapsed_s": train_seconds})
    for name, result in results.items():
        for p in result["predictions"][:NUM_EVAL_SAMPLES_LOGGED]:
            samples_log.log({"step": step, "eval_set": name, **p})
    return record["eval_accuracy"]


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    args, config = parse_args("sft", add_resume_flag(argparse.ArgumentParser(description=__doc__.split("\n")[0])))
    require_positive(config, "batch_size", "max_prompt_length", "max_completion_length",
                     "gradient_accumulation_steps", "log_every")
    if config["max_steps"] <= 0:
        require_positive(config, "num_epochs")
    init_from = config["init_from"] or config["model_name"]
    config = for_checkpoint(config, init_from)  # prompt as init_from was trained
    set_seed(config["seed"])
    resume_from = resume_checkpoint(args.resume_from, config)
    output_dir = prepare_output_dir(config["output_dir"], resuming=resume_from is not None)

    # ---- model, tokenizer, data ---------------------------------------------------------------------
    accelerator = make_accelerator(config, config["gradient_accumulation_steps"])
    model, tokenizer = load_model_and_tokenizer(init_from, config)
    train_examples = load_jsonl(config["train_file"])
    check_train_examples(tokenizer, train_examples, config)
    train_loader = build_train_loader(train_examples, tokenizer, config)
    eval_sets = load_eval_sets(config)

    # ---- optimizer and schedule ---------------------------------------------------------------------
    steps_per_epoch = math.ceil(len(train_loader) / config["gradient_accumulation_steps"])
    total_steps = config["max_steps"] if config["max_steps"] > 0 else config["num_epochs"] * steps_per_epoch
    optimizer = make_optimizer(model, config)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config["warmup_steps"], total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    # ---- train ----------------------------------------------------------------------------------------
    metrics = MetricsLog(output_dir / METRICS_NAME)
    samples_log = MetricsLog(output_dir / "eval_samples.jsonl")
    clock, step, window_tokens, window_start = RunClock(), 0, 0, time.perf_counter()
    stopped_by_time = False
    eval_every = config["eval_every"] or steps_per_epoch
    unwrapped = accelerator.unwrap_model(model)
    batches, stop = Batches(train_loader), StopSignals()
    if resume_from:
        step = resume_run(resume_from, unwrapped, optimizer, scheduler, clock, batches.fast_forward,
                          (METRICS_NAME, "eval_samples.jsonl"), total_steps=total_steps)
    progress = tqdm(total=total_steps, initial=step, desc="sft", dynamic_ncols=True)
    model.train()
    while step < total_steps and not stopped_by_time:
        for batch in batches:
            lr = scheduler.get_last_lr()[0]  # the rate this step's update uses (logged after the scheduler moves)
            loss, grad_norm = train_step(model, batch, optimizer, scheduler, accelerator, config["max_grad_norm"])
            batch_tokens = int(batch["attention_mask"].sum())
            window_tokens += batch_tokens
            clock.tokens += batch_tokens
            if not accelerator.sync_gradients:
                continue
            step += 1
            check_finite(step, output_dir, accelerator, loss=loss.item(), grad_norm=float(grad_norm))
            progress.update(1)
            epoch = step / steps_per_epoch
            # elapsed_s in metrics.jsonl is training time: evaluation and checkpoint saving are paused.
            stopped_by_time = 0 < config["max_train_seconds"] <= clock.train_seconds()
            last = step >= total_steps or stopped_by_time
            if step % config["log_every"] == 0 or last:
                elapsed = time.perf_counter() - window_start
                metrics.log({"step": step, "epoch": round(epoch, 3), "loss": loss.item(),
                             "lr": lr, "grad_norm": float(grad_norm),
                             "tokens_per_s": window_tokens / elapsed, "elapsed_s": clock.train_seconds()})
                progress.set_postfix(loss=f"{loss.item():.3f}")
                window_tokens, window_start = 0, time.perf_counter()
            if step % eval_every == 0 or last:
                train_seconds = clock.train_seconds()
                with clock.paused():
                    accuracy = evaluate_and_log(unwrapped, tokenizer, eval_sets, config, metrics, samples_log,
                                                step, epoch, train_seconds)
                progress.write(f"step {step}: held-out greedy accuracy {accuracy:.3f}")
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if not last:  # the last step is saved as final/
                stopping = stop.requested  # a signal: save this step whatever save_every says, then exit
                save_periodic(output_dir, unwrapped, tokenizer, config, optimizer, scheduler, clock, step,
                              batches_drawn=batches.drawn, always=stopping)
                if stopping:
                    stop.exit(output_dir / f"step_{step}")
            if last:
                break
    progress.close()

    # ---- save -----------------------------------------------------------------------------------------
    metrics.close()
    samples_log.close()
    save_final(output_dir, unwrapped, tokenizer, config, optimizer, scheduler, clock, step=step,
               batches_drawn=batches.drawn, accuracy=accuracy, init_from=init_from, stopped_by_time=stopped_by_time)


if __name__ == "__main__":
    run_cli(main)
