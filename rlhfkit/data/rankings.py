"""Ranked responses {"prompt", "responses", "ranks", "margin", "group"}: K >= 2 answers to one prompt.

Layout on disk: {"prompt": ..., "responses": [r_1, ..., r_K]} with either "ranking": [k_1, ...,
k_K] (k_i is the rank of responses[i]: 1 = best, equal ranks = a tie) or "scores": [s_1, ...]
(higher is better; equal scores = a tie). Any pair format of `load_preferences` is read too and
becomes K = 2, ranks (1, 2), so one reward-model path trains on both.
"""

from __future__ import annotations

import logging

import torch

from rlhfkit.data import fields
from rlhfkit.data.collate import _check_pad, position_ids_from_mask, right_pad
from rlhfkit.data.errors import DataError, field_error
from rlhfkit.data.preferences import load_preferences, row_group
from rlhfkit.data.sources import Rows, read_table
from rlhfkit.data.tokenize import _check_args, encode_prompts, encode_responses

logger = logging.getLogger("rlhfkit.data")

RANKED_FORMAT = "ranked"


def load_rankings(source, format: str | None = None, split: str = "train", identical: str = "error",
                  group_by: str | None = None) -> Rows:
    """Rows [{"prompt", "responses": list[str], "ranks": list[int], "margin": float | None, "group"}].

    format: "ranked" (detected when the first row has "responses"), or any pair format of
    `load_preferences` (each pair becomes responses [chosen, rejected], ranks [1, 2]).
    A row whose responses are all tied carries no pair: it is dropped and counted ("dropped_ties").
    identical: "error" raises on a row with two equal responses, "drop" skips it. group_by: as in
    `load_preferences` ("group" is None without it). Errors name file:line and field.
    """
    table = read_table(source, split)
    if format != RANKED_FORMAT and (format is not None or "responses" not in table.rows[0]):
        pairs = load_preferences(table, format=format, split=split, identical=identical,
                                 group_by=group_by)
        out = Rows([{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "ranks": [1, 2],
                     "margin": p["margin"], "group": p.get("group")} for p in pairs], pairs.stats)
        return out
    if identical not in ("error", "drop"):
        raise ValueError(f"identical must be 'error' or 'drop', got {identical!r}")
    out = Rows(stats={"rows": len(table.rows), "format": RANKED_FORMAT, "dropped_ties": 0, "dropped_identical": 0})
    for i, row in enumerate(table.rows):
        where = table.where(i)
        ranked = _ranked(where, row)
        if len(set(ranked["ranks"])) == 1:  # everything tied: no preference to learn from
            out.stats["dropped_ties"] += 1
            continue
        if len(set(ranked["responses"])) < len(ranked["responses"]):
            if identical == "drop":
                out.stats["dropped_identical"] += 1
                continue
            raise DataError(f"{where}: field 'responses' holds the same response twice; ranked responses must "
                            f"differ. Remove the duplicate, or pass identical='drop' to skip such rows.")
        ranked["group"] = row_group(where, row, group_by, table.name) if group_by else None
        out.append(ranked)
    out.stats["kept"] = len(out)
    if len(out) < len(table.rows):
        logger.warning("%s: kept %d of %d ranked rows (%d all tied, %d with identical responses dropped)",
                       table.name, len(out), len(table.rows), out.stats["dropped_ties"],
                       out.stats["dropped_identical"])
    if not out:
        raise DataError(f"{table.name}: every row was dropped ({out.stats}); nothing to train on.")
    return out


def _ranked(where: str, row: dict) -> dict:
    needs = "format 'ranked' needs prompt, responses and one of ranking / scores"
    prompt = fields.prompt(where, "prompt", fields.require(where, row, "prompt", needs))
    raw = fields.sequence(where, "responses", fields.require(where, row, "responses", needs))
    if len(raw) < 2:
        raise field_error(where, "responses", "a list of at least 2 responses", raw)
    responses = [fields.response_text(where, f"responses[{k}]", r) for k, r in enumerate(raw)]
    has = [f for f in ("ranking", "scores") if row.get(f) is not None]
    if len(has) != 1:
        raise DataError(f"{where}: give exactly one of fields 'ranking' (rank of each response, 1 = best) and "
                        f"'scores' (higher is better); this row has {'both' if has else 'neither'}. Fix the row.")
    field = has[0]
    values = fields.sequence(where, field, row[field])
    if len(values) != len(responses):
        raise field_error(where, field, f"a list of {len(responses)} numbers, one per response", values)
    numbers = [fields.number(where, f"{field}[{k}]", v) for k, v in enumerate(values)]
    if field == "ranking":
        for k, v in enumerate(numbers):
            if v < 1 or v != int(v):
                raise field_error(where, f"ranking[{k}]", "a whole number >= 1 (1 = best)", values[k],
                                  "ranking[i] is the rank of responses[i]; equal ranks mark a tie.")
        ranks = [int(v) for v in numbers]
    else:  # dense ranks from scores: the highest score is rank 1, equal scores share a rank
        distinct = sorted(set(numbers), reverse=True)
        ranks = [distinct.index(v) + 1 for v in numbers]
    return {"prompt": prompt, "responses": responses, "ranks": ranks, "margin": None}


