"""Shared helpers for the task tests."""

import json
from pathlib import Path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def assert_no_unk(task, paths):
    """Every text field of every written file tokenizes without <unk> under the task's tokenizer."""
    from rlhfkit.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer(task.corpus(), level=task.tokenizer_level)
    n_texts = 0
    for name, path in paths.items():
        if name == "info":
            continue
        for i, row in enumerate(read_jsonl(path)):
            for field in ("prompt", "response", "chosen", "rejected"):
                if field in row:
                    ids = tok(row[field], add_special_tokens=False)["input_ids"]
                    assert tok.unk_token_id not in ids, f"{name}:{i + 1} {field}={row[field]!r}"
                    n_texts += 1
    assert n_texts > 0
    return tok
