"""`builtin:tiny-base`: the built-in tiny Llama pretrained on arithmetic text, a base model like the paper's.

The paper's base, TinyLlama-1.1B-Chat, has seen arithmetic in pretraining and gets some of it right before any
fine-tuning; a random init never does, so GRPO from it has no reward to learn from. This module stands in for that
pretraining: the tiny model (configs' tiny_* shape, character tokenizer) learns next-token prediction on a corpus
of arithmetic facts written in other surface forms than the task's prompt ("What is a op b? Answer with an
integer."): equations, sentences, a few question/answer phrasings. The facts are the tiny_train problems only, so
no held-out (tiny_eval) or out-of-distribution (tiny_ood) problem is ever seen (tests/test_tiny_base.py checks it);
answering those in the task's format needs both the arithmetic and the prompt format to generalise.

Built once per setting (the model shape, PRETRAINING below and the corpus text all go into the cache directory's
name, so a change builds a new base and keeps the old one) under checkpoints/builtin/, with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import random

import torch

from mathrl.data import OPERATION_WORDS, TYPESET_SIGNS, build_datasets

# The pretraining run: fixed, whatever the experiment's `seed` (every seed of compare.py starts from one base, as
# every arm of the paper starts from the one TinyLlama checkpoint).
PRETRAINING = {
    "corpus_seed": 0,            # the data generator's seed (data/ is generated with 0) and the phrasing draw
    "forms_per_fact": 3,         # each tiny_train fact is written this many times, in different surface forms
    "steps": 3200,               # 24 epochs of the corpus (0.129 held-out); 9 epochs left a base at 0.065
    "batch_size": 32,            # documents per step: 2 threads are ~1.5x faster at 32 than at 16
    "length_pool": 16,           # batches drawn at once and cut by document length (see document_batches)
    "learning_rate": 4.0e-3,
    "warmup_steps": 50,
    "weight_decay": 0.3,
    "adam_betas": (0.9, 0.98),
    "max_grad_norm": 1.0,
    "init_seed": 42,
    "threads": 2,                # fixed, so the base is the same model whatever OMP_NUM_THREADS the caller runs
                                 # with; compare.py builds it before any run starts, so it has both cores
}

_NOUN = {"+": "sum", "-": "difference", "*": "product", "/": "quotient"}

# Surface forms of one fact a op b = c, each ending in the answer (so EOS follows a number, as in the task's
# completions): statements, and questions followed by an instruction of varied length before the answer, so the
# model learns to carry the operands across text it has not seen with them. None is the task's prompt ("What is
# a op b? Answer with an integer."), whose instruction sentence never occurs.
STATEMENTS = (
    lambda a, op, b, c: f"{a} {op} {b} = {c}",
    lambda a, op, b, c: f"{a} {TYPESET_SIGNS[op]} {b} = {c}",
    lambda a, op, b, c: f"{a} {OPERATION_WORDS[op]} {b} equals {c}",
    lambda a, op, b, c: f"The {_NOUN[op]} of {a} and {b} is {c}",
)
QUESTIONS = (
    lambda a, op, b: f"{a} {op} {b}?",
    lambda a, op, b: f"How much is {a} {OPERATION_WORDS[op]} {b}?",
    lambda a, op, b: f"Find {a} {op} {b}.",
    lambda a, op, b: f"Q: {a} {op} {b}?",
    lambda a, op, b: f"What's {a} {op} {b}?",
)
# A remark between question and answer: a sentence of made-up words (random lowercase letters), standing for the
# varied text a pretrained model has seen between a question and its answer. It teaches the model to carry the
# operands across any sentence it has never seen before answering, the task's "Answer with an integer." included.
# (A small grammar of everyday requests did not carry over: the base answered the task's prompts with the
# grammar's words, "re." or "result", instead of a number.)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def made_up_sentence(rng: random.Random) -> str:
    """1-6 words of 1-8 random letters, capitalised, ending in a full stop: "Qzt bwo lkhrae."."""
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 6))]
    return " ".join(words).capitalize() + "."


REMARK_SHARE = 0.6   # of the question forms; the rest answer right after the question

def corpus_facts(seed: int) -> list[tuple[int, str, int, int]]:
    """(a, op, b, answer) of every tiny_train problem of the data generator at this seed, in file order."""
    return [(ex["a"], ex["operation"], ex["b"], int(ex["answer"])) for ex in build_datasets(seed)["tiny_train.jsonl"]]


def pretraining_corpus(settings: dict = PRETRAINING) -> list[str]:
    """The documents: each training fact in forms_per_fact distinct surface forms, drawn by a seeded rng."""
    rng = random.Random(f"tiny-base:{settings['corpus_seed']}")
    documents = []
    for a, op, b, c in corpus_facts(settings["corpus_seed"]):
        for form in rng.sample(range(len(STATEMENTS) + len(QUESTIONS)), settings["forms_per_fact"]):
            if form < len(STATEMENTS):
                documents.append(STATEMENTS[form](a, op, b, c))
                continue
            question = QUESTIONS[form - len(STATEMENTS)](a, op, b)
            remark = " " + made_up_sentence(rng) if rng.random() < REMARK_SHARE else ""
            documents.append(f"{question}{remark} {c}")
    return documents


def settings_digest(shape: dict, settings: dict = PRETRAINING) -> str:
    """8 hex digits that change whenever the model shape, the pretraining settings or the corpus text change."""
    text = json.dumps({"shape": shape, "settings": settings, "corpus": pretraining_corpus(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def document_batch(tokenizer, documents: list[str]) -> dict[str, torch.Tensor]:
    """BOS + text + EOS per document, right-padded; labels are the ids with padding masked out (-100)."""
    rows = [tokenizer(d, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id] for d in documents]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def document_batches(documents: list[str], batch_size: int, length_pool: int, rng: random.Random):
    """Endless batches of documents: epochs in shuffled order; every `length_pool` batches' worth is sorted by
    length and cut into batches of similar length (in shuffled order), so that padding, half of the compute with
    mixed lengths, is nearly gone. length_pool 1: plain shuffled batches."""
    queue: list[str] = []
    while True:
        while len(queue) < batch_size * length_pool:
            queue += rng.sample(documents, len(documents))
        pool, queue = queue[: batch_size * length_pool], queue[batch_size * length_pool:]
        pool.sort(key=len)
        batches = [pool[i: i + batch_size] for i in range(0, len(pool), batch_size)]
        yield from rng.sample(batches, len(batches))


def pretraining_step(model, tokenizer, documents: list[str], optimizer, max_grad_norm: float) -> torch.Tensor:
    """One optimizer step of next-token prediction on a batch of documents; returns the loss (detached use only)."""
    loss = model(**document_batch(tokenizer, documents)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def pretrain(model, tokenizer, settings: dict = PRETRAINING):
    """Next-token prediction on the corpus for settings["steps"] steps (AdamW, cosine schedule).

    Returns (model, tokenizer), as the built-in model writer expects."""
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    documents = pretraining_corpus(settings)
    order = random.Random(f"tiny-base-order:{settings['corpus_seed']}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"], betas=tuple(settings["adam_betas"]))
    schedule = get_cosine_schedule_with_warmup(optimizer, settings["warmup_steps"], settings["steps"])
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    model.train()
    batches = document_batches(documents, settings["batch_size"], settings["length_pool"], order)
    progress = tqdm(range(settings["steps"]), desc="pretraining builtin:tiny-base", dynamic_ncols=True)
    for _, batch in zip(progress, batches):
        loss = pretraining_step(model, tokenizer, batch, optimizer, settings["max_grad_norm"])
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    torch.set_num_threads(threads)
    return model, tokenizer
