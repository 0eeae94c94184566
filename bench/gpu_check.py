"""GPU check of the paper's real run, on the TinyLlama-1.1B-Chat stand-in: throughput, memory, generation settings.

    python bench/gpu_check.py                              # builtin:tinyllama-random, bf16, CUDA: <= 8 min, one H100
    python bench/gpu_check.py --scale mini --device cpu    # the same code on builtin:tinyllama-mini (test suite)

Writes bench/out/gpu_<scale>_<device>.json (every timing, the medians, versions, the card) and prints a line per
measurement. Each part is the repo's own code path, timed with CUDA synchronisation around it:
  sft         train_sft.train_step on chat-format batches of data/math_tasks_train.jsonl (fp32 weights, bf16
              autocast, AdamW): non-pad tokens/s, MFU = 6 x parameters x tokens / s / the card's dense bf16 peak,
              peak memory; at the paper's batch 2, then doubling the batch until it no longer fits
  grpo        the phases of train_grpo.grpo_step called one by one (generation, reference forward, policy
              forward, backward, optimizer), and train_grpo.grpo_step itself for s/step; at the paper's shape
              (2 prompts x 4 completions x 64 new tokens) and at 16 x 8 x 64
  evaluation  mathrl.generation.greedy_accuracy over data/tiny_eval.jsonl's 356 prompts, batched
              (eval_batch_size) against one generate call per example (on the first prompts only: at one call per
              example all 356 would take minutes)
  generation  greedy generate of a batch of prompts with transformers' default dynamic cache against a static
              cache, which transformers compiles (torch.compile, mode reduce-overhead) on a GPU; every row makes
              exactly max_new_tokens tokens. On CPU (and with --no_compile) the static cache runs uncompiled
  compare     compare.py end to end, small step counts, bf16 on the device, on builtin:tinyllama-mini: with
              tinyllama-random each of its checkpoints (weights + AdamW state) would be 13 GB
A part that would start after --budget_s (default 420 s from the start, so that the part then running, often
compare.py, still ends within 8 minutes) is skipped and listed in the JSON under "skipped".
Model weights are random, so generation never stops early and accuracies mean nothing.
"""

from __future__ import annotations

import sys

from common import OUT_DIR, REPO_ROOT, PhaseTimer, environment, pin_threads, set_torch_threads, summarize, write_json

THREADS = pin_threads(sys.argv[1:])

import argparse  # noqa: E402
import copy  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import get_constant_schedule, set_seed  # noqa: E402

set_torch_threads(THREADS)

import train_grpo  # noqa: E402
import train_sft  # noqa: E402
from mathrl.config import resolve_config  # noqa: E402
from mathrl.data import load_jsonl  # noqa: E402
from mathrl.errors import UserError, run_cli  # noqa: E402
from mathrl.generation import generate_ids, generation_config, greedy_accuracy  # noqa: E402
from mathrl.modeling import load_model_and_tokenizer, make_optimizer  # noqa: E402
from mathrl.prompts import prompt_ids  # noqa: E402

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


def reset_peak(device) -> None:
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


