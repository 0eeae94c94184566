"""Group-Relative Policy Optimization on arithmetic problems (paper section 3.3).

    python train_grpo.py --config configs/tiny.yaml --init_from checkpoints/tiny/sft/final   # SFT -> GRPO
    python train_grpo.py --config configs/tiny.yaml                                          # GRPO from scratch
    python train_grpo.py                                              # the paper's TinyLlama run (GPU)
    python train_grpo.py --advantage_mode grpo --loss_type clipped --kl_estimator k3 --num_iterations 2
    python train_grpo.py --config configs/tiny.yaml --resume_from auto    # continue an interrupted run
    torchrun --standalone --nproc_per_node 2 train_grpo.py --config configs/tiny.yaml   # k processes (README)
    torchrun --standalone --nproc_per_node 2 train_grpo.py --config configs/tiny.yaml --fsdp true   # sharded

Each step: sample `batch_size` prompts; generate `group_size` completions each in ONE batched generate call (one
per round with dynamic_sampling); score them with the rule-based reward (mathrl/rewards.py, the paper's
reward_model.py); turn rewards into group-relative advantages; take `num_iterations` gradient steps on the GRPO
loss (mathrl/objectives.py). The log-probs and the sampling share each prompt's keys/values across its group
(mathrl/fast_paths.py). Writes OUTPUT_DIR/metrics.jsonl, OUTPUT_DIR/samples.jsonl, OUTPUT_DIR/step_N/ and
OUTPUT_DIR/final/ exactly like train_sft.py, and stops early when `max_train_seconds` of training time (evaluation
and saving excluded) have passed, as train_sft.py does.
SIGINT / SIGTERM, `--resume_from auto|DIR` and the non-finite guard work as in train_sft.py (mathrl/resume.py):
a resumed run replays the prompt stream and restores the sampling RNG, so it samples what the uninterrupted
run would have.

How this departs from the paper's reference code:
- Log-probs are computed from the generated ids, never by re-tokenizing decoded text, with logits at
  position t scoring token t+1 (the reference code was off by one), masked to the completion up to and
  including its first EOS (so the model learns when to stop). Position ids follow the left padding exactly as
  in generation, and logits are divided by the sampling temperature, so the log-probs are those of the policy
  that sampled the completions.
- The paper's loss is -A * (sequence log-prob) + kl_coeff * squared log-ratio. The default squares the log-ratio
  per token (`kl_estimator squared`); `kl_estimator squared_sequence` squares the whole completion's log-ratio,
  as the paper writes it (see mathrl/objectives.py); `loss_type clipped`, `advantage_mode grpo|dr_grpo`,
  `kl_estimator k3` and the
  aggregation choices give DeepSeekMath GRPO, Dr. GRPO and DAPO-style variants from the same code;
  `dynamic_sampling` and `mask_truncated_completions` add DAPO's dynamic sampling and overlong filtering.
- The paper's `gamma` (discount) is left out: an episode is a single completion, so it would have no effect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import GenerationConfig, get_cosine_schedule_with_warmup

from mathrl.answers import is_correct
from mathrl.checkpoint import METRICS_NAME, MetricsLog, RunClock, save_final, save_periodic
from mathrl.config import require_positive
from mathrl.dynamic_sampling import CountedStream, choose_groups, mixed_groups, stack_rows
from mathrl.distributed import (any_process, gather_in_order, gather_rows, local_share, loss_divisor,
                                mean_over_processes, sum_over_processes, summed_over_processes,
                                token_means_over_processes)
from mathrl.errors import UserError, run_cli
from mathrl.evaluation import evaluate_sets, load_eval_sets
from mathrl.fast_paths import shared_prompt_completion_logits
from mathrl.generation import generate_ids, generation_config
from mathrl.lora import apply_lora, reference_model
from mathrl.modeling import (apply_memory_options, clip_gradients, load_model_and_tokenizer, make_accelerator,
                             prepare_policy)
from mathrl.objectives import (ADVANTAGE_MODES, AGGREGATIONS, KL_ESTIMATORS, LOSS_TYPES, completion_mask,
                               gather_logprobs, group_advantages, grpo_loss, loss_mask, token_entropy,
                               truncated_rows)
from mathrl.prompts import prompt_ids
from mathrl.resume import (StopSignals, check_finite, resume_run, start_run,
                           sampling_guard, skip)
from mathrl.rewards import MathRewardModel
from mathrl.timing import PhaseTimer
from mathrl.tracking import make_tracker
from mathrl.validation import load_train_examples

NUM_SAMPLES_LOGGED = 4
# Sampling statistics each process counts over its own groups; metrics.jsonl reports their sums over the processes
# (generation_rounds is the same on every process: dynamic sampling runs on one).
SUMMED_SAMPLING_STATS = ("groups_drawn", "groups_dropped", "groups_unused", "generated_tokens")
# grpo_loss's statistics that are means over the trained tokens (mathrl/objectives.py).
TRAINED_TOKEN_STATS = ("kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high")


@dataclass
class Rollout:
    """One step's generations, laid out group by group (prompt i owns rows i*G .. i*G+G-1)."""
    sequences: torch.Tensor       # [N, P+L] prompt (left-padded) + completion ids
    attention_mask: torch.Tensor  # [N, P+L] 1 on prompt tokens and completion tokens up to the first EOS
    prompt_width: int             # P
    mask: torch.Tensor            # [N, L] completion tokens that are trained (up to and incl. first EOS)
    texts: list[str]              # decoded completions (for the reward only; never re-tokenized)


