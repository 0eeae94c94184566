"""The objectives of SFT and GRPO, each in its plain form: the paper's formulas as small tensor functions.

Read top to bottom: SFT labels and loss (paper 3.2), group advantages (3.3.3), log-probs of the sampled
completion tokens, the completion mask, the KL penalty and the GRPO loss (3.3.4, Appendix B). Only `sft_loss` and
`completion_logits` run the model, in one plain forward pass; the trainers call the shared-prefix fast paths
(mathrl/fast_paths.py) that tests/test_fast_paths.py checks against these two.

Departures from the design paper (sections 3.2, 3.3.3-3.3.4, Appendix B), all deliberate:
- SFT: the loss covers the answer and a trailing EOS (`sft_labels`); the paper's whole-sequence loss is
  `train_on_prompt=True` (config `loss_on: all`).
- Advantages: the paper's "r - group mean" is kept as mode "paper"; "grpo" (DeepSeekMath, divided by the
  group std) and "dr_grpo" (Dr. GRPO, no std) are there to compare against it.
- Log-probs: the paper's reference code scored token t with the logits at position t. A causal LM's logits
  at position t predict token t+1, so here token t+1 is scored with logits[t] (`token_logprobs`).
- KL: the paper squares the difference of whole-sequence log-probs, (sum_t log pi - sum_t log pi_ref)^2, one
  number per completion: estimator "squared_sequence" (`kl_per_sequence`). The per-token estimators are applied
  per token and then aggregated like the policy term, which is what every GRPO implementation does: "squared"
  is the paper's square taken per token (no 1/2), "k3" the estimator of DeepSeekMath.
- Loss: "paper" is the plain REINFORCE term -A * log pi; "clipped" is the PPO-style ratio with clipping
  used by GRPO. With one update per generation (old = current, detached) both have the same gradient.
"""

import torch
from torch import Tensor

ADVANTAGE_MODES = ("paper", "grpo", "dr_grpo")
LOSS_TYPES = ("paper", "clipped")
PER_TOKEN_KL_ESTIMATORS = ("squared", "k3")
KL_ESTIMATORS = (*PER_TOKEN_KL_ESTIMATORS, "squared_sequence")
AGGREGATIONS = ("sequence_sum", "sequence_mean", "token_mean", "constant")

IGNORE_INDEX = -100  # label value that Hugging Face's cross-entropy skips


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


# ----------------------------------------------------------------------------- SFT


