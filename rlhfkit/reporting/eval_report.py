"""OUTPUT/report.html of `rlhfkit eval`: the per-policy numbers, the judge's win rate, human review."""

from __future__ import annotations

import html
from pathlib import Path

from rlhfkit.reporting.report import Section, _fmt, _p, _table, write_report

WIN_ROWS = (("win_rate", "win rate of policy vs compare (ties count half)"), ("ci_low", "95% interval, low"),
            ("ci_high", "95% interval, high"), ("wins", "wins"), ("ties", "ties"), ("losses", "losses"),
            ("n", "pairs"), ("tie_rate", "tie rate"),
            ("position_consistency", "position consistency: both orders name the same winner (or both a tie)"),
            ("first_position_rate", "decisive answers that chose the first position (A); 0.5 is unbiased"),
            ("unparsed", "judge answers without a verdict (counted as ties)"), ("unfilled", "rows left empty"))


def write_eval_report(result: dict, out_path) -> Path:
    """Write the eval report from eval.json's dict; every part may be missing."""
    policies = [n for n in ("policy", "compare") if isinstance(result.get(n), dict)]
    sections = []
    if policies:
        cols = ["score_mean", "gold_mean", "kl_to_ref", "ppl", "length_mean", "n"]
        shown = [c for c in cols if any(c in result[p] for p in policies)]
        body = [[f"{p}: {result[p].get('path', '')}"] + [_fmt(result[p].get(c)) for c in shown] for p in policies]
        sections.append(Section("Policies", _table(["policy"] + shown, body)))
    for key, title in (("win_rate", "Win rate"), ("human_review", "Human review")):
        if isinstance(result.get(key), dict):
            sections.append(Section(title, _win_html(result[key])))
    if not sections:
        sections.append(Section("Nothing to show", _p("eval.json holds no policy numbers or win rates yet.")))
    return write_report(out_path, "rlhfkit evaluation", sections)


def _win_html(w: dict) -> str:
    who = w.get("judge") or w.get("sheet")
    out = _p(f"Judged by: {who}" + (f", template {w['template']}" if w.get("template") else "") + ".") if who else ""
    out += _p(f"Interval: {w.get('ci_method', 'Wilson score interval, 95%')}.")
    body = [[html.escape(label), _fmt(w[k])] for k, label in WIN_ROWS if k in w]
    return out + _table(["quantity", "value"], body)