@dataclass
class GRPOSetup:
    """What every GRPO step needs, built by `setup` (main() and bench/bench_grpo.py both build it there)."""
    accelerator: Accelerator
    model: torch.nn.Module              # the policy as prepare_policy prepared it (forward, backward, clipping)
    unwrapped: torch.nn.Module          # the same policy unwrapped (generation, evaluation, saving)
    reference: object | None            # frozen starting policy (a copy, or with LoRA the policy with its adapters
                                        # disabled: mathrl/lora.py); None when kl_coeff is 0
    tokenizer: object
    reward_model: MathRewardModel
    batches: Iterator[list[dict]]       # endless seeded stream of prompt batches (a CountedStream in setup)
    gen_config: GenerationConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class StepResult:
    """One GRPO step: its metrics.jsonl record, the tokens it processed and a few samples for samples.jsonl."""
    metrics: dict
    tokens: int                   # prompt + completion tokens (the attention mask's ones)
    samples: list[dict]


def validate(config: dict) -> None:
    require_positive(config, "batch_size", "max_prompt_length", "max_completion_length", "num_train_steps",
                     "log_every", "eval_every", "temperature", "max_generation_rounds")
    choices = {"advantage_mode": ADVANTAGE_MODES, "loss_type": LOSS_TYPES, "kl_estimator": KL_ESTIMATORS,
               "loss_aggregation": AGGREGATIONS}
    for key, valid in choices.items():
        if config[key] not in valid:
            raise UserError(f'{key} "{config[key]}": expected one of {", ".join(valid)}')
    if config["num_iterations"] < 1:
        raise UserError("num_iterations must be >= 1")
    if config["num_iterations"] > 1 and config["loss_type"] != "clipped":
        raise UserError("num_iterations > 1 reuses stale samples and needs --loss_type clipped")
    if config["group_size"] < 2:
        raise UserError("group_size must be >= 2: advantages are relative to the other completions of a prompt")