def sft_labels(
    prompt_lengths: list[int] | Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    train_on_prompt: bool = False,
) -> Tensor:
    """Labels for a Hugging Face causal-LM loss: input_ids with ignored positions set to -100.

    Rows are right-padded: prompt tokens first, then answer (+ EOS), then padding. The first
    prompt_lengths[b] tokens of row b are masked unless train_on_prompt (the paper's whole-sequence loss);
    padding (attention_mask == 0) is always masked. Labels are NOT shifted: the model shifts them itself.
    input_ids, attention_mask [B, T] -> [B, T] long.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} differ in shape")
    batch, seq_len = input_ids.shape
    prompt_lengths = torch.as_tensor(prompt_lengths, dtype=torch.long, device=input_ids.device)  # [B]
    if prompt_lengths.shape != (batch,):
        raise ValueError(f"need one prompt length per row ({batch}), got shape {tuple(prompt_lengths.shape)}")
    if (prompt_lengths < 0).any() or (prompt_lengths > seq_len).any():
        raise ValueError(f"prompt lengths must be in [0, {seq_len}], got {prompt_lengths.tolist()}")

    ignore = attention_mask == 0  # [B, T]
    if not train_on_prompt:
        positions = torch.arange(seq_len, device=input_ids.device)  # [T]
        ignore = ignore | (positions.unsqueeze(0) < prompt_lengths.unsqueeze(1))  # [B, T]
    return input_ids.masked_fill(ignore, IGNORE_INDEX)  # [B, T]


def sft_loss(model, batch: dict, divisor: float | None = None) -> Tensor:
    """Mean next-token cross entropy over the labelled tokens: -1/K sum_t log p(label_t | tokens < t) (paper 3.2).

    batch: input_ids, attention_mask, labels [B, T] (labels from `sft_labels`, unshifted). One full forward pass;
    Hugging Face's causal-LM loss shifts the labels. Its fast form is fast_paths.shared_prefix_sft_loss.
    `divisor` replaces K: the sum over this batch divided by the token count of a larger batch it is part of
    (an accumulation window, every process: distributed.loss_divisor).
    """
    if divisor is None:
        return model(**batch).loss
    return model(**batch, num_items_in_batch=divisor).loss


# ----------------------------------------------------------------------------- advantages


def group_advantages(rewards: Tensor, group_size: int, mode: str, eps: float = 1e-4) -> Tensor:
    """Advantage of each completion relative to the other completions of its prompt.

    rewards is laid out group by group (the `repeat_interleave` layout): rows i*G .. i*G+G-1 are the
    G completions of prompt i. Modes:
      "paper":   r - mean(group)                      (paper 3.3.3)
      "grpo":    (r - mean(group)) / (std(group) + eps)  (DeepSeekMath; std is the *sample* std,
                 unbiased, Bessel-corrected, as torch.std's default that TRL uses)
      "dr_grpo": r - mean(group)                      (Dr. GRPO: the std division biases the update)
    A group whose rewards are all equal gets advantage exactly 0 in every mode.
    """
    _check_choice("advantage mode", mode, ADVANTAGE_MODES)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(f"number of rewards ({n}) is not divisible by group_size ({group_size})")

    if not rewards.is_floating_point():
        rewards = rewards.float()
    grouped = rewards.view(-1, group_size)  # [num_prompts, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [num_prompts, G]
    if mode == "grpo":
        if group_size > 1:
            std = grouped.std(dim=1, keepdim=True)  # [num_prompts, 1], unbiased (divides by G-1)
        else:
            std = torch.zeros_like(grouped)  # [num_prompts, 1]; a one-sample std is undefined
        centred = centred / (std + eps)  # [num_prompts, G]
    # The mean of equal floats need not round back to exactly that float; force exact zeros so a group
    # with no signal contributes no gradient at all.
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # [num_prompts, 1]
    advantages = torch.where(constant, torch.zeros_like(centred), centred)  # [num_prompts, G]
    return advantages.reshape(n)  # [N]


# ----------------------------------------------------------------------------- log-probs


def gather_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per position, logits already aligned with the tokens they score;
    logits [B, L, V], targets [B, L] -> [B, L] float32."""
    # dtype=float32 upcasts inside the kernel: bf16 log-softmax loses ~2 digits, enough to bias ratios.
    logp_all = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # [B, L, V]
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, L]


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Log-prob of each token given its prefix: out[b, t] = log p(input_ids[b, t+1] | logits[b, t]).

    logits [B, T, V] from a causal LM over input_ids [B, T]; returns [B, T-1] in float32.
    """
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match input_ids {tuple(input_ids.shape)}")
    if input_ids.shape[1] < 2:
        raise ValueError("need at least 2 tokens to score a next token")
    # logits at position t predict token t+1: drop the last logits and the first token.
    return gather_logprobs(logits[:, :-1, :], input_ids[:, 1:])  # [B, T-1]


def left_padded_positions(attention_mask: Tensor) -> Tensor:
    """Position ids of left-padded rows as generate() builds them: 0 at each row's first real token.

    attention_mask [B, T] -> [B, T] long (padding gets 0)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, T]


def completion_logits(model, sequences: Tensor, attention_mask: Tensor, prompt_width: int) -> Tensor:
    """Logits that score each completion token: out[:, t] predicts sequences[:, prompt_width + t].

    sequences, attention_mask [N, P+L] (left-padded prompt of width P, then the completion) -> [N, L, V]. One pass
    over the whole rows, with generate()'s positions, projecting only positions P-1 .. P+L-1 to the vocabulary
    (the last one scores nothing and is dropped). Its fast form is fast_paths.shared_prompt_completion_logits.
    """
    num_completion = sequences.shape[1] - prompt_width
    logits = model(input_ids=sequences, attention_mask=attention_mask,
                   position_ids=left_padded_positions(attention_mask), logits_to_keep=num_completion + 1,
                   use_cache=False).logits  # [N, L+1, V]
    return logits[:, :-1]  # [N, L, V]


