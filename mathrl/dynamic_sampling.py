"""DAPO's dynamic sampling (config keys `dynamic_sampling`, `max_generation_rounds`), its pure parts.

A group whose completions all got the same reward has advantage 0 for every completion: it adds nothing to the
policy gradient and only dilutes the step. With dynamic sampling a GRPO step keeps drawing prompt batches and
generating until it holds `batch_size` groups with mixed rewards, or `max_generation_rounds` generate calls were
made (then it trains on the mixed groups it found; on the last round's groups when it found none). The prompt
stream is counted (`CountedStream`), so a resumed run skips exactly the batches drawn, however many a step took.
"""

from __future__ import annotations

import torch
from torch import Tensor


class CountedStream:
    """An iterator that counts the items drawn from it (the GRPO prompt stream: `batches_drawn` for resuming)."""

    def __init__(self, items):
        self.items = iter(items)
        self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        self.drawn += 1
        return item


def mixed_groups(rewards: Tensor, group_size: int) -> Tensor:
    """True for each group whose rewards are not all equal; rewards [B*G] (repeat_interleave layout) -> [B] bool."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    return grouped.max(dim=1).values != grouped.min(dim=1).values  # [B]


def choose_groups(mixed: list[Tensor], batch_size: int) -> tuple[list[list[int]], int, int]:
    """Which groups of each generation round a step trains on: the first batch_size groups with mixed rewards, in
    the order drawn; when no round had one, all of the last round's groups (KL only: their advantages are 0).

    mixed: per round, [B_i] bool from `mixed_groups`. Returns (group indices per round, dropped: equal-reward groups
    left out, unused: mixed groups beyond batch_size)."""
    if not any(bool(m.any()) for m in mixed):
        return [[] for _ in mixed[:-1]] + [list(range(len(mixed[-1])))], sum(len(m) for m in mixed[:-1]), 0
    chosen, left, unused = [], batch_size, 0
    for m in mixed:
        groups = m.nonzero().squeeze(1).tolist()
        chosen.append(groups[:left])
        unused += len(groups[left:])
        left -= len(chosen[-1])
    dropped = sum(int((~m).sum()) for m in mixed)
    return chosen, dropped, unused


def stack_rows(parts: list[tuple[Tensor, Tensor, int, Tensor]], pad_id: int) -> tuple[Tensor, Tensor, int, Tensor]:
    """Rows of several rollouts as one: each part is (sequences [N_i, P_i+L_i], attention_mask [N_i, P_i+L_i], P_i,
    completion mask [N_i, L_i]). Prompts are left-padded to the widest P and completions right-padded to the
    longest L (pad ids, attention 0, mask 0), as one generate call over all the prompts would have laid them out.
    Returns (sequences [N, P+L], attention_mask [N, P+L], P, mask [N, L])."""
    width = max(p for _, _, p, _ in parts)
    length = max(m.shape[1] for _, _, _, m in parts)
    sequences, attention, masks = [], [], []
    for seq, att, p, mask in parts:
        left, right = width - p, length - mask.shape[1]
        sequences.append(torch.nn.functional.pad(seq, (left, right), value=pad_id))  # [N_i, P+L]
        attention.append(torch.nn.functional.pad(att, (left, right), value=0))  # [N_i, P+L]
        masks.append(torch.nn.functional.pad(mask, (0, right), value=0))  # [N_i, L]
    return torch.cat(sequences), torch.cat(attention), width, torch.cat(masks)
