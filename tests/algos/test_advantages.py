import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    MovingAverageBaseline,
    discounted_returns,
    gae_advantages,
    grpo_advantages,
    masked_mean,
    masked_var,
    nonuniform_groups,
    reinforce_baseline_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    sequence_returns,
)
from tests.algos.batches import (
    pad_columns,
    random_batch,
    randn,
    ref_gae,
    ref_returns,
    ref_whiten,
    row,
)


def test_gae_seed_example():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.3, 0.5, 0.8]])
    adv, ret = gae_advantages(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.8, 0.7, 0.5, 0.2])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_gae_seed_example_with_padding_and_lambda():
    # same row padded with garbage; lam = 0.5: A_3 = 0.2, A_2 = 0.3 + 0.1 = 0.4 (delta_2 = 0.3),
    # A_1 = 0.2 + 0.2 = 0.4 (delta_1 = 0.5 - 0.3), A_0 = 0.1 + 0.2 = 0.3 (delta_0 = 0.3 - 0.2)
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.2, 0.3, 0.5, 0.8, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.3, 0.4, 0.4, 0.2, 0.0])
    assert ret[0].tolist() == pytest.approx([0.5, 0.7, 0.9, 1.0, 0.0])


@pytest.mark.parametrize("seed, gamma, lam", [(0, 1.0, 0.95), (1, 0.9, 1.0), (2, 0.99, 0.0), (3, 0.8, 0.7)])
def test_gae_matches_per_row_loop(seed, gamma, lam):
    mask, gen = random_batch(6, 8, seed)
    rewards, values = randn(mask.shape, gen, garbage_on=mask), randn(mask.shape, gen, garbage_on=mask)
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    for b in range(6):
        ref_adv, ref_ret = ref_gae(row(rewards, mask, b), row(values, mask, b), gamma, lam)
        assert row(adv, mask, b) == pytest.approx(ref_adv, rel=1e-5, abs=1e-5)
        assert row(ret, mask, b) == pytest.approx(ref_ret, rel=1e-5, abs=1e-5)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))


@pytest.mark.parametrize("seed, gamma", [(0, 1.0), (1, 0.9), (2, 0.5)])
def test_discounted_returns_match_loop(seed, gamma):
    mask, gen = random_batch(5, 7, seed)
    rewards = randn(mask.shape, gen, garbage_on=mask)
    out = discounted_returns(rewards, mask, gamma)
    for b in range(5):
        assert row(out, mask, b) == pytest.approx(ref_returns(row(rewards, mask, b), gamma), rel=1e-5, abs=1e-5)
        assert sequence_returns(rewards, mask, gamma)[b].item() == pytest.approx(
            ref_returns(row(rewards, mask, b), gamma)[0], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("fn", [
    lambda r, v, m: gae_advantages(r, v, m, 0.9, 0.8),
    lambda r, v, m: (discounted_returns(r, m, 0.7),),
    lambda r, v, m: (reinforce_pp_advantages(r, m, 0.9),),
    lambda r, v, m: (reinforce_pp_baseline_advantages(r, m, 2),),
])
def test_padding_columns_change_no_valid_output(fn):
    mask, gen = random_batch(6, 6, seed=7)
    rewards, values = randn(mask.shape, gen, garbage_on=mask), randn(mask.shape, gen, garbage_on=mask)
    before = fn(rewards, values, mask)
    after = fn(pad_columns(rewards, 3), pad_columns(values, 3), pad_columns(mask, 3, 0.0))
    for x, y in zip(before, after):
        assert torch.allclose(y[:, :6], x, atol=1e-6)
        assert y[:, 6:].eq(0).all()


def test_grpo_hand_computed_group():
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735; (1 - 0.5) / 0.57735 = 0.866025
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    assert adv.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    # the biased std (0.5) would give +-1: make sure that is not what we compute
    assert not torch.allclose(adv.abs(), torch.ones(4), atol=1e-3)
    assert grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, normalize_std=False).tolist() == [0.5, -0.5, -0.5, 0.5]


def test_grpo_uniform_group_is_zero_not_nan():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 3.0, 3.0]), group_size=3)
    assert torch.isfinite(adv).all() and adv[:3].eq(0).all() and adv[3:].ne(0).all()


