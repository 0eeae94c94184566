"""Non-pad tokens per second of a train_sft.py training step against TRL's SFTTrainer, same model, data, batch.

    python -m venv --system-site-packages bench/.venv && bench/.venv/bin/pip install trl   # once
    bench/.venv/bin/python bench/bench_sft.py            # built-in tiny model, tiny training data, batch 64, 1 thread
    python bench/bench_sft.py --no_trl                   # ours only (no TRL needed)
    bench/.venv/bin/python bench/bench_sft.py --model builtin:smollm2-135m-instruct --batch_size 16   # a real model

Our step is one iteration of train_sft.py's training loop, built by the function main() builds it with
(`train_sft.setup`: accelerate-prepared DataLoader with its collate, AdamW, cosine schedule): the function
`train_sft.train_step` that main() calls (forward with the completion-only labels, backward, clip, optimizer and
schedule steps), plus fetching the next batch. TRL's step is one optimizer step of
`SFTTrainer.train()` on a prompt/completion dataset (completion-only loss, TRL's default for that format; EOS
appended by TRL like ours), timed by a callback from the end of the previous step (so its data loading counts,
like ours) to `on_step_end`; logging is pushed past the last step. Both sides run fp32, no gradient
checkpointing, batch 64, lr 3e-3 (configs/tiny.yaml), max_grad_norm 1.0, cosine schedule. After warm-up the two
alternate step by step. Tokens are the non-pad tokens of each batch (prompt + answer + EOS; BOS included).
TRL's default SFT step also computes per-token entropy and accuracy for its logs; that is part of its step.
Writes bench/out/sft_*.json.
"""

from __future__ import annotations

import sys

from common import (MODEL_HELP, OUT_DIR, environment, load_average, model_label, model_name_of, parse_bench_args,
                    pin_threads, set_torch_threads, summarize, sync, write_json)

THREADS = pin_threads(sys.argv[1:])

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

set_torch_threads(THREADS)

import train_sft  # noqa: E402
from mathrl.config import resolve_config  # noqa: E402
from mathrl.data import load_jsonl  # noqa: E402
from mathrl.modeling import load_tokenizer, resolve_model_path  # noqa: E402
from mathrl.prompts import completion_text, target_text  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

TINY_CONFIG = "configs/tiny.yaml"


def sft_config(model_name: str, batch_size: int, seed: int, total_steps: int) -> dict:
    overrides = {"model_name": model_name, "batch_size": batch_size, "seed": seed, "loss_on": "completion",
                 "max_steps": total_steps, "gradient_accumulation_steps": 1}
    config = resolve_config("sft", TINY_CONFIG, [t for k, v in overrides.items() for t in (f"--{k}", str(v))])
    return {**config, "mixed_precision": "no"}  # fp32 on both sides


class OursSFT:
    """train_sft.main()'s setup (`train_sft.setup`), and one iteration of its training loop per step()."""

    def __init__(self, model_name: str, batch_size: int, seed: int, total_steps: int):
        config = sft_config(model_name, batch_size, seed, total_steps)
        set_seed(config["seed"])
        self.config = config
        self.run = train_sft.setup(config, config["model_name"])
        self.run.model.train()
        self.device = self.run.accelerator.device
        self.batches = self._endless()

    def _endless(self):
        while True:
            yield from self.run.train_loader

    def step(self) -> dict:
        sync(self.device)
        start, cpu_start = time.perf_counter(), time.thread_time()
        batch = next(self.batches)
        train_sft.train_step(self.run, [batch], self.config["max_grad_norm"])  # one micro-batch per step
        tokens = int(batch["attention_mask"].sum())
        sync(self.device)
        return {"wall_s": time.perf_counter() - start, "cpu_s": time.thread_time() - cpu_start, "tokens": tokens,
                "padded_tokens": batch["input_ids"].numel()}


def build_trl(model_dir: str, examples: list[dict], config: dict, total_steps: int, device, callback, counter,
              work_dir: str):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=work_dir, per_device_train_batch_size=config["batch_size"], learning_rate=config["learning_rate"],
        lr_scheduler_type="cosine", warmup_steps=config["warmup_steps"], weight_decay=config["weight_decay"],
        max_grad_norm=config["max_grad_norm"], max_steps=total_steps, seed=config["seed"],
        completion_only_loss=True, packing=False, max_length=None,
        bf16=False, fp16=False, gradient_checkpointing=False,  # TRL's defaults are bf16 and checkpointing
        use_cpu=device.type == "cpu", model_init_kwargs={"dtype": "float32"},
        logging_steps=total_steps + 1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    fmt, target = config["prompt_format"], config["sft_target"]
    dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": completion_text(target_text(e, target), fmt)}
                                 for e in examples])
    trainer = SFTTrainer(model=model_dir, args=args, train_dataset=dataset, processing_class=load_tokenizer(model_dir),
                         callbacks=[callback])
    training_step = trainer.training_step

    def counted(model, inputs, *rest, **kwargs):
        counter["tokens"] = int(inputs["attention_mask"].sum())
        counter["padded_tokens"] = inputs["input_ids"].numel()
        return training_step(model, inputs, *rest, **kwargs)

    trainer.training_step = counted
    return trainer


