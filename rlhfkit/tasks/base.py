"""Helpers shared by the bundled tasks: size arguments, JSONL writing, cleaning decoded text.

Pure Python (no torch), so `rlhfkit.tasks` imports in milliseconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Mapping

# Text after the first end-of-sequence marker is not part of the response (a policy may keep
# sampling after EOS when decoding with special tokens); other markers are dropped.
_EOS_MARKERS = ("<eos>", "</s>", "<|endoftext|>", "<|im_end|>")
_DROP_MARKERS = re.compile(r"<pad>|<bos>|<s>")


def clean_response(text: str) -> str:
    """The response as a reader would see it: cut at the first EOS marker, pad/bos removed."""
    if not isinstance(text, str):
        raise TypeError(f"a response must be a str, got {type(text).__name__}: {text!r}")
    for marker in _EOS_MARKERS:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return _DROP_MARKERS.sub(" ", text)


def resolve_sizes(task_name: str, defaults: Mapping[str, int], sizes: Mapping[str, int]) -> dict[str, int]:
    """`defaults` updated with `sizes`; unknown names or negative values raise a clear error."""
    unknown = sorted(set(sizes) - set(defaults))
    if unknown:
        raise ValueError(f"task {task_name!r}: unknown size(s) {unknown}; "
                         f"valid sizes are {sorted(defaults)} (defaults {dict(defaults)})")
    out = dict(defaults)
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"task {task_name!r}: size {key}={value!r} must be a non-negative int")
        out[key] = value
    return out


def write_jsonl(path: Path, rows: Iterable[Mapping]) -> str:
    """Write one JSON object per line (UTF-8, '\\n' endings); returns the path as a str."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def write_json(path: Path, obj: Mapping) -> str:
    """Write a small JSON document (indented, keys in insertion order); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)


def check_batch(prompts, responses, fields: Mapping[str, object]) -> None:
    """Raise if `prompts`, `responses` and every list-valued field do not have one entry each."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; "
                         f"pass one response per prompt")
    for key, value in fields.items():
        if isinstance(value, (list, tuple)) and len(value) != len(prompts):
            raise ValueError(f"field {key!r} has {len(value)} values for {len(prompts)} prompts; "
                             f"pass one value per prompt")
