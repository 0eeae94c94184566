"""GPU check of the paper's real run, on the TinyLlama-1.1B-Chat stand-in: throughput, memory, generation settings.

    python bench/gpu_check.py                              # builtin:tinyllama-random, bf16, CUDA: <= 8 min, one H100
    python bench/gpu_check.py --scale mini --device cpu    # the same code on builtin:tinyllama-mini (test suite)

Writes bench/out/gpu_<scale>_<device>.json (every timing, the medians, versions, the card) and prints a line per
measurement. Each part is the repo's own code path, timed with CUDA synchronisation around it:
  sft         train_sft.train_step on chat-format batches of data/math_tasks_train.jsonl (fp32 weights, bf16
              autocast, AdamW), the run built by train_sft.setup (one model load; each batch size gets a loader
              from train_sft.build_train_loader over the examples repeated to fill every batch): non-pad tokens/s,
              MFU = 6 x parameters x tokens / s / the card's dense bf16 peak, peak memory; at the paper's batch 2,
              then doubling the batch until it no longer fits
  grpo        train_grpo.grpo_step as train_grpo.main() runs it (next prompt batch + the step, under autocast), the
              run built by train_grpo.setup for each shape: s/step, and its split as grpo_step's own PhaseTimer
              records it, waiting for the GPU at each boundary (generation, reward, ref_forward, policy_forward,
              backward, optimizer); at the paper's shape (2 prompts x 4 completions x 64 new tokens) and at
              16 x 8 x 64
  evaluation  mathrl.evaluation.greedy_accuracy over data/tiny_eval.jsonl's 356 prompts, batched
              (eval_batch_size) against one generate call per example (on the first prompts only: at one call per
              example all 356 would take minutes)
  generation  greedy generate of a batch of prompts with transformers' default dynamic cache against a static
              cache, which transformers compiles (torch.compile, mode reduce-overhead) on a GPU; every row makes
              exactly max_new_tokens tokens. On CPU (and with --no_compile) the static cache runs uncompiled.
              evaluation and generation share one model, loaded as evaluate.py loads a checkpoint
  compare     compare.py end to end, small step counts, bf16 on the device, on builtin:tinyllama-mini: with
              tinyllama-random each of its checkpoints (weights + AdamW state) would be 13 GB
A part that would start after --budget_s (default 420 s from the start, so that the part then running, often
compare.py, still ends within 8 minutes) is skipped and listed in the JSON under "skipped".
Model weights are random, so generation never stops early and accuracies mean nothing.
"""

from __future__ import annotations

import sys

from common import OUT_DIR, REPO_ROOT, environment, pin_threads, set_torch_threads, summarize, sync, write_json

THREADS = pin_threads(sys.argv[1:])

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import set_seed  # noqa: E402

set_torch_threads(THREADS)

import train_grpo  # noqa: E402
import train_sft  # noqa: E402
from mathrl.config import resolve_config  # noqa: E402
from mathrl.data import load_jsonl  # noqa: E402
from mathrl.errors import UserError, run_cli  # noqa: E402
from mathrl.evaluation import greedy_accuracy  # noqa: E402
from mathrl.generation import generate_ids, generation_config  # noqa: E402
from mathrl.modeling import load_model_and_tokenizer, make_accelerator  # noqa: E402
from mathrl.prompts import prompt_ids  # noqa: E402
from mathrl.timing import PhaseTimer  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; the first match wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0))
SCALES = {
    "full": {"model": "builtin:tinyllama-random", "sft_batches": [2, 4, 8, 16, 32, 64, 128, 256, 512],
             "grpo_shapes": [(2, 4, 64), (16, 8, 64)], "eval_prompts": 356, "one_by_one_prompts": 32,
             "eval_new_tokens": 64, "generation_batch": 64, "generation_new_tokens": 64, "steps": 3, "warmup": 1},
    "mini": {"model": "builtin:tinyllama-mini", "sft_batches": [2, 4, 8],
             "grpo_shapes": [(2, 4, 8), (4, 4, 8)], "eval_prompts": 32, "one_by_one_prompts": 4,
             "eval_new_tokens": 8, "generation_batch": 8, "generation_new_tokens": 8, "steps": 2, "warmup": 1},
}
EVAL_FILE = "data/tiny_eval.jsonl"
GRPO_PHASES = ("generation", "reward", "ref_forward", "policy_forward", "backward", "optimizer")  # grpo_step's timer


