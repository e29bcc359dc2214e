"""Fixtures for the data tests: tiny tokenizers and writers for every supported file layout."""

from __future__ import annotations

import csv
import json

import pytest

from rlhfkit.models.tiny import build_tiny_tokenizer

CORPUS = [
    "user assistant system : what is two plus two ? four five it is the answer hello world hi yo go",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "Human Assistant TL ; DR SUBREDDIT TITLE POST r / 0 1 2 3 4 5 6 7 8 9",
]

# Appends EOS text after each assistant turn, as many real templates do, so render_response
# must cut it (EOS is appended later as a token id).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


@pytest.fixture(scope="session")
def tok():
    """Word-level tokenizer without a chat template (pad 0, eos 1, bos 2, unk 3)."""
    return build_tiny_tokenizer(CORPUS)


@pytest.fixture(scope="session")
def chat_tok():
    """Word-level tokenizer with a small chat template."""
    return build_tiny_tokenizer(CORPUS, chat_template=CHAT_TEMPLATE)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def write_csv(path, rows):
    """Nested values (lists, dicts) go in as JSON text, as people store them in a CSV cell."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_saved(path, splits: dict):
    """A `datasets.save_to_disk` folder holding a DatasetDict with the given splits."""
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "csv": write_csv, "parquet": write_parquet}


@pytest.fixture
def write(tmp_path):
    """write(kind, rows, name=None) -> path of a file (or save_to_disk folder, kind 'saved') in tmp_path."""
    def _write(kind, rows, name=None):
        if kind == "saved":
            return write_saved(tmp_path / (name or "saved_ds"), {"train": rows})
        return WRITERS[kind](tmp_path / (name or f"data.{kind}"), rows)
    return _write
