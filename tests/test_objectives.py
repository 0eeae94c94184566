"""Hand-computed checks for mathrl.objectives: every expected number is worked out in a comment."""

import math

import pytest
import torch

from mathrl.objectives import (
    ADVANTAGE_MODES,
    AGGREGATIONS,
    IGNORE_INDEX,
    KL_ESTIMATORS,
    LOSS_TYPES,
    PER_TOKEN_KL_ESTIMATORS,
    aggregate,
    completion_mask,
    gather_logprobs,
    group_advantages,
    grpo_loss,
    kl_per_sequence,
    kl_per_token,
    loss_mask,
    sft_labels,
    token_entropy,
    token_logprobs,
    truncated_rows,
)

LN2 = math.log(2.0)


def assert_close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- advantages

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two prompts, G = 4


def test_advantages_paper_and_dr_grpo():
    # group 1: mean (1+0+0+1)/4 = 0.5 -> [0.5, -0.5, -0.5, 0.5]; group 2: all 1 -> mean 1 -> zeros
    expected = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert_close(group_advantages(REWARDS, 4, "paper"), expected)
    assert_close(group_advantages(REWARDS, 4, "dr_grpo"), expected)


def test_advantages_grpo_uses_unbiased_std():
    # group 1: squared deviations 4 * 0.25 = 1; unbiased variance 1 / (4-1) = 1/3; std = sqrt(1/3) = 0.57735
    # advantage = 0.5 / (0.57735 + 1e-4) = 0.86588. (Population std 0.5 would give 0.5/0.5001 = 0.9998.)
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-4)
    expected = [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]
    assert_close(group_advantages(REWARDS, 4, "grpo"), expected)
    assert abs(a - 0.86588) < 1e-4


def test_advantages_grpo_eps():
    # group [2, 0]: mean 1, unbiased std sqrt(((1)^2 + (1)^2) / 1) = sqrt 2; adv = 1 / (sqrt 2 + 0.5)
    a = 1.0 / (math.sqrt(2.0) + 0.5)
    assert_close(group_advantages(torch.tensor([2.0, 0.0]), 2, "grpo", eps=0.5), [a, -a])


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_advantages_all_equal_group_is_exactly_zero(mode):
    # 0.1 is not representable; whatever the float mean rounds to, the advantage must be exactly 0, no NaN
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7])
    out = group_advantages(rewards, 3, mode)
    assert torch.equal(out, torch.zeros(6))
    # group size 1: every group is "all equal", even for the std-based mode
    assert torch.equal(group_advantages(torch.tensor([3.0, -1.0]), 1, mode), torch.zeros(2))


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_advantages_depend_only_on_own_group(mode):
    # Layout is repeat_interleave: rows i*G..i*G+G-1 belong to prompt i. Permuting whole groups must
    # permute the output the same way; a layout bug (e.g. view(G, -1)) mixes groups and fails this.
    torch.manual_seed(0)
    rewards = torch.rand(3 * 4)  # [12]
    out = group_advantages(rewards, 4, mode).view(3, 4)  # [3, 4]
    perm = torch.tensor([2, 0, 1])
    permuted = rewards.view(3, 4)[perm].reshape(-1)  # [12]
    assert_close(group_advantages(permuted, 4, mode).view(3, 4), out[perm])
    # and each group's advantages sum to zero
    assert_close(out.sum(dim=1), [0.0, 0.0, 0.0], atol=1e-5)


def test_advantages_integer_rewards_and_errors():
    assert_close(group_advantages(torch.tensor([1, 0]), 2, "paper"), [0.5, -0.5])
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(7), 4, "paper")
    with pytest.raises(ValueError, match="paper, grpo, dr_grpo"):
        group_advantages(torch.zeros(8), 4, "ppo")


# ----------------------------------------------------------------------------- log-probs

