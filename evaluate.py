"""Greedy accuracy of one or more checkpoints on held-out (and out-of-distribution) arithmetic sets.

    python evaluate.py --config configs/tiny.yaml --ckpt checkpoints/tiny/sft/final
    python evaluate.py --ckpt checkpoints/sft/final --ckpt checkpoints/grpo/final --output results.json
    python evaluate.py --config configs/tiny.yaml --ckpt builtin:tiny --eval_file data/tiny_eval.jsonl
    python evaluate.py --config configs/tiny.yaml --ckpt checkpoints/tiny/sft/final --samples 8 --temperature 0.7
    accelerate launch --config_file configs/accelerate/cpu.yaml evaluate.py --config configs/tiny.yaml --ckpt DIR

An existing results file is never replaced without --overwrite (and never when it is an input); results are
written through a temporary file and a rename.

Without --eval_file the config's eval_file (and ood_eval_file, if set) are used; each file is reported on its
own. Prints a markdown table, writes JSON ({"results": [...]}) and every prediction (OUTPUT with
.predictions.jsonl) for reading.

Greedy accuracy is the headline. `--samples K` also samples K completions per prompt (one generate call per
batch of prompts, num_return_sequences=K, seeded) and adds a "diversity" dict to each result: pass@K,
majority-vote accuracy, sampled accuracy, mean distinct answers and distinct completion strings per prompt
(definitions in mathrl/diversity.py); each prediction then also lists its "samples".

On k processes (`accelerate launch` / `torchrun`) each process decodes a contiguous share of the examples (and
samples a share of the sampling batches, each batch seeded by its index); the predictions are gathered in order,
so the results are those of one process.

How this departs from the paper: the paper reports one accuracy; here each checkpoint is decoded greedily in
batches (one generate call per batch, left padding), the answer is read and judged as the reward does
(mathrl/answers.py),
and accuracy is also split by operation, with the mean number of completion tokens (EOS included).
Each checkpoint is prompted in the prompt_format it was trained with (from its saved config.yaml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import set_seed

from mathrl.config import for_checkpoint, parse_args
from mathrl.data import OPS, load_jsonl
from mathrl.distributed import gather_in_order, local_batches
from mathrl.diversity import diversity_metrics, diversity_table
from mathrl.errors import UserError, run_cli
from mathrl.evaluation import greedy_accuracy
from mathrl.generation import complete
from mathrl.modeling import load_model_and_tokenizer, make_accelerator
from mathrl.validation import check_output_file, write_atomically


def sampled_diversity(model, tokenizer, examples: list[dict], config: dict, k: int, temperature: float,
                      top_p: float) -> tuple[dict, list[list[str]]]:
    """K sampled completions per prompt: (diversity metrics, the completion texts per prompt).

    The prompts go in batches of eval_batch_size // K (about eval_batch_size sequences per generate call), batch i
    sampled with seed + i, so the samples depend neither on what was evaluated before nor on the number of
    processes: each process samples a contiguous share of the batches and the texts are gathered in order."""
    model.eval()
    texts = []
    for index, batch in local_batches(examples, max(1, config["eval_batch_size"] // k)):
        set_seed(config["seed"] + index)
        outputs = complete(model, tokenizer, [e["prompt"] for e in batch], config, batch_size=len(batch),
                           do_sample=True, temperature=temperature, top_p=top_p, num_samples=k)
        texts += [[s["text"] for s in samples] for samples in outputs]
    texts = gather_in_order(texts)
    metrics = diversity_metrics(texts, examples)
    return {**metrics, "temperature": temperature, "top_p": top_p}, texts


def evaluate_checkpoint(ckpt: str, eval_sets: dict[str, list[dict]], config: dict, accelerator,
                        sampling: dict | None = None) -> list[dict]:
    """One result dict per eval file (predictions included); `sampling` ({k, temperature, top_p}) adds
    a "diversity" dict and each prediction's "samples"."""
    config = for_checkpoint(config, ckpt)
    model, tokenizer = load_model_and_tokenizer(ckpt, config)
    model = model.to(accelerator.device)
    results = []
    for eval_file, examples in eval_sets.items():
        with accelerator.autocast():
            result = greedy_accuracy(model, tokenizer, examples, config)
            if sampling:
                diversity, texts = sampled_diversity(model, tokenizer, examples, config, **sampling)
                result["diversity"] = diversity
                for prediction, samples in zip(result["predictions"], texts):
                    prediction["samples"] = samples
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
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output {output}: cannot create {output.parent} ({err.strerror})") from None
    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    write_atomically(output, json.dumps({"results": summary}, indent=2) + "\n")
    predictions_path = predictions_file(output)
    write_atomically(predictions_path, "".join(json.dumps({"ckpt": r["ckpt"], "eval_file": r["eval_file"], **p}) + "\n"
                                               for r in results for p in r["predictions"]))
    return predictions_path


def predictions_file(output: Path) -> Path:
    return output.with_suffix(".predictions.jsonl")


def report(results: list[dict], output: Path, sampling: dict | None) -> None:
    """Write the JSON summary and the predictions; print the tables and where they went."""
    predictions_path = write_outputs(results, output)
    print(markdown_table(results))
    if sampling:
        rows = [(r["ckpt"], r["eval_file"], r["diversity"]) for r in results]
        print("\nSampled completions:\n" + diversity_table(rows, ("checkpoint", "eval file")))
    print(f"\nresults: {output}\npredictions: {predictions_path}")


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", action="append", required=True, metavar="DIR",
                        help="checkpoint directory (or model name, e.g. builtin:tiny); repeat to compare")
    parser.add_argument("--eval_file", action="append", metavar="FILE", help="JSONL eval set; repeatable")
    parser.add_argument("--samples", type=int, default=0, metavar="K",
                        help="also sample K completions per prompt and report their diversity")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --samples)")
    parser.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling (with --samples)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    args, config = parse_args("evaluate", parser)
    if args.samples < 0 or args.temperature <= 0 or not 0 < args.top_p <= 1:
        raise UserError("--samples must be >= 0, --temperature > 0 and --top_p in (0, 1]")
    sampling = {"k": args.samples, "temperature": args.temperature, "top_p": args.top_p} if args.samples else None
    eval_files = args.eval_file or [f for f in (config["eval_file"], config["ood_eval_file"]) if f]
    eval_sets = {f: load_jsonl(f) for f in eval_files}  # read once, and fail on a bad file before any model loads
    output = Path(config["output"]) if config["output"] else default_output(args.ckpt)
    for path in (output, predictions_file(output)):
        check_output_file(path, [*eval_files, config["train_file"]], args.overwrite)

    # ---- evaluate ---------------------------------------------------------------------------------------
    accelerator = make_accelerator(config)
    results = []
    for ckpt in args.ckpt:
        results += evaluate_checkpoint(ckpt, eval_sets, config, accelerator, sampling)

    # ---- report ---------------------------------------------------------------------------------------
    if accelerator.is_main_process:  # every process holds the gathered results; one writes them
        report(results, output, sampling)
    # The others wait: a process leaving while its peer still works was seen aborted at exit (SIGABRT under gloo,
    # in tests/grpo_processes_probe.py), and the launcher then stops the main process before it has written.
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    run_cli(main)
