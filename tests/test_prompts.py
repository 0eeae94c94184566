"""Tests for mathrl.prompts, the one prompt formatter, on the built-in character tokenizer and on a Llama-like
BPE tokenizer (Metaspace "▁" pre-tokenizer, BOS added by the post-processor) trained here with `tokenizers`."""

import random

import pytest
import torch

from mathrl.data import apply_op, standard_prompt
from mathrl.generation import complete
from mathrl.modeling import build_char_tokenizer, load_tokenizer
from mathrl.errors import UserError
from mathrl.prompts import completion_ids, encode_example, prompt_ids

PROMPT = "What is 12 + 30? Answer with an integer."
EXAMPLE = {"prompt": PROMPT, "answer": "42"}


def fmt_config(prompt_format: str, max_prompt_length: int = 128, max_completion_length: int = 16) -> dict:
    return {"prompt_format": prompt_format, "max_prompt_length": max_prompt_length,
            "max_completion_length": max_completion_length, "sft_target": "answer"}


# ---------------------------------------------------------------------------------------------------------
# Built-in character tokenizer
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def char_tok():
    return build_char_tokenizer()


def test_char_plain_prompt_and_completion(char_tok):
    p, c = encode_example(char_tok, EXAMPLE, fmt_config("plain"))
    assert p[0] == char_tok.bos_token_id and p.count(char_tok.bos_token_id) == 1
    assert char_tok.decode(p[1:]) == PROMPT
    assert len(p) == 1 + len(PROMPT)  # one token per character
    assert c[-1] == char_tok.eos_token_id and c.count(char_tok.eos_token_id) == 1
    assert char_tok.decode(c[:-1]) == " 42"


def test_char_chat_prompt_ends_with_generation_marker(char_tok):
    p, c = encode_example(char_tok, EXAMPLE, fmt_config("chat"))
    assert char_tok.decode(p) == f"<s>user: {PROMPT}\nassistant:"
    # The tiny chat template has no BOS; the tokenizer adds one to ordinary encodes, so the prompt gets it once.
    assert p[0] == char_tok.bos_token_id and p.count(char_tok.bos_token_id) == 1
    assert c[-1] == char_tok.eos_token_id
    assert char_tok.decode(c[:-1]) == "42"  # no leading space: the template ends the prompt


def test_completion_truncation_keeps_eos_last(char_tok):
    ids = completion_ids(char_tok, "123456", "plain", max_completion_length=4)
    assert len(ids) == 4
    assert ids[-1] == char_tok.eos_token_id
    assert char_tok.decode(ids[:-1]) == " 12"  # the answer's start is kept, EOS replaces the rest


def test_completion_of_exact_length_is_not_cut(char_tok):
    ids = completion_ids(char_tok, "42", "plain", max_completion_length=4)  # " 42" + EOS = 4 tokens
    assert char_tok.decode(ids[:-1]) == " 42" and ids[-1] == char_tok.eos_token_id


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_prompt_longer_than_max_prompt_length_is_an_error_naming_it(char_tok, prompt_format):
    """Cutting the prompt (from the front, as before) silently lost the question: it is refused instead."""
    full = prompt_ids(char_tok, PROMPT, prompt_format, max_prompt_length=1000)
    assert prompt_ids(char_tok, PROMPT, prompt_format, max_prompt_length=len(full)) == full  # exactly fits
    with pytest.raises(UserError, match=rf'prompt "What is 12 \+ 30\?.*" is {len(full)} tokens, more than '
                                        rf"max_prompt_length {len(full) - 1}"):
        prompt_ids(char_tok, PROMPT, prompt_format, max_prompt_length=len(full) - 1)


def test_unknown_prompt_format(char_tok):
    with pytest.raises(UserError, match='prompt_format "chatml": expected one of plain, chat'):
        prompt_ids(char_tok, PROMPT, "chatml", 64)


# ---------------------------------------------------------------------------------------------------------
# Llama-like tokenizer: BPE over "▁"-marked words, BOS added by a TemplateProcessing post-processor
# ---------------------------------------------------------------------------------------------------------

def arithmetic_sentences(n: int = 400) -> list[str]:
    rng = random.Random(0)
    texts = []
    for _ in range(n):
        op = rng.choice("+-*")
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        if op == "-" and a < b:
            a, b = b, a
        texts.append(f"{standard_prompt(a, op, b)} {apply_op(a, op, b)}")
    return texts


