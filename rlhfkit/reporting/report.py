"""The run report: one self-contained HTML file a person can read without opening any JSON.

Images are embedded as base64 data URIs and the CSS is inline, so the file can be mailed or
attached as it is. Every piece of text that comes from a run (prompts, responses, messages,
configs) goes through `html.escape`; `Section.html` is the only trusted markup.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.reporting.logger import last_value, read_metrics
from rlhfkit.reporting.metrics import EVENTS, INFO_EVENTS, METRICS, SUMMARY_FIELDS
from rlhfkit.reporting.plots import PLOT_GROUPS, render_plots


@dataclass
class Section:
    """One titled part of a report. `html` is trusted markup: escape run text before putting it in."""

    title: str
    html: str


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1060px;margin:2em auto;padding:0 1em;color:#1d1d1f;line-height:1.5}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em} .muted{color:#666;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0;width:100%} th,td{border:1px solid #ddd;padding:.35em .6em;
 vertical-align:top;text-align:left} th{background:#f5f5f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#1a7f37;font-weight:600} .bad{color:#c62828;font-weight:600}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em;margin:1em 0}
.ok{background:#eef8f0;border-left:4px solid #2e9e4f;padding:.6em 1em;margin:1em 0}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1.2em}
figure{margin:0} figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#444}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f9;padding:.5em;margin:.2em 0;font-size:.9em}
details{margin:.4em 0} summary{cursor:pointer;font-weight:600}
"""

_POLICY_LABELS = {"sft": "SFT (before RL)", "rl": "RL (after)", "rl_best": "RL (best probe)"}
_FIELD_LABELS = {
    "gold_mean": "Gold reward (true quality)",
    "accuracy": "Accuracy",
    "score_mean": "Reward score",
    "kl_to_ref": "KL to the reference",
    "ppl": "Perplexity under the reference",
    "length_mean": "Response length",
}
# Figures the report shows for the SFT and RM stages (RL and any other stage: every group with data).
_STAGE_GROUP_KEYS = {"sft": ("train_loss", "ppl"), "rm": ("accuracy", "train_loss")}
# Model files Hugging Face writes next to weights: not run configs.
_HF_FILES = {"config.json", "tokenizer_config.json", "generation_config.json", "adapter_config.json"}


def write_report(out_path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Write a standalone HTML page: `title`, an escaped `intro` paragraph, then the sections."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(s.title)}</h2>\n{s.html}\n' for i, s in enumerate(sections))
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + (_p(intro) if intro else "")
            + f"<ul class=\"muted\">{toc}</ul>\n{body}</body></html>\n")
    out_path.write_text(page, encoding="utf-8")
    return out_path


def build_report(run_dirs: dict | None, summary, out_path, *, plots_dir=None, title: str | None = None,
                 max_samples: int = 8) -> Path:
    """The quickstart's report.html from its summary and the runs' metrics.jsonl files.

    run_dirs: {"sft": dir, "rm": dir, "rl": dir} (any subset); None or a missing stage falls back
        to summary["stages"][stage]["output"] (relative paths are tried from the report's folder).
    summary: the summary.json dict (or its path): {"task", "algo", "stages": {stage: {"output",
        ...numbers}}, "eval": {"sft"|"rl": {"gold_mean"|"accuracy", "score_mean", "kl_to_ref",
        "ppl", "length_mean", "samples": [{"prompt", "response", "score", "gold"}]}}}.
        Every part may be missing; the report says so instead of failing.
    plots_dir: where the PNGs go (default: `plots/` next to out_path), named `{stage}_{group}.png`.
    """
    out_path = Path(out_path)
    if not isinstance(summary, dict):
        summary = json.loads(Path(summary).read_text(encoding="utf-8"))
    plots_dir = Path(plots_dir) if plots_dir is not None else out_path.parent / "plots"
    stages = summary.get("stages") or {}
    dirs = _resolve_run_dirs(run_dirs, stages, out_path.parent)
    runs = {stage: _load_run(d) for stage, d in dirs.items()}
    plots = {stage: render_plots(rows, plots_dir, events, prefix=f"{stage}_", groups=_stage_groups(stage))
             for stage, (rows, events) in runs.items() if rows}
    evaluation = summary.get("eval") or {}
    task, algo = summary.get("task"), summary.get("algo")
    default_title = "rlhfkit run report" + (f": {task}" if task else "") + (f" with {algo}" if algo else "")
    sections = [
        Section("Before and after RL", _summary_html(evaluation, runs, summary.get("best"))),
        Section("Sample responses", _samples_html(evaluation, max_samples)),
        Section("RL training curves", _rl_html(runs, plots, stages, dirs)),
        *([Section("Direct preference optimization (DPO)", _dpo_html(runs, plots, stages))] if "dpo" in runs else []),
        Section("Reward model", _rm_html(runs, plots, stages, dirs)),
        Section("Supervised fine-tuning (SFT)", _sft_html(runs, plots, stages, dirs)),
        Section("Health warnings", _events_html(runs)),
        Section("Configs and raw numbers", _configs_html(dirs, summary, runs)),
    ]
    return write_report(out_path, title or default_title, sections, intro=_intro(stages, algo))


