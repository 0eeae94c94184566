"""Tests for evaluate.py and inference_sft.py on a checkpoint whose greedy answers are known in advance.

The "bigram" checkpoint is the micro model with its transformer blocks silenced (o_proj = down_proj = 0), so
the next token depends only on the current one, through one-hot embeddings and an untied output layer:
digit d -> d + 1, "9" -> EOS, any other character -> "1". A prompt ending in "5" is answered "6789" + EOS,
one ending in "." with "12345678" (8 tokens, the cap of configs/tiny.yaml, no EOS).
"""

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import TINY_CONFIG
from mathrl.config import save_config
from mathrl.data import load_jsonl, write_jsonl
from mathrl.evaluation import greedy_accuracy
from mathrl.modeling import build_char_tokenizer, load_model_and_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent

# (prompt, expected completion, expected completion tokens incl. EOS, answer written to the eval file)
CASES = [
    ("What is 3 + 3? Answer: 5", "6789", 5, "6789"),          # correct
    ("What is 4 * 2? Answer: 7", "89", 3, "88"),              # wrong
    ("What is 9 - 1? Answer: 8", "9", 2, "9"),                # correct
    ("What is 6 / 2? Answer with an integer.", "12345678", 8, "12345678"),  # correct, stopped at the cap
    ("What is 2 + 2? 9", "", 1, "0"),                         # wrong: empty completion, nothing extracted
    ("What is 5 - 5? 0", "12345678", 8, "5"),                 # wrong
]
EXPECTED_ACCURACY = 3 / 6
EXPECTED_PER_OPERATION = {"+": 0.5, "-": 0.5, "*": 0.0, "/": 1.0}
EXPECTED_MEAN_TOKENS = (5 + 3 + 2 + 8 + 1 + 8) / 6
SUMMARY_KEYS = {"ckpt", "eval_file", "accuracy", "num_examples", "mean_completion_tokens", "per_operation"}


def make_bigram_model(model, tokenizer):
    """Rewrite `model` in place into the bigram map described in the module docstring."""
    vocab = tokenizer.get_vocab()
    digits = [vocab[str(d)] for d in range(10)]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = torch.zeros_like(model.model.embed_tokens.weight)  # [V, H]
        other = 10  # hidden dimension shared by every non-digit token
        embed[:, other] = 1.0
        for d, token in enumerate(digits):
            embed[token] = 0.0
            embed[token, d] = 1.0
        head = torch.zeros_like(embed)  # [V, H]: logit of token t = sum over source dims mapped to t
        for d in range(9):
            head[digits[d + 1], d] = 1.0
        head[tokenizer.eos_token_id, 9] = 1.0
        head[vocab["1"], other] = 1.0
        model.config.tie_word_embeddings = False
        model.model.embed_tokens.weight = torch.nn.Parameter(embed)
        model.lm_head.weight = torch.nn.Parameter(head.clone())
    return model


@pytest.fixture(scope="module")
def bigram_dirs(tmp_path_factory, micro_model_dir, _micro_config_session):
    """Two copies of the bigram checkpoint: `plain` (no saved config) and `chat` (saved prompt_format: chat)."""
    root = tmp_path_factory.mktemp("bigram")
    model, tokenizer = load_model_and_tokenizer(str(micro_model_dir), _micro_config_session)
    make_bigram_model(model, tokenizer)
    dirs = {}
    for name in ("plain", "chat"):
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    save_config({**_micro_config_session, "prompt_format": "chat"}, dirs["chat"])
    return dirs


