"""The tables of docs/performance.md from the JSON files of bench/run_all.sh.

    python bench/tables.py bench/results

Per (algo, size): each repeat's numbers, then the median over the repeats. Missing files are skipped.
Files are grouped by the workload and our side's tag written inside them (`--workload`, `--ours-tag`;
files without them are the uniform workload, untagged): one set of tables per (workload, tag).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ALGOS, SIZES = ("grpo", "ppo"), ("tiny", "small")
ROUND3_PPO = {"PPO tiny": 0.64, "PPO small": 0.91}  # uniform PPO vs TRL medians of round 3 (docs/performance.md)
PARTS = [  # (key in parts_s, key in floor_s or None, label)
    ("generation", "generate", "generation (HF `generate` + masks, decode; PPO: + logprobs from its logits)"),
    ("reference", "reference", "reference forward"),
    ("critic_rollout", "critic_rollout", "critic forward, no grad (rollout)"),
    ("reward", "reward", "reward (Python function / reward model)"),
    ("advantages", None, "rewards, KL, advantages"),
    ("policy_fwd", "policy_fwd", "policy forward + loss"),
    ("policy_bwd", "policy_bwd", "policy backward"),
    ("critic_fwd", "critic_fwd", "critic forward + loss"),
    ("critic_bwd", "critic_bwd", "critic backward"),
    ("optimizer", "optimizer", "optimizer step(s) (norm, clip, AdamW)"),
]


def load(results: Path, kind: str) -> dict:
    """{(workload, tag): {(algo, size): [run dicts in repeat order]}} for files named {kind}_..._{repeat}.json
    (run_all.sh: {kind}_{algo}_{size}_{repeat}.json and {kind}_{workload}_{algo}_{size}_{repeat}.json)."""
    out: dict = {}
    for path in sorted(results.glob(f"{kind}_*.json")):
        m = re.fullmatch(rf"{kind}_.*_(\d+)\.json", path.name)
        if m:
            run = json.loads(path.read_text())
            group = (run.get("workload", "uniform"), run.get("ours_tag", ""))
            out.setdefault(group, {}).setdefault((run["algo"], run["size"]), []).append((int(m[1]), run))
    return {g: {k: [run for _, run in sorted(v, key=lambda x: x[0])] for k, v in runs.items()}
            for g, runs in out.items()}


def pct(x) -> str:
    return "" if x is None or x != x else f"{100 * x:.1f}"


def waste_of(side: dict, key: str):
    """A waste fraction of one side's run (None when not counted)."""
    return side.get("waste", {}).get("waste", {}).get(key)


def lengths_cell(side: dict) -> str:
    s = side.get("lengths") or {}
    return f"{s['mean']:.0f} / {s['p90']} / {s['max']}" if s.get("rows") else ""


def load_at_start(run: dict) -> str:
    m = re.search(r"load average ([\d.]+)", run.get("machine", ""))
    return m[1] if m else ""