class Budget:
    """Seconds left of --budget_s; a part that would start after it ran out is skipped."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def peak_tflops(device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def check_config(kind: str, model_name: str, *overrides: str) -> dict:
    """config.yaml resolved for `kind` as the scripts resolve it, on the stand-in, bf16 autocast."""
    return resolve_config(kind, None, ["--model_name", model_name, "--mixed_precision", "bf16", *overrides])


def reset_peak(device) -> None:
    gc.collect()  # the previous part's run (model, optimizer state) is garbage by now: free its memory first
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device) -> float | None:
    """Peak GPU memory since reset_peak (None on CPU, where only the process's lifetime peak is known)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def timed_runs(fn, steps: int, warmup: int) -> list:
    """fn() called warmup + steps times; the results of the timed calls."""
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(steps)]


# ---------------------------------------------------------------------------------------------------------- SFT


def measure_sft(scale, peak) -> dict:
    """Non-pad tokens/s, MFU and peak memory of train_sft.train_step at each batch size until one does not fit."""
    config = check_config("sft", scale["model"], "--gradient_accumulation_steps", "1")
    run = train_sft.setup(config, config["model_name"])
    run.model.train()
    device, timer = run.accelerator.device, PhaseTimer(sync=True)
    num_params = sum(p.numel() for p in run.model.parameters())
    examples = load_jsonl(config["train_file"])
    rows = []
    for batch_size in scale["sft_batches"]:
        needed = batch_size * (scale["steps"] + scale["warmup"])  # every batch full, even past the 400 examples
        loader = train_sft.build_train_loader((examples * (needed // len(examples) + 1))[:needed], run.tokenizer,
                                              {**config, "batch_size": batch_size})
        batches = iter(loader)  # global batches: train_step moves each process's rows to the device

        def step():
            batch = next(batches)
            timer.reset()
            with timer.phase("step"):
                train_sft.train_step(run, [batch], config["max_grad_norm"])  # a window of one micro-batch
            return timer.seconds["step"], int(batch["attention_mask"].sum())

        reset_peak(device)
        try:
            runs = timed_runs(step, scale["steps"], scale["warmup"])
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            run.optimizer.zero_grad(set_to_none=True)
            rows.append({"batch_size": batch_size, "fits": False})
            print(f"sft batch {batch_size}: out of memory")
            break
        seconds, tokens = sum(s for s, _ in runs), sum(t for _, t in runs)
        row = {"batch_size": batch_size, "fits": True, "tokens_per_s": tokens / seconds,
               "step_s": summarize([s for s, _ in runs]), "non_pad_tokens": tokens,
               "peak_memory_mb": peak_mb(device)}
        row["mfu"] = 6 * num_params * row["tokens_per_s"] / (peak * 1e12) if peak else None
        rows.append(row)
        mfu = f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
        print(f"sft batch {batch_size}: {row['tokens_per_s']:,.0f} non-pad tokens/s{mfu}")
    fitting = [r for r in rows if r["fits"]]
    return {"parameters": num_params, "peak_bf16_tflops": peak, "rows": rows,
            "paper_batch": fitting[0] if fitting else None,
            "throughput_batch": max(fitting, key=lambda r: r["tokens_per_s"]) if fitting else None,
            "largest_fitting_batch": fitting[-1]["batch_size"] if fitting else None}


# --------------------------------------------------------------------------------------------------------- GRPO


def measure_grpo(scale) -> list[dict]:
    """Each of the scale's GRPO shapes, each on its own run."""
    rows = []
    for prompts, group, new_tokens in scale["grpo_shapes"]:
        rows.append(measure_grpo_shape(scale["model"], prompts, group, new_tokens, scale["steps"], scale["warmup"]))
        gc.collect()  # free this shape's policy and reference before the next shape's setup loads its own
    return rows


def measure_grpo_shape(model_name: str, prompts: int, group: int, new_tokens: int, steps: int, warmup: int) -> dict:
    """s/step of train_grpo.grpo_step, its phase split (grpo_step's own timer), generated tokens/s, peak memory."""
    config = check_config("grpo", model_name, "--batch_size", str(prompts), "--group_size", str(group),
                          "--max_completion_length", str(new_tokens))
    train_grpo.validate(config)
    run = train_grpo.setup(config, config["model_name"])
    device, timer = run.accelerator.device, PhaseTimer(sync=True)  # grpo_step resets it and records its phases

    def step():
        sync(device)
        start = time.perf_counter()
        batch = next(run.batches)
        with run.accelerator.autocast():  # as train_grpo.main() runs a step
            result = train_grpo.grpo_step(run, batch, config, timer)
        sync(device)
        return {"step": time.perf_counter() - start, **timer.seconds,
                "generated_tokens": round(result.metrics["completion_length_mean"] * prompts * group),
                "generated_tokens_per_s": result.metrics["generated_tokens_per_s"]}

    reset_peak(device)
    runs = timed_runs(step, steps, warmup)
    row = {"shape": f"{prompts}x{group}x{new_tokens}", "step_s": summarize([r["step"] for r in runs]),
           "generated_tokens_per_s": summarize([r["generated_tokens_per_s"] for r in runs]),
           "phases_s": {name: summarize([r[name] for r in runs]) for name in GRPO_PHASES},
           "generated_tokens": [r["generated_tokens"] for r in runs],
           "peak_memory_mb": peak_mb(device)}
    split = ", ".join(f"{n} {row['phases_s'][n]['median']:.3f}" for n in GRPO_PHASES)
    print(f"grpo {row['shape']}: {row['step_s']['median']:.3f} s/step ({split}), "
          f"{row['generated_tokens_per_s']['median']:,.0f} generated tokens/s")
    return row


# ---------------------------------------------------------------------------------------------- evaluation


@functools.cache
def inference_model(model_name: str):
    """(model, tokenizer, accelerator) as evaluate.py loads a checkpoint: fp32 weights on the device, bf16 autocast.
    Loaded once, by the first of the evaluation and generation parts that runs."""
    config = check_config("evaluate", model_name)
    accelerator = make_accelerator(config)
    model, tokenizer = load_model_and_tokenizer(model_name, config)
    return model.to(accelerator.device).eval(), tokenizer, accelerator


def measure_evaluation(scale) -> dict:
    """Greedy examples/s of greedy_accuracy, batched (eval_batch_size prompts per generate) and one by one."""
    model, tokenizer, accelerator = inference_model(scale["model"])
    config = check_config("evaluate", scale["model"], "--max_completion_length", str(scale["eval_new_tokens"]))
    examples = load_jsonl(EVAL_FILE)[: scale["eval_prompts"]]
    timer, out = PhaseTimer(sync=True), {}
    for name, prompts, batch_size in (("batched", examples, config["eval_batch_size"]),
                                      ("one_by_one", examples[: scale["one_by_one_prompts"]], 1)):
        timer.reset()
        reset_peak(accelerator.device)
        with accelerator.autocast(), timer.phase("seconds"):
            result = greedy_accuracy(model, tokenizer, prompts, config, batch_size=batch_size)
        seconds = timer.seconds["seconds"]
        out[name] = {"examples": len(prompts), "batch_size": batch_size, "seconds": seconds,
                     "examples_per_s": len(prompts) / seconds,
                     "mean_completion_tokens": result["mean_completion_tokens"],
                     "peak_memory_mb": peak_mb(accelerator.device)}
        print(f"evaluation {name}: {out[name]['examples_per_s']:.2f} examples/s over {len(prompts)} prompts")
    out["batched_speedup"] = out["batched"]["examples_per_s"] / out["one_by_one"]["examples_per_s"]
    return out


# ---------------------------------------------------------------------------------------------- generation


def measure_generation(scale, compile_static: bool) -> dict:
    """Generated tokens/s of one greedy generate call: dynamic cache vs static cache (+ torch.compile)."""
    model, tokenizer, accelerator = inference_model(scale["model"])
    timer = PhaseTimer(sync=True)
    prompts = [prompt_ids(tokenizer, e["prompt"], "chat", 128)
               for e in load_jsonl(EVAL_FILE)[: scale["generation_batch"]]]
    new_tokens = scale["generation_new_tokens"]
    out = {"batch": len(prompts), "new_tokens": new_tokens}
    for name in ("dynamic", "static"):
        gen_config = generation_config(tokenizer, new_tokens, False, cache=name)
        gen_config.min_new_tokens = new_tokens  # every row makes the same number of tokens
        gen_config.disable_compile = not compile_static  # transformers compiles a static cache on CUDA

        def call():
            timer.reset()
            with accelerator.autocast(), timer.phase("seconds"):
                sequences, width = generate_ids(model, tokenizer, prompts, gen_config)
            return timer.seconds["seconds"], sequences[:, width:].numel()

        first_seconds, _ = call()  # includes torch.compile's compilation and CUDA graph capture when compiled
        runs = timed_runs(call, scale["steps"], 0)
        tokens_per_s = [tokens / seconds for seconds, tokens in runs]
        out[name] = {"first_call_s": first_seconds, "tokens_per_s": summarize(tokens_per_s),
                     "compiled": name == "static" and compile_static}
        print(f"generation {name}{' + compile' if out[name]['compiled'] else ''}: "
              f"{out[name]['tokens_per_s']['median']:,.0f} tokens/s (first call {first_seconds:.1f} s)")
    out["static_over_dynamic"] = out["static"]["tokens_per_s"]["median"] / out["dynamic"]["tokens_per_s"]["median"]
    out["faster"] = "static" if out["static_over_dynamic"] > 1 else "dynamic"
    return out


# ------------------------------------------------------------------------------------------------- compare


def run_compare(work_dir: Path, device) -> dict:
    """compare.py on builtin:tinyllama-mini, bf16 on the device, small step counts; its exit status and time."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # max_completion_length 5: the longest answer of data/math_tasks_train.jsonl plus EOS in the stand-in's
    # tokens; a shorter limit would cut answers into wrong labels, which train_sft.py refuses
    config = {
        "model_name": "builtin:tinyllama-mini", "mixed_precision": "bf16", "max_completion_length": 5,
        "batch_size": 4, "eval_batch_size": 16, "eval_file": str(work_dir / "eval.jsonl"),
        "sft": {"learning_rate": 1e-3, "max_steps": 2, "log_every": 1, "eval_every": 2},
        "grpo": {"batch_size": 2, "group_size": 2, "num_train_steps": 1, "eval_every": 1, "save_every": 0},
        "compare": {"warm_start_steps": 1, "head_to_head_seconds": 1.0, "diversity_samples": 2,
                    "num_report_samples": 1},
    }
    eval_lines = (REPO_ROOT / "data/math_tasks_eval.jsonl").read_text().splitlines()[:4]
    (work_dir / "eval.jsonl").write_text("\n".join(eval_lines) + "\n")
    (work_dir / "compare.yaml").write_text(yaml.safe_dump(config))
    output_dir = work_dir / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    env = None if device.type == "cuda" else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "compare.py", "--config", str(work_dir / "compare.yaml"),
                           "--output_dir", str(output_dir)], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    out = {"returncode": proc.returncode, "seconds": time.perf_counter() - start, "output_dir": str(output_dir),
           "tail": (proc.stdout + proc.stderr)[-2000:]}
    print(f"compare.py: exit {proc.returncode} in {out['seconds']:.0f} s ({output_dir})")
    return out


# ---------------------------------------------------------------------------------------------------- main


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full",
                        help="full: builtin:tinyllama-random (1.1 B); mini: builtin:tinyllama-mini")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--no_compile", action="store_true",
                        help="run the static cache uncompiled (transformers compiles it only on a GPU anyway)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak, if the card is unknown")
    parser.add_argument("--budget_s", type=float, default=420.0, help="skip the parts that would start after this")
    parser.add_argument("--work_dir", type=Path, default=OUT_DIR / "gpu_check_work", help="compare.py's runs")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/out/gpu_<scale>_<device>.json")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (read before torch is imported)")
    return parser.parse_args()


def main() -> None:
    # ---- setup ----------------------------------------------------------------------------------------
    args = parse()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here; run python bench/gpu_check.py --scale mini --device cpu")
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # every Accelerator the trainers' setups make stays on the CPU
    device = torch.device(args.device)
    scale, budget = SCALES[args.scale], Budget(args.budget_s)
    set_seed(0)
    out_path = args.out or OUT_DIR / f"gpu_{args.scale}_{args.device}.json"
    report = {"scale": args.scale, "model": scale["model"], "environment": environment(THREADS, device),
              "settings": scale, "skipped": [], "part_seconds": {}}
    compile_static = device.type == "cuda" and not args.no_compile

    # ---- the parts, while the budget lasts; each builds its own run (setup time included in the budget) ----
    parts = {
        "sft": lambda: measure_sft(scale, peak_tflops(device, args.peak_tflops)),
        "grpo": lambda: measure_grpo(scale),
        "evaluation": lambda: measure_evaluation(scale),
        "generation": lambda: measure_generation(scale, compile_static),
        "compare": lambda: run_compare(args.work_dir, device),
    }
    for name, part in parts.items():
        if budget.left() <= 0:
            report["skipped"].append(name)
            print(f"{name}: skipped, --budget_s {args.budget_s:.0f} spent")
            continue
        start = time.perf_counter()
        report[name] = part()
        report["part_seconds"][name] = time.perf_counter() - start  # setup (model loading) included
        gc.collect()  # this part's run (model, optimizer state) is garbage now: free it before the next loads
        write_json(out_path, report)  # after every part, so a killed run keeps what it measured
    report["total_s"] = args.budget_s - budget.left()
    print(f"results: {write_json(out_path, report)}")
    if report.get("compare", {}).get("returncode", 0) != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
