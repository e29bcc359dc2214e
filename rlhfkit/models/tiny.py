"""Tiny models and tokenizers built in-process from a config: nothing is downloaded.

Used by the tests, the quickstart and the benchmarks. Everything here saves and loads in
ordinary Hugging Face format, so the real loading code (`load_policy`, ...) is what reads it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}

# Words, single digits and single punctuation marks: digits split one by one so a tiny
# model can learn arithmetic digit by digit.
_WORD_PATTERN = r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]"


def build_tiny_tokenizer(corpus: Iterable[str], level: str = "word", max_vocab: int | None = None,
                         chat_template: str | None = None):
    """A fast word- or character-level tokenizer whose vocabulary is built from `corpus`.

    level: "word" splits into words, single digits and punctuation and decodes with spaces
    between tokens; "char" makes every character a token and decodes by concatenation.
    Special tokens: <pad> (id 0), <eos> (id 1), <bos> (id 2), <unk> (id 3).
    Returns a `transformers.PreTrainedTokenizerFast` that saves with `save_pretrained`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    pattern = _WORD_PATTERN if level == "word" else r"."
    counts: Counter[str] = Counter()
    regex = re.compile(pattern, re.S)
    for text in corpus:
        counts.update(regex.findall(text))
    words = [w for w, _ in counts.most_common(max_vocab)]
    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words) - set(specials)))}

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    if level == "char":
        tok.decoder = decoders.Fuse()
    else:
        # Whitespace is dropped by the pattern, so word-level decoding rejoins with spaces.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(pattern), behavior="isolated")])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"], eos_token=SPECIAL_TOKENS["eos"],
        bos_token=SPECIAL_TOKENS["bos"], unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      intermediate_size: int | None = None, max_position_embeddings: int = 512,
                      pad_token_id: int = 0, eos_token_id: int = 1, bos_token_id: int = 2):
    """A `LlamaConfig` for a small model (defaults: 2 layers, hidden 64)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
    )


def build_tiny_model(tokenizer, seed: int = 0, **config_kwargs):
    """A randomly initialized `LlamaForCausalLM` sized for `tokenizer` (float32, eval mode off).

    config_kwargs go to `tiny_llama_config` (hidden_size, num_layers, num_heads, ...).
    """
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_classifier(tokenizer, seed: int = 0, num_labels: int = 1, **config_kwargs):
    """A randomly initialized `LlamaForSequenceClassification` (num_labels=1: a reward model / critic).

    config_kwargs go to `tiny_llama_config`, as for `build_tiny_model`.
    """
    import torch
    from transformers import LlamaForSequenceClassification

    config = tiny_llama_config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **config_kwargs)
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config)


def save_tiny(out_dir, corpus: Iterable[str], level: str = "word", seed: int = 0, **config_kwargs) -> str:
    """Build a tiny tokenizer + model and save both to `out_dir` in HF format; returns the path."""
    tokenizer = build_tiny_tokenizer(corpus, level=level)
    model = build_tiny_model(tokenizer, seed=seed, **config_kwargs)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return str(out_dir)
