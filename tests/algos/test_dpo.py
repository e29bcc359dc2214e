"""Direct preference losses: hand-computed values, a per-pair loop reference, limits, invariances."""

import math

import pytest
import torch

from rlhfkit.algos import PREFERENCE_LOSSES, PreferenceInputs, dpo_loss, ipo_loss, preference_loss, simpo_loss

LN3 = math.log(3.0)


def two_pairs(**kw) -> PreferenceInputs:
    """Pair 0: policy = reference (h = 0). Pair 1: log-ratios +ln 3 (chosen) and -ln 3 (rejected)."""
    return PreferenceInputs(chosen_logps=torch.tensor([-2.0, -1.0 + LN3], dtype=torch.float64),
                            rejected_logps=torch.tensor([-2.0, -3.0 - LN3], dtype=torch.float64),
                            ref_chosen_logps=torch.tensor([-2.0, -1.0], dtype=torch.float64),
                            ref_rejected_logps=torch.tensor([-2.0, -3.0], dtype=torch.float64), **kw)


def test_dpo_sigmoid_by_hand():
    # beta 0.5: h = 0.5 (ln 3 + ln 3) = ln 3 on pair 1, so sigmoid(h) = 3/4; pair 0 has h = 0.
    x = two_pairs(beta=0.5)
    x.chosen_logps.requires_grad_(True)
    loss, stats = preference_loss("sigmoid", x)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    assert stats["reward_accuracy"].item() == 0.5  # the tie (pair 0) counts as wrong
    assert stats["chosen_reward"].item() == pytest.approx(0.5 * LN3 / 2)
    assert stats["rejected_reward"].item() == pytest.approx(-0.5 * LN3 / 2)
    assert stats["reward_margin"].item() == pytest.approx(LN3 / 2)
    assert stats["chosen_logps"].item() == pytest.approx((-2.0 - 1.0 + LN3) / 2)
    loss.backward()
    # d/d log pi(y_c) of -log sigmoid(h) is -beta sigmoid(-h): -0.5 * 1/2 and -0.5 * 1/4, over B = 2
    assert x.chosen_logps.grad.tolist() == pytest.approx([-0.125, -0.0625])


def test_cdpo_by_hand():
    losses, _, _ = dpo_loss(*_tensors(two_pairs()), beta=0.5, label_smoothing=0.25)
    # pair 1: -(3/4) ln(3/4) - (1/4) ln(1/4); pair 0: h = 0 gives ln 2 whatever eps is
    assert losses.tolist() == pytest.approx([math.log(2), -0.75 * math.log(0.75) - 0.25 * math.log(0.25)])
    loss, _ = preference_loss("cdpo", two_pairs(beta=0.5, label_smoothing=0.25))
    assert loss.item() == pytest.approx(losses.mean().item())


def test_ipo_by_hand():
    # beta (IPO's tau) 0.25: target gap 1 / (2 * 0.25) = 2. Gaps 0 and 2 ln 3.
    loss, stats = preference_loss("ipo", two_pairs(beta=0.25))
    assert loss.item() == pytest.approx(((0 - 2) ** 2 + (2 * LN3 - 2) ** 2) / 2)
    losses, chosen, _ = ipo_loss(torch.tensor([-1.0]), torch.tensor([-4.0]), torch.tensor([-1.0]),
                                 torch.tensor([-1.0]), beta=0.25)
    assert losses.item() == pytest.approx(1.0)  # gap 3, target 2: (3 - 2)^2
    assert chosen.item() == 0.0


def test_simpo_by_hand():
    # beta 2: r_c = 2 * (-3 / 3) = -2, r_r = 2 * (-8 / 4) = -4; gamma = 2 - ln 3 leaves ln 3 in the sigmoid
    x = PreferenceInputs(chosen_logps=torch.tensor([-3.0]), rejected_logps=torch.tensor([-8.0]),
                         chosen_lengths=torch.tensor([3]), rejected_lengths=torch.tensor([4]), beta=2.0, gamma=2 - LN3)
    loss, stats = preference_loss("simpo", x)
    assert loss.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    assert stats["chosen_reward"].item() == -2.0 and stats["rejected_reward"].item() == -4.0
    assert stats["reward_accuracy"].item() == 1.0


