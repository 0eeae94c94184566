"""Offline stand-ins for TinyLlama-1.1B-Chat-v1.0, the paper's model, whose weights cannot be downloaded here.

    builtin:tinyllama-random  TinyLlama-1.1B-Chat-v1.0's architecture exactly as its config.json gives it, with
                              seeded random weights (for GPU throughput and memory: 1.1 B parameters)
    builtin:tinyllama-mini    the same tokenizer and config family shrunk to run in seconds on CPU (for tests)

Both are written by `mathrl.modeling.builtin_model_dir` with `save_pretrained` and loaded through the same
`from_pretrained` path as the hub model, so a user with the real weights changes only `--model_name DIR`.
Their accuracies mean nothing: the weights are random. What they reproduce is everything the code depends on:

- the tokenizer: a Llama-style SentencePiece BPE (transformers' own `LlamaTokenizer`: "▁" word boundaries
  with the leading "▁" only at the start of a text, digits one per piece, byte fallback through `<0x00>` ..
  `<0xFF>`), `<unk>`=0, `<s>`=1, `</s>`=2, BOS added on ordinary encodes and EOS not, pad `</s>` (or unset, as
  in other copies of the model: `pad_token=None`), and TinyLlama-1.1B-Chat's Zephyr chat template verbatim.
  Its merges are learned here with the `tokenizers` library from the repository's data files and generated
  English/arithmetic text, so its vocabulary (about 540 pieces) is smaller than Llama's 32,000;
- the model: `LlamaForCausalLM` with grouped-query attention, untied embeddings, RoPE theta 1e4, RMSNorm eps
  1e-5 and BOS/EOS ids 1/2 (see /work/shared/reference/tinyllama-1.1b-chat-v1.0.md for the published values).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from mathrl.data import apply_op, standard_prompt

STANDINS = ("tinyllama-random", "tinyllama-mini")
REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_FILES = ("data/math_tasks_train.jsonl", "data/tiny_train.jsonl", "data/tiny_ood.jsonl")
TOKENIZER_VOCAB_SIZE = 2048  # pieces learned by BPE, specials and the 256 byte pieces included
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
# TinyLlama-1.1B-Chat-v1.0's tokenizer_config.json "chat_template", verbatim (Zephyr style).
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# TinyLlama-1.1B-Chat-v1.0's config.json; vocab_size is replaced by the tokenizer's size in the mini model.
TINYLLAMA_CONFIG = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
    vocab_size=32000, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu",
    tie_word_embeddings=False, attention_bias=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
)
# Same family (GQA 2:1 here, intermediate / hidden = 2.75 as in TinyLlama), small enough for CPU tests.
MINI_SHAPE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def corpus(seed: int = 0) -> list[str]:
    """Training text for the tokenizer: the data files' prompts and answers, chat markers, and generated
    English/arithmetic sentences. One line per item and no newline inside any, so "\\n" stays a byte piece
    (<0x0A>) as in Llama's vocabulary."""
    lines = []
    for name in CORPUS_FILES:
        for line in (REPO_ROOT / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                example = json.loads(line)
                lines.append(f"{example['prompt']} {example['answer']}")
    rng = random.Random(seed)
    openers = ["The answer is", "So the result is", "First, we compute", "Let me think step by step.",
               "We add the numbers and get", "Therefore the final answer is", "Multiply the two numbers:",
               "Subtract the smaller number from the larger one:", "Divide and keep the integer part:",
               "This is a simple arithmetic question about", "You are a helpful assistant that solves math problems."]
    for _ in range(3000):
        op = rng.choice("+-*/")
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        result = apply_op(a * b if op == "/" else a, op, b)
        lines.append(f"<|user|> {standard_prompt(a * b if op == '/' else a, op, b)} <|assistant|> "
                     f"{rng.choice(openers)} {result}.")
    return lines


def build_tokenizer(pad_token: str | None = EOS):
    """The stand-in tokenizer, learned from `corpus()`; deterministic (same pieces on every machine)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    # Training splits on "▁"-words and isolates digits, so no learned piece crosses a word or holds a digit
    # next to anything: with LlamaTokenizer's own pre-tokenizer (no split) the merges then behave like
    # SentencePiece with split_digits, as Llama's vocabulary does.
    learner = Tokenizer(models.BPE(unk_token=UNK))
    learner.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB_SIZE, special_tokens=[UNK, BOS, EOS, *byte_pieces],
                                  limit_alphabet=200, show_progress=False)
    learner.train_from_iterator(corpus(), trainer)
    state = json.loads(learner.to_str())["model"]
    vocab = state["vocab"]  # specials 0-2, bytes 3-258 (as in Llama), then the learned pieces
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                               add_bos_token=True, add_eos_token=False, model_max_length=2048)
    tokenizer.pad_token = pad_token
    tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    return tokenizer


def model_config(name: str, vocab_size: int):
    """The LlamaConfig of a stand-in: TinyLlama's exactly, or its shrunk mini version."""
    from transformers import LlamaConfig

    if name == "tinyllama-random":
        return LlamaConfig(**TINYLLAMA_CONFIG)
    return LlamaConfig(**{**TINYLLAMA_CONFIG, **MINI_SHAPE, "vocab_size": vocab_size})


def build_standin(name: str, seed: int):
    """(model, tokenizer) of a stand-in, with weights drawn from `seed`. tinyllama-random is saved in bf16
    (the dtype TinyLlama is published in); loading upcasts it to fp32 like the real checkpoint."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = model_config(name, len(tokenizer))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if name == "tinyllama-random":
        model = model.to(torch.bfloat16)
    return model, tokenizer
