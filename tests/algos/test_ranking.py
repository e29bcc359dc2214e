"""ranking_loss: K = 2 is the pairwise loss (value and gradient), a hand-computed K = 3 case, ties, padding."""

import math

import pytest
import torch

from rlhfkit.algos import bradley_terry_nll, pairwise_reward_loss, ranking_loss


def sp(x):  # softplus(x) = -log sigmoid(-x)
    return math.log1p(math.exp(x))


def test_k2_equals_pairwise_loss_and_gradient():
    torch.manual_seed(0)
    chosen, rejected, margin = torch.randn(6), torch.randn(6), torch.rand(6)
    for m, e in ((None, 0.0), (margin, 0.0), (margin, 0.2)):
        a = torch.stack([chosen, rejected], dim=1).requires_grad_(True)  # (B, 2)
        c, r = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
        loss, _ = ranking_loss(a, torch.tensor([[1, 2]] * 6), margin=m, label_smoothing=e)
        ref = pairwise_reward_loss(c, r, margin=m, label_smoothing=e)
        loss.backward()
        ref.backward()
        assert torch.equal(loss, ref)
        assert torch.allclose(a.grad, torch.stack([c.grad, r.grad], dim=1), atol=0, rtol=1e-6)


def test_k3_hand_computed_with_a_tie_and_an_all_tied_prompt():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [5.0, 1.0, 2.0]])
    ranks = torch.tensor([[1, 2, 3], [1, 1, 2], [1, 1, 1]])
    loss, stats = ranking_loss(scores, ranks)
    # Prompt 0: pairs (0,1) gap 1, (0,2) gap 2, (1,2) gap 1, weighted 1 / C(3,2) = 1/3.
    row0 = (sp(-1) + sp(-2) + sp(-1)) / 3  # 0.251150
    # Prompt 1: responses 0 and 1 are tied (no pair); both beat 2: gaps -3 and -2, weighted 1/2.
    row1 = (sp(3) + sp(2)) / 2  # 2.587758
    # Prompt 2: all tied, no pair: left out of the mean.
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert stats["pairs"].tolist() == [3, 2, 0]
    assert stats["correct"].tolist() == [3, 0, 0]
    assert stats["ordered"].tolist() == [1.0, 0.0, 0.0]
    assert stats["pair_accuracy"].item() == pytest.approx(3 / 5)


def test_padded_slot_changes_nothing():
    scores = torch.tensor([[0.3, -0.4, 9.0]])
    padded, _ = ranking_loss(scores, torch.tensor([[2, 1, 1]]), valid=torch.tensor([[True, True, False]]))
    plain = pairwise_reward_loss(torch.tensor([-0.4]), torch.tensor([0.3]))
    assert padded.item() == pytest.approx(plain.item(), rel=1e-6)


def test_label_smoothing_hand_computed():
    # e = 0.1, d = 1: 0.9 * softplus(-1) + 0.1 * softplus(1) = softplus(-1) + 0.1 = 0.413262
    got = bradley_terry_nll(torch.tensor(1.0), 0.1).item()
    assert got == pytest.approx(0.9 * sp(-1) + 0.1 * sp(1), rel=1e-6)
    assert got == pytest.approx(0.41326169, rel=1e-6)
    assert pairwise_reward_loss(torch.tensor([1.0]), torch.tensor([0.0]), label_smoothing=0.1).item() == \
        pytest.approx(got, rel=1e-6)
    # The smoothed loss is minimal at d = log((1 - e) / e), not at d -> infinity.
    d = torch.tensor(math.log(0.9 / 0.1), requires_grad=True)
    bradley_terry_nll(d, 0.1).backward()
    assert abs(d.grad.item()) < 1e-6
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_nll(torch.tensor(1.0), 0.5)
