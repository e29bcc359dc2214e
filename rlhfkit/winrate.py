"""Win rates with a confidence interval, shared by the judges and by human review.

A comparison of `policy` against `compare` on n prompts ends in wins, ties and losses (from
policy's side). win_rate = (wins + ties / 2) / n, and its 95% interval is the Wilson score
interval (Wilson 1927) for that proportion over n trials, ties counted as half a win. Unlike the
normal approximation it stays inside [0, 1] and is sensible for small n and rates near 0 or 1.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for successes / n (successes may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def win_summary(wins: int, ties: int, losses: int) -> dict:
    """{"win_rate", "ci_low", "ci_high", "ci_method", "wins", "ties", "losses", "n", "tie_rate"}."""
    n = wins + ties + losses
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return {"win_rate": (wins + 0.5 * ties) / n if n else float("nan"), "ci_low": low, "ci_high": high,
            "ci_method": "Wilson score interval, 95%, ties count half a win", "wins": wins, "ties": ties,
            "losses": losses, "n": n, "tie_rate": ties / n if n else float("nan")}
