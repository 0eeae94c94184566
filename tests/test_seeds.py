"""compare.py --seeds N: the statistics over seeds (hand-computed), the verdict's choice of uncertainty, the
per-run rows over seeds, the twin-free held-out accuracy on hand-built files, the per-seed layout, and (slow) one
two-seed compare.py run end to end on the micro model with two runs at a time."""

import json
import math
from pathlib import Path

import pytest
import yaml
from test_compare import micro_config

from mathrl.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    SAMPLING_SE,
    SEED_STD,
    SUPPORTED,
    aggregate_claims,
    aggregate_comparison,
    mean_and_std,
    seed_aggregate,
)
from mathrl.data import load_jsonl, read_jsonl, write_jsonl
from mathrl.report import seeds_row, twin_free_accuracy, twin_free_set

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------
# Statistics over seeds, by hand
# ---------------------------------------------------------------------------------------------------------

def test_mean_and_std():
    # 0.80, 0.85, 0.90: mean 0.85; deviations -0.05, 0, 0.05 -> sum of squares 0.005 / (3 - 1) -> std 0.05
    mean, std = mean_and_std([0.80, 0.85, 0.90])
    assert mean == pytest.approx(0.85) and std == pytest.approx(0.05)
    assert mean_and_std([0.7]) == (0.7, 0.0)  # one seed: no spread


@pytest.mark.parametrize("differences, ses, mean, seed_std, sampling_se, used, expected", [
    # Seeds agree closely: std sqrt((0.04^2 + 0 + 0.04^2) / 2) = 0.04 < SE 0.05; 0.16 > 2 x 0.05: supported.
    ([0.12, 0.16, 0.20], [0.05, 0.05, 0.05], 0.16, 0.04, 0.05, SAMPLING_SE, SUPPORTED),
    # Seeds scatter: std sqrt((0.08^2 + 0 + 0.08^2) / 2) = 0.08 > SE 0.03. Against the SE alone 0.10 > 0.06 would
    # be supported; against the seed std 0.10 < 2 x 0.08: inconclusive.
    ([0.02, 0.10, 0.18], [0.03, 0.03, 0.03], 0.10, 0.08, 0.03, SEED_STD, INCONCLUSIVE),
    # Negative and clear: std sqrt((0.01^2 + 0.01^2) / 1) = 0.01414; SE rms sqrt((0.02^2 + 0.04^2) / 2) = 0.03162.
    ([-0.21, -0.19], [0.02, 0.04], -0.20, math.sqrt(2) * 0.01, math.sqrt(0.001), SAMPLING_SE, CONTRADICTED),
    # One seed: the seed std is 0, the verdict is the single-seed one.
    ([0.05], [0.03], 0.05, 0.0, 0.03, SAMPLING_SE, INCONCLUSIVE),
])
def test_seed_aggregate(differences, ses, mean, seed_std, sampling_se, used, expected):
    agg = seed_aggregate(differences, ses)
    assert agg["mean"] == pytest.approx(mean)
    assert agg["seed_std"] == pytest.approx(seed_std)
    assert agg["sampling_se"] == pytest.approx(sampling_se)
    assert agg["uncertainty"] == pytest.approx(max(seed_std, sampling_se))
    assert (agg["used"], agg["verdict"]) == (used, expected)


def comparison(verdict, **numbers):
    return {"runs": "a vs b", "verdict": verdict, "evidence": "...", **numbers}


def test_aggregate_comparison_says_what_it_judged_against():
    spread = {42: comparison(SUPPORTED, difference=0.02, se=0.03), 43: comparison(SUPPORTED, difference=0.18, se=0.03)}
    agg = aggregate_comparison(spread)
    # differences 0.02, 0.18: mean 0.10, std 0.08 * sqrt(2) = 0.113 > SE 0.03; 0.10 < 0.226: inconclusive
    assert agg["verdict"] == INCONCLUSIVE and agg["used"] == SEED_STD
    assert agg["difference"] == pytest.approx(0.10) and agg["seed_std"] == pytest.approx(0.08 * math.sqrt(2))
    assert "seed std 0.113, binomial SE 0.030" in agg["evidence"] and "seed 42: supported" in agg["evidence"]
    close = {42: comparison(SUPPORTED, difference=0.20, se=0.05), 43: comparison(SUPPORTED, difference=0.22, se=0.05)}
    agg = aggregate_comparison(close)
    assert (agg["verdict"], agg["used"]) == (SUPPORTED, "binomial SE")
    diversity = {s: {**c, "se_name": "SE over prompts"} for s, c in close.items()}
    assert aggregate_comparison(diversity)["used"] == "SE over prompts"


