"""Blind human review: a side-by-side CSV sheet for people, a hidden key, and the win rate of the filled sheet.

export: one row per prompt, `id, prompt, response_1, response_2, verdict`; which response is the
policy's is drawn per row from `seed` and written only to the key file (JSON), so reviewers
cannot tell. The reviewer fills `verdict` with 1, 2 or tie. import: the sheet and the key give
wins / ties / losses of the policy and its win rate with a Wilson 95% interval; rows left
empty are counted as "unfilled" and left out.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from rlhfkit.data.errors import DataError, describe
from rlhfkit.winrate import win_summary

COLUMNS = ("id", "prompt", "response_1", "response_2", "verdict")
VERDICTS = {"1": 1, "2": 2, "tie": 0}


def export_review(sheet, key, prompts: list[str], policy: list[str], compare: list[str], seed: int = 0,
                  names: dict | None = None) -> None:
    """Write the blind sheet (CSV) and its key (JSON: for each id, which column holds the policy)."""
    if not (len(prompts) == len(policy) == len(compare)) or not prompts:
        raise ValueError("export_review needs equally long, non-empty prompts / policy / compare lists")
    rng = random.Random(seed)
    sheet, key = Path(sheet), Path(key)
    sheet.parent.mkdir(parents=True, exist_ok=True)
    placement = {}
    with sheet.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i, (p, x, y) in enumerate(zip(prompts, policy, compare)):
            first = rng.random() < 0.5  # the policy's response goes in column 1
            placement[str(i)] = 1 if first else 2
            writer.writerow([i, p, x if first else y, y if first else x, ""])
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps({"sheet": sheet.name, "seed": seed, **(names or {}), "policy_column": placement},
                              indent=2))


def import_review(sheet, key) -> dict:
    """win_summary of the policy from a filled sheet and its key, plus "unfilled" (rows without a verdict)."""
    sheet, key = Path(sheet), Path(key)
    for path in (sheet, key):
        if not path.is_file():
            raise DataError(f"review file not found: {path}")
    try:
        placement = json.loads(key.read_text(encoding="utf-8"))["policy_column"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{key}: not a review key written by --export-review (no 'policy_column').") from None
    counts, unfilled, seen = {"win": 0, "tie": 0, "loss": 0}, 0, set()
    with sheet.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "verdict") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{sheet}, line 1: missing column(s) {', '.join(missing)}; keep the exported header.")
        for row in reader:
            where = f"{sheet}, line {reader.line_num}"
            rid = (row.get("id") or "").strip()
            if rid not in placement:
                raise DataError(f"{where}: field 'id': {describe(rid)} is not in the key {key}; was the sheet "
                                f"exported with this key?")
            if rid in seen:
                raise DataError(f"{where}: field 'id': row {rid} appears twice; keep one verdict per row.")
            seen.add(rid)
            verdict = (row.get("verdict") or "").strip().lower()
            if not verdict:
                unfilled += 1
                continue
            if verdict not in VERDICTS:
                raise DataError(f"{where}: field 'verdict': expected 1, 2 or tie, got {describe(row['verdict'])}. "
                                f"Write the number of the better response, or tie.")
            choice = VERDICTS[verdict]
            counts["tie" if choice == 0 else "win" if choice == placement[rid] else "loss"] += 1
    if not sum(counts.values()):
        raise DataError(f"{sheet}: no row has a verdict yet; fill the 'verdict' column with 1, 2 or tie.")
    return {**win_summary(counts["win"], counts["tie"], counts["loss"]), "unfilled": unfilled, "sheet": str(sheet)}
