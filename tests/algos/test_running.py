import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import MovingAverageBaseline, RunningMoments, normalize_and_clip_scores

batches = st.lists(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8), min_size=1, max_size=6)


@settings(max_examples=30, deadline=None, database=None)
@given(batches)
def test_running_moments_equal_the_moments_of_all_values(parts):
    moments = RunningMoments()
    for part in parts:
        moments.update(torch.tensor(part, dtype=torch.float64))
    everything = torch.tensor([v for p in parts for v in p], dtype=torch.float64)
    assert moments.count == everything.numel()
    assert moments.mean == pytest.approx(everything.mean().item(), abs=1e-9)
    assert moments.var == pytest.approx(everything.var(unbiased=False).item(), rel=1e-9, abs=1e-6)


def test_running_moments_update_returns_batch_stats_and_round_trips():
    a = RunningMoments()
    assert a.update(torch.tensor([1.0, 3.0])) == (2.0, 1.0)
    b = RunningMoments()
    b.load_state_dict(a.state_dict())
    a.update(torch.tensor([10.0]))
    b.update(torch.tensor([10.0]))
    assert a.state_dict() == b.state_dict()
    assert a.mean == pytest.approx(14 / 3)
    with pytest.raises(ValueError, match="empty"):
        a.update(torch.tensor([]))


def test_normalize_and_clip_scores():
    moments = RunningMoments()
    moments.update(torch.tensor([0.0, 2.0]))  # mean 1, std 1
    out = normalize_and_clip_scores(torch.tensor([1.0, 3.0, -10.0]), moments, clip=2.0, update=False)
    assert out.tolist() == pytest.approx([0.0, 2.0, -2.0], abs=1e-6)
    fresh = RunningMoments()
    out = normalize_and_clip_scores(torch.tensor([1.0, 2.0, 3.0, 4.0]), fresh)
    assert fresh.count == 4 and out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-6)


def test_moving_average_baseline():
    base = MovingAverageBaseline(decay=0.5)
    assert base.value == 0.0
    base.update(4.0)
    assert base.value == pytest.approx(4.0)  # bias correction: the first mean itself
    base.update(torch.tensor(1.0))
    assert base.value == pytest.approx((0.5 * 0.5 * 4.0 + 0.5 * 1.0) / (1 - 0.25))
    other = MovingAverageBaseline()
    other.load_state_dict(base.state_dict())
    assert other.value == base.value and other.decay == 0.5
    with pytest.raises(ValueError, match="decay"):
        MovingAverageBaseline(1.0)


def test_scale_by_return_std_hand_computed():
    from rlhfkit.algos import RunningMoments, scale_by_return_std

    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    moments = RunningMoments()
    # returns from the first token (gamma 1): 1 and 3 -> population std 1: the rewards are unchanged
    torch.testing.assert_close(scale_by_return_std(rewards, mask, moments), rewards, atol=1e-6, rtol=0)
    # next batch: returns 3 and 9 -> all four (1, 3, 3, 9): mean 4, population std 3; no mean shift
    out = scale_by_return_std(rewards * 3, mask, moments)
    torch.testing.assert_close(out, rewards, rtol=1e-6, atol=1e-7)
    # gamma discounts the return: 0.5 * 1 and 0.25 * 3 on a fresh moment
    moments = RunningMoments()
    scale_by_return_std(rewards, mask, moments, gamma=0.5)
    assert moments.mean == pytest.approx((0.5 + 0.75) / 2)
    # a single return seen so far has no spread: divide by 1
    one = RunningMoments()
    torch.testing.assert_close(scale_by_return_std(rewards[:1], mask[:1], one), rewards[:1])