# One row, T = 3, V = 3. Logits are logs of (unnormalised) weights, so softmax = weight / sum:
#   position 0: weights [1, 2, 3] -> probs [1/6, 2/6, 3/6]
#   position 1: weights [1, 1, 2] -> probs [1/4, 1/4, 2/4]
#   position 2: never used for scoring (it predicts the token after the sequence)
HAND_LOGITS = torch.log(torch.tensor([[[1.0, 2.0, 3.0], [1.0, 1.0, 2.0], [5.0, 1.0, 1.0]]]))  # [1, 3, 3]
HAND_IDS = torch.tensor([[0, 2, 1]])  # [1, 3]


def test_token_logprobs_by_hand():
    # out[0] = log p(ids[1]=2 | logits[0]) = log 3/6 ; out[1] = log p(ids[2]=1 | logits[1]) = log 1/4
    out = token_logprobs(HAND_LOGITS, HAND_IDS)
    assert out.shape == (1, 2)
    assert_close(out, [[math.log(0.5), math.log(0.25)]])


def test_token_logprobs_off_by_one_gives_different_numbers():
    # The paper's bug scored ids[t] with logits[t]: log p(ids[0]=0 | logits[0]) = log 1/6 and
    # log p(ids[1]=2 | logits[1]) = log 2/4 -- both differ from the correct log 1/2 and log 1/4.
    wrong = torch.log_softmax(HAND_LOGITS[:, :2], dim=-1).gather(-1, HAND_IDS[:, :2, None]).squeeze(-1)
    assert_close(wrong, [[math.log(1 / 6), math.log(0.5)]])
    out = token_logprobs(HAND_LOGITS, HAND_IDS)
    assert (out - wrong).abs().min() > 0.5
    # The last position's logits must not matter at all.
    changed = HAND_LOGITS.clone()
    changed[:, -1] = torch.tensor([-50.0, 30.0, 7.0])
    assert torch.equal(token_logprobs(changed, HAND_IDS), out)


def test_token_logprobs_matches_direct_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)  # [B, T, V]
    ids = torch.randint(0, 7, (2, 5))  # [B, T]
    out = token_logprobs(logits, ids)  # [B, T-1]
    assert out.shape == (2, 4)
    for b in range(2):
        for t in range(4):
            direct = torch.log_softmax(logits[b, t], dim=-1)[ids[b, t + 1]]
            assert_close(out[b, t], direct)


def test_token_logprobs_float32_from_bf16():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11).to(torch.bfloat16)  # [B, T, V]
    ids = torch.randint(0, 11, (2, 4))  # [B, T]
    out = token_logprobs(logits, ids)
    assert out.dtype == torch.float32
    assert_close(out, token_logprobs(logits.float(), ids), atol=1e-6)


def test_gather_logprobs_of_aligned_logits_is_slice_of_token_logprobs():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5)  # [B, T, V]
    ids = torch.randint(0, 5, (3, 6))  # [B, T]
    full = token_logprobs(logits, ids)  # [B, T-1]
    for prompt_length in range(1, 6):
        # completion tokens ids[:, p:], scored by the logits one position earlier
        out = gather_logprobs(logits[:, prompt_length - 1:-1], ids[:, prompt_length:])  # [B, T - prompt_length]
        assert out.shape == (3, 6 - prompt_length)
        assert_close(out, full[:, prompt_length - 1 :])


def test_gather_logprobs_hand():
    # prompt = ids[:, :2], completion = [ids[2]] = [1], scored by logits[1]: log 1/4
    assert_close(gather_logprobs(HAND_LOGITS[:, 1:2], HAND_IDS[:, 2:3]), [[math.log(0.25)]])


# ----------------------------------------------------------------------------- completion mask

EOS = 2


