"""Prompt, SFT and preference rows from each published layout, and the bad-row messages."""

from __future__ import annotations

import pytest

from rlhfkit.data import DataError, load_preferences, load_prompts, load_sft

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two ?"},
        {"role": "assistant", "content": "four"}]


# ---------------------------------------------------------------- prompts

def test_prompts_keep_extras(write):
    rows = load_prompts(write("jsonl", [{"prompt": "two plus two ?", "answer": "4", "id": 7}]))
    assert rows == [{"prompt": "two plus two ?", "answer": "4", "id": 7}]


def test_prompts_from_messages_drop_a_trailing_assistant_turn(write):
    rows = load_prompts(write("parquet", [{"messages": CHAT, "answer": "4"}]))
    assert rows == [{"prompt": CHAT[:2], "answer": "4"}]


def test_prompts_from_a_named_field(write):
    rows = load_prompts(write("csv", [{"question": "two plus two ?", "answer": "4"}]), prompt_field="question")
    assert rows == [{"prompt": "two plus two ?", "answer": "4"}]


def test_prompts_without_a_prompt_field(write):
    path = write("jsonl", [{"question": "q"}], name="questions.jsonl")
    with pytest.raises(DataError, match=r"questions\.jsonl, line 1: no prompt field.*prompt_field="):
        load_prompts(path)


# ---------------------------------------------------------------- SFT

@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "saved"])
def test_sft_prompt_response(write, kind):
    rows = load_sft(write(kind, [{"prompt": "two plus two ?", "response": "four"}]))
    assert rows == [{"prompt": "two plus two ?", "response": "four"}]
    assert rows.stats["format"] == "prompt_response"


def test_sft_completion_alias_and_conversational_completion(write):
    rows = load_sft(write("jsonl", [
        {"prompt": "hi", "completion": "hello"},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]},
    ]))
    assert rows == [{"prompt": "hi", "response": "hello"},
                    {"prompt": [{"role": "user", "content": "hi"}], "response": "yo"}]


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_sft_alpaca(write, kind):
    rows = load_sft(write(kind, [{"instruction": "add", "input": "2 + 2", "output": "4"},
                                 {"instruction": "say hi", "input": "", "output": "hi"}]))
    assert rows == [{"prompt": "add\n\n2 + 2", "response": "4"}, {"prompt": "say hi", "response": "hi"}]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_sft_messages(write, kind):
    rows = load_sft(write(kind, [{"messages": CHAT}]))
    assert rows == [{"prompt": CHAT[:2], "response": "four"}]


def test_sft_messages_must_end_with_the_assistant(write):
    path = write("jsonl", [{"messages": CHAT}, {"messages": CHAT[:2]}], name="chats.jsonl")
    with pytest.raises(DataError, match=r"chats\.jsonl, line 2: field 'messages': expected a chat whose last"):
        load_sft(path)


def test_sft_missing_field_names_file_line_and_field(write):
    path = write("jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "answer": "d"}], name="sft.jsonl")
    with pytest.raises(DataError) as err:
        load_sft(path)
    message = str(err.value)
    assert "sft.jsonl, line 2" in message and "missing field 'response'" in message
    assert "this row has: answer, prompt" in message


def test_sft_wrong_type_names_the_field(write):
    path = write("jsonl", [{"prompt": "a", "response": 5}], name="typed.jsonl")
    with pytest.raises(DataError, match=r"typed\.jsonl, line 1: field 'response': expected a string"):
        load_sft(path)
    path = write("json", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 1}]}],
                 name="msgs.json")
    with pytest.raises(DataError, match=r"msgs\.json, row index 0: field 'messages\[1\]\.content': expected a str"):
        load_sft(path)


def test_sft_unknown_layout_lists_the_formats(write):
    path = write("jsonl", [{"question": "a", "reply": "b"}], name="odd.jsonl")
    with pytest.raises(DataError, match=r"odd\.jsonl, line 1: cannot tell the SFT format.*alpaca"):
        load_sft(path)
    with pytest.raises(DataError, match="unknown SFT format 'sharegpt'"):
        load_sft(path, format="sharegpt")


def test_sft_forced_format(write):
    # Both layouts present: detection picks prompt_response, format= picks alpaca.
    path = write("jsonl", [{"prompt": "p", "response": "r", "instruction": "i", "output": "o"}])
    assert load_sft(path) == [{"prompt": "p", "response": "r"}]
    assert load_sft(path, format="alpaca") == [{"prompt": "i", "response": "o"}]


# ---------------------------------------------------------------- preferences

@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "saved"])
def test_prompt_chosen_rejected(write, kind):
    rows = load_preferences(write(kind, [{"prompt": "two plus two ?", "chosen": "four", "rejected": "five",
                                          "margin": 0.5}]))
    assert rows == [{"prompt": "two plus two ?", "chosen": "four", "rejected": "five", "margin": 0.5}]


def test_prompt_chosen_rejected_as_messages(write):
    prompt = [{"role": "user", "content": "hi"}]
    rows = load_preferences(write("parquet", [
        # chosen / rejected as the reply alone, and as the whole chat repeating the prompt (UltraFeedback).
        {"prompt": prompt, "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go"}]},
        {"prompt": prompt, "chosen": prompt + [{"role": "assistant", "content": "hello"}],
         "rejected": prompt + [{"role": "assistant", "content": "go"}]},
    ]))
    assert [r["chosen"] for r in rows] == ["hello", "hello"] and [r["rejected"] for r in rows] == ["go", "go"]
    assert all(r["prompt"] == prompt and r["margin"] is None for r in rows)


