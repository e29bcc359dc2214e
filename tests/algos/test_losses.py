import math

import pytest
import torch

from rlhfkit.algos import (
    AGG_MODES,
    aggregation_normalizer,
    entropy_bonus,
    entropy_loss,
    kl_loss,
    pairwise_reward_loss,
    ppo_penalty_loss,
    ppo_policy_loss,
    sft_loss,
    value_loss,
)
from tests.algos.batches import pad_columns, random_batch, randn


def _logprobs_for_ratios(ratios, old=-1.0):
    old_lp = torch.full((1, len(ratios)), old)
    lp = (old_lp + torch.tensor([ratios]).log()).requires_grad_(True)
    return lp, old_lp


def test_ppo_clipping_on_both_sides_of_the_ratio():
    lp, old = _logprobs_for_ratios([1.5, 0.5, 0.5, 1.5])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 4), clip_eps=0.2)
    # per token: clipped -1.2 | unclipped -0.5 | clipped 0.8 | unclipped 1.5
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # d/dlogprob of -A * ratio is -A * ratio; clipped tokens get no gradient
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 4, 0.0, 1.5 / 4])


def test_ppo_clip_higher_is_asymmetric():
    lp, old = _logprobs_for_ratios([1.25, 0.75])
    adv = torch.tensor([[1.0, -1.0]])
    sym, s_stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 2), clip_eps=0.2)
    high, h_stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 2), clip_eps=0.2, clip_eps_high=0.28)
    assert sym.item() == pytest.approx((-1.2 + 0.8) / 2)  # both tokens clipped
    assert high.item() == pytest.approx((-1.25 + 0.8) / 2)  # 1.25 < 1 + 0.28 stays unclipped
    assert s_stats["clipfrac"].item() == 1.0 and h_stats["clipfrac"].item() == 0.5


def test_dual_clip_bounds_negative_advantages_only():
    lp, old = _logprobs_for_ratios([5.0, 2.0, 5.0])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    loss, stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 3), clip_eps=0.2, dual_clip=3.0)
    # 5 -> capped at 3 | 2 -> 2 (below the cap) | positive advantage: ordinary clip -1.2
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([0.0, 2.0 / 3, 0.0])
    no_dual, _ = ppo_policy_loss(lp, old, adv, torch.ones(1, 3), clip_eps=0.2)
    assert no_dual.item() == pytest.approx((5.0 + 2.0 - 1.2) / 3)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_policy_loss(lp, old, adv, torch.ones(1, 3), dual_clip=0.5)


def test_ppo_stats_on_policy():
    mask, gen = random_batch(4, 5, seed=0)
    lp = randn(mask.shape, gen)
    loss, stats = ppo_policy_loss(lp, lp, torch.ones_like(lp), mask)
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(-1.0)
    _, stats = ppo_policy_loss(lp + 0.3 * randn(mask.shape, gen), lp, torch.ones_like(lp), mask)
    assert stats["approx_kl"].item() > 0


def test_ppo_garbage_on_padding_keeps_loss_and_gradient_finite():
    mask, gen = random_batch(5, 6, seed=1)
    lp = randn(mask.shape, gen, garbage_on=mask).requires_grad_(True)
    old, adv = randn(mask.shape, gen, garbage_on=mask), randn(mask.shape, gen, garbage_on=mask)
    loss, stats = ppo_policy_loss(lp, old, adv, mask, dual_clip=3.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all() and lp.grad[mask == 0].eq(0).all()
    assert all(torch.isfinite(v) for v in stats.values())
    padded, _ = ppo_policy_loss(pad_columns(lp.detach(), 2), pad_columns(old, 2), pad_columns(adv, 2),
                                pad_columns(mask, 2, 0.0), dual_clip=3.0)
    assert padded.item() == pytest.approx(loss.item())


def test_ppo_penalty_loss_hand_computed():
    lp, old = _logprobs_for_ratios([2.0, 0.5])
    adv = torch.tensor([[1.0, -2.0]])
    beta = 0.5
    loss, stats = ppo_penalty_loss(lp, old, adv, torch.ones(1, 2), beta=beta)
    kl = [2.0 - 1 - math.log(2.0), 0.5 - 1 - math.log(0.5)]  # KL(old || new), k3 form, >= 0
    assert stats["kl"].item() == pytest.approx(sum(kl) / 2)
    assert loss.item() == pytest.approx((-2.0 + beta * kl[0] + 1.0 + beta * kl[1]) / 2)
    loss.backward()
    # d/dlogprob: -A * ratio + beta * (ratio - 1)
    assert lp.grad[0].tolist() == pytest.approx([(-2.0 + 0.5) / 2, (1.0 - 0.25) / 2])


def test_value_loss_clipping_hand_computed():
    values = torch.tensor([[1.5, 0.5, 1.1]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0]])
    returns = torch.tensor([[2.0, 0.0, 2.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 3), clip_range=0.2)
    # token 0: (1.5-2)^2 = 0.25 vs clipped (1.2-2)^2 = 0.64 -> 0.64
    # token 1: (0.5-0)^2 = 0.25 vs clipped (0.8-0)^2 = 0.64 -> 0.64
    # token 2: inside the clip range: (1.1-2)^2 = 0.81 both
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.64 + 0.81) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    # clipped tokens get no gradient; token 2: 0.5 * 2 * (1.1 - 2) / 3
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.0, -0.9 / 3])
    unclipped, ustats = value_loss(values, old, returns, torch.ones(1, 3))
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.25 + 0.81) / 3)
    assert ustats["mse"].item() == pytest.approx((0.25 + 0.25 + 0.81) / 3)
    assert ustats["mean"].item() == pytest.approx(3.1 / 3)


