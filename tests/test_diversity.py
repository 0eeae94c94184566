"""mathrl/diversity.py against cases worked out by hand (answers are read and judged by mathrl/answers.py)."""

import math

import pytest

from mathrl.diversity import diversity_metrics, majority_vote, mean_and_se


@pytest.mark.parametrize("answers, expected", [
    ([3, 3, 5], 3),              # plain majority
    ([5, 3, 3, 5], 5),           # 2-2 tie: 5 occurs first
    ([3, 5, 5, 3], 3),           # same counts, other order: 3 occurs first (not the smaller / larger value)
    ([None, None, 7], 7),        # unparsed completions do not vote, even when they are the most common
    ([None, None], None),        # nothing extracted: no vote
    ([-2, 4, -2, 4, 4], 4),      # 3 beats 2
    ([], None),
])
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def test_mean_and_se():
    assert mean_and_se([2.0]) == (2.0, 0.0)  # one value: no spread to estimate
    mean, se = mean_and_se([1, 2, 3, 4])  # sample variance 5/3, se = sqrt(5/3 / 4)
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 12))


# Three prompts, K = 4 samples each. Per prompt (gold answer in brackets):
#   A [12]: " 12", " 12", "12", " 13"  -> answers 12, 12, 12, 13: 3 correct; vote 12 (right);
#           distinct answers 2; distinct strings 3 (" 12", "12", " 13")
#   B [7]:  " 5", " 6", " 5", " 6"     -> 0 correct; 5 and 6 tie 2-2, 5 seen first: vote 5 (wrong);
#           distinct answers 2; distinct strings 2
#   C [0]:  "x", "??", " 0", "x"        -> answers None, None, 0, None: 1 correct; vote 0 (the only one
#           extracted, right, although "no answer" is the most common); distinct answers 2 (None, 0);
#           distinct strings 3
SAMPLES = [[" 12", " 12", "12", " 13"], [" 5", " 6", " 5", " 6"], ["x", "??", " 0", "x"]]
GOLD = [12, 7, 0]


def examples(gold: list[int]) -> list[dict]:
    return [{"prompt": f"problem {i}", "answer": str(g)} for i, g in enumerate(gold)]


def test_diversity_metrics_hand_computed():
    m = diversity_metrics(SAMPLES, examples(GOLD))
    assert m["num_prompts"] == 3 and m["num_samples"] == 4
    assert m["pass_at_k"] == pytest.approx(2 / 3)          # A and C have a correct sample, B none
    assert m["majority_accuracy"] == pytest.approx(2 / 3)  # votes 12 (right), 5 (wrong), 0 (right)
    assert m["sampled_accuracy"] == pytest.approx(4 / 12)  # 3 + 0 + 1 correct of 12 samples
    assert m["distinct_answers"] == pytest.approx(2.0)     # 2, 2, 2
    assert m["distinct_answers_se"] == 0.0
    assert m["distinct_completions"] == pytest.approx(8 / 3)  # 3, 2, 3
    # values 3, 2, 3: sample variance 1/3, se = sqrt(1/3 / 3) = 1/3
    assert m["distinct_completions_se"] == pytest.approx(1 / 3)


def test_identical_samples_are_not_diverse():
    m = diversity_metrics([[" 4"] * 5, [" 9"] * 5], examples([4, 8]))
    assert (m["pass_at_k"], m["majority_accuracy"], m["sampled_accuracy"]) == (0.5, 0.5, 0.5)
    assert m["distinct_answers"] == 1.0 and m["distinct_completions"] == 1.0


def test_one_sample_per_prompt_is_sampled_accuracy():
    m = diversity_metrics([[" 1"], [" 3"], ["no"]], examples([1, 2, 3]))
    assert m["pass_at_k"] == m["majority_accuracy"] == m["sampled_accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("samples, gold", [
    ([[" 1", " 2"], [" 1"]], [1, 2]),  # unequal K
    ([[" 1"]], [1, 2]),                 # one gold answer too many
    ([], []),                           # nothing to measure
])
def test_malformed_input_is_rejected(samples, gold):
    with pytest.raises(ValueError):
        diversity_metrics(samples, examples(gold))