def test_chat_that_does_not_repeat_the_prompt_is_an_error(write):
    path = write("jsonl", [{"prompt": "hi", "chosen": [{"role": "user", "content": "other"},
                                                       {"role": "assistant", "content": "a"}], "rejected": "b"}])
    with pytest.raises(DataError, match=r"line 1: field 'chosen'.*must repeat the prompt"):
        load_preferences(path)


def test_hh_rlhf_transcripts(write):
    base = "\n\nHuman: what is two plus two ?\n\nAssistant: four ?\n\nHuman: sure ?"
    rows = load_preferences(write("jsonl", [{"chosen": base + "\n\nAssistant: it is four",
                                             "rejected": base + "\n\nAssistant: five"}]))
    assert rows.stats["format"] == "hh_rlhf"
    assert rows == [{"prompt": base + "\n\nAssistant:", "chosen": " it is four", "rejected": " five", "margin": None}]


def test_hh_rlhf_prompts_must_match(write):
    path = write("jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: X\n\nAssistant: c"}],
                 name="hh.jsonl")
    with pytest.raises(DataError, match=r"hh\.jsonl, line 1: fields 'chosen' and 'rejected' differ before"):
        load_preferences(path)
    path = write("jsonl", [{"chosen": "no marker here", "rejected": "\n\nHuman: a\n\nAssistant: c"}],
                 name="hh2.jsonl")
    with pytest.raises(DataError, match=r"hh2\.jsonl, line 1: field 'chosen': expected a transcript"):
        load_preferences(path)


def test_whole_chats_without_prompt_field(write):
    rows = load_preferences(write("parquet", [{"chosen": CHAT, "rejected": CHAT[:2] + [
        {"role": "assistant", "content": "five"}]}]))
    assert rows == [{"prompt": CHAT[:2], "chosen": "four", "rejected": "five", "margin": None}]


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_shp(write, kind):
    rows = load_preferences(write(kind, [
        {"post_id": "x", "history": "what ?", "human_ref_A": "a", "human_ref_B": "b", "labels": 1, "score_A": 3},
        {"post_id": "y", "history": "why ?", "human_ref_A": "c", "human_ref_B": "d", "labels": 0, "score_A": 1},
    ]))
    assert rows.stats["format"] == "shp"
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("what ?", "a", "b"), ("why ?", "d", "c")]


def test_shp_bad_label(write):
    path = write("jsonl", [{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 2}], name="shp.jsonl")
    with pytest.raises(DataError, match=r"shp\.jsonl, line 1: field 'labels': expected 1 \(A preferred\)"):
        load_preferences(path)


def test_webgpt_ties_dropped_and_counted(write):
    def row(s0, s1):
        return {"question": {"dataset": "eli5", "id": "q", "full_text": "why ?"}, "quotes_0": {"title": [],
                "extract": []}, "answer_0": "zero", "tokens_0": [], "score_0": s0,
                "quotes_1": {"title": [], "extract": []}, "answer_1": "one", "tokens_1": [], "score_1": s1}

    rows = load_preferences(write("jsonl", [row(1.0, -1.0), row(0.0, 0.0), row(-0.5, 0.5)]))
    assert rows.stats["format"] == "webgpt" and rows.stats["dropped_ties"] == 1 and rows.stats["kept"] == 2
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("why ?", "zero", "one"),
                                                                        ("why ?", "one", "zero")]


def test_summarize_from_feedback(write):
    info = {"id": "t3", "post": "my cat ate my homework", "title": "help", "subreddit": "pets", "site": None}
    rows = load_preferences(write("parquet", [
        {"info": info, "summaries": [{"text": " cat ate it", "policy": "a"}, {"text": " homework", "policy": "b"}],
         "choice": 1, "worker": "w", "batch": "b1", "split": "train", "extra": {"confidence": 7}},
    ]))
    assert rows.stats["format"] == "summarize_from_feedback"
    assert rows == [{"prompt": "SUBREDDIT: r/pets\n\nTITLE: help\n\nPOST: my cat ate my homework\n\nTL;DR:",
                     "chosen": " homework", "rejected": " cat ate it", "margin": None}]


def test_summarize_needs_two_summaries(write):
    path = write("jsonl", [{"info": {"post": "p"}, "summaries": [{"text": "a"}], "choice": 0}], name="tldr.jsonl")
    with pytest.raises(DataError, match=r"tldr\.jsonl, line 1: field 'summaries': expected a list of 2 items"):
        load_preferences(path)


def test_identical_chosen_and_rejected(write):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "same", "rejected": "same"}]
    path = write("jsonl", rows, name="prefs.jsonl")
    with pytest.raises(DataError, match=r"prefs\.jsonl, line 2: chosen and rejected responses are identical"):
        load_preferences(path)
    kept = load_preferences(path, identical="drop")
    assert len(kept) == 1 and kept.stats["dropped_identical"] == 1


@pytest.mark.parametrize("row,field", [
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt"),
    ({"prompt": "p", "chosen": {"text": "a"}, "rejected": "b"}, "chosen"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin"),
])
def test_preference_wrong_types_name_the_field(write, row, field):
    path = write("jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row], name="typed.jsonl")
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert f"typed.jsonl, line 2: field '{field}': expected" in str(err.value)


def test_csv_margin_is_parsed_and_blank_is_none(write):
    rows = load_preferences(write("csv", [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2},
                                          {"prompt": "p", "chosen": "a", "rejected": "b", "margin": ""}]))
    assert [r["margin"] for r in rows] == [2.0, None]
