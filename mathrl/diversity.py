"""How diverse a model's sampled answers are (paper 5.2.2: "GRPO generates more diverse responses"): pure functions.

Input: for each prompt, K completions sampled at some temperature, and the prompt's example (its gold answer).
Answers are read and judged by mathrl/answers.py, exactly as greedy accuracy and the reward read them. Per eval set:

- pass@K: fraction of prompts with at least one correct sample. With exactly K samples drawn this is the plain
  estimate (the unbiased estimator of Chen et al. 2021 reduces to it when n = k).
- majority-vote accuracy: the most common extracted answer of a prompt is its vote. Completions with no
  extractable integer do not vote; a tie goes to the answer whose first occurrence comes first among the
  samples (deterministic, independent of integer values); a prompt where nothing could be extracted is wrong.
- sampled accuracy: mean correctness over all K samples of all prompts.
- distinct answers: number of different extracted answers among a prompt's K samples, "no answer" counted as
  one value of its own; averaged over prompts (1 = every sample gives the same answer).
- distinct completions: number of different completion strings (exact text, EOS cut off) among the K samples;
  averaged over prompts. It counts phrasings, so it can exceed distinct answers ("12" vs " 12").

The two "distinct" means come with their standard error over prompts (`*_se`), so two models can be compared
against the noise.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from mathrl.answers import expected_answer, extract_answer, is_correct


def majority_vote(answers: Sequence[int | None]) -> int | None:
    """The most common non-None answer; ties go to the one seen first; None when no answer was extracted."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); 0 for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def diversity_metrics(samples: Sequence[Sequence[str]], examples: Sequence[dict]) -> dict:
    """Diversity of K sampled completions per prompt (see the module docstring). samples[i] holds prompt i's K
    completion texts, examples[i] the example they answer. Every prompt must have the same number of samples
    (K >= 1)."""
    if len(samples) != len(examples) or not samples:
        raise ValueError(f"need one list of samples per example, got {len(samples)} and {len(examples)}")
    k = len(samples[0])
    if k < 1 or any(len(s) != k for s in samples):
        raise ValueError("every prompt needs the same number (>= 1) of samples")
    passed, majority, correct, distinct_answers, distinct_texts = [], [], [], [], []
    for texts, example in zip(samples, examples):
        extracted = [extract_answer(t) for t in texts]
        hits = [is_correct(example, t) for t in texts]
        passed.append(any(hits))
        majority.append(majority_vote(extracted) == expected_answer(example))  # no vote (None) is wrong
        correct += hits
        distinct_answers.append(len(set(extracted)))
        distinct_texts.append(len(set(texts)))
    answers_mean, answers_se = mean_and_se(distinct_answers)
    texts_mean, texts_se = mean_and_se(distinct_texts)
    n = len(samples)
    return {
        "num_prompts": n,
        "num_samples": k,
        "pass_at_k": sum(passed) / n,
        "majority_accuracy": sum(majority) / n,
        "sampled_accuracy": sum(correct) / len(correct),
        "distinct_answers": answers_mean,
        "distinct_answers_se": answers_se,
        "distinct_completions": texts_mean,
        "distinct_completions_se": texts_se,
    }


def diversity_table(rows: list[tuple[str, str, dict]], columns: tuple[str, str] = ("run", "eval set")) -> str:
    """A markdown table with one line per (name, eval set, diversity dict with temperature and top_p)."""
    lines = [f"| {columns[0]} | {columns[1]} | K | temperature / top_p | pass@K | majority vote | sampled acc | "
             "distinct answers | distinct completions |", "|" + "---|" * 9]
    for name, label, d in rows:
        lines.append(f"| {name} | {label} | {d['num_samples']} | {d['temperature']:g} / {d['top_p']:g} | "
                     f"{d['pass_at_k']:.3f} | {d['majority_accuracy']:.3f} | {d['sampled_accuracy']:.3f} | "
                     f"{d['distinct_answers']:.2f} ± {d['distinct_answers_se']:.2f} | "
                     f"{d['distinct_completions']:.2f} ± {d['distinct_completions_se']:.2f} |")
    return "\n".join(lines)
