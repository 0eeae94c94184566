"""Batched generation, shared by both trainers, evaluate.py and the inference scripts.

Prompts are left-padded and a whole batch goes through one `model.generate` call (KV cache on); completions are
read off the generated ids, never by re-tokenizing text, and cut at their first EOS (`completion_mask`).

A model sharded with FSDP (mathrl/fsdp.py) needs every process in every forward pass: its generate calls run with
`synced_gpus=True` (a process whose completions have all ended keeps stepping until every process's have), without
the shared prompt prefill (generate prefills itself, one forward on every process), and `complete` makes as many
generate calls on every process, however many prompts each was given.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from mathrl.distributed import values_over_processes
from mathrl.errors import UserError
from mathrl.fast_paths import shared_prompt_cache
from mathrl.fsdp import is_sharded, reshard
from mathrl.objectives import completion_mask
from mathrl.prompts import prompt_ids

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


def generate_ids(model, tokenizer, prompts: list[list[int]], gen_config: GenerationConfig,
                 num_return_sequences: int = 1) -> tuple[torch.Tensor, int]:
    """One generate call for the batch. Returns (sequences [B*n, P+L], P) with completions grouped per prompt
    (prompt i's samples are rows i*n .. i*n+n-1, the `repeat_interleave` layout).

    Runs in inference mode, or without gradients for a sharded model: FSDP's gathered weights are buffers it
    writes again at every forward, and tensors made in inference mode can never be written outside it."""
    sharded = is_sharded(model)
    if not sharded:
        with torch.inference_mode():
            return _generate_ids(model, tokenizer, prompts, gen_config, num_return_sequences, sharded)
    with torch.no_grad():
        result = _generate_ids(model, tokenizer, prompts, gen_config, num_return_sequences, sharded)
    reshard(model)  # the root's weights stay gathered after a forward without backward
    return result


def _generate_ids(model, tokenizer, prompts, gen_config, num_return_sequences: int, sharded: bool):
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)  # [B, P]
    cache = {}
    if num_return_sequences > 1:
        # The n samples of a prompt share it: prefill it once (mathrl/fast_paths.py), not n times. A static cache
        # is allocated by generate() itself, so it gets no shared prefix.
        if gen_config.cache_implementation != "static" and not sharded:
            cache = shared_prompt_cache(model, input_ids, attention_mask, num_return_sequences)
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)  # [B*n, P]
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)  # [B*n, P]
    synced = {"synced_gpus": True} if sharded else {}  # (transformers detects only its own FSDP wrapping)
    sequences = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config, **cache, **synced
    )  # [B*n, P+L]
    return sequences, input_ids.shape[1]


def complete(model, tokenizer, prompt_texts: list[str], config: dict, *, batch_size: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_samples: int = 1) -> list[list[dict]]:
    """Generate answers for prompts. For each prompt, `num_samples` dicts: text, num_tokens (EOS counted)."""
    gen_config = generation_config(tokenizer, config["max_completion_length"], do_sample, temperature, top_p,
                                   config.get("generation_cache", "dynamic"))
    fmt, max_prompt = config["prompt_format"], config["max_prompt_length"]
    outputs: list[list[dict]] = []
    starts = range(0, len(prompt_texts), batch_size)
    # Sharded (FSDP): every process makes as many generate calls, as the shards take part in every forward; those
    # with fewer batches make the rest on a prompt whose completions are thrown away.
    idle_calls = max(values_over_processes(len(starts))) - len(starts) if is_sharded(model) else 0
    for start in starts:
        batch = [prompt_ids(tokenizer, p, fmt, max_prompt) for p in prompt_texts[start:start + batch_size]]
        sequences, width = generate_ids(model, tokenizer, batch, gen_config, num_samples)
        completions = sequences[:, width:]  # [B*n, L]
        kept = completion_mask(completions, tokenizer.eos_token_id).sum(dim=1).long().tolist()  # [B*n], EOS included
        rows = []
        for ids, n in zip(completions.tolist(), kept):
            ended = ids[n - 1] == tokenizer.eos_token_id
            rows.append({"text": tokenizer.decode(ids[:n - ended], skip_special_tokens=True), "num_tokens": n,
                         "ended": ended})
        outputs += [rows[i:i + num_samples] for i in range(0, len(rows), num_samples)]
    for _ in range(idle_calls):
        generate_ids(model, tokenizer, [idle_prompt(tokenizer, prompt_texts, config)], gen_config, num_samples)
    return outputs


def idle_prompt(tokenizer, prompt_texts: list[str], config: dict) -> list[int]:
    """A prompt for a generate call whose completions are thrown away (a process with fewer batches than another
    under FSDP): this process's first prompt, or BOS alone when it has none."""
    if prompt_texts:
        return prompt_ids(tokenizer, prompt_texts[0], config["prompt_format"], config["max_prompt_length"])
    return [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id]