def test_completion_mask_token_by_token():
    ids = torch.tensor(
        [
            [5, 6, 2, 2, 2],  # EOS in the middle, padded with EOS (pad == EOS)
            [2, 2, 2, 2, 2],  # EOS first: only the EOS itself is kept
            [5, 6, 7, 8, 9],  # no EOS (truncated): all kept
            [5, 6, 7, 8, 2],  # EOS last: all kept
            [5, 2, 0, 0, 0],  # EOS then a different pad id
            [5, 2, 7, 2, 8],  # tokens after the first EOS are dropped even if not pads
        ]
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    mask = completion_mask(ids, EOS)
    assert mask.dtype == torch.float32
    assert torch.equal(mask, expected)
    assert mask.sum(dim=1).tolist() == [3, 1, 5, 5, 2, 2]  # kept tokens, EOS included


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))  # [1, 2]
    ref = torch.log(torch.tensor([[0.25, 0.5]]))  # [1, 2]
    # squared: (log .5 - log .25)^2 = (ln 2)^2 = 0.480453 ; (log .25 - log .5)^2 = (ln 2)^2
    assert_close(kl_per_token(logp, ref, "squared"), [[LN2**2, LN2**2]])
    # k3, token 0: x = ref - logp = ln(.25/.5) = -ln 2 ; e^x - x - 1 = 0.5 + ln 2 - 1 = 0.193147
    # k3, token 1: x = ln(.5/.25) = ln 2        ; e^x - x - 1 = 2 - ln 2 - 1  = 0.306853
    assert_close(kl_per_token(logp, ref, "k3"), [[0.5 + LN2 - 1, 1 - LN2]])


@pytest.mark.parametrize("estimator", PER_TOKEN_KL_ESTIMATORS)
def test_kl_zero_when_equal_and_k3_nonnegative(estimator):
    torch.manual_seed(0)
    logp = -torch.rand(4, 6) * 5  # [B, L]
    assert torch.equal(kl_per_token(logp, logp.clone(), estimator), torch.zeros(4, 6))
    ref = -torch.rand(4, 6) * 5  # [B, L]
    assert (kl_per_token(logp, ref, estimator) >= 0).all()


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="squared, k3"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k2")
    with pytest.raises(ValueError, match="per-token KL estimator 'squared_sequence'"):  # one value per row
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "squared_sequence")


# The paper's sequence KL (3.3.4). Row 0: two kept tokens whose log-ratios cancel; row 1: one kept token, then
# padding holding -inf; row 2: policy below the reference.
SEQ_LOGP = torch.tensor([[math.log(0.5), math.log(0.25)],
                         [math.log(0.5), -math.inf],
                         [math.log(0.25), math.log(0.5)]])  # [3, 2]
SEQ_REF = torch.tensor([[math.log(0.25), math.log(0.5)],
                        [math.log(0.125), 0.0],
                        [math.log(0.5), math.log(1.0)]])  # [3, 2]
SEQ_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # [3, 2]
# Sequence log-ratios: row 0: ln 2 - ln 2 = 0 ; row 1: ln(.5/.125) = 2 ln 2 ; row 2: -ln 2 - ln 2 = -2 ln 2.
# Squared: 0, 4 (ln 2)^2, 4 (ln 2)^2 ; mean over the 3 completions = 8/3 (ln 2)^2.
SEQ_KL = [0.0, 4 * LN2**2, 4 * LN2**2]


def test_kl_per_sequence_by_hand():
    assert_close(kl_per_sequence(SEQ_LOGP, SEQ_REF, SEQ_MASK), SEQ_KL)
    # Not the per-token square summed: row 0's tokens each differ by ln 2, so that would be 2 (ln 2)^2, not 0.
    assert_close(kl_per_token(SEQ_LOGP[:1], SEQ_REF[:1], "squared").sum(), 2 * LN2**2)
    assert kl_per_sequence(SEQ_LOGP, SEQ_REF, torch.zeros(3, 2)).tolist() == [0.0, 0.0, 0.0]  # no kept token


# ----------------------------------------------------------------------------- aggregation

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [2, 3]
RAGGED = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # [2, 3]: row 1 has one token


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("sequence_sum", 5.0),  # row sums 6 and 4 -> mean (6 + 4) / 2 = 5
        ("sequence_mean", 3.0),  # row means 6/3 = 2 and 4/1 = 4 -> (2 + 4) / 2 = 3
        ("token_mean", 2.5),  # (1+2+3+4) / 4 tokens = 2.5
        ("constant", 1.25),  # 10 / (B=2 * max_len=4) = 1.25
    ],
)
def test_aggregate_by_hand(mode, expected):
    assert_close(aggregate(PER_TOKEN, RAGGED, mode, max_completion_length=4), expected)


