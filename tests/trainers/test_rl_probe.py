"""The held-out probe, the overoptimization detector on recorded probe streams, and the best checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainers.test_rl_smoke import final_params, read_metrics, rl_config


def test_probe_measures_the_kl_even_without_a_kl_penalty_and_keeps_the_best(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    result = train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", kl_coef=0.0, steps=4, probe_every=2,
                                probe_size=4, lr=3e-3, gold_fn=f"{data_dir / 'reward.py'}:distinct"))
    rows = read_metrics(tmp_path)
    probed = [r for r in rows if "probe/score_mean" in r]
    assert [r["step"] for r in probed] == [2, 4]
    assert all("probe/kl_mean" in r and "probe/gold_mean" in r and r["probe/ppl_ref"] > 1 for r in probed)
    assert probed[-1]["probe/kl_mean"] != 0.0  # a reference was loaded for the probe alone
    assert all(r["kl/mean"] == 0.0 for r in rows)  # training still has no KL term
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["criterion"] == "probe/gold_mean"
    assert best["value"] == max(r["probe/gold_mean"] for r in probed)
    assert result["best"] == str(tmp_path / "best") and (tmp_path / "best" / "config.json").is_file()


def test_probe_off_and_same_training(tiny_dir, data_dir, tmp_path):
    # The probe samples with its own keys: the training run is the same with or without it.
    from rlhfkit.trainers.rl import train_rl

    a = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "a", algo="grpo", steps=2, probe_every=1, probe_size=3))
    b = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "b", algo="grpo", steps=2, probe_every=0))
    assert torch.equal(final_params(a["final"]), final_params(b["final"]))
    assert "best" not in b and not (tmp_path / "b" / "best.json").exists()
    assert not any(k.startswith("probe/") for r in read_metrics(tmp_path / "b") for k in r)


def stream(gold, score, kl=None, ppl=None, se=0.02, every=10):
    rows = []
    for i, (g, s) in enumerate(zip(gold or score, score)):
        row = {"step": (i + 1) * every, "probe/score_mean": s, "probe/gold_se": se}
        if gold is not None:
            row["probe/gold_mean"] = g
        if kl is not None:
            row["probe/kl_mean"] = kl[i]
        if ppl is not None:
            row["probe/ppl_ref"] = ppl[i]
        rows.append(row)
    return rows


def fires(rows) -> list:
    from rlhfkit.reporting.health import HealthMonitor

    monitor = HealthMonitor()
    return [w for r in rows for w in monitor.update(r["step"], r) if w.detector == "overoptimization"]


def test_overoptimization_with_gold():
    hacked = stream(gold=[0.0, 0.2, 0.3, 0.27, 0.1], score=[0.3, 0.6, 0.9, 1.1, 1.3])  # 0.27: 1.5 se below
    found = fires(hacked)
    assert [w.step for w in found] == [50] and found[0].since == 30  # the best probe: step 30
    assert found[0].figures["best_step"] == 30
    # a dip within 2 standard errors is noise; a falling gold with a falling score is not over-optimization
    assert fires(stream(gold=[0.0, 0.2, 0.3, 0.27, 0.28], score=[0.3, 0.6, 0.9, 1.1, 1.3])) == []
    assert fires(stream(gold=[0.0, 0.2, 0.3, 0.1, 0.0], score=[0.3, 0.6, 0.9, 0.5, 0.4])) == []


def test_overoptimization_without_gold():
    score = [0.3, 0.6, 0.9, 1.1, 1.3]
    drift = stream(None, score, kl=[1, 4, 8, 12, 16], ppl=[5.0, 5.5, 6.0, 8.0, 9.0])
    assert [w.step for w in fires(drift)] == [40]
    assert fires(stream(None, score, kl=[1, 2, 3, 4, 5], ppl=[5.0, 5.5, 6.0, 8.0, 9.0])) == []  # within budget
    assert fires(stream(None, score, kl=[1, 4, 8, 12, 16], ppl=[5.0, 5.1, 5.2, 5.3, 5.4])) == []  # no drift


def test_best_checkpoint_choice(tmp_path):
    from rlhfkit.rollout import GenerationSettings
    from rlhfkit.trainers.probe import Probe, keep_if_best

    probe = Probe(rows=[], settings=GenerationSettings(max_new_tokens=1), keys=torch.zeros(0), kl_penalty=0.1)
    saved = []
    for step, (score, kl) in enumerate([(1.0, 0.0), (2.0, 5.0), (1.8, 1.0)], start=1):
        keep_if_best(probe, {"probe/score_mean": score, "probe/kl_mean": kl}, step, saved.append, tmp_path)
    # 1.0, 2.0 - 0.5 = 1.5, 1.8 - 0.1 = 1.7: the third probe is best without gold
    assert [p.name for p in saved] == ["best", "best", "best"] and probe.best["step"] == 3
    assert probe.best["value"] == pytest.approx(1.7)
    keep_if_best(probe, {"probe/score_mean": 9.0, "probe/kl_mean": 100.0}, 4, saved.append, tmp_path)
    assert probe.best["step"] == 3  # a high score far from the reference is not better
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 3
