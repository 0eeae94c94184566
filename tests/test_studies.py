"""compare.py's opt-in studies (mathrl/studies.py): what each study plans, train_fraction's subsets and both
trainers honouring them, the study verdicts on hand-made numbers, and a bad --studies name. The micro end-to-end
`compare.py --studies data_efficiency` is in tests/test_compare.py, on that module's finished experiment.
"""

from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from conftest import MICRO_OVERRIDES, TINY_CONFIG, assert_user_error
from mathrl import claims
from mathrl.claims import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from mathrl.config import DEFAULT_CONFIG_PATH, read_yaml, resolve_config
from mathrl.data import load_jsonl, training_subset
from mathrl.errors import UserError
from mathrl.studies import STUDIES, check_study_config, parse_studies

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = Path("out")


def plan(studies: list[str], *overrides: str) -> dict:
    """{run name: Run} that compare.py would train for these studies with configs/tiny.yaml."""
    from compare import study_runs

    config = resolve_config("compare", str(REPO_ROOT / TINY_CONFIG), list(overrides))
    own = set(read_yaml(DEFAULT_CONFIG_PATH)["compare"])  # compare's own keys are not passed on to the scripts
    common = [t for k, v in zip(overrides[::2], overrides[1::2]) if k[2:] not in own for t in (k, v)]
    return {r.name: r for r in study_runs(studies, config, str(REPO_ROOT / TINY_CONFIG), common, OUT)}


def flags(run) -> dict:
    return dict(zip(run.overrides[::2], run.overrides[1::2]))


@pytest.fixture(scope="module")
def tiny():
    """The configured values the plans are derived from (whatever configs/tiny.yaml says)."""
    from compare import sft_total_steps

    sft = resolve_config("sft", str(REPO_ROOT / TINY_CONFIG))
    grpo = resolve_config("grpo", str(REPO_ROOT / TINY_CONFIG))
    return {"sft_steps": sft_total_steps(sft), "grpo_steps": grpo["num_train_steps"], "sft_lr": sft["learning_rate"],
            "grpo_lr": grpo["learning_rate"]}


# ---- plans ---------------------------------------------------------------------------------------------------

def test_data_efficiency_plan(tiny):
    runs = plan(["data_efficiency"])
    assert list(runs) == [f"studies/data_efficiency/{m}_{p}pct" for m in ("sft", "grpo") for p in (10, 30)]
    for name, run in runs.items():
        method, share = name.split("/")[-1].split("_")
        assert (run.script, run.init_from, run.upstream) == (f"train_{method}.py", None, None)
        steps = ("--max_steps", tiny["sft_steps"]) if method == "sft" else ("--num_train_steps", tiny["grpo_steps"])
        # The main runs' step budget on a tenth or a third of the prompts; nothing else changes.
        assert flags(run) == {steps[0]: str(steps[1]), "--train_fraction": str(int(share[:-3]) / 100)}


def test_sensitivity_plan(tiny):
    runs = plan(["sensitivity"])
    names = [n.split("/")[-1] for n in runs]
    # sft_lr_x1 and grpo_lr_x1 are the main sft and grpo runs, reused.
    assert names == ["sft_lr_third", "sft_lr_x3", "grpo_lr_third", "grpo_lr_x3", "grpo_lr_third_kl0", "grpo_lr_x1_kl0",
                     "grpo_lr_x3_kl0"]
    for name, run in runs.items():
        f = flags(run)
        lr = tiny["sft_lr"] if run.script == "train_sft.py" else tiny["grpo_lr"]
        factor = {"third": 1 / 3, "x1": 1.0, "x3": 3.0}[name.split("_lr_")[1].split("_")[0]]
        assert float(f.get("--learning_rate", lr)) == pytest.approx(lr * factor)
        assert f.get("--kl_coeff") == ("0.0" if name.endswith("_kl0") else None)
        assert "--train_fraction" not in f


