"""The GCPO maths, checked against hand computations."""

import math
import random

import pytest
import torch

from gcpo_cli.loss import (
    clipped_objective,
    golden_slot,
    group_advantages,
    log_ratio,
    overlong_shaping,
    policy_loss,
)
from gcpo_cli.logprobs import head_logprobs, token_logprobs


def test_group_advantages_standardise_within_each_group():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    a = group_advantages(r)
    # group 1: mean 0.25, population std sqrt(0.1875)
    std = math.sqrt(0.1875)
    assert a[0].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rel=1e-5)
    assert a[1].tolist() == pytest.approx([1, 1, -1, -1], rel=1e-5)
    assert group_advantages(r, "none")[0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_zero_variance_groups_have_zero_advantage():
    a = group_advantages(torch.tensor([[0.0] * 8, [1.0] * 8]))
    assert torch.count_nonzero(a) == 0


def test_golden_answer_goes_only_into_all_wrong_groups_and_replaces_exactly_one():
    assert golden_slot([False] * 8, has_golden=True) == 7  # the last wrong one by default
    assert golden_slot([False] * 8, has_golden=False) is None  # no GA to give
    assert golden_slot([False] * 7 + [True], has_golden=True) is None  # some contrast already
    assert golden_slot([True] * 8, has_golden=True) is None  # all correct: nothing to add
    slots = {golden_slot([False] * 8, True, "random", random.Random(s)) for s in range(50)}
    assert slots <= set(range(8)) and len(slots) > 1


def test_gcpo_group_with_golden_answer_has_signed_advantages():
    rewards = torch.tensor([[0.0] * 7 + [1.0]])
    a = group_advantages(rewards)[0]
    assert a[-1] > 0 and (a[:-1] < 0).all()
    assert float(a.sum()) == pytest.approx(0.0, abs=1e-5)


def test_sequence_ratio_matches_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.2, -0.4, 0.0, 0.0]])
    old = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.1, -0.1, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # row 0: diffs 0.5, -1.0, 0.0 over 3 tokens -> mean -1/6; row 1: -0.1, -0.3 -> mean -0.2
    seq = log_ratio(logp, old, mask, "sequence")
    assert seq.tolist() == pytest.approx([-0.5 / 3, -0.2], rel=1e-6)
    assert torch.exp(seq).tolist() == pytest.approx([math.exp(-0.5 / 3), math.exp(-0.2)], rel=1e-6)
    assert log_ratio(logp, old, mask, "sequence_sum").tolist() == pytest.approx([-0.5, -0.4], rel=1e-6)
    tok = log_ratio(logp, old, mask, "token")
    assert tok[0].tolist() == pytest.approx([0.5, -1.0, 0.0, 0.0])


def test_clipping_is_pessimistic_in_both_directions():
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    obj, clipped = clipped_objective(ratio, adv, eps_low=0.2, eps_high=0.28)
    # A>0: min(1.5, 1.28) = 1.28 (clipped); min(0.5, 0.8) = 0.5 (not clipped)
    # A<0: min(-1.5, -1.28) = -1.5 (not clipped); min(-0.5, -0.8) = -0.8 (clipped)
    assert obj.tolist() == pytest.approx([1.28, 0.5, -1.5, -0.8, 2.0])
    assert clipped.tolist() == [True, False, False, True, False]