def build_report_from_dir(out_dir) -> Path:
    """Rebuild `out_dir/report.html` from `out_dir/summary.json` (e.g. after a run was copied)."""
    out_dir = Path(out_dir)
    path = out_dir / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass the folder the quickstart wrote")
    return build_report(None, json.loads(path.read_text(encoding="utf-8")), out_dir / "report.html")


# -- sections -------------------------------------------------------------------------------

def _intro(stages: dict, algo) -> str:
    algo_text = f", {algo}" if algo else ""
    if "dpo" in stages:  # rlhfkit dpo in place of RL (docs/dpo.md)
        return ("This report shows one run of direct preference optimization. Supervised fine-tuning (SFT) first "
                "taught a small language model from demonstrations; a reward model (RM) learned from preference "
                f"pairs which of two responses people prefer; then the SFT policy was trained on the same pairs "
                f"directly ({algo}), without the reward model or any sampling. Below, the SFT policy and the DPO "
                "policy (in the 'RL (after)' column) are compared on held-out prompts, the reward model scoring both.")
    if "rm" in stages:
        how = ("a reward model (RM) learned from preference pairs which of two responses people prefer, "
               f"and reinforcement learning (RL{algo_text}) then trained the policy to get high reward-model "
               "scores")
    else:
        how = f"reinforcement learning (RL{algo_text}) then trained the policy against the task's reward function"
    return ("This report shows one RLHF run. Supervised fine-tuning (SFT) first taught a small language "
            f"model from demonstrations; {how}, with a KL penalty that keeps it close to the SFT model. "
            "Below, the SFT policy (before RL) and the RL policy (after) are compared on held-out prompts.")


def _summary_html(evaluation: dict, runs: dict, best: dict | None = None) -> str:
    policies = _policies(evaluation)
    if not policies:
        return _p("No evaluation numbers were found in the summary (summary['eval'] is empty).")
    fields = [f for f in SUMMARY_FIELDS if any(_num(evaluation[p].get(f)) is not None for p in policies)]
    compare = "sft" in policies and "rl" in policies
    head = ["Metric", "What it means"] + [_POLICY_LABELS.get(p, p) for p in policies]
    head += ["Change"] if compare else []
    body = []
    for field in fields:
        definition, unit, better = SUMMARY_FIELDS[field]
        cells = [html.escape(_FIELD_LABELS.get(field, field)),
                 html.escape(definition + ("" if unit == "1" else f" ({unit})"))]
        cells += [_num_cell(_noise_to_zero(field, evaluation[p].get(field))) for p in policies]
        if compare:
            cells.append(_delta_cell(evaluation["sft"].get(field), evaluation["rl"].get(field), better))
        body.append(cells)
    out = _table(head, body, escape=False) if fields else _p("The evaluation has no numeric fields.")
    out += "".join(_verdicts(evaluation) if compare else [])
    if best:
        which = ("the starting policy (step 0): no RL step beat it" if best.get("step") == 0
                 else f"the policy of step {best.get('step')}")
        out += _p(f"RL (best probe) is {which}, the best of the held-out probes by "
                  f"{best.get('criterion')} ({_num(best.get('value')):.3f}); RL (after) is the last step's. It is "
                  f"saved in rl/best (docs/health/overoptimization.md).")
    n_events = sum(e.get("event") not in INFO_EVENTS for _, events in runs.values() for e in events)
    if n_events:
        out += f'<div class="warn">{n_events} health warning(s) were raised; see "Health warnings".</div>'
    return out


