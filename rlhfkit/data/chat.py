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


def render_prompt(tokenizer, prompt) -> str:
    """The text the policy continues from.

    With a chat template: the template applied to the prompt's messages (a string prompt is
    one user message) with `add_generation_prompt=True`. Without one: a string as is; a chat as
    "role: content" lines followed by "assistant:".
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(as_chat(prompt), tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant:"


def render_response(tokenizer, prompt, response: str) -> str:
    """The text that follows `render_prompt(tokenizer, prompt)` for this response, without EOS.

    With a chat template: what the template adds after the rendered prompt when the response
    is appended as the assistant's turn, cut before a trailing EOS text (EOS is appended later
    as a token id, never as text). Without a template: the response as is after a string
    prompt, and " " + response after a rendered chat (so "assistant: text" reads naturally).
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
    eos = tokenizer.eos_token
    if eos:
        cut = text.rfind(eos)
        if cut >= 0 and not text[cut + len(eos):].strip():
            text = text[:cut]
    return text