def test_aggregate_empty_rows_and_masked_inf():
    empty_row = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # [2, 3]
    # sequence_mean: (6/3 + 0) / 2 = 1 ; token_mean: 6 / 3 = 2 ; sequence_sum: 6 / 2 = 3
    assert_close(aggregate(PER_TOKEN, empty_row, "sequence_mean"), 1.0)
    assert_close(aggregate(PER_TOKEN, empty_row, "token_mean"), 2.0)
    assert_close(aggregate(PER_TOKEN, empty_row, "sequence_sum"), 3.0)
    for mode in AGGREGATIONS:
        assert aggregate(PER_TOKEN, torch.zeros(2, 3), mode, max_completion_length=3).item() == 0.0
    # a masked position holding inf must not turn the result into inf/NaN
    poisoned = PER_TOKEN.clone()
    poisoned[1, 2] = float("inf")
    assert_close(aggregate(poisoned, RAGGED, "token_mean"), 2.5)


def test_aggregate_errors():
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(PER_TOKEN, RAGGED, "constant")
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(PER_TOKEN, RAGGED, "constant", max_completion_length=2)  # shorter than L = 3
    with pytest.raises(ValueError, match="sequence_sum, sequence_mean, token_mean, constant"):
        aggregate(PER_TOKEN, RAGGED, "mean")


# ----------------------------------------------------------------------------- grpo_loss


def test_grpo_loss_paper_by_hand():
    # Row 0: two tokens, probs .5 and .25 ; row 1: one token, prob .5, then a padding position holding a
    # huge negative log-prob that must be ignored.
    logp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.5), -1e4]])  # [2, 2]
    ref = torch.tensor([[math.log(0.25), math.log(0.25)], [math.log(0.5), 0.0]])  # [2, 2]
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # [2, 2]
    adv = torch.tensor([1.0, -1.0])  # [2]
    loss, stats = grpo_loss(
        logp, ref, None, adv, mask,
        loss_type="paper", kl_coeff=0.1, kl_estimator="squared", aggregation="sequence_sum",
    )
    # policy: row 0 = -1 * (ln .5 + ln .25) = 3 ln 2 ; row 1 = +1 * ln .5 = -ln 2 ; mean = ln 2
    #   (= the paper's -(A * sequence_logprob).mean())
    # KL (squared): row 0 = (ln .5 - ln .25)^2 + 0 = (ln 2)^2 ; row 1 = 0 ; sequence_sum = (ln 2)^2 / 2
    # loss = ln 2 + 0.1 * (ln 2)^2 / 2 = 0.693147 + 0.024022 = 0.717169
    assert_close(loss, LN2 + 0.05 * LN2**2)
    assert stats["policy_loss"] == pytest.approx(LN2, abs=1e-6)
    # kl stat: mean over the 3 kept tokens = (ln 2)^2 / 3
    assert stats["kl"] == pytest.approx(LN2**2 / 3, abs=1e-6)
    assert stats["clip_fraction"] == 0.0
    assert stats["loss"] == pytest.approx(loss.item())
    assert set(stats) == {"policy_loss", "kl", "kl_sequence", "clip_fraction", "clip_fraction_low",
                          "clip_fraction_high", "loss"}
    assert all(isinstance(v, float) for v in stats.values())


# Policy term of SEQ_LOGP with advantages [1, -1, 0] (row 2 has no policy signal):
#   per-token -A * logp: row 0 = [ln 2, 2 ln 2] (sum 3 ln 2), row 1 = [ln .5] = [-ln 2], row 2 = [0, 0].
#   sequence_sum  (3 ln 2 - ln 2 + 0) / 3              = 2/3 ln 2
#   sequence_mean (3/2 ln 2 - ln 2 + 0) / 3            = 1/6 ln 2
#   token_mean    (3 ln 2 - ln 2) / 5 kept tokens      = 2/5 ln 2
#   constant      (3 ln 2 - ln 2) / (3 rows * 4 max)   = 1/6 ln 2
# The sequence KL enters once per completion whatever the aggregation: + 0.1 * 8/3 (ln 2)^2.
SEQ_ADV = torch.tensor([1.0, -1.0, 0.0])  # [3]