@pytest.fixture(scope="module")
def eval_config():
    from mathrl.config import resolve_config

    return resolve_config("evaluate", str(REPO_ROOT / TINY_CONFIG))


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory, bigram_dirs, eval_config):
    """An eval file whose answers make exactly 3 of the 6 greedy answers of the bigram checkpoint correct."""
    model, tokenizer = load_model_and_tokenizer(str(bigram_dirs["plain"]), eval_config)
    probe = [{"prompt": prompt, "answer": "0"} for prompt, *_ in CASES]
    predictions = greedy_accuracy(model, tokenizer, probe, eval_config)["predictions"]
    # The model really behaves as designed (so the answers below are right or wrong on purpose).
    assert [p["completion"] for p in predictions] == [c for _, c, _, _ in CASES]
    assert [p["num_tokens"] for p in predictions] == [n for _, _, n, _ in CASES]
    path = tmp_path_factory.mktemp("eval") / "known.jsonl"
    write_jsonl(path, [{"prompt": prompt, "answer": answer} for prompt, _, _, answer in CASES])
    return path


def test_greedy_accuracy_in_process(bigram_dirs, eval_file, eval_config):
    model, tokenizer = load_model_and_tokenizer(str(bigram_dirs["plain"]), eval_config)
    result = greedy_accuracy(model, tokenizer, load_jsonl(eval_file), eval_config)
    assert result["accuracy"] == EXPECTED_ACCURACY
    assert result["per_operation"] == EXPECTED_PER_OPERATION
    assert result["mean_completion_tokens"] == pytest.approx(EXPECTED_MEAN_TOKENS)
    assert [p["predicted"] for p in result["predictions"]] == [6789, 89, 9, 12345678, None, 12345678]
    assert [p["correct"] for p in result["predictions"]] == [True, False, True, True, False, False]


def test_batched_greedy_equals_one_prompt_at_a_time():
    """Left padding must not change a greedy answer: a random model (large init, so answers differ by prompt)
    decoded in one padded batch and one prompt at a time gives the same completions."""
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    examples = load_jsonl(REPO_ROOT / "data/tiny_ood.jsonl")[::10]  # mixed phrasings: many prompt lengths
    assert len({len(e["prompt"]) for e in examples}) > 5
    config = {"prompt_format": "plain", "max_prompt_length": 64, "max_completion_length": 8, "eval_batch_size": 64}
    batched = greedy_accuracy(model, tokenizer, examples, config, batch_size=64)["predictions"]
    single = greedy_accuracy(model, tokenizer, examples, config, batch_size=1)["predictions"]
    assert len({p["completion"] for p in single}) > 5  # the check is not vacuous
    assert [p["completion"] for p in batched] == [p["completion"] for p in single]


def test_evaluate_script_reports_known_accuracy(bigram_dirs, eval_file, tmp_path, script_runner):
    output = tmp_path / "out" / "results.json"
    returncode, stdout, stderr = script_runner(
        "evaluate.py", "--config", TINY_CONFIG, "--ckpt", bigram_dirs["plain"], "--ckpt", bigram_dirs["chat"],
        "--eval_file", eval_file, "--output", output)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr

    results = json.loads(output.read_text())
    assert set(results) == {"results"}
    assert len(results["results"]) == 2
    plain, chat = results["results"]
    for r in (plain, chat):
        assert set(r) == SUMMARY_KEYS
        assert r["eval_file"] == str(eval_file) and r["num_examples"] == len(CASES)
    assert plain["ckpt"] == str(bigram_dirs["plain"])
    assert plain["accuracy"] == EXPECTED_ACCURACY
    assert plain["per_operation"] == EXPECTED_PER_OPERATION
    assert plain["mean_completion_tokens"] == pytest.approx(EXPECTED_MEAN_TOKENS)
    # The chat checkpoint is prompted with its saved prompt_format: every prompt ends in "assistant:",
    # a non-digit, so every answer is 12345678 and only the 4th item is right.
    assert chat["ckpt"] == str(bigram_dirs["chat"])
    assert chat["accuracy"] == pytest.approx(1 / 6)
    assert chat["per_operation"] == {"+": 0.0, "-": 0.0, "*": 0.0, "/": 1.0}
    assert chat["mean_completion_tokens"] == 8.0

    predictions = [json.loads(line) for line in (tmp_path / "out" / "results.predictions.jsonl").read_text()
                   .splitlines()]
    assert len(predictions) == 2 * len(CASES)
    first = predictions[: len(CASES)]
    assert [p["completion"] for p in first] == [c for _, c, _, _ in CASES]
    assert [p["correct"] for p in first] == [True, False, True, True, False, False]
    assert all(p["ckpt"] == str(bigram_dirs["plain"]) and p["eval_file"] == str(eval_file) for p in first)
    assert {"prompt", "answer", "operation", "predicted", "num_tokens"} <= set(first[0])
    assert [p["completion"] for p in predictions[len(CASES):]] == ["12345678"] * len(CASES)

    # The markdown table on stdout has one row per (checkpoint, eval file).
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and str(eval_file) in line]
    assert len(rows) == 2 and "| 0.500 | 6 |" in rows[0]
    assert f"results: {output}" in stdout