def test_aggregate_comparison_without_a_difference_needs_every_seed_to_agree():
    agree = aggregate_comparison({42: comparison(SUPPORTED), 43: comparison(SUPPORTED)})
    disagree = aggregate_comparison({42: comparison(SUPPORTED), 43: comparison(CONTRADICTED)})
    assert (agree["verdict"], agree["used"]) == (SUPPORTED, "seed agreement")
    assert disagree["verdict"] == INCONCLUSIVE and "the seeds disagree" in disagree["evidence"]
    cost = aggregate_comparison({42: comparison(CONTRADICTED, total_ratio=1.5, per_step_ratio=2.0),
                                 43: comparison(CONTRADICTED, total_ratio=2.5, per_step_ratio=3.0)})
    assert cost["total_ratio"] == pytest.approx(2.0) and cost["per_step_ratio"] == pytest.approx(2.5)
    assert cost["evidence"].startswith("GRPO / SFT training time 2.00x ± 0.71 (seed std), 2.50x per step; seed 42:")
    memory = aggregate_comparison({42: comparison(INCONCLUSIVE, memory_ratio=1.0),
                                   43: comparison(INCONCLUSIVE, memory_ratio=1.2)})
    assert memory["memory_ratio"] == pytest.approx(1.1) and "total_ratio" not in memory
    assert memory["evidence"].startswith("peak memory 1.10x ± 0.14 (seed std); seed 42: inconclusive")


@pytest.mark.parametrize("length_differences, learned, expected", [
    ([-1.0, -1.2], [True, True], SUPPORTED),     # shorter by 1.1 > 2 x max(std 0.141, SE 0.1)
    ([-1.0, -0.2], [True, True], INCONCLUSIVE),  # mean -0.6, std 0.566: within 2 x 0.566
    ([-1.0, -1.2], [True, False], INCONCLUSIVE),  # SFT did not learn with one seed: no accuracy to keep
    ([0.9, 1.1], [True, True], CONTRADICTED),    # longer
])
def test_two_stage_claim_over_seeds(length_differences, learned, expected):
    per_seed = {s: comparison(SUPPORTED, accuracy_difference=0.0, accuracy_se=0.02, length_difference=d,
                              length_se=0.1, accuracy_to_keep=k)
                for s, d, k in zip((42, 43), length_differences, learned)}
    assert aggregate_comparison(per_seed)["verdict"] == expected


def test_aggregate_claims_keeps_the_claims_order():
    claims = {s: [{"id": "a1", "claim": "x", "comparisons": [comparison(SUPPORTED)]},
                  {"id": "d", "claim": "y", "comparisons": [comparison(SUPPORTED, difference=d, se=0.01),
                                                            comparison(INCONCLUSIVE, difference=0.0, se=0.01)]}]
              for s, d in ((42, 0.3), (43, 0.32))}
    out = aggregate_claims(claims)
    assert [c["id"] for c in out] == ["a1", "d"] and len(out[1]["comparisons"]) == 2
    assert [x["verdict"] for x in out[1]["comparisons"]] == [SUPPORTED, INCONCLUSIVE]


def test_seeds_row():
    rows = [{"description": "SFT", "held_out_accuracy": a, "held_out_n": 100, "twin_free_accuracy": f,
             "twin_free_n": 20, "ood_accuracy": None, "ood_n": None, "per_operation": {"+": a, "-": 1.0},
             "mean_completion_tokens": 3.0 + a, "steps": 10, "train_seconds": t}
            for a, f, t in ((0.8, 0.5, 10.0), (0.9, 0.7, 14.0))]
    row = seeds_row(rows)
    assert row["held_out_mean"] == pytest.approx(0.85) and row["held_out_std"] == pytest.approx(0.05 * math.sqrt(2))
    assert row["held_out_se"] == pytest.approx(math.sqrt(0.85 * 0.15 / 100))  # of the mean, on the same 100
    assert row["twin_free_mean"] == pytest.approx(0.6) and row["twin_free_se"] == pytest.approx(math.sqrt(0.24 / 20))
    assert row["ood_mean"] is None and row["held_out_per_seed"] == [0.8, 0.9]
    assert row["per_operation"] == pytest.approx({"+": 0.85, "-": 1.0})
    assert (row["train_seconds"], row["train_seconds_std"]) == pytest.approx((12.0, 2.0 * math.sqrt(2)))


# ---------------------------------------------------------------------------------------------------------
# Twin-free held-out accuracy on hand-built files
# ---------------------------------------------------------------------------------------------------------

