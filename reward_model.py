"""Rule-based reward for arithmetic completions (paper section 3.3.2), with per-term scores for logging.

The paper's `MathRewardModel(correct_reward, wrong_reward).compute_reward(sample, completion)` is kept
as is: with the default weights it returns `correct_reward` when the integer extracted from the
completion equals `int(sample["answer"])`, else `wrong_reward`.

How this departs from the paper:
- Extraction. The paper takes "the last integer" of the completion. `extract_answer` first honours
  an explicit final-answer marker: the last `\\boxed{...}`, else the last `#### N`, and only then falls
  back to the last number. It reads signs, thousands separators and whole decimals (`5.0`); a number
  with a non-zero fractional part (`5.5`) is not an integer, so the answer is None and scores wrong.
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
import operator
import re
from typing import NamedTuple, Sequence

REWARD_TERMS = ("correctness", "format", "length")

# One number: optional sign, integer part (with valid thousands groups), optional decimals.
# - A minus is a sign only when it is not directly preceded by a letter, digit, `_`, `)` or `]`:
#   in "12-7=5" or "x-3" it is the binary operator, in "= -3", "(-3)" or "{-8}" it is a sign.
#   The Unicode minus sign U+2212 is read like "-".
# - "1,234" is one number only when every group after the first has exactly 3 digits and no digit
#   follows; otherwise the comma separates numbers ("1,23" is 1 then 23).
# - A digit run directly after "." or another digit never starts a number, so ".5" is not read as 5.
# - A "." not followed by a digit is punctuation, so "42." is 42.
_NUMBER = re.compile(
    r"""
    (?P<sign>(?<![A-Za-z0-9_)\]])[-\u2212])?
    (?<![0-9.])
    (?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)
    (?:\.(?P<frac>[0-9]+))?
    """,
    re.VERBOSE,
)
_HASH_MARKER = "####"
_BOXED_OPEN = "\\boxed{"
# What may follow the final answer for the format term to be 1: whitespace and closing punctuation.
_FORMAT_TAIL = re.compile(r"[\s.!$*)\]}\\]*")


class _Answer(NamedTuple):
    value: int | None  # None: the chosen number is not an integer (e.g. 5.5)
    end: int  # index in the text just past the final answer (past the `}` for \boxed{...})


def _number_value(match: re.Match) -> int | None:
    """The integer a `_NUMBER` match stands for, or None when it has a non-zero fractional part."""
    frac = match.group("frac")
    if frac is not None and frac.strip("0"):
        return None
    value = int(match.group("int").replace(",", ""))
    return -value if match.group("sign") else value


def _last_boxed(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the last *closed* `\\boxed{...}`, braces balanced; else None.

    An unclosed `\\boxed{` (e.g. a completion cut off at the token limit) is ignored.
    """
    start = text.rfind(_BOXED_OPEN)
    while start != -1:
        content_start = start + len(_BOXED_OPEN)
        depth = 1
        for i in range(content_start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return content_start, i
        start = text.rfind(_BOXED_OPEN, 0, start)
    return None


def _find_answer(text: str) -> _Answer | None:
    """The final answer of a completion and where it ends; None when there is no number to read.

    Priority: the last closed `\\boxed{...}` (last number inside it), else the first number after
    the last `####`, else the last number in the text. A marker is a commitment: a boxed content or
    a `####` with no number after it gives None rather than falling back to an earlier number.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        content_start, content_end = boxed
        matches = list(_NUMBER.finditer(text, content_start, content_end))
        if not matches:
            return None
        return _Answer(_number_value(matches[-1]), content_end + 1)

    marker = text.rfind(_HASH_MARKER)
    if marker != -1:
        match = _NUMBER.search(text, marker + len(_HASH_MARKER))
        if match is None:
            return None
        return _Answer(_number_value(match), match.end())

    last = None
    for last in _NUMBER.finditer(text):
        pass
    if last is None:
        return None
    return _Answer(_number_value(last), last.end())


def extract_answer(text: str) -> int | None:
    """The integer answer of a completion, or None when there is none.

    Rules, in priority order:
      1. the last closed `\\boxed{...}`: the last number inside it (`\\boxed{-8}` -> -8);
      2. else the last `#### N` marker: the first number after it, even if more numbers follow;
      3. else the last number in the text (the paper's rule).
    Numbers: "-3" and "−3" are negative, but in "12-7" the minus is an operator (7); "1,234" is
    1234 while "1,23" is two numbers; "5.0" / "5.00" are 5; "5.5" is not an integer, so the answer
    is None (it is *not* replaced by an earlier number); trailing punctuation ("42.", "42!") is ignored.
    """
    answer = _find_answer(text)
    return None if answer is None else answer.value


def _expected_answer(sample: dict) -> int:
    """`int(sample["answer"])`, with a message naming the bad value instead of a bare traceback."""
    if "answer" not in sample:
        raise ValueError(f'sample has no "answer" key (keys: {sorted(sample)})')
    answer = sample["answer"]
    try:
        if isinstance(answer, str):
            return int(answer.strip())
        if not isinstance(answer, bool):
            return operator.index(answer)  # int, numpy integer; not float or bool
    except (TypeError, ValueError):
        pass
    raise ValueError(f'sample "answer" must be an integer or a string integer, got {answer!r}')


def format_score(completion: str) -> float:
    """1.0 when the completion ends right after its final answer, else 0.0.

    Exact rule: the completion has an integer final answer (see `extract_answer`), and everything
    after it is whitespace or closing punctuation from `. ! $ * ) ] } \\`. So "42", " 42\\n",
    "The answer is 42.", "**42**", "#### 42" and "$\\boxed{42}$" score 1; "42 and then more text",
    "#### 42 because 6*7", an unparsable completion and a non-integer ("5.5") score 0. The answer
    does not have to be correct.
    """
    answer = _find_answer(completion)
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
        expected = _expected_answer(sample)
        predicted = extract_answer(completion)
        self.num_scored += 1
        if predicted is None:
            self.num_unparsed += 1
        correct = predicted == expected

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
