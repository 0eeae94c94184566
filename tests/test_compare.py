"""compare.py end to end on the micro model, its reuse / --force / interrupted-run logic, and the claim checks.

One compare.py run (module fixture) trains every run of the experiment on a micro config written to tmp_path
(sft 4 steps, grpo 2 steps, 2-second head-to-head, 2 samples per prompt); the tests then read what it wrote,
re-run it (everything kept), and force or interrupt single runs. The claim checks of mathrl/claims.py are also
tested on hand-made numbers, where each verdict is known. The last test adds the data_efficiency study (--studies).
"""

import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mathrl.data import read_jsonl
from mathrl.claims import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, accuracy_difference, check_claims,
                           convergence_speed, notes, two_stage, two_stage_comparisons, verdict)
from mathrl.data import has_trained_twin, load_jsonl, write_jsonl
from mathrl.diversity import diversity_metrics
from test_resume import signal_at_step

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = ("base", "sft", "warm_start", "grpo", "sft_grpo", "h2h_sft", "h2h_grpo")
TRAINED = ("sft", "grpo", "sft_grpo", "h2h_sft", "h2h_grpo")
PLOTS = ("sft_curves.png", "grpo_curves.png", "accuracy_vs_time.png", "completion_length.png")
VERDICTS = {SUPPORTED, CONTRADICTED, INCONCLUSIVE}
H2H_SECONDS = 2.0
TIMEOUT = 600  # seconds per compare.py call; a loaded 2-core machine can be several times slower than usual


def micro_config(root: Path) -> dict:
    return {
        "model_name": "builtin:tiny", "prompt_format": "plain",
        "tiny_hidden_size": 32, "tiny_num_layers": 2, "tiny_num_heads": 2, "tiny_intermediate_size": 64,
        "train_file": str(root / "train.jsonl"), "eval_file": str(root / "eval.jsonl"),
        "ood_eval_file": str(root / "ood.jsonl"),
        "max_prompt_length": 64, "max_completion_length": 4, "batch_size": 8, "warmup_steps": 0, "eval_batch_size": 64,
        "sft": {"learning_rate": 3.0e-3, "max_steps": 4, "log_every": 1, "eval_every": 2},
        "grpo": {"batch_size": 2, "group_size": 4, "learning_rate": 1.0e-3, "num_train_steps": 2, "eval_every": 1,
                 "save_every": 0},
        "compare": {"warm_start_steps": 2, "head_to_head_seconds": H2H_SECONDS, "diversity_samples": 2,
                    "num_report_samples": 2},
    }


def compare(runner, root: Path, *extra: str):
    started = time.perf_counter()
    returncode, stdout, stderr = runner("compare.py", "--config", root / "micro.yaml", "--output_dir", root / "out",
                                        *extra, timeout=TIMEOUT)
    return returncode, stdout, stderr, time.perf_counter() - started