def test_kl_estimator_plan(tiny):
    (run,) = plan(["kl_estimator"]).values()
    assert run.name == "studies/kl_estimator/sft_grpo_squared_sequence"
    assert (run.script, run.upstream, run.init_from) == ("train_grpo.py", "sft", OUT / "sft" / "final")
    assert flags(run) == {"--num_train_steps": str(tiny["grpo_steps"]), "--kl_estimator": "squared_sequence"}


def test_extended_sft_plan(tiny):
    runs = plan(["extended_sft"])
    # sft_steps_100pct is the main sft run, reused; the others are whole runs of 1/10 and 3/10 of its steps, with the
    # same schedule shrunk to fit (warmup_steps times the same share).
    assert list(runs) == ["studies/extended_sft/sft_steps_10pct", "studies/extended_sft/sft_steps_30pct"]
    warmup = resolve_config("sft", str(REPO_ROOT / TINY_CONFIG))["warmup_steps"]
    for run, share in zip(runs.values(), (0.1, 0.3)):
        assert (run.script, run.init_from, run.upstream) == ("train_sft.py", None, None)
        assert flags(run) == {"--max_steps": str(round(tiny["sft_steps"] * share)),
                              "--warmup_steps": str(round(warmup * share))}
    # With a shorter study budget the full point is rerun too, and every point shrinks by the same factor.
    shorter = plan(["extended_sft"], "--study_step_fraction", "0.5")
    assert [int(flags(r)["--max_steps"]) for r in shorter.values()] == [
        round(tiny["sft_steps"] * 0.5 * share) for share in (0.1, 0.3, 1.0)]
    assert "--warmup_steps" not in flags(shorter["studies/extended_sft/sft_steps_100pct"])


def test_a_shorter_study_budget_reruns_the_reference_points(tiny):
    runs = plan(["data_efficiency", "kl_estimator"], "--study_step_fraction", "0.5")
    # The 100 % points and the per-token sft_grpo are no longer the main runs: they run at the study's budget.
    assert [n.split("/")[-1] for n in runs] == ["sft_10pct", "sft_30pct", "sft_100pct", "grpo_10pct", "grpo_30pct",
                                                "grpo_100pct", "sft_grpo", "sft_grpo_squared_sequence"]
    for run in runs.values():
        f = flags(run)
        expected = round(0.5 * (tiny["sft_steps"] if run.script == "train_sft.py" else tiny["grpo_steps"]))
        assert int(f.get("--max_steps", f.get("--num_train_steps"))) == expected
    assert "--train_fraction" not in flags(runs["studies/data_efficiency/sft_100pct"])
    assert "--kl_estimator" not in flags(runs["studies/kl_estimator/sft_grpo"])


def test_reused_points_are_reported_from_the_main_runs():
    from compare import study_targets

    config = resolve_config("compare", str(REPO_ROOT / TINY_CONFIG))
    targets = study_targets(["data_efficiency", "sensitivity"], config, OUT)
    assert targets["data_efficiency"]["sft_100pct"].ckpt == str(OUT / "sft" / "final")
    assert targets["sensitivity"]["grpo_lr_x1"].ckpt == str(OUT / "grpo" / "final")
    assert targets["sensitivity"]["grpo_lr_x1_kl0"].ckpt == str(OUT / "studies/sensitivity/grpo_lr_x1_kl0/final")
    shorter = study_targets(["data_efficiency"], {**config, "study_step_fraction": 0.5}, OUT)
    assert shorter["data_efficiency"]["sft_100pct"].ckpt == str(OUT / "studies/data_efficiency/sft_100pct/final")


def test_studies_that_a_config_would_empty_are_refused():
    with pytest.raises(UserError, match="train_fraction is 0.5"):
        plan(["data_efficiency"], "--train_fraction", "0.5")
    config = resolve_config("compare", str(REPO_ROOT / TINY_CONFIG))
    with pytest.raises(UserError, match="kl_estimator is already squared_sequence"):
        check_study_config("kl_estimator", config, {"kl_estimator": "squared_sequence", "kl_coeff": 0.05})
    for study in ("kl_estimator", "sensitivity"):
        with pytest.raises(UserError, match="kl_coeff is 0"):
            check_study_config(study, config, {"kl_estimator": "squared", "kl_coeff": 0.0})
    check_study_config("kl_estimator", config, {"kl_estimator": "k3", "kl_coeff": 0.05})  # no error


