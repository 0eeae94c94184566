"""Worked solutions of varied verbosity for the tiny_reasoning_* data (issue 11, the two-stage recipe).

The two-stage recipe (extended SFT, then GRPO that shortens answers) needs SFT answers that carry working of
different lengths for the same kind of problem; the plain tiny data's answers are 2-3 characters with nothing
to shorten. `worked_solution(a, op, b, style)` writes the working the way a pupil would, ending in the `#### N`
marker the reward reads (mathrl/answers.py):

    + digit by digit with the carry          "7+5=12, 2+1+1=4. #### 42"
    - digit by digit with the borrow         "13-5=8, 2-1-1=0. #### 8"
    * as repeated addition of the larger operand, / as counting up by the divisor

A `Style` picks three independent options; each example draws its own with a seeded rng (`draw_style`):
    restate  "We need 27 + 15. ... So 27 + 15 = 42."  (the problem said twice, for nothing)
    verbose  "Ones: 7+5=12, write 2 carry 1. Tens: 2+1+1=4."  instead of the terse "7+5=12, 2+1+1=4."
    check    "Check: 42-15=27."                       (a step re-checked by the inverse operation)
so the same problem's trace is 15-35 characters when terse and 80-150 when wordy. Each option is drawn with
probability WORDY_PROBABILITY = 0.6: at every branch the wordy form is the more frequent, so an SFT model that
learns the mix answers greedily in the wordy form while its samples are sometimes terse, which is the room the
recipe's GRPO (with its length reward) needs to shorten answers. The characters are printable ASCII, all in the
built-in tiny model's character vocabulary.
"""

from __future__ import annotations

import random
from typing import NamedTuple

WORDY_PROBABILITY = 0.6


class Style(NamedTuple):
    restate: bool  # say the problem before the working and the result after it
    verbose: bool  # name each step (ones/tens, carry/borrow, what is counted)
    check: bool    # re-check the result with the inverse operation


def draw_style(rng: random.Random) -> Style:
    """Three independent draws, each wordy with probability WORDY_PROBABILITY, in a fixed order."""
    return Style(*(rng.random() < WORDY_PROBABILITY for _ in range(3)))


def _addition_steps(a: int, b: int, verbose: bool) -> str:
    """Column addition of two numbers below 100: the ones (with the carry), then the tens."""
    ones, carry = a % 10 + b % 10, (a % 10 + b % 10) // 10
    if a < 10 and b < 10:
        return f"Ones: {a}+{b}={ones}." if verbose else f"{a}+{b}={ones}."
    tens = a // 10 + b // 10 + carry
    tens_sum = f"{a // 10}+{b // 10}+{carry}={tens}" if carry else f"{a // 10}+{b // 10}={tens}"
    if verbose:
        return f"Ones: {a % 10}+{b % 10}={ones}, write {ones % 10} carry {carry}. Tens: {tens_sum}."
    return f"{a % 10}+{b % 10}={ones}, {tens_sum}."


def _subtraction_steps(a: int, b: int, verbose: bool) -> str:
    """Column subtraction a - b (a >= b, both below 100): the ones (borrowing when needed), then the tens."""
    borrow = int(a % 10 < b % 10)
    top = a % 10 + 10 * borrow
    ones = f"{top}-{b % 10}={top - b % 10}"
    if a < 10:
        return f"Ones: {ones}." if verbose else f"{ones}."
    tens_minus = f"{a // 10}-1-{b // 10}" if borrow else f"{a // 10}-{b // 10}"
    tens = f"{tens_minus}={a // 10 - borrow - b // 10}"
    if verbose:
        how = f"{a % 10}<{b % 10}, borrow 1: {ones}" if borrow else f"{ones}, no borrow"
        return f"Ones: {how}. Tens: {tens}."
    return f"{ones}, {tens}."


def _counting(step: int, times: int) -> str:
    """step, 2*step, ..., times*step."""
    return ", ".join(str(step * k) for k in range(1, times + 1))


def _multiplication_steps(a: int, b: int, verbose: bool) -> str:
    """a * b as the larger operand added up `smaller` times."""
    big, small = max(a, b), min(a, b)
    if not verbose:
        return f"{a}*{b}={a * b}."
    if small == 0:
        return "Anything times 0 is 0."
    return f"Count by {big}, {small} times: {_counting(big, small)}."


def _division_steps(a: int, b: int, verbose: bool) -> str:
    """a / b (exact) as counting up by b until a is reached."""
    q = a // b
    if not verbose:
        return f"{b}*{q}={a}."
    if q == 0:
        return f"0 divided by {b} is 0."
    return f"Count by {b} up to {a}: {_counting(b, q)}. That is {q} times."


_STEPS = {"+": _addition_steps, "-": _subtraction_steps, "*": _multiplication_steps, "/": _division_steps}
# The inverse operation that re-checks a result r of a op b.
_CHECKS = {
    "+": lambda a, b, r: f"{r}-{b}={a}",
    "-": lambda a, b, r: f"{r}+{b}={a}",
    "*": lambda a, b, r: f"{b}*{a}={r}",
    "/": lambda a, b, r: f"{r}*{b}={a}",
}


def worked_solution(a: int, op: str, b: int, result: int, style: Style) -> str:
    """The worked solution of `a op b = result` in `style`, ending in "#### result"."""
    if op not in _STEPS:
        raise ValueError(f"unknown operation {op!r}")
    if op in "+-" and not (0 <= b and 0 <= a < 100 and b < 100):
        raise ValueError(f"column working needs operands in 0-99, got {a} {op} {b}")
    parts = [f"We need {a} {op} {b}."] if style.restate else []
    parts.append(_STEPS[op](a, b, style.verbose))
    if style.check:
        parts.append(f"Check: {_CHECKS[op](a, b, result)}.")
    if style.restate:
        parts.append(f"So {a} {op} {b} = {result}.")
    parts.append(f"#### {result}")
    return " ".join(parts)