def train_llama_like(split: bool):
    """A small BPE tokenizer. split=True: merges stay inside "▁"-words (SentencePiece's whitespace split, as in
    Llama); split=False: merges may cross words, so the tokens around the prompt/answer boundary can fuse."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=split)
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=split)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    core.train_from_iterator(arithmetic_sentences(), trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", core.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """The Llama-like tokenizer saved and loaded back the way every script loads one (pad set to unk)."""
    path = tmp_path_factory.mktemp("llama_like")
    train_llama_like(split=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_tok(llama_dir):
    return load_tokenizer(str(llama_dir))


def test_llama_like_loader_sets_a_pad_token(llama_tok):
    assert llama_tok.pad_token == "<unk>"
    assert llama_tok.chat_template is None


def test_llama_like_plain_encoding(llama_tok):
    p, c = encode_example(llama_tok, EXAMPLE, fmt_config("plain"))
    assert p[0] == llama_tok.bos_token_id
    assert (p + c).count(llama_tok.bos_token_id) == 1  # prompt + completion: one BOS, never lost or doubled
    assert c[-1] == llama_tok.eos_token_id and (p + c).count(llama_tok.eos_token_id) == 1
    # The answer's leading space is carried by its first token ("▁42"), as in Llama.
    assert llama_tok.convert_ids_to_tokens(c[:-1])[0].startswith("▁")
    assert llama_tok.decode(c[:-1]).strip() == "42"
    assert llama_tok.decode(p, skip_special_tokens=True) == PROMPT


def test_llama_like_joint_split_matches_when_merges_stay_inside_words(llama_tok):
    """With SentencePiece-style word splitting the joint string tokenizes to prompt ids + answer ids, so the
    prompt/answer boundary (where the loss mask starts) is the same either way."""
    p, c = encode_example(llama_tok, EXAMPLE, fmt_config("plain"))
    joint = llama_tok(PROMPT + " " + "42")["input_ids"]
    assert joint == p + c[:-1]


def test_joint_tokenization_that_moves_the_boundary_is_a_clear_error():
    """With merges that cross "▁", tokenizing `prompt + " " + answer` fuses the end of the prompt with the
    answer, so its first len(prompt ids) tokens are not the prompt the model is fed at generation time: the
    completion cannot be cut off it, and encoding says so instead of shifting the loss mask."""
    tok = train_llama_like(split=False)
    p = prompt_ids(tok, PROMPT, "plain", 128)
    joint = tok(PROMPT + " " + "42")["input_ids"]
    assert joint[: len(p)] != p  # control: this tokenizer really moves the boundary
    with pytest.raises(UserError, match=r'prompt "What is 12 \+ 30.*" with answer "42": the tokenizer merges '
                                        r"tokens across the prompt/answer boundary"):
        encode_example(tok, EXAMPLE, fmt_config("plain"))


def test_llama_like_completion_truncation_keeps_eos(llama_tok):
    ids = completion_ids(llama_tok, "123456789", "plain", max_completion_length=2)
    assert len(ids) == 2 and ids[-1] == llama_tok.eos_token_id


def test_chat_format_without_template_is_a_clear_error(llama_tok):
    with pytest.raises(UserError, match="needs a tokenizer with a chat template.*use --prompt_format plain"):
        encode_example(llama_tok, EXAMPLE, fmt_config("chat"))


def test_chat_template_with_bos_gives_exactly_one_bos(llama_dir):
    tok = load_tokenizer(str(llama_dir))
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} [assistant]{% endif %}")
    p, c = encode_example(tok, EXAMPLE, fmt_config("chat"))
    assert p[0] == tok.bos_token_id and (p + c).count(tok.bos_token_id) == 1
    assert c[-1] == tok.eos_token_id


# ---------------------------------------------------------------------------------------------------------
# Generation is fed exactly the prompt ids that training puts before the completion
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["char", "llama"])
def test_generation_is_fed_the_training_prompt_ids(which, char_tok, llama_tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tok if which == "char" else llama_tok
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)).eval()
    seen = []
    original_generate = model.generate

    def spy_generate(*args, **kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return original_generate(*args, **kwargs)

    model.generate = spy_generate
    prompts = [PROMPT, "What is 3 * 4? Answer with an integer.", "What is 100 - 1? Answer with an integer."]
    fmt = "chat" if which == "char" else "plain"
    config = fmt_config(fmt, max_prompt_length=64, max_completion_length=3)
    complete(model, tok, prompts, config, batch_size=8)

    assert len(seen) == 1  # one batched generate call
    input_ids, attention_mask = seen[0]  # [B, P]
    for row, prompt in enumerate(prompts):
        expected, _ = encode_example(tok, {"prompt": prompt, "answer": "0"}, config)
        width = len(expected)
        # Left padding: the prompt sits at the right end, padding (mask 0) before it.
        assert input_ids[row, -width:].tolist() == expected
        assert attention_mask[row].tolist() == [0] * (input_ids.shape[1] - width) + [1] * width
        assert (input_ids[row, : input_ids.shape[1] - width] == tok.pad_token_id).all()
