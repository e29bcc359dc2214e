"""Tiny models of real Hugging Face families, built in-process: nothing is downloaded.

Each `Family` holds what makes a family different for post-training: its special tokens and
their roles, whether the tokenizer prepends BOS, whether a pad token exists, its chat template
(in the family's style, shortened), the EOS ids its generation config lists, tied or untied
embeddings and learned or rotary positions (GPT-2 and OPT learn absolute positions, OPT with an
offset of 2). `save_family(name, out_dir)` trains a small BPE tokenizer on `FAMILY_CORPUS`, builds
a random model from the family's own config class and writes both with `save_pretrained`, so the
folder is read by the real loading code (`load_tokenizer`, `load_causal_lm`, ...).
Sizes: hidden 16-32, one layer, a vocabulary of ~300: seconds per family on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FAMILY_CORPUS = [
    "the cat sat on the mat .", "a dog ran to the park and back .", "what is 1 + 2 ? the answer is 3 .",
    "what is 4 + 5 ? the answer is 9 .", "good review , bad review : positive or negative ?",
    "hello there , how are you today ?", "i am fine , thank you for asking .",
    "tell me a short story about a cat and a dog .", "once upon a time there was a small red bird .",
    "User: say hi\nAssistant: hi", "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
]

# Chat templates in each family's style (shortened from the hub's, same markers and turn ends).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN2_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}")


@dataclass(frozen=True)
class Family:
    """What a model family does with tokens, templates and positions."""

    name: str
    """Short name: gpt2, opt, pythia, llama3, qwen2, mistral, gemma2, phi3."""
    specials: tuple[str, ...]
    """Special tokens in id order: the first gets id 0, the next id 1, ..."""
    bos: str | None
    eos: str
    unk: str | None = None
    pad: str | None = None
    """None: the tokenizer has no pad token (GPT-2, Pythia, Llama 3, Mistral)."""
    prepend_bos: bool = False
    """The tokenizer writes BOS before every text (Llama, Mistral, Gemma, Phi-3, OPT)."""
    chat_template: str | None = None
    end_of_turn: str | None = None
    """The template's turn-end token when it is not EOS (Llama 3 <|eot_id|>, Gemma <end_of_turn>)."""
    generation_eos: tuple[str, ...] = ()
    """EOS tokens listed in generation_config.json (empty: EOS alone)."""
    sentencepiece: bool = False
    """Metaspace ("▁word") pre-tokenizer, as Llama-2-style sentencepiece models; else byte-level BPE."""
    model: dict = field(default_factory=dict)
    """config_class and config keyword arguments of the tiny model."""


def _cfg(cls, **kwargs) -> dict:
    return {"config_class": cls, **kwargs}


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("gpt2", ("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>",
           model=_cfg("GPT2Config", n_embd=16, n_layer=1, n_head=2, n_positions=128, tie_word_embeddings=True)),
    Family("opt", ("<s>", "<pad>", "</s>", "<unk>"), bos="</s>", eos="</s>", unk="<unk>", pad="<pad>",
           prepend_bos=True,
           model=_cfg("OPTConfig", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                      word_embed_proj_dim=16, max_position_embeddings=128, tie_word_embeddings=True)),
    Family("pythia", ("<|endoftext|>", "<|padding|>"), bos="<|endoftext|>", eos="<|endoftext|>",
           unk="<|endoftext|>",
           model=_cfg("GPTNeoXConfig", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, rotary_pct=0.25, max_position_embeddings=128,
                      tie_word_embeddings=False)),
    Family("llama3", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), bos="<|begin_of_text|>", eos="<|end_of_text|>", prepend_bos=True,
           chat_template=LLAMA3_TEMPLATE, end_of_turn="<|eot_id|>", generation_eos=("<|end_of_text|>", "<|eot_id|>"),
           model=_cfg("LlamaConfig", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=128,
                      rope_theta=500000.0, tie_word_embeddings=False)),
    Family("qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None, eos="<|im_end|>",
           pad="<|endoftext|>", chat_template=QWEN2_TEMPLATE, generation_eos=("<|im_end|>", "<|endoftext|>"),
           model=_cfg("Qwen2Config", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=128,
                      tie_word_embeddings=True)),
    Family("mistral", ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), bos="<s>", eos="</s>", unk="<unk>",
           prepend_bos=True, chat_template=MISTRAL_TEMPLATE, sentencepiece=True,
           model=_cfg("MistralConfig", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=128,
                      sliding_window=64, tie_word_embeddings=False)),
    Family("gemma2", ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>",
           eos="<eos>", unk="<unk>", pad="<pad>", prepend_bos=True, chat_template=GEMMA2_TEMPLATE,
           end_of_turn="<end_of_turn>", generation_eos=("<eos>", "<end_of_turn>"), sentencepiece=True,
           model=_cfg("Gemma2Config", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32, max_position_embeddings=128,
                      sliding_window=64, tie_word_embeddings=True)),
    Family("phi3", ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"),
           bos="<s>", eos="<|endoftext|>", unk="<unk>", pad="<|endoftext|>", prepend_bos=True,
           chat_template=PHI3_TEMPLATE, end_of_turn="<|end|>",
           generation_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"), sentencepiece=True,
           model=_cfg("Phi3Config", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=128,
                      original_max_position_embeddings=128, tie_word_embeddings=False)),
]}


