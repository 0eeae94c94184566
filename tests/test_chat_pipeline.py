"""The paper's pipeline in chat format on builtin:tinyllama-mini, the TinyLlama-1.1B-Chat stand-in: SFT, GRPO
with a reference model (from the SFT checkpoint), evaluate and both inference scripts, each run as
`python SCRIPT ARGS` would run (in this process, to skip interpreter start-up), exiting 0 and writing what it
writes; and the bf16 GRPO run at learning rate 0 of issue 7, whose KL and gradient norm must be exactly 0.
compare.py on the stand-in runs in tests/test_gpu_check.py. Every run is seconds long; the accuracies of a
random model mean nothing.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml

from mathrl.data import read_jsonl
from mathrl.data import load_jsonl, write_jsonl
from mathrl.prompts import encode_example
from tests.conftest import REPO_ROOT, assert_user_error

MODEL = "builtin:tinyllama-mini"
PROMPT = "What is 2 + 3? Answer with an integer."
# Only what differs from config.yaml (chat format, TinyLlama's learning rates and KL) to keep the runs short.
SHORT = ["--model_name", MODEL, "--max_completion_length", "8", "--eval_batch_size", "16"]


@pytest.fixture(scope="module")
def run(isolated_in_process_runner):
    """Run a script in this process (no interpreter start-up per run), accelerate's state reset around it."""
    return isolated_in_process_runner


def checked(result: tuple[int, str, str]) -> str:
    returncode, stdout, stderr = result
    assert returncode == 0 and "Traceback" not in stderr, stdout + stderr
    return stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run):
    """SFT -> GRPO (kl_coeff 0.05, so a reference model) -> evaluate, on 16 training and 8 eval examples."""
    root = tmp_path_factory.mktemp("chat")
    write_jsonl(root / "train.jsonl", load_jsonl(REPO_ROOT / "data/math_tasks_train.jsonl")[:16])
    write_jsonl(root / "eval.jsonl", load_jsonl(REPO_ROOT / "data/math_tasks_eval.jsonl")[:8])
    data = ["--train_file", root / "train.jsonl", "--eval_file", root / "eval.jsonl"]
    out = {"root": root}
    out["sft"] = checked(run("train_sft.py", *SHORT, *data, "--max_steps", "3", "--batch_size", "4",
                                       "--log_every", "1", "--learning_rate", "1e-3", "--output_dir", root / "sft"))
    out["grpo"] = checked(run("train_grpo.py", *SHORT, *data, "--init_from", root / "sft/final",
                                        "--num_train_steps", "2", "--batch_size", "2", "--group_size", "4",
                                        "--eval_every", "1", "--output_dir", root / "grpo"))
    out["evaluate"] = checked(run("evaluate.py", "--ckpt", root / "grpo/final", "--ckpt", root / "sft/final",
                                  "--eval_file", root / "eval.jsonl", "--output", root / "eval.json"))
    return out


