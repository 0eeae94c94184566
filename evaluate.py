"""Greedy accuracy of one or more checkpoints on held-out (and out-of-distribution) arithmetic sets.

    python evaluate.py --config configs/tiny.yaml --ckpt checkpoints/tiny/sft/final
    python evaluate.py --ckpt checkpoints/sft/final --ckpt checkpoints/grpo/final --output results.json
    python evaluate.py --config configs/tiny.yaml --ckpt builtin:tiny --eval_file data/tiny_eval.jsonl

Without --eval_file the config's eval_file (and ood_eval_file, if set) are used. Prints a markdown table,
writes JSON ({"results": [...]}) and every prediction (OUTPUT with .predictions.jsonl) for reading.

How this departs from the paper: the paper reports one accuracy; here each checkpoint is decoded greedily in
batches (one generate call per batch, left padding), the answer is read by the reward module's extractor,
and accuracy is also split by operation, with the mean number of completion tokens (EOS included).
Each checkpoint is prompted in the prompt_format it was trained with (from its saved config.yaml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mathrl.config import for_checkpoint, parse_args
from mathrl.data import OPS, load_jsonl
from mathrl.errors import run_cli
from mathrl.generation import greedy_accuracy
from mathrl.modeling import load_model_and_tokenizer, make_accelerator


def evaluate_checkpoint(ckpt: str, eval_files: list[str], config: dict, accelerator) -> list[dict]:
    """One result dict per eval file (predictions included)."""
    config = for_checkpoint(config, ckpt)
    model, tokenizer = load_model_and_tokenizer(ckpt, config)
    model = model.to(accelerator.device)
    results = []
    for eval_file in eval_files:
        with accelerator.autocast():
            result = greedy_accuracy(model, tokenizer, load_jsonl(eval_file), config)
        results.append({"ckpt": ckpt, "eval_file": eval_file, **result})
    return results


def markdown_table(results: list[dict]) -> str:
    header = "| checkpoint | eval file | accuracy | n | " + " | ".join(OPS) + " | mean tokens |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        per_op = " | ".join(f"{r['per_operation'][op]:.3f}" if op in r["per_operation"] else "-" for op in OPS)
        lines.append(f"| {r['ckpt']} | {r['eval_file']} | {r['accuracy']:.3f} | {r['num_examples']} | "
                     f"{per_op} | {r['mean_completion_tokens']:.2f} |")
    return "\n".join(lines)


def default_output(ckpts: list[str]) -> Path:
    first = Path(ckpts[0])
    return first / "eval_results.json" if first.is_dir() else Path("eval_results.json")


def write_outputs(results: list[dict], output: Path) -> Path:
    """JSON summary without predictions, and every prediction in OUTPUT.predictions.jsonl."""
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    output.write_text(json.dumps({"results": summary}, indent=2) + "\n")
    predictions_path = output.with_suffix(".predictions.jsonl")
    with predictions_path.open("w") as f:
        for r in results:
            for p in r["predictions"]:
                f.write(json.dumps({"ckpt": r["ckpt"], "eval_file": r["eval_file"], **p}) + "\n")
    return predictions_path


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", action="append", required=True, metavar="DIR",
                        help="checkpoint directory (or model name, e.g. builtin:tiny); repeat to compare")
    parser.add_argument("--eval_file", action="append", metavar="FILE", help="JSONL eval set; repeatable")
    args, config = parse_args("evaluate", parser)
    eval_files = args.eval_file or [f for f in (config["eval_file"], config["ood_eval_file"]) if f]
    for eval_file in eval_files:
        load_jsonl(eval_file)  # fail on a bad file before any model is loaded

    # ---- evaluate ---------------------------------------------------------------------------------------
    accelerator = make_accelerator(config)
    results = []
    for ckpt in args.ckpt:
        results += evaluate_checkpoint(ckpt, eval_files, config, accelerator)

    # ---- report ---------------------------------------------------------------------------------------
    output = Path(config["output"]) if config["output"] else default_output(args.ckpt)
    predictions_path = write_outputs(results, output)
    print(markdown_table(results))
    print(f"\nresults: {output}\npredictions: {predictions_path}")


if __name__ == "__main__":
    run_cli(main)
