"""bench/gpu_check.py at `--scale mini --device cpu`: the same code as the H100 measurement, on the mini stand-in,
so it cannot rot. It also runs compare.py end to end on builtin:tinyllama-mini in chat format (bf16 autocast
on the CPU here): the test of the whole experiment on the stand-in. Timings are recorded, never asserted.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import assert_user_error

PHASES = ("generation", "reward", "ref_forward", "policy_forward", "backward", "optimizer")  # grpo_step's timer


@pytest.fixture(scope="module")
def check(tmp_path_factory, script_runner):
    root = tmp_path_factory.mktemp("gpu_check")
    returncode, stdout, stderr = script_runner("bench/gpu_check.py", "--scale", "mini", "--device", "cpu",
                                               "--out", root / "gpu.json", "--work_dir", root / "work", timeout=600)
    assert returncode == 0 and "Traceback" not in stderr, stdout + stderr
    return json.loads((root / "gpu.json").read_text()), stdout


def test_every_part_ran_on_the_mini_stand_in(check):
    report, stdout = check
    assert report["model"] == "builtin:tinyllama-mini" and report["skipped"] == []
    assert report["environment"]["device"] == "cpu"
    assert "results: " in stdout
    assert list(report["part_seconds"]) == ["sft", "grpo", "evaluation", "generation", "compare"]


def test_sft_rows_at_each_batch(check):
    sft = check[0]["sft"]
    assert [row["batch_size"] for row in sft["rows"]] == [2, 4, 8] and all(row["fits"] for row in sft["rows"])
    assert sft["paper_batch"]["batch_size"] == 2 and sft["largest_fitting_batch"] == 8
    assert sft["parameters"] > 0 and sft["peak_bf16_tflops"] is None  # no MFU without a known card
    for row in sft["rows"]:
        assert row["tokens_per_s"] > 0 and row["non_pad_tokens"] > 2 * row["batch_size"] and row["mfu"] is None


def test_grpo_split_covers_the_step(check):
    rows = check[0]["grpo"]
    assert [row["shape"] for row in rows] == ["2x4x8", "4x4x8"]
    for row, (n, length) in zip(rows, [(8, 8), (16, 8)]):
        phases = row["phases_s"]
        assert sorted(phases) == sorted(PHASES)
        for i, step in enumerate(row["step_s"]["all"]):  # the phases of one step fit inside it
            assert all(phases[name]["all"][i] > 0 for name in PHASES)
            assert sum(phases[name]["all"][i] for name in PHASES) <= step
        assert all(0 < tokens <= n * length for tokens in row["generated_tokens"])
        assert row["step_s"]["n"] == 2 and row["generated_tokens_per_s"]["median"] > 0


def test_evaluation_batched_and_one_by_one(check):
    evaluation = check[0]["evaluation"]
    assert (evaluation["batched"]["examples"], evaluation["one_by_one"]["examples"]) == (32, 4)
    assert evaluation["one_by_one"]["batch_size"] == 1 and evaluation["batched_speedup"] > 0


def test_generation_dynamic_and_static_cache(check):
    generation = check[0]["generation"]
    assert generation["dynamic"]["compiled"] is False and generation["static"]["compiled"] is False  # CPU
    assert generation["faster"] in ("dynamic", "static") and generation["static_over_dynamic"] > 0


def test_compare_ran_end_to_end_on_the_stand_in(check):
    compare = check[0]["compare"]
    assert compare["returncode"] == 0, compare["tail"]
    out = Path(compare["output_dir"])
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["base", "sft", "warm_start", "grpo", "sft_grpo", "h2h_sft", "h2h_grpo"]
    assert "builtin:tinyllama-mini" in (out / "REPORT.md").read_text()
    for name in ("sft", "grpo", "sft_grpo", "h2h_sft", "h2h_grpo"):
        config = (out / name / "final" / "config.yaml").read_text()
        assert "prompt_format: chat" in config and "mixed_precision: bf16" in config, name


def test_parts_past_the_budget_are_skipped_and_listed(tmp_path, script_runner):
    returncode, stdout, stderr = script_runner("bench/gpu_check.py", "--scale", "mini", "--device", "cpu",
                                               "--budget_s", "0", "--out", tmp_path / "gpu.json")
    assert returncode == 0, stdout + stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["skipped"] == ["sft", "grpo", "evaluation", "generation", "compare"]
    assert "sft: skipped, --budget_s 0 spent" in stdout and "sft" not in report


def test_cuda_without_a_gpu_is_a_clear_error(script_runner):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    returncode, _, stderr = script_runner("bench/gpu_check.py", "--device", "cuda")
    assert_user_error(returncode, stderr, "--device cuda: no CUDA device here", "--scale mini --device cpu")
