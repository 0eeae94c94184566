"""The catalogue of bad inputs that used to end in a traceback, be accepted silently, or overwrite a file: each is
now one `error: ...` line (exit status 2) naming the file, key or value and what is expected, found before any
training starts. One table, one test; the scripts' `__main__` blocks run in this process (conftest).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import MICRO_OVERRIDES, TINY_CONFIG, assert_user_error
from mathrl.config import resolve_config
from mathrl.validation import check_train_examples

GOOD = '{"prompt": "What is 1 + 2? Answer with an integer.", "answer": "3"}\n'
LONG_ANSWER = '{"prompt": "What is 12345678 + 1? Answer with an integer.", "answer": "12345679"}\n'


@pytest.fixture(scope="module")
def p(tmp_path_factory, micro_model_dir):
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "good.jsonl").write_text(GOOD * 4)
    (root / "long_answer.jsonl").write_text(GOOD + "\n" + LONG_ANSWER + GOOD * 2)  # a blank line: it is line 3
    (root / "a_file").write_text("not a directory\n")
    (root / "empty_dir").mkdir()
    (root / "results_dir").mkdir()
    (root / "results.json").write_text('{"results": []}\n')

    def copy(name: str, drop: tuple[str, ...] = ()) -> str:
        target = root / name
        shutil.copytree(micro_model_dir, target)
        for file in drop:
            (target / file).unlink()
        return str(target)

    run = root / "run"  # what a training run leaves: final/ and step_N/ inside, metrics beside them
    copy("run/final")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    truncated = Path(copy("truncated"))
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return SimpleNamespace(
        root=root, good=str(root / "good.jsonl"), long_answer=str(root / "long_answer.jsonl"),
        file=str(root / "a_file"), empty=str(root / "empty_dir"), results_dir=str(root / "results_dir"),
        results=str(root / "results.json"), run=str(run), truncated=str(truncated),
        no_tokenizer=copy("no_tokenizer", ("tokenizer.json", "tokenizer_config.json")),
        no_config=copy("no_config", ("config.json",)), half_written=copy(".step_2.tmp-123"),
        micro=str(micro_model_dir))


def out(p, name: str) -> str:
    return str(p.root / "out" / name)


def sft(p, name, *extra):
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--train_file", p.good, "--eval_file", p.good,
            "--ood_eval_file", "null", "--max_steps", "1", "--output_dir", out(p, name), *extra]


def grpo(p, name, *extra):
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--train_file", p.good, "--eval_file", p.good,
            "--ood_eval_file", "null", "--batch_size", "2", "--num_train_steps", "1", "--output_dir", out(p, name),
            *extra]


def evaluate(p, *extra, ckpt=None):
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--ckpt", ckpt or p.micro, "--eval_file", p.good, *extra]


def infer(p, *extra, ckpt=None):
    return ["--config", TINY_CONFIG, "--ckpt", ckpt or p.micro, *extra, "What is 1 + 1? Answer with an integer."]


# (script, case, arguments, fragments the one error line must hold)
CASES = [
    # output paths
    ("train_sft.py", "output_dir_is_a_file", lambda p: [*sft(p, "x"), "--output_dir", p.file],
     ["a_file: is a file, expected a directory"]),
    ("train_grpo.py", "output_dir_not_writable", lambda p: [*grpo(p, "x"), "--output_dir", "/sys/mathrl-test-run"],
     ["--output_dir /sys/mathrl-test-run: cannot create the directory"]),
    ("evaluate.py", "output_is_a_directory", lambda p: evaluate(p, "--output", p.results_dir),
     ["results_dir: is a directory, expected a file name"]),
    # checkpoints that are not one
    ("evaluate.py", "ckpt_is_a_run_directory", lambda p: evaluate(p, ckpt=p.run),
     ["run: a training run's directory, not a checkpoint; pass", "run/final"]),
    ("train_sft.py", "init_from_a_run_directory", lambda p: sft(p, "init_run", "--init_from", p.run),
     ["a training run's directory, not a checkpoint"]),
    ("inference_sft.py", "ckpt_is_a_run_directory", lambda p: infer(p, ckpt=p.run),
     ["a training run's directory, not a checkpoint"]),
    ("evaluate.py", "ckpt_empty_directory", lambda p: evaluate(p, ckpt=p.empty),
     ["empty_dir: not a Hugging Face checkpoint (an empty directory)"]),
    ("evaluate.py", "ckpt_without_tokenizer", lambda p: evaluate(p, ckpt=p.no_tokenizer),
     ["no_tokenizer: no tokenizer files"]),
    ("train_grpo.py", "init_from_half_written", lambda p: grpo(p, "half", "--init_from", p.half_written),
     [".step_2.tmp-123: a half-written checkpoint"]),
    ("evaluate.py", "ckpt_truncated_weights", lambda p: evaluate(p, ckpt=p.truncated),
     ["truncated/model.safetensors: truncated or corrupt"]),
    ("evaluate.py", "ckpt_without_config_json", lambda p: evaluate(p, ckpt=p.no_config),
     ["no_config: not a Hugging Face checkpoint (no config.json)"]),
    # values that used to be checked only when used, or never
    ("train_sft.py", "negative_learning_rate", lambda p: sft(p, "lr", "--learning_rate", "-1e-3"),
     ['--learning_rate: key "learning_rate" must be >= 0, got -0.001']),
    ("train_sft.py", "adam_beta1_one", lambda p: sft(p, "b1", "--adam_beta1", "1"),
     ['key "adam_beta1" must be in [0, 1), got 1.0']),
    ("train_grpo.py", "adam_beta2_negative", lambda p: grpo(p, "b2", "--adam_beta2", "-0.1"),
     ['key "adam_beta2" must be in [0, 1)']),
    ("train_sft.py", "eval_batch_size_zero", lambda p: sft(p, "ebs", "--eval_batch_size", "0"),
     ['key "eval_batch_size" must be > 0, got 0']),
    ("train_grpo.py", "negative_kl_coeff", lambda p: grpo(p, "kl", "--kl_coeff", "-0.05"),
     ['key "kl_coeff" must be >= 0']),
    ("train_grpo.py", "top_p_zero", lambda p: grpo(p, "tp0", "--top_p", "0"), ['key "top_p" must be in (0, 1]']),
    ("train_grpo.py", "top_p_above_one", lambda p: grpo(p, "tp2", "--top_p", "1.5"),
     ['key "top_p" must be in (0, 1], got 1.5']),
    ("inference_sft.py", "sample_temperature_zero", lambda p: infer(p, "--sample", "--temperature", "0"),
     ["--sample needs --temperature > 0"]),
    ("inference_sft.py", "sample_top_p_above_one", lambda p: infer(p, "--sample", "--top_p", "1.5"),
     ["--top_p in (0, 1]"]),
    ("train_sft.py", "negative_save_every", lambda p: sft(p, "se", "--save_every", "-1"),
     ['key "save_every" must be >= 0']),
    ("train_grpo.py", "negative_warmup_steps", lambda p: grpo(p, "ws", "--warmup_steps", "-5"),
     ['key "warmup_steps" must be >= 0']),
    # data the tokenizer cannot represent within the limits
    ("train_sft.py", "answer_longer_than_max_completion_length",
     lambda p: sft(p, "long", "--train_file", p.long_answer),
     ['long_answer.jsonl line 3: the answer "12345679" is 10 tokens with EOS; max_completion_length is 8']),
    ("train_sft.py", "max_completion_length_one", lambda p: sft(p, "mcl1", "--max_completion_length", "1"),
     ["good.jsonl line 1: the answer", "max_completion_length is 1"]),
    ("train_grpo.py", "answer_longer_than_max_completion_length",
     lambda p: grpo(p, "glong", "--train_file", p.long_answer), ["max_completion_length is 8"]),
    # overwrites
    ("evaluate.py", "output_is_an_input_file", lambda p: evaluate(p, "--output", p.good, "--overwrite"),
     ["good.jsonl: is an input file; refusing to replace it"]),
    ("evaluate.py", "output_exists", lambda p: evaluate(p, "--output", p.results),
     ["results.json: already exists; pass --overwrite"]),
]


@pytest.mark.parametrize("script, _case, build, fragments", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_is_one_line_error(p, in_process_runner, script, _case, build, fragments):
    before = {f: Path(f).read_bytes() for f in (p.good, p.results)}
    code, stdout, stderr = in_process_runner(script, *build(p))
    assert_user_error(code, stderr, *fragments)
    # Nothing was overwritten, and a trainer left nothing that would block the same command once fixed.
    assert {f: Path(f).read_bytes() for f in before} == before
    if script.startswith("train_"):
        runs = p.root / "out"
        assert not runs.exists() or all(not any(d.iterdir()) for d in runs.iterdir())


def test_unknown_characters_are_counted_with_the_first_example(micro_tokenizer, capsys):
    config = resolve_config("sft", TINY_CONFIG, ["--train_file", "data.jsonl"])
    examples = [{"prompt": "What is 1 + 2?", "answer": "3"}, {"prompt": "What is 7 × 8?", "answer": "56"},
                {"prompt": "Wie viel ist 2 + 2 ä?", "answer": "4"}]
    check_train_examples(micro_tokenizer, examples, config)
    assert capsys.readouterr().err.strip() == \
        'warning: data.jsonl: 2 examples hold characters the tokenizer maps to <unk>, first: "What is 7 \\u00d7 8?"'


def test_overwrite_replaces_an_earlier_result(p, in_process_runner, tmp_path):
    results = tmp_path / "results.json"
    results.write_text("earlier\n")
    code, _, stderr = in_process_runner("evaluate.py", *evaluate(p, "--output", results, "--overwrite"))
    assert code == 0, stderr[-2000:]
    assert results.read_text().startswith('{\n  "results"')
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]
