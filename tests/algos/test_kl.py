import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    AdaptiveKLController,
    AdaptivePenaltyCoef,
    FixedKLController,
    kl_divergence,
    kl_shaped_rewards,
    last_valid_index,
)
from tests.algos.batches import pad_columns, random_batch, randn


def test_estimators_hand_computed():
    # d = log pi - log pi_ref = log 2
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    d = math.log(2)
    assert kl_divergence(lp, ref, "k1").item() == pytest.approx(d)
    assert kl_divergence(lp, ref, "k2").item() == pytest.approx(d * d / 2)
    assert kl_divergence(lp, ref, "k3").item() == pytest.approx(0.5 - 1 + d)
    assert kl_divergence(ref, lp, "abs").item() == pytest.approx(d)
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        kl_divergence(lp, ref, "k4")


@settings(max_examples=30, deadline=None, database=None)
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=16))
def test_k2_k3_abs_are_nonnegative_and_zero_at_equality(diffs):
    d = torch.tensor([diffs], dtype=torch.float64)
    zero = torch.zeros_like(d)
    for est in ("k2", "k3", "abs"):
        kl = kl_divergence(d, zero, est)
        assert (kl >= 0).all()
        assert (kl[d == 0] == 0).all() and (kl[d.abs() > 1e-3] > 0).all()


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased_monte_carlo(estimator):
    # tokens sampled from pi: the sample mean of the estimator converges to KL(pi || ref)
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    est = kl_divergence(p.log()[idx][None], q.log()[idx][None], estimator)
    stderr = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - _kl(p.tolist(), q.tolist())) < 4 * stderr
    # k2 is biased: its expectation differs from the KL by far more than the noise
    k2 = kl_divergence(p.log()[idx][None], q.log()[idx][None], "k2")
    assert abs(k2.mean().item() - _kl(p.tolist(), q.tolist())) > 20 * stderr


def test_kl_shaped_rewards_hand_computed():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 9.0], [-0.1, 9.0, 9.0, 9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.3, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = kl_shaped_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.1, 0.0 + 2.0, 0.0], [-0.02 - 1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_kl_shaped_rewards_score_on_last_valid_token_and_padding_invariant(seed):
    mask, gen = random_batch(6, 7, seed)
    lp, ref = randn(mask.shape, gen, garbage_on=mask), randn(mask.shape, gen, garbage_on=mask)
    scores = torch.randn(6, generator=gen)
    out = kl_shaped_rewards(scores, lp, ref, mask, kl_coef=0.05, estimator="k3")
    lengths = mask.sum(-1).long()
    for b in range(6):
        n = int(lengths[b])
        kl = [math.exp(-(lp[b, t] - ref[b, t]).item()) - 1 + (lp[b, t] - ref[b, t]).item() for t in range(n)]
        expected = [-0.05 * k for k in kl]
        expected[n - 1] += scores[b].item()
        assert out[b, :n].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert out[b, n:].eq(0).all()
    padded = kl_shaped_rewards(scores, pad_columns(lp, 2), pad_columns(ref, 2), pad_columns(mask, 2, 0.0), 0.05, "k3")
    assert torch.equal(padded[:, :7], out) and padded[:, 7:].eq(0).all()


def test_last_valid_index_reads_the_mask_and_rejects_empty_rows():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]])
    assert last_valid_index(mask).tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_valid_index(torch.tensor([[1, 0], [0, 0]]))


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(10.0, 256)
    assert ctl.value == 0.05


def test_adaptive_controller_moves_towards_target():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=7.2, n_steps=100)  # 20% above target: raise the coefficient
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))
    up = ctl.value
    ctl.update(current_kl=5.4, n_steps=100)  # 10% below target: lower it
    assert ctl.value == pytest.approx(up * (1 - 0.1 * 100 / 10_000))
    before = ctl.value
    ctl.update(current_kl=600.0, n_steps=100)  # error clipped at +0.2
    assert ctl.value == pytest.approx(before * (1 + 0.2 * 100 / 10_000))
    ctl.update(current_kl=torch.tensor(6.0), n_steps=100)  # on target: unchanged; tensors accepted
    assert ctl.value == pytest.approx(before * (1 + 0.2 * 100 / 10_000))


def test_controllers_checkpoint_round_trip():
    for make in (lambda: AdaptiveKLController(0.1, 6.0, 100), lambda: AdaptivePenaltyCoef(1.0, 0.01),
                 lambda: FixedKLController(0.2)):
        a = make()
        a.update(9.0, 10)
        b = make()
        b.load_state_dict(a.state_dict())
        assert b.state_dict() == a.state_dict()
        a.update(1e-4, 10)
        b.update(1e-4, 10)
        assert a.value == b.value


def test_adaptive_penalty_coef_rule():
    ctl = AdaptivePenaltyCoef(init_beta=1.0, target=0.01)
    ctl.update(0.02)  # > 1.5 * target
    assert ctl.value == 2.0
    ctl.update(0.01)  # within tolerance
    assert ctl.value == 2.0
    ctl.update(0.005)  # < target / 1.5
    assert ctl.value == 1.0


def test_kl_at_end_charges_the_summed_kl_on_the_last_token():
    from rlhfkit.algos import discounted_returns, kl_shaped_rewards

    scores = torch.tensor([1.0, 2.0])
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.2], [-1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    per_token = kl_shaped_rewards(scores, lp, ref, mask, 0.1)
    at_end = kl_shaped_rewards(scores, lp, ref, mask, 0.1, at_end=True)
    # k1 = lp - ref: row 0 (0.5, 0, -0.8) -> -0.1 * sum = 0.03; row 1 (-1, 0) -> +0.1
    torch.testing.assert_close(at_end, torch.tensor([[0.0, 0.0, 1.03], [0.0, 2.1, 0.0]]))
    torch.testing.assert_close(per_token, torch.tensor([[-0.05, 0.0, 1.08], [0.1, 2.0, 0.0]]))
    # the return from the first token is the same; later tokens' returns differ
    g_tok, g_end = discounted_returns(per_token, mask), discounted_returns(at_end, mask)
    torch.testing.assert_close(g_tok[:, 0], g_end[:, 0])
    assert not torch.allclose(g_tok[:, 1], g_end[:, 1])
