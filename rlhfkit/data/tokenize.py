"""Rows -> token ids with an explicit over-long policy, and counts of what the policy did.

Prompt and response are rendered (`chat.py`) and tokenized separately, then concatenated:
the prompt / response boundary is exact, as it is at generation time, and the response's end is
appended as a token id: the chat template's end-of-turn token when it has one (Llama 3 <|eot_id|>,
Gemma <end_of_turn>: where a chat model stops), else EOS (`chat.response_end_id`). Prompts get
the tokenizer's special tokens (e.g. BOS) only when there is no chat template, since a template
writes them itself.

Over-long policy (`overlong`), always counted in the returned stats {"kept", "truncated", "dropped"}
("kept" includes the truncated rows):
  "truncate": SFT / preference rows keep the prompt and cut the end of the response (its EOS
    goes too, so the model is not taught to stop there); a row whose prompt alone fills
    `max_length` is dropped. Prompts for generation keep their last `max_prompt_length`
    tokens (the end holds the question and the generation cue).
  "drop": an over-long row is skipped.
"""

from __future__ import annotations

from rlhfkit.data.chat import has_chat_template, render_prompt, render_response, response_end_id
from rlhfkit.data.errors import DataError

OVERLONG_POLICIES = ("truncate", "drop")


def _check_args(tokenizer, max_length: int, overlong: str, need_eos: bool = True) -> None:
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    if need_eos and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (tokenizer.eos_token = ...) before tokenizing.")


def _render(fn, tokenizer, i: int, *args) -> str:
    try:
        return fn(tokenizer, *args)
    except Exception as err:  # jinja errors from a chat template (e.g. roles must alternate)
        raise DataError(f"row index {i}: the tokenizer's chat template failed on this row "
                        f"({type(err).__name__}: {err}). Check the roles and order of its messages.") from None


def encode_prompts(tokenizer, prompts: list) -> tuple[list[str], list[list[int]]]:
    """Rendered prompt texts and their token ids (special tokens only without a chat template)."""
    texts = [_render(render_prompt, tokenizer, i, p) for i, p in enumerate(prompts)]
    if not texts:
        return [], []
    ids = tokenizer(texts, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    return texts, [list(x) for x in ids]


def encode_responses(tokenizer, prompts: list, responses: list[str]) -> list[list[int]]:
    """Token ids of each rendered response (no special tokens, no EOS)."""
    texts = [_render(render_response, tokenizer, i, p, r) for i, (p, r) in enumerate(zip(prompts, responses))]
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, overlong: str = "truncate"):
    """SFT rows -> ([{"input_ids": list[int], "loss_mask": list[int]}], stats).

    input_ids = prompt ids + response ids + [eos]; loss_mask[t] = 1 where input_ids[t] is a
    response token (EOS included) the model must predict, 0 on the prompt. loss_mask[0] is
    always 0: the first token has nothing before it to be predicted from.
    Plain-text rows ({"text": str}, the `text` format) have no prompt: the text tokenized as is
    (with the tokenizer's BOS, no chat template) + [eos], every token after the first trained on.
    stats: {"kept", "truncated", "dropped"}.
    """
    _check_args(tokenizer, max_length, overlong)
    if rows and "text" in rows[0]:
        pieces = tokenizer([r["text"] for r in rows])["input_ids"]
        return _examples([[]] * len(pieces), pieces, tokenizer.eos_token_id, max_length, overlong)
    prompts = [r["prompt"] for r in rows]
    _, prompt_ids = encode_prompts(tokenizer, prompts)
    response_ids = encode_responses(tokenizer, prompts, [r["response"] for r in rows])
    # the template's end of turn, else EOS (plain text above ends with EOS: it is no chat turn)
    return _examples(prompt_ids, response_ids, response_end_id(tokenizer), max_length, overlong)