@pytest.mark.parametrize("aggregation, policy_loss", [
    ("sequence_sum", 2 / 3 * LN2), ("sequence_mean", 1 / 6 * LN2), ("token_mean", 2 / 5 * LN2),
    ("constant", 1 / 6 * LN2),
])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_squared_sequence_kl_loss_by_hand(aggregation, policy_loss, loss_type):
    logp = SEQ_LOGP.clone().requires_grad_(True)  # [3, 2]
    loss, stats = grpo_loss(logp, SEQ_REF, None, SEQ_ADV, SEQ_MASK, loss_type=loss_type, kl_coeff=0.1,
                            kl_estimator="squared_sequence", aggregation=aggregation, max_completion_length=4)
    kl = 8 / 3 * LN2**2
    if loss_type == "paper":  # the clipped loss at ratio 1 has the value -A, not -A * logp
        assert_close(loss, policy_loss + 0.1 * kl)
        assert stats["policy_loss"] == pytest.approx(policy_loss, abs=1e-6)
    assert stats["loss"] == pytest.approx(stats["policy_loss"] + 0.1 * kl, abs=1e-6)
    assert stats["kl"] == pytest.approx(kl, abs=1e-6) and stats["kl_sequence"] == pytest.approx(kl, abs=1e-6)

    # Gradient of the KL term alone (advantages 0): d/dlogp_bt [0.1 * 1/3 sum_b D_b^2] = 0.1 * 2 D_b / 3 on every
    # kept token of row b, D_b its sequence log-ratio; 0 on padding. The sign pulls the sequence log-prob back
    # towards the reference's: positive (descent lowers logp) where the policy is above it, negative below.
    logp = SEQ_LOGP.clone().requires_grad_(True)  # [3, 2]
    loss, _ = grpo_loss(logp, SEQ_REF, None, torch.zeros(3), SEQ_MASK, loss_type=loss_type, kl_coeff=0.1,
                        kl_estimator="squared_sequence", aggregation=aggregation, max_completion_length=4)
    (grad,) = torch.autograd.grad(loss, logp)
    g = 0.1 * 2 * 2 * LN2 / 3
    assert grad.shape == (3, 2)
    assert_close(grad, [[0.0, 0.0], [g, 0.0], [-g, -g]])


def test_squared_sequence_is_the_papers_loss_exactly():
    """loss_type paper + sequence_sum + squared_sequence = Appendix B.1 on sequence log-probs, in value and
    gradient: policy_loss = -(advantages * logprobs_new).mean(); kl = ((logprobs_new - logprobs_ref) ** 2).mean()."""
    torch.manual_seed(3)
    base = -torch.rand(4, 5) * 3  # [B, L]
    ref = -torch.rand(4, 5) * 3  # [B, L]
    mask = completion_mask(torch.tensor([[1, 1, 2, 0, 0], [1, 1, 1, 1, 1], [2, 0, 0, 0, 0], [1, 2, 0, 0, 0]]), 2)
    adv = torch.randn(4)  # [B]
    logp = base.clone().requires_grad_(True)
    ours, _ = grpo_loss(logp, ref, None, adv, mask, loss_type="paper", kl_coeff=0.05,
                        kl_estimator="squared_sequence", aggregation="sequence_sum")
    (ours_grad,) = torch.autograd.grad(ours, logp)
    logp = base.clone().requires_grad_(True)
    logprobs_new, logprobs_ref = (logp * mask).sum(dim=1), (ref * mask).sum(dim=1)  # [B]
    paper = -(adv * logprobs_new).mean() + 0.05 * ((logprobs_new - logprobs_ref) ** 2).mean()
    (paper_grad,) = torch.autograd.grad(paper, logp)
    assert_close(ours, paper.item())
    assert_close(ours_grad, paper_grad)
    # ... and the per-token "squared" is a different loss on the same numbers.
    per_token, _ = grpo_loss(base, ref, None, adv, mask, loss_type="paper", kl_coeff=0.05, kl_estimator="squared",
                             aggregation="sequence_sum")
    assert abs(per_token.item() - paper.item()) > 1e-3


