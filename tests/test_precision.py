"""Fix 1 of issue 7: under bf16 autocast the policy, old-policy and reference log-probs are computed the same way,
so identical weights give a KL of exactly 0; and metrics.jsonl keeps full float precision so a small KL shows.

Runs on CPU: accelerate's bf16 autocast on CPU converts only the prepared model's outputs to fp32, as on a GPU.
"""

import copy
import json

import pytest
import torch
from accelerate.state import AcceleratorState

import train_grpo
from mathrl.checkpoint import MetricsLog
from mathrl.data import read_jsonl
from mathrl.generation import generation_config
from mathrl.modeling import load_model_and_tokenizer, make_accelerator

BATCH = [{"prompt": "What is 12 + 30? Answer with an integer.", "answer": "42"},
         {"prompt": "What is 7 * 8? Answer with an integer.", "answer": "56"}]


@pytest.fixture
def bf16_accelerator():
    """A bf16 Accelerator; accelerate's process-wide state is reset around it so other tests keep theirs."""
    AcceleratorState._reset_state(True)
    yield make_accelerator({"mixed_precision": "bf16"})
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("group_size", [1, 4], ids=["one_pass_path", "shared_prompt_path"])
def test_policy_and_reference_logprobs_agree_exactly_under_bf16(bf16_accelerator, group_size):
    """The prepared policy and its unprepared deep copy (the reference) score the same rollout identically on
    both paths of sequence_logprobs (group_size 1: every row its own prompt; 4: prompts shared by 4 rows)."""
    config = {"model_name": "builtin:tinyllama-mini", "seed": 42, "prompt_format": "chat", "max_prompt_length": 64,
              "max_completion_length": 6, "group_size": group_size}
    model, tokenizer = load_model_and_tokenizer(config["model_name"], config)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    policy = bf16_accelerator.prepare(model)
    torch.manual_seed(0)
    gen_config = generation_config(tokenizer, config["max_completion_length"], True, 0.7, 1.0)
    with bf16_accelerator.autocast():
        rollout = train_grpo.generate_rollout(bf16_accelerator.unwrap_model(policy), tokenizer, BATCH, config, gen_config)
        logp = train_grpo.sequence_logprobs(policy, rollout, 0.7)  # [N, L]
        with torch.no_grad():
            ref_logp = train_grpo.sequence_logprobs(reference, rollout, 0.7)  # [N, L]
    assert logp.dtype == ref_logp.dtype == torch.float32
    assert rollout.mask.sum() > len(BATCH) * group_size  # more than one scored token per row
    assert torch.equal(logp.detach(), ref_logp)


def test_metrics_log_keeps_full_precision(tmp_path):
    values = {"step": 1, "kl": 1.2345678901234e-7, "loss": 0.1 + 0.2, "grad_norm": 3e-12}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log(values)
    log.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [values]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["kl"] != 0.0
