"""The shared-prefix fast paths give the numbers of the plain computation they replace (see BENCHMARKS.md).

- fast_paths.shared_prefix_sft_loss: the batch's common leading columns run once, trailing unlabelled columns not
  at all; loss and every gradient equal objectives.sft_loss's (`model(**batch).loss`).
- fast_paths.shared_prompt_cache (in mathrl.generation.generate_ids): each prompt is prefilled once for its n
  samples; the sampled ids equal those of one generate() call over the n-times repeated prompts (same seed).
- fast_paths.shared_prompt_completion_logits (in train_grpo.sequence_logprobs): a group's prompt runs once;
  log-probs and gradients equal those of each row run alone (objectives.completion_logits, the one-pass path).
On the micro built-in model with sharpened weights, so a wrong mask, offset or cache would move the numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import set_seed

import train_grpo
from mathrl.generation import generate_ids, generation_config, left_pad
from mathrl.fast_paths import shared_prefix_sft_loss
from mathrl.objectives import completion_logits, sft_loss
from mathrl.prompts import encode_example, prompt_ids
from train_sft import collate

EXAMPLES = [
    {"prompt": "What is 1 + 2? Answer with an integer.", "answer": "3"},
    {"prompt": "What is 12 * 11? Answer with an integer.", "answer": "132"},
    {"prompt": "What is 100 - 1?", "answer": "99"},
    {"prompt": "Compute 7 / 7.", "answer": "1"},
]


@pytest.fixture(scope="module")
def sharp(micro_model_and_tokenizer):
    """A copy of the micro model with weights of std 0.3: attention is sharp, so masks and positions matter."""
    model, tokenizer = micro_model_and_tokenizer
    model = copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model, tokenizer


def grads(model, loss) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [p for p in model.parameters()]))


def assert_grads_close(expected, actual) -> None:
    for i, (e, a) in enumerate(zip(expected, actual)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4, msg=lambda m: f"parameter {i}: {m}")


# ---------------------------------------------------------------------------------------------------------
# SFT loss
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [[0, 1, 2], [0, 1, 0, 1], [1], [2, 2, 2], [0, 1, 2, 3]],
                         ids=["shared_prefix", "repeated", "one_row", "identical_rows", "no_common_prompt"])
@pytest.mark.parametrize("loss_on, prompt_format", [("completion", "plain"), ("all", "plain"),
                                                    ("completion", "chat")])
def test_shared_prefix_sft_loss_equals_plain_loss(sharp, micro_config, rows, loss_on, prompt_format):
    model, tokenizer = sharp
    config = {**micro_config, "prompt_format": prompt_format, "loss_on": loss_on}
    batch = collate([encode_example(tokenizer, EXAMPLES[r], config) for r in rows], tokenizer.pad_token_id, loss_on)
    expected = sft_loss(model, batch)
    actual = shared_prefix_sft_loss(model, batch)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert_grads_close(grads(model, expected), grads(model, actual))


def test_shared_prefix_sft_loss_shares_a_prefix_here(micro_tokenizer, micro_config):
    """Control: the plain-format batch above really has common leading columns (BOS + "What is "), so the
    shared path, not only the fallback, is what the equality test checks."""
    batch = collate([encode_example(micro_tokenizer, e, micro_config) for e in EXAMPLES[:3]],
                    micro_tokenizer.pad_token_id, "completion")
    same = (batch["input_ids"] == batch["input_ids"][:1]).all(dim=0)
    assert int(same.long().cumprod(dim=0).sum()) >= 5


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("do_sample, top_p", [(True, 1.0), (True, 0.9), (False, 1.0)])
def test_generate_ids_shared_prompt_samples_what_plain_generate_samples(sharp, micro_config, do_sample, top_p):
    model, tokenizer = sharp
    model.eval()
    prompts = [prompt_ids(tokenizer, e["prompt"], "plain", 64) for e in EXAMPLES]  # different lengths
    gen_config = generation_config(tokenizer, 6, do_sample, 0.7, top_p)
    n = 3
    set_seed(1)
    sequences, width = generate_ids(model, tokenizer, prompts, gen_config, n)  # [B*n, P+L]
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
    set_seed(1)
    with torch.no_grad():
        expected = model.generate(input_ids=input_ids.repeat_interleave(n, dim=0),
                                  attention_mask=attention_mask.repeat_interleave(n, dim=0),
                                  generation_config=gen_config)  # [B*n, P+L]
    model.train()
    assert width == input_ids.shape[1]
    assert torch.equal(sequences, expected)


# ---------------------------------------------------------------------------------------------------------
# GRPO log-probs
# ---------------------------------------------------------------------------------------------------------

def test_sequence_logprobs_shared_prompt_equals_rows_alone(sharp, micro_config):
    """Log-probs and gradients of a grouped rollout (shared-prompt path) equal the sum over its rows, each run
    alone (a single row always takes the one-pass path)."""
    model, tokenizer = sharp
    config = {**micro_config, "group_size": 3, "max_completion_length": 5, "prompt_format": "plain"}
    gen_config = generation_config(tokenizer, 5, True, 1.0, 1.0)
    set_seed(0)
    rollout = train_grpo.generate_rollout(model, tokenizer, EXAMPLES[:3], config, gen_config)
    logp = train_grpo.sequence_logprobs(model, rollout, 0.7)  # [N, L]
    shared_grads = grads(model, (logp * rollout.mask).sum())
    rows, row_grads = [], None
    for row in range(rollout.sequences.shape[0]):
        alone = train_grpo.Rollout(rollout.sequences[row:row + 1], rollout.attention_mask[row:row + 1],
                                   rollout.prompt_width, rollout.mask[row:row + 1], rollout.texts[row:row + 1])
        row_logp = train_grpo.sequence_logprobs(model, alone, 0.7)  # [1, L]
        rows.append(row_logp.detach())
        g = grads(model, (row_logp * alone.mask).sum())
        row_grads = g if row_grads is None else [a + b for a, b in zip(row_grads, g)]
    keep = rollout.mask.bool()
    torch.testing.assert_close(logp.detach()[keep], torch.cat(rows)[keep], atol=1e-5, rtol=0)
    assert_grads_close(row_grads, shared_grads)


def test_completion_logits_are_the_full_pass_logits(sharp, micro_config):
    """The plain form itself: the logits of one full pass (generate()'s positions), at the positions that score the
    completion tokens (P-1 .. P+L-2)."""
    model, tokenizer = sharp
    config = {**micro_config, "group_size": 2, "max_completion_length": 4, "prompt_format": "plain"}
    set_seed(0)
    rollout = train_grpo.generate_rollout(model, tokenizer, EXAMPLES[:2], config, generation_config(tokenizer, 4, True))
    width = rollout.prompt_width
    with torch.no_grad():
        full = model(input_ids=rollout.sequences, attention_mask=rollout.attention_mask,
                     position_ids=(rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)).logits  # [N, P+L, V]
        logits = completion_logits(model, rollout.sequences, rollout.attention_mask, width)  # [N, L, V]
    torch.testing.assert_close(logits, full[:, width - 1:-1], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# transformers API: the `cache` keyword, not the deprecated `past_key_values`
# ---------------------------------------------------------------------------------------------------------

def test_fast_paths_use_no_deprecated_cache_names(sharp, micro_config):
    """transformers 5.24 renamed `past_key_values` to `cache` (inputs of forward/generate and outputs); the old
    names go away in 5.40 (forward) and 6.0 (generate). Every fast path must run without a deprecation notice:
    FutureWarnings are errors here, and transformers' once-only log warnings are reset and captured."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    model, tokenizer = sharp
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    hf_logging.warning_once.cache_clear()
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            batch = collate([encode_example(tokenizer, e, micro_config) for e in EXAMPLES[:3]],
                            tokenizer.pad_token_id, "completion")
            shared_prefix_sft_loss(model, batch)
            config = {**micro_config, "group_size": 2, "max_completion_length": 4, "prompt_format": "plain"}
            set_seed(0)
            rollout = train_grpo.generate_rollout(model, tokenizer, EXAMPLES[:2], config,
                                                  generation_config(tokenizer, 4, True))  # shared_prompt_cache
            train_grpo.sequence_logprobs(model, rollout, 1.0)  # shared_prompt_completion_logits
    finally:
        hf_root.removeHandler(handler)
    deprecated = [m for m in records if "past_key_values" in m or "deprecat" in m.lower()]
    assert deprecated == []
