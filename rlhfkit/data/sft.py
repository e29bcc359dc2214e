"""Prompt rows (for RL) and SFT rows (prompt + response), normalized from the common layouts.

Prompt rows: {"prompt": str | messages, **extras}; extras (e.g. `answer`) go to reward functions.
SFT rows: {"prompt": str | messages, "response": str}.
"""

from __future__ import annotations

import rlhfkit.data.fields as fields
from rlhfkit.data.errors import DataError, field_error
from rlhfkit.data.sources import Rows, read_table

SFT_FORMATS = [
    ("prompt_response", ("prompt", "response|completion"), "prompt, response (or completion)"),
    ("alpaca", ("instruction", "output"), "instruction, optional input, output"),
    ("messages", ("messages",), "messages: a chat whose last turn is the assistant's reply"),
    ("text", ("text",), "text: plain text, every token trained on (pretraining data, e.g. for PPO-ptx)"),
]


def load_prompts(source, prompt_field: str | None = None, split: str = "train") -> Rows:
    """Prompt rows for generation: [{"prompt": str | list[message], **extras}].

    The prompt comes from `prompt_field` if given, else from `prompt`, else from `messages`.
    Every other field is kept as an extra (e.g. `answer` for a rule reward). A chat prompt
    that ends with an assistant turn loses that turn: the policy writes its own reply.
    source: anything `load_rows` reads. Raises `DataError` naming the line and field.
    """
    table = read_table(source, split)
    field = prompt_field
    if field is None:
        first = table.rows[0]
        field = "prompt" if "prompt" in first else "messages" if "messages" in first else None
    if field is None:
        have = ", ".join(sorted(map(str, table.rows[0])))
        raise DataError(f"{table.where(0)}: no prompt field: expected 'prompt' or 'messages' (this row has: {have}). "
                        f"Pass prompt_field=... to name the field that holds the prompt.")
    out = Rows(stats={"rows": len(table.rows)})
    for i, row in enumerate(table.rows):
        where = table.where(i)
        value = fields.require(where, row, field, f"the prompt is read from field {field!r}")
        prompt = fields.messages(where, field, value) if field == "messages" else fields.prompt(where, field, value)
        if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
            prompt = prompt[:-1]
            if not prompt:
                raise field_error(where, field, "at least one message before the assistant's reply", value)
        extras = {k: v for k, v in row.items() if k != field and k != "prompt"}
        out.append({"prompt": prompt, **extras})
    return out


def load_sft(source, format: str | None = None, split: str = "train") -> Rows:
    """SFT rows [{"prompt": str | list[message], "response": str}].

    Formats (detected from the first row's fields, or forced with `format=`):
      prompt_response: `prompt` (string or messages) and `response` (or `completion`);
      alpaca: `instruction`, optional `input`, `output`; prompt = instruction, then a blank line
        and the input when it is non-empty;
      messages: a chat; its last turn (must be the assistant's) is the response, the earlier
        turns are the prompt (earlier assistant turns are context, not trained on);
      text: plain text, no prompt: {"text": str} rows, every token trained on (no chat template).
    """
    table = read_table(source, split)
    fmt = fields.pick_format(table, SFT_FORMATS, format, "SFT")
    convert = {"prompt_response": _prompt_response, "alpaca": _alpaca, "messages": _messages, "text": _text}[fmt]
    out = Rows(stats={"rows": len(table.rows), "format": fmt})
    for i, row in enumerate(table.rows):
        out.append(convert(table.where(i), row))
    return out


def _prompt_response(where: str, row: dict) -> dict:
    needs = "format 'prompt_response' needs prompt, response"
    prompt = fields.prompt(where, "prompt", fields.require(where, row, "prompt", needs))
    key = "response" if row.get("response") is not None or "completion" not in row else "completion"
    response = fields.response_text(where, key, fields.require(where, row, key, needs))
    return {"prompt": prompt, "response": response}


def _text(where: str, row: dict) -> dict:
    return {"text": fields.text(where, "text", fields.require(where, row, "text", "format 'text' needs text"))}


def _alpaca(where: str, row: dict) -> dict:
    needs = "format 'alpaca' needs instruction, output (input optional)"
    instruction = fields.text(where, "instruction", fields.require(where, row, "instruction", needs))
    output = fields.text(where, "output", fields.require(where, row, "output", needs))
    extra = row.get("input")
    extra = "" if extra is None else fields.text(where, "input", extra)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"prompt": prompt, "response": output}


def _messages(where: str, row: dict) -> dict:
    value = fields.require(where, row, "messages", "format 'messages' needs messages")
    chat = fields.messages(where, "messages", value)
    if chat[-1]["role"] != "assistant":
        raise field_error(where, "messages", "a chat whose last message has role 'assistant' (the response)", value,
                          "End each conversation with the assistant's reply.")
    if len(chat) < 2:
        raise field_error(where, "messages", "at least one message before the assistant's reply", value)
    return {"prompt": chat[:-1], "response": chat[-1]["content"]}