def test_twin_free_accuracy_on_hand_built_files(tmp_path):
    train = [{"prompt": "What is 3 + 5? Answer with an integer.", "answer": 8},
             {"prompt": "What is 9 - 4? Answer with an integer.", "answer": 5},
             {"prompt": "What is 7 * 6? Answer with an integer.", "answer": 42}]
    held_out = [
        ("What is 6 * 7? Answer with an integer.", 42, False),  # twin 7 * 6 trained: recall
        ("What is 5 + 3? Answer with an integer.", 8, True),    # twin 3 + 5 trained: recall
        ("What is 2 + 7? Answer with an integer.", 9, False),   # 7 + 2 not trained: twin-free
        ("What is 9 - 5? Answer with an integer.", 4, True),    # 9 - 5 = 4 <-> 9 - 4 = 5, trained: recall
        ("What is 4 + 4? Answer with an integer.", 8, False),   # no twin: twin-free
        ("What is 8 - 1? Answer with an integer.", 7, True),    # 8 - 7 not trained: twin-free
    ]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": p, "answer": a} for p, a, _ in held_out])
    twin_free = twin_free_set({"train_file": tmp_path / "train.jsonl", "eval_file": tmp_path / "eval.jsonl"})
    assert twin_free["trained_twin"] == [True, True, False, True, False, False]
    assert (twin_free["n"], twin_free["of"]) == (3, 6)
    # in the order of OPS, not of the file
    assert list(twin_free["per_operation"].items()) == [("+", [2, 3]), ("-", [1, 2]), ("*", [0, 1])]
    predictions = [{"prompt": p, "correct": c} for p, _, c in held_out]
    # correct on 5 + 3, 9 - 5 (recall) and 8 - 1; of the twin-free 2 + 7, 4 + 4, 8 - 1 only 8 - 1: 1 / 3
    assert twin_free_accuracy(predictions, twin_free["examples"], twin_free["trained_twin"]) == pytest.approx(1 / 3)


def test_twin_free_accuracy_refuses_predictions_of_another_file(tmp_path):
    from mathrl.errors import UserError

    examples = [{"prompt": "What is 1 + 2?", "answer": "3"}]
    with pytest.raises(UserError, match="do not match the eval file"):
        twin_free_accuracy([{"prompt": "What is 2 + 1?", "correct": True}], examples, [False])


# ---------------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------------

def test_seed_experiments_layout():
    from compare import seed_experiments
    from mathrl.config import resolve_config

    config = resolve_config("compare", str(REPO_ROOT / "configs/tiny.yaml"), ["--output_dir", "out", "--seed", "7"])
    (single,) = seed_experiments(config, str(REPO_ROOT / "configs/tiny.yaml"), 1)
    assert (single.seed, single.out, single.common, single.prefix) == (7, Path("out"), ["--seed", "7"], "")
    seeds = seed_experiments(config, str(REPO_ROOT / "configs/tiny.yaml"), 3)
    assert [(e.seed, e.out, e.common) for e in seeds] == [
        (s, Path("out") / f"seed-{s}", ["--seed", str(s)]) for s in (7, 8, 9)]


def test_layouts_never_share_an_output_dir(tmp_path):
    from compare import check_layout
    from mathrl.errors import UserError

    (tmp_path / "sft").mkdir()
    check_layout(tmp_path, 1, ["base", "sft"])
    with pytest.raises(UserError, match="holds a single-seed experiment \\(sft\\)"):
        check_layout(tmp_path, 2, ["base", "sft"])
    (tmp_path / "sft").rmdir()
    (tmp_path / "seed-42").mkdir()
    check_layout(tmp_path, 3, ["base", "sft"])
    with pytest.raises(UserError, match="holds a multi-seed experiment \\(seed-42\\)"):
        check_layout(tmp_path, 1, ["base", "sft"])


