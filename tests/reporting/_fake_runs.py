"""Synthetic metrics for plot and report tests, written through the real MetricsLogger."""

import math

from rlhfkit.reporting.logger import MetricsLogger


def rl_rows(steps: int = 30) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        rows.append({
            "step": s, "reward/score_mean": 0.1 * s, "reward/score_std": 0.5, "reward/gold_mean": 0.5 + 0.01 * s,
            "kl/mean": math.log1p(s), "kl/coef": 0.05 + 0.001 * s, "policy/entropy": 2.0 - 0.03 * s,
            "policy/clipfrac": 0.1, "value/clipfrac": 0.05, "policy/approx_kl": 0.01,
            "loss/policy": 0.01 * (-1) ** s, "loss/value": 1.0 / s,
            "value/explained_variance": 1 - 1.0 / s, "response/length_mean": 10 + s % 3,
            "response/length_max": 16, "response/eos_fraction": 0.9, "time/step_s": 0.5, "time/generate_s": 0.3,
        })
    return rows


def write_run(run_dir, rows, events=()):
    """Log rows (dicts with "step") and events ((step, name, message)) into run_dir/metrics.jsonl."""
    with MetricsLogger(run_dir, strict=True) as logger:
        for row in rows:
            logger.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        for step, name, message in events:
            logger.event(step, name, message)
    return run_dir
