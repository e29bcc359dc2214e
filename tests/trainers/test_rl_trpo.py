"""TRPO in the RL loop: every accepted step stays inside max_kl, and it raises the score."""

from __future__ import annotations

from tests.trainers.test_rl_smoke import read_metrics, rl_config


def test_trpo_respects_max_kl_and_learns(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    max_kl = 0.2
    train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="trpo", steps=30, prompts_per_step=8, max_new_tokens=8,
                       lr=3e-3, kl_coef=0.01, max_kl=max_kl, damping=0.01))
    rows = read_metrics(tmp_path)
    for r in rows:
        assert r["trpo/kl"] <= max_kl * (1 + 1e-5), r["trpo/kl"]
        assert r["trpo/line_search_steps"] >= 0 and r["trpo/cg_residual"] >= 0
    assert sum(r["trpo/accepted"] for r in rows) >= len(rows) // 2
    scores = [r["reward/score_mean"] for r in rows]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.15, scores