def _tensors(x: PreferenceInputs):
    return x.chosen_logps, x.rejected_logps, x.ref_chosen_logps, x.ref_rejected_logps


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def loop_reference(name, c, r, rc, rr, lc, lr, beta, eps, gamma):
    """Each loss written out per pair with math, straight from the papers' formulas."""
    out = []
    for b in range(len(c)):
        if name == "simpo":
            z = beta * c[b] / lc[b] - beta * r[b] / lr[b] - gamma
            out.append(-math.log(_sig(z)))
            continue
        g = (c[b] - rc[b]) - (r[b] - rr[b])
        if name == "ipo":
            out.append((g - 1 / (2 * beta)) ** 2)
        else:
            e = eps if name == "cdpo" else 0.0
            out.append(-(1 - e) * math.log(_sig(beta * g)) - e * math.log(_sig(-beta * g)))
    return sum(out) / len(out)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_vectorized_matches_loop(name):
    g = torch.Generator().manual_seed(3)
    c, r, rc, rr = (-10 * torch.rand(7, generator=g, dtype=torch.float64) for _ in range(4))
    lc, lr = torch.randint(1, 9, (7,), generator=g), torch.randint(1, 9, (7,), generator=g)
    x = PreferenceInputs(c, r, rc, rr, lc, lr, beta=0.3, label_smoothing=0.2, gamma=0.4)
    loss, _ = preference_loss(name, x)
    expected = loop_reference(name, *(t.tolist() for t in (c, r, rc, rr, lc, lr)), 0.3, 0.2, 0.4)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_limits():
    x = two_pairs(beta=0.5)
    # label smoothing 0 is DPO exactly
    assert torch.equal(dpo_loss(*_tensors(x), beta=0.5, label_smoothing=0.0)[0], dpo_loss(*_tensors(x), beta=0.5)[0])
    # beta -> 0: every pair's DPO loss -> ln 2 (no preference expressed), whatever the log-probs
    g = torch.Generator().manual_seed(0)
    c, r, rc, rr = (-20 * torch.rand(5, generator=g, dtype=torch.float64) for _ in range(4))
    losses, _, _ = dpo_loss(c, r, rc, rr, beta=1e-9)
    assert losses.tolist() == pytest.approx([math.log(2)] * 5, abs=1e-7)
    # huge gaps stay finite (logsigmoid)
    big, _, _ = dpo_loss(torch.tensor([1000.0, -1000.0]), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=1.0)
    assert big.tolist() == pytest.approx([0.0, 1000.0])


def test_invariances():
    x = two_pairs(beta=0.5)
    # DPO sees only log-ratios: shifting a pair's policy and reference log-probs together changes nothing
    shift = torch.tensor([5.0, -7.0], dtype=torch.float64)
    c, r, rc, rr = _tensors(x)
    for name in ("sigmoid", "cdpo", "ipo"):
        a, _ = preference_loss(name, PreferenceInputs(c, r, rc, rr, beta=0.5, label_smoothing=0.1))
        b, _ = preference_loss(name, PreferenceInputs(c + shift, r + shift, rc + shift, rr + shift, beta=0.5,
                                                      label_smoothing=0.1))
        assert a.item() == pytest.approx(b.item(), rel=1e-12), name
    # SimPO is length-normalized: twice the tokens with twice the log-prob is the same reward
    lengths = torch.tensor([2, 3])
    a, _ = preference_loss("simpo", PreferenceInputs(c, r, chosen_lengths=lengths, rejected_lengths=lengths + 1))
    b, _ = preference_loss("simpo", PreferenceInputs(2 * c, 2 * r, chosen_lengths=2 * lengths,
                                                     rejected_lengths=2 * lengths + 2))
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_micro_batches_add_up_with_a_shared_normalizer(name):
    g = torch.Generator().manual_seed(1)
    c, r, rc, rr = (-5 * torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    lengths = torch.arange(1, 7)
    whole, whole_stats = preference_loss(name, PreferenceInputs(c, r, rc, rr, lengths, lengths + 1))
    parts = [preference_loss(name, PreferenceInputs(c[s], r[s], rc[s], rr[s], lengths[s], lengths[s] + 1),
                             normalizer=6) for s in (slice(0, 4), slice(4, 6))]
    assert sum(p[0] for p in parts).item() == pytest.approx(whole.item(), rel=1e-12)
    for key, value in whole_stats.items():
        assert sum(p[1][key] for p in parts).item() == pytest.approx(value.item(), rel=1e-12), key


def test_clear_errors():
    c = torch.zeros(2)
    with pytest.raises(ValueError, match="needs PreferenceInputs.ref_chosen_logps"):
        preference_loss("sigmoid", PreferenceInputs(c, c))
    with pytest.raises(ValueError, match="needs PreferenceInputs.chosen_lengths"):
        preference_loss("simpo", PreferenceInputs(c, c))
    with pytest.raises(ValueError, match="valid names: sigmoid, cdpo, ipo, simpo"):
        preference_loss("dpo", PreferenceInputs(c, c, c, c))
    with pytest.raises(ValueError, match="rejected_logps has shape"):
        PreferenceInputs(c, torch.zeros(3))
    with pytest.raises(ValueError, match="lengths must be > 0"):
        simpo_loss(c, c, torch.tensor([1, 0]), torch.tensor([1, 1]), beta=1.0, gamma=0.0)
    assert [n for n, spec in PREFERENCE_LOSSES.items() if not spec.needs_reference] == ["simpo"]
