"""Speed tricks that share a prefix's keys/values across rows: each equals a plain form it must match.

    shared_prefix_sft_loss             == objectives.sft_loss               (train_sft.py's loss)
    shared_prompt_completion_logits    == objectives.completion_logits      (train_grpo.py's log-probs)
    shared_prompt_cache                -> generate() samples what it samples over n repeated prompts
                                                                            (generation.generate_ids)

Rows that open with the same tokens (SFT: BOS and the start of the prompt; GRPO and sampling: the n completions
of one prompt) run those tokens through the model once, and the other rows reuse their keys and values; gradients
from every row flow back into the shared part. tests/test_fast_paths.py checks each against its plain form
(values and gradients) on a model with sharp attention, so a wrong mask, offset or cache would show.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mathrl.fsdp import is_sharded
from mathrl.objectives import IGNORE_INDEX, completion_logits, left_padded_positions, sft_loss


def cache_is_dropped(model) -> bool:
    """True when this forward pass cannot carry keys/values from one call to the next: under gradient checkpointing
    (config key `gradient_checkpointing`) a training-mode layer with gradients on drops `cache` and `use_cache`
    (transformers' GradientCheckpointingLayer), because the backward replay would write it a second time. The fast
    paths below would then attend to nothing before their own tokens, so they take their plain forms instead; the
    checkpointed plain pass still fits the long sequences that checkpointing is for. Generation and the reference
    model run without gradients and keep their shared prefixes."""
    module = getattr(model, "module", model)  # a DistributedDataParallel wrapper holds the model in .module
    return bool(getattr(module, "is_activation_checkpointing", False)) and module.training and torch.is_grad_enabled()


def takes_plain_form(model) -> bool:
    """Whether the fast paths below must take their plain forms: the cache is dropped (`cache_is_dropped`), or the
    model is sharded with FSDP (mathrl/fsdp.py), where every process must run the same number of forward passes
    (each gathers the shards from all the others) and the fast paths' number depends on the batch (a process whose
    rows share no prefix runs one forward, another two). The plain forms run exactly one."""
    return cache_is_dropped(model) or is_sharded(model)


def shared_prefix_sft_loss(model, batch: dict, divisor: float | None = None) -> Tensor:
    """`objectives.sft_loss(model, batch, divisor)` (mean next-token cross entropy over the labelled tokens, or
    their sum / divisor), computing only what it needs.

    Rows are right-padded and usually open with the same tokens (BOS and the start of the prompt): the keys and
    values of such leading columns are the same in every row, so they are computed once, on one row, and shared
    by all (gradients from every row flow back into them); their logits would score only unlabelled tokens.
    Columns after the last labelled token are not run at all: nothing they produce reaches the loss. The labelled
    tokens' logits are those of the one full pass (to float rounding), so loss and gradients are the same.
    """
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [B, T]
    # Columns holding a scored label (a label in column 0 is never scored: nothing comes before it).
    labelled = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1) + 1  # [K]
    if labelled.numel() == 0 or takes_plain_form(model):
        return sft_loss(model, batch, divisor)  # nothing to score: the plain pass (and its NaN); no cache: the plain pass
    first, last = int(labelled[0]), int(labelled[-1])
    # Leading columns that hold one token in every row and whose logits score no label (column t scores t+1).
    same = ((input_ids == input_ids[:1]).all(dim=0) & (attention_mask == 1).all(dim=0))[:first - 1]  # [first-1]
    shared = int(same.long().cumprod(dim=0).sum()) if input_ids.shape[0] > 1 else 0
    past = {}
    if shared:
        cache = model(input_ids=input_ids[:1, :shared], use_cache=True, logits_to_keep=1).cache
        cache.batch_repeat_interleave(input_ids.shape[0])  # [1, ...] -> [B, ...]
        past = {"cache": cache}
    # Columns shared .. last-1, attending to the shared columns; position ids default to the column index, as in
    # the full pass over right-padded rows. Their logits score the labels of columns shared+1 .. last.
    logits = model(input_ids=input_ids[:, shared:last], attention_mask=attention_mask[:, :last],
                   use_cache=bool(past), **past).logits  # [B, last-shared, V]
    targets = labels[:, shared + 1:last + 1]  # [B, last-shared]
    if divisor is None:
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                                 ignore_index=IGNORE_INDEX)
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum") / divisor


def shared_prompt_completion_logits(model, sequences: Tensor, attention_mask: Tensor, prompt_width: int) -> Tensor:
    """`objectives.completion_logits(...)` [N, L, V], with each distinct prompt run once.

    The G rows of a group share their (padded) prompt, so each distinct prompt runs through the model once and its
    keys/values are shared by the group's rows, which then run only their completion tokens: the same causal
    attention as one pass over [N, P+L] (gradients from every row flow back into the shared prompt), with the
    prompt work divided by G. Rows whose prompts all differ take the one-pass path.
    """
    width = prompt_width
    num_completion = sequences.shape[1] - width
    prompts = torch.cat([sequences[:, :width], attention_mask[:, :width]], dim=1)  # [N, 2P]
    unique, group = torch.unique_consecutive(prompts, dim=0, return_inverse=True)  # [U, 2P], [N] row -> prompt
    if unique.shape[0] == prompts.shape[0] or takes_plain_form(model):
        return completion_logits(model, sequences, attention_mask, prompt_width)  # [N, L, V]

    # Each prompt once: its keys/values, and the logits at its last token, which score completion token 0.
    prompt_out = model(input_ids=unique[:, :width], attention_mask=unique[:, width:],
                       position_ids=left_padded_positions(unique[:, width:]), logits_to_keep=1, use_cache=True)
    cache = prompt_out.cache
    cache.batch_select_indices(group)  # [U, ...] -> [N, ...]; differentiable, gradients sum over each group
    logits = prompt_out.logits[group]  # [N, 1, V]
    if num_completion > 1:
        # Completion tokens 0 .. L-2 of every row, attending to its prompt's cache: logits scoring tokens 1 .. L-1.
        rest = model(input_ids=sequences[:, width:-1], attention_mask=attention_mask[:, :-1],
                     position_ids=left_padded_positions(attention_mask)[:, width:-1], cache=cache,
                     use_cache=True).logits
        logits = torch.cat([logits, rest], dim=1)  # [N, L, V]
    return logits


def shared_prompt_cache(model, input_ids: Tensor, attention_mask: Tensor, num_return_sequences: int) -> dict:
    """generate()'s `cache` for n samples of each left-padded prompt [B, P], each prompt prefilled once.

    The n samples of a prompt share it: run each prompt (all but its last token) once and copy its keys/values to
    the n rows, instead of letting generate() prefill the same prompt n times. generate() then starts from the last
    prompt token, with the same positions and sampling as without the cache. {} for one-token prompts.
    """
    if input_ids.shape[1] <= 1:  # (generation runs without gradients, so checkpointing never drops this cache)
        return {}
    prefix_mask = attention_mask[:, :-1]  # [B, P-1]
    prefix = model(input_ids=input_ids[:, :-1], attention_mask=prefix_mask,
                   position_ids=left_padded_positions(prefix_mask), use_cache=True,
                   logits_to_keep=1).cache
    prefix.batch_repeat_interleave(num_return_sequences)  # [B*n, ...]
    return {"cache": prefix}
