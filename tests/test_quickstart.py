"""A shortened quickstart end to end: summary.json has every stage and eval number, the report is self-contained."""

from __future__ import annotations

import json


def test_fast_quickstart_end_to_end(tmp_path):
    from rlhfkit.quickstart import QuickstartConfig, run_quickstart

    out = tmp_path / "qs"
    run_quickstart(QuickstartConfig(task="reviews", fast=True, output=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"sft", "rm", "rl"}
    for stage in summary["stages"].values():
        assert (tmp_path / "qs" / stage["output"].split("qs/")[-1]).is_dir()
    for policy in ("sft", "rl"):
        m = summary["eval"][policy]
        assert {"gold_mean", "score_mean", "kl_to_ref", "ppl", "length_mean", "samples"} <= set(m)
        assert m["samples"] and {"prompt", "response", "score", "gold"} <= set(m["samples"][0])
    assert abs(summary["eval"]["sft"]["kl_to_ref"]) < 1e-5  # the SFT policy is the reference
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and 'src="http' not in html
    assert "Before and after RL" in html
