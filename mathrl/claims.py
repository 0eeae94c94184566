"""The paper's claims (sections 5-6) checked against compare.py's numbers: pure functions, no verdict written in.

Each check compares two runs and returns "supported", "contradicted" or "inconclusive" with the numbers behind
it. Noise: accuracies are compared with a two-proportion test, SE = sqrt(p (1 - p) (1/n1 + 1/n2)) with p the
pooled accuracy; means over prompts (completion tokens, distinct answers) with SE = sqrt(se1^2 + se2^2). A
difference counts only when it is larger than 2 SE; otherwise the verdict is "inconclusive".

Across seeds (compare.py --seeds N), `aggregate_claims` judges each claim once from every seed's comparison: a
difference by its mean over seeds against the larger of its seed spread and its sampling SE (`seed_aggregate`),
any other claim by whether every seed's verdict agrees.

`runs` maps a run name (the entries of mathrl/runs.py) to what mathrl.report loads:
  summary      the checkpoint's summary.json ({} for the base model)
  metrics      the run's metrics.jsonl records ([] for base and warm_start)
  held_out     evaluate.py's result on the held-out set (accuracy, num_examples, diversity, predictions, ...)
  ood          the same on the out-of-distribution set, or None
"""

from __future__ import annotations

import math
import statistics

from mathrl.diversity import mean_and_se

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
PAPER_COST_RATIO = (3.0, 4.0)  # section 5.3.1: "approximately 3-4x longer than SFT"
MEMORY_MARGIN = 0.1  # (b2): peak memories within 10 % of each other are "inconclusive" (one measurement each)


# ---- statistics -----------------------------------------------------------------------------------------

