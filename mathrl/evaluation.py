"""Greedy held-out accuracy, shared by both trainers' evaluations and evaluate.py.

Each prompt is answered greedily in batches (mathrl/generation.py) and judged by mathrl/answers.py, the rule the
reward and the diversity metrics use too.
"""

from __future__ import annotations

import time
from collections import defaultdict

from mathrl.answers import extract_answer, is_correct
from mathrl.data import load_jsonl, operation_of
from mathrl.distributed import gather_in_order, process_count, process_index, shard_bounds
from mathrl.generation import complete


def greedy_accuracy(model, tokenizer, examples: list[dict], config: dict, batch_size: int | None = None) -> dict:
    """Greedy held-out accuracy: overall, per operation, mean completion tokens, and per-example predictions
    (the same on k processes as on one: each answers its share of the examples)."""
    # Each process answers a contiguous share of the examples; the predictions are gathered in order.
    start, end = shard_bounds(len(examples), process_index(), process_count())
    share = examples[start:end]
    was_training = model.training
    model.eval()
    completions = complete(model, tokenizer, [e["prompt"] for e in share], config,
                           batch_size=batch_size or config["eval_batch_size"])
    model.train(was_training)
    predictions = []
    for example, (sample,) in zip(share, completions):
        predictions.append({"prompt": example["prompt"], "answer": example["answer"],
                            "operation": operation_of(example), "completion": sample["text"],
                            "predicted": extract_answer(sample["text"]), "correct": is_correct(example, sample["text"]),
                            "num_tokens": sample["num_tokens"]})
    predictions = gather_in_order(predictions)
    by_op = defaultdict(list)
    for p in predictions:
        by_op[p["operation"]].append(p["correct"])
    n = len(predictions)
    return {
        "accuracy": sum(p["correct"] for p in predictions) / n,
        "num_examples": n,
        "mean_completion_tokens": sum(p["num_tokens"] for p in predictions) / n,
        "per_operation": {op: sum(v) / len(v) for op, v in sorted(by_op.items())},
        "predictions": predictions,
    }


def load_eval_sets(config: dict) -> dict[str, list[dict]]:
    """The held-out set ("eval") and, when configured, the out-of-distribution set ("ood")."""
    eval_sets = {"eval": load_jsonl(config["eval_file"])}
    if config["ood_eval_file"]:
        eval_sets["ood"] = load_jsonl(config["ood_eval_file"])
    return eval_sets


def evaluate_sets(model, tokenizer, eval_sets: dict[str, list[dict]], config: dict) -> tuple[dict, dict]:
    """Greedy accuracy on each set: a flat metrics record ({name}_accuracy, ...) and the full results."""
    start, record, results = time.perf_counter(), {}, {}
    for name, examples in eval_sets.items():
        results[name] = greedy_accuracy(model, tokenizer, examples, config)
        record[f"{name}_accuracy"] = results[name]["accuracy"]
        record[f"{name}_completion_tokens"] = results[name]["mean_completion_tokens"]
    record["eval_seconds"] = time.perf_counter() - start
    return record, results
