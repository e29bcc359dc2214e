"""The tables of docs/performance.md from the JSON files of bench/run_all.sh.

    python bench/tables.py bench/results

Per (algo, size): each repeat's numbers, then the median over the repeats. Missing files are skipped.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ALGOS, SIZES = ("grpo", "ppo"), ("tiny", "small")
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
    """{(algo, size): [run dicts in repeat order]} for files named {kind}_{algo}_{size}_{repeat}.json."""
    out: dict = {}
    for path in sorted(results.glob(f"{kind}_*.json")):
        m = re.fullmatch(rf"{kind}_(\w+?)_(\w+?)_(\d+)\.json", path.name)
        if m:
            out.setdefault((m[1], m[2]), []).append((int(m[3]), json.loads(path.read_text())))
    return {k: [run for _, run in sorted(v, key=lambda x: x[0])] for k, v in out.items()}


def load_at_start(run: dict) -> str:
    m = re.search(r"load average ([\d.]+)", run.get("machine", ""))
    return m[1] if m else ""


def med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def vs_trl_table(runs: dict) -> str:
    head = ("| algo | size | repeat | rlhfkit step ms | TRL step ms | **ratio** | rlhfkit tokens/s | TRL tokens/s | "
            "rlhfkit generation ms | TRL generation ms | TRL gc.collect ms | rlhfkit RSS MiB | TRL RSS MiB | "
            "**RSS ratio** | load at start |\n" + "|---" * 15 + "|\n")
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
                            f"{load_at_start(r)} |")
            if reps:
                def m(side, key, scale=1.0):
                    return med(r[side][key] * scale for r in reps)
                rows.append(f"| **{algo}** | **{size}** | **median** | {m('rlhfkit', 'step_s', 1e3):.0f} | "
                            f"{m('trl', 'step_s', 1e3):.0f} | **{med(r['ratio'] for r in reps):.2f}** | "
                            f"{m('rlhfkit', 'tokens_per_s'):.0f} | {m('trl', 'tokens_per_s'):.0f} | | | | "
                            f"{m('rlhfkit', 'peak_rss_mb'):.0f} | {m('trl', 'peak_rss_mb'):.0f} | "
                            f"**{med(r['rss_ratio'] for r in reps):.2f}** | |")
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
    rows.append("| load average at start (per repeat) | " + " | ".join(
        ", ".join(load_at_start(r) for r in runs[c]) + " | " for c in cols) + " |")
    return head + "\n".join(rows) + "\n"


def targets_table(vs: dict, br: dict) -> str:
    def reps(runs, algo, size, key):
        values = [r[key] for r in runs.get((algo, size), [])]
        return f"**{med(values):.2f}** ({', '.join(f'{v:.2f}' for v in values)})" if values else "not measured"

    lines = ["| target | median (the repeats in brackets) | met? |", "|---|---|---|"]
    for algo, bound in (("grpo", 0.6), ("ppo", 0.4)):
        values = [r["ratio"] for s in SIZES for r in vs.get((algo, s), [])]
        cells = "; ".join(f"{s} {reps(vs, algo, s, 'ratio')}" for s in SIZES)
        met = all(med(r["ratio"] for r in vs.get((algo, s), [])) <= bound for s in SIZES) if values else None
        lines.append(f"| {algo.upper()} step <= {bound} x TRL | {cells} | {'yes' if met else 'no' if values else '?'} |")
    cells = "; ".join(f"{a.upper()} {s} {reps(br, a, s, 'ratio')}" for a in ALGOS for s in SIZES)
    met = all(med(r["ratio"] for r in br[k]) <= 1.15 for k in br)
    lines.append(f"| step <= 1.15 x floor | {cells} | {'yes' if met and br else 'no'} |")
    cells = "; ".join(f"{a.upper()} {s} {reps(vs, a, s, 'rss_ratio')}" for a in ALGOS for s in SIZES)
    met = all(med(r["rss_ratio"] for r in vs[k]) <= 1.0 for k in vs)
    lines.append(f"| peak RSS <= TRL | {cells} | {'yes' if met and vs else 'no'} |")
    return "\n".join(lines) + "\n"


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    vs, br = load(results, "vs_trl"), load(results, "breakdown")
    if not vs and not br:
        raise SystemExit(f"no vs_trl_*.json or breakdown_*.json files in {results}: run bench/run_all.sh first")
    print("## Targets\n\n" + targets_table(vs, br))
    print("## rlhfkit vs TRL\n\n" + vs_trl_table(vs))
    print("## Step breakdown\n\n" + breakdown_table(br))


if __name__ == "__main__":
    main()
