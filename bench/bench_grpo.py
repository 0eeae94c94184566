"""Time one GRPO step of train_grpo.py against TRL's GRPOTrainer: same model, data, shapes and settings.

    python -m venv --system-site-packages bench/.venv && bench/.venv/bin/pip install trl   # once
    bench/.venv/bin/python bench/bench_grpo.py                    # built-in tiny model, CPU, 1 thread
    bench/.venv/bin/python bench/bench_grpo.py --model tinyllama  # TinyLlama-1.1B shape, random weights (CUDA)
    bench/.venv/bin/python bench/bench_grpo.py --model builtin:smollm2-135m-instruct --shapes 2x4x64   # a real model
    python bench/bench_grpo.py --no_trl                           # ours only (no TRL needed)

Our step is exactly what train_grpo.main() runs per step: next prompt batch + `train_grpo.grpo_step` (generation,
reward, reference forward, policy forward/backward, clip, AdamW, scheduler, metrics), built by the function main()
builds it with (`train_grpo.setup`: accelerate, deepcopy reference, cosine schedule). TRL's step is one
optimizer step of `GRPOTrainer.train()`, timed by a callback from the end of the previous step (data loading
included, like ours) to `on_step_end`; logging is pushed past the last step on both sides. Each shape runs
warm-up steps, then alternates one TRL step and one of ours, so machine noise falls on both alike; medians are
reported.

Shapes are PROMPTSxCOMPLETIONSxNEW_TOKENS. The model has random weights, so completions rarely stop early and
generation runs to the token limit. Settings on both sides: lr 5e-6, KL coefficient (TRL's beta) 0.05 with a
reference model, temperature 0.7, top_p 0.9, top_k 0, fp32, max_grad_norm 1.0, cosine schedule without warmup,
weight decay 0. TRL counts its batch in completions: per_device_train_batch_size = prompts x num_generations.
What differs by design is each trainer's own loss (ours: the paper's -A log p + squared KL; TRL: its default
"dapo" loss with group-scaled advantages); the cost of either is negligible next to the forwards.

Our phases are the ones grpo_step records itself (its PhaseTimer, here waiting for the GPU at each boundary); TRL's
are measured by wrapping the functions its step calls (generation = prompt tokenisation + generate + masks +
decoding on both sides); "other" is the step time not covered by a phase. Writes bench/out/grpo_*.json.
"""

from __future__ import annotations

import sys

from common import (MODEL_HELP, OUT_DIR, environment, load_average, model_label, model_name_of, parse_bench_args,
                    phase_medians, pin_threads, set_torch_threads, summarize, sync, timed, write_json)

THREADS = pin_threads(sys.argv[1:])

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

set_torch_threads(THREADS)

import train_grpo  # noqa: E402
from mathrl.config import resolve_config  # noqa: E402
from mathrl.data import load_jsonl  # noqa: E402
from mathrl.modeling import load_tokenizer, resolve_model_path  # noqa: E402
from mathrl.rewards import MathRewardModel  # noqa: E402
from mathrl.timing import PhaseTimer  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

TINY_CONFIG = "configs/tiny.yaml"
DEFAULT_SHAPES = "2x4x8,8x8x16"
SETTINGS = {"learning_rate": 5e-6, "kl_coeff": 0.05, "temperature": 0.7, "top_p": 0.9}
PHASE_ORDER = ("generation", "reward", "ref_forward", "policy_forward", "backward", "optimizer", "other")
# TinyLlama-1.1B's architecture (its config.json), built with random weights: nothing is downloaded.
TINYLLAMA_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                   "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
                   "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "tie_word_embeddings": False}


def parse_shape(text: str) -> tuple[int, int, int]:
    prompts, completions, tokens = (int(x) for x in text.lower().split("x"))
    return prompts, completions, tokens


def grpo_config(model_name: str, shape: tuple[int, int, int], seed: int) -> dict:
    """configs/tiny.yaml with the benchmark's shape and settings, as train_grpo.py would resolve it."""
    prompts, completions, tokens = shape
    overrides = {"model_name": model_name, "batch_size": prompts, "group_size": completions,
                 "max_completion_length": tokens, "warmup_steps": 0, "seed": seed, **SETTINGS}
    config = resolve_config("grpo", TINY_CONFIG, [t for k, v in overrides.items() for t in (f"--{k}", str(v))])
    return {**config, "mixed_precision": "no"}  # fp32 on both sides, GPU included


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------