def test_kl_sequence_stat_whatever_the_estimator():
    # The per-token estimators' loss is unchanged, and kl_sequence is reported beside their own kl.
    _, stats = grpo_loss(SEQ_LOGP, SEQ_REF, None, SEQ_ADV, SEQ_MASK, loss_type="paper", kl_coeff=0.1,
                         kl_estimator="squared", aggregation="sequence_sum")
    assert stats["kl_sequence"] == pytest.approx(8 / 3 * LN2**2, abs=1e-6)
    # kl: per-token squared over the 5 kept tokens: (ln 2)^2 * 2 + (2 ln 2)^2 + (ln 2)^2 * 2 = 8 (ln 2)^2 -> / 5
    assert stats["kl"] == pytest.approx(8 / 5 * LN2**2, abs=1e-6)
    _, no_ref = grpo_loss(SEQ_LOGP, None, None, SEQ_ADV, SEQ_MASK, loss_type="paper", kl_coeff=0.0,
                          kl_estimator="squared_sequence", aggregation="sequence_sum")
    assert no_ref["kl"] == no_ref["kl_sequence"] == 0.0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_clipped_with_detached_old_has_paper_gradient(aggregation):
    # At ratio = 1, d/dlogp [ratio * A] = A = d/dlogp [A * logp]: one update per generation makes the
    # clipped objective and plain REINFORCE identical in gradient.
    torch.manual_seed(0)
    base = -torch.rand(3, 5) * 3  # [B, L]
    mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])  # [B, L]
    adv = torch.randn(3)  # [B]
    kwargs = dict(kl_coeff=0.0, kl_estimator="k3", aggregation=aggregation, max_completion_length=6)

    grads = []
    for loss_type, old in (("paper", None), ("clipped", None), ("clipped", "detached")):
        logp = base.clone().requires_grad_(True)  # [B, L]
        old_logp = logp.detach() if old == "detached" else None
        loss, stats = grpo_loss(logp, None, old_logp, adv, mask, loss_type=loss_type, **kwargs)
        (grad,) = torch.autograd.grad(loss, logp)
        grads.append(grad)
        assert stats["kl"] == 0.0
        assert stats["clip_fraction"] == 0.0
    assert grads[0].abs().sum() > 0
    assert_close(grads[1], grads[0])
    assert_close(grads[2], grads[0])
    # padding tokens get no gradient
    assert torch.equal(grads[0][mask == 0], torch.zeros(int((mask == 0).sum())))


