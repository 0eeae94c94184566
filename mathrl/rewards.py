"""Rule-based reward for arithmetic completions (paper section 3.3.2), with per-term scores for logging.

The paper's `MathRewardModel(correct_reward, wrong_reward).compute_reward(sample, completion)` is kept
as is (and importable from reward_model.py, the paper's path): with the default weights it returns
`correct_reward` when the completion is right (`mathrl.answers.is_correct`: the integer extracted from it
equals `int(sample["answer"])`), else `wrong_reward`.

How this departs from the paper:
- Extraction honours `\\boxed{...}` and `#### N` markers before the paper's "last integer" (mathrl/answers.py).
- Two optional shaping terms, both off by default (weight 0.0), so the default total is the paper's
  reward:
    * format (0 or 1): the completion ends right after its final answer;
    * length: the cosine length-aware term of the two-stage SFT -> GRPO recipe. Short correct
      answers score highest, long wrong answers lowest, and a correct answer never scores below a
      wrong one of the same length.
- `score` returns every term separately ({"correctness", "format", "length", "total"}) so a
  trainer can log each one, and the model counts completions it could not parse
  (`num_unparsed` / `num_scored`) instead of silently turning them into reward 0.

Stdlib only, so every trainer and the tests can import it without a model or a GPU.
"""

import math
import re
from typing import Sequence

from mathrl.answers import extract_answer, find_answer, is_correct

REWARD_TERMS = ("correctness", "format", "length")

# What may follow the final answer for the format term to be 1: whitespace and closing punctuation.
_FORMAT_TAIL = re.compile(r"[\s.!$*)\]}\\]*")


def format_score(completion: str) -> float:
    """1.0 when the completion ends right after its final answer, else 0.0.

    Exact rule: the completion has an integer final answer (see `extract_answer`), and everything
    after it is whitespace or closing punctuation from `. ! $ * ) ] } \\`. So "42", " 42\\n",
    "The answer is 42.", "**42**", "#### 42" and "$\\boxed{42}$" score 1; "42 and then more text",
    "#### 42 because 6*7", an unparsable completion and a non-integer ("5.5") score 0. The answer
    does not have to be correct.
    """
    answer = find_answer(completion)
    if answer is None or answer.value is None:
        return 0.0
    return 1.0 if _FORMAT_TAIL.fullmatch(completion, answer.end) else 0.0


def length_score(correct: bool, length: float, max_length: int) -> float:
    """Cosine length-aware term: in [0, 1] for a correct answer, in [-1, 0] for a wrong one.

    With L clipped to [0, max_length] and c = cos(pi * L / max_length):
      correct -> 0.5 * (1 + c): 1 at L = 0, 0.5 at max_length / 2, 0 at max_length;
      wrong   -> -0.5 * (1 - c): 0 at L = 0, -0.5 at max_length / 2, -1 at max_length.
    A correct answer therefore never scores below a wrong one of the same length.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    clipped = min(max(length, 0), max_length)
    c = math.cos(math.pi * clipped / max_length)
    return 0.5 * (1.0 + c) if correct else -0.5 * (1.0 - c)


class MathRewardModel:
    """The paper's rule-based reward, plus optional format and length terms (both off by default).

    total = correctness + format_weight * format + length_weight * length, where correctness is
    `correct_reward` or `wrong_reward`. `num_scored` counts scored completions and `num_unparsed`
    those with no integer answer (no number, a non-integer, an empty marker); such completions score
    `wrong_reward`, and trainers should log `unparsed_fraction`.
    """

    def __init__(
        self,
        correct_reward: float = 1.0,
        wrong_reward: float = 0.0,
        format_weight: float = 0.0,
        length_weight: float = 0.0,
        max_completion_length: int = 64,
    ):
        if max_completion_length <= 0:
            raise ValueError(f"max_completion_length must be positive, got {max_completion_length}")
        self.correct_reward = correct_reward
        self.wrong_reward = wrong_reward
        self.format_weight = format_weight
        self.length_weight = length_weight
        self.max_completion_length = max_completion_length
        self.num_scored = 0
        self.num_unparsed = 0

    @classmethod
    def from_config(cls, config: dict) -> "MathRewardModel":
        """The reward a run's resolved config asks for (correct_reward, wrong_reward, the shaping weights)."""
        return cls(config["correct_reward"], config["wrong_reward"], config["format_reward_weight"],
                   config["length_reward_weight"], config["max_completion_length"])

    @property
    def unparsed_fraction(self) -> float:
        """Fraction of scored completions with no integer answer (0.0 before anything is scored)."""
        return self.num_unparsed / self.num_scored if self.num_scored else 0.0

    def reset_counts(self) -> None:
        """Zero the parse counters, e.g. at the start of each logging interval."""
        self.num_scored = 0
        self.num_unparsed = 0

    def score(self, sample: dict, completion: str, num_tokens: int | None = None) -> dict[str, float]:
        """Every reward term of one completion: {"correctness", "format", "length", "total"}.

        `num_tokens` is the number of generated tokens; pass it from the generated ids (not by
        re-tokenizing the text). When it is None the length falls back to `len(completion)` in
        characters, which is on a different scale from `max_completion_length` tokens, so a
        length-weighted trainer should always pass it.
        """
        correct = is_correct(sample, completion)
        self.num_scored += 1
        if extract_answer(completion) is None:
            self.num_unparsed += 1

        correctness = self.correct_reward if correct else self.wrong_reward
        fmt = format_score(completion)
        length = length_score(
            correct,
            len(completion) if num_tokens is None else num_tokens,
            self.max_completion_length,
        )
        total = correctness + self.format_weight * fmt + self.length_weight * length
        return {"correctness": correctness, "format": fmt, "length": length, "total": total}

    def compute_reward(self, sample: dict, completion: str, num_tokens: int | None = None) -> float:
        """The total reward (the paper's API); with the default weights, correct_reward or wrong_reward."""
        return self.score(sample, completion, num_tokens)["total"]

    def score_batch(
        self,
        samples: Sequence[dict],
        completions: Sequence[str],
        num_tokens: Sequence[int] | None = None,
    ) -> dict[str, list[float]]:
        """`score` over a batch: one list per term (and "total"), in the order of the inputs."""
        if len(samples) != len(completions):
            raise ValueError(f"got {len(samples)} samples but {len(completions)} completions")
        if num_tokens is not None and len(num_tokens) != len(completions):
            raise ValueError(f"got {len(num_tokens)} num_tokens for {len(completions)} completions")
        out: dict[str, list[float]] = {key: [] for key in (*REWARD_TERMS, "total")}
        for i, (sample, completion) in enumerate(zip(samples, completions)):
            scores = self.score(sample, completion, None if num_tokens is None else num_tokens[i])
            for key, value in scores.items():
                out[key].append(value)
        return out