def med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def vs_trl_table(runs: dict) -> str:
    head = ("| algo | size | repeat | rlhfkit step ms | TRL step ms | **ratio** | rlhfkit tokens/s | TRL tokens/s | "
            "rlhfkit generation ms | TRL generation ms | TRL gc.collect ms | rlhfkit RSS MiB | TRL RSS MiB | "
            "**RSS ratio** | rlhfkit waste % decode / update | TRL waste % decode / update | "
            "rlhfkit lengths mean / p90 / max | TRL lengths mean / p90 / max | load at start |\n" + "|---" * 19 + "|\n")
    rows = []
    for algo in ALGOS:
        for size in SIZES:
            reps = runs.get((algo, size), [])
            for i, r in enumerate(reps, 1):
                o, t = r["rlhfkit"], r["trl"]
                rows.append(f"| {algo} | {size} | {i} | {o['step_s'] * 1e3:.0f} | {t['step_s'] * 1e3:.0f} | "
                            f"{r['ratio']:.2f} | {o['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | "
                            f"{o['generation_s'] * 1e3:.0f} | {t['generation_s'] * 1e3:.0f} | {t['gc_s'] * 1e3:.0f} | "
                            f"{o['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | {r['rss_ratio']:.2f} | "
                            f"{pct(waste_of(o, 'decode'))} / {pct(waste_of(o, 'update'))} | "
                            f"{pct(waste_of(t, 'decode'))} / {pct(waste_of(t, 'update'))} | "
                            f"{lengths_cell(o)} | {lengths_cell(t)} | {load_at_start(r)} |")
            if reps:
                def m(side, key, scale=1.0):
                    return med(r[side][key] * scale for r in reps)
                rows.append(f"| **{algo}** | **{size}** | **median** | {m('rlhfkit', 'step_s', 1e3):.0f} | "
                            f"{m('trl', 'step_s', 1e3):.0f} | **{med(r['ratio'] for r in reps):.2f}** | "
                            f"{m('rlhfkit', 'tokens_per_s'):.0f} | {m('trl', 'tokens_per_s'):.0f} | | | | "
                            f"{m('rlhfkit', 'peak_rss_mb'):.0f} | {m('trl', 'peak_rss_mb'):.0f} | "
                            f"**{med(r['rss_ratio'] for r in reps):.2f}** | "
                            f"{pct(med(waste_of(r['rlhfkit'], 'decode') for r in reps))} / "
                            f"{pct(med(waste_of(r['rlhfkit'], 'update') for r in reps))} | "
                            f"{pct(med(waste_of(r['trl'], 'decode') for r in reps))} / "
                            f"{pct(med(waste_of(r['trl'], 'update') for r in reps))} | | | |")
    return head + "\n".join(rows) + "\n"


def breakdown_table(runs: dict) -> str:
    cols = [(a, s) for a in ALGOS for s in SIZES if (a, s) in runs]
    head = "| part (ms) | " + " | ".join(f"{a.upper()} {s} | floor" for a, s in cols) + " |\n"
    head += "|---" * (1 + 2 * len(cols)) + "|\n"
    rows = []
    for key, floor_key, label in PARTS:
        cells = []
        for col in cols:
            reps = runs[col]
            if not any(r["parts_s"].get(key) for r in reps):  # a part this algorithm does not have
                cells += ["", ""]
                continue
            ours = med(r["parts_s"].get(key) for r in reps)
            floor = med(r["floor_s"].get(floor_key) for r in reps) if floor_key else None
            # "-": the floor has no such piece; "": the floor runs did not time it (nan)
            floor_cell = "-" if floor is None else f"{floor * 1e3:.1f}" if floor == floor else ""
            cells += [f"{ours * 1e3:.1f}", floor_cell]
        if any(cells):
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append("| logging, rest | " + " | ".join(f"{med(r['rest_s'] for r in runs[c]) * 1e3:.0f} | " for c in cols)
                + " |")
    rows.append("| **step / floor total** | " + " | ".join(
        f"**{med(r['step_s'] for r in runs[c]) * 1e3:.0f}** | **{med(r['floor_total_s'] for r in runs[c]) * 1e3:.0f}**"
        for c in cols) + " |")
    rows.append("| **step / floor, per repeat** | " + " | ".join(
        ", ".join(f"{r['ratio']:.2f}" for r in runs[c]) + f" (median **{med(r['ratio'] for r in runs[c]):.2f}**) | "
        for c in cols) + " |")
    rows.append("| completion tokens/s (per repeat) | " + " | ".join(
        ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs[c]) + " | " for c in cols) + " |")
    rows.append("| peak RSS MiB after step 1 (per repeat) | " + " | ".join(
        ", ".join(f"{r['peak_rss_mb']:.0f}" for r in runs[c]) + " | " for c in cols) + " |")
    for key, label in (("decode", "waste % in decoding (per repeat)"), ("prefill", "waste % in prefill (per repeat)"),
                       ("update", "waste % in update passes (per repeat)")):
        rows.append(f"| {label} | " + " | ".join(
            ", ".join(pct(waste_of(r, key)) for r in runs[c]) + " | " for c in cols) + " |")
    rows.append("| response lengths mean / p90 / max (per repeat) | " + " | ".join(
        "; ".join(lengths_cell(r) for r in runs[c]) + " | " for c in cols) + " |")
    rows.append("| load average at start (per repeat) | " + " | ".join(
        ", ".join(load_at_start(r) for r in runs[c]) + " | " for c in cols) + " |")
    return head + "\n".join(rows) + "\n"


