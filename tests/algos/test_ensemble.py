"""ensemble_reward: mean - k x std over reward models, by hand and against a loop."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algos import ensemble_reward


def test_hand_computed():
    # two members: (1, 3) and (2, 2); means 2 and 2; population stds 1 and 0
    scores = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    reward, std = ensemble_reward(scores, k=0.5)
    assert std.tolist() == pytest.approx([1.0, 0.0])
    assert reward.tolist() == pytest.approx([1.5, 2.0])  # the disputed answer pays 0.5 less
    assert ensemble_reward(scores)[0].tolist() == pytest.approx([2.0, 2.0])  # k = 0: the plain mean


def test_against_a_loop():
    torch.manual_seed(0)
    scores = torch.randn(4, 7, dtype=torch.float64)
    reward, std = ensemble_reward(scores, k=1.3)
    for n in range(7):
        column = scores[:, n].tolist()
        mean = sum(column) / 4
        sd = math.sqrt(sum((x - mean) ** 2 for x in column) / 4)
        assert std[n].item() == pytest.approx(sd, abs=1e-12)
        assert reward[n].item() == pytest.approx(mean - 1.3 * sd, abs=1e-12)


def test_one_member_has_no_spread_and_bad_input_is_refused():
    reward, std = ensemble_reward(torch.tensor([[0.3, -1.0]]), k=2.0)
    assert std.tolist() == [0.0, 0.0] and reward.tolist() == pytest.approx([0.3, -1.0])
    with pytest.raises(ValueError, match="k must be >= 0"):
        ensemble_reward(torch.zeros(2, 3), k=-1.0)
    with pytest.raises(ValueError, match="K, N"):
        ensemble_reward(torch.zeros(3))
