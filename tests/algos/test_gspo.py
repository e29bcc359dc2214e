"""GSPO (Zheng et al. 2025): a hand-computed case, a loop reference, and the reduction to PPO's clip
for one-token responses. Padding and micro-batch invariance: tests/algos/test_policy_losses.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algos import PolicyLossInputs, compute_policy_loss, ppo_policy_loss


def test_hand_computed():
    # row 0: log ratios (0.2, -0.2) -> mean 0 -> s = 1; A = -0.5: loss 0.5, inside the clip
    # row 1: log ratios (0.5, 0.1, pad) -> mean 0.3 -> s = e^0.3 = 1.35 > 1.2; A = +1: clipped, -1.2
    lp = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -0.8, 0.0], [-1.5, -2.1, 9.0]])
    adv = torch.tensor([[-0.5, -0.5, 0.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    loss, stats = compute_policy_loss("gspo", PolicyLossInputs(lp, old, adv, mask, agg="seq-mean-token-mean",
                                                               clip_eps=0.2))
    assert float(loss.detach()) == pytest.approx((0.5 + -1.2) / 2, abs=1e-6)
    loss.backward()
    # row 0: d(-A s)/dlp_t = -A s / |y| = 0.25, over 2 sequences -> 0.125; row 1 clipped: no gradient
    torch.testing.assert_close(lp.grad, torch.tensor([[0.125, 0.125, 0.0], [0.0, 0.0, 0.0]]))
    assert float(stats["clipfrac"]) == pytest.approx(0.5)  # half the valid tokens belong to a clipped sequence
    assert float(stats["ratio_max"]) == pytest.approx(math.exp(0.3), rel=1e-6)


def loop_gspo(lp, old, adv, mask, eps_low, eps_high):
    """Sequence by sequence, as the paper writes it: mean over sequences of the per-sequence objective."""
    total, count = 0.0, 0
    for b in range(lp.shape[0]):
        idx = [t for t in range(lp.shape[1]) if mask[b, t] > 0]
        if not idx:
            continue
        s = math.exp(sum(float(lp[b, t] - old[b, t]) for t in idx) / len(idx))
        a = float(adv[b, idx[0]])
        total += max(-a * s, -a * min(max(s, 1 - eps_low), 1 + eps_high))
        count += 1
    return total / count


def test_matches_a_loop_reference():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(6, 5, generator=g) * 2
    old = lp + 0.1 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, 1, generator=g).expand(6, 5).clone()  # sequence-level advantages, as GRPO's
    mask = (torch.arange(5)[None] < torch.tensor([5, 2, 1, 4, 3, 5])[:, None]).float()
    loss, _ = compute_policy_loss("gspo", PolicyLossInputs(lp, old, adv * mask, mask, agg="seq-mean-token-mean",
                                                           clip_eps=0.05, clip_eps_high=0.08))
    assert float(loss) == pytest.approx(loop_gspo(lp, old, adv, mask, 0.05, 0.08), rel=1e-5)


def test_one_token_responses_are_ppo_clip():
    g = torch.Generator().manual_seed(4)
    lp = (-torch.rand(5, 1, generator=g)).requires_grad_(True)
    old, adv, mask = lp.detach() + 0.3 * torch.randn(5, 1, generator=g), torch.randn(5, 1, generator=g), torch.ones(5, 1)
    a, _ = compute_policy_loss("gspo", PolicyLossInputs(lp, old, adv, mask, clip_eps=0.1))
    b, _ = ppo_policy_loss(lp, old, adv, mask, clip_eps=0.1)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
