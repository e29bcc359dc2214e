"""The reward-model section shows per-group held-out numbers with their counts."""

from __future__ import annotations

import json

from rlhfkit.reporting.report import group_table_html


def test_group_table_lists_each_group_with_its_count():
    metrics = {"eval/accuracy": 0.8, "eval/count/math": 12, "eval/accuracy/math": 0.5, "eval/margin_mean/math": 0.1,
               "eval/loss/math": 0.7, "eval/count/chat": 30, "eval/accuracy/chat": 0.9}
    out = group_table_html(metrics)
    assert out.index("chat") < out.index("math")  # sorted by name
    row = out[out.index("<td>math</td>"):]
    assert row.index(">12<") < row.index(">0.5<") < row.index(">0.1<") < row.index(">0.7<")
    assert group_table_html({"eval/accuracy": 0.8}) == ""


def test_quickstart_report_has_the_group_table(tmp_path):
    from rlhfkit.reporting.report import build_report

    rm = tmp_path / "rm"
    rm.mkdir()
    rows = [{"step": 1, "eval/accuracy": 0.7, "eval/count/a.jsonl": 3, "eval/accuracy/a.jsonl": 0.25}]
    (rm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = build_report({"rm": rm}, {"stages": {"rm": {"output": str(rm)}}}, tmp_path / "report.html").read_text()
    assert "<td>a.jsonl</td>" in page and ">0.25<" in page