# ----------------------------------------------------------------------------- masks


def completion_mask(completion_ids: Tensor, eos_token_id: int) -> Tensor:
    """1.0 for each token up to and including the first EOS, 0.0 after it; rows without EOS are all 1.0.

    completion_ids [B, L] -> [B, L] float. `generate` pads finished rows with the pad token, which may be
    the EOS token itself, so only the first EOS counts.
    """
    is_eos = (completion_ids == eos_token_id).long()  # [B, L]
    # A token is kept when no EOS comes strictly before it (cumsum counts EOS up to and including t).
    eos_before = is_eos.cumsum(dim=1) - is_eos  # [B, L]
    return (eos_before == 0).float()  # [B, L]


def truncated_rows(completion_ids: Tensor, mask: Tensor, eos_token_id: int) -> Tensor:
    """True for each completion that never produced EOS (cut off by max_completion_length); completion_ids and its
    completion_mask [B, L] -> [B] bool. Only kept tokens count: padding added after a row (even when the pad token
    is EOS) does not end it."""
    return ~((completion_ids == eos_token_id) & (mask > 0)).any(dim=1)  # [B]


def loss_mask(mask: Tensor, truncated: Tensor, mask_truncated: bool) -> Tensor:
    """The tokens the loss sees: `mask` [B, L], with the rows of truncated completions [B] zeroed when
    mask_truncated (DAPO's overlong filtering: a cut-off completion's reward says nothing about how it would have
    ended, so it gets no gradient). [B, L] float."""
    if not mask_truncated:
        return mask
    return mask * (~truncated).to(mask.dtype).unsqueeze(1)  # [B, L]


def token_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the next-token distributions over the kept tokens: 1/K sum_t -sum_v p_tv log p_tv.

    logits [B, L, V] (already divided by the sampling temperature: the policy that sampled), mask [B, L] -> scalar
    (0.0 when no token is kept). A monitoring statistic: computed without gradient, in fp32.
    """
    with torch.no_grad():
        logp = torch.log_softmax(logits.detach().float(), dim=-1)  # [B, L, V]
        per_token = -(logp.exp() * logp).sum(dim=-1)  # [B, L]; 0 * -inf never occurs: log_softmax is finite
        keep = mask > 0  # [B, L]
        return torch.where(keep, per_token, torch.zeros_like(per_token)).sum() / keep.sum().clamp(min=1)


# ----------------------------------------------------------------------------- KL and aggregation


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token KL penalty between the policy and the reference; logp, ref_logp [B, L] -> [B, L].

    "squared": (logp - ref_logp)^2, as written in paper 3.3.4 (no 1/2).
    "k3":      exp(ref - logp) - (ref - logp) - 1, Schulman's unbiased, always >= 0 estimator of
               KL(pi || ref) for tokens sampled from pi (DeepSeekMath).
    """
    _check_choice("per-token KL estimator", estimator, PER_TOKEN_KL_ESTIMATORS)
    if estimator == "squared":
        return (logp - ref_logp) ** 2  # [B, L]
    log_ratio = ref_logp - logp  # [B, L]
    return torch.exp(log_ratio) - log_ratio - 1  # [B, L]