# ---------------------------------------------------------------------------------------------------------
# inference_sft.py
# ---------------------------------------------------------------------------------------------------------

def test_inference_answers_a_prompt_argument(bigram_dirs, script_runner):
    returncode, stdout, stderr = script_runner(
        "inference_sft.py", "--config", TINY_CONFIG, "--ckpt", bigram_dirs["plain"], CASES[0][0])
    assert returncode == 0, stderr
    assert stdout.splitlines() == [CASES[0][0], "  -> '6789'  (extracted answer: 6789)"]


def test_inference_reads_prompts_from_stdin(bigram_dirs, in_process_runner, monkeypatch):
    # Run in this process (a second interpreter start costs seconds); stdin is a pipe, not a terminal.
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{CASES[1][0]}\n\n{CASES[2][0]}\n"))  # blank line skipped
    returncode, stdout, stderr = in_process_runner(
        "inference_sft.py", "--config", TINY_CONFIG, "--ckpt", bigram_dirs["plain"])
    assert returncode == 0, stderr
    assert stdout.splitlines() == [CASES[1][0], "  -> '89'  (extracted answer: 89)",
                                   CASES[2][0], "  -> '9'  (extracted answer: 9)"]


def test_sampled_diversity_shares_its_batches_between_processes(micro_model_and_tokenizer, micro_config, monkeypatch):
    """`--samples` on 2 processes: each process samples only its share of the batches, and their texts, put
    together, are those one process samples (each batch is seeded by its index, not by what came before it)."""
    import evaluate
    from mathrl import distributed

    model, tokenizer = micro_model_and_tokenizer
    examples = load_jsonl(REPO_ROOT / "data/tiny_eval.jsonl")[:10]
    config = {**micro_config, "eval_batch_size": 8}  # 4 prompts x K=2 samples per generate call: batches 4, 4, 2
    prompted = []
    complete = evaluate.complete

    def recording_complete(model, tokenizer, prompts, *args, **kwargs):
        prompted.append(prompts)
        return complete(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(evaluate, "complete", recording_complete)

    def sample(rank: int, processes: int) -> tuple[list[str], list[list[str]]]:
        """(the prompts process `rank` of `processes` sampled, its completion texts before the gather)."""
        monkeypatch.setattr(distributed, "process_count", lambda: processes)
        monkeypatch.setattr(distributed, "process_index", lambda: rank)
        monkeypatch.setattr(distributed, "gather_object", lambda items: items)  # this process's items only
        monkeypatch.setattr(evaluate, "diversity_metrics", lambda texts, examples: {})  # a share is not scored alone
        prompted.clear()
        _, texts = evaluate.sampled_diversity(model, tokenizer, examples, config, k=2, temperature=1.0, top_p=1.0)
        return [p for batch in prompted for p in batch], texts

    one_prompts, one_texts = sample(0, 1)
    shares = [sample(rank, 2) for rank in (0, 1)]
    prompts = [e["prompt"] for e in examples]
    assert one_prompts == prompts
    assert [s[0] for s in shares] == [prompts[:8], prompts[8:]]  # two batches and one: nothing sampled twice
    assert shares[0][1] + shares[1][1] == one_texts
    assert len({t for texts in one_texts for t in texts}) > 3  # the samples vary: the check can fail