def _examples(prompt_ids, response_ids, eos: int, max_length: int, overlong: str):
    examples, stats = [], {"kept": 0, "truncated": 0, "dropped": 0}
    for p, r in zip(prompt_ids, response_ids):
        ids = p + r + [eos]
        mask = [0] * len(p) + [1] * (len(r) + 1)
        if len(ids) > max_length:
            if overlong == "drop" or len(p) >= max_length:
                stats["dropped"] += 1
                continue
            ids, mask = ids[:max_length], mask[:max_length]
            stats["truncated"] += 1
        mask[0] = 0
        examples.append({"input_ids": ids, "loss_mask": mask})
    stats["kept"] = len(examples)
    return examples, stats


def tokenize_preferences(rows: list[dict], tokenizer, max_length: int, overlong: str = "truncate"):
    """Preference rows -> ([{"chosen_ids", "rejected_ids", "prompt_length", "margin"}], stats).

    chosen_ids / rejected_ids = prompt ids + response ids + [eos] (list[int]); prompt_length is
    the shared prompt's length (the first response token is at that index); margin as loaded.
    A pair whose two id lists are equal (after truncation, or because the tokenizer maps both
    texts to the same ids) carries no preference and is dropped, counted in "dropped".
    """
    _check_args(tokenizer, max_length, overlong)
    prompts = [r["prompt"] for r in rows]
    _, prompt_ids = encode_prompts(tokenizer, prompts)
    chosen_ids = encode_responses(tokenizer, prompts, [r["chosen"] for r in rows])
    rejected_ids = encode_responses(tokenizer, prompts, [r["rejected"] for r in rows])
    eos = response_end_id(tokenizer)  # the template's end of turn, else EOS
    examples, stats = [], {"kept": 0, "truncated": 0, "dropped": 0}
    for row, p, c, r in zip(rows, prompt_ids, chosen_ids, rejected_ids):
        chosen, rejected = p + c + [eos], p + r + [eos]
        cut = max(len(chosen), len(rejected)) > max_length
        if cut and (overlong == "drop" or len(p) >= max_length):
            stats["dropped"] += 1
            continue
        chosen, rejected = chosen[:max_length], rejected[:max_length]
        if chosen == rejected:
            stats["dropped"] += 1
            continue
        stats["truncated"] += cut
        examples.append({"chosen_ids": chosen, "rejected_ids": rejected, "prompt_length": len(p),
                         "margin": row.get("margin")})
    stats["kept"] = len(examples)
    return examples, stats


def tokenize_prompts(rows: list[dict], tokenizer, max_prompt_length: int, overlong: str = "truncate"):
    """Prompt rows -> ([{"prompt", "prompt_text", "prompt_ids", **extras}], stats).

    prompt: as loaded (str or messages); prompt_text: the rendered text (decoded from the kept
    ids when truncated); prompt_ids: list[int]; extras: the row's other fields, unchanged.
    Truncation keeps the last `max_prompt_length` tokens.
    """
    _check_args(tokenizer, max_prompt_length, overlong, need_eos=False)
    texts, prompt_ids = encode_prompts(tokenizer, [r["prompt"] for r in rows])
    examples, stats = [], {"kept": 0, "truncated": 0, "dropped": 0}
    for row, text, ids in zip(rows, texts, prompt_ids):
        if len(ids) > max_prompt_length:
            if overlong == "drop":
                stats["dropped"] += 1
                continue
            ids = ids[-max_prompt_length:]
            text = tokenizer.decode(ids, skip_special_tokens=False)
            stats["truncated"] += 1
        examples.append({**row, "prompt_text": text, "prompt_ids": ids})
    stats["kept"] = len(examples)
    return examples, stats


def prompt_fields(examples: list[dict]) -> dict[str, list]:
    """The extra fields of tokenized prompt rows (e.g. `answer`) as lists, one value per row, for
    reward functions. Rows without a field get None."""
    skip = {"prompt", "prompt_text", "prompt_ids"}
    keys = sorted({k for e in examples for k in e if k not in skip})
    return {k: [e.get(k) for e in examples] for k in keys}
