"""Run-health detectors: each fires on the failure it names and stays quiet on healthy runs.

Streams are synthetic (a healthy run with realistic noise, then one metric broken from step 40),
plus three real RL runs in tests/reporting/data/: the default `rlhfkit quickstart` (40 PPO steps on
reviews: healthy), the same SFT/reward models with kl_coef 0 and lr 3e-3 (reward hacking), and
`rlhfkit quickstart --task arithmetic` (GRPO that never gets a non-zero score: stalled).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from rlhfkit.reporting.health import (
    DETECTOR_NAMES,
    DETECTORS,
    REMEDIES,
    WATCHED,
    HealthConfig,
    HealthMonitor,
    HealthWarning,
    scan,
    trend,
)
from rlhfkit.reporting.logger import MetricsLogger, read_metrics
from rlhfkit.reporting.metrics import EVENTS, METRICS

DATA = Path(__file__).parent / "data"
BREAK = 40  # the step at which the synthetic failures start


def healthy_rows(steps: int = 100, seed: int = 0, gold: bool = True, critic: bool = True) -> list[dict]:
    """A PPO run that learns: score and gold rise together and level off, KL grows to a plateau,
    entropy falls slowly, the value loss falls with multiplicative noise, steady length and clipfrac."""
    rng = random.Random(seed)
    rows = []
    for s in range(1, steps + 1):
        progress = 1 - math.exp(-s / 30)
        row = {"step": s,
               "reward/score_mean": 0.5 * progress + rng.gauss(0, 0.1),
               "reward/score_std": 0.4 + abs(rng.gauss(0, 0.1)),
               "kl/mean": 4 * (1 - math.exp(-s / 25)) + rng.gauss(0, 0.3),
               "kl/coef": 0.05,
               "policy/entropy": 2.0 - 0.4 * (1 - math.exp(-s / 50)) + rng.gauss(0, 0.05),
               "response/length_mean": 20 + rng.gauss(0, 2),
               "policy/clipfrac": max(0.0, 0.1 + rng.gauss(0, 0.03)),
               "policy/approx_kl": 0.01 * math.exp(rng.gauss(0, 0.3))}
        if gold:
            row["reward/gold_mean"] = 0.4 * progress + rng.gauss(0, 0.1)
        if critic:
            row["loss/value"] = (0.5 * math.exp(-s / 20) + 0.05) * math.exp(rng.gauss(0, 0.4))
            row["value/explained_variance"] = 0.6 * (1 - math.exp(-s / 10)) + rng.gauss(0, 0.1)
        rows.append(row)
    return rows


def broken(rows: list[dict], **changes) -> list[dict]:
    """Copy of rows where, from step BREAK on, metric name -> f(k, old value) with k = steps since BREAK."""
    out = []
    for row in rows:
        row = dict(row)
        k = row["step"] - BREAK
        if k >= 0:
            for name, f in changes.items():
                row[name.replace("__", "/")] = f(k, row.get(name.replace("__", "/")))
        out.append(row)
    return out


def fired(warnings) -> set[str]:
    return {w.detector for w in warnings}


# ------------------------------------------------------------------------------ healthy runs

def test_real_quickstart_run_is_healthy():
    rows, _ = read_metrics(DATA / "healthy_rl_metrics.jsonl")
    assert len(rows) >= 30 and any("loss/value" in r for r in rows) and any("reward/gold_mean" in r for r in rows)
    assert scan(rows) == []


def test_real_run_without_kl_leash_is_flagged_as_reward_hacking():
    # The same SFT and reward models, RL with kl_coef 0 and lr 3e-3 (10x): score up, gold down to -1.
    rows, _ = read_metrics(DATA / "no_kl_high_lr_rl_metrics.jsonl")
    warnings = scan(rows)
    assert warnings[0].detector == "reward_hacking"
    assert warnings[0].figures["score_end"] > warnings[0].figures["score_start"]
    assert warnings[0].figures["gold_end"] < warnings[0].figures["gold_start"]
    assert "entropy_collapse" in fired(warnings) and "kl_runaway" not in fired(warnings)  # no reference: kl/mean is 0


def test_real_arithmetic_quickstart_is_flagged_as_stalled():
    # GRPO on arithmetic with a tiny model that answers nothing right: every group scores 0.
    rows, _ = read_metrics(DATA / "arithmetic_stalled_rl_metrics.jsonl")
    warnings = scan(rows)
    assert fired(warnings) == {"stalled"}
    assert warnings[0].step == HealthConfig().stalled_window and warnings[0].figures["policy/approx_kl"] == 0.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gold", [True, False])
def test_synthetic_healthy_run_is_quiet(seed, gold):
    assert scan(healthy_rows(seed=seed, gold=gold)) == []


# ------------------------------------------------------------------------------ each failure

FAILURES = {
    # KL climbs geometrically once the policy finds a direction the reward model likes
    "kl_runaway": dict(kl__mean=lambda k, v: 3.5 * 1.12 ** k),
    # entropy decays toward a near-deterministic policy
    "entropy_collapse": dict(policy__entropy=lambda k, v: 1.8 * math.exp(-k / 8) + 0.02),
    # the score keeps climbing while the gold reward falls
    "reward_hacking": dict(reward__score_mean=lambda k, v: v + 0.05 * k, reward__gold_mean=lambda k, v: v - 0.03 * k),
    # the critic's loss swings by a factor of ~20 every step
    "value_instability": dict(loss__value=lambda k, v: 0.05 * (20 if k % 2 else 1)),
    # clip fraction stays above 0.3
    "clipfrac_high": dict(policy__clipfrac=lambda k, v: 0.45 + 0.05 * math.sin(k)),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_each_detector_fires_on_its_failure_only(name):
    warnings = scan(broken(healthy_rows(), **FAILURES[name]))
    assert fired(warnings) == {name}
    first = warnings[0]
    assert first.step >= BREAK and first.step <= BREAK + 20
    assert BREAK - 20 <= first.since <= first.step  # where a rollback would go back to
    if name == "entropy_collapse":  # the start of the fall, not just the window that crossed the limit
        assert BREAK <= first.since <= first.step - HealthConfig().entropy_window
    assert first.policy == "warn" and first.figures and all(math.isfinite(v) for v in first.figures.values())
    assert REMEDIES[name][0] in first.message and name in first.message


def test_kl_runaway_absolute_limit_and_growth_are_separate_rules():
    jump = scan(broken(healthy_rows(), kl__mean=lambda k, v: 40.0))
    assert fired(jump) == {"kl_runaway"} and jump[0].step == BREAK + 1  # median of 3 needs two high steps
    assert jump[0].figures["kl/mean"] == 40.0
    # growth from 3 to ~13 nats, never above kl_max = 25
    growth = scan(broken(healthy_rows(), kl__mean=lambda k, v: 3.0 * 1.2 ** min(k, 8)))
    assert fired(growth) == {"kl_runaway"} and growth[0].figures["growth"] > 3.0
    # the same levels reached without monotone growth (noisy plateau at 6 nats) stay quiet
    assert scan(broken(healthy_rows(), kl__mean=lambda k, v: 6.0 + (1.5 if k % 2 else -1.5))) == []


def test_entropy_floor_fires_even_when_the_start_was_low():
    cfg = HealthConfig(entropy_fraction=0.01)  # only the absolute floor can fire
    rows = healthy_rows()
    for row in rows:
        row["policy/entropy"] *= 0.05  # starts near 0.1 nats/token
    assert scan(rows, cfg) == []
    warnings = scan(broken(rows, policy__entropy=lambda k, v: 0.01), cfg)
    assert fired(warnings) == {"entropy_collapse"} and "floor" in warnings[0].message


def test_reward_hacking_without_gold_uses_length_or_entropy():
    rows = healthy_rows(gold=False)
    score_up = lambda k, v: v + 0.05 * k
    assert scan(broken(rows, reward__score_mean=score_up)) == []  # rising score alone is progress
    longer = scan(broken(rows, reward__score_mean=score_up, response__length_mean=lambda k, v: v * (1 + 0.1 * k)))
    assert fired(longer) == {"reward_hacking"} and "length_end" in longer[0].figures
    sharper = scan(broken(rows, reward__score_mean=score_up, policy__entropy=lambda k, v: v * math.exp(-k / 10)),
                   HealthConfig(entropy_collapse_policy="off"))
    assert fired(sharper) == {"reward_hacking"} and "entropy_end" in sharper[0].figures


def test_reward_hacking_without_gold_uses_repetition_and_diversity():
    rows = [dict(r, **{"response/repeat_3gram_fraction": 0.05, "response/distinct_2": 0.8})
            for r in healthy_rows(gold=False)]
    score_up = lambda k, v: v + 0.05 * k
    assert scan(broken(rows, reward__score_mean=score_up)) == []  # steady repetition: no sign
    looping = scan(broken(rows, reward__score_mean=score_up,
                          response__repeat_3gram_fraction=lambda k, v: min(1.0, v + 0.05 * k)))
    assert fired(looping) == {"reward_hacking"} and "repeat_end" in looping[0].figures
    narrower = scan(broken(rows, reward__score_mean=score_up, response__distinct_2=lambda k, v: v * math.exp(-k / 10)))
    assert fired(narrower) == {"reward_hacking"} and "distinct2_end" in narrower[0].figures
    # the same repetition with a flat score is not reward hacking
    assert "reward_hacking" not in fired(scan(broken(rows, response__repeat_3gram_fraction=lambda k, v: 0.9)))


def test_reward_hacking_trusts_gold_over_length():
    # score and gold rise together while responses grow: progress, not hacking
    rows = broken(healthy_rows(), reward__score_mean=lambda k, v: v + 0.05 * k,
                  reward__gold_mean=lambda k, v: v + 0.04 * k, response__length_mean=lambda k, v: v * (1 + 0.1 * k))
    assert scan(rows) == []


def test_value_instability_spike_and_negative_explained_variance():
    spike = scan(broken(healthy_rows(), loss__value=lambda k, v: v * 100 if k == 10 else v))
    assert fired(spike) == {"value_instability"} and spike[0].step == BREAK + 10
    assert spike[0].figures["ratio"] > 20
    ev = scan(broken(healthy_rows(), value__explained_variance=lambda k, v: -3.0 + 0.5 * math.sin(k)))
    assert fired(ev) == {"value_instability"} and ev[0].step == BREAK + HealthConfig().value_window - 1
    # a loss that falls steadily by x2 per step is not an oscillation, though its std/mean is large
    falling = scan(broken(healthy_rows(), loss__value=lambda k, v: 0.2 * 0.5 ** k))
    assert falling == []


def test_stalled_with_a_reference_reads_the_kl_not_approx_kl():
    # A policy pinned by a large kl_coef with several PPO passes per batch: approx_kl between passes is
    # well above 1e-4, but the policy does not leave the reference and the score does not move.
    rng = random.Random(1)
    flat = [{"step": s, "reward/score_mean": 0.3 + rng.gauss(0, 1e-4), "reward/score_std": 0.4,
             "kl/mean": rng.gauss(0, 0.01), "kl/coef": 0.5, "policy/approx_kl": 0.01, "policy/entropy": 2.0,
             "policy/clipfrac": 0.0, "response/length_mean": 20.0} for s in range(1, 41)]
    warnings = scan(flat)
    assert fired(warnings) == {"stalled"} and warnings[0].step == HealthConfig().stalled_window
    drifting_kl = [dict(r, **{"kl/mean": 0.5}) for r in flat]
    assert scan(drifting_kl) == []
    rising_score = [dict(r, **{"reward/score_mean": 0.01 * r["step"]}) for r in flat]
    assert scan(rising_score) == []


def test_stalled_without_a_reference_reads_approx_kl():
    # kl_coef 0: no reference, kl/mean is logged as 0 and cannot tell; the update's own step size does.
    rng = random.Random(2)
    flat = [{"step": s, "reward/score_mean": 0.3 + rng.gauss(0, 1e-4), "reward/score_std": 0.4,
             "kl/mean": 0.0, "kl/coef": 0.0, "policy/approx_kl": 1e-6, "policy/entropy": 2.0,
             "policy/clipfrac": 0.0, "response/length_mean": 20.0} for s in range(1, 41)]
    assert fired(scan(flat)) == {"stalled"}
    moving_policy = [dict(r, **{"policy/approx_kl": 0.01}) for r in flat]
    assert scan(moving_policy) == []


# ------------------------------------------------------------------------------ monitor behaviour

def test_cooldown_limits_repeats():
    rows = broken(healthy_rows(), policy__clipfrac=lambda k, v: 0.6)
    for cooldown in (10, 25):
        steps = [w.step for w in scan(rows, HealthConfig(cooldown=cooldown))]
        assert len(steps) >= 2
        # the failure persists: one reminder per cooldown
        assert all(b - a == cooldown for a, b in itertools.pairwise(steps))


def test_missing_null_and_nonfinite_metrics_are_skipped():
    rows = broken(healthy_rows(critic=False), kl__mean=lambda k, v: 3.5 * 1.12 ** k)
    for row in rows[::7]:
        row["policy/entropy"] = float("nan")
        row["reward/gold_mean"] = None
    warnings = scan(rows)
    assert fired(warnings) == {"kl_runaway"}  # and no value_instability without a critic


def test_policies_and_actions():
    rows = broken(healthy_rows(), policy__clipfrac=lambda k, v: 0.6)
    assert scan(rows, HealthConfig(clipfrac_high_policy="off")) == []
    monitor = HealthMonitor.from_values(health_clipfrac_high_policy="stop")
    actions = [monitor.action(monitor.update(r["step"], r)) for r in rows]
    assert "stop" in actions and set(actions) == {"continue", "stop"}
    assert actions.index("stop") >= BREAK
    w = HealthWarning("kl_runaway", 10, 5, "m", "rollback")
    s = HealthWarning("stalled", 10, 1, "m", "stop")
    assert monitor.action([w]) == "rollback" and monitor.action([w, s]) == "stop"
    assert monitor.action([HealthWarning("x", 1, 1, "m", "warn")]) == "continue"


def test_rollback_picks_a_checkpoint_from_before_the_failure_and_is_bounded():
    rows = broken(healthy_rows(), policy__clipfrac=lambda k, v: 0.6)
    cfg = HealthConfig(clipfrac_high_policy="rollback", max_rollbacks=1)
    monitor = HealthMonitor(cfg)
    by_step = {r["step"]: r for r in rows}
    step, rollbacks, stopped_at = 1, [], None
    while step <= 100:
        warnings = monitor.update(step, by_step[step])
        action = monitor.action(warnings)
        if action == "rollback":
            target = monitor.rollback_step(warnings, range(0, step, 5))  # checkpoints every 5 steps
            assert target is not None and target <= warnings[0].since < step
            assert warnings[0].since >= BREAK - cfg.clipfrac_window  # the window that showed the failure
            rollbacks.append(target)
            monitor.rolled_back(target)
            step = target + 1
            continue
        if action == "stop":
            stopped_at = step
            break
        step += 1
    # after one rollback the failure (deterministic here) comes back and the second one becomes a stop
    assert len(rollbacks) == 1 and stopped_at is not None and monitor.rollbacks == 1
    assert monitor.rollback_step([HealthWarning("clipfrac_high", 50, 45, "m", "rollback")], [46, 50]) is None


def test_steps_must_increase():
    monitor = HealthMonitor()
    monitor.update(3, {"kl/mean": 1.0})
    with pytest.raises(ValueError, match="rolled_back"):
        monitor.update(3, {"kl/mean": 1.0})


def test_state_dict_round_trip_resumes_identically():
    rows = broken(healthy_rows(), kl__mean=lambda k, v: 3.5 * 1.12 ** k, policy__clipfrac=lambda k, v: 0.6)
    full = HealthMonitor()
    expected = [w for r in rows for w in full.update(r["step"], r)]
    first = HealthMonitor()
    got = [w for r in rows[:BREAK + 8] for w in first.update(r["step"], r)]
    state = json.loads(json.dumps(first.state_dict()))  # plain data: survives JSON (and torch.save)
    second = HealthMonitor()
    second.load_state_dict(state)
    got += [w for r in rows[BREAK + 8:] for w in second.update(r["step"], r)]
    assert got == expected and len(expected) >= 2


# ------------------------------------------------------------------------------ config and helpers

def test_config_from_values_and_errors():
    cfg = HealthConfig.from_values({"health_kl_max": 30}, cooldown=5, health_stalled_policy="stop")
    assert (cfg.kl_max, cfg.cooldown, cfg.stalled_policy) == (30, 5, "stop")

    class FakeRLConfig:
        health_kl_max = 12.0
        health_entropy_collapse_policy = "rollback"
        lr = 1e-6

    from_rl = HealthConfig.from_config(FakeRLConfig())
    assert from_rl.kl_max == 12.0 and from_rl.entropy_collapse_policy == "rollback" and from_rl.cooldown == 25
    with pytest.raises(ValueError, match="health_kl_max"):
        HealthConfig.from_values(health_kl_maxx=3)
    with pytest.raises(ValueError, match="kl_runaway_policy.*warn"):
        HealthConfig(kl_runaway_policy="panic")
    with pytest.raises(ValueError, match="kl_window"):
        HealthConfig(kl_window=1)
    with pytest.raises(ValueError, match="kl_growth"):
        HealthConfig(kl_growth=0.5)


def test_trend_hand_computed():
    # x = 0..3, y = 1, 3, 2, 4: slope = Sxy/Sxx = 4/5 = 0.8; residuals -0.3, 0.9, -0.9, 0.3 -> SSE 1.8;
    # se = sqrt(1.8 / 2 / 5) = 0.4243, t = 1.886
    slope, t = trend([1.0, 3.0, 2.0, 4.0])
    assert slope == pytest.approx(0.8) and t == pytest.approx(0.8 / math.sqrt(0.18))
    assert trend([2.0, 2.0, 2.0]) == (0.0, 0.0)
    assert trend([1.0, 2.0, 3.0])[1] == math.inf and trend([3.0, 2.0, 1.0])[1] == -math.inf
    # invariant to shifting and scaling the metric
    assert trend([10 + 5 * v for v in (1.0, 3.0, 2.0, 4.0)])[1] == pytest.approx(t)


def test_every_detector_is_named_documented_and_an_event():
    assert set(DETECTORS) == set(DETECTOR_NAMES) == set(REMEDIES)
    docs = Path(__file__).resolve().parents[2] / "docs" / "health"
    readme = (docs / "README.md").read_text(encoding="utf-8")
    for name in DETECTOR_NAMES:
        assert name in EVENTS, f"add {name} to EVENTS in rlhfkit/reporting/metrics.py"
        page = docs / f"{name.replace('_', '-')}.md"
        assert page.is_file() and f"({page.name})" in readme, f"docs/health/{page.name} missing or not linked"
        text = page.read_text(encoding="utf-8")
        assert f"`{name}_policy`" in text and "## What to do" in text
    from tests.test_docs import broken_links, unknown_metrics

    for page in sorted(docs.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert not unknown_metrics(text) and not broken_links(text, docs), page.name
    for field in HealthConfig.__dataclass_fields__:
        assert f"`{field}`" in readme and f"`health_{field}`" in readme, f"docs/health/README.md: add {field}"
    assert set(WATCHED) <= set(METRICS)


def test_warnings_are_written_as_events(tmp_path):
    rows = broken(healthy_rows(), policy__clipfrac=lambda k, v: 0.6)
    monitor = HealthMonitor()
    with MetricsLogger(tmp_path, strict=True) as logger:
        for row in rows:
            metrics = {k: v for k, v in row.items() if k != "step"}
            logger.log(row["step"], metrics)
            for w in monitor.update(row["step"], metrics):
                logger.event(w.step, w.detector, w.message, **w.event_data())
    logged_rows, events = read_metrics(tmp_path)
    assert len(logged_rows) == len(rows) and events
    assert {e["event"] for e in events} == {"clipfrac_high"}
    assert events[0]["remedies"] == list(REMEDIES["clipfrac_high"]) and events[0]["figures"]["policy/clipfrac"] == 0.6
    assert scan(logged_rows) == scan(rows)  # post-hoc scan of the file gives the same warnings