def _reps(runs, algo, size, value) -> tuple[list, str]:
    """The repeats' values of one (algo, size) and the cell "**median** (r1, r2, r3)" ("not measured")."""
    values = [v for v in (value(r) for r in runs.get((algo, size), [])) if v is not None]
    cell = f"**{med(values):.2f}** ({', '.join(f'{v:.2f}' for v in values)})" if values else "not measured"
    return values, cell


def _target_row(label: str, cells: list[tuple[str, list]], bound) -> str:
    """One target row: cells [(name, repeat values)]; met when every median is <= bound (a number, or
    {name: number} per cell)."""
    limit = (lambda name: bound[name]) if isinstance(bound, dict) else (lambda name: bound)
    measured = [v for _, v in cells if v]
    text = "; ".join(f"{name} {('**%.2f** (%s)' % (med(v), ', '.join('%.2f' % x for x in v))) if v else 'not measured'}"
                     for name, v in cells)
    met = "?" if not measured else "yes" if all(med(v) <= limit(n) for n, v in cells if v) else "no"
    if measured and len(measured) < len(cells) and met == "yes":
        met = "yes, where measured"
    return f"| {label} | {text} | {met} |"


def targets_table(vs_groups: dict, br_groups: dict, tag: str = "") -> str:
    """The issue's targets, over the uniform and realistic groups of one tag."""
    vs_u, vs_r = vs_groups.get(("uniform", tag), {}), vs_groups.get(("realistic", tag), {})
    br_u, br_r = br_groups.get(("uniform", tag), {}), br_groups.get(("realistic", tag), {})

    def cells(runs, algos, value):
        return [(f"{a.upper()} {s}", _reps(runs, a, s, value)[0]) for a in algos for s in SIZES]

    ratio = lambda r: r["ratio"]  # noqa: E731
    lines = ["| target | median (the repeats in brackets) | met? |", "|---|---|---|",
             _target_row("realistic: GRPO step <= 0.5 x TRL", cells(vs_r, ("grpo",), ratio), 0.5),
             _target_row("realistic: PPO step <= 0.4 x TRL", cells(vs_r, ("ppo",), ratio), 0.4),
             _target_row("uniform: GRPO step <= 1.0 x TRL", cells(vs_u, ("grpo",), ratio), 1.0),
             _target_row("uniform: PPO step no slower than round 3 (<= 0.64 tiny, 0.91 small x TRL)",
                         cells(vs_u, ("ppo",), ratio), ROUND3_PPO)]
    for key, bound, label in (("update", 0.10, "update passes"), ("decode", 0.20, "decoding")):
        # from the breakdown runs when there are any, else from our side of the vs_trl runs: the same hooks
        source, value = (br_r, lambda r, key=key: waste_of(r, key)) if br_r else \
            (vs_r, lambda r, key=key: waste_of(r["rlhfkit"], key))
        lines.append(_target_row(f"realistic: waste <= {bound:.2f} in {label}", cells(source, ALGOS, value), bound))
    lines.append(_target_row("uniform: step <= 1.15 x floor", cells(br_u, ALGOS, ratio), 1.15))
    for name, runs in (("uniform", vs_u), ("realistic", vs_r)):
        lines.append(_target_row(f"{name}: peak RSS <= TRL", cells(runs, ALGOS, lambda r: r["rss_ratio"]), 1.0))
    return "\n".join(lines) + "\n"


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    vs, br = load(results, "vs_trl"), load(results, "breakdown")
    if not vs and not br:
        raise SystemExit(f"no vs_trl_*.json or breakdown_*.json files in {results}: run bench/run_all.sh first")
    for tag in sorted({t for _, t in [*vs, *br]}):
        print(f"## Targets{f' (ours: {tag})' if tag else ''}\n\n" + targets_table(vs, br, tag))
    for group in sorted(set(vs) | set(br)):
        name = f"{group[0]} workload" + (f", ours: {group[1]}" if group[1] else "")
        if group in vs:
            print(f"## rlhfkit vs TRL, {name}\n\n" + vs_trl_table(vs[group]))
        if group in br:
            print(f"## Step breakdown, {name}\n\n" + breakdown_table(br[group]))


if __name__ == "__main__":
    main()
