"""Preference pairs {"prompt", "chosen", "rejected", "margin"} from the published layouts.

chosen / rejected are response texts (str); the prompt is shared by both (str or messages);
margin is a float or None (how much better chosen is, for margin losses as in Llama 2).
"""

from __future__ import annotations

import logging

import rlhfkit.data.fields as fields
from rlhfkit.data.errors import DataError, describe, field_error
from rlhfkit.data.sources import Rows, Table, read_table

logger = logging.getLogger("rlhfkit.data")

HH_MARKER = "\n\nAssistant:"

PREFERENCE_FORMATS = [
    ("prompt_chosen_rejected", ("prompt", "chosen", "rejected"),
     "prompt, chosen, rejected as strings or message lists, optional margin"),
    ("hh_rlhf", ("chosen", "rejected"),
     "chosen, rejected as whole transcripts split at the last '\\n\\nAssistant:', or whole chats"),
    ("shp", ("history", "human_ref_A", "human_ref_B", "labels"),
     "SHP: history, human_ref_A, human_ref_B, labels (1: A preferred)"),
    ("webgpt", ("question", "answer_0", "answer_1", "score_0", "score_1"),
     "WebGPT comparisons: question.full_text, answer_0, answer_1, score_0, score_1"),
    ("summarize_from_feedback", ("info", "summaries", "choice"),
     "Summarize from Feedback comparisons: info {post, title, subreddit}, summaries [{text}, {text}], choice"),
]

def load_preferences(source, format: str | None = None, split: str = "train", identical: str = "error",
                     group_by: str | None = None) -> Rows:
    """Preference rows [{"prompt": str | messages, "chosen": str, "rejected": str, "margin": float | None}].

    Formats (detected from the first row's fields, or forced with `format=`): see
    `PREFERENCE_FORMATS` and docs/data.md. WebGPT ties (equal scores) are dropped and counted.
    identical: "error" (default) raises `DataError` naming a row whose chosen and rejected are
    equal; "drop" skips and counts such rows. Counts are in the result's `.stats` and logged.
    group_by: a field of the raw rows copied (as a string) into each pair's "group"; the name
    "source_file" means the file when rows have no such field (see `row_group`).
    """
    if identical not in ("error", "drop"):
        raise ValueError(f"identical must be 'error' or 'drop', got {identical!r}")
    table = source if isinstance(source, Table) else read_table(source, split)  # a Table: already read
    fmt = fields.pick_format(table, PREFERENCE_FORMATS, format, "preference")
    convert = {"prompt_chosen_rejected": _prompt_chosen_rejected, "hh_rlhf": _hh_rlhf, "shp": _shp,
               "webgpt": _webgpt, "summarize_from_feedback": _summarize}[fmt]
    out = Rows(stats={"rows": len(table.rows), "format": fmt, "dropped_ties": 0, "dropped_identical": 0})
    for i, row in enumerate(table.rows):
        where = table.where(i)
        pair = convert(where, row)
        if pair is not None and group_by:
            pair["group"] = row_group(where, row, group_by, table.name)
        if pair is None:  # a tie: no preference to learn from
            out.stats["dropped_ties"] += 1
            continue
        if pair["chosen"] == pair["rejected"]:
            if identical == "drop":
                out.stats["dropped_identical"] += 1
                continue
            raise DataError(f"{where}: chosen and rejected responses are identical ({describe(pair['chosen'])}); a "
                            f"preference pair must differ. Remove the row, or pass identical='drop' to skip such rows.")
        out.append(pair)
    out.stats["kept"] = len(out)
    if len(out) < len(table.rows):
        logger.warning("%s: kept %d of %d preference rows (%d ties, %d identical pairs dropped)", table.name,
                       len(out), len(table.rows), out.stats["dropped_ties"], out.stats["dropped_identical"])
    if not out:
        raise DataError(f"{table.name}: every row was dropped ({out.stats}); nothing to train on.")
    return out


def row_group(where: str, row: dict, group_by: str, source_name: str) -> str:
    """The row's group for per-group metrics: str(row[group_by]); "source_file" falls back to the file."""
    if group_by == "source_file" and row.get(group_by) in (None, ""):
        return source_name
    value = row.get(group_by)
    if value is None or value == "" or isinstance(value, (dict, list)):
        raise field_error(where, group_by, "a group name (string or number) for --group-by", value,
                          "Give every row this field, or group by another one.")
    return str(value)


def _pair(prompt, chosen: str, rejected: str, margin: float | None = None) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}


def _as_chat(prompt) -> list[dict]:
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _split_chat(where: str, field: str, value) -> tuple[list[dict], str]:
    """A whole chat -> (the turns before the last, the last turn's text); the last must be the assistant's."""
    chat = fields.messages(where, field, value)
    if chat[-1]["role"] != "assistant":
        raise field_error(where, field, "a chat whose last message has role 'assistant'", value)
    return chat[:-1], chat[-1]["content"]


