"""Every user mistake ends in one `error: ...` line on stderr and exit status 2, never a traceback.

The full table runs each script's `__main__` block in this process (conftest.run_script_in_process: same
argv, cwd, stdout/stderr and exit status as `python SCRIPT ARGS`, an escaping exception printed as a
traceback), because ~30 fresh interpreters importing torch would take over a minute on two cores. A few
cases are also run as real subprocesses, to check the behaviour end to end.
"""

from types import SimpleNamespace

import pytest

from conftest import MICRO_OVERRIDES, TINY_CONFIG, assert_user_error, last_line
from mathrl.modeling import build_char_tokenizer

GOOD_LINE = '{"prompt": "What is 1 + 2? Answer with an integer.", "answer": "3"}\n'


@pytest.fixture(scope="module")
def paths(tmp_path_factory, micro_model_dir):
    root = tmp_path_factory.mktemp("cli")
    files = {
        "bad_yaml": "seed: 1\nbatch_size: 2\nmodel_name: a: b\n",
        "bad_json": GOOD_LINE * 2 + '{"prompt": "What is 2 + 2?", "answer": 4\n' + GOOD_LINE,
        "no_answer": GOOD_LINE + '{"prompt": "What is 2 + 2?"}\n',
        "bad_answer": GOOD_LINE + '{"prompt": "What is 5 / 2?", "answer": "2.5"}\n',
        "empty": "\n\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "good.jsonl").write_text(GOOD_LINE)
    return SimpleNamespace(root=root, micro=str(micro_model_dir), missing=str(root / "missing.jsonl"),
                           **{name: str(root / name) for name in files}, good=str(root / "good.jsonl"))


def sft_args(p, *extra):
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--output_dir", f"{p.root}/sft_out", *extra]


def eval_args(p, *extra):
    return ["--config", TINY_CONFIG, *MICRO_OVERRIDES, "--ckpt", p.micro, *extra]


def infer_args(p, *extra):
    return ["--config", TINY_CONFIG, "--ckpt", p.micro, *extra, "What is 1 + 1? Answer with an integer."]


def data_cases(script, build, flag):
    """The data-file mistakes, for a script that reads the data file given by `flag`."""
    return [
        (script, "invalid_json", lambda p: build(p, flag, p.bad_json), ["bad_json line 3: invalid JSON"]),
        (script, "missing_answer", lambda p: build(p, flag, p.no_answer), ['no_answer line 2: missing key "answer"']),
        (script, "non_integer_answer", lambda p: build(p, flag, p.bad_answer),
         ['bad_answer line 2: "answer" must be an integer, got "2.5"']),
        (script, "empty_data_file", lambda p: build(p, flag, p.empty), ["empty: no examples (empty file)"]),
        (script, "missing_data_file", lambda p: build(p, flag, p.missing), ["missing.jsonl: file not found"]),
    ]


def common_cases(script, build, wrong_type_key):
    return [
        (script, "unknown_key", lambda p: build(p, "--learnig_rate", "1") if script == "train_sft.py"
         else build(p, "--eval_batch_sise", "1"), ["unknown config key", "did you mean"]),
        (script, "wrong_type", lambda p: build(p, f"--{wrong_type_key}", "abc"),
         [f'key "{wrong_type_key}" expects an integer, got \'abc\'']),
        (script, "missing_config_file", lambda p: [*build(p), "--config", p.missing],
         ["missing.jsonl: config file not found"]),
        (script, "bad_yaml", lambda p: [*build(p), "--config", p.bad_yaml], ["bad_yaml line 3: invalid YAML"]),
    ]


CASES = [
    *common_cases("train_sft.py", sft_args, "num_epochs"),
    *data_cases("train_sft.py", sft_args, "--train_file"),
    ("train_sft.py", "missing_model_dir", lambda p: sft_args(p, "--model_name", f"{p.root}/nope/model"),
     ["nope/model: checkpoint directory not found"]),
    ("train_sft.py", "hub_model_offline",
     lambda p: ["--model_name", "someorg/somemodel", "--output_dir", f"{p.root}/hub_out"],
     ['cannot load model "someorg/somemodel"', "--config configs/tiny.yaml"]),
    *common_cases("evaluate.py", eval_args, "eval_batch_size"),
    *data_cases("evaluate.py", eval_args, "--eval_file"),
    ("evaluate.py", "missing_ckpt_dir",
     lambda p: ["--config", TINY_CONFIG, "--ckpt", f"{p.root}/nope/final", "--eval_file", p.good],
     ["nope/final: checkpoint directory not found"]),
    ("evaluate.py", "hub_model_offline", lambda p: ["--ckpt", "someorg/somemodel", "--eval_file", p.good],
     ['cannot load model "someorg/somemodel"', "--config configs/tiny.yaml"]),
    *common_cases("inference_sft.py", infer_args, "eval_batch_size"),
    ("inference_sft.py", "missing_ckpt_dir",
     lambda p: ["--config", TINY_CONFIG, "--ckpt", f"{p.root}/nope/final", "What is 1 + 1?"],
     ["nope/final: checkpoint directory not found"]),
    ("inference_sft.py", "hub_model_offline", lambda p: ["--ckpt", "someorg/somemodel", "What is 1 + 1?"],
     ['cannot load model "someorg/somemodel"', "--config configs/tiny.yaml"]),
]


@pytest.mark.parametrize("script, _name, build, fragments", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_user_error_is_one_line(paths, in_process_runner, script, _name, build, fragments):
    returncode, stdout, stderr = in_process_runner(script, *build(paths))
    assert_user_error(returncode, stderr, *fragments)


# End to end in a real interpreter (HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1); train_sft.py's own subprocess error
# case is test_sft.py::test_rerun_into_same_output_dir_fails_and_keeps_earlier_run.
SUBPROCESS_CASES = {"evaluate.py-invalid_json", "inference_sft.py-hub_model_offline"}


@pytest.mark.parametrize("script, _name, build, fragments",
                         [c for c in CASES if f"{c[0]}-{c[1]}" in SUBPROCESS_CASES], ids=sorted(SUBPROCESS_CASES,
                         key=[f"{c[0]}-{c[1]}" for c in CASES].index))
def test_user_error_in_subprocess(paths, script_runner, script, _name, build, fragments):
    returncode, stdout, stderr = script_runner(script, *build(paths))
    assert_user_error(returncode, stderr, *fragments)
    assert stdout == ""


def test_unknown_key_message_in_full(paths, in_process_runner):
    returncode, _, stderr = in_process_runner("train_sft.py", "--learnig_rate", "1")
    assert returncode == 2
    assert last_line(stderr) == 'error: --learnig_rate: unknown config key "learnig_rate"; did you mean: learning_rate?'


# ---------------------------------------------------------------------------------------------------------
# Errors that used to end in a traceback (prompt format, zero-length runs)


@pytest.mark.parametrize("script, build", [
    ("train_sft.py", lambda p: sft_args(p, "--train_file", p.good, "--eval_file", p.good, "--ood_eval_file", "null",
                                        "--prompt_format", "chatt", "--max_steps", "1")),
    ("evaluate.py", lambda p: eval_args(p, "--eval_file", p.good, "--prompt_format", "chatt")),
    ("inference_sft.py", lambda p: infer_args(p, "--prompt_format", "chatt")),
], ids=["train_sft.py", "evaluate.py", "inference_sft.py"])
def test_unknown_prompt_format_is_a_user_error(paths, in_process_runner, script, build):
    returncode, _, stderr = in_process_runner(script, *build(paths))
    assert_user_error(returncode, stderr, "prompt_format")


def test_chat_format_without_template_is_a_user_error(paths, in_process_runner, micro_model_and_tokenizer):
    model, _ = micro_model_and_tokenizer
    ckpt = paths.root / "no_template"
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = None
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    returncode, _, stderr = in_process_runner(
        "evaluate.py", "--config", TINY_CONFIG, "--ckpt", ckpt, "--eval_file", paths.good, "--prompt_format", "chat")
    assert_user_error(returncode, stderr, "chat template")


def test_zero_epochs_does_not_crash(paths, in_process_runner):
    returncode, _, stderr = in_process_runner("train_sft.py", *sft_args(
        paths, "--train_file", paths.good, "--eval_file", paths.good, "--ood_eval_file", "null",
        "--num_epochs", "0", "--max_steps", "0", "--output_dir", f"{paths.root}/zero_epochs"))
    assert "Traceback" not in stderr, stderr
    assert returncode == 0 or (returncode == 2 and last_line(stderr).startswith("error:")), stderr