def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def accuracy_difference(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """(p1 - p2, its standard error under the pooled two-proportion test)."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    return p1 - p2, math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))


def verdict(difference: float, se: float) -> str:
    """SUPPORTED when difference > 2 SE, CONTRADICTED when < -2 SE, else INCONCLUSIVE."""
    if abs(difference) <= 2 * se:
        return INCONCLUSIVE
    return SUPPORTED if difference > 0 else CONTRADICTED


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with N - 1 in the denominator; 0.0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


SEED_STD, SAMPLING_SE = "seed std", "sampling SE"


def seed_aggregate(differences: list[float], ses: list[float]) -> dict:
    """One difference (run a minus run b) measured once per seed, and the uncertainty its verdict is judged by.

    differences[i] is the difference with seed i (a's run with that seed minus b's), ses[i] its sampling standard
    error with that seed (for accuracies the binomial SE of `accuracy_difference`). Returns
      mean         the mean of the differences
      seed_std     their sample standard deviation over seeds (N - 1 denominator; 0 for one seed): how far one
                   seed's difference strays. Not divided by sqrt(N): the verdict asks whether the difference
                   stands out from what another seed could give, and with 3 seeds the std is itself a rough guess
      sampling_se  the root mean square of ses. Every seed answers the same eval problems, so averaging seeds
                   does not shrink it
      uncertainty  the larger of the two, `used` naming which (SAMPLING_SE on a tie, so one seed reads as before)
      verdict      verdict(mean, uncertainty): beyond 2 x uncertainty
    """
    mean, seed_std = mean_and_std(differences)
    sampling_se = math.sqrt(statistics.fmean([se * se for se in ses]))
    used = SEED_STD if seed_std > sampling_se else SAMPLING_SE
    uncertainty = max(seed_std, sampling_se)
    return {"mean": mean, "seed_std": seed_std, "sampling_se": sampling_se, "uncertainty": uncertainty,
            "used": used, "verdict": verdict(mean, uncertainty)}


def result_difference(a: dict, b: dict) -> tuple[float, float]:
    """`accuracy_difference` of two evaluation results (evaluate.py's held_out or ood entry): a minus b, its SE."""
    return accuracy_difference(a["accuracy"], a["num_examples"], b["accuracy"], b["num_examples"])


def mean_tokens_and_se(result: dict) -> tuple[float, float]:
    return mean_and_se([p["num_tokens"] for p in result["predictions"]])


def acc(result: dict) -> str:
    return f"{result['accuracy']:.3f} ± {binomial_se(result['accuracy'], result['num_examples']):.3f}"


def eval_curve(run: dict) -> list[tuple[int, float, float]]:
    """(step, training seconds, held-out accuracy) at each evaluation during training."""
    return [(r["step"], r.get("elapsed_s", float("nan")), r["eval_accuracy"])
            for r in run["metrics"] if "eval_accuracy" in r]


def learned(run: dict, base: dict) -> bool:
    """Held-out accuracy above the untrained model's by more than 2 SE."""
    d, se = result_difference(run["held_out"], base["held_out"])
    return d > 2 * se


def comparison(runs: str, result: str, evidence: str, **numbers) -> dict:
    return {"runs": runs, "verdict": result, "evidence": evidence, **numbers}


# ---- the claims -------------------------------------------------------------------------------------------

def convergence_speed(runs: dict, fraction: float) -> dict:
    """(a1) SFT reaches a given accuracy in less training time than GRPO (both from the base model).

    Threshold: `fraction` of the best held-out accuracy either run reached during training. A run "reached" it
    at the first evaluation at or above it; it was "still below" until its last evaluation before that (or its
    last evaluation, if it never reached it). SFT is faster only if it reached the threshold no later than GRPO
    was still seen below it, and vice versa; otherwise evaluations are too sparse to tell.
    """
    curves = {name: eval_curve(runs[name]) for name in ("sft", "grpo")}
    n = runs["base"]["held_out"]["num_examples"]
    best = max((a for curve in curves.values() for _, _, a in curve), default=0.0)
    base = runs["base"]["held_out"]["accuracy"]
    d, se = accuracy_difference(best, n, base, n)
    if d <= 2 * se:
        return comparison("sft vs grpo", INCONCLUSIVE, f"neither run rose above the untrained model's held-out "
                          f"accuracy {base:.3f} by more than 2 SE (best {best:.3f}, n={n})")
    threshold = fraction * best
    seen = {}
    for name, curve in curves.items():
        reached = next((i for i, (_, _, a) in enumerate(curve) if a >= threshold), None)
        if reached is None:  # still below at its last evaluation
            seen[name] = (None, curve[-1][1] if curve else 0.0)
        else:  # below until the evaluation before (from the start, if the first one reached it)
            seen[name] = (curve[reached], curve[reached - 1][1] if reached > 0 else 0.0)
    texts = []
    for name, (hit, below) in seen.items():
        if hit:
            texts.append(f"{name} reached {threshold:.3f} at step {hit[0]} after {hit[1]:.1f} s of training")
        else:
            last = curves[name][-1] if curves[name] else (0, 0.0, 0.0)
            texts.append(f"{name} never did (best {max((a for *_, a in curves[name]), default=0):.3f} in "
                         f"{last[0]} steps, {last[1]:.1f} s)")
    (sft_hit, sft_below), (grpo_hit, grpo_below) = seen["sft"], seen["grpo"]
    if sft_hit and sft_hit[1] <= grpo_below:
        result = SUPPORTED
    elif grpo_hit and grpo_hit[1] <= sft_below:
        result = CONTRADICTED
    else:
        result = INCONCLUSIVE
    evidence = (f"threshold {fraction:g} x best held-out accuracy {best:.3f} = {threshold:.3f}; "
                + "; ".join(texts))
    if result == INCONCLUSIVE:
        evidence += "; the evaluations do not separate the two (or the slower run stopped too early to tell)"
    return comparison("sft vs grpo", result, evidence, threshold=threshold)


def largest_drop(curve: list[tuple[int, float, float]], n: int) -> tuple[float, bool]:
    """The largest fall of held-out accuracy between consecutive evaluations, and whether it exceeds 2 SE."""
    worst, significant = 0.0, False
    for (_, _, before), (_, _, after) in zip(curve, curve[1:]):
        d, se = accuracy_difference(before, n, after, n)
        if d > worst:
            worst = d
        significant |= d > 2 * se
    return worst, significant


def stability(runs: dict) -> dict:
    """(a2) SFT trains more stably: no held-out accuracy drop beyond noise, where GRPO has one."""
    n = runs["base"]["held_out"]["num_examples"]
    drops = {name: largest_drop(eval_curve(runs[name]), n) for name in ("sft", "grpo")}
    losses = [r["loss"] for r in runs["sft"]["metrics"] if "loss" in r]
    rises = sum(b > a for a, b in zip(losses, losses[1:]))
    evidence = "; ".join(f"{name}: largest drop between evaluations {d:.3f} ({'beyond' if s else 'within'} "
                         f"2 SE, n={n}, {len(eval_curve(runs[name]))} evaluations)" for name, (d, s) in drops.items())
    if losses:
        evidence += (f"; SFT loss {losses[0]:.3f} -> {losses[-1]:.3f}, rising in {rises} of {len(losses) - 1} "
                     f"logged intervals")
    if min(len(eval_curve(runs[name])) for name in drops) < 2:
        return comparison("sft vs grpo", INCONCLUSIVE, evidence + "; fewer than 2 evaluations in a run")
    if not learned(runs["grpo"], runs["base"]):
        return comparison("sft vs grpo", INCONCLUSIVE,
                          evidence + "; GRPO never rose above the untrained model, so its flat curve says nothing "
                                     "about stability")
    (_, sft_bad), (_, grpo_bad) = drops["sft"], drops["grpo"]
    result = SUPPORTED if grpo_bad and not sft_bad else CONTRADICTED if sft_bad and not grpo_bad else INCONCLUSIVE
    return comparison("sft vs grpo", result, evidence)


def spread_and_se(values: list[float]) -> tuple[float, float]:
    """The sample std of `values` and its large-sample SE, std / sqrt(2 (n - 1)) (normal data)."""
    std = statistics.stdev(values)
    return std, std / math.sqrt(2 * (len(values) - 1))


def reward_variance(runs: dict, name: str) -> dict:
    """(a3) GRPO's reward curve varies more early in training than late (5.1.1: "higher variance initially,
    stabilizing as the policy learns"): the std of the per-step mean reward over the first third of the run's steps
    against the last third. SUPPORTED when the early std is larger by more than 2 SE (SE of a std:
    `spread_and_se`), CONTRADICTED when smaller by that. A per-step mean of 0/1 rewards varies most at 0.5, so a
    changing accuracy moves it too; the mean rewards of both thirds are given beside it."""
    rewards = [r["reward_mean"] for r in runs[name]["metrics"] if "reward_mean" in r]
    third = len(rewards) // 3
    if third < 3:
        return comparison(f"{name}: first vs last third of its steps", INCONCLUSIVE,
                          f"{len(rewards)} logged steps, too few to compare thirds")
    (early, se_early), (late, se_late) = spread_and_se(rewards[:third]), spread_and_se(rewards[-third:])
    d, se = early - late, math.hypot(se_early, se_late)
    evidence = (f"std of the per-step mean reward {early:.3f} ± {se_early:.3f} over the first {third} steps vs "
                f"{late:.3f} ± {se_late:.3f} over the last {third} (mean reward "
                f"{statistics.fmean(rewards[:third]):.3f} vs {statistics.fmean(rewards[-third:]):.3f})")
    return comparison(f"{name}: first vs last third of its steps", verdict(d, se), evidence + f"; difference "
                      f"{d:+.3f} ± {se:.3f}", difference=d, se=se, se_name="SE of a std")


def memory(runs: dict, name: str) -> dict:
    """(b2) GRPO needs more memory than SFT (5.3.2: completions, the reference model, advantages): the training
    process's peak memory (summary.json peak_memory_mb: peak GPU memory, or peak RSS on CPU) of `name` vs sft.
    One measurement per run, so no SE: SUPPORTED when GRPO's peak is above SFT's by more than MEMORY_MARGIN of
    SFT's, CONTRADICTED when below by that. On CPU the RSS includes the Python/torch runtime (~0.5 GB), the same in
    both."""
    grpo, sft = runs[name]["summary"], runs["sft"]["summary"]
    ratio = grpo["peak_memory_mb"] / sft["peak_memory_mb"]
    result = (SUPPORTED if ratio > 1 + MEMORY_MARGIN else CONTRADICTED if ratio < 1 - MEMORY_MARGIN
              else INCONCLUSIVE)
    evidence = (f"peak memory {grpo['peak_memory_mb']:.0f} vs {sft['peak_memory_mb']:.0f} MB ({memory_kind(grpo)}): "
                f"{ratio:.2f}x (within ±{MEMORY_MARGIN:.0%}: inconclusive)")
    return comparison(f"{name} vs sft", result, evidence, memory_ratio=ratio)


def memory_kind(summary: dict) -> str:
    """What summary.json's peak_memory_mb measured on the run's device."""
    return "process peak RSS on CPU" if summary.get("device", "cpu") == "cpu" else "peak GPU memory"


def cost(runs: dict) -> dict:
    """(b) GRPO's training takes 3-4x SFT's (section 5.3.1): total training time of grpo vs sft."""
    sft, grpo = runs["sft"]["summary"], runs["grpo"]["summary"]
    total = grpo["train_seconds"] / sft["train_seconds"]
    per_step = (grpo["train_seconds"] / grpo["step"]) / (sft["train_seconds"] / sft["step"])
    low, high = PAPER_COST_RATIO
    result = SUPPORTED if low <= total <= high else CONTRADICTED
    evidence = (f"GRPO {grpo['train_seconds']:.1f} s for {grpo['step']} steps vs SFT {sft['train_seconds']:.1f} s "
                f"for {sft['step']} steps: {total:.2f}x in total, {per_step:.2f}x per step (paper: {low:g}-{high:g}x "
                f"in total); peak memory {grpo['peak_memory_mb']:.0f} vs {sft['peak_memory_mb']:.0f} MB "
                f"({memory_kind(grpo)})")
    if "sft_grpo" in runs:
        extra = runs["sft_grpo"]["summary"]["train_seconds"] / sft["train_seconds"]
        evidence += f"; the GRPO stage of SFT -> GRPO adds {extra:.2f}x SFT's time"
    return comparison("grpo vs sft", result, evidence, total_ratio=total, per_step_ratio=per_step)


def diversity(runs: dict, a: str, b: str) -> dict:
    """(c) run a's sampled answers are more diverse than run b's: more distinct completions per prompt."""
    da, db = runs[a]["held_out"].get("diversity"), runs[b]["held_out"].get("diversity")
    if not da or not db:
        return comparison(f"{a} vs {b}", INCONCLUSIVE, "no sampled completions (diversity_samples is 0)")
    d = da["distinct_completions"] - db["distinct_completions"]
    se = math.hypot(da["distinct_completions_se"], db["distinct_completions_se"])
    evidence = (f"distinct completions per prompt {da['distinct_completions']:.2f} ± "
                f"{da['distinct_completions_se']:.2f} vs {db['distinct_completions']:.2f} ± "
                f"{db['distinct_completions_se']:.2f} of K={da['num_samples']}"
                f"; distinct answers {da['distinct_answers']:.2f} vs {db['distinct_answers']:.2f}; sampled accuracy "
                f"{da['sampled_accuracy']:.3f} vs {db['sampled_accuracy']:.3f}")
    if not learned(runs[a], runs["base"]):
        evidence += f"; {a} never rose above the untrained model, so this is the diversity of wrong answers"
    return comparison(f"{a} vs {b}", verdict(d, se), evidence, difference=d, se=se, se_name="SE over prompts")


def ood_generalization(runs: dict, a: str, b: str) -> dict:
    """(d) run a is more accurate than run b out of distribution."""
    ra, rb = runs[a]["ood"], runs[b]["ood"]
    if ra is None or rb is None:
        return comparison(f"{a} vs {b}", INCONCLUSIVE, "no out-of-distribution set (ood_eval_file is null)")
    d, se = result_difference(ra, rb)
    gap = {name: runs[name]["held_out"]["accuracy"] - runs[name]["ood"]["accuracy"] for name in (a, b)}
    evidence = (f"OOD accuracy {acc(ra)} vs {acc(rb)} (n={ra['num_examples']}); held-out minus OOD: "
                f"{gap[a]:+.3f} vs {gap[b]:+.3f}")
    return comparison(f"{a} vs {b}", verdict(d, se), evidence, difference=d, se=se)


def two_stage(runs: dict, after_name: str = "sft_grpo", before_name: str = "sft") -> dict:
    """(e) GRPO keeps the held-out accuracy of the checkpoint it starts from while shortening its answers: the
    two-stage recipe's finding (GRPO after SFT), or, with after_name "grpo_length" / "grpo" and before_name "base",
    the same question for GRPO from a verbose base model with and without the recipe's length term."""
    after, before = runs[after_name]["held_out"], runs[before_name]["held_out"]
    d_acc, se_acc = result_difference(after, before)
    (len_after, se_after), (len_before, se_before) = mean_tokens_and_se(after), mean_tokens_and_se(before)
    d_len, se_len = len_after - len_before, math.hypot(se_after, se_before)
    # An untrained base that is sometimes right has accuracy to keep; an SFT run only if it learned something.
    has_accuracy = before["accuracy"] > 0 if before_name == "base" else learned(runs[before_name], runs["base"])
    result = two_stage_verdict(d_acc, se_acc, d_len, se_len, has_accuracy)
    lost, shorter, longer = d_acc < -2 * se_acc, d_len < -2 * se_len, d_len > 2 * se_len
    evidence = (f"held-out accuracy {acc(after)} after GRPO vs {acc(before)} before "
                f"({'lower by more than' if lost else 'kept within'} 2 SE = {2 * se_acc:.3f}); mean completion "
                f"tokens {len_after:.2f} ± {se_after:.2f} vs {len_before:.2f} ± {se_before:.2f}"
                + (f", {len_after / len_before:.2f}x" if len_before > 0 else "")
                + f" ({'shorter' if shorter else 'longer' if longer else 'no change beyond noise'})")
    if shorter and not (lost or longer) and not has_accuracy:
        evidence += f"; {before_name} never rose above the untrained model, so there was no accuracy to keep"
    return comparison(f"{after_name} vs {before_name}", result, evidence, accuracy_difference=d_acc,
                      accuracy_se=se_acc, length_difference=d_len, length_se=se_len, accuracy_to_keep=has_accuracy)


def two_stage_comparisons(runs: dict) -> list[dict]:
    """(e)'s comparisons: GRPO after SFT; when the experiment has the sft_grpo_length run (mathrl/runs.py), first
    the recipe as written, GRPO after SFT with the length term; when it has grpo_length, GRPO from the base with
    and without the length term. Beside its run without the length term, each shows which part of a shortening
    the length reward causes."""
    comparisons = [two_stage(runs)]
    if "sft_grpo_length" in runs:
        comparisons.insert(0, two_stage(runs, "sft_grpo_length", "sft"))
    if "grpo_length" in runs:
        comparisons += [two_stage(runs, "grpo_length", "base"), two_stage(runs, "grpo", "base")]
    return comparisons


def two_stage_verdict(d_acc: float, u_acc: float, d_len: float, u_len: float, accuracy_to_keep: bool) -> str:
    """(e) from the accuracy and length differences (after GRPO minus before) and their uncertainties:
    CONTRADICTED when accuracy fell or answers grew by more than 2 uncertainties, SUPPORTED when answers shrank by
    more than that while accuracy held (and the starting checkpoint had an accuracy to keep), else INCONCLUSIVE."""
    if d_acc < -2 * u_acc or d_len > 2 * u_len:
        return CONTRADICTED
    return SUPPORTED if d_len < -2 * u_len and accuracy_to_keep else INCONCLUSIVE


def head_to_head(runs: dict) -> dict:
    """(f) From one warm start and for the same training time, more SFT buys more accuracy than GRPO."""
    s, g, w = runs["h2h_sft"], runs["h2h_grpo"], runs["warm_start"]["held_out"]
    d, se = result_difference(s["held_out"], g["held_out"])
    parts = []
    for name, run in (("SFT", s), ("GRPO", g)):
        sm = run["summary"]
        gain = (run["held_out"]["accuracy"] - w["accuracy"]) / max(sm["train_seconds"], 1e-9) * 100
        parts.append(f"{name} {acc(run['held_out'])} after {sm['train_seconds']:.1f} s ({sm['step']} steps, "
                     f"{gain:+.3f} per 100 s)")
    evidence = f"warm start {acc(w)}; " + "; ".join(parts)
    unbound = [name for name, run in (("h2h_sft", s), ("h2h_grpo", g)) if not run["summary"].get("stopped_by_time")]
    if unbound:
        evidence += f"; {', '.join(unbound)} ended on its step cap before the time budget: not equal compute"
    return comparison("h2h_sft vs h2h_grpo", verdict(d, se), evidence, difference=d, se=se)


def check_claims(runs: dict, convergence_fraction: float) -> list[dict]:
    """Every claim, in the paper's order: {id, claim, comparisons: [{runs, verdict, evidence, ...}]}."""
    claims = [
        ("a1", "SFT converges faster than GRPO (5.1.1)", [convergence_speed(runs, convergence_fraction)]),
        ("a2", "SFT trains more stably than GRPO (5.1.2)", [stability(runs)]),
        ("a3", "GRPO's reward varies more early in training than late (5.1.1)",
         [reward_variance(runs, "grpo"), reward_variance(runs, "sft_grpo")]),
        ("b", "GRPO's training takes 3-4x SFT's (5.3.1)", [cost(runs)]),
        ("b2", "GRPO needs more memory than SFT (5.3.2)", [memory(runs, "grpo"), memory(runs, "sft_grpo")]),
        ("c", "GRPO's answers are more diverse (5.2.2)",
         [diversity(runs, "grpo", "sft"), diversity(runs, "sft_grpo", "sft")]),
        ("d", "GRPO generalizes better out of distribution (6.1.2)",
         [ood_generalization(runs, "grpo", "sft"), ood_generalization(runs, "sft_grpo", "sft")]),
        ("e", "GRPO after SFT keeps accuracy while shortening answers (two-stage recipe)", two_stage_comparisons(runs)),
        ("f", "SFT buys more accuracy per unit of compute than GRPO (6.1.1; equal-time head-to-head)",
         [head_to_head(runs)]),
    ]
    return [{"id": i, "claim": text, "comparisons": comparisons} for i, text, comparisons in claims]


def notes(runs: dict) -> list[str]:
    """Facts a reader needs to read the table right, computed from the runs."""
    out = []
    grpo = runs["grpo"]
    if not learned(grpo, runs["base"]):
        steps = [r for r in grpo["metrics"] if "zero_std_group_fraction" in r]
        zero = sum(r["zero_std_group_fraction"] for r in steps) / max(len(steps), 1)
        reward = sum(r["reward_mean"] for r in steps) / max(len(steps), 1)
        if zero >= 0.5:
            why = (f"on average {zero:.0%} of its groups had the same reward for every completion, which gives zero "
                   f"advantage and no gradient. GRPO needs a model that is already sometimes right")
        else:  # a base that is sometimes right: most groups do carry a gradient
            why = (f"yet {1 - zero:.0%} of its groups had mixed rewards, so the gradient was there: the base's few "
                   f"right answers were not enough to sharpen in this budget")
        out.append(f"GRPO from the base model did not rise above the untrained model (held-out "
                   f"{acc(grpo['held_out'])} vs {acc(runs['base']['held_out'])}): its mean reward was {reward:.3f} "
                   f"and {why}; compare sft_grpo.")
    return out


# ---- across seeds -----------------------------------------------------------------------------------------

def used_name(agg: dict, sampling_name: str) -> str:
    """What a `seed_aggregate` verdict was judged against: SEED_STD, or the sampling SE by its name."""
    return SEED_STD if agg["used"] == SEED_STD else sampling_name


def with_spreads(name: str, agg: dict, sampling_name: str) -> str:
    """An aggregated difference and both its uncertainties, for the evidence."""
    return f"{name} {agg['mean']:+.3f} (seed std {agg['seed_std']:.3f}, {sampling_name} {agg['sampling_se']:.3f})"


# The ratios a verdict-by-agreement comparison carries ((b) cost, (b2) memory): averaged over the seeds into its
# evidence, in this order and wording.
AGREEMENT_RATIOS = {
    "total_ratio": "GRPO / SFT training time {mean:.2f}x ± {std:.2f} (seed std)",
    "per_step_ratio": "{mean:.2f}x per step",
    "memory_ratio": "peak memory {mean:.2f}x ± {std:.2f} (seed std)",
}


def aggregate_comparison(per_seed: dict[int, dict]) -> dict:
    """One comparison of a claim, judged from every seed's: a difference by `seed_aggregate`, the two-stage claim
    by its accuracy and length differences so aggregated, any other comparison (a verdict without a difference)
    by agreement: the seeds' common verdict, or INCONCLUSIVE when they differ."""
    items, first = list(per_seed.values()), next(iter(per_seed.values()))
    seeds = "; ".join(f"seed {s}: {c['verdict']}" for s, c in per_seed.items())
    if all("se" in c for c in items):
        agg = seed_aggregate([c["difference"] for c in items], [c["se"] for c in items])
        sampling = first.get("se_name", "binomial SE")
        evidence = f"{with_spreads('mean difference', agg, sampling)} over {len(items)} seeds; {seeds}"
        return comparison(first["runs"], agg["verdict"], evidence, difference=agg["mean"], seed_std=agg["seed_std"],
                          se=agg["sampling_se"], used=used_name(agg, sampling))
    if all("accuracy_se" in c for c in items):
        accuracy = seed_aggregate([c["accuracy_difference"] for c in items], [c["accuracy_se"] for c in items])
        length = seed_aggregate([c["length_difference"] for c in items], [c["length_se"] for c in items])
        learned_everywhere = all(c["accuracy_to_keep"] for c in items)
        result = two_stage_verdict(accuracy["mean"], accuracy["uncertainty"], length["mean"], length["uncertainty"],
                                   learned_everywhere)
        caveat = "" if learned_everywhere else "; with some seed the starting run had no accuracy to keep"
        evidence = (f"{with_spreads('held-out accuracy difference', accuracy, 'binomial SE')}; "
                    f"{with_spreads('mean completion tokens difference', length, 'SE over prompts')} over {len(items)} "
                    f"seeds{caveat}; {seeds}")
        used = (f"{used_name(accuracy, 'binomial SE')} (accuracy) and the {used_name(length, 'SE over prompts')} "
                "(length)")
        return comparison(first["runs"], result, evidence, accuracy_difference=accuracy["mean"],
                          length_difference=length["mean"], used=used)
    verdicts = {c["verdict"] for c in items}
    agree = len(verdicts) == 1
    result = next(iter(verdicts)) if agree else INCONCLUSIVE
    evidence = f"{seeds}; the seeds {'agree' if agree else 'disagree'}"
    ratios = {key: mean_and_std([c[key] for c in items]) for key in AGREEMENT_RATIOS if all(key in c for c in items)}
    if ratios:
        shown = ", ".join(AGREEMENT_RATIOS[key].format(mean=mean, std=std) for key, (mean, std) in ratios.items())
        evidence = f"{shown}; {evidence}"
    return comparison(first["runs"], result, evidence, **{key: mean for key, (mean, _) in ratios.items()},
                      used="seed agreement")


def aggregate_claims(claims_by_seed: dict[int, list[dict]]) -> list[dict]:
    """check_claims' output for each seed ({seed: claims}) -> the same list judged across seeds; each comparison
    says in `used` what its verdict was judged against (SEED_STD, the sampling SE's name, or "seed agreement")."""
    first = next(iter(claims_by_seed.values()))
    return [{"id": claim["id"], "claim": claim["claim"],
             "comparisons": [aggregate_comparison({s: claims[i]["comparisons"][j]
                                                   for s, claims in claims_by_seed.items()})
                             for j in range(len(claim["comparisons"]))]}
            for i, claim in enumerate(first)]


# ---- the opt-in studies (compare.py --studies; mathrl/studies.py) -----------------------------------------
# `points` maps a study point's name (mathrl/studies.py) to a run as above (held_out, summary, metrics); `base` is
# the base model's run.

def kept_share(accuracy: float, full: float, base: float, n: int) -> tuple[float, float]:
    """(share of the full-data gain kept on less data, its SE): r = (accuracy - base) / (full - base).

    Delta method with the two gains' binomial SEs (`accuracy_difference` against the base), their covariance
    through the shared base ignored: SE(r) = sqrt(se_num^2 + r^2 se_den^2) / (full - base)."""
    num, se_num = accuracy_difference(accuracy, n, base, n)
    den, se_den = accuracy_difference(full, n, base, n)
    share = num / den
    return share, math.sqrt(se_num ** 2 + share ** 2 * se_den ** 2) / abs(den)


def data_efficiency(points: dict, base: dict, fraction: float) -> dict:
    """(6.2.2) GRPO keeps more of its 100 %-data gain than SFT when trained on `fraction` of the prompts.

    Each method's gain is its held-out accuracy minus the base model's; the kept share is the gain at `fraction`
    over the gain at 100 % (`kept_share`). SUPPORTED when GRPO's share exceeds SFT's by more than 2 SE,
    CONTRADICTED when it falls short by that, INCONCLUSIVE otherwise, and whenever a method gained nothing beyond
    2 SE on all the data (it has no gain to keep)."""
    b, n = base["held_out"]["accuracy"], base["held_out"]["num_examples"]
    tag = f"{fraction:.0%}".replace("%", "pct")
    parts, shares, nothing = [], {}, []
    for method in ("sft", "grpo"):
        full, part = points[f"{method}_100pct"]["held_out"], points[f"{method}_{tag}"]["held_out"]
        if not learned(points[f"{method}_100pct"], base):
            nothing.append(method)
            parts.append(f"{method} {acc(part)} at {fraction:.0%} vs {acc(full)} at 100% (no gain over the "
                         f"base's {b:.3f} beyond 2 SE)")
            continue
        shares[method] = kept_share(part["accuracy"], full["accuracy"], b, n)
        parts.append(f"{method} {acc(part)} at {fraction:.0%} vs {acc(full)} at 100%: kept "
                     f"{shares[method][0]:.2f} ± {shares[method][1]:.2f} of its gain over the base's {b:.3f}")
    evidence = "; ".join(parts)
    runs = f"grpo vs sft at {fraction:.0%} of the prompts"
    if nothing:
        return comparison(runs, INCONCLUSIVE, evidence + f"; {' and '.join(nothing)} had no gain to keep")
    d = shares["grpo"][0] - shares["sft"][0]
    se = math.hypot(shares["grpo"][1], shares["sft"][1])
    return comparison(runs, verdict(d, se), evidence + f"; difference of kept shares {d:+.2f} ± {se:.2f}",
                      difference=d, se=se, se_name="delta-method SE")


def accuracy_spread(runs: list[dict]) -> dict:
    """The spread of final held-out accuracy over a method's settings: max - min (its SE: that of the difference
    of the two accuracies, sqrt(se_max^2 + se_min^2)) and the sample std over the settings."""
    accuracies = [r["held_out"]["accuracy"] for r in runs]
    n = runs[0]["held_out"]["num_examples"]
    high, low = max(accuracies), min(accuracies)
    return {"range": high - low, "range_se": math.hypot(binomial_se(high, n), binomial_se(low, n)),
            "std": mean_and_std(accuracies)[1], "settings": len(runs), "accuracies": accuracies}


def sensitivity(points: dict, base: dict, lr_names: list[str]) -> list[dict]:
    """(5.1.2) GRPO is more sensitive than SFT: two comparisons.

    Learning rate: the range of GRPO's final held-out accuracy over the learning-rate factors (`lr_names`, at the
    configured kl_coeff) against SFT's over the same factors of its own learning rate; SUPPORTED when GRPO's range
    is larger by more than 2 SE (the SEs of the two ranges combined), CONTRADICTED when smaller. Equal numbers of
    settings on both sides, so the upward bias of a range of noisy values is the same for both. INCONCLUSIVE when
    no GRPO setting rose above the base model by 2 SE: a flat method is insensitive because it does not learn.
    KL coefficient: at each learning rate, GRPO with the configured kl_coeff vs with 0; SUPPORTED when the largest
    of these differences exceeds 2 SE, else INCONCLUSIVE (a KL that changes nothing is no evidence against)."""
    sft = accuracy_spread([points[f"sft_lr_{x}"] for x in lr_names])
    grpo = accuracy_spread([points[f"grpo_lr_{x}"] for x in lr_names])
    d, se = grpo["range"] - sft["range"], math.hypot(grpo["range_se"], sft["range_se"])

    def text(name, spread):
        return (f"{name} accuracies {', '.join(f'{a:.3f}' for a in spread['accuracies'])} (lr factors "
                f"{', '.join(lr_names)}): range {spread['range']:.3f} ± {spread['range_se']:.3f}, std "
                f"{spread['std']:.3f}")

    evidence = f"{text('sft', sft)}; {text('grpo', grpo)}"
    grpo_names = [f"grpo_lr_{x}{kl}" for kl in ("", "_kl0") for x in lr_names]
    if not any(learned(points[name], base) for name in grpo_names):
        lr = comparison("grpo vs sft: learning rate", INCONCLUSIVE,
                        evidence + "; no GRPO setting rose above the base model by 2 SE, so its small spread says "
                                   "nothing about sensitivity")
    else:
        lr = comparison("grpo vs sft: learning rate", verdict(d, se),
                        evidence + f"; difference of ranges {d:+.3f} ± {se:.3f}", difference=d, se=se)
    n = base["held_out"]["num_examples"]
    changes = []
    for x in lr_names:
        with_kl, without = points[f"grpo_lr_{x}"]["held_out"], points[f"grpo_lr_{x}_kl0"]["held_out"]
        changes.append((x, *accuracy_difference(with_kl["accuracy"], n, without["accuracy"], n)))
    x, change, change_se = max(changes, key=lambda c: abs(c[1]) / c[2] if c[2] else abs(c[1]))
    kl_evidence = ("grpo with the configured kl_coeff minus with kl_coeff 0, held-out accuracy: "
                   + ", ".join(f"lr {name} {c:+.3f} ± {s:.3f}" for name, c, s in changes))
    kl = comparison("grpo: KL coefficient", SUPPORTED if abs(change) > 2 * change_se else INCONCLUSIVE,
                    kl_evidence + f"; largest at lr {x}", difference=abs(change), se=change_se)
    return [lr, kl]


def last_mean(metrics: list[dict], key: str, count: int = 10) -> float | None:
    """The mean of a logged metric over a run's last `count` records that have it (None when none has)."""
    values = [r[key] for r in metrics if key in r][-count:]
    return statistics.fmean(values) if values else None


def kl_estimator(points: dict, paper: str) -> dict:
    """(3.3.4) GRPO after SFT with the paper's sequence-level KL (point `paper`) against the configured per-token
    estimator (point "sft_grpo"): held-out accuracy (the verdict: SUPPORTED when the paper's is higher by more than
    2 SE), with mean completion tokens and the comparable KL measure (kl_sequence, the squared sequence log-ratio
    whatever the estimator, mean of the last 10 logged steps) as evidence."""
    a, b = points[paper], points["sft_grpo"]
    d, se = result_difference(a["held_out"], b["held_out"])
    (len_a, se_a), (len_b, se_b) = mean_tokens_and_se(a["held_out"]), mean_tokens_and_se(b["held_out"])
    kls = [last_mean(r["metrics"], "kl_sequence") for r in (a, b)]
    kl_text = " vs ".join("-" if k is None else f"{k:.4f}" for k in kls)
    evidence = (f"held-out accuracy {acc(a['held_out'])} with the paper's KL vs {acc(b['held_out'])} per token; mean "
                f"completion tokens {len_a:.2f} ± {se_a:.2f} vs {len_b:.2f} ± {se_b:.2f}; KL as the squared "
                f"sequence log-ratio (kl_sequence, last 10 steps) {kl_text}")
    return comparison(f"{paper} vs sft_grpo", verdict(d, se), evidence, difference=d, se=se,
                      kl_sequence=kls[0], kl_sequence_reference=kls[1])


def extended_sft(points: dict, shorter: str, longest: str) -> dict:
    """(The two-stage recipe's first finding) extending SFT lifts accuracy: the SFT run with the full step budget
    (point `longest`) against one with a share of it (point `shorter`), from the same base. SUPPORTED when the
    longer run's held-out accuracy is higher by more than 2 SE, CONTRADICTED when lower by that; mean completion
    tokens (and the epochs each trained, when logged) as evidence."""
    a, b = points[longest], points[shorter]
    d, se = result_difference(a["held_out"], b["held_out"])
    (len_a, se_a), (len_b, se_b) = mean_tokens_and_se(a["held_out"]), mean_tokens_and_se(b["held_out"])
    epochs = [epochs_trained(r["metrics"]) for r in (a, b)]
    trained = f" ({epochs[0]:g} vs {epochs[1]:g} epochs)" if None not in epochs else ""
    evidence = (f"held-out accuracy {acc(a['held_out'])} vs {acc(b['held_out'])}{trained}; mean completion tokens "
                f"{len_a:.2f} ± {se_a:.2f} vs {len_b:.2f} ± {se_b:.2f}")
    return comparison(f"{longest} vs {shorter}", verdict(d, se), evidence, difference=d, se=se,
                      length_difference=len_a - len_b, length_se=math.hypot(se_a, se_b))


def epochs_trained(metrics: list[dict]) -> float | None:
    """The epochs an SFT run trained: the last "epoch" its metrics.jsonl logged (None: none logged, e.g. GRPO)."""
    epochs = [r["epoch"] for r in metrics if "epoch" in r]
    return epochs[-1] if epochs else None
