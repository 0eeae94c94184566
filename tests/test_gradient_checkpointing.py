"""Config key `gradient_checkpointing`: the same loss and gradients as without it, for both trainers.

Under checkpointing a training-mode layer drops the KV cache (transformers' GradientCheckpointingLayer), so the
shared-prefix fast paths must fall back to their plain forms (fast_paths.cache_is_dropped); the control test below
shows what a fast path computes when it does not.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import set_seed

import train_grpo
import train_sft
from conftest import MICRO_OVERRIDES, REPO_ROOT, TINY_CONFIG
from mathrl.config import resolve_config
from mathrl.fast_paths import shared_prefix_sft_loss
from mathrl.objectives import sft_loss
from mathrl.prompts import encode_example

EXAMPLES = [
    {"prompt": "What is 1 + 2?", "answer": "3"},
    {"prompt": "What is 12 * 11?", "answer": "132"},
    {"prompt": "What is 10 - 1?", "answer": "9"},
]
SMALL = [*MICRO_OVERRIDES, "--batch_size", "2", "--warmup_steps", "0",
         "--learning_rate", "1e-2"]


def checkpointed(model):
    copied = copy.deepcopy(model).train()
    copied.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return copied


def loss_and_grads(model, loss_fn, batch):
    model.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_shared_prefix_sft_loss_under_checkpointing_equals_plain(micro_model_and_tokenizer, micro_config):
    model, tokenizer = micro_model_and_tokenizer
    batch = train_sft.collate([encode_example(tokenizer, e, micro_config) for e in EXAMPLES],
                              tokenizer.pad_token_id, "completion")
    plain_loss, plain_grads = loss_and_grads(copy.deepcopy(model).train(), sft_loss, batch)
    loss, grads = loss_and_grads(checkpointed(model), shared_prefix_sft_loss, batch)
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=0)
    for expected, actual in zip(plain_grads, grads):
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


def test_fast_path_without_its_cache_is_wrong(micro_model_and_tokenizer, micro_config, monkeypatch):
    """Control: with the fallback switched off, the checkpointed fast path loses its shared prefix (the layers drop
    the cache) and its loss moves, so the equality above really depends on the fallback."""
    import mathrl.fast_paths as fast_paths

    model, tokenizer = micro_model_and_tokenizer
    batch = train_sft.collate([encode_example(tokenizer, e, micro_config) for e in EXAMPLES],
                              tokenizer.pad_token_id, "completion")
    plain = sft_loss(copy.deepcopy(model).train(), batch).detach()
    monkeypatch.setattr(fast_paths, "cache_is_dropped", lambda model: False)
    try:
        broken = shared_prefix_sft_loss(checkpointed(model), batch).detach()
    except (AttributeError, TypeError):  # or the dropped cache is not there at all
        return
    assert (broken - plain).abs().item() > 1e-4


def test_sft_train_step_with_gradient_checkpointing_equals_without():
    results = []
    for flag in ("false", "true"):
        config = resolve_config("sft", str(REPO_ROOT / TINY_CONFIG), [*SMALL, "--gradient_checkpointing", flag])
        set_seed(config["seed"])
        run = train_sft.setup(config, config["model_name"])
        assert run.unwrapped.is_activation_checkpointing == (flag == "true")
        batch = next(iter(run.train_loader))
        loss, _ = train_sft.train_step(run, [batch], config["max_grad_norm"])  # a window of one micro-batch
        results.append((loss, [p.detach().clone() for p in run.unwrapped.parameters()]))  # loss: a float
    (loss_off, params_off), (loss_on, params_on) = results
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    for off, on in zip(params_off, params_on):
        torch.testing.assert_close(on, off, atol=1e-6, rtol=1e-5)


def test_grpo_step_with_gradient_checkpointing_equals_without():
    """Same samples (same seed), same loss, same updated weights; kl_coeff > 0, so the reference's no-grad pass
    (which keeps its shared prompt) is in the loss too."""
    results = []
    for flag in ("false", "true"):
        config = resolve_config("grpo", str(REPO_ROOT / TINY_CONFIG),
                                [*SMALL, "--group_size", "4", "--kl_coeff", "0.05", "--length_reward_weight", "1.0",
                                 "--max_grad_norm", "1e9", "--gradient_checkpointing", flag])
        set_seed(config["seed"])
        run = train_grpo.setup(config, config["model_name"])
        assert run.unwrapped.is_activation_checkpointing == (flag == "true")
        # Plain SGD at lr 1: the update is the gradient itself (Adam's first step, ~lr * sign(gradient), would
        # blow float rounding in near-zero gradients up to a full step).
        run.optimizer = torch.optim.SGD(run.model.parameters(), lr=1.0)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: 1.0)
        result = train_grpo.grpo_step(run, next(run.batches), config)
        results.append((result.metrics, [p.detach().clone() for p in run.unwrapped.parameters()]))
    (off, params_off), (on, params_on) = results
    assert on["completion_length_mean"] == off["completion_length_mean"]  # the same samples
    assert on["advantage_std"] > 0, "no reward variance: the policy term would have no gradient"
    for key in ("loss", "kl", "entropy"):
        assert on[key] == pytest.approx(off[key], abs=1e-6), key
    for before, after in zip(params_off, params_on):
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