# ---------------------------------------------------------------------------------------------------------
# Two seeds end to end, two runs at a time
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow  # three compare.py calls, about 2 CPU-minutes (4 on a busy 2-core machine)
def test_two_seeds_end_to_end(tmp_path, script_runner):
    """--seeds 2 on the micro model (sft 4 steps, grpo 2, a 1-second head-to-head, no sampling), two runs at a
    time: each seed-<s>/ is a whole experiment trained with its seed; the top REPORT.md aggregates them. A rerun
    keeps everything; a seed's lost run is redone in its own seed directory only."""
    config = micro_config(tmp_path)
    config["compare"].update({"head_to_head_seconds": 1.0, "diversity_samples": 0, "parallel_runs": 2})
    write_jsonl(tmp_path / "train.jsonl", load_jsonl(REPO_ROOT / "data/tiny_train.jsonl")[:32])
    write_jsonl(tmp_path / "eval.jsonl", load_jsonl(REPO_ROOT / "data/tiny_eval.jsonl")[:8])
    write_jsonl(tmp_path / "ood.jsonl", load_jsonl(REPO_ROOT / "data/tiny_ood.jsonl")[:4])
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    command = ("compare.py", "--config", tmp_path / "micro.yaml", "--output_dir", out, "--seeds", "2")
    returncode, stdout, stderr = script_runner(*command, timeout=600)
    assert returncode == 0, stdout + stderr
    assert "running: seed-42/sft, seed-42/grpo" in stdout  # two at a time
    for seed in (42, 43):
        for name in ("sft", "grpo", "sft_grpo", "h2h_sft", "h2h_grpo"):
            saved = yaml.safe_load((out / f"seed-{seed}" / name / "final" / "config.yaml").read_text())
            assert saved["seed"] == seed, (seed, name)
        assert (out / f"seed-{seed}" / "REPORT.md").is_file()
        assert json.loads((out / f"seed-{seed}" / "results.json").read_text())["header"]["seed"] == seed
    per_seed = {s: json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (42, 43)}
    results = json.loads((out / "results.json").read_text())
    sft = results["runs"]["sft"]
    accuracies = [per_seed[s]["runs"]["sft"]["held_out_accuracy"] for s in (42, 43)]
    assert sft["held_out_per_seed"] == accuracies and sft["held_out_mean"] == pytest.approx(sum(accuracies) / 2)
    assert results["header"]["seeds"] == [42, 43] and results["header"]["parallel_runs"] == 2
    report = (out / "REPORT.md").read_text()
    assert "results over seeds" in report and "[43](seed-43/REPORT.md)" in report and "twin-free" in report
    assert all(x["used"] for c in results["claims"] for x in c["comparisons"])
    assert "judged against the" in report or "judged by seed agreement" in report

    returncode, stdout, stderr = script_runner(*command, timeout=600)
    assert returncode == 0, stdout + stderr
    assert stdout.count("to run: -") == 2 and "training" not in stdout
    (out / "seed-43" / "grpo" / "final").rename(out / "seed-43" / "grpo" / ".final.tmp-1")
    returncode, stdout, stderr = script_runner(*command, timeout=600)
    assert returncode == 0, stdout + stderr
    assert "training seed-43/grpo" in stdout and stdout.count("training") == 1
    assert list(out.glob("seed-*/grpo.old-*")) == list(out.glob("seed-43/grpo.old-*")) != []


@pytest.mark.parametrize("flags, fragment", [
    (["--seeds", "0"], "--seeds 0, parallel_runs 2: each must be at least 1"),
    (["--parallel_runs", "0"], "--seeds 1, parallel_runs 0: each must be at least 1"),
])
def test_seeds_and_parallel_runs_below_one_are_refused(flags, fragment, tmp_path, in_process_runner):
    from conftest import assert_user_error

    code, _, stderr = in_process_runner("compare.py", "--config", "configs/tiny.yaml", "--output_dir", tmp_path / "o",
                                        *flags)
    assert_user_error(code, stderr, fragment)
    assert not (tmp_path / "o").exists()


def test_an_evaluation_is_the_same_in_any_call(tmp_path, micro_model_dir, micro_overrides, isolated_in_process_runner):
    """compare.py may split a seed's evaluations among parallel evaluate.py calls: a checkpoint's greedy and sampled
    completions must not depend on what the call evaluated before it."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(micro_model_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in weights.items()},
              str(other / "model.safetensors"), metadata={"format": "pt"})
    write_jsonl(tmp_path / "eval.jsonl", load_jsonl(REPO_ROOT / "data/tiny_eval.jsonl")[:6])

    def evaluate(output: str, *ckpts) -> list[dict]:
        code, _, stderr = isolated_in_process_runner(
            "evaluate.py", "--config", "configs/tiny.yaml", *micro_overrides,
            *[a for c in ckpts for a in ("--ckpt", c)],
            "--eval_file", tmp_path / "eval.jsonl", "--samples", "3", "--temperature", "1.0",
            "--output", tmp_path / output)
        assert code == 0, stderr
        return read_jsonl((tmp_path / output).with_suffix(".predictions.jsonl"))

    together = [p for p in evaluate("both.json", micro_model_dir, other) if p["ckpt"] == str(other)]
    alone = evaluate("alone.json", other)
    assert together == alone and len(alone) == 6
    assert len({s for p in alone for s in p["samples"]}) > 1  # sampled, not one repeated string