def test_on_policy_gradient_is_advantage_weighted_mean_logprob_gradient():
    """With one update per batch s == 1, and grad L = -(1/N) sum_i A_i grad mean_t logp_i."""
    torch.manual_seed(0)
    theta = torch.randn(2, 3, requires_grad=True)
    logp = torch.log_softmax(theta, dim=-1)  # [2, 3] as per-token log-probs
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.5, -0.5])
    parts = policy_loss(logp, logp.detach(), mask, adv, ratio_level="sequence", loss_agg="sequence",
                        eps_low=3e-4, eps_high=4e-4, denom=2)
    assert float(parts.loss) == pytest.approx(-(1.5 - 0.5) / 2, rel=1e-6)
    assert parts.seq_ratio.tolist() == pytest.approx([1.0, 1.0])
    (g,) = torch.autograd.grad(parts.loss, theta)
    theta2 = theta.detach().clone().requires_grad_(True)
    lp = torch.log_softmax(theta2, dim=-1)
    mean_lp = (lp * mask).sum(1) / mask.sum(1)
    (g_ref,) = torch.autograd.grad(-(adv * mean_lp).sum() / 2, theta2)
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_token_level_aggregations_differ_as_specified():
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, 1.0])
    kw = dict(ratio_level="token", eps_low=0.2, eps_high=0.2)
    mean = policy_loss(logp, logp, mask, adv, loss_agg="token_mean", denom=2, **kw)
    total = policy_loss(logp, logp, mask, adv, loss_agg="token_sum", denom=4, **kw)
    assert float(mean.loss) == pytest.approx(-1.0)  # mean of per-sequence token means
    assert float(total.loss) == pytest.approx(-1.0)  # 4 tokens / 4 tokens
    assert total.clip_units == 4 and mean.clip_units == 4


def test_luffy_shaping_only_touches_golden_rows():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    mask = torch.ones(2, 2)
    adv = torch.tensor([1.0, 1.0])
    golden = torch.tensor([True, False])
    parts = policy_loss(logp, logp, mask, adv, ratio_level="sequence", loss_agg="sequence", eps_low=0.2,
                        eps_high=0.2, denom=1, golden=golden, golden_weighting="luffy")
    assert float(parts.loss) == pytest.approx(-(0.5 / 0.6 + 1.0))


def test_overlong_shaping():
    out = overlong_shaping(torch.tensor([10, 36, 42, 48]), max_len=48, buffer=12, penalty=1.0)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])


def test_token_logprobs_equals_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(0, 11, (2, 3))
    ref = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets), ref, atol=1e-6)


