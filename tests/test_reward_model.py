"""Tests for reward_model.py: extraction rules, the paper API, and each reward term against hand-computed values."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mathrl.answers import is_correct  # noqa: E402
from reward_model import REWARD_TERMS, MathRewardModel, extract_answer, format_score, length_score  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# extract_answer
# ---------------------------------------------------------------------------------------------------

EXTRACT_CASES = [
    # plain integer
    ("42", 42),
    # surrounding whitespace is ignored
    ("  42\n", 42),
    # last number wins without a marker (paper rule)
    ("3 + 4 = 7", 7),
    # minus directly after a digit is the binary operator, so 7 is not read as -7; last number is 5
    ("12-7=5", 5),
    # ... and with no "=", the operand after a binary minus is positive
    ("12-7", 7),
    # a leading minus is a sign
    ("-3", -3),
    # minus after a space is a sign
    ("The answer is -3", -3),
    # minus after "=" is a sign
    ("5-8=-3", -3),
    # minus after "(" is a sign
    ("(-3)", -3),
    # minus after a letter is an operator
    ("x-3", 3),
    # minus after ")" is an operator
    ("(2)-3", 3),
    # minus followed by a space is not a sign
    ("10 - 3", 3),
    # Unicode minus sign U+2212 is a sign
    ("\u22123", -3),
    # Unicode minus after a digit is an operator
    ("9\u22123", 3),
    # valid thousands separator
    ("1,234", 1234),
    # several valid thousands groups, negative
    ("-1,234,567", -1234567),
    # a 2-digit group is not a thousands group: comma separates the numbers 1 and 23
    ("1,23", 23),
    # a 4-digit group is not a thousands group: 1 then 2345
    ("1,2345", 2345),
    # more than 3 leading digits is not a thousands number: 1234 then 567
    ("1234,567", 567),
    # comma-separated list: last element
    ("2, 3, 5", 5),
    # whole decimal is an integer
    ("5.0", 5),
    # whole decimal with several zeros
    ("5.00", 5),
    # whole decimal with thousands separator
    ("1,234.00", 1234),
    # negative whole decimal
    ("-2.0", -2),
    # non-integer decimal: the answer is not an integer
    ("5.5", None),
    # non-integer last number is not replaced by an earlier integer
    ("3 apples cost 5.5", None),
    # bare fractional part is not read as the integer 5
    (".5", None),
    # trailing period is punctuation
    ("The answer is 42.", 42),
    # trailing exclamation mark
    ("42!", 42),
    # trailing comma is not a thousands separator
    ("42, done", 42),
    # markdown bold around the number
    ("**42**", 42),
    # percent sign after the number
    ("50%", 50),
    # no number at all
    ("I don't know", None),
    # empty completion
    ("", None),
    # boxed answer
    ("\\boxed{42}", 42),
    # boxed negative answer
    ("\\boxed{-8}", -8),
    # boxed beats a later plain number
    ("\\boxed{8} because 2*4=8 and 9", 8),
    # last boxed wins over an earlier boxed
    ("\\boxed{1} no wait \\boxed{2}", 2),
    # last number inside the boxed content
    ("\\boxed{x = 5}", 5),
    # nested braces inside boxed are balanced
    ("\\boxed{\\text{6}} then 9", 6),
    # boxed content with thousands separator
    ("\\boxed{1,000}", 1000),
    # boxed beats ####
    ("#### 3 \\boxed{4}", 4),
    # boxed with no number: the marker is a commitment, no fallback to 7
    ("7 \\boxed{none}", None),
    # boxed non-integer
    ("\\boxed{2.5}", None),
    # unclosed boxed (truncated output) is ignored: fall back to the last number
    ("6 * 7 = 42 \\boxed{4", 4),
    # #### marker
    ("#### 42", 42),
    # #### beats a later number (first number after the marker)
    ("#### 42 because 6*7", 42),
    # #### beats an earlier last-number rule (number before the marker is ignored)
    ("6*7 #### 42", 42),
    # last #### marker wins
    ("#### 1\n#### 2", 2),
    # negative after ####
    ("####-5", -5),
    # #### with nothing after it: no fallback to 6
    ("6 ####", None),
]


@pytest.mark.parametrize("text, expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("answer, text, expected", [
    ("42", " 42", True),
    (42, "The answer is 42.", True),       # an int answer is read like its string
    ("-3", "= -3", True),
    ("42", " 41", False),
    ("42", "no number", False),            # no answer is wrong, not an error
    ("5", "5.5", False),                   # a non-integer is no answer
    ("7", "3 + 4 = 7", True),              # the last number
])
def test_is_correct(answer, text, expected):
    """mathrl.answers.is_correct: the one rule for a right answer (reward, accuracy, diversity, GRPO)."""
    assert is_correct({"prompt": "p", "answer": answer}, text) is expected


# ---------------------------------------------------------------------------------------------------
# paper API: compute_reward with default weights is correct_reward / wrong_reward
# ---------------------------------------------------------------------------------------------------

PAPER_CASES = [
    # correct, defaults
    (1.0, 0.0, "7", "3 + 4 = 7", 1.0),
    # wrong, defaults
    (1.0, 0.0, "7", "3 + 4 = 8", 0.0),
    # int answer in the sample
    (1.0, 0.0, 7, "7", 1.0),
    # string answer with whitespace
    (1.0, 0.0, " -3\n", "-3", 1.0),
    # custom rewards, correct
    (2.0, -1.0, "5", "12-7=5", 2.0),
    # custom rewards, wrong (binary minus: 12-7 is not -7)
    (2.0, -1.0, "-7", "12-7", -1.0),
    # custom rewards, no number scores wrong
    (2.0, -1.0, "5", "no idea", -1.0),
    # custom rewards, non-integer scores wrong even though it rounds to the answer
    (2.0, -1.0, "6", "5.5", -1.0),
    # whole decimal is correct
    (2.0, -1.0, "5", "5.0", 2.0),
    # thousands separator is correct
    (2.0, -1.0, 1234, "1,234", 2.0),
    # "1,23" is not 123
    (2.0, -1.0, 123, "1,23", -1.0),
    # boxed negative correct
    (2.0, -1.0, -8, "\\boxed{-8}", 2.0),
    # #### answer beats a later number
    (2.0, -1.0, 42, "#### 42 and 7", 2.0),
]


@pytest.mark.parametrize("correct_reward, wrong_reward, answer, completion, expected", PAPER_CASES)
def test_compute_reward_paper_api(correct_reward, wrong_reward, answer, completion, expected):
    model = MathRewardModel(correct_reward=correct_reward, wrong_reward=wrong_reward)
    assert model.compute_reward({"answer": answer}, completion) == expected


@pytest.mark.parametrize("answer, completion", [(a, c) for (_, _, a, c, _) in PAPER_CASES])
def test_zero_weights_total_equals_paper_reward(answer, completion):
    # with format_weight = length_weight = 0 the total is exactly the correctness term, at any length
    model = MathRewardModel(correct_reward=2.0, wrong_reward=-1.0, max_completion_length=8)
    for num_tokens in (None, 0, 3, 8, 100):
        scores = model.score({"answer": answer}, completion, num_tokens=num_tokens)
        assert scores["total"] == scores["correctness"]
        assert scores["total"] == model.compute_reward({"answer": answer}, completion, num_tokens)


# ---------------------------------------------------------------------------------------------------
# parse-failure counting
# ---------------------------------------------------------------------------------------------------

COUNT_CASES = [
    # one parsable completion: nothing unparsed
    (["42"], 1, 0),
    # no number is counted
    (["no number"], 1, 1),
    # non-integer is counted
    (["5.5"], 1, 1),
    # empty boxed is counted
    (["\\boxed{}"], 1, 1),
    # wrong but parsable is not counted as unparsed
    (["41"], 1, 0),
    # mixed batch
    (["42", "", "5.5", "#### 3", "abc"], 5, 3),
]


@pytest.mark.parametrize("completions, scored, unparsed", COUNT_CASES)
def test_unparsed_counting(completions, scored, unparsed):
    model = MathRewardModel()
    for completion in completions:
        model.compute_reward({"answer": "42"}, completion)
    assert model.num_scored == scored
    assert model.num_unparsed == unparsed
    assert model.unparsed_fraction == pytest.approx(unparsed / scored)


def test_counters_via_score_batch_and_reset():
    # score_batch counts too, and reset_counts zeroes both counters
    model = MathRewardModel()
    assert model.unparsed_fraction == 0.0
    model.score_batch([{"answer": 1}] * 4, ["1", "x", "2", "y"])
    assert (model.num_scored, model.num_unparsed) == (4, 2)
    assert model.unparsed_fraction == 0.5
    model.reset_counts()
    assert (model.num_scored, model.num_unparsed) == (0, 0)


def test_unparsed_scores_wrong():
    # a completion with no number scores wrong_reward, is counted, and gets format 0
    model = MathRewardModel(correct_reward=1.0, wrong_reward=-0.5, format_weight=1.0)
    scores = model.score({"answer": 0}, "nothing here")
    assert scores["correctness"] == -0.5
    assert scores["format"] == 0.0
    assert model.num_unparsed == 1


# ---------------------------------------------------------------------------------------------------
# format term
# ---------------------------------------------------------------------------------------------------

FORMAT_CASES = [
    # just the integer
    ("42", 1.0),
    # just the integer, surrounding whitespace
    ("  42 \n", 1.0),
    # sentence ending right after the answer
    ("The answer is 42.", 1.0),
    # exclamation after the answer
    ("It is 42!", 1.0),
    # markdown bold
    ("**42**", 1.0),
    # #### marker at the end
    ("#### 42", 1.0),
    # boxed inside math delimiters
    ("$\\boxed{42}$", 1.0),
    # negative answer at the end
    ("-3", 1.0),
    # wrong answer still has good format (format does not check correctness)
    ("41", 1.0),
    # text after the answer
    ("42 and then more text", 0.0),
    # text after the #### answer
    ("#### 42 because 6*7", 0.0),
    # text after the boxed answer
    ("\\boxed{42} since 6*7 = 42", 0.0),
    # question mark is not closing punctuation
    ("42?", 0.0),
    # non-integer answer
    ("5.5", 0.0),
    # no number
    ("no idea", 0.0),
    # empty
    ("", 0.0),
]


@pytest.mark.parametrize("completion, expected", FORMAT_CASES)
def test_format_score(completion, expected):
    assert format_score(completion) == expected
    assert MathRewardModel().score({"answer": 42}, completion)["format"] == expected


# ---------------------------------------------------------------------------------------------------
# length term (cosine), hand-computed
# ---------------------------------------------------------------------------------------------------

LENGTH_CASES = [
    # correct, L = 0: cos 0 = 1 -> 0.5 * 2 = 1
    (True, 0, 64, 1.0),
    # correct, L = max/2: cos(pi/2) = 0 -> 0.5
    (True, 32, 64, 0.5),
    # correct, L = max: cos(pi) = -1 -> 0
    (True, 64, 64, 0.0),
    # correct, L = max/4: 0.5 * (1 + sqrt(2)/2) = 0.853553...
    (True, 16, 64, 0.8535533905932737),
    # correct, L = max/3: 0.5 * (1 + 0.5) = 0.75
    (True, 4, 12, 0.75),
    # wrong, L = 0: 0
    (False, 0, 64, 0.0),
    # wrong, L = max/2: -0.5
    (False, 32, 64, -0.5),
    # wrong, L = max: -1
    (False, 64, 64, -1.0),
    # wrong, L = max/4: -0.5 * (1 - sqrt(2)/2) = -0.146446...
    (False, 16, 64, -0.14644660940672624),
    # wrong, L = 2max/3: -0.5 * (1 + 0.5) = -0.75
    (False, 8, 12, -0.75),
    # L above the limit is clipped to max
    (True, 1000, 64, 0.0),
    # L above the limit is clipped to max (wrong)
    (False, 1000, 64, -1.0),
    # negative L is clipped to 0
    (True, -5, 64, 1.0),
]


@pytest.mark.parametrize("correct, length, max_length, expected", LENGTH_CASES)
def test_length_score(correct, length, max_length, expected):
    assert length_score(correct, length, max_length) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("length", range(0, 17))
def test_length_correct_never_below_wrong(length):
    # at every length a correct answer's length term is >= a wrong one's
    assert length_score(True, length, 16) >= length_score(False, length, 16)


WEIGHTED_CASES = [
    # correct, good format, L=0: 1 + 0.5*1 + 0.2*1 = 1.7
    ("7", "7", 0, {"correctness": 1.0, "format": 1.0, "length": 1.0, "total": 1.7}),
    # correct, good format, L=max/2: 1 + 0.5 + 0.2*0.5 = 1.6
    ("7", "7", 32, {"correctness": 1.0, "format": 1.0, "length": 0.5, "total": 1.6}),
    # correct, bad format, L=max: 1 + 0 + 0.2*0 = 1.0
    ("7", "7 is it", 64, {"correctness": 1.0, "format": 0.0, "length": 0.0, "total": 1.0}),
    # wrong, good format, L=max/2: 0 + 0.5 + 0.2*(-0.5) = 0.4
    ("7", "8", 32, {"correctness": 0.0, "format": 1.0, "length": -0.5, "total": 0.4}),
    # wrong, no number, L=max: 0 + 0 + 0.2*(-1) = -0.2
    ("7", "hmm", 64, {"correctness": 0.0, "format": 0.0, "length": -1.0, "total": -0.2}),
]


@pytest.mark.parametrize("answer, completion, num_tokens, expected", WEIGHTED_CASES)
def test_weighted_total(answer, completion, num_tokens, expected):
    model = MathRewardModel(format_weight=0.5, length_weight=0.2, max_completion_length=64)
    scores = model.score({"answer": answer}, completion, num_tokens=num_tokens)
    assert scores.keys() == {*REWARD_TERMS, "total"}
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert model.compute_reward({"answer": answer}, completion, num_tokens) == pytest.approx(expected["total"])


def test_custom_rewards_with_weights():
    # correct 2.0 / wrong -1.0, format 0.1, length 1.0, max 10, L=5 wrong unformatted:
    # -1 + 0.1*0 + 1.0*(-0.5) = -1.5
    model = MathRewardModel(2.0, -1.0, format_weight=0.1, length_weight=1.0, max_completion_length=10)
    assert model.compute_reward({"answer": 3}, "4 apples", num_tokens=5) == pytest.approx(-1.5)


def test_length_falls_back_to_characters():
    # num_tokens=None uses len(completion): "1234" is 4 chars of max 8 -> cos(pi/2) = 0 -> 0.5
    model = MathRewardModel(max_completion_length=8)
    assert model.score({"answer": 1234}, "1234")["length"] == pytest.approx(0.5)
    # and with num_tokens given, the text length is ignored: 0 tokens -> 1.0
    assert model.score({"answer": 1234}, "1234", num_tokens=0)["length"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------
# score_batch and errors
# ---------------------------------------------------------------------------------------------------


def test_score_batch_matches_score():
    # score_batch returns one list per term, same order as the inputs, equal to per-item score
    samples = [{"answer": 7}, {"answer": "-3"}, {"answer": 5}]
    completions = ["7", "The answer is -3.", "no"]
    tokens = [1, 30, 64]
    model = MathRewardModel(format_weight=0.5, length_weight=0.2)
    batch = model.score_batch(samples, completions, tokens)
    assert list(batch) == [*REWARD_TERMS, "total"]
    for i, (sample, completion, n) in enumerate(zip(samples, completions, tokens)):
        single = MathRewardModel(format_weight=0.5, length_weight=0.2).score(sample, completion, n)
        for key in batch:
            assert batch[key][i] == single[key]
    assert batch["correctness"] == [1.0, 1.0, 0.0]
    assert batch["format"] == [1.0, 1.0, 0.0]
    assert batch["length"][2] == pytest.approx(-1.0)
    assert batch["total"][0] == pytest.approx(1.0 + 0.5 + 0.2 * 0.5 * (1 + math.cos(math.pi / 64)))


@pytest.mark.parametrize(
    "samples, completions, num_tokens",
    [
        # fewer completions than samples
        ([{"answer": 1}, {"answer": 2}], ["1"], None),
        # num_tokens of the wrong length
        ([{"answer": 1}], ["1"], [1, 2]),
    ],
)
def test_score_batch_length_mismatch(samples, completions, num_tokens):
    with pytest.raises(ValueError):
        MathRewardModel().score_batch(samples, completions, num_tokens)


@pytest.mark.parametrize(
    "sample",
    [
        # missing answer key
        {"question": "1+1"},
        # answer that is not an integer
        {"answer": "seven"},
        # float answer
        {"answer": 7.5},
        # None answer
        {"answer": None},
    ],
)
def test_bad_sample_answer_raises_with_message(sample):
    model = MathRewardModel()
    with pytest.raises(ValueError, match="answer"):
        model.compute_reward(sample, "7")
    # a bad sample is a data error, not a parse failure: nothing is counted
    assert model.num_scored == 0


def test_invalid_max_length():
    # a non-positive max_completion_length would divide by zero in the cosine term
    with pytest.raises(ValueError):
        MathRewardModel(max_completion_length=0)