def build_family_tokenizer(family: Family | str, corpus=FAMILY_CORPUS, vocab_size: int = 320):
    """A BPE tokenizer trained on `corpus` with the family's special tokens, BOS rule and template.

    Byte-level BPE (GPT-2, OPT, Pythia, Llama 3, Qwen2) or Metaspace BPE (Mistral, Gemma 2, Phi-3).
    Returns a `transformers.PreTrainedTokenizerFast`; padding_side is the library default (right).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[family] if isinstance(family, str) else family
    if fam.sentencepiece:
        tok = Tokenizer(models.BPE(unk_token=fam.unk, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted({c for text in corpus for c in text.replace(" ", "▁")} | {"▁"})
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(fam.specials),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if fam.prepend_bos:
        bos_id = tok.token_to_id(fam.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)])
    elif not fam.sentencepiece:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    roles = {"bos_token": fam.bos, "eos_token": fam.eos, "unk_token": fam.unk, "pad_token": fam.pad}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in roles.items() if v is not None})
    extra = [s for s in fam.specials if s not in roles.values()]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    if fam.chat_template:
        fast.chat_template = fam.chat_template
    return fast


def build_family_model(family: Family | str, tokenizer, seed: int = 0, head: str = "lm", **overrides):
    """A random model of the family's own config class sized for `tokenizer` (float32).

    head: "lm" (`AutoModelForCausalLM`) or "score" (`AutoModelForSequenceClassification`, num_labels=1:
    a reward model). overrides: config keyword arguments (e.g. hidden_size).
    The generation config lists the family's EOS ids (several for Llama 3, Qwen2, Gemma 2, Phi-3).
    """
    import torch
    import transformers

    fam = FAMILIES[family] if isinstance(family, str) else family
    kwargs = {k: v for k, v in fam.model.items() if k != "config_class"}
    kwargs.update(overrides)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = getattr(transformers, fam.model["config_class"])(vocab_size=len(tokenizer), **ids, **kwargs)
    auto = transformers.AutoModelForCausalLM if head == "lm" else transformers.AutoModelForSequenceClassification
    if head != "lm":
        config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in fam.generation_eos] or tokenizer.eos_token_id
    if head == "lm":
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_family(family: Family | str, out_dir, seed: int = 0, head: str = "lm", max_shard_size=None,
                **overrides) -> str:
    """Build a family's tokenizer and tiny model and save both to `out_dir`; returns the path.

    max_shard_size (e.g. "20KB") writes sharded safetensors with an index, as large checkpoints are.
    """
    tokenizer = build_family_tokenizer(family)
    model = build_family_model(family, tokenizer, seed=seed, head=head, **overrides)
    out = Path(out_dir)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), **kwargs)
    tokenizer.save_pretrained(str(out))
    return str(out)