def test_parse_studies():
    assert parse_studies("") == []
    assert parse_studies("kl_estimator, data_efficiency") == ["data_efficiency", "kl_estimator"]
    with pytest.raises(UserError, match="--studies sensitivty: unknown study; studies: data_efficiency"):
        parse_studies("data_efficiency,sensitivty")


def test_every_reused_point_has_the_main_runs_settings():
    for study in STUDIES:
        for point in study.points:
            if point.main_run:
                assert (point.train_fraction, point.step_share, point.lr_factor, point.kl_off,
                        point.kl_estimator) == (1.0, 1.0, 1.0, False, None), point


def test_bad_studies_name_is_a_one_line_error(in_process_runner, tmp_path):
    code, _, stderr = in_process_runner("compare.py", "--config", TINY_CONFIG, "--output_dir", tmp_path,
                                        "--studies", "data_efficiency,speed")
    assert_user_error(code, stderr, "--studies speed: unknown study", "sensitivity", "kl_estimator")
    assert not any(tmp_path.iterdir())


# ---- train_fraction ----------------------------------------------------------------------------------------

def test_training_subsets_are_deterministic_and_nested():
    examples = load_jsonl(REPO_ROOT / "data/tiny_train.jsonl")
    tenth, third = training_subset(examples, 0.1, 42), training_subset(examples, 0.3, 42)
    assert len(tenth) == round(0.1 * len(examples)) and len(third) == round(0.3 * len(examples))
    assert training_subset(examples, 0.1, 42) == tenth  # the same for a seed
    assert all(e in third for e in tenth)  # nested
    assert [examples.index(e) for e in third] == sorted(examples.index(e) for e in third)  # in file order
    assert training_subset(examples, 0.1, 43) != tenth  # another seed, another subset
    assert training_subset(examples, 1.0, 42) == examples
    assert len(training_subset(examples[:3], 0.01, 42)) == 1  # never empty


def test_train_fraction_out_of_range_is_refused(in_process_runner):
    for value in ("0", "1.5"):
        code, _, stderr = in_process_runner("train_sft.py", "--config", TINY_CONFIG, "--train_fraction", value)
        assert_user_error(code, stderr, "train_fraction", "in (0, 1]")


@pytest.mark.parametrize("script", ["train_sft", "train_grpo"])
def test_both_trainers_train_on_the_subset(script, micro_model_dir):
    import importlib

    trainer = importlib.import_module(script)
    config = resolve_config(script.split("_")[1], str(REPO_ROOT / TINY_CONFIG),
                            [*MICRO_OVERRIDES, "--train_fraction", "0.05", "--seed", "7"])
    subset = {e["prompt"] for e in training_subset(load_jsonl(REPO_ROOT / config["train_file"]), 0.05, 7)}
    AcceleratorState._reset_state(True)
    try:
        run = trainer.setup(config, str(micro_model_dir))
    finally:
        AcceleratorState._reset_state(True)
    if script == "train_sft":
        seen = {ex for batch in run.train_loader for ex in map(tuple, batch["input_ids"].tolist())}
        assert len(run.train_loader.dataset) == len(subset) and len(seen) == len(subset)
    else:
        # One pass over the subset: its full batches (the stream drops a pass's partial last batch), all distinct.
        per_pass = len(subset) // config["batch_size"]
        seen = [e["prompt"] for _ in range(per_pass) for e in next(run.batches)]
        assert set(seen) <= subset and len(set(seen)) == len(seen) == per_pass * config["batch_size"]


# ---- verdicts on hand-made numbers ---------------------------------------------------------------------------

def held(accuracy: float, n: int = 400, tokens: int = 3) -> dict:
    return {"held_out": {"accuracy": accuracy, "num_examples": n, "predictions": [{"num_tokens": tokens}] * n},
            "metrics": [], "summary": {}}