def _verdicts(evaluation: dict) -> list[str]:
    sft, rl = evaluation["sft"], evaluation["rl"]
    out = []
    key = "gold_mean" if _num(sft.get("gold_mean")) is not None else "accuracy"
    before, after = _num(sft.get(key)), _num(rl.get(key))
    if before is not None and after is not None:
        verb = "raised" if after > before else "lowered" if after < before else "did not change"
        se_key = "gold_se" if key == "gold_mean" else "accuracy_se"
        se0, se1 = _num(sft.get(se_key)), _num(rl.get(se_key))
        text = (f"RL {verb} the {_FIELD_LABELS[key].lower()} from {_fmt(before)} to {_fmt(after)}")
        significant = True
        if se0 is not None and se1 is not None and (se0 > 0 or se1 > 0):
            # Two independent evaluations: the difference has standard error sqrt(se0^2 + se1^2).
            z = (after - before) / math.hypot(se0, se1)
            significant = abs(z) >= 2
            text += (f" (± {_fmt(se0)} and ± {_fmt(se1)}, standard errors over the held-out prompts): a change "
                     f"of {abs(z):.1f} standard errors, "
                     + ("well outside the noise of one evaluation" if significant else
                        "within the noise of one evaluation, so not evidence of a change"))
        css = "ok" if after > before and significant else "warn"
        out.append(f'<div class="{css}">{html.escape(text)}.</div>')
    s0, s1 = _num(sft.get("score_mean")), _num(rl.get("score_mean"))
    g0, g1 = _num(sft.get("gold_mean")), _num(rl.get("gold_mean"))
    if None not in (s0, s1, g0, g1) and s1 > s0 and g1 < g0:
        out.append('<div class="warn"><b>Possible reward hacking:</b> the reward-model score went up while the '
                   "gold reward went down. The policy learned what the reward model over-rates rather than "
                   "what the task wants; a larger KL coefficient keeps it closer to the SFT model.</div>")
    kl = _num(rl.get("kl_to_ref"))
    if kl is not None:
        out.append(_p(f"The RL policy is {_fmt(kl)} nats per response away from the reference model "
                      "(KL summed over response tokens); 0 would mean it still writes like the SFT model."))
    return out


def _noise_to_zero(field: str, value):
    """kl_to_ref of the reference itself comes out as ~1e-7 (float sums), not 0: show it as 0."""
    if field == "kl_to_ref" and _num(value) is not None and abs(value) < 1e-5:
        return 0.0
    return value


def _samples_html(evaluation: dict, max_samples: int) -> str:
    policies = [p for p in _policies(evaluation) if evaluation[p].get("samples")]
    if not policies:
        return _p("No sample responses were saved in the summary.")
    by_prompt: dict[str, dict[str, dict]] = {}
    for policy in policies:
        for sample in evaluation[policy]["samples"]:
            by_prompt.setdefault(str(sample.get("prompt", "")), {}).setdefault(policy, sample)
    head = ["Prompt"] + [_POLICY_LABELS.get(p, p) for p in policies]
    body = []
    for prompt, samples in list(by_prompt.items())[:max_samples]:
        cells = [f"<pre>{html.escape(prompt)}</pre>"]
        for policy in policies:
            sample = samples.get(policy)
            if sample is None:
                cells.append('<span class="muted">(no sample for this prompt)</span>')
                continue
            scores = " · ".join(f"{name} {_fmt(sample[name])}" for name in ("score", "gold")
                                if sample.get(name) is not None)
            cells.append(f"<pre>{html.escape(str(sample.get('response', '')))}</pre>"
                         f'<span class="muted">{html.escape(scores)}</span>')
        body.append(cells)
    note = _p("The same held-out prompts answered by each policy. 'score' is what the reward model (or "
              "reward function) gave the response; 'gold' is the task's true preference.")
    return note + _table(head, body, escape=False)


def _dpo_html(runs, plots, stages) -> str:
    rows = runs["dpo"][0]
    keys = ("eval/loss", "eval/reward_accuracy", "eval/reward_margin", "eval/chosen_logps", "eval/rejected_logps",
            "eval/kl_to_ref")
    return _metric_table(rows, keys) + _figures(plots.get("dpo", [])) + _stage_numbers(stages.get("dpo"))


