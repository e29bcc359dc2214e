"""Data: rows from files or the Hub, normalized prompt / SFT / preference formats, chat
rendering, tokenization with an explicit over-long policy, and collators. See docs/data.md."""

from rlhfkit.data.chat import has_chat_template, render_prompt, render_response
from rlhfkit.data.collate import (collate_packed, collate_preferences, collate_sft, pack_sft, packed_attention_mask,
                                  position_ids_from_mask)
from rlhfkit.data.errors import DataError
from rlhfkit.data.preferences import PREFERENCE_FORMATS, load_preferences
from rlhfkit.data.sft import SFT_FORMATS, load_prompts, load_sft
from rlhfkit.data.sources import Rows, load_rows
from rlhfkit.data.split import split_train_eval
from rlhfkit.data.tokenize import prompt_fields, tokenize_preferences, tokenize_prompts, tokenize_sft

__all__ = [
    "DataError", "Rows", "load_rows", "load_prompts", "load_sft", "load_preferences", "SFT_FORMATS",
    "PREFERENCE_FORMATS", "has_chat_template", "render_prompt", "render_response", "tokenize_sft",
    "tokenize_preferences", "tokenize_prompts", "prompt_fields", "collate_sft", "collate_preferences", "pack_sft", "collate_packed",
    "packed_attention_mask", "position_ids_from_mask", "split_train_eval",
]
