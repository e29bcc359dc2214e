"""The six detectors: pure functions (config, history, initial) -> finding, plus their statistics.

Each rule is documented on its page in docs/health/; `DETECTORS` and `REMEDIES` are keyed by name.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable

from rlhfkit.reporting.health.config import HealthConfig

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
    `hacking_entropy_drop` x its first-third value, or the output turns repetitive: the share of
    responses with a repeated 3-gram rises by `hacking_repetition_rise` or distinct-2 falls below
    `hacking_diversity_drop` x its first-third value (MOSS-RLHF: repetitive output is the usual face
    of reward hacking)."""
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
    repeat = _last(history, "response/repeat_3gram_fraction", w)
    if repeat is not None:
        r0, r1 = _thirds(_values(repeat))
        if r1 - r0 > cfg.hacking_repetition_rise:
            figures.update(repeat_start=r0, repeat_end=r1)
            signs.append(f"the share of responses repeating a 3-gram rose from {r0:.0%} to {r1:.0%}")
    distinct = _last(history, "response/distinct_2", w)
    if distinct is not None:
        d0, d1 = _thirds(_values(distinct))
        if d0 > 0 and d1 < cfg.hacking_diversity_drop * d0:
            figures.update(distinct2_start=d0, distinct2_end=d1)
            signs.append(f"response/distinct_2 fell from {_fmt(d0)} to {_fmt(d1)}")
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
    reward/score_std; and the policy stays where it started: |mean kl/mean| < `stalled_kl` when the
    KL to a reference is measured (kl/coef > 0), else mean policy/approx_kl < `stalled_approx_kl`.
    (With several PPO passes per batch approx_kl is never tiny, even for a policy pinned in place by a
    large kl_coef: the distance to the reference is the measure of not moving.)"""
    w = cfg.stalled_window
    score, approx = _last(history, "reward/score_mean", w), _last(history, "policy/approx_kl", w)
    if score is None:
        return None
    coef = _last(history, "kl/coef", w)
    measured = coef is not None and min(_values(coef)) > 0
    if not measured and approx is None:
        return None
    slope, _ = trend(_values(score))
    change = abs(slope) * (w - 1)
    spread_items = _last(history, "reward/score_std", w)
    spread = sum(_values(spread_items)) / w if spread_items else 0.0
    kl_items = _last(history, "kl/mean", w)
    kl = abs(sum(_values(kl_items)) / w) if kl_items else 0.0
    step_kl = sum(_values(approx)) / len(approx) if approx else 0.0
    still = kl < cfg.stalled_kl if measured else step_kl < cfg.stalled_approx_kl
    if change <= cfg.stalled_score_change * spread and still:
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


def detect_overoptimization(cfg: HealthConfig, history: dict, initial: dict) -> Finding:
    """On the held-out probe (probe/* metrics, every probe_every steps from step 0). With a gold reward:
    the last probe's gold is below the best probe's (the starting policy's included) by more than
    `overopt_gold_drop` standard errors, while the probe's score is above its score at that best probe:
    the proxy keeps rising as quality falls (Gao et al. 2023). The drop and its standard error are
    paired per prompt (probe/gold_drop, probe/gold_drop_se: same prompts, same sampling keys); a stream
    without them uses probe/gold_se. The drop must also exceed `overopt_gold_effect` x the first probe's
    per-prompt gold spread (probe/gold_std), the policy must have paid for it in KL: the probe's KL to
    the reference is `overopt_kl_gain` nats above its KL at the best probe (past the peak of gold as a
    function of KL, as Gao et al. plot it; a healthy KL-penalized run wanders in gold at a steady KL),
    and it must hold on `overopt_probes` probes in a row (docs/health/overoptimization.md). Without gold
    (at least 3 probes): the probe's score rose since the first probe, its KL to the reference is above
    `overopt_kl_budget`, and its answers drift from what the reference writes: their reference perplexity
    grew `overopt_ppl_growth`-fold, the share of looping answers rose by `hacking_repetition_rise`, or a
    reward-model ensemble's disagreement grew `overopt_disagreement_growth`-fold."""
    score = history.get("probe/score_mean")
    if score is None or len(score) < 2:
        return None
    gold = history.get("probe/gold_mean")
    if gold is not None and len(gold) == len(score):
        return _gold_drop(cfg, history, initial, score, gold)
    kl = history.get("probe/kl_mean")
    start = initial.get("probe/score_mean", score[0][1])
    if len(score) < 3 or kl is None or not score[-1][1] > start or not kl[-1][1] > cfg.overopt_kl_budget:
        return None
    figures = {"score_start": start, "score_now": score[-1][1], "kl_now": kl[-1][1]}
    signs = []
    for name, growth, words in (("probe/ppl_ref", cfg.overopt_ppl_growth, "the reference finds its answers "
                                 "{:.1f}x more perplexing"),
                                ("probe/ensemble_std", cfg.overopt_disagreement_growth, "the reward models "
                                 "disagree {:.1f}x more")):
        items = history.get(name)
        first = initial.get(name, items[0][1] if items else 0.0)
        if items and first > 0 and items[-1][1] > growth * first:
            figures.update({f"{name.split('/')[1]}_start": first, f"{name.split('/')[1]}_now": items[-1][1]})
            signs.append(words.format(items[-1][1] / first))
    repeat = history.get("probe/repeat_3gram_fraction")
    first = initial.get("probe/repeat_3gram_fraction", repeat[0][1] if repeat else 0.0)
    if repeat is not None and repeat[-1][1] - first > cfg.hacking_repetition_rise:
        figures.update(repeat_start=first, repeat_now=repeat[-1][1])
        signs.append(f"looping answers rose from {first:.0%} to {repeat[-1][1]:.0%}")
    if not signs:
        return None
    return (figures, f"on the held-out probe the score rose from {_fmt(start)} to {_fmt(score[-1][1])} "
                     f"with a KL of {_fmt(kl[-1][1])} nats to the reference (budget {_fmt(cfg.overopt_kl_budget)}) "
                     f"and {' and '.join(signs)}; no gold reward is logged to confirm", score[0][0])


def _gold_drop(cfg: HealthConfig, history: dict, initial: dict, score, gold) -> Finding:
    """The gold arm of `detect_overoptimization`: the gold drop holds on the last `overopt_probes` probes."""
    if len(gold) <= cfg.overopt_probes:
        return None
    found = [_gold_drop_at(cfg, history, initial, score, gold, i) for i in range(len(gold) - cfg.overopt_probes,
                                                                                 len(gold))]
    if not all(found):
        return None
    figures, best_step = found[-1]
    kl_words = (f" and its KL to the reference from {_fmt(figures['kl_at_best'])} to {_fmt(figures['kl_now'])} nats"
                if "kl_now" in figures else "")
    probes_words = f", on {cfg.overopt_probes} probes in a row" if cfg.overopt_probes > 1 else ""
    return (figures, f"on the held-out probe the gold reward fell from {_fmt(figures['gold_best'])} (step "
                     f"{best_step}) to {_fmt(figures['gold_now'])} ({figures['gold_drop'] / figures['gold_drop_se']:.1f} "
                     f"standard errors) while the score rose from {_fmt(figures['score_at_best'])} to "
                     f"{_fmt(figures['score_now'])}{kl_words}{probes_words}: the policy is "
                     f"optimizing the proxy past the point where it helps; the best probe's policy is kept in "
                     f"OUTPUT/best", best_step)


def _gold_drop_at(cfg: HealthConfig, history: dict, initial: dict, score, gold, i: int):
    """(figures, best step) when probe i (an index into the probe history) is below the best earlier probe by
    a drop that is measurable and matters, with a higher score than there; else None."""
    best = max(range(i), key=lambda j: gold[j][1])
    (best_step, g_best), (step, g_now) = gold[best], gold[i]
    paired = {name: dict(history.get(name) or ()) for name in ("probe/gold_drop", "probe/gold_drop_se")}
    if step in paired["probe/gold_drop"] and step in paired["probe/gold_drop_se"]:  # per prompt, same keys
        drop, se = paired["probe/gold_drop"][step], paired["probe/gold_drop_se"][step]
    else:
        drop, se = g_best - g_now, dict(history.get("probe/gold_se") or ()).get(step, 0.0)
    se = max(se, 1e-6)
    spread = initial.get("probe/gold_std", 0.0)  # how much gold varies between prompts at the start
    kl = dict(history.get("probe/kl_mean") or ())
    kl_best, kl_now = kl.get(best_step), kl.get(step)
    paid = kl_best is None or kl_now is None or kl_now - kl_best >= cfg.overopt_kl_gain  # unchecked without KL
    if not (drop > cfg.overopt_gold_drop * se and drop > cfg.overopt_gold_effect * spread
            and score[i][1] > score[best][1] and paid):
        return None
    figures = {"gold_best": g_best, "gold_now": g_now, "gold_drop": drop, "gold_drop_se": se,
               "score_at_best": score[best][1], "score_now": score[i][1], "best_step": best_step}
    if kl_best is not None and kl_now is not None:
        figures.update(kl_at_best=kl_best, kl_now=kl_now)
    return figures, best_step


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
    "overoptimization": ("use the best probe's policy (OUTPUT/best) instead of the last one",
                         "raise kl_coef (beta) or set kl_target", "stop earlier (fewer steps)",
                         "a better or larger reward model, or an ensemble"),
}

DETECTORS: dict[str, Callable] = {
    "kl_runaway": detect_kl_runaway,
    "entropy_collapse": detect_entropy_collapse,
    "reward_hacking": detect_reward_hacking,
    "value_instability": detect_value_instability,
    "stalled": detect_stalled,
    "clipfrac_high": detect_clipfrac_high,
    "overoptimization": detect_overoptimization,
}