def _rl_html(runs, plots, stages, dirs) -> str:
    if "rl" not in runs:
        return _p("This run has no RL stage.")
    rows, _ = runs["rl"]
    if not rows:
        return _p(f"No RL metrics were found in {dirs['rl']}/metrics.jsonl.")
    return _figures(plots.get("rl", [])) + _stage_numbers(stages.get("rl"))


def _rm_html(runs, plots, stages, dirs) -> str:
    if "rm" not in runs and "rm" not in stages:
        return _p("No reward model was trained in this run: RL scored responses with the task's reward function.")
    rows = runs.get("rm", ([], []))[0]
    out = ""
    acc = last_value(rows, "eval/accuracy")
    if acc is not None:
        out += _p(f"Held-out accuracy: {_fmt(acc)}. This is how often the reward model scores the preferred "
                  "response of a held-out pair above the other one; 0.5 is chance, and noisy labels cap it "
                  "(people agree on about 60-75% of pairs), so RL can only be as good as this judge.")
    keys = ("eval/accuracy", "eval/margin_mean", "eval/score_mean", "eval/score_std", "eval/loss")
    out += _metric_table(rows, keys)
    out += group_table_html({k: last_value(rows, k) for k in {k for r in rows for k in r}})
    out += _figures(plots.get("rm", []))
    out += _stage_numbers(stages.get("rm"))
    return out or _p("No reward-model metrics were found.")


def group_table_html(metrics: dict) -> str:
    """Per-group held-out numbers (eval/{count,accuracy,margin_mean,loss}/<group>) as a table; "" if none."""
    prefix = "eval/count/"
    groups = sorted(k[len(prefix):] for k, v in metrics.items() if k.startswith(prefix) and v is not None)
    if not groups:
        return ""
    body = [[html.escape(g)] + [_num_cell(metrics.get(f"eval/{m}/{g}")) for m in ("count", "accuracy", "margin_mean",
                                                                                  "loss")] for g in groups]
    note = _p("Held-out reward-model numbers per group: a group whose accuracy is far below the others needs "
              "more (or cleaner) data of its kind; count is the number of held-out prompts in the group.")
    return note + _table(["group", "count", "accuracy", "margin_mean", "loss"], body, escape=False)


def _sft_html(runs, plots, stages, dirs) -> str:
    if "sft" not in runs and "sft" not in stages:
        return _p("This run has no SFT stage.")
    rows = runs.get("sft", ([], []))[0]
    out = ""
    ppl = last_value(rows, "eval/ppl")
    if ppl is not None:
        out += _p(f"Held-out perplexity after SFT: {_fmt(ppl)} (lower is better): the model imitates the "
                  "demonstrations; RL starts from it.")
    out += _metric_table(rows, ("eval/loss", "eval/ppl", "train/loss", "train/tokens"))
    out += _figures(plots.get("sft", []))
    out += _stage_numbers(stages.get("sft"))
    return out or _p("No SFT metrics were found.")


def _events_html(runs: dict) -> str:
    warnings, info = [], []
    for stage, (_, events) in runs.items():
        for event in events:
            name = str(event.get("event", ""))
            extra = {k: v for k, v in event.items() if k not in ("step", "event", "message")}
            cells = [stage, _fmt(event.get("step")), name, str(event.get("message", "")),
                     json.dumps(extra) if extra else "", EVENTS.get(name, "")]
            (info if name in INFO_EVENTS else warnings).append(cells)
    head = ["Stage", "Step", "Event", "Message", "Data", "Meaning"]
    if warnings:
        out = (_p("Warnings the trainers raised while running (they are also marked as dotted vertical lines "
                  "on the curves).") + _table(head, warnings))
    else:
        out = '<div class="ok">No health warnings were raised in any stage.</div>'
    if info:
        out += f"<details><summary>Run events ({len(info)})</summary>{_table(head, info)}</details>"
    return out


