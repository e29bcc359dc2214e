"""Run health: small rules over recent windows of the logged RL metrics that name a failure mode.

RLHF runs fail in a few well-known ways that the loss curve hides (MOSS-RLHF, Zheng et al. 2023,
recommend watching perplexity, response length and KL rather than reward and loss). Each detector
below is one documented rule over the last few steps of metrics; it returns a `HealthWarning` that
names the failure, gives the figures that triggered it and the usual remedies, and carries the
policy the user chose for it: "warn" (default), "stop" (checkpoint and end the run cleanly) or
"rollback" (restore the last checkpoint from before the failure began); "off" disables it.

    monitor = HealthMonitor(HealthConfig(kl_runaway_policy="stop"))
    for step ...:
        warnings = monitor.update(step, metrics)      # metrics: {"kl/mean": 3.1, ...}
        for w in warnings:
            logger.event(w.step, w.detector, w.message, **w.event_data())
        action = monitor.action(warnings)             # "continue" | "stop" | "rollback"

Pure Python (no torch): the monitor keeps a bounded history of the metrics its rules read, and its
state is a plain dict (`state_dict`) that fits in a checkpoint. docs/health/ has one page per rule.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.config import ConfigError

POLICIES = ("off", "warn", "stop", "rollback")
DETECTOR_NAMES = ("kl_runaway", "entropy_collapse", "reward_hacking", "value_instability", "stalled",
                  "clipfrac_high")
# "continue" < "rollback" < "stop": when several warnings fire at once the strongest action wins.
_ACTION_RANK = {"continue": 0, "rollback": 1, "stop": 2}

# The metrics the detectors read; nothing else is kept in the history.
WATCHED = ("kl/mean", "kl/coef", "policy/entropy", "reward/score_mean", "reward/score_std", "reward/gold_mean",
           "response/length_mean", "loss/value", "value/explained_variance", "policy/clipfrac",
           "policy/approx_kl")


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
    stalled_approx_kl: float = 1e-4      # ...and mean policy/approx_kl below this (nats/token)
    # 6. clipfrac_high: each update moves the policy too far
    clipfrac_high_policy: str = "warn"
    clipfrac_window: int = 5
    clipfrac_max: float = 0.3        # median policy/clipfrac over the window above this fires

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
        for name in ("cooldown", "max_rollbacks"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{_field(name)} must be >= 0, got {getattr(self, name)!r}")
        for name in ("kl_rising", "entropy_fraction", "hacking_entropy_drop"):
            if not 0.0 < float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{_field(name)} must lie in (0, 1], got {getattr(self, name)!r}")
        for name in ("kl_growth", "hacking_length_growth", "value_spike"):
            if float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{_field(name)} is a growth factor and must be > 1, got {getattr(self, name)!r}")
        for name in ("kl_max", "kl_min", "hacking_t", "value_oscillation", "stalled_score_change", "stalled_kl",
                     "stalled_approx_kl", "clipfrac_max", "entropy_floor"):
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


# -------------------------------------------------------------------------- statistics helpers

def trend(values: list[float]) -> tuple[float, float]:
    """Least-squares slope of values against 0..n-1 and its t-statistic slope / se(slope).

    The t-statistic makes "rising" scale-free: with n points and noise sigma around a line, a total
    change of about 2.5 sigma over 15 points gives t = 3. A perfect line gives t = +-inf; a flat
    series t = 0. Needs n >= 3.
    """
    n = len(values)
    if n < 3:
        raise ValueError(f"trend needs at least 3 values, got {n}")
    x_mean = (n - 1) / 2
    y_mean = sum(values) / n
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    slope = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values)) / sxx
    resid = sum((y - y_mean - slope * (i - x_mean)) ** 2 for i, y in enumerate(values))
    se = math.sqrt(resid / (n - 2) / sxx)
    scale = max(abs(y) for y in values) or 1.0
    if se <= 1e-12 * scale:
        return slope, 0.0 if abs(slope) <= 1e-12 * scale else math.copysign(math.inf, slope)
    return slope, slope / se


def _thirds(values: list[float]) -> tuple[float, float]:
    """Medians of the first and last thirds of a window (at least one value each): less noisy than
    the endpoints, and one outlying step cannot make a trend."""
    k = max(1, len(values) // 3)
    return statistics.median(values[:k]), statistics.median(values[-k:])


def _fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


# -------------------------------------------------------------------------- the detectors
# Each detector: (config, history, initial) -> None, or (figures, what was seen, first step of the
# window that showed it). `history` maps a metric name to its recent (step, value) pairs, oldest
# first; `initial` holds start-of-run references (the initial entropy).

Finding = tuple[dict, str, int] | None


def _last(history: dict, name: str, n: int) -> list[tuple[int, float]] | None:
    """The last n (step, value) pairs of a metric, or None while fewer than n were seen."""
    items = history.get(name, ())
    return list(items)[-n:] if len(items) >= n else None


def _values(items: list[tuple[int, float]]) -> list[float]:
    return [v for _, v in items]


def detect_kl_runaway(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """Fires when the median kl/mean of the last 3 steps is above `kl_max`, or when over the last
    `kl_window` steps kl/mean rose in at least `kl_rising` of the steps and its last-third median
    is above `kl_min` and above `kl_growth` x max(first-third median, `kl_min`)."""
    recent = _last(history, "kl/mean", 3)
    if recent is not None:
        level = statistics.median(_values(recent))
        if level > cfg.kl_max:
            return ({"kl/mean": level, "kl_max": cfg.kl_max},
                    f"kl/mean is {_fmt(level)} nats (median of the last 3 steps), above the limit {_fmt(cfg.kl_max)}",
                    recent[0][0])
    window = _last(history, "kl/mean", cfg.kl_window)
    if window is None:
        return None
    values = _values(window)
    coef = _last(history, "kl/coef", 1)
    start, end = _thirds(values)
    rising = sum(b > a for a, b in itertools.pairwise(values)) / (len(values) - 1)
    # The floor kl_min keeps the normal early rise from ~0 to a few nats from counting as growth.
    growth = end / max(start, cfg.kl_min)
    if end > cfg.kl_min and growth > cfg.kl_growth and rising >= cfg.kl_rising:
        figures = {"kl_start": start, "kl_end": end, "growth": growth, "rising_fraction": rising}
        beta = ""
        if coef is not None:
            figures["kl/coef"] = coef[0][1]
            beta = f"; kl/coef is {_fmt(coef[0][1])}"
        return (figures, f"kl/mean rose from {_fmt(start)} to {_fmt(end)} nats over {len(values)} steps "
                         f"(x{growth:.1f} against the limit x{_fmt(cfg.kl_growth)}; it rose in {rising:.0%} of the "
                         f"steps{beta})", window[0][0])
    return None


def detect_entropy_collapse(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """Fires when the median policy/entropy of the last `entropy_window` steps is below
    `entropy_floor`, or below `entropy_fraction` x the initial entropy (the median of the first
    `entropy_baseline_steps` steps of the run)."""
    recent = _last(history, "policy/entropy", cfg.entropy_window)
    start = initial.get("policy/entropy")
    if recent is None or start is None:
        return None
    level = statistics.median(_values(recent))
    limit = max(cfg.entropy_floor, cfg.entropy_fraction * start)
    if level >= limit:
        return None
    # The fall began where the entropy last stood above the midpoint between its start and the limit.
    since = recent[0][0]
    for s, v in reversed(history["policy/entropy"]):
        if v > (start + limit) / 2:
            break
        since = s
    figures = {"policy/entropy": level, "initial_entropy": start}
    if level < cfg.entropy_floor:
        return (figures, f"policy/entropy is {_fmt(level)} nats/token, below the floor {_fmt(cfg.entropy_floor)} "
                         f"(it started at {_fmt(start)})", since)
    return (figures, f"policy/entropy fell to {_fmt(level)} nats/token, {level / start:.0%} of its initial "
                     f"{_fmt(start)} (limit {cfg.entropy_fraction:.0%})", since)


def detect_reward_hacking(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """Over the last `hacking_window` steps, reward/score_mean clearly rises (trend t > `hacking_t`) and:
    with reward/gold_mean logged on the same steps, gold clearly falls (t < -`hacking_t`); without
    gold, response/length_mean grows by more than `hacking_length_growth` (last third / first third)
    or policy/entropy, the log-perplexity of the policy's own samples, falls below
    `hacking_entropy_drop` x its first-third value."""
    w = cfg.hacking_window
    score = _last(history, "reward/score_mean", w)
    if score is None:
        return None
    _, t_score = trend(_values(score))
    if not t_score > cfg.hacking_t:
        return None
    s0, s1 = _thirds(_values(score))
    since = score[0][0]
    figures: dict = {"score_start": s0, "score_end": s1, "score_t": t_score}
    gold = _last(history, "reward/gold_mean", w)
    if gold is not None and [s for s, _ in gold] == [s for s, _ in score]:
        _, t_gold = trend(_values(gold))
        g0, g1 = _thirds(_values(gold))
        if t_gold < -cfg.hacking_t:
            figures.update(gold_start=g0, gold_end=g1, gold_t=t_gold)
            return (figures, f"over {w} steps reward/score_mean rose from {_fmt(s0)} to {_fmt(s1)} (trend "
                             f"t={t_score:.1f}) while reward/gold_mean fell from {_fmt(g0)} to {_fmt(g1)} "
                             f"(t={t_gold:.1f})", since)
        return None  # gold is the truth: a rising score with a steady gold is progress, whatever the length
    signs = []
    length = _last(history, "response/length_mean", w)
    if length is not None:
        l0, l1 = _thirds(_values(length))
        if l0 > 0 and l1 / l0 > cfg.hacking_length_growth:
            figures.update(length_start=l0, length_end=l1)
            signs.append(f"response/length_mean grew from {_fmt(l0)} to {_fmt(l1)} tokens (x{l1 / l0:.1f})")
    entropy = _last(history, "policy/entropy", w)
    if entropy is not None:
        e0, e1 = _thirds(_values(entropy))
        if e0 > 0 and e1 < cfg.hacking_entropy_drop * e0:
            figures.update(entropy_start=e0, entropy_end=e1)
            signs.append(f"policy/entropy (the log-perplexity of its samples) fell from {_fmt(e0)} to {_fmt(e1)}")
    if not signs:
        return None
    return (figures, f"over {w} steps reward/score_mean rose from {_fmt(s0)} to {_fmt(s1)} (t={t_score:.1f}) "
                     f"while {' and '.join(signs)}; no gold reward is logged to confirm", since)


def detect_value_instability(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """Fires when loss/value is above `value_spike` x its median over the preceding `value_window`
    steps; or when it oscillates: the standard deviation of its step-to-step log-changes over the
    window is above `value_oscillation` (a steadily falling or rising loss has steady log-changes, so
    it does not count, unlike a plain coefficient of variation); or when value/explained_variance
    stays below `value_ev_min` on every step of the window."""
    w = cfg.value_window
    losses = _last(history, "loss/value", w + 1)
    if losses is not None:
        now, median = losses[-1][1], statistics.median(_values(losses[:-1]))
        if median > 0 and now > cfg.value_spike * median:
            return ({"loss/value": now, "median_before": median, "ratio": now / median},
                    f"loss/value jumped to {_fmt(now)}, {now / median:.0f}x its median {_fmt(median)} over the "
                    f"previous {w} steps (limit x{_fmt(cfg.value_spike)})", losses[-1][0])
        window = _values(losses)
        if min(window) > 0:
            changes = [math.log(b / a) for a, b in itertools.pairwise(window)]
            jitter = statistics.pstdev(changes)
            if jitter > cfg.value_oscillation:
                return ({"log_change_std": jitter, "loss/value_min": min(window), "loss/value_max": max(window)},
                        f"loss/value oscillates between {_fmt(min(window))} and {_fmt(max(window))} over {w} "
                        f"steps: its step-to-step log-change has std {jitter:.2f} (limit "
                        f"{_fmt(cfg.value_oscillation)}, i.e. typical jumps of x{math.exp(jitter):.1f})",
                        losses[1][0])
    ev = _last(history, "value/explained_variance", w)
    if ev is not None:
        worst, best = min(_values(ev)), max(_values(ev))
        if best < cfg.value_ev_min:
            return ({"explained_variance_max": best, "explained_variance_min": worst},
                    f"value/explained_variance stayed below {_fmt(cfg.value_ev_min)} for {w} steps "
                    f"(between {_fmt(worst)} and {_fmt(best)}): the critic is worse than a constant", ev[0][0])
    return None


def detect_stalled(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """Over the last `stalled_window` steps, all of: the fitted change of reward/score_mean over the
    window (|slope| x (window - 1)) is at most `stalled_score_change` x the mean within-batch spread
    reward/score_std; |mean kl/mean| < `stalled_kl`; mean policy/approx_kl < `stalled_approx_kl`."""
    w = cfg.stalled_window
    score, approx = _last(history, "reward/score_mean", w), _last(history, "policy/approx_kl", w)
    if score is None or approx is None:
        return None
    slope, _ = trend(_values(score))
    change = abs(slope) * (w - 1)
    spread_items = _last(history, "reward/score_std", w)
    spread = sum(_values(spread_items)) / w if spread_items else 0.0
    kl_items = _last(history, "kl/mean", w)
    kl = abs(sum(_values(kl_items)) / w) if kl_items else 0.0
    step_kl = sum(_values(approx)) / w
    if change <= cfg.stalled_score_change * spread and kl < cfg.stalled_kl and step_kl < cfg.stalled_approx_kl:
        return ({"score_change": change, "score_std": spread, "kl/mean": kl, "policy/approx_kl": step_kl},
                f"nothing moved over {w} steps: reward/score_mean changed by {_fmt(change)} (within-batch std "
                f"{_fmt(spread)}), mean kl/mean {_fmt(kl)} nats, mean policy/approx_kl {step_kl:.2g} nats/token",
                score[0][0])
    return None


def detect_clipfrac_high(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """Fires when the median policy/clipfrac over the last `clipfrac_window` steps is above `clipfrac_max`."""
    window = _last(history, "policy/clipfrac", cfg.clipfrac_window)
    if window is None:
        return None
    level = statistics.median(_values(window))
    if level > cfg.clipfrac_max:
        return ({"policy/clipfrac": level, "clipfrac_max": cfg.clipfrac_max},
                f"policy/clipfrac has a median of {level:.2f} over {len(window)} steps (limit "
                f"{_fmt(cfg.clipfrac_max)}): most updates hit the clip", window[0][0])
    return None


REMEDIES: dict[str, tuple[str, ...]] = {
    "kl_runaway": ("raise kl_coef, or set kl_target for the adaptive controller", "lower lr", "fewer ppo_epochs"),
    "entropy_collapse": ("add an entropy bonus (entropy_coef, e.g. 0.01)", "raise temperature", "lower lr",
                         "raise kl_coef (the reference keeps the policy's spread)"),
    "reward_hacking": ("raise kl_coef (beta) or lower kl_target",
                       "improve the reward model (more or harder preference pairs, an ensemble)",
                       "add a length penalty to the reward",
                       "stop early: keep the checkpoint from before the divergence"),
    "value_instability": ("clip the value loss (value_clip, e.g. 0.2)", "lower critic_lr",
                          "warm up the critic first (critic_warmup_steps)", "normalize rewards (normalize_rewards)"),
    "stalled": ("lower kl_coef (or kl_target)", "raise lr",
                "check the reward: it must vary between responses (reward/score_std) and be the function you meant",
                "for group algorithms: a larger n, or easier prompts"),
    "clipfrac_high": ("lower lr", "fewer ppo_epochs", "larger minibatch_size"),
}

DETECTORS: dict[str, Callable] = {
    "kl_runaway": detect_kl_runaway,
    "entropy_collapse": detect_entropy_collapse,
    "reward_hacking": detect_reward_hacking,
    "value_instability": detect_value_instability,
    "stalled": detect_stalled,
    "clipfrac_high": detect_clipfrac_high,
}


# -------------------------------------------------------------------------- the monitor

class HealthMonitor:
    """Feeds each step's metrics to the detectors and returns the warnings that fire.

    A detector that fired stays quiet for `cooldown` steps (then, if the condition still holds, it
    reminds once more). Metrics that are missing, None or non-finite are skipped; a detector whose
    metrics are not logged (no critic, no gold) never fires.
    """

    def __init__(self, config: HealthConfig | None = None):
        self.config = config or HealthConfig()
        self.history: dict[str, deque] = {}
        self.initial: dict[str, float] = {}     # start-of-run references, e.g. the initial entropy
        self._entropy_start: list[tuple[int, float]] = []  # (step, entropy) until the baseline is set
        self.last_fired: dict[str, int] = {}
        self.rollbacks = 0
        self.last_step: int | None = None

    @classmethod
    def from_values(cls, values: dict | None = None, **kwargs) -> HealthMonitor:
        """`HealthMonitor(HealthConfig.from_values(values, **kwargs))`; `health_` prefixes are accepted."""
        return cls(HealthConfig.from_values(values, **kwargs))

    @classmethod
    def from_config(cls, config: Any) -> HealthMonitor:
        """`HealthMonitor(HealthConfig.from_config(config))`: reads `health_*` attributes (RLConfig)."""
        return cls(HealthConfig.from_config(config))

    def update(self, step: int, metrics: dict) -> list[HealthWarning]:
        """Record one step's metrics and return the warnings that fire at this step (often none).

        Call once per RL step, with every metric computed at that step, whether or not it is logged.
        Steps must increase; a repeated or older step raises (after a rollback call `rolled_back`).
        """
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"health monitor got step {step} after step {self.last_step}; steps must increase "
                             f"(after restoring a checkpoint call rolled_back(step) first)")
        self.last_step = step
        self._record(step, metrics)
        cfg = self.config
        out = []
        for name, detect in DETECTORS.items():
            policy = getattr(cfg, f"{name}_policy")
            if policy == "off":
                continue
            last = self.last_fired.get(name)
            if last is not None and step - last < cfg.cooldown:
                continue
            found = detect(cfg, self.history, self.initial)
            if found is None:
                continue
            figures, seen, since = found
            remedies = REMEDIES[name]
            message = f"{name} at step {step}: {seen}. Try: {'; '.join(remedies)}."
            if policy != "warn":
                message += f" Policy: {policy}."
            self.last_fired[name] = step
            out.append(HealthWarning(name, step, since, message, policy,
                                     {k: float(v) for k, v in figures.items()}, remedies))
        return out

    def action(self, warnings: Iterable[HealthWarning]) -> str:
        """What the loop should do after this step's warnings: "continue", "stop" or "rollback".

        The strongest policy wins (stop > rollback > warn). "rollback" becomes "stop" once
        `max_rollbacks` rollbacks were made.
        """
        best = "continue"
        for w in warnings:
            act = {"warn": "continue", "off": "continue"}.get(w.policy, w.policy)
            if act == "rollback" and self.rollbacks >= self.config.max_rollbacks:
                act = "stop"
            if _ACTION_RANK[act] > _ACTION_RANK[best]:
                best = act
        return best

    def rollback_step(self, warnings: Iterable[HealthWarning], checkpoint_steps: Iterable[int]) -> int | None:
        """The checkpoint to restore: the newest step <= the earliest `since` of the rollback warnings
        (the start of the window that showed the failure). None when no checkpoint is that old (then
        stop instead)."""
        starts = [w.since for w in warnings if w.policy == "rollback"]
        if not starts:
            return None
        limit = min(starts)
        older = [int(s) for s in checkpoint_steps if int(s) <= limit]
        return max(older) if older else None

    def rolled_back(self, step: int) -> None:
        """Tell the monitor the loop restored the checkpoint of `step`: it forgets the metrics and the
        firings after `step` (so a failure that comes back is reported again) and counts the rollback
        (the count is what `action` compares with `max_rollbacks`)."""
        step = int(step)
        for name, items in self.history.items():
            self.history[name] = deque(((s, v) for s, v in items if s <= step), maxlen=items.maxlen)
        self.last_fired = {k: v for k, v in self.last_fired.items() if v <= step}
        self._entropy_start = [(s, v) for s, v in self._entropy_start if s <= step]
        if len(self._entropy_start) < self.config.entropy_baseline_steps:
            self.initial.pop("policy/entropy", None)
        self.rollbacks += 1
        self.last_step = step

    # -- state for checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain lists, numbers and dicts (safe for `torch.load(weights_only=True)` and JSON)."""
        return {"history": {k: [[s, v] for s, v in items] for k, items in self.history.items()},
                "initial": dict(self.initial), "entropy_start": [[s, v] for s, v in self._entropy_start],
                "last_fired": dict(self.last_fired), "rollbacks": self.rollbacks, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore after resume. (Not after a health rollback: call `rolled_back` so the count survives.)"""
        size = self._history_size()
        self.history = {k: deque(((int(s), float(v)) for s, v in items), maxlen=size)
                        for k, items in state["history"].items()}
        self.initial = {k: float(v) for k, v in state["initial"].items()}
        self._entropy_start = [(int(s), float(v)) for s, v in state["entropy_start"]]
        self.last_fired = {k: int(v) for k, v in state["last_fired"].items()}
        self.rollbacks = int(state["rollbacks"])
        self.last_step = state["last_step"]

    # -- internals ------------------------------------------------------------------------
    def _history_size(self) -> int:
        return self.config.longest_window + 1

    def _record(self, step: int, metrics: dict) -> None:
        size = self._history_size()
        for name in WATCHED:
            value = _number(metrics.get(name))
            if value is None:
                continue
            self.history.setdefault(name, deque(maxlen=size)).append((step, value))
            if name == "policy/entropy" and name not in self.initial:
                self._entropy_start.append((step, value))
                if len(self._entropy_start) >= self.config.entropy_baseline_steps:
                    self.initial[name] = statistics.median(v for _, v in self._entropy_start)


def _number(value) -> float | None:
    """A finite float, or None for missing / null / non-finite / non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def scan(rows: Iterable[dict], config: HealthConfig | None = None) -> list[HealthWarning]:
    """Run a fresh monitor over logged metric rows (e.g. `read_metrics(run_dir)[0]`) and return every
    warning, in order: a post-hoc check of a finished run. Rows sharing a step are merged."""
    monitor = HealthMonitor(config)
    merged: dict[int, dict] = {}
    for row in rows:
        if "step" in row and "event" not in row:
            merged.setdefault(int(row["step"]), {}).update(row)
    out = []
    for step in sorted(merged):
        out += monitor.update(step, merged[step])
    return out