@pytest.mark.parametrize("seed", range(3))
def test_grpo_and_rloo_match_loop(seed):
    G = 4
    scores = torch.randn(12, generator=torch.Generator().manual_seed(seed))
    grpo, dr, rloo = grpo_advantages(scores, G), grpo_advantages(scores, G, normalize_std=False), rloo_advantages(scores, G)
    for g in range(3):
        group = scores[g * G:(g + 1) * G].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        for i, s in enumerate(group):
            others = group[:i] + group[i + 1:]
            assert grpo[g * G + i].item() == pytest.approx((s - mean) / (std + 1e-6), rel=1e-5)
            assert dr[g * G + i].item() == pytest.approx(s - mean, abs=1e-6)
            assert rloo[g * G + i].item() == pytest.approx(s - sum(others) / (G - 1), abs=1e-6)


def test_rloo_hand_computed():
    # s_i - mean of the other three
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), group_size=4)
    assert adv.tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0])


@settings(max_examples=30, deadline=None, database=None)
@given(st.integers(2, 5), st.lists(st.floats(-100, 100), min_size=10, max_size=10))
def test_rloo_is_scaled_group_centering(G, values):
    # s_i - mean_{j != i} s_j = G / (G - 1) * (s_i - mean_g): the two baselines differ only in scale
    scores = torch.tensor(values[: (10 // G) * G], dtype=torch.float64)
    expected = grpo_advantages(scores, G, normalize_std=False) * G / (G - 1)
    assert torch.allclose(rloo_advantages(scores, G), expected, atol=1e-9)
    assert torch.allclose(rloo_advantages(scores, G).view(-1, G).sum(-1), torch.zeros(len(scores) // G,
                          dtype=torch.float64), atol=1e-9)


def test_group_estimators_reject_bad_groups():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(torch.zeros(4), 1)


@pytest.mark.parametrize("seed, gamma", [(0, 1.0), (1, 0.95)])
def test_reinforce_pp_matches_loop(seed, gamma):
    mask, gen = random_batch(6, 7, seed)
    rewards = randn(mask.shape, gen, garbage_on=mask)
    out = reinforce_pp_advantages(rewards, mask, gamma)
    expected = ref_whiten([ref_returns(row(rewards, mask, b), gamma) for b in range(6)])
    for b in range(6):
        assert row(out, mask, b) == pytest.approx(expected[b], rel=1e-4, abs=1e-5)
    assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_var(out, mask).item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("seed", range(2))
def test_reinforce_pp_baseline_matches_loop(seed):
    G = 3
    mask, gen = random_batch(6, 5, seed)
    rewards = randn(mask.shape, gen, garbage_on=mask)
    out = reinforce_pp_baseline_advantages(rewards, mask, G)
    seq = [sum(row(rewards, mask, b)) for b in range(6)]
    centered = [seq[b] - statistics.mean(seq[(b // G) * G:(b // G + 1) * G]) for b in range(6)]
    expected = ref_whiten([[centered[b]] * int(mask[b].sum()) for b in range(6)])
    for b in range(6):
        assert row(out, mask, b) == pytest.approx(expected[b], rel=1e-4, abs=1e-5)


def test_reinforce_with_moving_average_baseline():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = torch.tensor([[0.0, 2.0, 9.0], [1.0, 0.0, 3.0]])  # sequence returns 2 and 4
    baseline = MovingAverageBaseline(decay=0.5)
    adv, ret = reinforce_baseline_advantages(rewards, mask, baseline)
    assert torch.equal(adv, ret)  # no baseline before the first batch
    assert ret.tolist() == [[2.0, 2.0, 0.0], [4.0, 3.0, 3.0]]
    assert baseline.value == pytest.approx(3.0)  # bias-corrected: the first batch mean
    adv, _ = reinforce_baseline_advantages(rewards, mask, baseline)
    assert adv.tolist() == [[-1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]
    # per-row loop with gamma < 1
    b2 = MovingAverageBaseline(decay=0.9)
    b2.update(0.25)
    adv, _ = reinforce_baseline_advantages(rewards, mask, b2, gamma=0.5)
    for b in range(2):
        assert row(adv, mask, b) == pytest.approx([g - 0.25 for g in ref_returns(row(rewards, mask, b), 0.5)])


def test_nonuniform_groups_keeps_informative_groups():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5 + 1e-9], dtype=torch.float64)
    keep = nonuniform_groups(scores, group_size=4)
    assert keep.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert nonuniform_groups(scores, 4, atol=1e-6).tolist() == [True] * 4 + [False] * 8
    assert keep.dtype == torch.bool


def test_estimators_do_not_track_gradients():
    rewards = torch.randn(2, 3, requires_grad=True)
    assert not discounted_returns(rewards, torch.ones(2, 3), 0.9).requires_grad
    assert not any(t.requires_grad for t in gae_advantages(rewards, rewards, torch.ones(2, 3)))