def _prompt_chosen_rejected(where: str, row: dict) -> dict:
    needs = "format 'prompt_chosen_rejected' needs prompt, chosen, rejected"
    prompt = fields.prompt(where, "prompt", fields.require(where, row, "prompt", needs))
    responses = []
    for field in ("chosen", "rejected"):
        value = fields.require(where, row, field, needs)
        if isinstance(value, str):
            responses.append(value)
            continue
        if not isinstance(value, list):
            raise field_error(where, field, "a string or a list of messages", value)
        before, reply = _split_chat(where, field, value)
        # Some datasets (e.g. UltraFeedback) repeat the prompt inside chosen / rejected.
        if before and _as_chat(before) != _as_chat(prompt):
            raise field_error(where, field, "a reply, or the prompt's turns followed by the reply", value,
                              "The turns before the final reply must repeat the prompt exactly.")
        responses.append(reply)
    margin = fields.number(where, "margin", row.get("margin"), optional=True)
    return _pair(prompt, responses[0], responses[1], margin)


def _hh_rlhf(where: str, row: dict) -> dict:
    needs = "format 'hh_rlhf' needs chosen, rejected"
    chosen = fields.require(where, row, "chosen", needs)
    rejected = fields.require(where, row, "rejected", needs)
    margin = fields.number(where, "margin", row.get("margin"), optional=True)
    if isinstance(chosen, list) and isinstance(rejected, list):
        (prompt_c, reply_c), (prompt_r, reply_r) = (_split_chat(where, "chosen", chosen),
                                                    _split_chat(where, "rejected", rejected))
        if not prompt_c or _as_chat(prompt_c) != _as_chat(prompt_r):
            raise DataError(f"{where}: fields 'chosen' and 'rejected' must be the same chat up to the final "
                            f"assistant reply (the shared prompt), and it must not be empty. Fix the row.")
        return _pair(prompt_c, reply_c, reply_r, margin)
    prompts, replies = [], []
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        value = fields.text(where, field, value)
        cut = value.rfind(HH_MARKER)
        if cut < 0:
            raise field_error(where, field, "a transcript containing '\\n\\nAssistant:'", value,
                              "HH-RLHF rows are whole dialogues; use prompt/chosen/rejected fields otherwise.")
        cut += len(HH_MARKER)
        prompts.append(value[:cut])
        replies.append(value[cut:])  # keeps its leading space: "Assistant:" + " Sure..."
    if prompts[0] != prompts[1]:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' differ before their last '\\n\\nAssistant:'; "
                        f"the dialogue up to there is the shared prompt and must be identical. Fix the row.")
    return _pair(prompts[0], replies[0], replies[1], margin)


def _shp(where: str, row: dict) -> dict:
    needs = "format 'shp' needs history, human_ref_A, human_ref_B, labels"
    history = fields.text(where, "history", fields.require(where, row, "history", needs))
    ref_a = fields.text(where, "human_ref_A", fields.require(where, row, "human_ref_A", needs))
    ref_b = fields.text(where, "human_ref_B", fields.require(where, row, "human_ref_B", needs))
    raw = fields.require(where, row, "labels", needs)
    label = float(raw) if isinstance(raw, bool) else fields.number(where, "labels", raw)
    if label not in (0.0, 1.0):
        raise field_error(where, "labels", "1 (A preferred) or 0 (B preferred)", raw)
    return _pair(history, ref_a, ref_b) if label == 1.0 else _pair(history, ref_b, ref_a)


def _webgpt(where: str, row: dict) -> dict | None:
    needs = "format 'webgpt' needs question, answer_0, answer_1, score_0, score_1"
    question = fields.mapping(where, "question", fields.require(where, row, "question", needs))
    prompt = fields.text(where, "question.full_text", question.get("full_text"))
    answers = [fields.text(where, f"answer_{k}", fields.require(where, row, f"answer_{k}", needs)) for k in (0, 1)]
    scores = [fields.number(where, f"score_{k}", fields.require(where, row, f"score_{k}", needs)) for k in (0, 1)]
    if scores[0] == scores[1]:
        return None
    best = 0 if scores[0] > scores[1] else 1
    return _pair(prompt, answers[best], answers[1 - best])


def _summarize(where: str, row: dict) -> dict:
    needs = "format 'summarize_from_feedback' needs info, summaries, choice"
    info = fields.mapping(where, "info", fields.require(where, row, "info", needs))
    summaries = fields.sequence(where, "summaries", fields.require(where, row, "summaries", needs), length=2)
    texts = []
    for k, summary in enumerate(summaries):
        summary = fields.mapping(where, f"summaries[{k}]", summary)
        texts.append(fields.text(where, f"summaries[{k}].text", summary.get("text")))
    choice = fields.number(where, "choice", fields.require(where, row, "choice", needs))
    if choice not in (0.0, 1.0):
        raise field_error(where, "choice", "0 or 1 (the index of the preferred summary)", row["choice"])
    best = int(choice)
    return _pair(_tldr_prompt(where, info), texts[best], texts[1 - best])


def _tldr_prompt(where: str, info: dict) -> str:
    """The TL;DR query layout of Stiennon et al. (2020): subreddit, title, post, then 'TL;DR:'."""
    body_key = "post" if info.get("post") else "article" if info.get("article") else None
    if body_key is None:
        raise field_error(where, "info", "an object with a 'post' (Reddit) or 'article' (CNN/DM) text", info)
    parts = []
    if info.get("subreddit"):
        parts.append(f"SUBREDDIT: r/{fields.text(where, 'info.subreddit', info['subreddit'])}")
    if info.get("title"):
        parts.append(f"TITLE: {fields.text(where, 'info.title', info['title'])}")
    parts.append(f"{body_key.upper()}: {fields.text(where, f'info.{body_key}', info[body_key])}")
    return "\n\n".join(parts) + "\n\nTL;DR:"