def prompt_batches(examples: list[dict], batch_size: int, seed: int):
    """Endless seeded stream of prompt batches, reshuffled every pass over the training set."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[i] for i in order[start:start + batch_size]]


def generate_rollout(model, tokenizer, batch: list[dict], config: dict, gen_config) -> Rollout:
    """Generate group_size completions for every prompt of the batch in one generate call."""
    prompts = [prompt_ids(tokenizer, e["prompt"], config["prompt_format"], config["max_prompt_length"])
               for e in batch]
    model.eval()
    sequences, width = generate_ids(model, tokenizer, prompts, gen_config, config["group_size"])  # [N, P+L]
    sequences = sequences.clone()  # leave inference mode: autograd must be allowed to see these ids
    model.train()
    completions = sequences[:, width:]  # [N, L]
    mask = completion_mask(completions, tokenizer.eos_token_id)  # [N, L]
    # Prompt attention comes from the prompt lengths, not from `!= pad_id`: pad may equal a real token (EOS).
    lengths = torch.tensor([len(p) for p in prompts], device=sequences.device).repeat_interleave(
        config["group_size"])  # [N]
    positions = torch.arange(width, device=sequences.device)  # [P]
    prompt_attention = (positions.unsqueeze(0) >= (width - lengths).unsqueeze(1)).long()  # [N, P]
    attention_mask = torch.cat([prompt_attention, mask.long()], dim=1)  # [N, P+L]
    texts = tokenizer.batch_decode(completions * mask.long() + tokenizer.pad_token_id * (1 - mask.long()),
                                   skip_special_tokens=True)
    return Rollout(sequences, attention_mask, width, mask, texts)


def sequence_logprobs(model, rollout: Rollout, temperature: float, with_entropy: bool = False):
    """Per-token log-probs [N, L] of the completion tokens under `model`, as the sampler saw them (logits divided
    by the sampling temperature). The logits equal objectives.completion_logits; each prompt runs once per group.
    with_entropy: also the policy's mean token entropy over the completion (objectives.token_entropy), from the
    same logits (no second forward): (logp [N, L], entropy scalar).

    Logits are cast to fp32 before the temperature division for every model: under bf16 autocast only the
    accelerator-prepared policy returns fp32 logits, and dividing the reference's bf16 logits would round only
    them, so identical weights would show a non-zero KL.
    """
    logits = shared_prompt_completion_logits(model, rollout.sequences, rollout.attention_mask,
                                             rollout.prompt_width)  # [N, L, V]
    logits = logits.float() / temperature  # [N, L, V]
    logp = gather_logprobs(logits, rollout.sequences[:, rollout.prompt_width:])  # [N, L]
    return (logp, token_entropy(logits, rollout.mask)) if with_entropy else logp


def score(rollout: Rollout, batch: list[dict], reward_model: MathRewardModel, group_size: int) -> dict:
    samples = [example for example in batch for _ in range(group_size)]  # repeat_interleave layout
    lengths = rollout.mask.sum(dim=1).tolist()
    terms = reward_model.score_batch(samples, rollout.texts, num_tokens=lengths)
    correct = [is_correct(sample, text) for sample, text in zip(samples, rollout.texts)]
    return {"total": torch.tensor(terms["total"], dtype=torch.float32), "terms": terms, "correct": correct}


def setup(config: dict, init_from: str) -> GRPOSetup:
    """The policy (from init_from), its frozen reference, the reward, the prompt stream, the optimizer and the
    cosine schedule, prepared by accelerate. With `fsdp: true` on several processes the policy is sharded
    (mathrl/fsdp.py) and the KL reference stays a full, unsharded copy on every process."""
    accelerator = make_accelerator(config)
    if config["dynamic_sampling"] and accelerator.num_processes > 1:
        raise UserError("dynamic_sampling runs on one process only: each process would draw further prompt batches "
                        "on its own and the processes' prompt streams would part")
    if config["batch_size"] % accelerator.num_processes:
        raise UserError(f"batch_size {config['batch_size']} is not divisible by the {accelerator.num_processes} "
                        "processes; batch_size is global (prompts per step summed over processes)")
    model, tokenizer = load_model_and_tokenizer(init_from, config)
    apply_memory_options(model, config)
    model = apply_lora(model, config)
    reference = reference_model(model, accelerator.device) if config["kl_coeff"] > 0 else None
    train_examples = load_train_examples(tokenizer, config)
    if len(train_examples) < config["batch_size"]:
        share = f" (train_fraction {config['train_fraction']:g})" if config["train_fraction"] < 1 else ""
        raise UserError(f"{config['train_file']}: {len(train_examples)} examples{share}, fewer than batch_size "
                        f"{config['batch_size']}")
    batches = CountedStream(prompt_batches(train_examples, config["batch_size"], config["seed"]))
    gen_config = generation_config(tokenizer, config["max_completion_length"], True, config["temperature"],
                                   config["top_p"], config["generation_cache"])
    total_updates = config["num_train_steps"] * config["num_iterations"]
    # DDP-wrapped, or with fsdp: true on several processes sharded (the reference above stays a full replica).
    model, optimizer = prepare_policy(accelerator, model, config)
    scheduler = accelerator.prepare(get_cosine_schedule_with_warmup(optimizer, config["warmup_steps"], total_updates))
    return GRPOSetup(accelerator, model, accelerator.unwrap_model(model), reference, tokenizer,
                     MathRewardModel.from_config(config), batches, gen_config, optimizer, scheduler)


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    config, init_from, resume_from, output_dir = start_run("grpo", __doc__.split("\n")[0], validate)

    # ---- policy, reference, reward, data, optimizer and schedule -----------------------------------------
    run = setup(config, init_from)
    eval_sets = load_eval_sets(config)

    # ---- train ----------------------------------------------------------------------------------------
    metrics = MetricsLog(output_dir / METRICS_NAME, tracker=make_tracker(config, output_dir))
    samples_log = MetricsLog(output_dir / "samples.jsonl")
    clock, accuracy, first_step, stop = RunClock(), None, 1, StopSignals()
    if resume_from:
        first_step += resume_run(resume_from, run.unwrapped, run.optimizer, run.scheduler, clock,
                                 lambda n: skip(run.batches, n), (METRICS_NAME, "samples.jsonl"),
                                 total_steps=config["num_train_steps"])
    main_process = run.accelerator.is_main_process
    progress = tqdm(range(first_step, config["num_train_steps"] + 1), desc="grpo", dynamic_ncols=True,
                    disable=not main_process)
    for step in progress:
        step_start = time.perf_counter()
        batch = local_share(next(run.batches), "batch_size")  # whole groups for this process's share of the prompts
        with run.accelerator.autocast(), sampling_guard(step, output_dir):
            result = grpo_step(run, batch, config)
        check_finite(step, output_dir, run.accelerator, loss=result.metrics["loss"],
                     grad_norm=result.metrics["grad_norm"])
        clock.tokens += result.tokens
        for sample in result.samples:
            samples_log.log({"step": step, **sample})
        # elapsed_s in metrics.jsonl is training time: evaluation and checkpoint saving are paused.
        train_seconds = clock.train_seconds()
        stopped_by_time = any_process(0 < config["max_train_seconds"] <= train_seconds)
        last = step == config["num_train_steps"] or stopped_by_time
        record = {"step": step, **result.metrics, "step_seconds": time.perf_counter() - step_start,
                  "elapsed_s": train_seconds}
        record["generation_share"] = record["generation_seconds"] / record["step_seconds"]
        if step % config["log_every"] == 0 or last:
            metrics.log(record)
        progress.set_postfix(reward=f"{record['reward_mean']:.2f}", acc=f"{record['train_accuracy']:.2f}")
        if step % config["eval_every"] == 0 or last:
            with clock.paused():
                record, _ = evaluate_sets(run.unwrapped, run.tokenizer, eval_sets, config)
            metrics.log({"step": step, **record, "elapsed_s": train_seconds})
            accuracy = record["eval_accuracy"]
            if main_process:
                progress.write(f"step {step}: held-out greedy accuracy {accuracy:.3f}")
        if not last:  # the last step is saved as final/
            stopping = stop.requested_on_any_process()  # save this step whatever save_every says, then exit
            save_periodic(output_dir, run.unwrapped, run.tokenizer, config, run.optimizer, run.scheduler, clock,
                          step, batches_drawn=run.batches.drawn, always=stopping)
            if stopping:
                stop.exit(output_dir / f"step_{step}")
        if last:
            break
    progress.close()

    # ---- save -----------------------------------------------------------------------------------------
    metrics.close()
    samples_log.close()
    save_final(output_dir, run.unwrapped, run.tokenizer, config, run.optimizer, run.scheduler, clock, step=step,
               batches_drawn=run.batches.drawn, accuracy=accuracy, init_from=init_from,
               stopped_by_time=stopped_by_time)


def sample_groups(run: GRPOSetup, batch: list[dict], config: dict, timer: PhaseTimer):
    """Generate and score the step's groups: (rollout, scored, the examples of its groups, sampling stats).

    Without dynamic sampling: the batch's groups. With it (mathrl/dynamic_sampling.py): draw further batches from
    run.batches until batch_size groups with mixed rewards are found or max_generation_rounds generate calls were
    made; train on the groups `choose_groups` picks."""
    group_size = config["group_size"]
    rounds = []  # (rollout, scored, batch, mixed [B]) per generate call
    while True:
        with timer.phase("generation"):
            rollout = generate_rollout(run.unwrapped, run.tokenizer, batch, config, run.gen_config)
        with timer.phase("reward"):
            scored = score(rollout, batch, run.reward_model, group_size)
        mixed = mixed_groups(scored["total"], group_size)  # [B]
        rounds.append((rollout, scored, batch, mixed))
        found = sum(int(m.sum()) for *_, m in rounds)
        if (not config["dynamic_sampling"] or found >= config["batch_size"]
                or len(rounds) >= config["max_generation_rounds"]):
            break
        batch = next(run.batches)
    stats = {"generation_rounds": len(rounds), "groups_drawn": sum(len(b) for _, _, b, _ in rounds),
             "groups_dropped": 0, "groups_unused": 0,
             "generated_tokens": sum(int(r.mask.sum()) for r, *_ in rounds)}  # every round's, EOS included
    if len(rounds) == 1 and (not config["dynamic_sampling"] or found == 0):
        return rollout, scored, batch, stats  # the batch as drawn
    groups, stats["groups_dropped"], stats["groups_unused"] = choose_groups([m for *_, m in rounds],
                                                                           config["batch_size"])
    chosen = [(r, s, b, g) for (r, s, b, _), g in zip(rounds, groups) if g]
    return (*merge_groups(chosen, group_size, run.tokenizer.pad_token_id), stats)


def merge_groups(chosen: list, group_size: int, pad_id: int) -> tuple[Rollout, dict, list[dict]]:
    """One rollout, its scores and its examples from the chosen groups [(rollout, scored, batch, group indices)]."""
    parts, totals, terms, correct, texts, examples = [], [], {}, [], [], []
    for rollout, scored, batch, groups in chosen:
        rows = [g * group_size + i for g in groups for i in range(group_size)]
        parts.append((rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, rollout.mask[rows]))
        totals.append(scored["total"][rows])
        for name, values in scored["terms"].items():
            terms.setdefault(name, []).extend(values[i] for i in rows)
        correct += [scored["correct"][i] for i in rows]
        texts += [rollout.texts[i] for i in rows]
        examples += [batch[g] for g in groups]
    sequences, attention_mask, width, mask = stack_rows(parts, pad_id)
    scored = {"total": torch.cat(totals), "terms": terms, "correct": correct}
    return Rollout(sequences, attention_mask, width, mask, texts), scored, examples


def grpo_step(run: GRPOSetup, batch: list[dict], config: dict, timer: PhaseTimer | None = None) -> StepResult:
    """Generate, score, and take num_iterations optimizer steps on `batch`, this process's share of the step's
    prompts (the loss normalized over the global batch; metrics over every process's rollouts). `timer` (a fresh
    one by default) is reset and holds the step's phase times afterwards: generation, reward, ref_forward,
    policy_forward, backward, optimizer."""
    timer = timer or PhaseTimer()
    timer.reset()
    rollout, scored, batch, sampling_stats = sample_groups(run, batch, config, timer)
    rewards = scored["total"].to(rollout.sequences.device)  # [N]
    advantages = group_advantages(rewards, config["group_size"], config["advantage_mode"])  # [N]
    ref_logp = None
    if run.reference is not None:
        with torch.no_grad(), timer.phase("ref_forward"):
            ref_logp = sequence_logprobs(run.reference, rollout, config["temperature"])  # [N, L]

    truncated = truncated_rows(rollout.sequences[:, rollout.prompt_width:], rollout.mask,
                               run.tokenizer.eos_token_id)  # [N]
    trained = loss_mask(rollout.mask, truncated, config["mask_truncated_completions"])  # [N, L]
    old_logp, loss_stats, grad_norm = None, {}, 0.0
    # token_mean's count of kept tokens is that of every process's rollouts (the other aggregations, and the
    # squared_sequence KL, average over sequences, and every process holds as many).
    # With one process `aggregate` counts them itself, and no other aggregation reads it: skip the collective.
    token_divisor = None
    if config["loss_aggregation"] == "token_mean" and run.accelerator.num_processes > 1:
        token_divisor = loss_divisor(int(sum_over_processes(trained.sum())), run.accelerator.num_processes)
    lr = run.scheduler.get_last_lr()[0]  # the rate of this step's first update (logged after the scheduler moves)
    for iteration in range(config["num_iterations"]):
        with timer.phase("policy_forward"):
            if iteration == 0:  # the entropy of the sampling policy, from its own logits
                logp, entropy = sequence_logprobs(run.model, rollout, config["temperature"], True)  # [N, L]
            else:
                logp = sequence_logprobs(run.model, rollout, config["temperature"])  # [N, L]
        if iteration == 0 and config["num_iterations"] > 1:
            old_logp = logp.detach()  # the policy that sampled: its weights are unchanged until this update
        loss, loss_stats = grpo_loss(
            logp, ref_logp, old_logp, advantages, trained, loss_type=config["loss_type"],
            kl_coeff=config["kl_coeff"], kl_estimator=config["kl_estimator"],
            aggregation=config["loss_aggregation"], epsilon=config["clip_epsilon"],
            max_completion_length=config["max_completion_length"], token_divisor=token_divisor)
        with timer.phase("backward"):
            run.accelerator.backward(loss)
        with timer.phase("optimizer"):
            grad_norm = float(clip_gradients(run.accelerator, run.model, config["max_grad_norm"]))
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()

    # Metrics over the global batch: every process's rows, in process order.
    local_rewards, local_advantages = rewards, advantages
    rewards, advantages = gather_rows(rewards), gather_rows(advantages)  # [N_global]
    lengths = gather_rows(rollout.mask.sum(dim=1))  # [N_global]
    truncated = gather_rows(truncated)  # [N_global]
    correct = gather_in_order(scored["correct"])
    terms = {name: gather_in_order(values) for name, values in scored["terms"].items() if name != "total"}
    # Each process's loss is its share of the global loss times k, so their mean is the global loss; token means are
    # over every process's tokens (kl and the clip fractions over the trained ones, entropy over the completions).
    token_stats = {**token_means_over_processes({key: loss_stats.pop(key) for key in TRAINED_TOKEN_STATS},
                                                int(trained.sum())),
                   **token_means_over_processes({"entropy": entropy.item()}, int(rollout.mask.sum()))}
    loss_stats = {**mean_over_processes({**loss_stats, "unparsed_fraction": run.reward_model.unparsed_fraction}),
                  **token_stats}
    generation_seconds = timer.seconds["generation"]
    # Sampling over the global batch: every process's groups and generated tokens; the rate is the launch's (the
    # processes generate side by side, so their rates add up).
    counts = summed_over_processes({**{key: sampling_stats[key] for key in SUMMED_SAMPLING_STATS},
                                    "generated_tokens_per_s": sampling_stats["generated_tokens"]
                                    / max(generation_seconds, 1e-9)})
    sampling_stats = {**sampling_stats, **{key: int(counts[key]) for key in SUMMED_SAMPLING_STATS}}
    metrics = {
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "train_accuracy": sum(correct) / len(correct),
        **{f"reward_{name}": sum(values) / len(values) for name, values in terms.items()},
        "advantage_std": advantages.std().item(),
        "zero_std_group_fraction": (~mixed_groups(rewards, config["group_size"])).float().mean().item(),
        **loss_stats,
        "completion_length_mean": lengths.float().mean().item(),
        "completion_length_max": int(lengths.max()),
        "truncated_fraction": truncated.float().mean().item(),
        "masked_truncated_completions": int(truncated.sum()) if config["mask_truncated_completions"] else 0,
        **sampling_stats,
        "grad_norm": grad_norm,
        "lr": lr,
        "generation_seconds": generation_seconds,
        "generated_tokens_per_s": counts["generated_tokens_per_s"],
    }
    samples = [{"prompt": batch[i // config["group_size"]]["prompt"], "completion": rollout.texts[i],
                "reward": local_rewards[i].item(), "advantage": local_advantages[i].item()}
               for i in range(min(NUM_SAMPLES_LOGGED, len(rollout.texts)))]
    run.reward_model.reset_counts()
    return StepResult(metrics, int(sum_over_processes(rollout.attention_mask.sum())), samples)


if __name__ == "__main__":
    run_cli(main)
