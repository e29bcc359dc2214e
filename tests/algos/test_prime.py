import math

import pytest
import torch

from rlhfkit.algos import (
    AdvantageInputs,
    aggregation_normalizer,
    compute_advantages,
    implicit_process_rewards,
    prime_advantages,
    prime_prm_loss,
)
from tests.algos.batches import pad_columns, random_batch, randn, ref_prime, row


def test_implicit_process_rewards_are_scaled_log_ratios():
    prm = torch.tensor([[-1.0, -2.0, 5.0]])
    ref = torch.tensor([[-1.5, -1.0, float("nan")]])
    out = implicit_process_rewards(prm, ref, torch.tensor([[1, 1, 0]]), beta=0.1)
    assert out[0].tolist() == pytest.approx([0.05, -0.1, 0.0])


def test_prime_advantages_hand_computed():
    # K = 2: row 0 process rewards [1, 1] (mean 1), row 1 [3] (mean 3); outcomes 1 and 0.
    # process baselines: row 0 -> 3, row 1 -> 1; normalized [-2, -2] and [2]; returns-to-go [-4, -2], [2]
    # outcome RLOO: +1 and -1
    process = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, ret = prime_advantages(process, torch.tensor([1.0, 0.0]), mask, group_size=2)
    assert adv.tolist() == [[-3.0, -1.0], [1.0, 0.0]]
    assert torch.equal(adv, ret)


@pytest.mark.parametrize("seed, gamma, G", [(0, 1.0, 2), (1, 0.9, 4), (2, 0.5, 3)])
def test_prime_advantages_match_per_row_loop(seed, gamma, G):
    B = 12
    mask, gen = random_batch(B, 6, seed)
    process = randn(mask.shape, gen, garbage_on=mask)
    outcome = torch.randint(0, 2, (B,), generator=gen).float()
    adv, _ = prime_advantages(process, outcome, mask, G, gamma)
    expected = ref_prime([row(process, mask, b) for b in range(B)], outcome.tolist(), G, gamma)
    for b in range(B):
        assert row(adv, mask, b) == pytest.approx(expected[b], rel=1e-5, abs=1e-5)
    assert adv[mask == 0].eq(0).all()
    padded, _ = prime_advantages(pad_columns(process, 2), outcome, pad_columns(mask, 2, 0.0), G, gamma)
    assert torch.allclose(padded[:, :6], adv, atol=1e-6) and padded[:, 6:].eq(0).all()


def test_prime_parts_alone():
    mask, gen = random_batch(4, 5, seed=3)
    process = randn(mask.shape, gen, garbage_on=mask)
    outcome = torch.tensor([1.0, 0.0, 1.0, 1.0])
    both, _ = prime_advantages(process, outcome, mask, 2)
    only_p, _ = prime_advantages(process, None, mask, 2)
    only_o, _ = prime_advantages(None, outcome, mask, 2)
    assert torch.allclose(both, only_p + only_o, atol=1e-6)
    assert only_o[0, 0].item() == 1.0 and only_o[1, 0].item() == -1.0  # outcomes 1 vs 0 in one group
    with pytest.raises(ValueError, match="process_rewards, outcome_scores"):
        prime_advantages(None, None, mask, 2)


def test_registry_prime_defaults_outcome_to_sequence_return():
    mask, gen = random_batch(4, 5, seed=4)
    process, rewards = randn(mask.shape, gen, garbage_on=mask), randn(mask.shape, gen, garbage_on=mask)
    adv, _ = compute_advantages("prime", AdvantageInputs(rewards, mask, group_size=2, process_rewards=process))
    seq = torch.where(mask.bool(), rewards, 0.0).sum(-1)
    assert torch.allclose(adv, prime_advantages(process, seq, mask, 2)[0])


def _prm_loss_reference(prm, ref, mask, labels, beta):
    total = 0.0
    for b in range(prm.shape[0]):
        r = beta * sum(float(prm[b, t] - ref[b, t]) for t in range(int(mask[b].sum())))
        p = 1 / (1 + math.exp(-r))
        y = float(labels[b])
        total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return total / prm.shape[0]


def test_prm_loss_is_cross_entropy_of_the_implicit_outcome_reward():
    mask, gen = random_batch(6, 5, seed=5)
    prm = randn(mask.shape, gen, garbage_on=mask).requires_grad_(True)
    ref = randn(mask.shape, gen, garbage_on=mask)
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    loss, stats = prime_prm_loss(prm, ref, mask, labels, beta=0.2)
    assert loss.item() == pytest.approx(_prm_loss_reference(prm.detach(), ref, mask, labels, 0.2), rel=1e-5)
    assert 0.0 <= stats["accuracy"].item() <= 1.0
    loss.backward()
    assert prm.grad[mask == 0].eq(0).all()
    # a gradient step raises log pi_prm of the correct responses and lowers it for wrong ones
    per_row = prm.grad.sum(-1)
    assert (per_row[labels == 1] < 0).all() and (per_row[labels == 0] > 0).all()


def test_prm_loss_micro_batches_with_normalizer():
    mask, gen = random_batch(6, 5, seed=6)
    prm = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    ref = torch.randn(mask.shape, generator=gen, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    full = prime_prm_loss(prm, ref, mask, labels, 0.1)[0]
    n = aggregation_normalizer(mask, "seq-mean-token-mean")
    parts = [prime_prm_loss(prm[s], ref[s], mask[s], labels[s], 0.1, normalizer=n)[0] for s in (slice(0, 2), slice(2, 6))]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-12)
