import pytest
import torch

from rlhfkit.algos import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    MovingAverageBaseline,
    compute_advantages,
    kl_shaped_rewards,
    masked_whiten,
    register_advantage_estimator,
)
from tests.algos.batches import (
    pad_columns,
    random_batch,
    randn,
    ref_gae,
    ref_group_baselines,
    ref_prime,
    ref_returns,
    ref_whiten,
    row,
    to_padded,
)

NAMES = ["gae", "reinforce", "rloo", "grpo", "reinforce++", "reinforce++-baseline", "prime"]
B, T, G = 8, 6, 4


def make_inputs(seed: int, gamma: float = 0.9, lam: float = 0.8, **overrides) -> AdvantageInputs:
    mask, gen = random_batch(B, T, seed)
    fields = dict(token_rewards=randn(mask.shape, gen, garbage_on=mask), mask=mask,
                  values=randn(mask.shape, gen, garbage_on=mask), group_size=G, gamma=gamma, lam=lam,
                  baseline=MovingAverageBaseline(0.9), process_rewards=randn(mask.shape, gen, garbage_on=mask),
                  outcome_scores=torch.randn(B, generator=gen))
    fields.update(overrides)
    inputs = AdvantageInputs(**fields)
    inputs.baseline.update(0.3)
    return inputs


def reference(name: str, inputs: AdvantageInputs) -> list[list[float]]:
    """Advantages of each row, from plain per-row loops."""
    mask, g = inputs.mask, inputs.gamma
    rewards = [row(inputs.token_rewards, mask, b) for b in range(B)]
    seq = [sum(r) for r in rewards]
    if name == "gae":
        return [ref_gae(r, row(inputs.values, mask, b), g, inputs.lam)[0] for b, r in enumerate(rewards)]
    if name == "reinforce":
        return [[x - 0.3 for x in ref_returns(r, g)] for r in rewards]
    if name == "reinforce++":
        return ref_whiten([ref_returns(r, g) for r in rewards])
    if name == "prime":
        return ref_prime([row(inputs.process_rewards, mask, b) for b in range(B)], inputs.outcome_scores.tolist(), G, g)
    stats = ref_group_baselines(seq, G)
    per_seq = {
        "grpo": [(s - m) / (sd + 1e-6) for s, (m, sd, _) in zip(seq, stats)],
        "rloo": [s - loo for s, (_, _, loo) in zip(seq, stats)],
        "reinforce++-baseline": [s - m for s, (m, _, _) in zip(seq, stats)],
    }[name]
    rows = [[a] * len(r) for a, r in zip(per_seq, rewards)]
    return ref_whiten(rows) if name == "reinforce++-baseline" else rows


def test_registry_has_exactly_the_documented_names():
    assert sorted(ADVANTAGE_ESTIMATORS) == sorted(NAMES)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("name", NAMES)
def test_each_estimator_matches_per_row_loop(name, seed):
    inputs = make_inputs(seed)
    adv, returns = compute_advantages(name, inputs)
    expected = reference(name, inputs)
    for b in range(B):
        assert row(adv, inputs.mask, b) == pytest.approx(expected[b], rel=1e-4, abs=1e-5), b
    assert adv[inputs.mask == 0].eq(0).all() and returns[inputs.mask == 0].eq(0).all()
    assert adv.shape == returns.shape == (B, T)


@pytest.mark.parametrize("name", NAMES)
def test_each_estimator_is_padding_invariant(name):
    a = make_inputs(3)
    b = make_inputs(3)
    b.token_rewards, b.values = pad_columns(b.token_rewards, 3), pad_columns(b.values, 3)
    b.process_rewards, b.mask = pad_columns(b.process_rewards, 3), pad_columns(b.mask, 3, 0.0)
    adv_a, ret_a = compute_advantages(name, a)
    adv_b, ret_b = compute_advantages(name, b)
    assert torch.allclose(adv_b[:, :T], adv_a, atol=1e-6) and adv_b[:, T:].eq(0).all()
    assert torch.allclose(ret_b[:, :T], ret_a, atol=1e-6) and ret_b[:, T:].eq(0).all()


def test_group_estimators_use_the_kl_shaped_sequence_return():
    # scores 1, 0, 0, 1 and a KL penalty: GRPO ranks sequences by score - kl_coef * sum KL
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    lp = torch.tensor([[-1.0, -1.0, 0.0], [-0.5, -1.0, -1.0], [-2.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    rewards = kl_shaped_rewards(torch.tensor([1.0, 0.0, 0.0, 1.0]), lp, ref, mask, kl_coef=0.1)
    seq = [1 - 0.1 * 0.5, 0 - 0.1 * 0.5, 0 + 0.1 * 1.0, 1.0]
    adv, _ = compute_advantages("rloo", AdvantageInputs(rewards, mask, group_size=4))
    expected = [s - (sum(seq) - s) / 3 for s in seq]
    assert torch.allclose(adv, to_padded([[e] * int(n) for e, n in zip(expected, mask.sum(-1))], 3), atol=1e-6)


def test_whiten_override_and_dr_grpo():
    inputs = make_inputs(4, whiten=True)
    adv, _ = compute_advantages("gae", inputs)
    raw, _ = compute_advantages("gae", make_inputs(4))
    assert torch.allclose(adv, masked_whiten(raw, inputs.mask))
    dr, _ = compute_advantages("grpo", make_inputs(4, normalize_std=False))
    seq = [sum(row(inputs.token_rewards, inputs.mask, b)) for b in range(B)]
    stats = ref_group_baselines(seq, G)
    assert [row(dr, inputs.mask, b)[0] for b in range(B)] == pytest.approx([s - m for s, (m, _, _) in zip(seq, stats)],
                                                                            abs=1e-5)


def test_reinforce_updates_its_baseline_from_the_batch_mean_return():
    inputs = make_inputs(5, gamma=1.0)
    seq_mean = inputs.token_rewards.where(inputs.mask.bool(), torch.tensor(0.0)).sum(-1).mean().item()
    compute_advantages("reinforce", inputs)
    # decay 0.9, bias-corrected after two updates: 0.3 then the batch mean
    ema = 0.9 * (0.1 * 0.3) + 0.1 * seq_mean
    assert inputs.baseline.value == pytest.approx(ema / (1 - 0.81))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: gae, grpo, prime, reinforce, reinforce\\+\\+"):
        compute_advantages("ppo", make_inputs(0))


@pytest.mark.parametrize("name, field", [("gae", "values"), ("reinforce", "baseline"), ("prime", "process_rewards")])
def test_missing_inputs_are_named(name, field):
    inputs = make_inputs(0, **{field: None}) if field != "baseline" else make_inputs(0)
    if field == "baseline":
        inputs.baseline = None
    with pytest.raises(ValueError, match=f"AdvantageInputs.{field}"):
        compute_advantages(name, inputs)


def test_inputs_validate_shapes():
    with pytest.raises(ValueError, match="values has shape"):
        AdvantageInputs(torch.zeros(2, 3), torch.ones(2, 3), values=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="outcome_scores"):
        AdvantageInputs(torch.zeros(2, 3), torch.ones(2, 3), outcome_scores=torch.zeros(3))


def test_register_a_new_estimator():
    @register_advantage_estimator("test-zeros")
    def zeros(inputs):
        return torch.zeros_like(inputs.token_rewards), torch.zeros_like(inputs.token_rewards)

    try:
        assert compute_advantages("test-zeros", make_inputs(0))[0].eq(0).all()
        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("test-zeros")(zeros)
    finally:
        del ADVANTAGE_ESTIMATORS["test-zeros"]
