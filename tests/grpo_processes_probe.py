"""One GRPO step on k processes against the same loss computed by one process on the same rollouts.

    torchrun --nproc_per_node 2 tests/grpo_processes_probe.py OUT.json [--loss_aggregation token_mean ...]

Run by tests/test_multiprocess.py. Every process takes its share of the step's prompts and runs the real
train_grpo.grpo_step at learning rate 0 (the rollouts it generated are recorded on the way). The main process
then puts every process's rollout into one batch, as one process would hold it, computes the GRPO loss and its
gradient norm there with the plain model (no DDP, no sharding), and writes both results to OUT.json with each
process's prompts.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from transformers import set_seed

import train_grpo
from mathrl.config import for_checkpoint, resolve_config
from mathrl.distributed import (gather_in_order, is_main_process, local_share, process_index, process_seed,
                                wait_for_everyone)
from mathrl.dynamic_sampling import mixed_groups
from mathrl.objectives import group_advantages, grpo_loss

# The step's metrics compared with one process's: the loss, and statistics over the global batch.
COMPARED = ("loss", "grad_norm", "reward_mean", "kl", "entropy", "zero_std_group_fraction", "groups_drawn",
            "generated_tokens")


def merge(rollouts: list[train_grpo.Rollout], pad_id: int) -> train_grpo.Rollout:
    """Rollouts of several processes as one batch: prompts left-padded, completions right-padded to the widest."""
    width = max(r.prompt_width for r in rollouts)
    length = max(r.mask.shape[1] for r in rollouts)
    sequences, attention, masks = [], [], []
    for r in rollouts:
        n, left, right = r.sequences.shape[0], width - r.prompt_width, length - r.mask.shape[1]
        sequences.append(torch.cat([torch.full((n, left), pad_id), r.sequences, torch.full((n, right), pad_id)], 1))
        attention.append(torch.cat([torch.zeros(n, left, dtype=torch.long), r.attention_mask,
                                    torch.zeros(n, right, dtype=torch.long)], 1))
        masks.append(torch.cat([r.mask, torch.zeros(n, right, dtype=r.mask.dtype)], 1))
    return train_grpo.Rollout(torch.cat(sequences), torch.cat(attention), width, torch.cat(masks),
                              [t for r in rollouts for t in r.texts])


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    config = resolve_config("grpo", "configs/tiny.yaml", ["--batch_size", "4", "--group_size", "4",
                                                          "--learning_rate", "0", "--kl_coeff", "0.05", *overrides])
    set_seed(process_seed(config["seed"], process_index()))
    init_from = config["init_from"] or config["model_name"]
    config = for_checkpoint(config, init_from)
    run = train_grpo.setup(config, init_from)
    initial = copy.deepcopy(run.unwrapped)  # the weights before the step (lr 0: also after it)

    recorded = []
    generate = train_grpo.generate_rollout

    def recording_generate(*args, **kwargs):
        recorded.append(generate(*args, **kwargs))
        return recorded[-1]

    train_grpo.generate_rollout = recording_generate
    global_batch = next(run.batches)
    batch = local_share(global_batch, "batch_size")
    result = train_grpo.grpo_step(run, batch, config)
    shares = gather_in_order([[e["prompt"] for e in batch]])
    rollouts = gather_in_order([recorded[0]])
    if is_main_process():
        one = one_process(run, initial, rollouts, global_batch, config)
        with open(out, "w") as f:
            json.dump({"shares": shares, "global_batch": [e["prompt"] for e in global_batch],
                       "processes": {key: result.metrics[key] for key in COMPARED}, "one_process": one}, f)
    wait_for_everyone()  # no process leaves while another works (see evaluate.py's report phase)


def one_process(run, initial, rollouts: list, global_batch: list[dict], config: dict) -> dict:
    """The COMPARED metrics as one process computes them on every process's rollouts, with the initial weights."""
    merged = merge(rollouts, run.tokenizer.pad_token_id)
    samples = [e for e in global_batch for _ in range(config["group_size"])]
    rewards = torch.tensor(run.reward_model.score_batch(samples, merged.texts,
                                                        num_tokens=merged.mask.sum(1).tolist())["total"])
    advantages = group_advantages(rewards, config["group_size"], config["advantage_mode"])
    with torch.no_grad():
        ref_logp = train_grpo.sequence_logprobs(run.reference, merged, config["temperature"])
    logp, entropy = train_grpo.sequence_logprobs(initial, merged, config["temperature"], True)
    loss, stats = grpo_loss(logp, ref_logp, None, advantages, merged.mask, loss_type=config["loss_type"],
                            kl_coeff=config["kl_coeff"], kl_estimator=config["kl_estimator"],
                            aggregation=config["loss_aggregation"], epsilon=config["clip_epsilon"],
                            max_completion_length=config["max_completion_length"])
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(initial.parameters(), float("inf"))
    return {"loss": loss.item(), "grad_norm": grad_norm.item(), "reward_mean": rewards.mean().item(),
            "kl": stats["kl"], "entropy": entropy.item(),
            "zero_std_group_fraction": (~mixed_groups(rewards, config["group_size"])).float().mean().item(),
            "groups_drawn": len(global_batch), "generated_tokens": int(merged.mask.sum())}


if __name__ == "__main__":
    main()