def test_clipping_by_hand():
    # eps = 0.2, trust region [0.8, 1.2]. One sequence per case, sequence_sum over 2 tokens, B = 1:
    #   A = +1: token 0 ratio 0.6/0.4 = 1.5 > 1.2 -> -min(1.5, 1.2) = -1.2, gradient 0 (clipped)
    #           token 1 ratio 1              -> -min(1, 1) = -1, d/dlogp = -ratio * A = -1
    #   loss = -2.2, clip_fraction 1/2
    old = torch.log(torch.tensor([[0.4, 0.3]]))  # [1, 2]
    logp = torch.log(torch.tensor([[0.6, 0.3]])).requires_grad_(True)  # [1, 2]
    mask = torch.ones(1, 2)  # [1, 2]
    kwargs = dict(loss_type="clipped", kl_coeff=0.0, kl_estimator="squared", aggregation="sequence_sum")
    loss, stats = grpo_loss(logp, None, old, torch.tensor([1.0]), mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(loss, -2.2)
    assert_close(grad, [[0.0, -1.0]])
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert (stats["clip_fraction_low"], stats["clip_fraction_high"]) == (0.0, pytest.approx(0.5))  # above 1+eps

    #   A = -1: token 0 ratio 1.5 -> -min(-1.5, -1.2) = 1.5, not clipped, d/dlogp = -ratio * A = 1.5
    #           token 1 ratio 0.2/0.4 = 0.5 < 0.8 -> -min(-0.5, -0.8) = 0.8, clipped, gradient 0
    #   loss = 2.3, clip_fraction 1/2
    logp = torch.log(torch.tensor([[0.6, 0.2]])).requires_grad_(True)  # [1, 2]
    old = torch.log(torch.tensor([[0.4, 0.4]]))  # [1, 2]
    loss, stats = grpo_loss(logp, None, old, torch.tensor([-1.0]), mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(loss, 2.3)
    assert_close(grad, [[1.5, 0.0]])
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert (stats["clip_fraction_low"], stats["clip_fraction_high"]) == (pytest.approx(0.5), 0.0)  # below 1-eps


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_kl_stat_exactly_zero_when_policy_equals_reference(estimator, loss_type):
    torch.manual_seed(0)
    logp = (-torch.rand(2, 4) * 4).requires_grad_(True)  # [B, L]
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])  # [B, L]
    adv = torch.tensor([0.5, -0.5])  # [B]
    loss, stats = grpo_loss(
        logp, logp.detach().clone(), None, adv, mask,
        loss_type=loss_type, kl_coeff=0.05, kl_estimator=estimator, aggregation="token_mean",
    )
    assert stats["kl"] == 0.0
    assert stats["loss"] == pytest.approx(stats["policy_loss"])
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("estimator", ["k3", "squared_sequence"])
@pytest.mark.parametrize("aggregation", ["sequence_sum", "sequence_mean", "constant"])
def test_grpo_loss_batch_equals_mean_of_halves(aggregation, estimator):
    # Per-sequence aggregations are means over rows: two equal halves average to the whole batch.
    torch.manual_seed(1)
    logp = -torch.rand(4, 5) * 3  # [B, L]
    ref = -torch.rand(4, 5) * 3  # [B, L]
    mask = completion_mask(torch.tensor([[1, 1, 2, 0, 0], [1, 1, 1, 1, 1], [2, 0, 0, 0, 0], [1, 2, 0, 0, 0]]), 2)
    adv = torch.randn(4)  # [B]
    kwargs = dict(loss_type="clipped", kl_coeff=0.1, kl_estimator=estimator, aggregation=aggregation,
                  max_completion_length=5)
    whole, _ = grpo_loss(logp, ref, None, adv, mask, **kwargs)
    first, _ = grpo_loss(logp[:2], ref[:2], None, adv[:2], mask[:2], **kwargs)
    second, _ = grpo_loss(logp[2:], ref[2:], None, adv[2:], mask[2:], **kwargs)
    assert_close(whole, (first + second) / 2)


def test_grpo_loss_errors():
    logp = torch.zeros(1, 2)  # [1, 2]
    mask = torch.ones(1, 2)  # [1, 2]
    adv = torch.zeros(1)  # [1]
    ok = dict(loss_type="paper", kl_coeff=0.0, kl_estimator="squared", aggregation="sequence_sum")
    with pytest.raises(ValueError, match="paper, clipped"):
        grpo_loss(logp, None, None, adv, mask, **{**ok, "loss_type": "ppo"})
    with pytest.raises(ValueError, match="sequence_sum, sequence_mean, token_mean, constant"):
        grpo_loss(logp, None, None, adv, mask, **{**ok, "aggregation": "sum"})
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, None, None, adv, mask, **{**ok, "kl_coeff": 0.1})
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, None, None, torch.zeros(2), mask, **ok)


# ----------------------------------------------------------------------------- SFT labels

PAD = 2  # pad == EOS, as with many chat tokenizers: only the attention mask tells them apart
SFT_IDS = torch.tensor(
    [
        [11, 12, 13, 21, 2, 2, 2],  # prompt 11 12 13 | answer 21 + EOS | 2 pads
        [11, 12, 21, 22, 23, 2, 2],  # prompt 11 12    | answer 21 22 23 + EOS | 1 pad
    ]
)
SFT_ATTENTION = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
X = IGNORE_INDEX


@pytest.mark.parametrize("prompt_lengths", [[3, 2], torch.tensor([3, 2])])
def test_sft_labels_mask_prompt_and_padding(prompt_lengths):
    labels = sft_labels(prompt_lengths, SFT_IDS, SFT_ATTENTION)
    expected = torch.tensor([[X, X, X, 21, 2, X, X], [X, X, 21, 22, 23, 2, X]])
    assert torch.equal(labels, expected)
    assert SFT_IDS[0, 0] == 11  # input not modified in place


