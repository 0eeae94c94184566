"""GRPO trainer integration tests (train_grpo.py): log-prob alignment, masks, layout, loss equivalence, CLI runs.

mathrl/objectives.py's pure functions are tested on hand-computed numbers in test_objectives.py; here the trainer's
own glue is checked against independent computations on a micro built-in Llama (hidden 32, 2 layers), CPU only:
- the log-probs the loss trains on equal a plain forward pass of each row alone (no padding), and the scores
  generate() sampled from;
- completion masks, attention masks and the prompt-by-prompt row layout, token by token;
- `loss_type clipped` with one update per generation is exactly the paper's loss (same updated weights);
- the script itself: metrics.jsonl keys, eval lines, weights that change, KL 0 at learning rate 0, the
  checkpoint's prompt format winning, config errors, and bit-identical reruns.

The script runs as a subprocess, several side by side (module fixture `cli`), because each one spends seconds
importing torch; the in-process tests run meanwhile. The rerun for reproducibility and all but one of the
config-error cases run the script's `__main__` block in this process (conftest's `in_process_runner`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, set_seed

import train_grpo
from mathrl.checkpoint import save_checkpoint
from mathrl.config import resolve_config
from mathrl.generation import generation_config
from mathrl.modeling import builtin_model_dir, load_model_and_tokenizer, make_accelerator
from mathrl.prompts import prompt_ids
from mathrl.objectives import group_advantages
from mathrl.rewards import MathRewardModel, length_score
from mathrl.timing import PhaseTimer

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = str(REPO_ROOT / "configs" / "tiny.yaml")
MICRO = ["--model_name", "builtin:tiny", "--tiny_hidden_size", "32", "--tiny_num_layers", "2", "--tiny_num_heads",
         "2", "--tiny_intermediate_size", "64"]  # the random init: configs/tiny.yaml's base would be pretrained first
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "TQDM_DISABLE": "1"}

G = 4  # group size of the in-process rollouts
L = 6  # max_completion_length of the in-process rollouts
# Prompts of three different lengths, so every rollout has left padding.
BATCH = [
    {"prompt": "What is 3 + 4? Answer with an integer.", "answer": "7"},
    {"prompt": "What is 7 - 2?", "answer": "5"},
    {"prompt": "What is 12 * 15? Answer with an integer.", "answer": "180"},
]
EOS_BIAS = 4.0  # logit of EOS in the sharpened model: about 1 completion in 2 stops early

# Keys every GRPO metrics line must carry, each a finite number.
DOCUMENTED_KEYS = (
    "reward_mean", "reward_std", "train_accuracy", "reward_correctness", "reward_format", "reward_length",
    "advantage_std", "zero_std_group_fraction", "kl", "kl_sequence", "loss", "completion_length_mean", "completion_length_max",
    "truncated_fraction", "grad_norm", "lr", "step_seconds", "generation_share", "generated_tokens_per_s",
    "entropy", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "masked_truncated_completions",
    "generation_rounds", "groups_drawn", "groups_dropped", "groups_unused", "generated_tokens",
)
# Wall-clock measurements: the only metrics allowed to differ between two identical runs.
TIMING_KEYS = {"step_seconds", "elapsed_s", "generation_seconds", "generation_share", "generated_tokens_per_s",
               "eval_seconds"}


# ---------------------------------------------------------------------------------------------------------
# The script's runs. They start with the first test below (config validation, in this process) and go on in
# the background while the in-process tests run; the tests that read their results come last.
# 8. Config validation
# ---------------------------------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_lines(name: str, n: int) -> list[dict]:
    return read_jsonl(REPO_ROOT / "data" / name)[:n]


# Equal-length prompts, so the number of prompt tokens a step attends to does not depend on which are drawn.
CHAT_TRAIN = [{"prompt": f"What is {a} + {b}? Answer with an integer.", "answer": str(a + b)}
              for a, b in [(1, 2), (3, 4), (5, 1), (2, 6)]]


# One invalid setting each; the error message must name the key.
INVALID = {
    "num_iterations": ["--num_iterations", "2", "--loss_type", "paper"],  # stale samples need the clipped loss
    "advantage_mode": ["--advantage_mode", "foo"],
    "group_size": ["--group_size", "1"],  # no group to be relative to
}


def run_grpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train_grpo.py", *map(str, args)], cwd=REPO_ROOT, env=ENV,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict:
    """Start every train_grpo.py run of this module at once (3 at a time); tests wait on the one they read.

    Returns {"dir": tmp dir, "chat_ckpt": path, "micro_args" / "smoke_args": [...], run name:
    Future[CompletedProcess], ...}; run NAME writes to dir/NAME."""
    tmp = tmp_path_factory.mktemp("grpo_cli")
    data = ["--train_file", write_jsonl(tmp / "train.jsonl", first_lines("tiny_train.jsonl", 8)),
            "--eval_file", write_jsonl(tmp / "eval.jsonl", first_lines("tiny_eval.jsonl", 4)),
            "--ood_eval_file", write_jsonl(tmp / "ood.jsonl", first_lines("tiny_ood.jsonl", 4))]
    micro = ["--config", TINY_CONFIG, *MICRO, *data, "--max_completion_length", "4", "--warmup_steps", "0",
             "--save_every", "0", "--temperature", "1.0"]
    # The untrained model is never right, but its random completions differ in format (does the text end on
    # a number?) and length (did it stop?). With those terms on and 4 x 8 completions a step, some group has
    # reward variance, so the policy gradient is not zero and the weights move.
    shaped = [*micro, "--batch_size", "4", "--group_size", "8", "--format_reward_weight", "1.0",
              "--length_reward_weight", "1.0"]
    smoke = [*shaped, "--num_train_steps", "2", "--eval_every", "2", "--learning_rate", "1e-2"]

    # A checkpoint saved with prompt_format chat (as an SFT run with that format would leave it).
    chat_config = micro_config("--prompt_format", "chat")
    model, tokenizer = load_model_and_tokenizer(str(builtin_model_dir(chat_config)), chat_config)
    chat_ckpt = save_checkpoint(tmp / "sft_chat", "final", model, tokenizer, chat_config)

    runs = {
        "error_group_size": [*micro, *INVALID["group_size"]],
        "smoke": smoke,
        # One run for two checks (each run costs seconds of imports): KL at lr 0, and the chat checkpoint's
        # prompt format winning over --prompt_format plain. Temperature 0.7, so a reference scored at another
        # temperature than the policy shows up as KL.
        "lr0_chat": [*shaped, "--train_file", write_jsonl(tmp / "chat_train.jsonl", CHAT_TRAIN), "--init_from",
                     str(chat_ckpt), "--prompt_format", "plain", "--num_train_steps", "3", "--eval_every", "3",
                     "--learning_rate", "0", "--kl_coeff", "0.05", "--temperature", "0.7"],
    }
    pool = ThreadPoolExecutor(max_workers=3)
    futures: dict = {"dir": tmp, "chat_ckpt": chat_ckpt, "micro_args": micro, "smoke_args": smoke}
    for name, args in runs.items():
        futures[name] = pool.submit(run_grpo, *args, "--output_dir", tmp / name)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def finished(cli: dict, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    future: Future = cli[name]
    proc = future.result()
    return proc, cli["dir"] / name


def finished_ok(cli: dict, name: str) -> Path:
    proc, out = finished(cli, name)
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return out


def assert_one_line_error(returncode: int, stderr: str, fragment: str, output_dir: Path) -> None:
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, (returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], stderr
    assert not output_dir.exists(), "a rejected config must not create the output directory"


@pytest.mark.parametrize("key", list(INVALID))
def test_invalid_grpo_config_is_a_one_line_error(cli, in_process_runner, key):
    """Run in this process (the script's own `__main__` block, as conftest's runner does): a subprocess each
    would cost seconds of imports. test_invalid_config_from_a_real_process checks one case as a subprocess."""
    output_dir = cli["dir"] / f"rejected_{key}"
    code, _, stderr = in_process_runner("train_grpo.py", *cli["micro_args"], *INVALID[key],
                                        "--output_dir", output_dir)
    assert_one_line_error(code, stderr, key, output_dir)


# ---------------------------------------------------------------------------------------------------------
# In-process model: the micro built-in Llama, sharpened so that padding, positions and EOS all matter
# ---------------------------------------------------------------------------------------------------------

def micro_config(*overrides: str) -> dict:
    return resolve_config("grpo", TINY_CONFIG, [*MICRO, *overrides])


@pytest.fixture(scope="module")
def policy():
    """(model, tokenizer, config). The seeded init (std 0.02) gives near-uniform attention and logits, under
    which a wrong mask, offset or position barely moves a log-prob; weights of std 0.3 make attention sharp.
    An untied output layer with a bias on EOS makes about half the completions stop early, so masks are
    exercised. Shared: tests that train take a deepcopy.

    (Rotary position embeddings depend only on relative positions, so shifting a whole row's positions by its
    left padding leaves its log-probs unchanged up to rounding; positions matter when the completion tokens
    are run apart from their prompt, as sequence_logprobs does for groups.)"""
    config = micro_config("--max_completion_length", str(L), "--group_size", str(G), "--top_p", "1.0")
    model, tokenizer = load_model_and_tokenizer(str(builtin_model_dir(config)), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        embeddings = model.get_input_embeddings().weight  # [V, H]
        head = torch.nn.Linear(embeddings.shape[1], embeddings.shape[0], bias=True)
        head.weight = torch.nn.Parameter(embeddings.detach().clone())
        head.weight[tokenizer.eos_token_id] = 0.0
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = EOS_BIAS
    model.lm_head = head
    model.train()
    return model, tokenizer, config


def unpadded_prompts(tokenizer, config) -> list[list[int]]:
    return [prompt_ids(tokenizer, e["prompt"], config["prompt_format"], config["max_prompt_length"]) for e in BATCH]


def sample(model, tokenizer, config, temperature: float, seed: int = 0):
    """train_grpo.generate_rollout with its one generate() call also returning the raw logits and the processed scores.

    Returns (rollout, raw logits [N, L, V], scores [N, L, V])."""
    captured = {}
    generate = model.generate

    def generate_with_scores(generation_config, **kwargs):
        generation_config = copy.deepcopy(generation_config)
        generation_config.update(output_logits=True, output_scores=True, return_dict_in_generate=True)
        out = generate(generation_config=generation_config, **kwargs)
        captured["logits"] = torch.stack(out.logits, dim=1).float()  # [N, L, V]
        captured["scores"] = torch.stack(out.scores, dim=1).float()  # [N, L, V]
        return out.sequences

    gen_config = generation_config(tokenizer, config["max_completion_length"], True, temperature, 1.0)
    model.generate = generate_with_scores
    try:
        set_seed(seed)
        rollout = train_grpo.generate_rollout(model, tokenizer, BATCH, config, gen_config)
    finally:
        del model.generate
    return rollout, captured["logits"], captured["scores"]


def kept_completion(rollout, row: int, eos_id: int) -> list[int]:
    """The completion ids of a row up to and including its first EOS (all of them without one)."""
    ids = rollout.sequences[row, rollout.prompt_width:].tolist()
    return ids[:ids.index(eos_id) + 1] if eos_id in ids else ids


def direct_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits[t] / T)[ids[t+1]] over the completion, from a forward pass of this row alone."""
    ids = torch.tensor([prompt + completion])  # [1, T], no padding, default positions 0..T-1
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float() / temperature, dim=-1)  # [T, V]
    return torch.stack([logp[t, ids[0, t + 1]] for t in range(len(prompt) - 1, ids.shape[1] - 1)])  # [len(c)]


