"""METRICS is the single glossary: required names exist, rows use only defined names, docs agree."""

import re
from pathlib import Path

import pytest

from rlhfkit.reporting.metrics import EVENTS, METRICS, SUMMARY_FIELDS, describe, metrics_markdown, undefined_metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# The names issue 4 requires every RL run to log.
RL_REQUIRED = ["step", "reward/score_mean", "reward/score_std", "kl/mean", "kl/coef", "policy/entropy",
               "policy/clipfrac", "policy/approx_kl", "loss/policy", "loss/value",
               "value/explained_variance", "response/length_mean", "response/eos_fraction",
               "time/step_s", "time/generate_s"]

SAMPLE_ROWS = [
    {"step": 0, "data/truncated": 3, "data/dropped": 0},
    {"step": 1, "train/loss": 2.1, "train/tokens": 512, "lr": 1e-4, "grad/norm": 0.9, "time/step_s": 0.2},
    {"step": 1, "eval/loss": 2.3, "eval/ppl": 9.97},
    {"step": 5, "train/loss": 0.6, "train/accuracy": 0.6, "eval/loss": 0.65, "eval/accuracy": 0.68,
     "eval/margin_mean": 0.4, "eval/score_mean": 0.1, "eval/score_std": 1.1},
    {"step": 3, **{name: 0.0 for name in RL_REQUIRED if name != "step"}, "reward/gold_mean": 0.3,
     "reward/score_max": 1.0, "reward/score_min": -1.0, "reward/normalized_mean": 0.0, "kl/token_mean": 0.1,
     "policy/ratio_mean": 1.0, "loss/kl": 0.01, "loss/entropy": 2.0, "loss/sft": 2.0,
     "value/clipfrac": 0.1, "value/mean": 0.2, "advantages/mean": 0.0, "advantages/std": 1.0,
     "returns/mean": 0.3, "response/length_max": 12, "response/truncated_fraction": 0.1,
     "time/train_s": 0.1, "prime/prm_loss": 0.6,
     "prime/prm_accuracy": 0.6, "groups/dropped_fraction": 0.2},
]


def test_required_rl_names_are_defined():
    assert undefined_metrics(RL_REQUIRED) == []


def test_every_name_in_sample_rows_is_defined():
    names = [name for row in SAMPLE_ROWS for name in row]
    assert undefined_metrics(names) == []


def test_undefined_metrics_reports_unknown_names_once_in_order():
    assert undefined_metrics(["kl/mean", "kl/meen", "foo", "kl/meen", "step"]) == ["kl/meen", "foo"]


def test_definitions_are_complete_and_namespaced():
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.definition and metric.unit and metric.watch, name
        assert set(metric.stages) <= {"sft", "rm", "rl", "dpo"} and metric.stages, name
        assert "/" in name or name in ("step", "lr"), f"{name} needs a namespace (STYLE rule 7)"


def test_describe_known_and_unknown():
    text = describe("kl/mean")
    assert "nats" in text and METRICS["kl/mean"].definition in text
    assert EVENTS["kl_runaway"] in describe("kl_runaway")
    assert "reward" in describe("gold_mean")
    with pytest.raises(KeyError, match="kl/mean"):
        describe("kl/meen")


def test_docs_mention_every_defined_name():
    docs = DOCS.read_text(encoding="utf-8")
    missing = [n for n in [*METRICS, *EVENTS, *SUMMARY_FIELDS] if f"`{n}`" not in docs]
    assert missing == [], f"add these to docs/metrics.md: {missing}"


def test_docs_table_rows_are_defined_and_current():
    docs = DOCS.read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([^`]+)` \|", docs, flags=re.M)
    known = set(METRICS) | set(EVENTS) | set(SUMMARY_FIELDS)
    assert [n for n in documented if n not in known] == []
    stale = [line for line in metrics_markdown().splitlines() if line and line not in docs]
    assert stale == [], "docs/metrics.md is out of date: paste metrics_markdown() into it"
