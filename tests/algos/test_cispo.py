"""CISPO (MiniMax-M1 2025, eq. 4): a hand-computed case, a loop reference, and its defining property:
no token loses its gradient, only its weight is capped. Padding and micro-batch invariance:
tests/algos/test_policy_losses.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algos import PolicyLossInputs, compute_policy_loss, ppo_policy_loss


def test_hand_computed():
    # token ratios e^0 = 1, e^0.5 = 1.65 (capped at 1.28), e^-0.1 = 0.905 (inside); A = (1, 1, -2)
    lp = torch.tensor([[-1.0, -1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.5, -1.9]])
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    x = PolicyLossInputs(lp, old, adv, torch.ones(1, 3), clip_eps=1.0, clip_eps_high=0.28)
    loss, stats = compute_policy_loss("cispo", x)
    w = [1.0, 1.28, math.exp(-0.1)]
    expected = -(w[0] * 1 * -1.0 + w[1] * 1 * -1.0 + w[2] * -2 * -2.0) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dlp_t = -w_t A_t / 3: the capped token keeps a gradient (PPO's clip would give it none)
    torch.testing.assert_close(lp.grad, torch.tensor([[-w[0], -w[1], 2 * w[2]]]) / 3)
    assert float(stats["clipfrac"]) == pytest.approx(1 / 3)


def test_capped_tokens_keep_their_gradient_where_ppo_drops_it():
    lp = torch.tensor([[-1.0]], requires_grad=True)
    old, adv, mask = torch.tensor([[-2.0]]), torch.tensor([[1.0]]), torch.ones(1, 1)  # ratio e = 2.72, A > 0
    cispo, _ = compute_policy_loss("cispo", PolicyLossInputs(lp, old, adv, mask, clip_eps=0.2))
    (g_cispo,) = torch.autograd.grad(cispo, lp)
    ppo, _ = ppo_policy_loss(lp, old, adv, mask, clip_eps=0.2)
    (g_ppo,) = torch.autograd.grad(ppo, lp)
    assert float(g_ppo) == 0.0 and float(g_cispo) == pytest.approx(-1.2)


def test_matches_a_loop_reference():
    g = torch.Generator().manual_seed(5)
    lp = -torch.rand(4, 6, generator=g) * 2
    old = lp + 0.4 * torch.randn(4, 6, generator=g)
    adv = torch.randn(4, 6, generator=g)
    mask = (torch.arange(6)[None] < torch.tensor([6, 2, 1, 4])[:, None]).float()
    loss, _ = compute_policy_loss("cispo", PolicyLossInputs(lp, old, adv * mask, mask, clip_eps=0.3,
                                                            clip_eps_high=0.2))
    terms = [-min(max(math.exp(float(lp[b, t] - old[b, t])), 0.7), 1.2) * float(adv[b, t]) * float(lp[b, t])
             for b in range(4) for t in range(6) if mask[b, t] > 0]
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
