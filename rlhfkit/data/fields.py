"""Typed access to one field of one row, with errors that name the row and the field.

Shared by the prompt, SFT and preference loaders. A message is {"role": str, "content": str}
(other keys such as "name" are kept); a prompt is a string or a non-empty list of messages.
"""

from __future__ import annotations

import json
import math

from rlhfkit.data.errors import DataError, field_error

MESSAGES_EXPECTED = 'a list of messages like [{"role": "user", "content": "..."}]'


def require(where: str, row: dict, field: str, needs: str):
    """row[field]; a missing field (absent, or None / NaN as in a CSV or Parquet gap) is an error.

    needs: what the chosen format needs, e.g. "format 'alpaca' needs instruction, output".
    """
    value = row.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        have = ", ".join(sorted(str(k) for k in row)) or "no fields"
        raise DataError(f"{where}: missing field {field!r} ({needs}; this row has: {have}). "
                        f"Add the field, or choose another format with format=...")
    return value


def text(where: str, field: str, value) -> str:
    """A string field."""
    if not isinstance(value, str):
        raise field_error(where, field, "a string", value)
    return value


def number(where: str, field: str, value, optional: bool = False) -> float | None:
    """A number; CSV cells arrive as strings, so numeric strings are accepted.

    optional: None, "" and NaN give None instead of an error.
    """
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        if optional:
            return None
        raise field_error(where, field, "a number", value)
    if isinstance(value, bool):
        raise field_error(where, field, "a number (not true/false)", value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise field_error(where, field, "a number", value)


def messages(where: str, field: str, value) -> list[dict]:
    """A non-empty list of {"role": str, "content": str} messages.

    A JSON string is decoded first (how a CSV cell holds a list).
    """
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, list) or not value:
        raise field_error(where, field, MESSAGES_EXPECTED, value)
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise field_error(where, f"{field}[{j}]", 'a message {"role": ..., "content": ...}', msg)
        for key in ("role", "content"):
            if not isinstance(msg.get(key), str):
                raise field_error(where, f"{field}[{j}].{key}", "a string", msg.get(key),
                                  "Each message needs a string role and a string content.")
        # Drop None-valued keys: Parquet / datasets pad structs with None for absent keys.
        out.append({k: v for k, v in msg.items() if v is not None})
    return out


def prompt(where: str, field: str, value) -> str | list[dict]:
    """A prompt: a string or a list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return messages(where, field, value)
    raise field_error(where, field, f"a string or {MESSAGES_EXPECTED}", value)


def mapping(where: str, field: str, value) -> dict:
    """An object field (a JSON string is decoded first, as a CSV cell holds one)."""
    value = _maybe_json(value, "{")
    if not isinstance(value, dict):
        raise field_error(where, field, "an object {...}", value)
    return value


def sequence(where: str, field: str, value, length: int | None = None) -> list:
    """A list field, optionally of a fixed length (a JSON string is decoded first)."""
    value = _maybe_json(value, "[")
    if not isinstance(value, list) or (length is not None and len(value) != length):
        what = "a list" if length is None else f"a list of {length} items"
        raise field_error(where, field, what, value)
    return value


def _maybe_json(value, opener: str):
    if isinstance(value, str) and value.lstrip().startswith(opener):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def response_text(where: str, field: str, value) -> str:
    """A response: a string, or a list holding the one assistant message (its content is the text)."""
    if isinstance(value, str):
        return value
    msgs = messages(where, field, value) if isinstance(value, list) else None
    if msgs is None or len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise field_error(where, field, 'a string or [{"role": "assistant", "content": "..."}]', value)
    return msgs[0]["content"]


def pick_format(table, formats: list[tuple[str, tuple[str, ...], str]], forced: str | None, kind: str) -> str:
    """The row format: `forced` if given, else the first whose fields the first row has.

    formats: (name, fields that identify it, description for messages), in priority order;
    "a|b" in the fields means either name will do.
    """
    names = [name for name, _, _ in formats]
    if forced is not None:
        if forced not in names:
            raise DataError(f"unknown {kind} format {forced!r}; choose one of: {', '.join(names)}.")
        return forced
    row = table.rows[0]
    for name, keys, _ in formats:
        if all(any(alt in row for alt in k.split("|")) for k in keys):
            return name
    have = ", ".join(sorted(str(k) for k in row)) or "no fields"
    known = "; ".join(f"{name} ({desc})" for name, _, desc in formats)
    raise DataError(f"{table.where(0)}: cannot tell the {kind} format from the fields present ({have}). "
                    f"Supported: {known}. Rename the fields, or pass format=... to name the format.")
