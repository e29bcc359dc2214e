"""The policy-loss registry: one signature, one stats naming; hand-computed values; the invariances
every registered loss must keep (padding, micro-batching) are checked for all of them."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.algos import (POLICY_LOSSES, PolicyLossInputs, aggregation_normalizer, compute_policy_loss,
                           ppo_penalty_loss, ppo_policy_loss, register_policy_loss)


def batch(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    logprobs = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    lengths = torch.tensor([6, 3, 1, 4])[:B]
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return logprobs, old, adv * mask, mask


def test_clip_and_penalty_are_the_ppo_functions():
    lp, old, adv, mask = batch()
    loss, stats = compute_policy_loss("clip", PolicyLossInputs(lp, old, adv, mask, clip_eps=0.1, clip_eps_high=0.3,
                                                               dual_clip=3.0))
    ref, ref_stats = ppo_policy_loss(lp, old, adv, mask, clip_eps=0.1, clip_eps_high=0.3, dual_clip=3.0)
    assert torch.equal(loss, ref) and stats.keys() == ref_stats.keys()
    loss, stats = compute_policy_loss("penalty", PolicyLossInputs(lp, old, adv, mask, penalty_coef=0.5))
    ref, ref_stats = ppo_penalty_loss(lp, old, adv, mask, beta=0.5)
    assert torch.equal(loss, ref)
    assert torch.equal(stats["approx_kl"], ref_stats["kl"]) and torch.equal(stats["kl"], ref_stats["kl"])


def test_pg_hand_computed():
    # l_t = -A_t log pi_t: tokens (-1, -2) with A (1, 0.5), token mean: -(1 * -1 + 0.5 * -2) / 2 = 1.0
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.5]])
    loss, stats = compute_policy_loss("pg", PolicyLossInputs(lp, old, torch.tensor([[1.0, 0.5]]), torch.ones(1, 2)))
    assert float(loss) == pytest.approx(1.0)
    loss.backward()
    assert lp.grad.tolist() == [[-0.5, -0.25]]  # -A / 2, whatever the ratio (no clip, no importance weight)
    # approx_kl = mean(r - 1 - log r): r = 1 on token 0, e^0.5 on token 1
    r = torch.exp(torch.tensor(0.5))
    assert float(stats["approx_kl"]) == pytest.approx(float(r - 1 - 0.5) / 2, rel=1e-6)
    assert float(stats["ratio_mean"]) == pytest.approx(float(1 + r) / 2, rel=1e-6)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_every_loss_names_its_stats_the_same_way(name):
    lp, old, adv, mask = batch()
    loss, stats = compute_policy_loss(name, PolicyLossInputs(lp, old, adv, mask))
    assert loss.dim() == 0 and loss.requires_grad
    assert {"approx_kl", "ratio_mean"} <= set(stats)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_every_loss_ignores_padding(name):
    lp, old, adv, mask = batch()
    loss, _ = compute_policy_loss(name, PolicyLossInputs(lp, old, adv, mask))
    garbage = torch.where(mask.bool(), torch.zeros_like(old), torch.full_like(old, 50.0))
    lp2 = (lp.detach() + garbage).requires_grad_(True)
    loss2, _ = compute_policy_loss(name, PolicyLossInputs(lp2, old - garbage, adv + garbage, mask))
    assert float(loss2.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    loss2.backward()
    assert float(lp2.grad[mask == 0].abs().max()) == 0.0


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_every_loss_adds_up_over_micro_batches(name, agg):
    lp, old, adv, mask = batch()
    norm = aggregation_normalizer(mask, agg)
    whole, _ = compute_policy_loss(name, PolicyLossInputs(lp, old, adv, mask, agg=agg, normalizer=norm, norm_len=6))
    (g_whole,) = torch.autograd.grad(whole, lp)
    parts = [compute_policy_loss(name, PolicyLossInputs(lp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1],
                                                        agg=agg, normalizer=norm, norm_len=6))[0] for i in range(4)]
    (g_parts,) = torch.autograd.grad(sum(parts), lp)
    scale = float(whole.detach().abs()) + 1.0  # the loss's own scale, not an absolute float tolerance
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-6 * scale)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-5, atol=1e-7 * float(g_whole.abs().max()))


def test_registry_errors():
    lp, old, adv, mask = batch()
    with pytest.raises(ValueError, match="unknown policy loss 'nope'.*clip"):
        compute_policy_loss("nope", PolicyLossInputs(lp, old, adv, mask))
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("clip")(lambda x: x)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        PolicyLossInputs(lp, old[:, :3], adv, mask)