def kl_per_sequence(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """The paper's KL penalty (3.3.4, B.1), one value per completion: (sum_t log pi - sum_t log pi_ref)^2 over the
    kept tokens; logp, ref_logp, mask [B, L] -> [B]. A row with no kept token gets 0. Estimator "squared_sequence".
    It reads only the per-token log-probs, so the trainer's shared-prompt fast path
    (fast_paths.shared_prompt_completion_logits) serves it as it serves the per-token estimators.
    """
    keep = mask > 0  # [B, L]
    # where, not multiply: padding log-probs may be -inf, and 0 * inf is NaN.
    log_ratio = torch.where(keep, logp - ref_logp, torch.zeros_like(logp))  # [B, L]
    return log_ratio.sum(dim=1) ** 2  # [B]


def aggregate(
    per_token: Tensor, mask: Tensor, mode: str, max_completion_length: int | None = None,
    token_divisor: float | None = None,
) -> Tensor:
    """Reduce per-token values [B, L] over the kept tokens (mask [B, L]) to a scalar.

    "sequence_sum":  sum over each sequence, mean over sequences (the paper: sequence log-prob)
    "sequence_mean": mean over each sequence, mean over sequences (original GRPO)
    "token_mean":    sum over all kept tokens / number of kept tokens (DAPO)
    "constant":      sum over all kept tokens / (B * max_completion_length) (Dr. GRPO)
    Empty rows count as 0 and never divide by zero. `token_divisor` replaces token_mean's count of kept tokens
    (one process's share of a global batch: distributed.loss_divisor).
    """
    _check_choice("aggregation", mode, AGGREGATIONS)
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ")
    keep = mask > 0  # [B, L]
    # where, not multiply: a masked position holding inf/NaN would otherwise poison the sum (0 * inf = NaN).
    kept = torch.where(keep, per_token, torch.zeros_like(per_token))  # [B, L]
    counts = keep.sum(dim=1).to(kept.dtype)  # [B]
    if mode == "sequence_sum":
        return kept.sum(dim=1).mean()
    if mode == "sequence_mean":
        return (kept.sum(dim=1) / counts.clamp(min=1)).mean()
    if mode == "token_mean":
        return kept.sum() / (counts.sum().clamp(min=1) if token_divisor is None else token_divisor)
    # "constant"
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError("aggregation 'constant' needs max_completion_length >= 1")
    if per_token.shape[1] > max_completion_length:
        raise ValueError(f"completions have {per_token.shape[1]} tokens, more than "
                         f"max_completion_length={max_completion_length}")
    return kept.sum() / (per_token.shape[0] * max_completion_length)


# ----------------------------------------------------------------------------- loss


def grpo_loss(
    logp: Tensor,
    ref_logp: Tensor | None,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str,
    kl_coeff: float,
    kl_estimator: str,
    aggregation: str,
    epsilon: float = 0.2,
    max_completion_length: int | None = None,
    token_divisor: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss on completion tokens; returns (scalar loss, stats as floats).

    logp (with grad), ref_logp, old_logp: [B, L] per-token log-probs; advantages [B]; mask [B, L].
    ref_logp may be None only when kl_coeff == 0. old_logp None means one update per generation
    (old = logp.detach()).
      "paper":   per token  -A * logp                                       + kl_coeff * KL
      "clipped": per token  -min(r * A, clip(r, 1-eps, 1+eps) * A), r = exp(logp - old_logp)  + kl_coeff * KL
    Per-token losses are reduced with `aggregate(.., aggregation)`; `token_divisor` as in `aggregate`.
    With kl_estimator "squared_sequence" the KL is one number per completion (`kl_per_sequence`), so it is not
    aggregated over tokens: it is added once per completion, averaged over the B completions, weighted by kl_coeff,
    whatever the aggregation of the policy term:
        loss = aggregate(policy, aggregation) + kl_coeff * 1/B sum_b (sum_t logp_bt - sum_t ref_logp_bt)^2
    (a completion with no kept token, e.g. one masked by mask_truncated_completions, adds 0 and still counts in B,
    as it does in the sequence aggregations). The paper's loss, -(A * seq_logp).mean() + kl_coeff *
    ((seq_logp - seq_ref) ** 2).mean(), is exactly "paper" + "sequence_sum" + "squared_sequence".
    Stats: policy_loss; kl, the estimator's value before kl_coeff (per-token estimators: mean per-token KL over the
    kept tokens; squared_sequence: mean over completions), 0.0 without a reference; kl_sequence, the paper's
    squared sequence log-ratio averaged over completions whatever the estimator (so runs with different estimators
    compare on one scale); clip_fraction (kept tokens whose gradient the clip removed; 0.0 for "paper"), split into
    clip_fraction_low (ratio below 1-eps with a negative advantage) and clip_fraction_high (above 1+eps, positive
    advantage); loss.
    """
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    _check_choice("KL estimator", kl_estimator, KL_ESTIMATORS)
    if logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and mask {tuple(mask.shape)} must both be [B, L]")
    if advantages.shape != (logp.shape[0],):
        raise ValueError(f"advantages must be [B]={logp.shape[0]}, got {tuple(advantages.shape)}")
    for name, other in (("ref_logp", ref_logp), ("old_logp", old_logp)):
        if other is not None and other.shape != logp.shape:
            raise ValueError(f"{name} {tuple(other.shape)} does not match logp {tuple(logp.shape)}")
    if kl_coeff != 0 and ref_logp is None:
        raise ValueError("kl_coeff != 0 needs ref_logp")

    keep = mask > 0  # [B, L]
    zeros = torch.zeros_like(logp)  # [B, L]

    def kept(x: Tensor) -> Tensor:
        # Padding log-probs can be huge negatives (EOS after EOS); zero them before exp() so neither the
        # forward value nor the backward pass (0 * inf) can turn into NaN.
        return torch.where(keep, x, zeros)  # [B, L]

    logp_k = kept(logp)  # [B, L]
    adv = advantages.to(logp.dtype).unsqueeze(1)  # [B, 1]

    if loss_type == "paper":
        policy = -adv * logp_k  # [B, L]
        clipped_low = clipped_high = torch.zeros_like(keep)  # [B, L]
    else:
        old = logp.detach() if old_logp is None else old_logp  # [B, L]
        ratio = torch.exp(logp_k - kept(old.detach()))  # [B, L]
        unclipped_obj = ratio * adv  # [B, L]
        clipped_obj = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv  # [B, L]
        policy = -torch.minimum(unclipped_obj, clipped_obj)  # [B, L]
        # The clip zeroes the gradient exactly when the ratio left the trust region in the direction
        # the advantage pushes it.
        clipped_high = (ratio > 1 + epsilon) & (adv > 0)  # [B, L]
        clipped_low = (ratio < 1 - epsilon) & (adv < 0)  # [B, L]

    n_kept = keep.sum().clamp(min=1)
    ref_k = None if ref_logp is None else kept(ref_logp.detach())  # [B, L]
    sequence_kl = logp.new_zeros(logp.shape[0]) if ref_k is None else kl_per_sequence(logp_k, ref_k, mask)  # [B]
    if kl_estimator == "squared_sequence":
        # One number per completion: added once per completion and averaged over the B completions, outside the
        # token aggregation (the paper's ((seq_logp - seq_ref) ** 2).mean()).
        kl_value = sequence_kl.mean()
        policy_loss = aggregate(policy, mask, aggregation, max_completion_length, token_divisor)
        loss = policy_loss + kl_coeff * kl_value if kl_coeff != 0 else policy_loss
    else:
        kl = zeros if ref_k is None else kl_per_token(logp_k, ref_k, kl_estimator)  # [B, L]
        per_token = policy + kl_coeff * kl if kl_coeff != 0 else policy  # [B, L]
        loss = aggregate(per_token, mask, aggregation, max_completion_length, token_divisor)
        kl_value = torch.where(keep, kl, zeros).sum() / n_kept
    with torch.no_grad():
        # .item() is a CPU-GPU sync point; once per step is cheap next to generation.
        stats = {
            "policy_loss": aggregate(policy, mask, aggregation, max_completion_length, token_divisor).item(),
            "kl": kl_value.item(),
            "kl_sequence": sequence_kl.mean().item(),
            "clip_fraction": (((clipped_low | clipped_high) & keep).sum() / n_kept).item(),
            "clip_fraction_low": ((clipped_low & keep).sum() / n_kept).item(),
            "clip_fraction_high": ((clipped_high & keep).sum() / n_kept).item(),
            "loss": loss.item(),
        }
    return loss, stats
