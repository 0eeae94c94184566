"""Rule-based reward for arithmetic completions (paper section 3.3.2): the paper's `reward_model` module.

    from reward_model import MathRewardModel
    MathRewardModel(correct_reward=1.0, wrong_reward=0.0).compute_reward({"answer": "42"}, "The answer is 42")

Kept at the paper's import path; the code lives in the package, where the trainers import it from:
mathrl/answers.py reads an answer and decides whether it is right, mathrl/rewards.py turns that into the reward
(and holds how it departs from the paper: answer markers, optional format and length terms, per-term scores).
"""

from mathrl.answers import extract_answer
from mathrl.rewards import REWARD_TERMS, MathRewardModel, format_score, length_score

__all__ = ["REWARD_TERMS", "MathRewardModel", "extract_answer", "format_score", "length_score"]
