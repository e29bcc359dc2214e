"""The run-health settings (thresholds, windows, policies) and the warning a detector returns."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.config import ConfigError

POLICIES = ("off", "warn", "stop", "rollback")
DETECTOR_NAMES = ("kl_runaway", "entropy_collapse", "reward_hacking", "value_instability", "stalled",
                  "clipfrac_high", "overoptimization")

# The metrics the detectors read; nothing else is kept in the history.
WATCHED = ("kl/mean", "kl/coef", "policy/entropy", "reward/score_mean", "reward/score_std", "reward/gold_mean",
           "response/length_mean", "loss/value", "value/explained_variance", "policy/clipfrac",
           "policy/approx_kl", "response/repeat_3gram_fraction", "response/distinct_2", "probe/score_mean",
           "probe/gold_mean", "probe/gold_se", "probe/gold_std", "probe/gold_drop", "probe/gold_drop_se", "probe/kl_mean", "probe/ppl_ref",
           "probe/repeat_3gram_fraction", "probe/length_mean", "probe/ensemble_std")



@dataclass
class HealthConfig:
    """Thresholds, windows and policies of the run-health detectors (docs/health/README.md).

    Windows count the steps at which the metric was seen; `cooldown` counts steps. In RLConfig
    each field appears as `health_<name>`; `from_values` accepts either spelling. Invalid values
    raise ConfigError (a ValueError) naming the field.
    """

    cooldown: int = 25              # steps a detector stays quiet after it fired (then it may remind)
    max_rollbacks: int = 2          # rollbacks allowed per run; the next "rollback" becomes "stop"
    # 1. kl_runaway: KL to the reference climbing without bound
    kl_runaway_policy: str = "warn"
    kl_max: float = 25.0            # nats/sequence: median of the last 3 kl/mean above this fires
    kl_window: int = 10             # steps over which the growth is measured
    kl_growth: float = 3.0          # last-third median / max(first-third median, kl_min) above this fires...
    kl_min: float = 2.0             # ...when the KL is also above this (the early rise from 0 is normal)
    kl_rising: float = 0.7          # ...and kl/mean rose in at least this fraction of the window's steps
    # 2. entropy_collapse: the policy stops exploring
    entropy_collapse_policy: str = "warn"
    entropy_baseline_steps: int = 5  # the initial entropy is the median of the first this many steps
    entropy_fraction: float = 0.25   # median of the last `entropy_window` below fraction x initial fires
    entropy_floor: float = 0.05      # nats/token: ... or below this absolute floor
    entropy_window: int = 3
    # 3. reward_hacking: the score rises while true quality falls
    reward_hacking_policy: str = "warn"
    hacking_window: int = 15
    hacking_t: float = 3.0           # trend t-statistic that counts as "clearly rising / falling"
    hacking_length_growth: float = 1.5   # without gold: score rising and length x this over the window
    hacking_entropy_drop: float = 0.5    # without gold: score rising and entropy (log-perplexity) x this
    hacking_repetition_rise: float = 0.2  # without gold: ... or the share of looping responses up by this
    hacking_diversity_drop: float = 0.7   # without gold: ... or distinct-2 down to this x its start
    # 4. value_instability: the critic cannot track the returns
    value_instability_policy: str = "warn"
    value_window: int = 10
    value_spike: float = 20.0        # loss/value above this x the median of the preceding window fires
    value_oscillation: float = 2.0   # std of the step-to-step log-changes of loss/value above this fires
    value_ev_min: float = -1.0       # value/explained_variance below this on every step of the window fires
    # 5. stalled: nothing moves
    stalled_policy: str = "warn"
    stalled_window: int = 20
    stalled_score_change: float = 0.05   # |score trend x window| below this x mean reward/score_std...
    stalled_kl: float = 0.05             # ...and |mean kl/mean| below this (nats/sequence)...
    stalled_approx_kl: float = 1e-4      # ...without a reference (kl/coef 0): mean policy/approx_kl below this
    # 6. clipfrac_high: each update moves the policy too far
    clipfrac_high_policy: str = "warn"
    clipfrac_window: int = 5
    clipfrac_max: float = 0.3        # median policy/clipfrac over the window above this fires
    # 7. overoptimization: on the held-out probe, the proxy score keeps rising while quality falls
    overoptimization_policy: str = "warn"
    overopt_gold_drop: float = 3.0   # probe gold below its best by this many (paired) standard errors...
    overopt_gold_effect: float = 0.2  # ...and by this x the first probe's per-prompt gold std (a drop that matters)...
    overopt_kl_gain: float = 1.0     # ...while the probe's KL to the reference is this many nats above the best's...
    overopt_probes: int = 1          # ...on this many probes in a row
    overopt_kl_budget: float = 10.0  # without gold: probe KL to the reference above this (nats/response)...
    overopt_ppl_growth: float = 1.5  # ...and reference perplexity of the probe's answers x this since the start
    overopt_disagreement_growth: float = 2.0  # ...or a reward-model ensemble's disagreement x this since the start

    def __post_init__(self):
        for name in DETECTOR_NAMES:
            policy = getattr(self, f"{name}_policy")
            if policy not in POLICIES:
                raise ConfigError(f"{_field(name + '_policy')} must be one of {', '.join(POLICIES)}, got {policy!r}")
        windows = ("kl_window", "hacking_window", "value_window", "stalled_window", "clipfrac_window")
        for name in windows:
            if int(getattr(self, name)) < 3:
                raise ConfigError(f"{_field(name)} must be >= 3 steps (a trend needs a few points), "
                                 f"got {getattr(self, name)!r}")
        for name in ("entropy_baseline_steps", "entropy_window"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{_field(name)} must be >= 1, got {getattr(self, name)!r}")
        if int(self.overopt_probes) < 1:
            raise ConfigError(f"{_field('overopt_probes')} must be >= 1 (probes in a row), got {self.overopt_probes!r}")
        for name in ("cooldown", "max_rollbacks"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{_field(name)} must be >= 0, got {getattr(self, name)!r}")
        for name in ("kl_rising", "entropy_fraction", "hacking_entropy_drop", "hacking_diversity_drop",
                     "hacking_repetition_rise"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{_field(name)} must lie in (0, 1], got {getattr(self, name)!r}")
        for name in ("kl_growth", "hacking_length_growth", "value_spike", "overopt_ppl_growth",
                     "overopt_disagreement_growth"):
            if float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{_field(name)} is a growth factor and must be > 1, got {getattr(self, name)!r}")
        for name in ("kl_max", "kl_min", "hacking_t", "value_oscillation", "stalled_score_change", "stalled_kl",
                     "stalled_approx_kl", "clipfrac_max", "entropy_floor", "overopt_gold_drop", "overopt_kl_budget",
                     "overopt_kl_gain", "overopt_gold_effect"):
            if not float(getattr(self, name)) >= 0.0:
                raise ConfigError(f"{_field(name)} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_values(cls, values: dict | None = None, **kwargs) -> HealthConfig:
        """Build from a dict and/or keyword arguments; keys may carry the `health_` prefix of RLConfig
        (`health_kl_max=30` and `kl_max=30` are the same). Unknown keys raise ConfigError."""
        merged = {**(values or {}), **kwargs}
        names = {f.name for f in dataclasses.fields(cls)}
        out = {}
        for key, value in merged.items():
            name = key.removeprefix("health_")
            if name not in names:
                close = difflib.get_close_matches(name, sorted(names), n=3)
                hint = f" Did you mean {', '.join('health_' + c for c in close)}?" if close else ""
                raise ConfigError(f"unknown health setting {key!r}.{hint} See docs/health/README.md for the list.")
            out[name] = value
        return cls(**out)

    @classmethod
    def from_config(cls, config: Any) -> HealthConfig:
        """Collect the `health_<name>` attributes of a config object (e.g. RLConfig); missing ones keep
        their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(config, "health_" + n) for n in names if hasattr(config, "health_" + n)})

    @property
    def longest_window(self) -> int:
        """The most steps any detector looks back: keep a checkpoint at least this old for rollback."""
        return max(self.kl_window, self.hacking_window, self.value_window, self.stalled_window,
                   self.clipfrac_window, self.entropy_baseline_steps + self.entropy_window)


def _field(name: str) -> str:
    return f"health setting {name!r} (RLConfig.health_{name})"


@dataclass(frozen=True)
class HealthWarning:
    """One detector firing.

    detector: its name (also the event name in metrics.jsonl), e.g. "kl_runaway".
    step: the step at which it fired. since: the first step of the window that showed the failure;
        a rollback should go to a checkpoint at or before it.
    message: one readable paragraph: what was seen, with figures, and what to do.
    policy: "warn", "stop" or "rollback" as configured.
    figures: the numbers behind the message (metric or statistic name -> value).
    remedies: the usual fixes, most likely first.
    """

    detector: str
    step: int
    since: int
    message: str
    policy: str
    figures: dict = field(default_factory=dict)
    remedies: tuple[str, ...] = ()

    def event_data(self) -> dict:
        """Keyword arguments for `MetricsLogger.event(w.step, w.detector, w.message, **w.event_data())`."""
        return {"policy": self.policy, "since": self.since, "figures": dict(self.figures),
                "remedies": list(self.remedies)}