class Interleave(TrainerCallback):
    """Times each TRL step from the end of the previous one (so its data loading counts) to `on_step_end`, then
    runs one of our steps before TRL's next one, so the two alternate."""

    def __init__(self, ours: OursSFT | None, device, counter: dict):
        self.ours, self.device, self.counter = ours, device, counter
        self.trl: list[dict] = []
        self.ours_results: list[dict] = []
        self.mark = self.cpu_mark = 0.0

    def _start(self) -> None:
        sync(self.device)
        self.mark, self.cpu_mark = time.perf_counter(), time.thread_time()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.trl.append({"wall_s": time.perf_counter() - self.mark, "cpu_s": time.thread_time() - self.cpu_mark,
                         "tokens": self.counter["tokens"], "padded_tokens": self.counter["padded_tokens"]})
        if self.ours is not None:
            self.ours_results.append(self.ours.step())
        self._start()


def summarize_side(results: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in results)
    wall, cpu = sum(r["wall_s"] for r in results), sum(r["cpu_s"] for r in results)
    return {
        "tokens_per_s": summarize([r["tokens"] / r["wall_s"] for r in results]),
        "cpu_tokens_per_s": summarize([r["tokens"] / r["cpu_s"] for r in results]),
        "step_s": summarize([r["wall_s"] for r in results]),
        "aggregate_tokens_per_s": tokens / wall, "aggregate_cpu_tokens_per_s": tokens / cpu,
        "tokens": tokens, "padded_tokens": sum(r["padded_tokens"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--model", default="tiny", help=MODEL_HELP)
    args = parse_bench_args(parser, 12, "bench/out/sft_MODEL_DEVICE.json")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    total = args.warmup + args.steps
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    result = {"batch_size": args.batch_size, "warmup_steps": args.warmup, "timed_steps": args.steps,
              "load_average_before": load_average()}
    set_seed(args.seed)
    ours = OursSFT(model_name_of(args.model), args.batch_size, args.seed, total)
    if args.no_trl:
        ours_results = [ours.step() for _ in range(total)]
    else:
        config = ours.config
        model_dir = resolve_model_path(config["model_name"], config)
        counter = {}
        interleave = Interleave(ours, device, counter)
        with tempfile.TemporaryDirectory(dir=OUT_DIR) as work_dir:
            trainer = build_trl(model_dir, load_jsonl(config["train_file"]), config, total, device, interleave,
                                counter, work_dir)
            trainer.train()
        ours_results = interleave.ours_results
        result["trl"] = summarize_side(interleave.trl[args.warmup:])
    result["ours"] = summarize_side(ours_results[args.warmup:])
    result["load_average_after"] = load_average()
    line = (f"SFT batch {args.batch_size}: ours {result['ours']['tokens_per_s']['median']:,.0f} non-pad tokens/s "
            f"(cpu {result['ours']['cpu_tokens_per_s']['median']:,.0f})")
    if "trl" in result:
        result["speedup_ours_over_trl"] = (result["ours"]["tokens_per_s"]["median"]
                                           / result["trl"]["tokens_per_s"]["median"])
        result["cpu_speedup_ours_over_trl"] = (result["ours"]["cpu_tokens_per_s"]["median"]
                                               / result["trl"]["cpu_tokens_per_s"]["median"])
        line += (f"  TRL {result['trl']['tokens_per_s']['median']:,.0f} "
                 f"(cpu {result['trl']['cpu_tokens_per_s']['median']:,.0f})"
                 f"  speedup {result['speedup_ours_over_trl']:.2f}x (cpu {result['cpu_speedup_ours_over_trl']:.2f}x)")
    print(line, flush=True)
    out = Path(args.out) if args.out else OUT_DIR / f"sft_{model_label(args.model)}_{device.type}.json"
    payload = {"benchmark": "sft_step", "model": args.model, "environment": environment(THREADS, device),
               "results": [result]}
    print(f"wrote {write_json(out, payload)}")


if __name__ == "__main__":
    main()
