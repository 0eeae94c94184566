"""Tests for train_sft.py: label masks token by token, a few-step smoke run on the micro model (every parameter
changes, checkpoint layout, metrics), checkpoint round trip, refusal to overwrite a run, and determinism."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY_CONFIG, assert_user_error, last_line, start_script
from mathrl.checkpoint import save_checkpoint
from mathrl.config import load_saved_config
from mathrl.data import load_jsonl, read_jsonl, write_jsonl
from mathrl.errors import UserError
from mathrl.prompts import encode_example
from train_sft import collate

REPO_ROOT = Path(__file__).resolve().parent.parent
IGNORE = -100
EXAMPLES = [
    {"prompt": "What is 1 + 2? Answer with an integer.", "answer": "3"},
    {"prompt": "What is 12 * 11? Answer with an integer.", "answer": "132"},
    {"prompt": "What is 100 - 1? Answer with an integer.", "answer": "99"},
]


# ---------------------------------------------------------------------------------------------------------
# Label masks through collate, on real encoded examples
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_collate_masks_prompt_and_padding_token_by_token(micro_tokenizer, micro_config, prompt_format):
    tok = micro_tokenizer
    config = {**micro_config, "prompt_format": prompt_format}
    encoded = [encode_example(tok, e, config) for e in EXAMPLES]
    batch = collate(encoded, tok.pad_token_id, "completion")
    widths = [len(p) + len(c) for p, c in encoded]
    assert len(set(widths)) == 3  # rows of different lengths, so right padding is exercised
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(widths))
    space = " " if prompt_format == "plain" else ""
    for row, ((p, c), example) in enumerate(zip(encoded, EXAMPLES)):
        ids, labels, mask = (batch[k][row].tolist() for k in ("input_ids", "labels", "attention_mask"))
        n_p, n_c = len(p), len(c)
        pad = len(ids) - n_p - n_c
        assert ids == p + c + [tok.pad_token_id] * pad
        assert mask == [1] * (n_p + n_c) + [0] * pad
        assert labels[:n_p] == [IGNORE] * n_p  # prompt: no loss
        assert labels[n_p:n_p + n_c] == c  # answer tokens and EOS: loss
        assert labels[n_p + n_c - 1] == tok.eos_token_id
        assert tok.decode(labels[n_p:n_p + n_c - 1]) == space + example["answer"]
        assert labels[n_p + n_c:] == [IGNORE] * pad  # right padding: no loss


def test_collate_loss_on_all_keeps_prompt(micro_tokenizer, micro_config):
    tok = micro_tokenizer
    encoded = [encode_example(tok, e, micro_config) for e in EXAMPLES]
    batch = collate(encoded, tok.pad_token_id, "all")
    for row, (p, c) in enumerate(encoded):
        labels = batch["labels"][row].tolist()
        pad = len(labels) - len(p) - len(c)
        assert labels == p + c + [IGNORE] * pad
        assert labels[0] == tok.bos_token_id


def test_model_loss_is_cross_entropy_on_answer_tokens_only(micro_model_and_tokenizer, micro_config):
    """The labels are not shifted by collate: the model's loss must equal next-token cross entropy on the
    positions that predict answer tokens and EOS, computed here directly."""
    model, tok = micro_model_and_tokenizer
    encoded = [encode_example(tok, e, micro_config) for e in EXAMPLES]
    batch = collate(encoded, tok.pad_token_id, "completion")
    with torch.no_grad():
        out = model(**batch)
    logp = F.log_softmax(out.logits.float(), dim=-1)  # [B, T, V]
    terms = []
    for row, (p, c) in enumerate(encoded):
        for j, target in enumerate(c):
            position = len(p) + j  # the token at `position` is predicted from position - 1
            terms.append(-logp[row, position - 1, target])
    expected = torch.stack(terms).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5), (out.loss, expected)


# ---------------------------------------------------------------------------------------------------------
# Few-step smoke runs (two identical runs side by side, for the determinism check)
# ---------------------------------------------------------------------------------------------------------

TIMING_KEYS = {"tokens_per_s", "elapsed_s", "eval_seconds"}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, micro_model_dir, micro_overrides):
    """Two runs of train_sft.py with the same config and seed into two directories: (dir_a, dir_b, args)."""
    root = tmp_path_factory.mktemp("sft")
    write_jsonl(root / "train.jsonl", load_jsonl(REPO_ROOT / "data/tiny_train.jsonl")[:32])
    write_jsonl(root / "eval.jsonl", load_jsonl(REPO_ROOT / "data/tiny_eval.jsonl")[:8])
    write_jsonl(root / "ood.jsonl", load_jsonl(REPO_ROOT / "data/tiny_ood.jsonl")[:4])
    args = ["--config", TINY_CONFIG, *micro_overrides, "--train_file", root / "train.jsonl",
            "--eval_file", root / "eval.jsonl", "--ood_eval_file", root / "ood.jsonl", "--max_steps", "3",
            "--batch_size", "8", "--eval_every", "3", "--log_every", "1", "--warmup_steps", "0"]
    dirs = [root / "run_a", root / "run_b"]
    procs = [start_script("train_sft.py", *args, "--output_dir", d) for d in dirs]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
    return dirs[0], dirs[1], args


def test_smoke_metrics(sft_runs):
    run_a, _, _ = sft_runs
    records = read_jsonl(run_a / "metrics.jsonl")
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in losses)
    assert all(math.isfinite(r["grad_norm"]) for r in losses)
    # The rate each logged step's update used: cosine over 3 steps with no warmup, lr 3e-3 (configs/tiny.yaml):
    # 3e-3 * 0.5 * (1 + cos(pi * k / 3)) for k = 0, 1, 2 -> 3e-3, 2.25e-3, 0.75e-3.
    assert [r["lr"] for r in losses] == pytest.approx([3e-3, 2.25e-3, 0.75e-3])
    evals = [r for r in records if "eval_accuracy" in r]
    assert len(evals) == 1 and evals[0]["step"] == 3
    assert 0.0 <= evals[0]["eval_accuracy"] <= 1.0 and 0.0 <= evals[0]["ood_accuracy"] <= 1.0
    assert 1 <= evals[0]["eval_completion_tokens"] <= 8  # max_completion_length of configs/tiny.yaml
    samples = read_jsonl(run_a / "eval_samples.jsonl")
    assert {s["eval_set"] for s in samples} == {"eval", "ood"}
    assert all(s["step"] == 3 for s in samples)


def test_smoke_final_checkpoint_layout(sft_runs):
    run_a, _, _ = sft_runs
    final = run_a / "final"
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.yaml",
            "training_state.pt", "summary.json"} <= names
    assert not [p for p in run_a.iterdir() if ".tmp" in p.name]  # the temporary directory was renamed away
    config = load_saved_config(final)
    assert config["max_steps"] == 3 and config["batch_size"] == 8 and config["tiny_hidden_size"] == 32
    assert config["output_dir"] == str(run_a)
    summary = json.loads((final / "summary.json").read_text())
    assert summary["step"] == 3
    evals = [r for r in read_jsonl(run_a / "metrics.jsonl") if "eval_accuracy" in r]
    assert summary["final_eval_accuracy"] == evals[-1]["eval_accuracy"]
    state = torch.load(final / "training_state.pt", weights_only=False)
    assert state["step"] == 3
    assert state["scheduler"]["last_epoch"] == 3
    assert len(state["optimizer"]["state"]) > 0
    assert {"python", "torch"} <= set(state["rng"])
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template is not None and tokenizer.eos_token == "</s>"


def test_smoke_every_parameter_changed(sft_runs, micro_model_dir):
    run_a, _, _ = sft_runs
    initial = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.float32)
    trained = AutoModelForCausalLM.from_pretrained(run_a / "final", dtype=torch.float32)
    before, after = dict(initial.named_parameters()), dict(trained.named_parameters())
    assert before.keys() == after.keys() and len(before) > 10
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters not updated by training: {unchanged}"
    assert all(torch.isfinite(p).all() for p in after.values())


def test_same_config_and_seed_give_same_run(sft_runs):
    run_a, run_b, _ = sft_runs
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]  # noqa: E731
    metrics_a, metrics_b = read_jsonl(run_a / "metrics.jsonl"), read_jsonl(run_b / "metrics.jsonl")
    assert strip(metrics_a) == strip(metrics_b)
    assert [r["loss"] for r in metrics_a if "loss" in r] == [r["loss"] for r in metrics_b if "loss" in r]
    model_a = AutoModelForCausalLM.from_pretrained(run_a / "final")
    model_b = AutoModelForCausalLM.from_pretrained(run_b / "final")
    for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(a, b), name


def test_rerun_into_same_output_dir_fails_and_keeps_earlier_run(sft_runs, script_runner):
    run_a, _, args = sft_runs

    def snapshot():
        files = sorted(p for p in run_a.rglob("*") if p.is_file())
        return {str(p.relative_to(run_a)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
                for p in files}

    before = snapshot()
    returncode, stdout, stderr = script_runner("train_sft.py", *args, "--output_dir", run_a)
    assert_user_error(returncode, stderr, str(run_a), "already holds an earlier run", "final")
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, nothing else
    assert last_line(stderr) == stderr.strip()
    assert snapshot() == before


# ---------------------------------------------------------------------------------------------------------
# Checkpoint I/O
# ---------------------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_gives_identical_logits(tmp_path, micro_model_dir, micro_config):
    from mathrl.modeling import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(micro_model_dir), micro_config)
    torch.manual_seed(1)
    with torch.no_grad():  # move away from the seeded init, so only the saved weights can reproduce these
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    target = save_checkpoint(tmp_path, "final", model, tok, micro_config, summary={"step": 0})
    assert target == tmp_path / "final"
    assert load_saved_config(target) == micro_config
    assert not (target / "training_state.pt").exists()  # none was given

    loaded = AutoModelForCausalLM.from_pretrained(target).eval()
    loaded_tok = AutoTokenizer.from_pretrained(target)
    encoded = [encode_example(loaded_tok, e, micro_config) for e in EXAMPLES]
    assert encoded == [encode_example(tok, e, micro_config) for e in EXAMPLES]
    batch = collate(encoded, loaded_tok.pad_token_id, "completion")
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        actual = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(expected, actual)
    assert loaded_tok.chat_template == tok.chat_template
    assert (loaded_tok.bos_token_id, loaded_tok.eos_token_id, loaded_tok.pad_token_id) == \
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)

    with pytest.raises(UserError, match="already exists; refusing to overwrite"):
        save_checkpoint(tmp_path, "final", model, tok, micro_config)