def _configs_html(dirs: dict, summary: dict, runs: dict) -> str:
    out = ""
    for stage, run_dir in dirs.items():
        for path in _config_files(run_dir):
            text = path.read_text(encoding="utf-8", errors="replace")[:200_000]
            out += (f"<details><summary>{html.escape(stage)}: {html.escape(path.name)}</summary>"
                    f"<pre>{html.escape(text)}</pre></details>")
    out += (f"<details><summary>summary.json</summary><pre>"
            f"{html.escape(json.dumps(summary, indent=2, default=str))}</pre></details>")
    names = sorted({k for rows, _ in runs.values() for row in rows for k in row if k in METRICS})
    if names:
        glossary = [[f"<code>{html.escape(n)}</code>", html.escape(METRICS[n].unit),
                     html.escape(METRICS[n].definition), html.escape(METRICS[n].watch)] for n in names]
        out += ("<details><summary>Glossary of the logged metrics</summary>"
                + _table(["Metric", "Unit", "Definition", "What to watch"], glossary, escape=False)
                + "</details>")
    return out


# -- helpers ---------------------------------------------------------------------------------

def _resolve_run_dirs(run_dirs: dict | None, stages: dict, base: Path) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    names = list(dict.fromkeys(["sft", "rm", "rl", *(run_dirs or {}), *stages]))
    for stage in names:
        given = (run_dirs or {}).get(stage)
        if given is None and isinstance(stages.get(stage), dict):
            given = stages[stage].get("output")
        if given is None:
            continue
        path = Path(given)
        if not path.is_absolute() and not path.exists() and (base / path).exists():
            path = base / path
        if path.exists() or stage in stages:  # e.g. the quickstart passes rm/ even when no RM ran
            dirs[stage] = path
    return dirs


def _stage_groups(stage: str):
    keys = _STAGE_GROUP_KEYS.get(stage)
    return PLOT_GROUPS if keys is None else tuple(g for g in PLOT_GROUPS if g.key in keys)


def _load_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    if not (run_dir / "metrics.jsonl").exists():
        return [], []
    return read_metrics(run_dir)


def _config_files(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_file() and "config" in p.name.lower()
                  and p.suffix.lower() in (".yaml", ".yml", ".json") and p.name not in _HF_FILES)


def _policies(evaluation: dict) -> list[str]:
    found = [p for p, v in evaluation.items() if isinstance(v, dict)]
    return sorted(found, key=lambda p: ({"sft": 0, "rl": 1}.get(p, 2), p))


def _figures(plots) -> str:
    if not plots:
        return ""
    items = []
    for plot in plots:
        data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        items.append(f'<figure><img alt="{html.escape(plot.group.title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(plot.group.explain)}</figcaption></figure>")
    return f'<div class="figs">{"".join(items)}</div>'


def _metric_table(rows: list[dict], names) -> str:
    body = [[f"<code>{html.escape(n)}</code>", _num_cell(last_value(rows, n)), html.escape(METRICS[n].definition)]
            for n in names if last_value(rows, n) is not None]
    return _table(["Metric (last value)", "Value", "Definition"], body, escape=False) if body else ""


def _stage_numbers(numbers) -> str:
    if not isinstance(numbers, dict):
        return ""
    body = [[html.escape(str(k)), _num_cell(v) if _num(v) is not None else html.escape(_fmt(v))]
            for k, v in numbers.items() if k != "output"]
    out = f'<p class="muted">Output folder: <code>{html.escape(str(numbers.get("output", "")))}</code></p>' \
        if numbers.get("output") else ""
    if body:  # the stage's final numbers, folded: the curves above tell the story
        out += (f"<details><summary>Final numbers of this stage ({len(body)})</summary>"
                f"{_table(['Summary number', 'Value'], body, escape=False)}</details>")
    return out


def _table(head: list[str], body: list[list[str]], escape: bool = True) -> str:
    def cell(text):
        return html.escape(str(text)) if escape else str(text)

    head_html = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    # With escape=False a cell may be a ready "<td ...>" (numeric cells); escaped cells never are.
    rows = "".join("<tr>" + "".join(c if not escape and c.startswith("<td") else f"<td>{cell(c)}</td>"
                                    for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head_html}</tr></thead><tbody>{rows}</tbody></table>"


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _num_cell(value) -> str:
    return f'<td class="num">{html.escape(_fmt(value))}</td>'


def _delta_cell(before, after, better: bool | None) -> str:
    before, after = _num(before), _num(after)
    if before is None or after is None:
        return '<td class="num">—</td>'
    delta = after - before
    css = ""
    if better is not None and delta != 0:
        css = "good" if (delta > 0) == better else "bad"
    return f'<td class="num {css}">{delta:+.4g}</td>'


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"
