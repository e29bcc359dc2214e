"""Rendering and tokenization: chat templates, loss-mask alignment, over-long truncate vs drop."""

from __future__ import annotations

import pytest

from rlhfkit.data import (DataError, render_prompt, render_response, tokenize_preferences, tokenize_prompts,
                          tokenize_sft)

EOS = 1


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_render_without_template(tok):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert render_prompt(tok, "two plus two ?") == "two plus two ?"
    assert render_prompt(tok, chat) == "system: be brief\nuser: hi\nassistant:"
    assert render_response(tok, "two plus two ?", " four") == " four"
    assert render_response(tok, chat, "four") == " four"


def test_render_with_template_cuts_the_eos_text(chat_tok):
    assert render_prompt(chat_tok, "hi") == "user : hi\nassistant :"
    assert render_prompt(chat_tok, [{"role": "user", "content": "hi"}]) == "user : hi\nassistant :"
    # The template writes "<eos>\n" after the reply; EOS is added later as an id, never as text.
    assert render_response(chat_tok, "hi", "hello") == " hello"


def test_sft_loss_mask_marks_exactly_the_response_and_eos(tok):
    (example,), stats = tokenize_sft([{"prompt": "what is two plus two ?", "response": "it is four"}], tok, 64)
    prompt, response = ids(tok, "what is two plus two ?"), ids(tok, "it is four")
    assert example["input_ids"] == prompt + response + [EOS]
    assert example["loss_mask"] == [0] * len(prompt) + [1] * (len(response) + 1)
    # Alignment: logits at t-1 predict token t, so labels = input_ids[1:] pair with loss_mask[1:].
    labels, mask = example["input_ids"][1:], example["loss_mask"][1:]
    assert [t for t, m in zip(labels, mask) if m] == response + [EOS]
    assert stats == {"kept": 1, "truncated": 0, "dropped": 0}


def test_sft_with_chat_template(chat_tok):
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "response": "hello"}]
    (example,), _ = tokenize_sft(rows, chat_tok, 64)
    prompt = ids(chat_tok, "user : hi\nassistant :")
    assert example["input_ids"] == prompt + ids(chat_tok, "hello") + [EOS]
    assert sum(example["loss_mask"]) == 2 and example["input_ids"].count(EOS) == 1


def test_sft_overlong_truncate_vs_drop(tok):
    rows = [
        {"prompt": "a b", "response": "c d"},                    # 5 tokens with EOS: fits
        {"prompt": "a b c", "response": "d e f g h"},            # 9: over, prompt fits
        {"prompt": "a b c d e f", "response": "g"},              # 8: over, prompt alone fills max_length
    ]
    kept, stats = tokenize_sft(rows, tok, max_length=6, overlong="truncate")
    assert stats == {"kept": 2, "truncated": 1, "dropped": 1}
    assert kept[1]["input_ids"] == ids(tok, "a b c d e f") and EOS not in kept[1]["input_ids"]
    assert kept[1]["loss_mask"] == [0, 0, 0, 1, 1, 1]
    kept, stats = tokenize_sft(rows, tok, max_length=6, overlong="drop")
    assert stats == {"kept": 1, "truncated": 0, "dropped": 2}
    assert kept[0]["input_ids"] == ids(tok, "a b c d") + [EOS]
    with pytest.raises(ValueError, match="overlong must be one of"):
        tokenize_sft(rows, tok, 6, overlong="cut")


def test_sft_empty_prompt_never_trains_the_first_token(tok):
    (example,), _ = tokenize_sft([{"prompt": "", "response": "a b"}], tok, 16)
    assert example["loss_mask"] == [0, 1, 1]


def test_preferences_tokenized_and_truncated(tok):
    rows = [{"prompt": "a b", "chosen": "c", "rejected": "d e", "margin": 1.5},
            {"prompt": "a b", "chosen": "c d e f", "rejected": "c d e g", "margin": None},  # identical once cut
            {"prompt": "a b", "chosen": "c d e", "rejected": "x", "margin": None}]
    kept, stats = tokenize_preferences(rows, tok, max_length=5, overlong="truncate")
    assert stats == {"kept": 2, "truncated": 1, "dropped": 1}
    first, third = kept
    assert first == {"chosen_ids": ids(tok, "a b c") + [EOS], "rejected_ids": ids(tok, "a b d e") + [EOS],
                     "prompt_length": 2, "margin": 1.5}
    assert third["chosen_ids"] == ids(tok, "a b c d e") and third["rejected_ids"] == ids(tok, "a b x") + [EOS]
    kept, stats = tokenize_preferences(rows, tok, max_length=5, overlong="drop")
    assert stats == {"kept": 1, "truncated": 0, "dropped": 2}


def test_prompts_keep_extras_and_truncate_from_the_left(tok):
    rows = [{"prompt": "a b c d e", "answer": "4"}, {"prompt": "a b", "answer": "5"}]
    kept, stats = tokenize_prompts(rows, tok, max_prompt_length=3)
    assert stats == {"kept": 2, "truncated": 1, "dropped": 0}
    assert kept[0]["prompt_ids"] == ids(tok, "c d e") and kept[0]["prompt_text"] == "c d e"
    assert kept[0]["prompt"] == "a b c d e" and kept[0]["answer"] == "4"
    assert kept[1] == {"prompt": "a b", "answer": "5", "prompt_text": "a b", "prompt_ids": ids(tok, "a b")}
    kept, stats = tokenize_prompts(rows, tok, max_prompt_length=3, overlong="drop")
    assert [r["answer"] for r in kept] == ["5"] and stats["dropped"] == 1


def test_broken_chat_template_names_the_row():
    from rlhfkit.models.tiny import build_tiny_tokenizer
    from tests.data.conftest import CORPUS

    strict = build_tiny_tokenizer(CORPUS, chat_template=(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"))
    rows = [{"prompt": "a", "response": "b"}, {"prompt": [{"role": "system", "content": "a"}], "response": "b"}]
    with pytest.raises(DataError, match="row index 1: the tokenizer's chat template failed"):
        tokenize_sft(rows, strict, 16)
