"""Tests for mathrl.config: layering (config.yaml -> --config FILE -> --KEY VALUE), type checks, rejections."""

import argparse
from pathlib import Path

import pytest
import yaml

import mathrl.config as config_module
from mathrl.config import (
    DEFAULT_CONFIG_PATH, load_saved_config, parse_args, parse_overrides, resolve_config, save_config,
)
from mathrl.errors import UserError

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


@pytest.fixture
def fake_defaults(tmp_path, monkeypatch):
    """A config.yaml where `batch_size` is both shared and in the sft section, to see which one wins."""
    path = tmp_path / "defaults.yaml"
    path.write_text(
        "batch_size: 2\nseed: 1\nlr: 0.5\nname: base\n"
        "sft:\n  batch_size: 16\n  steps: 3\n"
        "evaluate:\n  output: null\n"
    )
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Layering
# ---------------------------------------------------------------------------------------------------------

def test_flat_view_is_shared_plus_own_section(defaults):
    shared = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    sft = resolve_config("sft")
    assert sft == {**shared, **defaults["sft"]}
    evaluate = resolve_config("evaluate")
    assert evaluate == {**shared, **defaults["evaluate"]}
    # A key of another section is not part of the flat view.
    assert "learning_rate" in sft and "learning_rate" not in evaluate
    assert "output" in evaluate and "output" not in sft


def test_section_wins_over_shared(fake_defaults):
    assert resolve_config("sft")["batch_size"] == 16
    assert resolve_config("evaluate")["batch_size"] == 2


def test_section_wins_over_shared_in_user_file(fake_defaults, tmp_path):
    user = write(tmp_path / "user.yaml", "batch_size: 4\nsft:\n  batch_size: 8\n")
    assert resolve_config("sft", user)["batch_size"] == 8
    assert resolve_config("evaluate", user)["batch_size"] == 4


def test_unknown_section_is_a_programming_error():
    with pytest.raises(ValueError, match="no section 'grpo_typo'"):
        resolve_config("grpo_typo")


def test_config_file_changes_only_its_keys(tmp_path):
    base = resolve_config("sft")
    user = write(tmp_path / "user.yaml", "batch_size: 7\nsft:\n  num_epochs: 9\n")
    resolved = resolve_config("sft", user)
    assert resolved == {**base, "batch_size": 7, "num_epochs": 9}


def test_tiny_yaml_layers_on_config_yaml():
    """configs/tiny.yaml changes exactly the keys it names (its shared keys and its sft section)."""
    base, tiny = resolve_config("sft"), resolve_config("sft", TINY)
    raw = yaml.safe_load(Path(TINY).read_text())
    named = {k: v for k, v in raw.items() if not isinstance(v, dict)} | raw.get("sft", {})
    assert {"model_name", "learning_rate", "max_steps"} <= set(named)
    for key in base:
        if key in named:
            assert tiny[key] == named[key] and type(tiny[key]) is type(base[key]) or base[key] is None, key
        else:
            assert tiny[key] == base[key], key  # untouched keys keep config.yaml's value
    assert tiny["model_name"] == "builtin:tiny-base"


def test_command_line_wins_over_file(tmp_path):
    user = write(tmp_path / "user.yaml", "batch_size: 7\nsft:\n  learning_rate: 1.0e-3\n")
    resolved = resolve_config("sft", user, ["--batch_size", "3", "--learning_rate=0.25"])
    assert resolved["batch_size"] == 3
    assert resolved["learning_rate"] == 0.25


@pytest.mark.parametrize("tokens", [["--seed", "7"], ["--seed=7"]])
def test_both_override_spellings(tokens):
    assert resolve_config("sft", None, tokens)["seed"] == 7


def test_override_value_may_contain_equals_and_be_negative():
    assert parse_overrides(["--output_dir=runs/a=b", "--seed", "-3"]) == [("output_dir", "runs/a=b"), ("seed", "-3")]
    assert resolve_config("sft", None, ["--output_dir=runs/a=b", "--seed", "-3"])["seed"] == -3


def test_override_missing_value_and_stray_token():
    with pytest.raises(UserError, match="--seed: missing value"):
        parse_overrides(["--seed"])
    with pytest.raises(UserError, match="unexpected argument 'seed'"):
        parse_overrides(["seed", "3"])


# ---------------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------------

