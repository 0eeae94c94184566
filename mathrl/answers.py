"""How an answer is read from a completion, and when it is right: the repo's one definition of "correct".

The reward (mathrl/rewards.py), greedy accuracy (mathrl/evaluation.py), the diversity metrics
(mathrl/diversity.py) and GRPO's training accuracy all call `is_correct(example, text)`, so a completion
counts as right by the same rule everywhere, whatever reward values or shaping terms a run uses.

How this departs from the paper:
- Extraction. The paper takes "the last integer" of the completion. `extract_answer` first honours
  an explicit final-answer marker: the last `\\boxed{...}`, else the last `#### N`, and only then falls
  back to the last number. It reads signs, thousands separators and whole decimals (`5.0`); a number
  with a non-zero fractional part (`5.5`) is not an integer, so the answer is None and scores wrong.

Stdlib only, so everything can import it without a model or a GPU.
"""

import operator
import re
from typing import NamedTuple

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


class Answer(NamedTuple):
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


def find_answer(text: str) -> Answer | None:
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
        return Answer(_number_value(matches[-1]), content_end + 1)

    marker = text.rfind(_HASH_MARKER)
    if marker != -1:
        match = _NUMBER.search(text, marker + len(_HASH_MARKER))
        if match is None:
            return None
        return Answer(_number_value(match), match.end())

    last = None
    for last in _NUMBER.finditer(text):
        pass
    if last is None:
        return None
    return Answer(_number_value(last), last.end())


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
    answer = find_answer(text)
    return None if answer is None else answer.value


def expected_answer(sample: dict) -> int:
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


def is_correct(sample: dict, text: str) -> bool:
    """True when the integer read from `text` (see `extract_answer`) equals `sample["answer"]`.

    A completion with no integer answer is wrong. `sample` is a data example ({"prompt", "answer"}, answer an
    integer or an integer string)."""
    return extract_answer(text) == expected_answer(sample)