def test_chunked_head_logprobs_match_and_backprop_like_the_full_computation():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False)
    hidden = torch.randn(3, 5, 8, requires_grad=True)
    targets = torch.randint(0, 13, (3, 5))
    full = head_logprobs(hidden, head, targets)  # one chunk
    (g_full,) = torch.autograd.grad(full.sum(), hidden)
    chunked = head_logprobs(hidden, head, targets, max_elements=13 * 4)  # chunks of 4 positions
    (g_chunked,) = torch.autograd.grad(chunked.sum(), hidden)
    assert torch.allclose(full, chunked, atol=1e-6) and torch.allclose(g_full, g_chunked, atol=1e-6)
    assert torch.allclose(full, token_logprobs(head(hidden), targets), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fused_head_gradients_match_autograd_for_hidden_states_and_weight_with_padding(temperature):
    """The fused head (HeadLogprob) against plain autograd through head -> log_softmax ->
    gather: values, the gradient of any upstream loss to the hidden states and to the weight,
    padded positions left at 0, and the per-position entropy."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False).double()
    hidden = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (3, 5))
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    upstream = torch.randn(3, 5, dtype=torch.float64)
    ref = token_logprobs(head(hidden) / temperature, targets).double() * mask
    ls = torch.log_softmax(head(hidden) / temperature, -1)
    want_entropy = -(ls.exp() * ls).sum(-1) * mask
    want = torch.autograd.grad((ref * upstream).sum(), [hidden, head.weight])
    for chunk in (13 * 2, 13 * 100):  # several chunks, and one
        got, entropy = head_logprobs(hidden, head, targets, temperature, max_elements=chunk, mask=mask, entropy=True)
        assert torch.allclose(got.double(), ref, atol=1e-5)
        assert torch.equal(got[0, 3:], torch.zeros(2))
        assert torch.allclose(entropy.double(), want_entropy, atol=1e-5)
        grads = torch.autograd.grad((got.double() * upstream).sum(), [hidden, head.weight])
        for g, w in zip(grads, want):
            assert torch.allclose(g.double(), w, atol=1e-5)


def test_clip_removes_exactly_the_gradient_of_sequences_outside_the_range_on_the_advantage_side():
    """GSPO-scale clip [1-3e-4, 1+4e-4]: a sequence whose ratio left the range in the direction
    its advantage pushes contributes no gradient; every other sequence does."""
    eps_low, eps_high = 3e-4, 4e-4
    # sequence log-ratios (one token each): above, above, below, below, inside
    shift = torch.tensor([[1e-3], [1e-3], [-1e-3], [-1e-3], [1e-4]])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    old = torch.full((5, 1), -1.0)
    logp = (old + shift).requires_grad_(True)
    parts = policy_loss(logp, old, torch.ones(5, 1), adv, ratio_level="sequence", loss_agg="sequence",
                        eps_low=eps_low, eps_high=eps_high, denom=5)
    (g,) = torch.autograd.grad(parts.loss, logp)
    zero = g[:, 0].abs() < 1e-12
    assert zero.tolist() == [True, False, True, False, False]
    assert parts.clipped == 2 and parts.clip_units == 5
    assert parts.clipped_low == 1  # the one below 1 - eps_low (A < 0); the other is above 1 + eps_high
    # the others keep the unclipped gradient -A_i * s_i / N
    ratio = torch.exp(shift[:, 0])
    assert g[[1, 3, 4], 0].tolist() == pytest.approx((-adv * ratio / 5)[[1, 3, 4]].tolist(), rel=1e-5)


def test_sequence_sum_ratio_stays_finite_after_a_large_update():
    logp = torch.zeros(1, 3000)
    old = torch.full((1, 3000), -0.5)  # a sum of log-ratios of 1500: exp() is inf unclamped
    lr = log_ratio(logp, old, torch.ones(1, 3000), "sequence_sum")
    assert torch.isfinite(torch.exp(lr)).all()
    parts = policy_loss(logp, old, torch.ones(1, 3000), torch.tensor([1.0]), ratio_level="sequence_sum",
                        loss_agg="sequence", eps_low=0.2, eps_high=0.2, denom=1)
    assert torch.isfinite(parts.loss)


def test_luffy_weighting_against_plain_is_gamma_p_over_p_plus_gamma_squared():
    """Per token, LUFFY's gradient is gamma*p/(p+gamma)^2 times plain's: at most 1/4, at p = gamma."""
    from gcpo_cli.loss import LUFFY_GAMMA

    p = torch.tensor([[0.01, 0.1, 0.5, 0.9]])
    grads = {}
    for weighting in ("plain", "luffy"):
        logp = torch.log(p).requires_grad_(True)
        parts = policy_loss(logp, logp.detach(), torch.ones(1, 4), torch.tensor([1.0]), ratio_level="token",
                            loss_agg="token_sum", eps_low=0.2, eps_high=0.2, denom=1,
                            golden=torch.tensor([True]), golden_weighting=weighting)
        (grads[weighting],) = torch.autograd.grad(parts.loss, logp)
    ratio = grads["luffy"] / grads["plain"]
    want = LUFFY_GAMMA * p / (p + LUFFY_GAMMA) ** 2
    assert ratio[0].tolist() == pytest.approx(want[0].tolist(), rel=1e-5)
    assert float(ratio.max()) <= 0.25 + 1e-6


def test_logprobs_are_at_the_sampling_temperature():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False)
    hidden = torch.randn(2, 4, 8)
    targets = torch.randint(0, 13, (2, 4))
    want = torch.log_softmax(head(hidden) / 0.6, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(head_logprobs(hidden, head, targets, temperature=0.6), want, atol=1e-6)
    chunked = head_logprobs(hidden, head, targets, temperature=0.6, max_elements=13 * 3)
    assert torch.allclose(chunked, want, atol=1e-6)
    assert not torch.allclose(head_logprobs(hidden, head, targets), want, atol=1e-3)