def test_yaml11_exponent_string_becomes_float(tmp_path):
    # PyYAML (YAML 1.1) reads `5e-6` (no dot) as the string "5e-6".
    assert yaml.safe_load("x: 5e-6")["x"] == "5e-6"
    user = write(tmp_path / "user.yaml", "sft:\n  learning_rate: 5e-6\n")
    from_file = resolve_config("sft", user)["learning_rate"]
    from_cli = resolve_config("sft", None, ["--learning_rate", "5e-6"])["learning_rate"]
    assert isinstance(from_file, float) and from_file == 5e-6
    assert isinstance(from_cli, float) and from_cli == 5e-6


def test_float_key_takes_an_int():
    value = resolve_config("sft", None, ["--max_grad_norm", "2"])["max_grad_norm"]
    assert isinstance(value, float) and value == 2.0


@pytest.mark.parametrize("raw", ["abc", "1.5", "true", "[1, 2]"])
def test_int_key_rejects_non_integers(raw):
    with pytest.raises(UserError, match='--num_epochs: key "num_epochs" expects an integer'):
        resolve_config("sft", None, ["--num_epochs", raw])


def test_int_key_accepts_integral_float():
    value = resolve_config("sft", None, ["--num_epochs", "2.0"])["num_epochs"]
    assert isinstance(value, int) and value == 2


@pytest.mark.parametrize("raw", ["abc", "true"])
def test_float_key_rejects_non_numbers(raw):
    with pytest.raises(UserError, match="expects a number"):
        resolve_config("sft", None, ["--learning_rate", raw])


def test_bool_keys(fake_defaults, tmp_path):
    fake_defaults.write_text("flag: false\nsft:\n  steps: 1\n")
    assert resolve_config("sft", None, ["--flag", "true"])["flag"] is True
    assert resolve_config("sft", None, ["--flag=false"])["flag"] is False
    assert resolve_config("sft", write(tmp_path / "u.yaml", "flag: true\n"))["flag"] is True
    for raw in ("1", "maybe"):
        with pytest.raises(UserError, match='"flag" expects true or false'):
            resolve_config("sft", None, ["--flag", raw])


def test_null_default_keys_take_strings_and_null(tmp_path):
    assert resolve_config("sft", None, ["--ood_eval_file", "data/x.jsonl"])["ood_eval_file"] == "data/x.jsonl"
    assert resolve_config("sft", TINY, ["--ood_eval_file", "null"])["ood_eval_file"] is None
    # Command-line text for a path key is a path, even when it looks like YAML.
    assert resolve_config("sft", None, ["--ood_eval_file", "[a, b]"])["ood_eval_file"] == "[a, b]"
    with pytest.raises(UserError, match="a single value or null"):
        resolve_config("sft", write(tmp_path / "u.yaml", "ood_eval_file: [a, b]\n"))


def test_string_key_rejects_mapping_and_null_in_a_file(tmp_path):
    for text in ("model_name: null\n", "model_name: [a]\n"):
        with pytest.raises(UserError, match='"model_name" expects a string'):
            resolve_config("sft", write(tmp_path / "u.yaml", text))


@pytest.mark.parametrize("key, raw", [
    ("mixed_precision", "no"),  # documented in config.yaml as a valid value
    ("output_dir", "007"),
    ("output_dir", "1.10"),
    ("output_dir", "runs/x #2"),
])
def test_string_keys_take_the_command_line_text_verbatim(key, raw):
    assert resolve_config("sft", None, [f"--{key}", raw])[key] == raw


def test_mixed_precision_no_in_config_file(tmp_path):
    assert resolve_config("sft", write(tmp_path / "u.yaml", "mixed_precision: no\n"))["mixed_precision"] == "no"


# ---------------------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------------------

def test_unknown_cli_key_suggests_close_match():
    with pytest.raises(UserError) as err:
        resolve_config("sft", None, ["--learnig_rate", "1"])
    assert str(err.value) == '--learnig_rate: unknown config key "learnig_rate"; did you mean: learning_rate?'


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(UserError) as err:
        resolve_config("evaluate", None, ["--zzzz", "1"])
    message = str(err.value)
    assert "valid keys:" in message
    assert all(key in message for key in resolve_config("evaluate"))


def test_key_of_another_section_is_unknown_on_the_command_line():
    with pytest.raises(UserError, match='unknown config key "learning_rate"'):
        resolve_config("evaluate", None, ["--learning_rate", "1e-4"])


def test_unknown_shared_key_in_file(tmp_path):
    user = write(tmp_path / "user.yaml", "batch_sise: 4\n")
    with pytest.raises(UserError, match=r'user\.yaml: unknown config key "batch_sise"; did you mean: batch_size'):
        resolve_config("sft", user)


