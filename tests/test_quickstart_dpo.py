"""`rlhfkit quickstart --algo dpo`: the reviews task with DPO in place of RL, evaluated like RL in the same report."""

from __future__ import annotations

import json

import pytest


def test_fast_quickstart_with_dpo(tmp_path):
    from rlhfkit.quickstart import QuickstartConfig, run_quickstart

    out = tmp_path / "qs"
    result = run_quickstart(QuickstartConfig(task="reviews", algo="dpo", fast=True, output=str(out), threads=1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "dpo" and set(summary["stages"]) == {"sft", "rm", "dpo"}
    assert result["final"] == str(out / "dpo" / "final")
    # the DPO stage started from the SFT model and trained on the reward model's pairs
    dpo_cfg = (out / "dpo" / "config.yaml").read_text()
    assert f"model: {out / 'sft' / 'final'}" in dpo_cfg and f"data: {summary['data']['prefs_train']}" in dpo_cfg
    assert "loss: sigmoid" in dpo_cfg
    for policy in ("sft", "rl"):  # the same evaluation as RL: gold, reward-model score, KL, length
        assert {"gold_mean", "gold_se", "score_mean", "kl_to_ref", "length_mean"} <= set(summary["eval"][policy])
    assert abs(summary["eval"]["sft"]["kl_to_ref"]) < 1e-5  # the SFT policy is the reference
    assert summary["eval"]["rl"]["kl_to_ref"] != summary["eval"]["sft"]["kl_to_ref"]  # DPO moved the policy
    html = (out / "report.html").read_text()
    assert "Before and after RL" in html and "direct preference optimization" in html
    assert "Direct preference optimization (DPO)</h2>" in html and "eval/reward_margin" in html


def test_dpo_needs_a_task_with_pairs():
    from rlhfkit.config import ConfigError
    from rlhfkit.quickstart import QuickstartConfig

    with pytest.raises(ConfigError, match="--algo simpo trains on preference pairs; task 'arithmetic' has none"):
        QuickstartConfig(task="arithmetic", algo="simpo")
    assert QuickstartConfig(task="reviews", algo="ipo").algo == "ipo"
