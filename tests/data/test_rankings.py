"""Ranked responses: the layout, ties, pairs as K = 2, file:line:field errors, collation, groups, mixing."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.data import DataError
from rlhfkit.data.mixing import mix_parts, parse_data_spec
from rlhfkit.data.rankings import collate_rankings, load_rankings, tokenize_rankings


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ranking_and_scores_give_the_same_ranks(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", [
        {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 1, 3]},
        {"prompt": "q", "responses": ["a", "b", "c"], "scores": [0.5, 2.0, -1.0]},
        {"prompt": "t", "responses": ["a", "b", "c"], "scores": [1.0, 1.0, 0.0]},  # a tie at the top
    ])
    rows = load_rankings(path)
    assert [r["ranks"] for r in rows] == [[2, 1, 3], [2, 1, 3], [1, 1, 2]]
    assert rows.stats["format"] == "ranked" and rows[0]["group"] is None


def test_all_tied_rows_are_dropped_and_counted(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 1]},
                                         {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 2]}])
    rows = load_rankings(path)
    assert len(rows) == 1 and rows.stats["dropped_ties"] == 1


def test_pairs_become_k2_rankings(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 0.5}])
    (row,) = load_rankings(path)
    assert row["responses"] == ["good", "bad"] and row["ranks"] == [1, 2] and row["margin"] == 0.5


@pytest.mark.parametrize("row, field", [
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [1]}, "'ranking'"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}, "'ranking[0]'"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [1.5, 1]}, "'ranking[0]'"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, "x"]}, "'scores[1]'"),
    ({"prompt": "p", "responses": ["a", 3], "ranking": [1, 2]}, "'responses[1]'"),
    ({"prompt": "p", "responses": ["a"], "ranking": [1]}, "'responses'"),
    ({"prompt": "p", "responses": ["a", "b"]}, "'ranking'"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 2], "scores": [1, 2]}, "'ranking'"),
    ({"prompt": "p", "responses": ["a", "a"], "ranking": [1, 2]}, "'responses'"),
    ({"responses": ["a", "b"], "ranking": [1, 2]}, "'prompt'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field):
    path = jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "responses": ["x", "y"], "ranking": [1, 2]}, row])
    with pytest.raises(DataError) as err:
        load_rankings(path)
    assert "bad.jsonl, line 2" in str(err.value) and field in str(err.value)


def test_group_by_field_and_source_file(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "category": "math"}])
    assert load_rankings(path, group_by="category")[0]["group"] == "math"
    assert load_rankings(path, group_by="source_file")[0]["group"] == path
    with pytest.raises(DataError, match=r"g.jsonl, line 1: field 'topic'"):
        load_rankings(path, group_by="topic")


def test_tokenize_and_collate_layout(tok):
    rows = [{"prompt": "a b", "responses": ["c", "d e", "f"], "ranks": [2, 1, 2], "margin": None, "group": "x"},
            {"prompt": "a", "responses": ["g", "h"], "ranks": [1, 2], "margin": 0.5, "group": "y"}]
    examples, stats = tokenize_rankings(rows, tok, max_length=16)
    assert stats == {"kept": 2, "truncated": 0, "dropped": 0}
    batch = collate_rankings(examples, pad_id=0)
    assert batch["input_ids"].shape[0] == 5  # 3 + 2 sequences, prompt by prompt
    assert batch["valid"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["ranks"].tolist() == [[2, 1, 2], [1, 2, 0]]
    assert batch["best"].tolist() == [1, 3]  # the rank-1 response of each prompt, as an index into N
    assert batch["margin"].tolist() == [0.0, 0.5] and batch["groups"] == ["x", "y"]
    # Scores scattered by the valid mask land in their (prompt, response) slots.
    slots = torch.zeros(2, 3).masked_scatter(batch["valid"], torch.arange(5.0))
    assert slots.tolist() == [[0, 1, 2], [3, 4, 0]]
    assert batch["last_index"].tolist() == [len(s) - 1 for e in examples for s in e["ids"]]


def test_mixing_weights_and_specs():
    assert parse_data_spec("a.jsonl:0.7") == ("a.jsonl", 0.7)
    assert parse_data_spec("a.jsonl") == ("a.jsonl", None)
    with pytest.raises(DataError, match="weight"):
        parse_data_spec("a.jsonl:-1")
    a, b = [("a", i) for i in range(10)], [("b", i) for i in range(30)]
    mixed = mix_parts([a, b], [0.7, 0.3], seed=0)
    assert len(mixed) == 40 and sum(x[0] == "a" for x in mixed) == 28  # 0.7 * 40: a is up-sampled
    assert set(a) <= set(mixed)  # up-sampling keeps every row of the small part
    assert mix_parts([a, b], [None, None]) == a + b
    with pytest.raises(DataError, match="every data file"):
        mix_parts([a, b], [0.5, None])


def test_preference_pairs_from_rankings_and_from_pairs(tmp_path):
    import json

    from rlhfkit.data import load_preferences
    from rlhfkit.data.rankings import load_preference_pairs

    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 1, 2]}) + "\n")
    pairs = load_preference_pairs(str(ranked))
    # b beats a and c; a and c tie: no pair between them
    assert sorted((r["chosen"], r["rejected"]) for r in pairs) == [("b", "a"), ("b", "c")]
    flat = tmp_path / "pairs.jsonl"
    flat.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"x{i}", "rejected": f"y{i}"}) + "\n"
                            for i in range(3)))
    same = load_preferences(str(flat))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in load_preference_pairs(str(flat))] == \
        [(r["prompt"], r["chosen"], r["rejected"]) for r in same]