def test_unknown_section_key_in_file(tmp_path):
    user = write(tmp_path / "user.yaml", "sft:\n  learnig_rate: 0.1\n")
    with pytest.raises(UserError, match=r'user\.yaml \[sft\]: unknown config key "learnig_rate"; did you mean: '
                                        r'learning_rate'):
        resolve_config("sft", user)


def test_typo_in_another_scripts_section_is_rejected_too(tmp_path):
    user = write(tmp_path / "user.yaml", "sft:\n  learnig_rate: 0.1\n")
    with pytest.raises(UserError, match=r"\[sft\]: unknown config key \"learnig_rate\""):
        resolve_config("evaluate", user)


def test_unknown_section_name_in_file(tmp_path):
    user = write(tmp_path / "user.yaml", "sfft:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match=r'unknown config key "sfft"; did you mean: sft'):
        resolve_config("sft", user)


def test_type_error_in_file_names_file_and_key(tmp_path):
    user = write(tmp_path / "user.yaml", "sft:\n  num_epochs: many\n")
    with pytest.raises(UserError, match=r'user\.yaml \[sft\]: key "num_epochs" expects an integer, got \'many\''):
        resolve_config("sft", user)


def test_invalid_yaml_names_file_and_line(tmp_path):
    user = write(tmp_path / "bad.yaml", "seed: 1\nbatch_size: 2\nmodel_name: a: b\n")
    with pytest.raises(UserError, match=r"bad\.yaml line 3: invalid YAML"):
        resolve_config("sft", user)


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match="expected a mapping"):
        resolve_config("sft", write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_empty_config_file_changes_nothing(tmp_path):
    assert resolve_config("sft", write(tmp_path / "empty.yaml", "")) == resolve_config("sft")


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.yaml: config file not found"):
        resolve_config("sft", str(tmp_path / "nope.yaml"))


# ---------------------------------------------------------------------------------------------------------
# parse_args: script flags versus overrides
# ---------------------------------------------------------------------------------------------------------

def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", action="append", required=True)
    parser.add_argument("--eval_file", action="append")
    return parser


def inference_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts", nargs="*")
    parser.add_argument("--ckpt", default="x")
    parser.add_argument("--temperature", type=float, default=0.7)
    return parser


def test_parse_args_keeps_script_flags_apart():
    args, config = parse_args("evaluate", evaluate_parser(), [
        "--ckpt", "a", "--eval_batch_size", "5", "--ckpt=b", "--config", TINY,
        "--eval_file", "e.jsonl", "--seed=3",
    ])
    assert args.ckpt == ["a", "b"] and args.eval_file == ["e.jsonl"] and args.config == TINY
    assert config["eval_batch_size"] == 5 and config["seed"] == 3
    assert config["model_name"] == "builtin:tiny-base"  # from configs/tiny.yaml
    assert "ckpt" not in config


def test_parse_args_does_not_eat_values_as_positionals():
    args, config = parse_args("evaluate", inference_parser(), [
        "--temperature", "0.5", "What is 2 + 2?", "--seed", "11", "What is 3 - 1?", "--max_prompt_length=9",
    ])
    assert args.temperature == 0.5
    assert args.prompts == ["What is 2 + 2?", "What is 3 - 1?"]
    assert config["seed"] == 11 and config["max_prompt_length"] == 9


def test_parse_args_rejects_unknown_override():
    # A misspelt script flag is not a config key either: it must fail, not be dropped.
    with pytest.raises(UserError, match='--temperatur: unknown config key "temperatur"'):
        parse_args("evaluate", inference_parser(), ["--temperatur", "0.5", "What is 1 + 1?"])


# ---------------------------------------------------------------------------------------------------------
# Saved config
# ---------------------------------------------------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    config = resolve_config("sft", TINY, ["--learning_rate", "5e-6", "--ood_eval_file", "null"])
    path = save_config(config, tmp_path)
    assert path == tmp_path / "config.yaml"
    loaded = load_saved_config(tmp_path)
    assert loaded == config
    assert list(loaded) == list(config)  # same key order, so the file reads like config.yaml
    assert isinstance(loaded["learning_rate"], float)
    # The saved file reproduces the run: used as --config it resolves to the same flat config.
    assert resolve_config("sft", str(path)) == config


def test_load_saved_config_of_directory_without_one(tmp_path):
    assert load_saved_config(tmp_path) == {}