def snapshot(directory: Path) -> dict:
    """{relative path: mtime_ns} of every file and folder under directory (itself included)."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in [directory, *directory.rglob("*")]}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, script_runner):
    root = tmp_path_factory.mktemp("compare")
    write_jsonl(root / "train.jsonl", load_jsonl(REPO_ROOT / "data/tiny_train.jsonl")[:32])
    write_jsonl(root / "eval.jsonl", load_jsonl(REPO_ROOT / "data/tiny_eval.jsonl")[:8])
    write_jsonl(root / "ood.jsonl", load_jsonl(REPO_ROOT / "data/tiny_ood.jsonl")[:4])
    (root / "micro.yaml").write_text(yaml.safe_dump(micro_config(root)))
    returncode, stdout, stderr, seconds = compare(script_runner, root)
    assert returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    return {"root": root, "out": root / "out", "stdout": stdout, "seconds": seconds, "runner": script_runner}


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def summary(out: Path, name: str) -> dict:
    return json.loads((out / name / "final" / "summary.json").read_text())


def evaluation(out: Path, name: str) -> tuple[dict, list[dict]]:
    """compare.py's stored evaluate.py results of a final/ checkpoint and its predictions."""
    path = out / name / "eval-final.json"
    predictions = [json.loads(line) for line in path.with_suffix(".predictions.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), predictions


# ---------------------------------------------------------------------------------------------------------
# What one run writes
# ---------------------------------------------------------------------------------------------------------

def test_report_files(experiment):
    out = experiment["out"]
    assert f"report: {out / 'REPORT.md'}" in experiment["stdout"]
    report = (out / "REPORT.md").read_text()
    for fragment in ("Not a TinyLlama result", "builtin:tiny", "hidden 32", "train 32", "held_out 8", "ood 4",
                     "seed: 42", "machine:", "date:", "total wall time", "GRPO / SFT training time",
                     "runs at a time: 1", "twin-free held-out acc ± SE (n)¹", "¹ Twin-free held-out: the "):
        assert fragment in report, fragment
    # One seed (the default): today's layout, no per-seed directories and no verdicts over seeds.
    assert not list(out.glob("seed-*")) and "over seeds" not in report
    for name in RUNS:
        assert f"| {name} | " in report, name
    claim_lines = [line for line in report.splitlines() if line.startswith("- **(")]
    ids = ("a1", "a2", "a3", "b", "b2", "c", "d", "e", "f")
    assert [line.split(")")[0] for line in claim_lines] == [f"- **({i}" for i in ids]
    for line in claim_lines:
        assert any(f"**{v}**" in line for v in VERDICTS), line
    # The from-scratch GRPO run gets no reward on the micro model: the report says so.
    assert "GRPO from the base model did not rise above the untrained model" in report
    for plot in PLOTS:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"]({plot})" in report
    samples = (out / "samples.md").read_text()
    assert all(f"## {name}:" in samples for name in RUNS)
    assert "greedy:" in samples and "sampled:" in samples


def test_results_json_matches_each_run(experiment):
    out = experiment["out"]
    data = results(out)
    assert set(data) == {"header", "runs", "diversity", "claims", "notes", "plots"}
    assert list(data["runs"]) == list(RUNS)
    assert data["header"]["data"]["train"]["examples"] == 32 and data["header"]["seed"] == 42
    for name in TRAINED:
        row, s = data["runs"][name], summary(out, name)
        assert (row["steps"], row["train_seconds"], row["wall_time_s"], row["tokens_seen"], row["peak_memory_mb"],
                row["stopped_by_time"]) == (s["step"], s["train_seconds"], s["wall_time_s"], s["tokens_seen"],
                                            s["peak_memory_mb"], s["stopped_by_time"])
        assert row["seconds_per_step"] == pytest.approx(s["train_seconds"] / s["step"])
        assert 0 < s["train_seconds"] <= s["wall_time_s"]
        stored, predictions = evaluation(out, name)
        held_out, ood = stored["results"]
        assert held_out["ckpt"] == str(out / name / "final") and ood["eval_file"].endswith("ood.jsonl")
        own = [p for p in predictions if p["eval_file"] == held_out["eval_file"]]
        assert len(own) == held_out["num_examples"] == row["held_out_n"] == 8
        assert row["held_out_accuracy"] == held_out["accuracy"] == sum(p["correct"] for p in own) / len(own)
        assert row["mean_completion_tokens"] == pytest.approx(sum(p["num_tokens"] for p in own) / len(own))
        assert row["held_out_se"] == pytest.approx(math.sqrt(row["held_out_accuracy"] *
                                                             (1 - row["held_out_accuracy"]) / 8))
        assert row["ood_accuracy"] == ood["accuracy"] and row["ood_n"] == 4
        trained_twin = has_trained_twin(load_jsonl(held_out["eval_file"]),
                                        load_jsonl(experiment["root"] / "train.jsonl"))
        free = [p["correct"] for p, t in zip(own, trained_twin) if not t]
        assert row["twin_free_n"] == len(free) == data["header"]["twin_free"]["n"]
        assert row["twin_free_accuracy"] == (sum(free) / len(free) if free else None)
        assert row["per_operation"] == held_out["per_operation"]
        # evaluate.py and the trainer's own last evaluation decode the same checkpoint greedily: same answers.
        assert s["final_eval_accuracy"] == held_out["accuracy"]
        # Diversity: recomputed from the stored samples.
        samples = [p["samples"] for p in own]
        assert all(len(x) == 2 for x in samples)
        expected = diversity_metrics(samples, own)
        assert {k: data["diversity"][name]["held_out"][k] for k in expected} == pytest.approx(expected)
    assert data["runs"]["base"]["steps"] is None and data["runs"]["base"]["ckpt"] == "builtin:tiny"
    assert data["runs"]["warm_start"]["steps"] == 2


def test_claims_are_computed_from_the_numbers(experiment):
    out = experiment["out"]
    claims = {c["id"]: c for c in results(out)["claims"]}
    assert list(claims) == ["a1", "a2", "a3", "b", "b2", "c", "d", "e", "f"]
    for claim in claims.values():
        assert claim["comparisons"] and all(x["verdict"] in VERDICTS and x["evidence"] for x in claim["comparisons"])
    cost = claims["b"]["comparisons"][0]
    sft, grpo = summary(out, "sft"), summary(out, "grpo")
    assert cost["total_ratio"] == pytest.approx(grpo["train_seconds"] / sft["train_seconds"])
    assert cost["verdict"] == (SUPPORTED if 3 <= cost["total_ratio"] <= 4 else CONTRADICTED)
    # Every accuracy of the micro runs is within noise of every other: nothing may be called a win.
    accuracies = {r["held_out_accuracy"] for r in results(out)["runs"].values()}
    if accuracies == {0.0}:
        assert claims["f"]["comparisons"][0]["verdict"] == INCONCLUSIVE
        assert claims["a1"]["comparisons"][0]["verdict"] == INCONCLUSIVE


def test_reward_variance_against_hand_computed_stds():
    from mathrl.claims import reward_variance

    def grpo_run(rewards):
        return {"grpo": {"metrics": [{"step": i + 1, "reward_mean": r} for i, r in enumerate(rewards)]}}

    # First third 0, 1, 0, 1 (std sqrt(1/3) = 0.577, SE 0.577 / sqrt(6) = 0.236); middle ignored; last third constant
    # 0.5 (std 0): early minus late 0.577 > 2 x 0.236 = 0.471.
    noisy_then_flat = [0.0, 1.0, 0.0, 1.0] + [0.3] * 4 + [0.5] * 4
    result = reward_variance(grpo_run(noisy_then_flat), "grpo")
    assert result["verdict"] == SUPPORTED
    assert result["difference"] == pytest.approx(math.sqrt(1 / 3))
    assert result["se"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(6))
    assert reward_variance(grpo_run(noisy_then_flat[::-1]), "grpo")["verdict"] == CONTRADICTED
    # The same spread early and late: within noise.
    assert reward_variance(grpo_run([0.2, 0.4] * 6), "grpo")["verdict"] == INCONCLUSIVE
    # Too few steps for thirds of at least 3.
    assert reward_variance(grpo_run([0.1] * 8), "grpo")["verdict"] == INCONCLUSIVE


@pytest.mark.parametrize("grpo_mb, expected", [(1386, SUPPORTED), (716, CONTRADICTED), (900, INCONCLUSIVE)])
def test_memory_claim_against_sft_peak(grpo_mb, expected):
    from mathrl.claims import memory

    runs = {"sft": {"summary": {"peak_memory_mb": 858.0, "device": "cpu"}},
            "grpo": {"summary": {"peak_memory_mb": grpo_mb, "device": "cpu"}}}
    result = memory(runs, "grpo")
    assert result["verdict"] == expected  # 900 / 858 = 1.05: within the 10 % margin
    assert result["memory_ratio"] == pytest.approx(grpo_mb / 858.0)
    assert "process peak RSS on CPU" in result["evidence"]


def test_warm_start_and_time_budget(experiment):
    """The head-to-head runs start from sft/step_2 and stop on max_train_seconds (summary: stopped_by_time)."""
    out = experiment["out"]
    assert (out / "sft" / "step_2" / "model.safetensors").is_file()
    sft = summary(out, "sft")
    assert sft["step"] == 4 and sft["stopped_by_time"] is False
    for name in ("h2h_sft", "h2h_grpo"):
        s = summary(out, name)
        assert s["init_from"] == str(out / "sft" / "step_2")
        assert s["stopped_by_time"] is True
        assert H2H_SECONDS <= s["train_seconds"] < s["wall_time_s"]  # evaluation time is not training time
        assert 1 <= s["step"] < 1_000_000  # stopped long before its step cap
        saved = yaml.safe_load((out / name / "final" / "config.yaml").read_text())
        assert saved["max_train_seconds"] == H2H_SECONDS
        metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in metrics if "eval_accuracy" in r][-1]
        assert last["step"] == s["step"] and last["elapsed_s"] >= H2H_SECONDS


# ---------------------------------------------------------------------------------------------------------
# Reuse, --force, interrupted runs, changed settings (in this order: each builds on the state left before)
# ---------------------------------------------------------------------------------------------------------

def test_second_run_reuses_everything(experiment):
    out = experiment["out"]
    before = {name: snapshot(out / name) for name in ("base", *TRAINED)}
    returncode, stdout, stderr, seconds = compare(experiment["runner"], experiment["root"])
    assert returncode == 0, stdout + stderr
    assert "to run: -" in stdout and "every evaluation is up to date" in stdout
    assert "training" not in stdout
    assert {name: snapshot(out / name) for name in before} == before  # nothing retrained, re-evaluated or moved
    assert not list(out.glob("*.old-*"))
    assert seconds < experiment["seconds"]


def test_changed_settings_are_refused(experiment):
    out = experiment["out"]
    before = snapshot(out)
    returncode, stdout, stderr, _ = compare(experiment["runner"], experiment["root"], "--head_to_head_seconds", "3")
    assert returncode == 2 and "Traceback" not in stderr
    assert "h2h_sft: max_train_seconds" in stderr and "--force h2h_sft h2h_grpo" in stderr
    assert snapshot(out) == before


def test_a_run_saved_before_a_key_existed_is_kept_at_that_keys_default(experiment):
    # sft_target was added after runs like these were made: their saved config has no such key.
    out = experiment["out"]
    saved = out / "sft" / "final" / "config.yaml"
    original = saved.read_text()
    assert "sft_target: answer" in original
    saved.write_text("".join(line for line in original.splitlines(keepends=True) if not line.startswith("sft_target")))
    try:
        returncode, stdout, stderr, _ = compare(experiment["runner"], experiment["root"])
        assert returncode == 0 and "to run: -" in stdout, stdout + stderr  # the default is what the run did
        returncode, _, stderr, _ = compare(experiment["runner"], experiment["root"], "--sft_target", "solution")
        assert returncode == 2 and "sft: " in stderr and "sft_target" in stderr  # any other value is a change
    finally:
        saved.write_text(original)


def test_force_and_interrupted_runs_are_moved_aside_and_redone(experiment):
    out = experiment["out"]
    old_grpo = summary(out, "grpo")
    kept = {name: snapshot(out / name) for name in ("sft", "h2h_sft", "h2h_grpo")}
    # sft_grpo looks interrupted: its directory exists but final/ never appeared.
    (out / "sft_grpo" / "final").rename(out / "sft_grpo" / ".final.tmp-1")
    returncode, stdout, stderr, _ = compare(experiment["runner"], experiment["root"], "--force", "grpo")
    assert returncode == 0, stdout + stderr
    assert "to run: grpo, sft_grpo" in stdout
    for name in ("grpo", "sft_grpo"):
        (old,) = out.glob(f"{name}.old-*")  # moved, not deleted
        assert (old / "metrics.jsonl").is_file()
        assert (out / name / "final" / "summary.json").is_file()  # retrained
    (old_grpo_dir,) = out.glob("grpo.old-*")
    assert json.loads((old_grpo_dir / "final" / "summary.json").read_text()) == old_grpo
    assert {name: snapshot(out / name) for name in kept} == kept
    assert results(out)["runs"]["grpo"]["wall_time_s"] == summary(out, "grpo")["wall_time_s"]


def test_run_stopped_after_a_save_is_resumed_not_redone(experiment, monkeypatch, in_process_runner):
    """sft_grpo stopped by SIGTERM after step 1 (its step_1/ saved): compare.py continues it with --resume_from
    auto, and the result is the run it would have finished, weight for weight."""
    out, root = experiment["out"], experiment["root"]
    done = (out / "sft_grpo").rename(root / "sft_grpo_done")
    moved_before = set(out.glob("sft_grpo.old-*"))  # by the test above
    with monkeypatch.context() as patch:
        signal_at_step(patch, 1)
        code, _, stderr = in_process_runner("train_grpo.py", "--config", root / "micro.yaml", "--output_dir",
                                            out / "sft_grpo", "--init_from", out / "sft" / "final")
    assert code == 143 and (out / "sft_grpo" / "step_1").is_dir(), stderr[-2000:]
    returncode, stdout, stderr, _ = compare(experiment["runner"], root)
    assert returncode == 0, stdout + stderr
    assert "to run: -" in stdout and "to resume: sft_grpo" in stdout and "resuming sft_grpo" in stdout
    assert set(out.glob("sft_grpo.old-*")) == moved_before  # resumed, not moved aside
    steps = [r["step"] for r in read_jsonl(out / "sft_grpo" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2]
    resumed = load_file(str(out / "sft_grpo" / "final" / "model.safetensors"))
    finished = load_file(str(done / "final" / "model.safetensors"))
    assert [k for k in finished if not torch.equal(resumed[k], finished[k])] == []


# ---------------------------------------------------------------------------------------------------------
# Claim checks on hand-made numbers
# ---------------------------------------------------------------------------------------------------------

def test_accuracy_difference_and_verdict():
    # 0.5 vs 0.3 of 100 each: pooled p = 0.4, SE = sqrt(0.4 * 0.6 * 0.02) = 0.0693; 0.2 > 2 SE.
    d, se = accuracy_difference(0.5, 100, 0.3, 100)
    assert d == pytest.approx(0.2) and se == pytest.approx(math.sqrt(0.0048))
    assert verdict(d, se) == SUPPORTED and verdict(-d, se) == CONTRADICTED
    assert verdict(*accuracy_difference(0.35, 100, 0.3, 100)) == INCONCLUSIVE  # 0.05 < 2 x 0.066
    assert verdict(*accuracy_difference(0.0, 20, 0.0, 20)) == INCONCLUSIVE  # no difference, no spread


def fake_run(accuracy: float, n: int = 100, curve=(), tokens=None, diversity=None) -> dict:
    tokens = tokens or [3] * n
    held_out = {"accuracy": accuracy, "num_examples": n, "per_operation": {}, "mean_completion_tokens": 3.0,
                "predictions": [{"num_tokens": t} for t in tokens], "diversity": diversity}
    metrics = [{"step": step, "elapsed_s": seconds, "eval_accuracy": acc} for step, seconds, acc in curve]
    return {"held_out": held_out, "ood": None, "metrics": metrics, "summary": {}}


@pytest.mark.parametrize("sft_curve, grpo_curve, expected", [
    # SFT reaches 0.9 x 0.8 = 0.72 after 10 s; GRPO is still below it at 40 s.
    ([(10, 10.0, 0.8)], [(5, 20.0, 0.1), (10, 40.0, 0.3)], SUPPORTED),
    # The other way round.
    ([(5, 20.0, 0.1), (10, 40.0, 0.3)], [(10, 10.0, 0.8)], CONTRADICTED),
    # SFT reaches it at 30 s, GRPO at 40 s but was last seen below it at 20 s: it may have crossed first.
    ([(10, 30.0, 0.8)], [(5, 20.0, 0.1), (10, 40.0, 0.8)], INCONCLUSIVE),
    # GRPO never reaches it but stopped after 5 s: too early to say SFT (at 30 s) is faster.
    ([(10, 30.0, 0.8)], [(5, 5.0, 0.1)], INCONCLUSIVE),
    # Nobody learned anything: the untrained model is at 0.05 as well.
    ([(10, 30.0, 0.05)], [(5, 5.0, 0.06)], INCONCLUSIVE),
])
def test_convergence_speed(sft_curve, grpo_curve, expected):
    runs = {"base": fake_run(0.05), "sft": fake_run(0.8, curve=sft_curve), "grpo": fake_run(0.3, curve=grpo_curve)}
    assert convergence_speed(runs, 0.9)["verdict"] == expected


def test_note_on_grpo_from_the_base_says_why_it_did_not_learn():
    def runs_with(zero_std_fractions):
        grpo = fake_run(0.06)
        grpo["metrics"] = [{"step": i, "reward_mean": 0.25, "zero_std_group_fraction": z}
                           for i, z in enumerate(zero_std_fractions)]
        return {"base": fake_run(0.05), "grpo": grpo}

    (no_gradient,) = notes(runs_with([0.9, 0.8]))
    assert "mean reward was 0.250" in no_gradient and "85% of its groups had the same reward" in no_gradient
    assert "no gradient" in no_gradient
    (few_right,) = notes(runs_with([0.4, 0.3]))  # a base that is sometimes right: 65% of groups mixed
    assert "65% of its groups had mixed rewards" in few_right and "no gradient" not in few_right
    # A GRPO run that did learn gets no note.
    learning = runs_with([0.4])
    learning["grpo"]["held_out"]["accuracy"] = 0.5
    assert notes(learning) == []


@pytest.mark.parametrize("after_accuracy, after_tokens, expected", [
    (0.80, [2] * 100, SUPPORTED),         # same accuracy, one token shorter
    (0.60, [2] * 100, CONTRADICTED),      # shorter, but 0.2 less accurate (> 2 SE)
    (0.80, [4] * 100, CONTRADICTED),      # longer
    (0.80, [3] * 99 + [2], INCONCLUSIVE),  # 0.01 tokens shorter, within noise
])
def test_two_stage(after_accuracy, after_tokens, expected):
    runs = {"base": fake_run(0.05), "sft": fake_run(0.8, tokens=[3] * 100),
            "sft_grpo": fake_run(after_accuracy, tokens=after_tokens)}
    assert two_stage(runs)["verdict"] == expected
    # The same numbers from an SFT run that learned nothing: there was no accuracy to keep.
    runs["base"] = fake_run(0.8)
    assert two_stage(runs)["verdict"] == (CONTRADICTED if expected == CONTRADICTED else INCONCLUSIVE)


def test_two_stage_from_a_verbose_base_with_and_without_the_length_term():
    # The SmolLM2 shape: a base that is sometimes right with 40-token answers; GRPO with the length term answers in
    # 12 tokens at 0.26 (0.06 more, within 2 SE), GRPO without it stays verbose.
    runs = {"base": fake_run(0.20, tokens=[40] * 100), "sft": fake_run(0.48), "sft_grpo": fake_run(0.44),
            "grpo": fake_run(0.18, tokens=[40] * 99 + [41]), "grpo_length": fake_run(0.26, tokens=[12] * 100)}
    comparisons = two_stage_comparisons(runs)
    assert [c["runs"] for c in comparisons] == ["sft_grpo vs sft", "grpo_length vs base", "grpo vs base"]
    assert [c["verdict"] for c in comparisons] == [INCONCLUSIVE, SUPPORTED, INCONCLUSIVE]
    assert comparisons[1]["length_difference"] == pytest.approx(-28.0)
    # A base that is never right has no accuracy to keep: shortening alone does not support the claim.
    runs["base"] = fake_run(0.0, tokens=[40] * 100)
    runs["grpo_length"] = fake_run(0.0, tokens=[12] * 100)
    assert two_stage(runs, "grpo_length", "base")["verdict"] == INCONCLUSIVE
    # Without a grpo_length run (the tiny default) the claim has its one comparison.
    del runs["grpo_length"]
    assert len(two_stage_comparisons(runs)) == 1


def test_two_stage_as_the_recipe_writes_it_with_and_without_the_length_term():
    # The tiny_reasoning shape: SFT on worked answers of 90 tokens at 0.60; GRPO after it with the length term answers
    # in 40 tokens at 0.58 (within 2 SE: kept), the same GRPO without it in 88 tokens (no change beyond noise).
    runs = {"base": fake_run(0.02, tokens=[5] * 100), "sft": fake_run(0.60, tokens=[90] * 100),
            "sft_grpo": fake_run(0.62, tokens=[88] * 50 + [89] * 50),
            "sft_grpo_length": fake_run(0.58, tokens=[40] * 100)}
    comparisons = two_stage_comparisons(runs)
    assert [c["runs"] for c in comparisons] == ["sft_grpo_length vs sft", "sft_grpo vs sft"]
    assert [c["verdict"] for c in comparisons] == [SUPPORTED, SUPPORTED]  # 88.5 vs 90 tokens: shorter beyond 2 SE
    assert comparisons[0]["length_difference"] == pytest.approx(-50.0)
    runs["sft_grpo"] = fake_run(0.62, tokens=[90] * 99 + [91])
    assert [c["verdict"] for c in two_stage_comparisons(runs)] == [SUPPORTED, INCONCLUSIVE]
    # Shorter but less accurate beyond 2 SE: the recipe's claim fails.
    runs["sft_grpo_length"] = fake_run(0.40, tokens=[40] * 100)
    assert two_stage_comparisons(runs)[0]["verdict"] == CONTRADICTED


def test_check_claims_needs_no_hard_coded_answer(experiment):
    """Flipping the head-to-head accuracies flips claim (f): the verdict follows the numbers."""
    from mathrl.report import load_run
    from compare import eval_targets, load_evaluation

    out = experiment["out"]
    config = yaml.safe_load((experiment["root"] / "micro.yaml").read_text())
    config = {**config, **config.pop("compare")}
    config["warm_start_steps"], config["convergence_fraction"] = 2, 0.9
    runs = {t.name: load_run(t, load_evaluation(t.eval_path), config) for t in eval_targets(config, out)}
    for winner, loser, expected in (("h2h_sft", "h2h_grpo", SUPPORTED), ("h2h_grpo", "h2h_sft", CONTRADICTED)):
        runs[winner]["held_out"] = {**runs[winner]["held_out"], "accuracy": 1.0}
        runs[loser]["held_out"] = {**runs[loser]["held_out"], "accuracy": 0.0}
        (f,) = [c for c in check_claims(runs, 0.9) if c["id"] == "f"]
        assert f["comparisons"][0]["verdict"] == expected


def test_length_runs_are_planned_only_when_their_weights_are_set():
    """The tiny experiment's runs are unchanged; configs/smollm2.yaml's weight adds GRPO from the base model with
    the length term, configs/tiny_reasoning.yaml's GRPO from sft/final with it, each passed to train_grpo.py as
    length_reward_weight."""
    from compare import plan_runs
    from mathrl.config import resolve_config

    default = resolve_config("compare", str(REPO_ROOT / "configs/tiny.yaml"))
    assert default["grpo_length_reward_weight"] == 0.0
    assert [r.name for r in plan_runs(default, Path("out"))] == [n for n in RUNS if n != "warm_start"]
    runs = {r.name: r for r in plan_runs({**default, "grpo_length_reward_weight": 0.5}, Path("out"))}
    assert list(runs) == [*(n for n in RUNS if n != "warm_start"), "grpo_length"]
    length = runs["grpo_length"]
    assert (length.script, length.section, length.init_from, length.upstream) == ("train_grpo.py", "grpo", None, None)
    assert length.overrides == ["--length_reward_weight", "0.5"]
    smollm2 = resolve_config("compare", str(REPO_ROOT / "configs/smollm2.yaml"))
    assert "grpo_length" in [r.name for r in plan_runs(smollm2, Path("out"))]
    assert default["sft_grpo_length_reward_weight"] == 0.0
    runs = {r.name: r for r in plan_runs({**default, "sft_grpo_length_reward_weight": 0.25}, Path("out"))}
    assert list(runs) == [*(n for n in RUNS if n != "warm_start"), "sft_grpo_length"]
    recipe = runs["sft_grpo_length"]
    assert (recipe.script, recipe.section, recipe.upstream) == ("train_grpo.py", "grpo", "sft")
    assert recipe.init_from == runs["sft_grpo"].init_from == Path("out") / "sft" / "final"
    assert recipe.overrides == ["--length_reward_weight", "0.25"]
    reasoning = resolve_config("compare", str(REPO_ROOT / "configs/tiny_reasoning.yaml"))
    assert [r.name for r in plan_runs(reasoning, Path("out"))][-1] == "sft_grpo_length"


# ---------------------------------------------------------------------------------------------------------
# An opt-in study (mathrl/studies.py; tests/test_studies.py tests the plans and verdicts) on the finished experiment
# ---------------------------------------------------------------------------------------------------------

def test_data_efficiency_study_end_to_end(experiment):
    """--studies data_efficiency trains SFT and GRPO on 10 % and 30 % of the 32 prompts beside the kept main runs,
    evaluates them and writes its REPORT.md section; the same command again keeps everything."""
    out, root = experiment["out"], experiment["root"]
    main = {name: snapshot(out / name) for name in ("base", *TRAINED)}
    returncode, stdout, stderr, _ = compare(experiment["runner"], root, "--studies", "data_efficiency",
                                            "--parallel_runs", "2")
    assert returncode == 0, stdout + stderr
    assert {name: snapshot(out / name) for name in main} == main  # the main runs and their evaluations are kept
    study = out / "studies" / "data_efficiency"
    expected_steps = {"sft": ("max_steps", 4), "grpo": ("num_train_steps", 2)}  # the main runs' budgets
    for method in ("sft", "grpo"):
        for share in (10, 30):
            run = study / f"{method}_{share}pct"
            saved = yaml.safe_load((run / "final" / "config.yaml").read_text())
            key, steps = expected_steps[method]
            assert (saved["train_fraction"], saved[key], summary(study, run.name)["step"]) == (share / 100, steps, steps)
            stored, _ = evaluation(study, run.name)
            assert stored["settings"]["samples"] == 0  # greedy only
    data = results(out)["studies"]["data_efficiency"]
    rows = data["points"]
    assert list(rows) == ["sft_10pct", "sft_30pct", "sft_100pct", "grpo_10pct", "grpo_30pct", "grpo_100pct"]
    assert rows["sft_100pct"]["ckpt"] == str(out / "sft" / "final")  # the main run, reused
    assert [rows[p]["train_examples"] for p in ("sft_10pct", "sft_30pct", "sft_100pct")] == [3, 10, 32]
    assert rows["grpo_30pct"]["held_out_accuracy"] == evaluation(study, "grpo_30pct")[0]["results"][0]["accuracy"]
    assert [v["runs"] for v in data["verdicts"]] == ["grpo vs sft at 10% of the prompts",
                                                     "grpo vs sft at 30% of the prompts"]
    assert all(v["verdict"] in VERDICTS and v["evidence"] for v in data["verdicts"])
    report = (out / "REPORT.md").read_text()
    assert "### data_efficiency (paper 6.2.2)" in report and "| grpo_10pct | " in report
    assert report.count("- grpo vs sft at ") == 2
    assert (out / data["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({data['plot']})" in report
    kept = snapshot(out / "studies")
    returncode, stdout, stderr, _ = compare(experiment["runner"], root, "--studies", "data_efficiency")
    assert returncode == 0, stdout + stderr
    assert "to run: -" in stdout and "every study evaluation is up to date" in stdout
    assert {k: v for k, v in snapshot(out / "studies").items() if "evaluate" not in k} == \
        {k: v for k, v in kept.items() if "evaluate" not in k}
