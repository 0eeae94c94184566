"""Learning checks on the built-in tiny model: minutes of CPU each, so behind the `slow` marker.

    pytest -m slow            # both checks, about 15 minutes on 2 cores

They train with configs/tiny.yaml exactly as the README does and measure held-out greedy accuracy, so they fail
if a change to the data, the prompt formatter, the losses or the trainers stops the model from learning.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow

TINY = "configs/tiny.yaml"
SFT_MIN_ACCURACY = 0.85          # measured: 0.879 after the default 1,800 steps
UNDER_TRAINED_SFT_STEPS = 800    # measured: 0.407 held-out
# Measured: 0.407 -> 0.424 after the default 300 GRPO steps, within the noise of 356 problems (se ~0.026), so
# the check is that GRPO raises the training reward without costing held-out accuracy beyond that noise.
GRPO_MAX_LOSS = 0.03


def final_summary(run_dir) -> dict:
    return json.loads((run_dir / "final" / "summary.json").read_text())


def eval_lines(run_dir) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "eval_accuracy" in line]


def test_tiny_sft_learns_held_out_arithmetic(tmp_path):
    # The README's quickstart command; held-out problems never appear in training.
    returncode, _, stderr = run_script("train_sft.py", "--config", TINY, "--output_dir", str(tmp_path / "sft"),
                                       timeout=1200)
    assert returncode == 0, stderr[-2000:]
    accuracy = final_summary(tmp_path / "sft")["final_eval_accuracy"]
    assert accuracy >= SFT_MIN_ACCURACY, f"held-out greedy accuracy {accuracy:.3f}"
    first, last = eval_lines(tmp_path / "sft")[0], eval_lines(tmp_path / "sft")[-1]
    assert last["eval_accuracy"] > first["eval_accuracy"]


def test_grpo_after_under_trained_sft_raises_reward_and_keeps_accuracy(tmp_path):
    # Two-stage recipe from an under-trained SFT checkpoint: GRPO must raise the training reward (last fifth of
    # steps vs first fifth) and keep the held-out greedy accuracy.
    sft, grpo = tmp_path / "sft", tmp_path / "grpo"
    returncode, _, stderr = run_script("train_sft.py", "--config", TINY, "--output_dir", str(sft),
                                       "--max_steps", str(UNDER_TRAINED_SFT_STEPS), timeout=1200)
    assert returncode == 0, stderr[-2000:]
    returncode, _, stderr = run_script("train_grpo.py", "--config", TINY, "--output_dir", str(grpo),
                                       "--init_from", str(sft / "final"), timeout=1200)
    assert returncode == 0, stderr[-2000:]
    before = final_summary(sft)["final_eval_accuracy"]
    after = final_summary(grpo)["final_eval_accuracy"]
    assert after >= before - GRPO_MAX_LOSS, f"held-out accuracy {before:.3f} -> {after:.3f}"
    steps = [json.loads(line) for line in (grpo / "metrics.jsonl").read_text().splitlines()]
    rewards = [s["reward_mean"] for s in steps if "reward_mean" in s]
    fifth = max(1, len(rewards) // 5)
    assert sum(rewards[-fifth:]) / fifth > sum(rewards[:fifth]) / fifth
