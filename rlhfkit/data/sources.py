"""Read rows (plain dicts) from JSONL, JSON, Parquet, CSV, a `save_to_disk` folder or the Hub.

Each reader keeps where every row came from (file and 1-based line for JSONL and CSV, row
index otherwise) so that later checks can name the exact line of a bad row.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.errors import DataError, describe

FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class Rows(list):
    """A list of normalized rows that also carries `stats` (counts of rows read, kept and dropped)."""

    def __init__(self, rows=(), stats: dict | None = None):
        super().__init__(rows)
        self.stats = dict(stats or {})


@dataclass
class Table:
    """Rows read from one source, with where each came from (for error messages)."""

    name: str  # the file, folder or dataset name as given
    rows: list[dict]
    lines: list[int] | None = None  # 1-based line of each row (JSONL, CSV); None: use the row index

    def where(self, i: int) -> str:
        """'data.jsonl, line 7' or 'data.parquet, row index 6'."""
        if self.lines is not None:
            return f"{self.name}, line {self.lines[i]}"
        return f"{self.name}, row index {i}"


def load_rows(source, split: str = "train") -> list[dict]:
    """Read every row of `source` as a plain dict.

    source: a path to `.jsonl`, `.json` (a list of objects, or {"data": [...]}), `.parquet`,
    `.csv`, a folder written by `datasets.save_to_disk` (a DatasetDict gives `split`), a Hub
    dataset name (only when no such local path exists), or in memory: a list of dicts or a
    `datasets.Dataset`.
    Raises `DataError` for a missing or empty file, invalid JSON (naming the line), or a row
    that is not an object.
    """
    return read_table(source, split).rows


def read_table(source, split: str = "train") -> Table:
    """Like `load_rows` but keeps each row's location (see `Table.where`)."""
    if hasattr(source, "to_list") and not isinstance(source, (str, os.PathLike)):
        source = source.to_list()  # an in-memory `datasets.Dataset`
    if isinstance(source, (list, tuple)):
        table = Table("rows given in memory", list(source))
        _check_objects(table)
        return _check_not_empty(table)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"data source must be a path, a dataset name or a list of dicts, got {describe(source)}.")
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        return _check_not_empty(_read_saved_dataset(name, path, split))
    if path.is_file():
        kind = FILE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{name}: unsupported file type {path.suffix!r}. Supported: "
                            f"{', '.join(sorted(FILE_SUFFIXES))}, or a datasets.save_to_disk folder.")
        reader = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet, "csv": _read_csv}[kind]
        return _check_not_empty(reader(name, path))
    if _looks_like_path(name):
        raise DataError(f"data file not found: {name!r} (resolved to {path.resolve()}). Check the path.")
    return _check_not_empty(_read_hub(name, split))


def _looks_like_path(name: str) -> bool:
    # A Hub name is 'dataset' or 'owner/dataset'; anything with a data-file suffix, more than
    # one slash or a leading '.', '/' or '~' was meant as a local path.
    return (Path(name).suffix.lower() in FILE_SUFFIXES or name.count("/") > 1
            or name.startswith((".", "/", "~")) or "\\" in name)


def _check_not_empty(table: Table) -> Table:
    if not table.rows:
        raise DataError(f"{table.name}: no rows (the file or split is empty). Point to data with at least one row.")
    return table


def _check_objects(table: Table) -> None:
    for i, row in enumerate(table.rows):
        if not isinstance(row, dict):
            raise DataError(f"{table.where(i)}: expected an object with named fields such as "
                            f'{{"prompt": "..."}}, got {describe(row)}.')


def _read_text(name: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: not UTF-8 text (byte {err.start}). Save the file as UTF-8.") from None


def _read_jsonl(name: str, path: Path) -> Table:
    rows, lines = [], []
    for lineno, line in enumerate(_read_text(name, path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name}, line {lineno}: invalid JSON ({err.msg} at column {err.colno}). Each line "
                            f'must be one JSON object such as {{"prompt": "..."}}; fix or remove this line.') from None
        rows.append(row)
        lines.append(lineno)
    table = Table(name, rows, lines)
    _check_objects(table)
    return table


def _read_json(name: str, path: Path) -> Table:
    text = _read_text(name, path)
    if not text.strip():
        return Table(name, [])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several JSON values one after another: JSON Lines named .json
            return _read_jsonl(name, path)
        raise DataError(f"{name}, line {err.lineno}: invalid JSON ({err.msg} at column {err.colno}). "
                        f"Fix the file so it holds a list of objects.") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{name}: expected a JSON list of objects or {{"data": [...]}}, got {describe(data)}. '
                        f"Wrap the rows in a list, or save them as JSON Lines (.jsonl).")
    table = Table(name, data)
    _check_objects(table)
    return table


def _read_csv(name: str, path: Path) -> Table:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts in one cell
    rows, lines = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row:
                    raise DataError(f"{name}, line {reader.line_num}: more values than the header has columns "
                                    f"({len(reader.fieldnames)}). Quote cells that contain commas.")
                rows.append(row)
                lines.append(reader.line_num)
        except UnicodeDecodeError as err:
            raise DataError(f"{name}: not UTF-8 text (byte {err.start}). Save the file as UTF-8.") from None
        except csv.Error as err:
            raise DataError(f"{name}, line {reader.line_num}: invalid CSV ({err}).") from None
    return Table(name, rows, lines)


def _read_parquet(name: str, path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()  # plain Python values, nested lists/structs included
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{name}: cannot read as Parquet ({type(err).__name__}: {_first_line(err)}).") from None
    return Table(name, rows)


def _read_saved_dataset(name: str, path: Path, split: str) -> Table:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # FileNotFoundError and others for folders that are not datasets
        raise DataError(f"{name}: a folder, but not one written by datasets.save_to_disk "
                        f"({type(err).__name__}: {_first_line(err)}).") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{name}: no split {split!r}; the dataset has {', '.join(ds)}. Choose one of those.")
        ds = ds[split]
        name = f"{name} [{split}]"
    return Table(name, ds.to_list())


def _read_hub(name: str, split: str) -> Table:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # network, missing dataset, missing split: all reported the same way
        raise DataError(f"could not load {name!r} (split {split!r}) from the Hugging Face Hub; the network may be "
                        f"unavailable ({type(err).__name__}: {_first_line(err)}). No local file or folder "
                        f"has that name either: check the path if you meant one.") from None
    return Table(f"{name} [{split}]", ds.to_list())


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
