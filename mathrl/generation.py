"""Batched generation and greedy accuracy, shared by both trainers, evaluate.py and the inference scripts.

Prompts are left-padded and a whole batch goes through one `model.generate` call (KV cache on); answers are
read off the generated ids, never by re-tokenizing text, and scored by the reward module's extractor.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from transformers import GenerationConfig

from mathrl.data import load_jsonl, operation_of
from mathrl.errors import UserError
from mathrl.prompts import prompt_ids
from reward_model import extract_answer

GENERATION_CACHES = ("dynamic", "static")


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask), both [batch, max_len]."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # [B, P]
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def generation_config(tokenizer, max_new_tokens: int, do_sample: bool, temperature: float = 1.0,
                      top_p: float = 1.0, cache: str = "dynamic") -> GenerationConfig:
    """A complete GenerationConfig, so a checkpoint's own generation defaults never leak into a run.

    cache (config key `generation_cache`): "dynamic" is transformers' default KV cache; "static" preallocates it,
    and transformers then compiles the decoding step with torch.compile on a GPU (bench/gpu_check.py times both).
    """
    if cache not in GENERATION_CACHES:
        raise UserError(f'generation_cache "{cache}": expected one of {", ".join(GENERATION_CACHES)}')
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
    static = {"cache_implementation": "static"} if cache == "static" else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, **sampling, **static,
    )


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[list[int]], gen_config: GenerationConfig,
                 num_return_sequences: int = 1) -> tuple[torch.Tensor, int]:
    """One generate call for the batch. Returns (sequences [B*n, P+L], P) with completions grouped per prompt
    (prompt i's samples are rows i*n .. i*n+n-1, the `repeat_interleave` layout)."""
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)  # [B, P]
    cache = {}
    if num_return_sequences > 1:
        # (A static cache is allocated by generate() itself, so it gets no shared prefix.)
        if input_ids.shape[1] > 1 and gen_config.cache_implementation != "static":
            # The n samples of a prompt share it: run each prompt (all but its last token) once and copy its
            # keys/values to the n rows, instead of letting generate() prefill the same prompt n times. generate()
            # then starts from the last prompt token, with the same positions and sampling as without the cache.
            prefix_mask = attention_mask[:, :-1]  # [B, P-1]
            prefix = model(input_ids=input_ids[:, :-1], attention_mask=prefix_mask,
                           position_ids=(prefix_mask.cumsum(dim=1) - 1).clamp(min=0), use_cache=True,
                           logits_to_keep=1).past_key_values
            prefix.batch_repeat_interleave(num_return_sequences)  # [B*n, ...]
            cache = {"past_key_values": prefix}
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)  # [B*n, P]
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)  # [B*n, P]
    sequences = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config, **cache
    )  # [B*n, P+L]
    return sequences, input_ids.shape[1]


def trim_completion(ids: list[int], eos_id: int) -> tuple[list[int], bool]:
    """Completion ids up to (not including) the first EOS, and whether an EOS was produced."""
    if eos_id in ids:
        return ids[: ids.index(eos_id)], True
    return ids, False


def complete(model, tokenizer, prompt_texts: list[str], config: dict, *, batch_size: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_samples: int = 1) -> list[list[dict]]:
    """Generate answers for prompts. For each prompt, `num_samples` dicts: text, num_tokens (EOS counted)."""
    gen_config = generation_config(tokenizer, config["max_completion_length"], do_sample, temperature, top_p,
                                   config.get("generation_cache", "dynamic"))
    fmt, max_prompt = config["prompt_format"], config["max_prompt_length"]
    outputs: list[list[dict]] = []
    for start in range(0, len(prompt_texts), batch_size):
        batch = [prompt_ids(tokenizer, p, fmt, max_prompt) for p in prompt_texts[start:start + batch_size]]
        sequences, width = generate_ids(model, tokenizer, batch, gen_config, num_samples)
        completions = sequences[:, width:].tolist()
        for i in range(len(batch)):
            samples = []
            for ids in completions[i * num_samples:(i + 1) * num_samples]:
                kept, ended = trim_completion(ids, tokenizer.eos_token_id)
                samples.append({"text": tokenizer.decode(kept, skip_special_tokens=True),
                                "num_tokens": len(kept) + int(ended), "ended": ended})
            outputs.append(samples)
    return outputs


def greedy_accuracy(model, tokenizer, examples: list[dict], config: dict, batch_size: int | None = None) -> dict:
    """Greedy held-out accuracy: overall, per operation, mean completion tokens, and per-example predictions."""
    was_training = model.training
    model.eval()
    completions = complete(model, tokenizer, [e["prompt"] for e in examples], config,
                           batch_size=batch_size or config["eval_batch_size"])
    model.train(was_training)
    predictions, by_op = [], defaultdict(list)
    for example, (sample,) in zip(examples, completions):
        predicted = extract_answer(sample["text"])
        correct = predicted is not None and predicted == int(example["answer"])
        op = operation_of(example)
        by_op[op].append(correct)
        predictions.append({"prompt": example["prompt"], "answer": example["answer"], "operation": op,
                            "completion": sample["text"], "predicted": predicted, "correct": correct,
                            "num_tokens": sample["num_tokens"]})
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
