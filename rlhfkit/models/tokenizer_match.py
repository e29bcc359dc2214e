"""When may two models share token ids? Comparing a policy's tokenizer with a reward model's or critic's.

Two tokenizers are "the same" for rlhfkit when a text becomes the same ids under both and the ids
mean the same tokens: same vocabulary (token -> id, added tokens included), same BOS / EOS / UNK
ids, same additional special tokens, same chat template, and the same ids for a probe text with
special tokens (this catches a different BOS rule, normalizer or pre-tokenizer over one vocabulary).
The pad token is left out: every mask is explicit, so which id fills padding never matters.
"""

from __future__ import annotations

from pathlib import Path

_PROBE = "Hello world!  It's 2024: 3.14 apples,\n\ttabs and UPPER case."


def _vocab(tok) -> dict:
    return tok.get_vocab()


def vocabulary_differences(a, b) -> list[str]:
    """What makes the token ids of `a` and `b` mean different things (empty: they mean the same)."""
    out = []
    va, vb = _vocab(a), _vocab(b)
    if va != vb:
        shared = sum(1 for t, i in va.items() if vb.get(t) == i)
        out.append(f"vocabularies differ ({len(va)} vs {len(vb)} tokens, {shared} with the same id)")
    for role in ("bos_token_id", "eos_token_id", "unk_token_id"):
        if getattr(a, role, None) != getattr(b, role, None):
            out.append(f"{role.replace('_id', '')} differs ({getattr(a, role, None)} vs {getattr(b, role, None)})")
    return out


def tokenizer_differences(a, b) -> list[str]:
    """Why `a` and `b` are not interchangeable for scoring (empty: reuse the ids). See the module docstring."""
    if a is b:
        return []
    out = vocabulary_differences(a, b)
    if out:
        return out
    extra_a = sorted(getattr(a, "additional_special_tokens", None) or [])
    extra_b = sorted(getattr(b, "additional_special_tokens", None) or [])
    if extra_a != extra_b:
        out.append("additional special tokens differ")
    if (getattr(a, "chat_template", None) or None) != (getattr(b, "chat_template", None) or None):
        out.append("chat templates differ")
    if a(_PROBE)["input_ids"] != b(_PROBE)["input_ids"]:
        out.append("the same text becomes different ids (BOS rule, normalizer or pre-tokenizer)")
    return out


def same_tokenizer(a, b) -> bool:
    """True when a reward model may read the policy's token ids as they are."""
    return not tokenizer_differences(a, b)


def check_critic_base(critic_path, policy_tokenizer, trust_remote_code: bool = False) -> None:
    """Refuse to initialise a critic from a model that reads another vocabulary than the policy's.

    A critic scores the policy's own token ids (one value per response token), so its embeddings
    must mean the same tokens. Compares the tokenizer saved in `critic_path` (or, without one, the
    config's vocab_size) with the policy's; raises `ConfigError` saying what to pass instead.
    """
    from transformers import AutoConfig

    from rlhfkit.config import ConfigError
    from rlhfkit.models.loading import load_tokenizer

    fix = ("A critic reads the policy's token ids. Pass --critic with a folder that uses the policy's tokenizer "
           "(for example the policy itself, --critic <policy folder>, for a critic with a fresh head), or train "
           "a reward model on the policy's base and initialise the critic from that")
    path = Path(str(critic_path))
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                           "tokenizer.model"))
    if has_tokenizer or not path.exists():
        try:
            other = load_tokenizer(critic_path, trust_remote_code=trust_remote_code)
        except (ConfigError, ValueError):
            other = None
        if other is not None:
            diffs = vocabulary_differences(policy_tokenizer, other)
            if diffs:
                raise ConfigError(f"{critic_path}: cannot initialise the critic from this model: {'; '.join(diffs)} "
                                  f"between the policy's tokenizer and this one. {fix}.")
            return
    try:
        config = AutoConfig.from_pretrained(str(critic_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return  # nothing to compare with; loading the critic reports a missing folder itself
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    if vocab is not None and vocab < len(policy_tokenizer):
        raise ConfigError(f"{critic_path}: cannot initialise the critic from this model: it embeds {vocab} tokens, "
                          f"the policy's tokenizer has {len(policy_tokenizer)}. {fix}.")