# sequence_logprobs runs a prompt shared by a group's rows once (rows "groups": the rollout as generated) and
# takes a plain one-pass forward when no two rows share a prompt (rows "distinct": one row per prompt).
ROW_SETS = ["groups", "distinct"]


def select_rows(rollout, rows: str) -> tuple[train_grpo.Rollout, list[int]]:
    """The rollout itself, or one row of each group; returns (rollout, original row index of each row)."""
    index = list(range(rollout.sequences.shape[0])) if rows == "groups" else list(range(0, len(BATCH) * G, G))
    picked = train_grpo.Rollout(rollout.sequences[index], rollout.attention_mask[index], rollout.prompt_width,
                                rollout.mask[index], [rollout.texts[i] for i in index])
    return picked, index


# ---------------------------------------------------------------------------------------------------------
# 1. Log-probs of the training path
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", ROW_SETS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprobs_equal_each_row_run_alone(policy, temperature, rows):
    model, tokenizer, config = policy
    rollout, _, _ = sample(model, tokenizer, {**config, "temperature": temperature}, temperature)
    rollout, index = select_rows(rollout, rows)
    prompts = unpadded_prompts(tokenizer, config)
    assert len({len(p) for p in prompts}) == len(prompts), "prompts must differ in length (left padding)"
    with torch.no_grad():
        logp = train_grpo.sequence_logprobs(model, rollout, temperature)  # [N, L]
        assert logp.shape == rollout.mask.shape
        for row, original in enumerate(index):
            completion = kept_completion(rollout, row, tokenizer.eos_token_id)
            expected = direct_logprobs(model, prompts[original // G], completion, temperature)
            torch.testing.assert_close(logp[row, :len(completion)], expected, atol=1e-5, rtol=0,
                                       msg=lambda m: f"row {original} (prompt {original // G}): {m}")


@pytest.mark.parametrize("rows", ROW_SETS)
def test_sequence_logprobs_gradient_equals_each_row_run_alone(policy, rows):
    """The gradient of a weighted sum of the kept log-probs reaches every parameter as it does through the
    per-row forward passes (including through a prompt whose computation the group's rows share)."""
    model, tokenizer, config = policy
    rollout, _, _ = sample(model, tokenizer, config, 0.7)
    rollout, index = select_rows(rollout, rows)
    prompts = unpadded_prompts(tokenizer, config)
    weights = torch.randn(rollout.mask.shape, generator=torch.Generator().manual_seed(3))  # [N, L]
    params = dict(model.named_parameters())

    logp = train_grpo.sequence_logprobs(model, rollout, 0.7)  # [N, L]
    kept = torch.where(rollout.mask.bool(), logp * weights, torch.zeros_like(logp))  # [N, L]
    batched = dict(zip(params, torch.autograd.grad(kept.sum(), list(params.values()))))
    total = 0.0
    for row, original in enumerate(index):
        completion = kept_completion(rollout, row, tokenizer.eos_token_id)
        direct = direct_logprobs(model, prompts[original // G], completion, 0.7)  # [len(completion)]
        total = total + (direct * weights[row, :len(completion)]).sum()
    alone = dict(zip(params, torch.autograd.grad(total, list(params.values()))))
    assert any(g.abs().max() > 1e-3 for g in alone.values())
    for name in params:
        # Gradients here reach ~30; float32 summation order alone moves them by ~1e-6 of that.
        error = (batched[name] - alone[name]).abs().max().item()
        assert error <= 1e-5 * (1.0 + alone[name].abs().max().item()), (name, error)


def test_direct_computation_would_catch_offset_and_padding_bugs(policy):
    """Control for the test above: scoring token t with logits[t], or letting the prompt attend to its left
    padding, moves the log-probs far beyond atol, so the comparison can fail."""
    model, tokenizer, config = policy
    rollout, _, _ = sample(model, tokenizer, config, 1.0)
    prompts = unpadded_prompts(tokenizer, config)
    with torch.no_grad():
        logp = train_grpo.sequence_logprobs(model, rollout, 1.0)  # [N, L]
        no_mask = model(input_ids=rollout.sequences).logits.float()  # [N, P+L, V] padding attended to
    padded_row = next(r for r in range(len(rollout.texts)) if len(prompts[r // G]) < rollout.prompt_width)
    completion = rollout.sequences[padded_row, rollout.prompt_width:]  # [L]
    n = len(kept_completion(rollout, padded_row, tokenizer.eos_token_id))
    width = rollout.prompt_width
    ids = torch.tensor([prompts[padded_row // G] + completion.tolist()])
    with torch.no_grad():
        alone = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [T, V]
    start = len(prompts[padded_row // G])
    off_by_one = alone[start:start + n].gather(-1, ids[0, start:start + n, None]).squeeze(-1)  # logits[t] at t
    attends_padding = off_by_one.new_tensor(
        [torch.log_softmax(no_mask[padded_row, width + t - 1], -1)[completion[t]] for t in range(n)])
    assert (off_by_one - logp[padded_row, :n]).abs().max() > 1e-2
    assert (attends_padding - logp[padded_row, :n]).abs().max() > 1e-2


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprobs_equal_generate_scores(policy, temperature):
    """The policy that is trained is the one that sampled: generate()'s own scores (raw logits at T = 1, the
    temperature-warped scores otherwise; top_p 1, top_k 0) at the sampled ids equal sequence_logprobs."""
    model, tokenizer, config = policy
    rollout, raw_logits, scores = sample(model, tokenizer, {**config, "temperature": temperature}, temperature)
    sampled = rollout.sequences[:, rollout.prompt_width:]  # [N, L]
    generated = raw_logits if temperature == 1.0 else scores  # [N, L, V]
    expected = torch.log_softmax(generated, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # [N, L]
    with torch.no_grad():
        logp = train_grpo.sequence_logprobs(model, rollout, temperature)  # [N, L]
    keep = rollout.mask.bool()
    torch.testing.assert_close(logp[keep], expected[keep], atol=1e-4, rtol=0)
    if temperature != 1.0:  # the raw logits are a different distribution: the check can tell them apart
        raw = torch.log_softmax(raw_logits, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # [N, L]
        assert (raw[keep] - logp[keep]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------
# 2-3. Rollout masks and layout
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["pad", "pad_is_eos"])
def test_rollout_masks_token_by_token(policy, pad_is_eos):
    """Completion mask 1 up to and including the first EOS, 0 after, all 1 without EOS; attention 0 exactly on
    left padding and post-EOS tokens. With pad == EOS (Llama tokenizers without a pad token fall back to
    it) the left padding and the tail after the first EOS are EOS ids too."""
    model, tokenizer, config = policy
    if pad_is_eos:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    rollout, _, _ = sample(model, tokenizer, config, 1.0)
    prompts = unpadded_prompts(tokenizer, config)
    eos, width = tokenizer.eos_token_id, rollout.prompt_width
    assert width == max(len(p) for p in prompts)
    completions = rollout.sequences[:, width:].tolist()
    num_completion = len(completions[0])
    stops = [ids.index(eos) for ids in completions if eos in ids]
    assert any(k < num_completion - 1 for k in stops), "need a completion that stops before the last token"
    assert len(stops) < len(completions), "need a completion without EOS"

    for row, ids in enumerate(completions):
        if eos in ids:
            k = ids.index(eos)
            expected_mask = [1.0] * (k + 1) + [0.0] * (num_completion - k - 1)
            expected_text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        else:
            expected_mask, expected_text = [1.0] * num_completion, tokenizer.decode(ids, skip_special_tokens=True)
        pad = width - len(prompts[row // G])
        assert rollout.mask[row].tolist() == expected_mask, (row, ids)
        assert rollout.attention_mask[row].tolist() == [0] * pad + [1] * (width - pad) + expected_mask, row
        assert rollout.sequences[row, :pad].tolist() == [tokenizer.pad_token_id] * pad
        assert rollout.texts[row] == expected_text, row  # EOS and what follows it are not part of the text


def test_rollout_rows_are_grouped_by_prompt(policy):
    """Rows i*G .. i*G+G-1 hold prompt i: its exact ids after the left padding, decoding to its text."""
    model, tokenizer, config = policy
    rollout, _, _ = sample(model, tokenizer, config, 1.0)
    prompts = unpadded_prompts(tokenizer, config)
    assert rollout.sequences.shape[0] == len(BATCH) * G
    for row in range(rollout.sequences.shape[0]):
        prompt = rollout.sequences[row, :rollout.prompt_width][rollout.attention_mask[row, :rollout.prompt_width]
                                                               .bool()].tolist()
        assert prompt == prompts[row // G], row
        assert tokenizer.decode(prompt, skip_special_tokens=True) == BATCH[row // G]["prompt"], row
    # The G completions of a prompt are sampled independently: not all copies of one another.
    for i in range(len(BATCH)):
        group = {tuple(r) for r in rollout.sequences[i * G:(i + 1) * G, rollout.prompt_width:].tolist()}
        assert len(group) > 1, f"group {i}: {G} identical completions"


SCORE_BATCH = [{"prompt": "What is 3 + 4?", "answer": "7"}, {"prompt": "What is 6 * 9?", "answer": "54"}]
SCORE_CASES = [
    # (completions of prompt 0 (answer 7), of prompt 1 (answer 54), correctness, paper advantages)
    # Every completion answers 7: right for group 0, wrong for group 1. Both groups are constant: no signal.
    ([" 7"] * 4, [" 7"] * 4, [1, 1, 1, 1, 0, 0, 0, 0], [0.0] * 8),
    # Alternating within each group; pairing rows with prompts 0,1,0,1,... would score this all wrong.
    ([" 7", " 54", " 7", " 8"], [" 54", " 7", " 7", " 54"], [1, 0, 1, 0, 1, 0, 0, 1],
     [0.5, -0.5, 0.5, -0.5, 0.5, -0.5, -0.5, 0.5]),
    # Group 0 all right (advantage 0); group 1 one right of four: mean 0.25 -> 0.75 and -0.25 three times.
    ([" 7"] * 4, [" 54", " 0", "x", " 7"], [1, 1, 1, 1, 1, 0, 0, 0],
     [0.0, 0.0, 0.0, 0.0, 0.75, -0.25, -0.25, -0.25]),
]


@pytest.mark.parametrize("group0, group1, correct, advantages", SCORE_CASES)
def test_score_pairs_each_completion_with_its_own_prompt(group0, group1, correct, advantages):
    lengths = torch.tensor([1, 2, 3, 4, 4, 3, 2, 1])  # kept tokens per row, EOS included
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).float()  # [8, L]
    rollout = train_grpo.Rollout(sequences=torch.zeros(8, 1 + L, dtype=torch.long),
                                 attention_mask=torch.ones(8, 1 + L, dtype=torch.long), prompt_width=1,
                                 mask=mask, texts=group0 + group1)
    scored = train_grpo.score(rollout, SCORE_BATCH, MathRewardModel(), group_size=4)
    assert scored["total"].tolist() == [float(c) for c in correct]
    assert scored["correct"] == [bool(c) for c in correct]
    torch.testing.assert_close(group_advantages(scored["total"], 4, "paper"), torch.tensor(advantages),
                               atol=1e-6, rtol=0)
    # The length term sees each row's own token count (from the mask, EOS included), never the text length.
    shaped = train_grpo.score(rollout, SCORE_BATCH, MathRewardModel(length_weight=0.5, max_completion_length=L),
                              group_size=4)
    expected = [c + 0.5 * length_score(bool(c), n, L) for c, n in zip(correct, lengths.tolist())]
    torch.testing.assert_close(shaped["total"], torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("correct_reward, wrong_reward", [(0.5, 0.5), (0.0, 1.0)])
def test_train_accuracy_counts_right_answers_whatever_the_reward_values(correct_reward, wrong_reward):
    """A completion is right when its answer is (mathrl.answers.is_correct), not when its reward equals
    correct_reward: with equal rewards every completion would otherwise count as right."""
    group0, group1, correct, _ = SCORE_CASES[1]
    rollout = train_grpo.Rollout(sequences=torch.zeros(8, 1 + L, dtype=torch.long),
                                 attention_mask=torch.ones(8, 1 + L, dtype=torch.long), prompt_width=1,
                                 mask=torch.ones(8, L), texts=group0 + group1)
    scored = train_grpo.score(rollout, SCORE_BATCH, MathRewardModel(correct_reward, wrong_reward), group_size=4)
    assert scored["correct"] == [bool(c) for c in correct]
    assert scored["total"].tolist() == [correct_reward if c else wrong_reward for c in correct]


# ---------------------------------------------------------------------------------------------------------
# 4. One update of the clipped loss is one update of the paper's loss
# ---------------------------------------------------------------------------------------------------------

def one_grpo_step(policy, loss_type: str, aggregation: str, **overrides) -> tuple[dict, dict, dict]:
    """One train_grpo.grpo_step from the shared weights and seed; returns (initial, updated params, record).

    Plain SGD with no gradient clipping, so the update is exactly -lr * gradient: Adam's first step is about
    lr * sign(gradient) and the default clip rescales it, both blind to a wrong gradient scale. The reference
    is a perturbed copy, so the KL term has a gradient from the first step; the length reward makes the
    rewards within a group differ, so the policy term has one too."""
    model0, tokenizer, config0 = policy
    config = {**config0, "loss_type": loss_type, "loss_aggregation": aggregation, "num_iterations": 1,
              "kl_coeff": 0.05, "kl_estimator": "squared", "advantage_mode": "paper", "max_grad_norm": 1e9,
              "length_reward_weight": 1.0, "temperature": 1.0, **overrides}
    model = copy.deepcopy(model0).train()
    reference = copy.deepcopy(model0).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    gen_config = generation_config(tokenizer, config["max_completion_length"], True, config["temperature"], 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    accelerator = make_accelerator(config)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run = train_grpo.GRPOSetup(accelerator, model, accelerator.unwrap_model(model), reference, tokenizer,
                               MathRewardModel.from_config(config), iter([]), gen_config, optimizer, scheduler)
    set_seed(config["seed"])
    timer = PhaseTimer()
    with accelerator.autocast():
        record = train_grpo.grpo_step(run, BATCH, config, timer).metrics
    # The phases bench/bench_grpo.py reads: grpo_step names them itself, so a benchmark cannot silently lose one.
    assert set(timer.seconds) == {"generation", "reward", "ref_forward", "policy_forward", "backward", "optimizer"}
    assert record["generation_seconds"] == timer.seconds["generation"]
    updated = {name: p.detach().clone() for name, p in accelerator.unwrap_model(model).named_parameters()}
    return initial, updated, record


def max_difference(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.parametrize("aggregation", ["sequence_sum", "token_mean"])
def test_clipped_single_iteration_equals_paper_loss(policy, aggregation):
    initial, paper, paper_record = one_grpo_step(policy, "paper", aggregation)
    _, clipped, clipped_record = one_grpo_step(policy, "clipped", aggregation)
    # Same samples, a real policy and KL signal, and an update that moved the weights.
    for key in ("reward_mean", "advantage_std", "kl", "completion_length_mean"):
        assert paper_record[key] == clipped_record[key], key
    assert paper_record["advantage_std"] > 0 and paper_record["kl"] > 0
    assert max_difference(paper, initial) > 1e-3
    assert clipped_record["clip_fraction"] == 0.0  # ratio exactly 1 on the first (only) update
    for name in paper:
        torch.testing.assert_close(clipped[name], paper[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def test_squared_sequence_kl_is_wired_into_the_step(policy):
    """kl_estimator squared_sequence through grpo_step (the shared-prompt fast path's log-probs): on the same samples
    as the per-token squared KL, both runs log the paper's sequence KL as kl_sequence, this one also as kl, and the
    update differs (the loss formula itself is checked by hand in tests/test_objectives.py)."""
    _, per_token, per_token_record = one_grpo_step(policy, "paper", "sequence_sum")
    _, sequence, sequence_record = one_grpo_step(policy, "paper", "sequence_sum", kl_estimator="squared_sequence")
    assert sequence_record["completion_length_mean"] == per_token_record["completion_length_mean"]  # same samples
    assert sequence_record["kl_sequence"] == per_token_record["kl_sequence"] > 0
    assert sequence_record["kl"] == sequence_record["kl_sequence"] != per_token_record["kl"]
    assert max_difference(per_token, sequence) > 1e-5


def test_mask_truncated_completions_is_wired_into_the_step(policy):
    """Same samples with and without mask_truncated_completions: the count logged is the number of truncated
    completions, and leaving them out of the loss changes the update (their exact-zero gradient is checked on
    the loss itself in tests/test_objectives.py)."""
    _, plain, plain_record = one_grpo_step(policy, "paper", "sequence_sum")
    _, masked, masked_record = one_grpo_step(policy, "paper", "sequence_sum", mask_truncated_completions=True)
    truncated = round(masked_record["truncated_fraction"] * G * len(BATCH))
    assert 0 < truncated < G * len(BATCH), "need both truncated and finished completions"
    assert masked_record["masked_truncated_completions"] == truncated
    assert plain_record["masked_truncated_completions"] == 0
    assert masked_record["entropy"] == plain_record["entropy"] > 0  # same samples, same policy
    assert max_difference(plain, masked) > 1e-4


def test_clipped_equivalence_check_can_fail(policy):
    """Control: the same comparison tells two aggregations apart."""
    _, sequence_sum, _ = one_grpo_step(policy, "paper", "sequence_sum")
    _, token_mean, _ = one_grpo_step(policy, "paper", "token_mean")
    assert max_difference(sequence_sum, token_mean) > 1e-4


# ---------------------------------------------------------------------------------------------------------
# 5-7, 9. The script's runs
# ---------------------------------------------------------------------------------------------------------

def test_invalid_config_from_a_real_process(cli):
    proc, out = finished(cli, "error_group_size")
    assert_one_line_error(proc.returncode, proc.stderr, "group_size", out)


def test_two_step_smoke_run(cli):
    out = finished_ok(cli, "smoke")
    lines = read_jsonl(out / "metrics.jsonl")
    train = [line for line in lines if "loss" in line]
    evals = [line for line in lines if "eval_accuracy" in line]
    assert [line["step"] for line in train] == [1, 2]
    for line in train:
        missing = [key for key in DOCUMENTED_KEYS if key not in line]
        assert not missing, f"step {line['step']}: missing {missing}"
        bad = {key: line[key] for key in DOCUMENTED_KEYS
               if not isinstance(line[key], (int, float)) or not math.isfinite(line[key])}
        assert not bad, f"step {line['step']}: non-finite {bad}"
        assert line["completion_length_max"] <= 4 and 0 <= line["truncated_fraction"] <= 1
    assert any(line["zero_std_group_fraction"] < 1 for line in train), "no group had reward variance"
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert 0 <= evals[0]["eval_accuracy"] <= 1 and 0 <= evals[0]["ood_accuracy"] <= 1
    assert len(read_jsonl(out / "samples.jsonl")) > 0

    # final/ loads with from_pretrained, and the update reached every parameter.
    config = micro_config("--max_completion_length", "4")
    initial = AutoModelForCausalLM.from_pretrained(str(builtin_model_dir(config)), dtype=torch.float32)
    final = AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32)
    before = dict(initial.named_parameters())
    after = dict(final.named_parameters())
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"{len(unchanged)}/{len(before)} parameters unchanged after 2 steps: {unchanged}"
    saved = yaml.safe_load((out / "final" / "config.yaml").read_text())
    assert saved["num_train_steps"] == 2 and saved["group_size"] == 8


def test_learning_rate_zero_keeps_kl_exactly_zero(cli):
    """At lr 0 the policy stays the reference, so the KL must be exactly 0, not merely small: the policy's and
    the reference's log-probs go through the same code path. The advantages are non-zero (shaped reward), so
    the policy term does have a gradient."""
    out = finished_ok(cli, "lr0_chat")
    train = [line for line in read_jsonl(out / "metrics.jsonl") if "loss" in line]
    assert [line["step"] for line in train] == [1, 2, 3]
    assert [line["kl"] for line in train] == [0.0, 0.0, 0.0]
    assert all(line["lr"] == 0.0 and math.isfinite(line["loss"]) for line in train)
    assert any(line["advantage_std"] > 0 for line in train), "no reward variance: nothing was tested"
    assert any(line["grad_norm"] > 0 for line in train)


def test_init_from_chat_checkpoint_uses_chat_format(cli):
    """A checkpoint trained with prompt_format chat is prompted in chat format, whatever the command line says:
    the saved config records it, and the prompt tokens the steps attended to are the chat-formatted ones."""
    out = finished_ok(cli, "lr0_chat")
    saved = yaml.safe_load((out / "final" / "config.yaml").read_text())
    assert saved["prompt_format"] == "chat"
    assert saved["init_from"] == str(cli["chat_ckpt"])

    # tokens_seen sums the attention mask: every row's prompt tokens plus its kept completion tokens.
    _, tokenizer = load_model_and_tokenizer(str(cli["chat_ckpt"]), micro_config())
    chat_len, plain_len = (len(prompt_ids(tokenizer, CHAT_TRAIN[0]["prompt"], fmt, 64)) for fmt in ("chat", "plain"))
    assert chat_len != plain_len
    rows = saved["batch_size"] * saved["group_size"]
    train = [line for line in read_jsonl(out / "metrics.jsonl") if "loss" in line]
    expected = sum(rows * chat_len + round(line["completion_length_mean"] * rows) for line in train)
    summary = json.loads((out / "final" / "summary.json").read_text())
    assert summary["tokens_seen"] == expected


def test_same_seed_same_run(cli, in_process_runner):
    """The smoke run again, in this process (no second torch import), gives the same numbers, samples and
    weights: everything but wall-clock timings is a function of the config and seed."""
    first = finished_ok(cli, "smoke")
    second = cli["dir"] / "smoke_again"
    code, _, stderr = in_process_runner("train_grpo.py", *cli["smoke_args"], "--output_dir", second)
    assert code == 0, stderr[-3000:]

    def without_timing(path: Path) -> list[dict]:
        return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in read_jsonl(path)]

    a, b = without_timing(first / "metrics.jsonl"), without_timing(second / "metrics.jsonl")
    assert a == b
    assert any(line.get("loss", 0.0) != 0.0 for line in a), "an all-zero loss would make this check vacuous"
    assert read_jsonl(first / "samples.jsonl") == read_jsonl(second / "samples.jsonl")
    weights_a = load_file(str(first / "final" / "model.safetensors"))
    weights_b = load_file(str(second / "final" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, different