def test_sft_trains_chat_format_and_saves(runs):
    final = runs["root"] / "sft/final"
    config = yaml.safe_load((final / "config.yaml").read_text())
    assert (config["model_name"], config["prompt_format"]) == (MODEL, "chat")
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    lines = [m for m in read_jsonl(runs["root"] / "sft/metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2, 3] and all(m["loss"] > 0 for m in lines)
    assert "final held-out greedy accuracy" in runs["sft"]


def test_grpo_runs_with_a_reference_model_from_the_sft_checkpoint(runs):
    final = runs["root"] / "grpo/final"
    config = yaml.safe_load((final / "config.yaml").read_text())
    assert config["kl_coeff"] > 0 and config["prompt_format"] == "chat"
    assert json.loads((final / "summary.json").read_text())["init_from"] == str(runs["root"] / "sft/final")
    steps = [m for m in read_jsonl(runs["root"] / "grpo/metrics.jsonl") if "kl" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(m["kl"] >= 0 for m in steps)
    samples = [json.loads(line) for line in (runs["root"] / "grpo/samples.jsonl").read_text().splitlines()]
    assert samples and all("<|assistant|>" not in s["completion"] for s in samples)


def test_evaluate_reports_both_checkpoints(runs):
    results = json.loads((runs["root"] / "eval.json").read_text())["results"]
    assert [r["ckpt"] for r in results] == [str(runs["root"] / "grpo/final"), str(runs["root"] / "sft/final")]
    assert all(r["num_examples"] == 8 and 0 <= r["accuracy"] <= 1 for r in results)


@pytest.mark.parametrize("script, trained", [("inference.py", "grpo"), ("inference_sft.py", "sft")])
def test_inference_answers_a_prompt(runs, run, script, trained):
    stdout = checked(run(script, "--ckpt", runs["root"] / trained / "final", PROMPT))
    assert stdout.startswith(PROMPT + "\n  -> ") and "(extracted answer: " in stdout


def test_trained_checkpoint_keeps_the_stand_in_tokenizer(runs):
    """The saved tokenizer still gives the trainers BOS once and the in-context answer tokens."""
    from mathrl.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(runs["root"] / "grpo/final"))
    p, c = encode_example(tokenizer, {"prompt": PROMPT, "answer": "5"},
                          {"prompt_format": "chat", "max_prompt_length": 128, "max_completion_length": 8,
                           "sft_target": "answer"})
    assert p.count(tokenizer.bos_token_id) == 1 == (p[0] == tokenizer.bos_token_id)
    assert tokenizer.convert_ids_to_tokens(c) == ["5", "</s>"]


def test_bf16_grpo_at_learning_rate_0_logs_kl_and_grad_norm_exactly_0(tmp_path, run):
    """Issue 7's acceptance command. The model samples and is scored against its own deep copy under bf16
    autocast; with identical weights every KL is 0, and the random model gets every reward 0, so every advantage
    is 0 and nothing at all pulls on the weights. (Before the fix the reference's bf16 logits were divided by the
    temperature in bf16: grad_norm ~5e-4 here, and the KL was hidden by metrics rounded to 6 decimals.)"""
    checked(run("train_grpo.py", "--model_name", MODEL, "--mixed_precision", "bf16", "--learning_rate",
                          "0", "--temperature", "0.7", "--num_train_steps", "2", "--max_completion_length", "8",
                          "--output_dir", tmp_path / "run"))
    steps = [m for m in read_jsonl(tmp_path / "run/metrics.jsonl") if "kl" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["kl"] == 0.0 and m["zero_std_group_fraction"] == 1.0 and m["grad_norm"] == 0.0, m
    assert yaml.safe_load((tmp_path / "run/final/config.yaml").read_text())["mixed_precision"] == "bf16"


# ---------------------------------------------------------------------------------------------------------
# generation_cache: static (the compiled-generation option bench/gpu_check.py times on a GPU)
# ---------------------------------------------------------------------------------------------------------

def test_static_cache_generates_what_the_dynamic_cache_does():
    """Greedy ids with a static cache (uncompiled on CPU) equal the default's, for evaluation's batched prompts
    and for GRPO's groups, where the static cache skips the shared-prompt prefill."""
    from mathrl.generation import complete, generate_ids, generation_config
    from mathrl.modeling import load_model_and_tokenizer
    from mathrl.prompts import prompt_ids

    config = {"model_name": MODEL, "seed": 42, "prompt_format": "chat", "max_prompt_length": 128,
              "max_completion_length": 6}
    model, tokenizer = load_model_and_tokenizer(MODEL, config)
    prompts = [e["prompt"] for e in load_jsonl(REPO_ROOT / "data/math_tasks_eval.jsonl")[:5]]
    texts = {cache: complete(model, tokenizer, prompts, {**config, "generation_cache": cache}, batch_size=8)
             for cache in ("dynamic", "static")}
    assert texts["static"] == texts["dynamic"] and any(s["text"] for (s,) in texts["dynamic"])
    ids = [prompt_ids(tokenizer, p, "chat", 128) for p in prompts[:2]]
    groups = {cache: generate_ids(model, tokenizer, ids, generation_config(tokenizer, 6, False, cache=cache), 3)
              for cache in ("dynamic", "static")}
    assert groups["static"][1] == groups["dynamic"][1]
    assert torch.equal(groups["static"][0], groups["dynamic"][0]) and groups["static"][0].shape[0] == 6


def test_unknown_generation_cache_is_a_clear_error(tmp_path, run):
    returncode, _, stderr = run("train_grpo.py", "--model_name", MODEL, "--generation_cache", "paged",
                                "--output_dir", tmp_path / "run")
    assert_user_error(returncode, stderr, 'generation_cache "paged": expected one of dynamic, static')