def tinyllama_dir(seed: int) -> str:
    """A TinyLlama-1.1B-shaped Llama with random weights and a 32,000-entry character tokenizer, saved once."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mathrl.modeling import SPECIAL_TOKENS, build_char_tokenizer

    target = OUT_DIR / f"tinyllama-random-seed{seed}"
    if (target / "config.json").is_file():
        return str(target)
    vocab = dict(build_char_tokenizer().get_vocab())
    filler = 0x100
    while len(vocab) < TINYLLAMA_SHAPE["vocab_size"]:  # one id per (non-ASCII) character up to 32,000
        vocab.setdefault(chr(filler), len(vocab))
        filler += 1
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk_token"]))
    core.decoder = decoders.Fuse()
    bos = SPECIAL_TOKENS["bos_token"]
    core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    config = LlamaConfig(**TINYLLAMA_SHAPE, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 1.1B parameters is much faster on the GPU
        model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    return str(target)


# ---------------------------------------------------------------------------------------------------------
# Ours: train_grpo.grpo_step, set up as train_grpo.main() sets it up
# ---------------------------------------------------------------------------------------------------------

class OursGRPO:
    def __init__(self, model_name: str, shape, total_steps: int, seed: int):
        config = grpo_config(model_name, shape, seed)
        config["num_train_steps"] = total_steps
        set_seed(config["seed"])
        self.config = config
        self.run = train_grpo.setup(config, config["model_name"])
        self.device = self.run.accelerator.device
        self.timer = PhaseTimer(sync=True)
        self.records: list[dict] = []

    def step(self) -> dict:
        """One training step as main() runs it: {"wall_s", "cpu_s" (this thread's CPU time), "phases"}."""
        sync(self.device)
        start, cpu_start = time.perf_counter(), time.thread_time()
        batch = next(self.run.batches)
        with self.run.accelerator.autocast():
            result = train_grpo.grpo_step(self.run, batch, self.config, self.timer)
        sync(self.device)
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
        self.records.append(result.metrics)
        phases = dict(self.timer.seconds)
        phases["other"] = seconds - sum(phases.values())
        return {"wall_s": seconds, "cpu_s": cpu, "phases": phases}


# ---------------------------------------------------------------------------------------------------------
# TRL: GRPOTrainer on the same model directory, data and settings
# ---------------------------------------------------------------------------------------------------------

def trl_reward(reward_model: MathRewardModel):
    """The repo's reward through TRL's reward-function API (dataset columns arrive as keyword lists)."""
    def math_reward(prompts, completions, completion_ids, answer, **kwargs):
        terms = reward_model.score_batch([{"answer": a} for a in answer], completions,
                                         num_tokens=[len(ids) for ids in completion_ids])
        reward_model.reset_counts()
        return terms["total"]
    return math_reward


class Interleave(TrainerCallback):
    """Times each TRL step from the end of the previous one (so its data loading counts) to `on_step_end`, then
    runs one of our steps before TRL's next one, so the two alternate."""

    def __init__(self, ours: OursGRPO | None, timer: PhaseTimer, device):
        self.ours, self.timer, self.device = ours, timer, device
        self.trl: list[dict] = []
        self.ours_results: list[dict] = []
        self.mark = self.cpu_mark = 0.0

    def _start(self) -> None:
        self.timer.reset()
        sync(self.device)
        self.mark, self.cpu_mark = time.perf_counter(), time.thread_time()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        now, cpu = time.perf_counter(), time.thread_time() - self.cpu_mark
        seconds = now - self.mark
        phases = dict(self.timer.seconds)
        if "backward_end" in phases:  # clip + optimizer step + scheduler + zero_grad (+ the loop's glue)
            phases["optimizer"] = now - phases.pop("backward_end")
        phases["other"] = seconds - sum(phases.values())
        self.trl.append({"wall_s": seconds, "cpu_s": cpu, "phases": phases})
        if self.ours is not None:
            self.ours_results.append(self.ours.step())
        self._start()


def build_trl(model_dir: str, examples: list[dict], shape, total_steps: int, seed: int, device, callback,
              timer: PhaseTimer, work_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    prompts, completions, tokens = shape
    config = grpo_config(model_dir, shape, seed)
    args = GRPOConfig(
        output_dir=work_dir, per_device_train_batch_size=prompts * completions, num_generations=completions,
        max_completion_length=tokens, temperature=SETTINGS["temperature"], top_p=SETTINGS["top_p"], top_k=0,
        learning_rate=SETTINGS["learning_rate"], beta=SETTINGS["kl_coeff"], num_iterations=1,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=config["weight_decay"],
        max_grad_norm=config["max_grad_norm"], max_steps=total_steps, seed=seed,
        bf16=False, fp16=False, gradient_checkpointing=False,  # TRL's defaults are bf16 and checkpointing
        use_cpu=device.type == "cpu", model_init_kwargs={"dtype": "float32"},
        logging_steps=total_steps + 1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_pin_memory=False, log_completions=False,
    )
    reward_model = MathRewardModel.from_config(config)
    dataset = Dataset.from_list([{"prompt": e["prompt"], "answer": e["answer"]} for e in examples])
    trainer = GRPOTrainer(model=model_dir, reward_funcs=trl_reward(reward_model), args=args,
                          train_dataset=dataset, processing_class=load_tokenizer(model_dir), callbacks=[callback])

    def forward_kind(*args, **kwargs):
        return "policy_forward" if torch.is_grad_enabled() else "ref_forward"

    def backward(*args, **kwargs):
        with timer.phase("backward"):
            out = backward_fn(*args, **kwargs)
        timer.seconds["backward_end"] = time.perf_counter()
        return out

    backward_fn = trainer.accelerator.backward
    trainer._generate = timed(timer, "generation", trainer._generate)
    trainer._calculate_rewards = timed(timer, "reward", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed(timer, None, trainer._get_per_token_logps_and_entropies,
                                                       forward_kind)
    trainer.accelerator.backward = backward
    return trainer


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------

def summarize_side(results: list[dict]) -> dict:
    summary = summarize([r["wall_s"] for r in results])
    summary["cpu"] = summarize([r["cpu_s"] for r in results])
    summary["phases"] = phase_medians([r["phases"] for r in results], summary["median"])
    return summary


def run_shape(args, model_name: str, model_dir: str, shape, device) -> dict:
    total = args.warmup + args.steps
    set_seed(args.seed)
    ours = OursGRPO(model_name, shape, total, args.seed)
    result = {"shape": "x".join(map(str, shape)), "prompts": shape[0], "completions_per_prompt": shape[1],
              "max_new_tokens": shape[2], "warmup_steps": args.warmup, "timed_steps": args.steps,
              "load_average_before": load_average()}
    if args.no_trl:
        runs = [ours.step() for _ in range(total)]
        result["ours"] = summarize_side(runs[args.warmup:])
    else:
        timer = PhaseTimer(sync=True)
        interleaver = Interleave(ours, timer, device)
        with tempfile.TemporaryDirectory(dir=OUT_DIR) as work_dir:
            trainer = build_trl(model_dir, load_jsonl(ours.config["train_file"]), shape, total, args.seed, device,
                                interleaver, timer, work_dir)
            trainer.train()
            del trainer
        result["ours"] = summarize_side(interleaver.ours_results[args.warmup:])
        result["trl"] = summarize_side(interleaver.trl[args.warmup:])
        result["ratio_ours_over_trl"] = result["ours"]["median"] / result["trl"]["median"]
        result["cpu_ratio_ours_over_trl"] = result["ours"]["cpu"]["median"] / result["trl"]["cpu"]["median"]
    result["load_average_after"] = load_average()
    records = ours.records[args.warmup:]
    result["ours_completion_length_mean"] = sum(r["completion_length_mean"] for r in records) / len(records)
    result["ours_truncated_fraction"] = sum(r["truncated_fraction"] for r in records) / len(records)
    del ours
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def print_result(result: dict) -> None:
    ours, trl = result["ours"], result.get("trl")
    line = f"{result['shape']:>8}  ours {ours['median']:.4f} s/step (cpu {ours['cpu']['median']:.4f})"
    if trl:
        line += (f"  TRL {trl['median']:.4f} s/step (cpu {trl['cpu']['median']:.4f})"
                 f"  ratio {result['ratio_ours_over_trl']:.3f} (cpu {result['cpu_ratio_ours_over_trl']:.3f})")
    print(line, flush=True)
    for side, summary in (("ours", ours), ("TRL", trl)):
        if summary:
            parts = [f"{name} {summary['phases'][name]['share']:.0%}" for name in PHASE_ORDER
                     if name in summary["phases"]]
            print(f"          {side:>4} phases: " + ", ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="tinyllama: TinyLlama-1.1B's shape with random weights (CUDA); " + MODEL_HELP)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated PROMPTSxCOMPLETIONSxTOKENS")
    args = parse_bench_args(parser, 7, "bench/out/grpo_MODEL_DEVICE.json")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model == "tinyllama":
        if device.type != "cuda":
            parser.error("--model tinyllama needs a CUDA GPU")
        model_name = model_dir = tinyllama_dir(args.seed)
    else:
        model_name = model_name_of(args.model)
        model_dir = resolve_model_path(model_name, grpo_config(model_name, (2, 2, 8), args.seed))
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    results = []
    for text in args.shapes.split(","):
        result = run_shape(args, model_name, model_dir, parse_shape(text), device)
        print_result(result)
        results.append(result)
    out = Path(args.out) if args.out else OUT_DIR / f"grpo_{model_label(args.model)}_{device.type}.json"
    payload = {"benchmark": "grpo_step", "model": args.model, "model_dir": model_dir, "settings": SETTINGS,
               "environment": environment(THREADS, device), "results": results}
    print(f"wrote {write_json(out, payload)}")


if __name__ == "__main__":
    main()