def test_sft_labels_train_on_prompt():
    labels = sft_labels([3, 2], SFT_IDS, SFT_ATTENTION, train_on_prompt=True)
    expected = torch.tensor([[11, 12, 13, 21, 2, X, X], [11, 12, 21, 22, 23, 2, X]])
    assert torch.equal(labels, expected)


def test_sft_labels_errors():
    with pytest.raises(ValueError):
        sft_labels([3], SFT_IDS, SFT_ATTENTION)  # one length for two rows
    with pytest.raises(ValueError):
        sft_labels([3, 8], SFT_IDS, SFT_ATTENTION)  # longer than the row


# ----------------------------------------------------------------------------- entropy and truncation


def test_token_entropy_by_hand():
    # Row 0, token 0: logits (0, 0) -> p = (1/2, 1/2), entropy ln 2.
    # Row 0, token 1: logits (ln 3, 0) -> p = (3/4, 1/4), entropy -(3/4 ln 3/4 + 1/4 ln 1/4) = 2 ln 2 - 3/4 ln 3.
    # Row 1, token 0: logits (0, 0) -> ln 2; row 1, token 1 is masked (its logits would give entropy ~0).
    # Mean over the 3 kept tokens: (ln 2 + 2 ln 2 - 3/4 ln 3 + ln 2) / 3 = 4/3 ln 2 - ln 3 / 4 = 0.649543.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]],
                           [[0.0, 0.0], [100.0, 0.0]]])  # [B=2, L=2, V=2]
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # [B, L]
    assert_close(token_entropy(logits, mask), 4 / 3 * LN2 - math.log(3.0) / 4)
    assert token_entropy(logits, torch.zeros(2, 2)).item() == 0.0  # nothing kept


def test_truncated_rows_and_loss_mask():
    eos = 9
    completions = torch.tensor([[4, 9, 9], [4, 5, 6], [9, 9, 9]])  # [B, L]; row 1 never ends
    mask = completion_mask(completions, eos)  # [B, L]
    truncated = truncated_rows(completions, mask, eos)
    assert truncated.tolist() == [False, True, False]
    # Row 1 right-padded with a pad token that is EOS (rows of two generate calls stacked): still truncated.
    padded = torch.cat([completions, torch.full((3, 1), eos)], dim=1)  # [B, L+1]
    padded_mask = torch.cat([mask, torch.zeros(3, 1)], dim=1)  # [B, L+1]
    assert truncated_rows(padded, padded_mask, eos).tolist() == [False, True, False]
    assert torch.equal(loss_mask(mask, truncated, False), mask)
    assert loss_mask(mask, truncated, True).tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("estimator", ["k3", "squared_sequence"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_masked_truncated_completions_get_exactly_zero_gradient(aggregation, loss_type, estimator):
    """mask_truncated_completions: the truncated row's log-probs get a gradient of exactly 0, and the other rows get
    the gradient they would get if the truncated row were not in the batch at all (up to the aggregation's
    normaliser: sequence_* and constant divide by the number of rows, which still counts the masked one)."""
    torch.manual_seed(0)
    base = -torch.rand(3, 4) * 3  # [B, L]
    completions = torch.tensor([[4, 5, 9, 9], [4, 5, 6, 7], [4, 9, 9, 9]])  # row 1 truncated
    kept = completion_mask(completions, 9)  # [B, L]
    mask = loss_mask(kept, truncated_rows(completions, kept, 9), True)  # [B, L]
    adv = torch.tensor([0.5, 2.0, -1.0])  # [B]
    ref = base - 0.3  # [B, L]
    logp = base.clone().requires_grad_(True)
    loss, _ = grpo_loss(logp, ref, None, adv, mask, loss_type=loss_type, kl_coeff=0.1, kl_estimator=estimator,
                        aggregation=aggregation, max_completion_length=4)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[1], torch.zeros(4))
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
