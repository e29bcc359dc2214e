"""load_rows: every file layout, and the messages for broken files."""

from __future__ import annotations

import pytest

from rlhfkit.data import DataError, load_rows
from tests.data.conftest import write_saved

ROWS = [{"prompt": "what is two plus two ?", "answer": "4"}, {"prompt": "hello", "answer": "5"}]


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "saved"])
def test_each_layout_reads_the_same_rows(write, kind):
    assert load_rows(write(kind, ROWS)) == ROWS


def test_json_data_wrapper_and_json_lines_named_json(tmp_path):
    (tmp_path / "wrapped.json").write_text('{"data": [{"prompt": "a"}, {"prompt": "b"}]}')
    assert load_rows(tmp_path / "wrapped.json") == [{"prompt": "a"}, {"prompt": "b"}]
    (tmp_path / "lines.json").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_rows(str(tmp_path / "lines.json")) == [{"prompt": "a"}, {"prompt": "b"}]


def test_blank_lines_in_jsonl_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": oops}\n')
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert "gaps.jsonl, line 4" in str(err.value) and "invalid JSON" in str(err.value)


def test_invalid_json_file_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"prompt": "a"},\n {"prompt": "b",}\n]')
    with pytest.raises(DataError, match=r"broken\.json, line 3: invalid JSON"):
        load_rows(path)


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.json", "[]"),
                                       ("header_only.csv", "prompt,answer\n")])
def test_empty_files(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=rf"{name}: no rows"):
        load_rows(tmp_path / name)


def test_non_object_row(tmp_path):
    (tmp_path / "lists.jsonl").write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    with pytest.raises(DataError, match=r"lists\.jsonl, line 2: expected an object"):
        load_rows(tmp_path / "lists.jsonl")
    (tmp_path / "strings.json").write_text('[{"prompt": "a"}, "b"]')
    with pytest.raises(DataError, match=r"strings\.json, row index 1: expected an object"):
        load_rows(tmp_path / "strings.json")


def test_missing_file_is_not_mistaken_for_a_hub_name(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="not found"):
        load_rows("nope.parquet")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file type '\.txt'"):
        load_rows(tmp_path / "notes.txt")


def test_csv_extra_values_name_the_line(tmp_path):
    (tmp_path / "bad.csv").write_text("prompt,answer\na,1\nb,2,3\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 3: more values than the header"):
        load_rows(tmp_path / "bad.csv")


def test_saved_dataset_dict_picks_the_split(tmp_path):
    path = write_saved(tmp_path / "dd", {"train": ROWS, "test": ROWS[:1]})
    assert load_rows(path, split="test") == ROWS[:1]
    with pytest.raises(DataError, match=r"no split 'validation'; the dataset has train, test"):
        load_rows(path, split="validation")


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets.save_to_disk"):
        load_rows(tmp_path / "plain")


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_rows("someone/some-prompts", split="test") == ROWS
    assert calls == [("someone/some-prompts", "test")]


def test_hub_failure_says_the_network_may_be_unavailable(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError("could not reach huggingface.co\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_rows("someone/missing")
    message = str(err.value)
    assert "'someone/missing'" in message and "network may be unavailable" in message
    assert "long traceback text" not in message


def test_in_memory_rows():
    assert load_rows(ROWS) == ROWS
    with pytest.raises(DataError, match="rows given in memory, row index 0"):
        load_rows(["not a dict"])


def test_in_memory_dataset():
    import datasets

    assert load_rows(datasets.Dataset.from_list(ROWS)) == ROWS
