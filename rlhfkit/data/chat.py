"""Prompt and response text as the model sees it: the chat template when the tokenizer has one.

Without a template a string prompt is used as is and a chat is rendered as plain lines
"role: content", ending with "assistant:" as the cue to reply.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("rlhfkit.data")
_warned: set[str] = set()


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def as_chat(prompt) -> list[dict]:
    """A prompt as a list of messages: a string becomes one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


_SENTINEL = "\u2063rlhfkit-sentinel\u2063"
_PROBES: dict = {}  # (what, id(tokenizer), template, eos, bos, size) -> result: a template renders once per tokenizer


def _probe(what: str, tokenizer, fn):
    key = (what, id(tokenizer), tokenizer.chat_template, tokenizer.eos_token, tokenizer.bos_token, len(tokenizer))
    if key not in _PROBES:
        _PROBES[key] = fn(tokenizer)
    return _PROBES[key]


def template_frame(tokenizer) -> tuple[str, str]:
    """(head, tail): the text the chat template writes before and after one user message's content,
    with the generation prompt. ("", "") without a template or when the template fails on it."""
    return _probe("frame", tokenizer, _template_frame)


def _template_frame(tokenizer) -> tuple[str, str]:
    if not has_chat_template(tokenizer):
        return "", ""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template that needs a system turn, tools, ...: nothing to compare with
        return "", ""
    head, _, tail = text.partition(_SENTINEL)
    return head, tail


def is_rendered(tokenizer, text: str) -> bool:
    """Whether a string prompt already holds the chat template's markup: it ends with the template's
    generation cue (e.g. "<|im_start|>assistant\n") or starts with the BOS text the template writes.
    Applying the template to such a text would render it twice."""
    head, tail = template_frame(tokenizer)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and head.startswith(bos) and text.startswith(bos):
        return True
    return bool(tail.strip()) and text.rstrip().endswith(tail.strip())


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant reply (Llama 3 <|eot_id|>,
    Gemma <end_of_turn>, Qwen <|im_end|>, Mistral </s>), or None (no template, or none written)."""
    return _probe("end", tokenizer, _end_of_turn_id)


def _end_of_turn_id(tokenizer) -> int | None:
    if not has_chat_template(tokenizer):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except Exception:  # a template that needs a system turn, tools, ...
        return None
    tail = text.partition(_SENTINEL)[2].lstrip()
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None


def response_end_id(tokenizer) -> int | None:
    """The id that ends a response in training rows: the template's end of turn when it has one (what a
    chat model emits, and where generation stops), else EOS. Appended as an id, never as text."""
    return end_of_turn_id(tokenizer) or tokenizer.eos_token_id


def render_prompt(tokenizer, prompt) -> str:
    """The text the policy continues from.

    With a chat template: the template applied to the prompt's messages (a string prompt is
    one user message) with `add_generation_prompt=True`; a string that already holds the template's
    markup (`is_rendered`) is used as is, never rendered twice. Without one: a string as is; a chat as
    "role: content" lines followed by "assistant:".
    """
    if has_chat_template(tokenizer):
        if isinstance(prompt, str) and is_rendered(tokenizer, prompt):
            if "rendered" not in _warned:
                _warned.add("rendered")
                logger.warning("a prompt already holds the chat template's markup; it is used as is (the template "
                               "is not applied a second time). Store plain text or messages to silence this.")
            return prompt
        return tokenizer.apply_chat_template(as_chat(prompt), tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


def render_response(tokenizer, prompt, response: str) -> str:
    """The text that follows `render_prompt(tokenizer, prompt)` for this response, without EOS.

    With a chat template: what the template adds after the rendered prompt when the response
    is appended as the assistant's turn, cut before its end-of-turn token (`response_end_id`, e.g.
    Llama 3's <|eot_id|>), or else before a trailing EOS text: the end is appended later as a
    token id, never as text, so training rows end where generation stops. Without a template:
    the response as is after a string prompt, and " " + response after a rendered chat (so
    "assistant: text" reads naturally).
    """
    if not has_chat_template(tokenizer):
        return response if isinstance(prompt, str) else " " + response
    prompt_text = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(as_chat(prompt) + [{"role": "assistant", "content": response}],
                                         tokenize=False)
    if not full.startswith(prompt_text):
        # Some templates rewrite earlier turns once a reply follows; the reply text alone is the
        # closest we can get to what generation would continue with.
        if "prefix" not in _warned:
            _warned.add("prefix")
            logger.warning("chat template: the rendered conversation does not start with the rendered prompt; "
                           "using the raw response text after the prompt")
        return response
    text = full[len(prompt_text):]
    end = response_end_id(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end) if end is not None else None
    if end_text and end_text in text:  # the turn's end and whatever the template writes after it
        return text[:text.find(end_text)]
    eos = tokenizer.eos_token
    if eos:
        cut = text.rfind(eos)
        if cut >= 0 and not text[cut + len(eos):].strip():
            text = text[:cut]
    return text