def measure_sft(model, optimizer, scheduler, tokenizer, config, accelerator, scale, peak) -> dict:
    """Non-pad tokens/s, MFU and peak memory of train_sft.train_step at each batch size until one does not fit."""
    device, timer = accelerator.device, PhaseTimer(accelerator.device)
    num_params = sum(p.numel() for p in model.parameters())
    examples = load_jsonl(config["train_file"])
    rows = []
    for batch_size in scale["sft_batches"]:
        needed = batch_size * (scale["steps"] + scale["warmup"])
        loader = iter(train_sft.build_train_loader((examples * (needed // len(examples) + 1))[:needed], tokenizer,
                                                   {**config, "batch_size": batch_size}))

        def step():
            batch = {k: v.to(device) for k, v in next(loader).items()}
            timer.reset()
            with timer.phase("step"):
                train_sft.train_step(model, batch, optimizer, scheduler, accelerator, config["max_grad_norm"])
            return timer.current["step"], int(batch["attention_mask"].sum())

        reset_peak(device)
        try:
            runs = timed_runs(step, scale["steps"], scale["warmup"])
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            optimizer.zero_grad(set_to_none=True)
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


def grpo_phases(model, reference, tokenizer, batch, config, gen_config, reward_model, optimizer, scheduler,
                accelerator) -> dict:
    """train_grpo.grpo_step's work for one generation and one update, each phase timed on its own."""
    timer, temperature = PhaseTimer(accelerator.device), config["temperature"]
    with timer.phase("step"):
        with timer.phase("generation"):
            rollout = train_grpo.rollout(accelerator.unwrap_model(model), tokenizer, batch, config, gen_config)
        scored = train_grpo.score(rollout, batch, reward_model, config["group_size"])
        advantages = train_grpo.group_advantages(scored["total"].to(rollout.sequences.device),
                                                 config["group_size"], config["advantage_mode"])  # [N]
        with timer.phase("reference_forward"), torch.no_grad():
            ref_logp = train_grpo.sequence_logprobs(reference, rollout, temperature)  # [N, L]
        with timer.phase("policy_forward"):
            logp = train_grpo.sequence_logprobs(model, rollout, temperature)  # [N, L]
            loss, _ = train_grpo.grpo_loss(logp, ref_logp, None, advantages, rollout.mask,
                                           loss_type=config["loss_type"], kl_coeff=config["kl_coeff"],
                                           kl_estimator=config["kl_estimator"],
                                           aggregation=config["loss_aggregation"], epsilon=config["clip_epsilon"],
                                           max_completion_length=config["max_completion_length"])
        with timer.phase("backward"):
            accelerator.backward(loss)
        with timer.phase("optimizer"):
            accelerator.clip_grad_norm_(model.parameters(), config["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return {**timer.current, "generated_tokens": int(rollout.mask.sum())}


def measure_grpo(model, reference, optimizer, scheduler, tokenizer, accelerator, scale, model_name) -> list[dict]:
    rows, timer = [], PhaseTimer(accelerator.device)
    for prompts, group, new_tokens in scale["grpo_shapes"]:
        config = resolve_config("grpo", None, ["--model_name", model_name, "--batch_size", str(prompts),
                                               "--group_size", str(group), "--max_completion_length",
                                               str(new_tokens)])
        batches = train_grpo.prompt_batches(load_jsonl(config["train_file"]), prompts, config["seed"])
        gen_config = generation_config(tokenizer, new_tokens, True, config["temperature"], config["top_p"])
        reward_model = train_grpo.MathRewardModel(config["correct_reward"], config["wrong_reward"],
                                                  config["format_reward_weight"], config["length_reward_weight"],
                                                  new_tokens)
        rest = (config, gen_config, reward_model, optimizer, scheduler, accelerator)

        def whole_step():
            timer.reset()
            with timer.phase("step"):
                record = train_grpo.grpo_step(model, accelerator.unwrap_model(model), reference, tokenizer,
                                              next(batches), *rest)
            return timer.current["step"], record["generated_tokens_per_s"]

        reset_peak(accelerator.device)
        with accelerator.autocast():
            phases = timed_runs(lambda: grpo_phases(model, reference, tokenizer, next(batches), *rest),
                                scale["steps"], scale["warmup"])
            steps = timed_runs(whole_step, scale["steps"], scale["warmup"])
        names = ("generation", "reference_forward", "policy_forward", "backward", "optimizer", "step")
        row = {"shape": f"{prompts}x{group}x{new_tokens}", "step_s": summarize([s for s, _ in steps]),
               "generated_tokens_per_s": summarize([t for _, t in steps]),
               "phases_s": {name: summarize([p[name] for p in phases]) for name in names},
               "generated_tokens": [p["generated_tokens"] for p in phases],
               "peak_memory_mb": peak_mb(accelerator.device)}
        rows.append(row)
        split = ", ".join(f"{n} {row['phases_s'][n]['median']:.3f}" for n in names[:-1])
        print(f"grpo {row['shape']}: {row['step_s']['median']:.3f} s/step ({split}), "
              f"{row['generated_tokens_per_s']['median']:,.0f} generated tokens/s")
    return rows


# ---------------------------------------------------------------------------------------------- evaluation


def measure_evaluation(model, tokenizer, accelerator, scale, model_name) -> dict:
    """Greedy examples/s of greedy_accuracy, batched (eval_batch_size prompts per generate) and one by one."""
    config = resolve_config("evaluate", None, ["--model_name", model_name, "--max_completion_length",
                                               str(scale["eval_new_tokens"])])
    examples = load_jsonl(EVAL_FILE)[: scale["eval_prompts"]]
    timer, out = PhaseTimer(accelerator.device), {}
    for name, prompts, batch_size in (("batched", examples, config["eval_batch_size"]),
                                      ("one_by_one", examples[: scale["one_by_one_prompts"]], 1)):
        timer.reset()
        reset_peak(accelerator.device)
        with accelerator.autocast(), timer.phase("seconds"):
            result = greedy_accuracy(model, tokenizer, prompts, config, batch_size=batch_size)
        seconds = timer.current["seconds"]
        out[name] = {"examples": len(prompts), "batch_size": batch_size, "seconds": seconds,
                     "examples_per_s": len(prompts) / seconds,
                     "mean_completion_tokens": result["mean_completion_tokens"],
                     "peak_memory_mb": peak_mb(accelerator.device)}
        print(f"evaluation {name}: {out[name]['examples_per_s']:.2f} examples/s over {len(prompts)} prompts")
    out["batched_speedup"] = out["batched"]["examples_per_s"] / out["one_by_one"]["examples_per_s"]
    return out


# ---------------------------------------------------------------------------------------------- generation


def measure_generation(model, tokenizer, accelerator, scale, compile_static: bool) -> dict:
    """Generated tokens/s of one greedy generate call: dynamic cache vs static cache (+ torch.compile)."""
    timer = PhaseTimer(accelerator.device)
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
            return timer.current["seconds"], sequences[:, width:].numel()

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
    config = {
        "model_name": "builtin:tinyllama-mini", "mixed_precision": "bf16", "max_completion_length": 4,
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
    scale, budget = SCALES[args.scale], Budget(args.budget_s)
    set_seed(0)
    accelerator = Accelerator(mixed_precision="bf16", cpu=args.device == "cpu")
    device = accelerator.device
    out_path = args.out or OUT_DIR / f"gpu_{args.scale}_{args.device}.json"
    report = {"scale": args.scale, "model": scale["model"], "environment": environment(THREADS, device),
              "settings": scale, "skipped": []}

    # ---- model --------------------------------------------------------------------------------------------
    start = time.perf_counter()
    config = resolve_config("sft", None, ["--model_name", scale["model"], "--mixed_precision", "bf16"])
    model, tokenizer = load_model_and_tokenizer(scale["model"], config)
    reference = copy.deepcopy(model).eval().requires_grad_(False).to(device)  # as train_grpo.main() makes it
    optimizer = make_optimizer(model, config)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, get_constant_schedule(optimizer))
    report["load_s"] = time.perf_counter() - start
    unwrapped = accelerator.unwrap_model(model)
    compile_static = device.type == "cuda" and not args.no_compile

    # ---- the parts, while the budget lasts ----------------------------------------------------------------
    parts = {
        "sft": lambda: measure_sft(model, optimizer, scheduler, tokenizer, config, accelerator, scale,
                                   peak_tflops(device, args.peak_tflops)),
        "grpo": lambda: measure_grpo(model, reference, optimizer, scheduler, tokenizer, accelerator, scale,
                                     scale["model"]),
        "evaluation": lambda: measure_evaluation(unwrapped, tokenizer, accelerator, scale, scale["model"]),
        "generation": lambda: measure_generation(unwrapped, tokenizer, accelerator, scale, compile_static),
        "compare": lambda: run_compare(args.work_dir, device),
    }
    for name, part in parts.items():
        if budget.left() <= 0:
            report["skipped"].append(name)
            print(f"{name}: skipped, --budget_s {args.budget_s:.0f} spent")
            continue
        report[name] = part()
        write_json(out_path, report)  # after every part, so a killed run keeps what it measured
    report["total_s"] = args.budget_s - budget.left()
    print(f"results: {write_json(out_path, report)}")
    if report.get("compare", {}).get("returncode", 0) != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
