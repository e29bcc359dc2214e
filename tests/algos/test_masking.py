import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    AGG_MODES,
    aggregate_loss,
    aggregation_normalizer,
    explained_variance,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from tests.algos.batches import pad_columns, random_batch, randn, ref_whiten, row

X = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 5.0, 1e30, 0.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_masked_stats_hand_computed():
    # valid values 1, 2, 3, 4, 5: mean 3, unbiased var 10/4, biased var 10/5; padding holds NaN and 1e30
    assert masked_sum(X, M).item() == 15.0
    assert masked_mean(X, M).item() == 3.0
    assert torch.equal(masked_mean(X, M, dim=-1), torch.tensor([2.0, 4.5]))
    assert masked_var(X, M).item() == pytest.approx(2.5)
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(2.0)


def test_masked_mean_of_empty_row_is_zero_not_nan():
    assert torch.equal(masked_mean(torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=-1),
                       torch.tensor([1.0, 0.0]))


def test_masked_var_needs_two_values():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))


def test_whiten_uses_unbiased_variance():
    out = masked_whiten(X, M)
    expected = [(v - 3.0) / math.sqrt(2.5 + 1e-8) for v in (1, 2, 3, 4, 5)]
    assert out[0, :3].tolist() == pytest.approx(expected[:3])
    assert out[1, :2].tolist() == pytest.approx(expected[3:])
    assert out[0, 3] == 0 and out[1, 2:].eq(0).all()
    rescaled = masked_whiten(X, M, shift_mean=False)
    assert rescaled[0, 0].item() == pytest.approx(expected[0] + 3.0)


@pytest.mark.parametrize("seed", range(3))
def test_whiten_matches_loop(seed):
    mask, gen = random_batch(5, 6, seed)
    x = randn(mask.shape, gen, garbage_on=mask)
    out = masked_whiten(x, mask)
    rows = ref_whiten([row(x, mask, b) for b in range(5)])
    for b in range(5):
        assert row(out, mask, b) == pytest.approx(rows[b], rel=1e-5, abs=1e-5)


def test_nan_on_padding_does_not_reach_gradient():
    x = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 0]])
    masked_mean(x, mask).backward()
    assert torch.equal(x.grad, torch.tensor([[0.5, 0.0], [0.5, 0.0]]))


LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 7.0, 7.0, 7.0]])
LMASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),            # every token weighs the same
    ("seq-mean-token-mean", (2.0 + 4.0) / 2),       # row means 2 and 4
    ("seq-mean-token-sum-norm", (6 / 4 + 4 / 4) / 2),  # row sums over norm_len = T = 4
])
def test_aggregate_modes_hand_computed(mode, expected):
    assert aggregate_loss(LOSS, LMASK, mode).item() == pytest.approx(expected)


def test_aggregate_norm_len_and_normalizer():
    assert aggregate_loss(LOSS, LMASK, "seq-mean-token-sum-norm", norm_len=10).item() == pytest.approx((0.6 + 0.4) / 2)
    assert aggregate_loss(LOSS, LMASK, "token-mean", normalizer=20).item() == pytest.approx(10 / 20)
    assert aggregate_loss(LOSS, LMASK, "seq-mean-token-mean", normalizer=4).item() == pytest.approx(6 / 4)


def test_aggregate_rejects_unknown_mode_and_shape():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(LOSS, LMASK, "mean")
    with pytest.raises(ValueError, match="must match"):
        aggregate_loss(LOSS, LMASK[:, :3])


def test_aggregation_normalizer_counts_tokens_or_nonempty_rows():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert aggregation_normalizer(mask, "token-mean").item() == 3
    assert aggregation_normalizer(mask, "seq-mean-token-mean").item() == 2
    assert aggregation_normalizer(mask, "seq-mean-token-sum-norm").item() == 2


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_with_global_normalizer_match_full_batch(mode):
    mask, gen = random_batch(8, 9, seed=1)
    base = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    T = mask.shape[1]

    w_full = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    full = aggregate_loss(base * w_full + weight * w_full ** 2, mask, mode, norm_len=T)
    full.backward()

    w_micro = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    normalizer = aggregation_normalizer(mask, mode)
    total = 0.0
    for rows in (slice(0, 3), slice(3, 5), slice(5, 8)):
        # each micro-batch is trimmed to its own longest response, as a collator would
        t = int(mask[rows].sum(-1).max())
        part = base[rows, :t] * w_micro + weight[rows, :t] * w_micro ** 2
        micro = aggregate_loss(part, mask[rows, :t], mode, normalizer=normalizer, norm_len=T)
        micro.backward()
        total += micro.item()
    assert total == pytest.approx(full.item(), rel=1e-12)
    assert w_micro.grad.item() == pytest.approx(w_full.grad.item(), rel=1e-10)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_padding_invariance(mode):
    mask, gen = random_batch(5, 6, seed=2)
    loss = randn(mask.shape, gen, garbage_on=mask)
    before = aggregate_loss(loss, mask, mode, norm_len=6)
    padded_loss = torch.cat([pad_columns(loss, 3), torch.full((2, 9), float("nan"))])  # more columns and rows
    padded_mask = torch.cat([pad_columns(mask, 3, 0.0), torch.zeros(2, 9)])
    after = aggregate_loss(padded_loss, padded_mask, mode, norm_len=6)
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


def test_explained_variance():
    mask, gen = random_batch(4, 5, seed=3, min_len=2)
    returns = torch.randn(mask.shape, generator=gen)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, masked_mean(returns, mask).item())
    assert explained_variance(constant, returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    values = returns + 0.5 * torch.randn(mask.shape, generator=gen)
    err = returns - values
    expected = 1 - masked_var(err, mask, unbiased=False) / masked_var(returns, mask, unbiased=False)
    assert explained_variance(values, returns, mask).item() == pytest.approx(expected.item())
    assert explained_variance(values, returns, mask).item() < 1.0


@settings(max_examples=30, deadline=None, database=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.booleans()), min_size=1, max_size=20))
def test_masked_mean_is_mean_of_selected(pairs):
    x = torch.tensor([[v for v, _ in pairs]], dtype=torch.float64)
    mask = torch.tensor([[k for _, k in pairs]])
    kept = [v for v, k in pairs if k]
    expected = sum(kept) / len(kept) if kept else 0.0
    assert masked_mean(x, mask).item() == pytest.approx(expected, abs=1e-9)
