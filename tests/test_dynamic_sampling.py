"""DAPO dynamic sampling (mathrl/dynamic_sampling.py, train_grpo.sample_groups): the pure parts by hand, rows of
several generate calls stacked into one rollout score as they did apart, a step trains only on mixed-reward groups,
and a run that draws extra prompt batches resumes exactly."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, set_seed

import train_grpo
from conftest import MICRO_OVERRIDES, REPO_ROOT, TINY_CONFIG
from mathrl.config import resolve_config
from mathrl.dynamic_sampling import CountedStream, choose_groups, mixed_groups, stack_rows
from mathrl.generation import generation_config
from mathrl.modeling import builtin_model_dir, load_model_and_tokenizer


def test_mixed_groups_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])  # groups of 2: equal, mixed, equal
    assert mixed_groups(rewards, 2).tolist() == [False, True, False]
    assert mixed_groups(rewards, 3).tolist() == [True, True]


def test_choose_groups_by_hand():
    T, F = True, False
    # Round 0: groups 0 and 2 mixed; round 1: groups 1 and 2 mixed; batch_size 3 takes 0, 2 and then 1 of round 1.
    chosen, dropped, unused = choose_groups([torch.tensor([T, F, T]), torch.tensor([F, T, T])], 3)
    assert chosen == [[0, 2], [1]] and dropped == 2 and unused == 1
    # Enough in the first round: later rounds (none here) are not needed; the equal group is dropped.
    assert choose_groups([torch.tensor([T, T, F, T])], 2) == ([[0, 1]], 1, 1)
    # No mixed group within the cap: the last round trains as a whole, the earlier rounds are dropped.
    assert choose_groups([torch.tensor([F, F]), torch.tensor([F, F])], 2) == ([[], [0, 1]], 2, 0)


def test_counted_stream_counts_draws():
    stream = CountedStream(iter(range(10)))
    assert [next(stream) for _ in range(3)] == [0, 1, 2] and stream.drawn == 3


def test_stack_rows_pads_prompts_left_and_completions_right():
    pad = 0
    a = (torch.tensor([[5, 6, 7, 8]]), torch.tensor([[1, 1, 1, 1]]), 2, torch.tensor([[1.0, 1.0]]))  # P=2, L=2
    b = (torch.tensor([[4, 5, 6, 7, 9]]), torch.tensor([[1, 1, 1, 1, 0]]), 3, torch.tensor([[1.0, 0.0]]))  # P=3, L=2
    c = (torch.tensor([[3, 3, 2, 2, 2]]), torch.tensor([[0, 1, 1, 1, 1]]), 2, torch.tensor([[1.0, 1.0, 1.0]]))
    sequences, attention, width, mask = stack_rows([a, b, c], pad)
    assert width == 3
    assert sequences.tolist() == [[0, 5, 6, 7, 8, 0], [4, 5, 6, 7, 9, 0], [0, 3, 3, 2, 2, 2]]
    assert attention.tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert mask.tolist() == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


def micro_grpo_config(*extra: str) -> dict:
    return resolve_config("grpo", str(REPO_ROOT / TINY_CONFIG),
                          [*MICRO_OVERRIDES, "--batch_size", "2", "--group_size", "2", "--warmup_steps", "0",
                           "--length_reward_weight", "1.0", *extra])


def test_stacked_rollouts_score_as_apart():
    """Rows of two generate calls (different prompt and completion widths) stacked into one rollout get the
    log-probs they had in their own rollout: the extra left padding and right padding change nothing."""
    config = micro_grpo_config("--max_completion_length", "6", "--prompt_format", "plain")
    model, tokenizer = load_model_and_tokenizer(str(builtin_model_dir(config)), config)
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # sharp attention, so a wrong position or mask would move the numbers
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    gen_config = generation_config(tokenizer, 6, True)
    set_seed(0)
    short = train_grpo.generate_rollout(model, tokenizer, [{"prompt": "What is 1 + 2?", "answer": "3"}], config,
                                        gen_config)
    long = train_grpo.generate_rollout(model, tokenizer, [{"prompt": "What is 12 * 11 + 5?", "answer": "137"}],
                                       config, gen_config)
    sequences, attention, width, mask = stack_rows(
        [(r.sequences, r.attention_mask, r.prompt_width, r.mask) for r in (short, long)], tokenizer.pad_token_id)
    stacked = train_grpo.Rollout(sequences, attention, width, mask, short.texts + long.texts)
    with torch.no_grad():
        together = train_grpo.sequence_logprobs(model, stacked, 1.0)  # [4, L]
        for rows, alone in ((slice(0, 2), short), (slice(2, 4), long)):
            apart = train_grpo.sequence_logprobs(model, alone, 1.0)  # [2, L_i]
            keep = alone.mask.bool()
            torch.testing.assert_close(together[rows, :apart.shape[1]][keep], apart[keep], atol=1e-5, rtol=0)
    assert short.prompt_width != long.prompt_width


def test_dynamic_sampling_trains_only_mixed_groups():
    config = micro_grpo_config("--dynamic_sampling", "true", "--max_generation_rounds", "30",
                               "--format_reward_weight", "1.0")
    set_seed(config["seed"])
    run = train_grpo.setup(config, config["model_name"])
    result = train_grpo.grpo_step(run, next(run.batches), config)
    metrics = result.metrics
    assert metrics["generation_rounds"] > 1, "every group of the first batch was mixed: nothing to check"
    assert run.batches.drawn == metrics["generation_rounds"]
    assert metrics["groups_drawn"] == 2 * metrics["generation_rounds"]
    assert metrics["generation_rounds"] < 30, "the cap was reached: fewer than batch_size mixed groups"
    # The two mixed groups are trained; of the others, the equal-reward ones are dropped, the rest unused.
    assert metrics["groups_dropped"] + metrics["groups_unused"] == metrics["groups_drawn"] - 2
    assert metrics["zero_std_group_fraction"] == 0.0
    # Generation speed counts every round's tokens: the 4 trained rows' and at least 1 token of 4 more rows.
    assert metrics["generated_tokens"] >= round(metrics["completion_length_mean"] * 4) + 4


def test_dynamic_sampling_resume_is_exact(tmp_path, in_process_runner):
    """A run whose steps draw a varying number of prompt batches, straight and cut back to step_2/ then resumed:
    the same final weights (the resumed run skips the batches drawn, not one per step)."""
    for name in ("train", "eval"):
        lines = (REPO_ROOT / "data" / f"tiny_{name}.jsonl").read_text().splitlines()[:16]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--train_file", tmp_path / "train.jsonl", "--eval_file",
            tmp_path / "eval.jsonl", "--ood_eval_file", "null", "--batch_size", "2", "--group_size", "2",
            "--num_train_steps", "4", "--save_every", "2", "--eval_every", "4", "--learning_rate", "5e-2",
            "--length_reward_weight", "1.0", "--warmup_steps", "0", "--dynamic_sampling", "true"]
    run = tmp_path / "run"
    code, _, stderr = in_process_runner("train_grpo.py", *args, "--output_dir", run)
    assert code == 0, stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["generation_rounds"] for r in records if "generation_rounds" in r]
    assert sum(rounds[:2]) > 2, "the first two steps drew one batch each: the check could not fail"
    straight = tmp_path / "straight"
    shutil.copytree(run, straight)
    shutil.rmtree(run / "final")
    code, _, stderr = in_process_runner("train_grpo.py", *args, "--output_dir", run, "--resume_from", "auto")
    assert code == 0, stderr[-3000:]
    expected = AutoModelForCausalLM.from_pretrained(str(straight / "final")).state_dict()
    actual = AutoModelForCausalLM.from_pretrained(str(run / "final")).state_dict()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
