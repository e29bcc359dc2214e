"""The health monitor inside the RL loop: events are written, stop and rollback policies act."""

from __future__ import annotations

import json

from tests.trainers.test_rl_smoke import rl_config


def events(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]


def test_stop_policy_ends_the_run_with_a_checkpoint(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    # An absurd entropy floor makes entropy_collapse fire as soon as its window is full.
    train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=6, health_entropy_floor=100.0,
                       health_entropy_baseline_steps=1, health_entropy_window=1,
                       health_entropy_collapse_policy="stop"))
    names = [e["event"] for e in events(tmp_path)]
    assert "entropy_collapse" in names and names[-1] == "stopped"
    stopped_at = events(tmp_path)[-1]["step"]
    assert stopped_at < 6 and (tmp_path / "checkpoints" / f"step-{stopped_at:06d}" / "COMPLETE").is_file()
    assert (tmp_path / "final").is_dir()


def test_rollback_policy_restores_a_checkpoint_then_escalates(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=8, save_every=1, health_entropy_floor=100.0,
                       health_entropy_baseline_steps=1, health_entropy_window=1, health_cooldown=0,
                       health_entropy_collapse_policy="rollback", health_max_rollbacks=1))
    names = [e["event"] for e in events(tmp_path)]
    assert names.count("rollback") == 1 and names[-1] == "stopped"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps))  # the rolled-back steps were dropped, never duplicated


def test_warn_policy_only_writes_events(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=4, health_entropy_floor=100.0,
                       health_entropy_baseline_steps=1, health_entropy_window=1))
    names = [e["event"] for e in events(tmp_path)]
    assert "entropy_collapse" in names and "stopped" not in names
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    assert rows[-1]["step"] == 4
