"""builtin:tiny-base: its pretraining corpus never shows a held-out or OOD problem, and the cache is rebuilt exactly
when a pretraining setting, the model shape or the corpus changes."""

from __future__ import annotations

import re

import pytest
from conftest import MICRO_OVERRIDES, REPO_ROOT, TINY_CONFIG

from mathrl import modeling, tiny_base
from mathrl.data import load_jsonl

# Every way a corpus document can write an operation, mapped to the data files' symbol.
_OPERATION = {"+": "+", "plus": "+", "sum": "+", "-": "-", "minus": "-", "difference": "-", "*": "*", "×": "*",
              "times": "*", "product": "*", "/": "/", "÷": "/", "divided by": "/", "quotient": "/"}
_INFIX = re.compile(r"(\d+) (\+|-|\*|×|/|÷|plus|minus|times|divided by) (\d+)")
_NAMED = re.compile(r"The (sum|difference|product|quotient) of (\d+) and (\d+)")


def facts_in(document: str) -> set[tuple[int, str, int]]:
    """Every (a, op, b) a document states, read back from its text (not from the generator's own list)."""
    found = {(int(a), _OPERATION[op], int(b)) for a, op, b in _INFIX.findall(document)}
    found |= {(int(a), _OPERATION[op], int(b)) for op, a, b in _NAMED.findall(document)}
    return found


def problems(path: str) -> set[tuple[int, str, int]]:
    return {(ex["a"], ex["operation"], ex["b"]) for ex in load_jsonl(REPO_ROOT / path)}


def test_every_document_states_one_fact_with_its_true_answer():
    for document in tiny_base.pretraining_corpus():
        (fact,) = facts_in(document)
        a, op, b = fact
        answer = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
        assert document.rstrip(".").endswith(f" {answer}"), document


def test_corpus_contains_no_held_out_or_ood_problem_and_no_task_prompt():
    corpus = tiny_base.pretraining_corpus()
    stated = set().union(*map(facts_in, corpus))
    assert stated == problems("data/tiny_train.jsonl")  # all the training facts, nothing else
    assert not stated & problems("data/tiny_eval.jsonl")
    assert not stated & problems("data/tiny_ood.jsonl")
    # Not the task's surface form either: the base model must carry its arithmetic over to the prompt format.
    assert not any("Answer with an integer" in d or d.startswith("What is") for d in corpus)


def test_corpus_uses_several_forms_per_fact_and_is_a_pure_function_of_its_settings():
    corpus = tiny_base.pretraining_corpus()
    per_fact = tiny_base.PRETRAINING["forms_per_fact"]
    assert len(corpus) == per_fact * len(problems("data/tiny_train.jsonl"))
    first_fact = corpus[:per_fact]
    assert len(set(first_fact)) == per_fact and len({facts_in(d).pop() for d in first_fact}) == 1
    assert corpus == tiny_base.pretraining_corpus()
    assert corpus != tiny_base.pretraining_corpus({**tiny_base.PRETRAINING, "corpus_seed": 1})


@pytest.fixture
def fast_pretraining(monkeypatch, tmp_path):
    """A 2-step pretraining into an empty cache, counting how often the model is actually pretrained."""
    monkeypatch.setattr(modeling, "BUILTIN_DIR", tmp_path)
    monkeypatch.setitem(tiny_base.PRETRAINING, "steps", 2)
    monkeypatch.setitem(tiny_base.PRETRAINING, "warmup_steps", 1)
    monkeypatch.setitem(tiny_base.PRETRAINING, "threads", 1)  # beside the other pytest worker
    calls = []
    real = tiny_base.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_base, "pretrain", counting)
    return calls


def micro_base_config(**overrides) -> dict:
    from mathrl.config import resolve_config

    args = [*MICRO_OVERRIDES, "--model_name", "builtin:tiny-base"]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return resolve_config("sft", str(REPO_ROOT / TINY_CONFIG), args)


def test_cache_is_built_once_and_rebuilt_only_when_a_setting_changes(fast_pretraining, monkeypatch):
    first = modeling.builtin_model_dir(micro_base_config())
    again = modeling.builtin_model_dir(micro_base_config(seed=7, max_completion_length=12))  # not pretraining keys
    assert again == first and len(fast_pretraining) == 1 and (first / "model.safetensors").is_file()

    monkeypatch.setitem(tiny_base.PRETRAINING, "learning_rate", 1e-3)
    changed_setting = modeling.builtin_model_dir(micro_base_config())
    changed_shape = modeling.builtin_model_dir(micro_base_config(tiny_intermediate_size=48))
    assert len({first, changed_setting, changed_shape}) == 3 and len(fast_pretraining) == 3
    assert first.is_dir()  # the earlier base is kept, not overwritten

    monkeypatch.setattr(tiny_base, "STATEMENTS", tiny_base.STATEMENTS[:-1])  # the corpus text changes
    assert modeling.builtin_model_dir(micro_base_config()) not in {first, changed_setting}
    assert len(fast_pretraining) == 4


def test_pretraining_lowers_the_corpus_loss(fast_pretraining, monkeypatch):
    import torch

    monkeypatch.setitem(tiny_base.PRETRAINING, "steps", 20)
    config = {**micro_base_config(), "seed": 42, "max_prompt_length": 0, "max_completion_length": 0}
    model, tokenizer = modeling._build_tiny(config)
    batch = tiny_base.document_batch(tokenizer, tiny_base.pretraining_corpus()[:64])
    with torch.no_grad():
        before = model(**batch).loss.item()
    tiny_base.pretrain(model, tokenizer)
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before - 0.5, (before, after)


def test_report_says_what_the_pretrained_base_is():
    from mathrl.report import model_description

    line = model_description(micro_base_config())
    assert "pretrained on arithmetic text" in line and "stand-in" not in line and "hidden 32" in line
    assert "trained from scratch" in model_description({**micro_base_config(), "model_name": "builtin:tiny"})


def test_length_pooled_batches_cover_every_document_once_per_pass_with_little_padding():
    import random

    documents = [f"doc {i} " + "x" * (i % 37) for i in range(200)]
    batches = tiny_base.document_batches(documents, batch_size=10, length_pool=4, rng=random.Random(0))
    first_pass = [next(batches) for _ in range(20)]  # 20 batches of 10: exactly one pass over the 200 documents
    assert sorted(d for batch in first_pass for d in batch) == sorted(documents)
    assert all(len(batch) == 10 for batch in first_pass)
    spread = max(max(map(len, b)) - min(map(len, b)) for b in first_pass)
    assert spread < 20  # a pool of 40 is cut by length: each batch spans about a quarter of the 37 lengths
    plain = tiny_base.document_batches(documents, batch_size=10, length_pool=1, rng=random.Random(0))
    assert max(max(map(len, b)) - min(map(len, b)) for b in (next(plain) for _ in range(20))) > spread


def test_remarks_are_made_up_sentences_not_the_task_instruction():
    import random

    rng = random.Random(0)
    sentences = [tiny_base.made_up_sentence(rng) for _ in range(500)]
    assert all(s[0].isupper() and s.endswith(".") and s[:-1].replace(" ", "").isalpha() for s in sentences)
    assert len(set(sentences)) > 490 and "Answer with an integer." not in sentences
