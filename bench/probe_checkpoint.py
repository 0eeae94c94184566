"""What a checkpoint knows and what GRPO can learn from it: the diagnostics behind README's tiny-base findings.

    OMP_NUM_THREADS=1 python bench/probe_checkpoint.py --config configs/tiny.yaml --ckpt builtin:tiny-base
    OMP_NUM_THREADS=1 python bench/probe_checkpoint.py --config configs/tiny.yaml --ckpt checkpoints/tiny/sft/final

For the training prompts and the held-out prompts (the first --limit of each file), it prints:
- greedy accuracy in the task's prompt format, and with the problem written as a bare equation ("a op b =", a form
  the pretraining corpus uses), which separates what the model knows from whether it answers in the task's format;
- GRPO's view of the prompts: --samples completions per prompt at --temperature, their accuracy, and the share of
  groups whose rewards are mixed (a gradient), all right or all wrong (no gradient).
Greedy decoding and seeded sampling (--seed), one thread: the same numbers on every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mathrl.answers import is_correct  # noqa: E402
from mathrl.config import resolve_config  # noqa: E402
from mathrl.data import load_jsonl  # noqa: E402
from mathrl.evaluation import greedy_accuracy  # noqa: E402
from mathrl.generation import complete  # noqa: E402
from mathrl.modeling import load_model_and_tokenizer  # noqa: E402


def group_rewards(model, tokenizer, examples: list[dict], config: dict, samples: int, temperature: float) -> dict:
    """Sampled accuracy and the shares of mixed / all-right / all-wrong groups of `samples` completions."""
    outputs = complete(model, tokenizer, [e["prompt"] for e in examples], config, batch_size=64, do_sample=True,
                       temperature=temperature, num_samples=samples)
    rates = [sum(is_correct(e, s["text"]) for s in group) / samples for e, group in zip(examples, outputs)]
    n = len(rates)
    return {"sampled": sum(rates) / n, "mixed": sum(0 < r < 1 for r in rates) / n,
            "all_right": sum(r == 1 for r in rates) / n, "all_wrong": sum(r == 0 for r in rates) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--ckpt", required=True, help="a checkpoint directory or a builtin: model")
    parser.add_argument("--limit", type=int, default=356, help="prompts per file (356: the whole held-out set)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    config = resolve_config("grpo", args.config, [])
    model, tokenizer = load_model_and_tokenizer(args.ckpt, config)
    model.eval()
    for split in ("train_file", "eval_file"):
        examples = load_jsonl(config[split])[: args.limit]
        task = greedy_accuracy(model, tokenizer, examples, config)["accuracy"]
        as_equations = [{**e, "prompt": f"{e['a']} {e['operation']} {e['b']} ="} for e in examples]
        equation = greedy_accuracy(model, tokenizer, as_equations, config)["accuracy"]
        torch.manual_seed(args.seed)
        groups = group_rewards(model, tokenizer, examples, config, args.samples, args.temperature)
        print(f"{config[split]} (first {len(examples)}): greedy {task:.3f} in the task's format, "
              f"{equation:.3f} as 'a op b ='; at temperature {args.temperature}: sampled {groups['sampled']:.3f}, "
              f"groups of {args.samples}: {groups['mixed']:.3f} mixed, {groups['all_right']:.3f} all right, "
              f"{groups['all_wrong']:.3f} all wrong")


if __name__ == "__main__":
    main()