def test_kl_loss_is_the_aggregated_estimator():
    mask, gen = random_batch(3, 4, seed=2)
    lp = randn(mask.shape, gen, garbage_on=mask).requires_grad_(True)
    ref = randn(mask.shape, gen, garbage_on=mask)
    loss, stats = kl_loss(lp, ref, mask, estimator="k3")
    valid = mask.bool()
    d = (lp - ref)[valid].detach()
    assert loss.item() == pytest.approx((torch.exp(-d) - 1 + d).mean().item(), rel=1e-5)
    assert stats["kl_k1"].item() == pytest.approx(d.mean().item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(lp.grad[valid], (1 - torch.exp(-d)) / valid.sum(), atol=1e-6)


def test_sft_and_entropy_terms():
    lp = torch.tensor([[-1.0, -2.0, 9.0], [-3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sft_loss(lp, mask).item() == pytest.approx(2.0)
    assert sft_loss(lp, mask, agg="seq-mean-token-mean").item() == pytest.approx((1.5 + 3.0) / 2)
    ent = torch.tensor([[0.5, 1.0, 7.0], [3.0, 7.0, 7.0]])
    bonus, stats = entropy_bonus(ent, mask)
    assert bonus.item() == pytest.approx(1.5) and stats["entropy"].item() == pytest.approx(1.5)
    assert entropy_loss(ent, mask)[0].item() == bonus.item()  # the trainer subtracts coef * H


def test_pairwise_loss_stable_at_large_gaps():
    chosen = torch.tensor([1000.0, -1000.0, 0.3], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 0.1])
    loss = pairwise_reward_loss(chosen, rejected)
    expected = (0.0 + 1000.0 - math.log(1 / (1 + math.exp(-0.2)))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(chosen.grad).all()
    assert chosen.grad.tolist() == pytest.approx([0.0, -1 / 3, -(1 - 1 / (1 + math.exp(-0.2))) / 3], abs=1e-6)
    margin = pairwise_reward_loss(torch.tensor([2.0]), torch.tensor([1.0]), margin=1.0)
    assert margin.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="same shape"):
        pairwise_reward_loss(torch.zeros(2), torch.zeros(3))


def _all_losses(mode, normalizer, norm_len):
    common = dict(agg=mode, normalizer=normalizer, norm_len=norm_len)
    return {
        "ppo": lambda p, d, m: ppo_policy_loss(p, d["old"], d["adv"], m, dual_clip=2.0, **common)[0],
        "penalty": lambda p, d, m: ppo_penalty_loss(p, d["old"], d["adv"], m, beta=0.3, **common)[0],
        "value": lambda p, d, m: value_loss(p, d["old"], d["adv"], m, clip_range=0.2, **common)[0],
        "kl": lambda p, d, m: kl_loss(p, d["old"], m, **common)[0],
        "entropy": lambda p, d, m: entropy_loss(p.exp(), m, **common)[0],
        "sft": lambda p, d, m: sft_loss(p, m, **common),
    }


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("name", ["ppo", "penalty", "value", "kl", "entropy", "sft"])
def test_micro_batches_give_the_full_batch_loss_and_gradient(name, mode):
    mask, gen = random_batch(8, 7, seed=5)
    T = mask.shape[1]
    data = {k: torch.randn(mask.shape, generator=gen, dtype=torch.float64) * 0.5 for k in ("old", "adv")}
    params = (torch.randn(mask.shape, generator=gen, dtype=torch.float64) * 0.5 + data["old"]).detach()

    full_p = params.clone().requires_grad_(True)
    full = _all_losses(mode, None, T)[name](full_p, data, mask)
    full.backward()

    micro_p = params.clone().requires_grad_(True)
    fn = _all_losses(mode, aggregation_normalizer(mask, mode), T)[name]
    total = 0.0
    for rows in (slice(0, 3), slice(3, 4), slice(4, 8)):
        t = int(mask[rows].sum(-1).max())  # micro-batches trimmed to their own longest response
        part = fn(micro_p[rows, :t], {k: v[rows, :t] for k, v in data.items()}, mask[rows, :t])
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(micro_p.grad, full_p.grad, rtol=1e-10, atol=1e-12)
    assert full_p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ppo", "penalty", "value", "kl", "entropy", "sft"])
def test_losses_reject_unknown_aggregation(name):
    mask = torch.ones(1, 2)
    data = {"old": torch.zeros(1, 2), "adv": torch.ones(1, 2)}
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        _all_losses("sum", None, None)[name](torch.zeros(1, 2), data, mask)


def test_pairwise_matches_logsigmoid_definition():
    gen = torch.Generator().manual_seed(0)
    c, r = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    expected = -torch.log(torch.sigmoid(c - r - 0.5)).mean()
    assert pairwise_reward_loss(c, r, margin=0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    assert pairwise_reward_loss(c, r, margin=torch.full((16,), 0.5)).item() == pytest.approx(expected.item(), rel=1e-5)