def tokenize_rankings(rows: list[dict], tokenizer, max_length: int, overlong: str = "truncate"):
    """Ranked rows -> ([{"ids": K lists, "ranks", "prompt_length", "margin", "group"}], stats).

    ids[k] = prompt ids + response k ids + [eos], cut to max_length under "truncate" (as
    `tokenize_preferences`); a row whose prompt fills max_length is dropped, and so is one where
    two differently ranked responses become the same ids once cut (counted in "dropped").
    """
    _check_args(tokenizer, max_length, overlong)
    prompts = [r["prompt"] for r in rows]
    _, prompt_ids = encode_prompts(tokenizer, prompts)
    flat = encode_responses(tokenizer, [p for r in rows for p in [r["prompt"]] * len(r["responses"])],
                            [x for r in rows for x in r["responses"]])
    eos = tokenizer.eos_token_id
    examples, stats, at = [], {"kept": 0, "truncated": 0, "dropped": 0}, 0
    for row, p in zip(rows, prompt_ids):
        k = len(row["responses"])
        seqs, at = [p + c + [eos] for c in flat[at:at + k]], at + k
        cut = max(map(len, seqs)) > max_length
        if cut and (overlong == "drop" or len(p) >= max_length):
            stats["dropped"] += 1
            continue
        seqs = [s[:max_length] for s in seqs]
        if any(seqs[i] == seqs[j] and row["ranks"][i] != row["ranks"][j] for i in range(k) for j in range(i)):
            stats["dropped"] += 1
            continue
        stats["truncated"] += cut
        examples.append({"ids": seqs, "ranks": list(row["ranks"]), "prompt_length": len(p),
                         "margin": row.get("margin"), "group": row.get("group")})
    stats["kept"] = len(examples)
    return examples, stats


def collate_rankings(examples: list[dict], pad_id: int) -> dict:
    """Ranked examples -> one right-padded batch of the N = sum_b K_b sequences, prompt by prompt.

    input_ids, attention_mask, position_ids (N, T); last_index (N,) where the score is read;
    ranks (B, K) float (K = the largest K_b; padding slots hold 0) and valid (B, K) bool, so that
    `scores_bk[valid] = scores` puts the N scores in place (row-major order); margin (B,) (0 where
    None); best (B,) index into N of each prompt's first best-ranked response, and best_loss_mask
    (B, T) on its response tokens (for the optional LM loss).
    """
    pad_id = _check_pad(pad_id)
    seqs = [s for e in examples for s in e["ids"]]
    width = max(len(e["ids"]) for e in examples)
    ranks = torch.zeros(len(examples), width)
    valid = torch.zeros(len(examples), width, dtype=torch.bool)
    best, start = [], 0
    for b, e in enumerate(examples):
        k = len(e["ids"])
        ranks[b, :k] = torch.tensor(e["ranks"], dtype=torch.float32)
        valid[b, :k] = True
        best.append(start + min(range(k), key=lambda i: e["ranks"][i]))
        start += k
    attention_mask = right_pad([[1] * len(s) for s in seqs], 0)
    prompt_lengths = [e["prompt_length"] for e in examples for _ in e["ids"]]
    loss_mask = right_pad([[int(j >= max(p, 1)) for j in range(len(s))] for s, p in zip(seqs, prompt_lengths)], 0)
    best_t = torch.tensor(best, dtype=torch.long)
    return {
        "input_ids": right_pad(seqs, pad_id),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "last_index": torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long),
        "ranks": ranks, "valid": valid,
        "margin": torch.tensor([0.0 if e.get("margin") is None else float(e["margin"]) for e in examples]),
        "best": best_t, "best_loss_mask": loss_mask[best_t],
        "groups": [e.get("group") for e in examples],
    }


def load_preference_pairs(source, format: str | None = None, split: str = "train") -> Rows:
    """Preference pairs [{"prompt", "chosen", "rejected", "margin"}] from a pair file (as
    `load_preferences` reads it) or a ranked file, whose every prompt gives all its ordered pairs
    (response i chosen over j whenever i ranks better; ties give none): what pairwise trainers such
    as DPO train on. A pair file gives exactly its own pairs."""
    ranked = load_rankings(source, format=format, split=split)  # a pair file: K = 2, ranks [1, 2]
    out = Rows(stats={**ranked.stats, "pairs": 0})
    for row in ranked:
        items = list(zip(row["responses"], row["ranks"]))
        for better, rank_b in items:
            for worse, rank_w in items:
                if rank_b < rank_w:
                    out.append({"prompt": row["prompt"], "chosen": better, "rejected": worse, "margin": row["margin"]})
    out.stats["pairs"] = len(out)
    return out