@pytest.mark.parametrize("sft, grpo, expected", [
    ((0.9, 0.5), (0.5, 0.45), SUPPORTED),       # SFT keeps (0.5-0.1)/(0.9-0.1) = 0.5, GRPO 0.35/0.4 = 0.875
    ((0.9, 0.85), (0.5, 0.2), CONTRADICTED),    # SFT keeps 0.94, GRPO 0.25
    ((0.9, 0.5), (0.12, 0.12), INCONCLUSIVE),   # GRPO gained nothing beyond noise on all the data
])
def test_data_efficiency_verdict(sft, grpo, expected):
    points = {"sft_100pct": held(sft[0]), "sft_10pct": held(sft[1]), "grpo_100pct": held(grpo[0]),
              "grpo_10pct": held(grpo[1])}
    result = claims.data_efficiency(points, held(0.1), 0.1)
    assert result["verdict"] == expected, result["evidence"]


@pytest.mark.parametrize("sft, grpo, grpo_kl0, expected_lr, expected_kl", [
    ((0.8, 0.82, 0.79), (0.2, 0.6, 0.3), (0.2, 0.6, 0.3), SUPPORTED, INCONCLUSIVE),
    ((0.2, 0.8, 0.5), (0.58, 0.6, 0.59), (0.58, 0.6, 0.3), CONTRADICTED, SUPPORTED),
    ((0.2, 0.8, 0.5), (0.1, 0.11, 0.1), (0.1, 0.1, 0.1), INCONCLUSIVE, INCONCLUSIVE),  # GRPO never learned
])
def test_sensitivity_verdicts(sft, grpo, grpo_kl0, expected_lr, expected_kl):
    names = ["third", "x1", "x3"]
    points = {**{f"sft_lr_{x}": held(a) for x, a in zip(names, sft)},
              **{f"grpo_lr_{x}": held(a) for x, a in zip(names, grpo)},
              **{f"grpo_lr_{x}_kl0": held(a) for x, a in zip(names, grpo_kl0)}}
    lr, kl = claims.sensitivity(points, held(0.1), names)
    assert (lr["verdict"], kl["verdict"]) == (expected_lr, expected_kl), (lr["evidence"], kl["evidence"])


def test_kl_estimator_verdict_follows_the_numbers():
    metrics = [{"step": s, "kl_sequence": 0.5} for s in range(12)]
    for paper, per_token, expected in ((0.9, 0.7, SUPPORTED), (0.7, 0.9, CONTRADICTED), (0.8, 0.81, INCONCLUSIVE)):
        points = {"sft_grpo_squared_sequence": {**held(paper, tokens=4), "metrics": metrics},
                  "sft_grpo": held(per_token)}
        result = claims.kl_estimator(points, "sft_grpo_squared_sequence")
        assert result["verdict"] == expected
        assert result["kl_sequence"] == 0.5 and result["kl_sequence_reference"] is None
        assert "4.00 ± 0.00 vs 3.00 ± 0.00" in result["evidence"]


def test_extended_sft_verdict_follows_the_numbers():
    longest = {**held(0.6, tokens=90), "metrics": [{"step": 230, "epoch": 10.0, "eval_accuracy": 0.6}]}
    for shorter, expected in ((0.3, SUPPORTED), (0.8, CONTRADICTED), (0.58, INCONCLUSIVE)):
        points = {"sft_steps_100pct": longest,
                  "sft_steps_10pct": {**held(shorter, tokens=120), "metrics": [{"step": 23, "epoch": 1.0}]}}
        result = claims.extended_sft(points, "sft_steps_10pct", "sft_steps_100pct")
        assert result["verdict"] == expected, result["evidence"]
        assert result["runs"] == "sft_steps_100pct vs sft_steps_10pct"
        assert "(10 vs 1 epochs)" in result["evidence"] and "90.00 ± 0.00 vs 120.00 ± 0.00" in result["evidence"]
        assert result["length_difference"] == -30.0
