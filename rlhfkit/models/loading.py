"""Load tokenizers and causal LMs from a local folder or a hub name; save them atomically.

Everything downstream uses explicit attention masks and position ids, so a tokenizer without a
pad token can safely reuse EOS as pad: no code compares token ids with `pad_token_id`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_dtype(dtype):
    """"float32" | "bfloat16" | "float16" | "auto" | torch.dtype -> what `from_pretrained(dtype=...)` takes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or a torch.dtype), got {dtype!r}")
    return DTYPES[dtype]


@contextmanager
def loading(name_or_path, what: str = "model"):
    """Turn transformers' OSError for a missing folder / unreachable hub name into a ConfigError
    that names the path and says what to do (no traceback through the hub client)."""
    from rlhfkit.errors import ConfigError

    try:
        yield
    except (OSError, ValueError) as err:  # ValueError: a folder without a usable tokenizer file
        if Path(str(name_or_path)).exists():
            hint = "the folder exists but holds no loadable checkpoint (config.json and weights, as written by " \
                   "save_pretrained or rlhfkit)"
        else:
            hint = "no such local folder, and as a hub name it could not be fetched (offline, a typo, or a " \
                   "private model without a token)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{name_or_path}: cannot load the {what}: {hint}. ({first})") from None


def load_tokenizer(name_or_path, trust_remote_code: bool = False):
    """`AutoTokenizer` with left padding (for generation) and a pad token.

    When the tokenizer has no pad token, EOS (else UNK, else BOS) is reused as pad: safe because
    every mask downstream is explicit. No new token is added, so the model's embeddings need no resize.
    """
    from transformers import AutoTokenizer

    with loading(name_or_path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        for name in ("eos_token", "unk_token", "bos_token"):
            if getattr(tokenizer, name) is not None:
                tokenizer.pad_token = getattr(tokenizer, name)
                break
        else:
            raise ValueError(f"{name_or_path}: the tokenizer has no pad, eos, unk or bos token to pad with; "
                             "set one with `tokenizer.pad_token = ...` (and resize the model's embeddings if new)")
    return tokenizer


def load_causal_lm(name_or_path, dtype="float32", device="cpu", trust_remote_code: bool = False):
    """`AutoModelForCausalLM` in `dtype` on `device` (eval mode, as `from_pretrained` returns it)."""
    from transformers import AutoModelForCausalLM

    with loading(name_or_path):
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=resolve_dtype(dtype),
                                                     trust_remote_code=trust_remote_code)
    return model.to(device)


def check_vocab_fits(model, tokenizer, name_or_path="the model") -> None:
    """ConfigError when the tokenizer has ids past the model's input embeddings.

    Happens when tokens were added to a tokenizer without `model.resize_token_embeddings`: the first
    such id would fail deep inside generate (an index error on CPU, a device assert on GPU).
    """
    from rlhfkit.config import ConfigError
    from rlhfkit.models.lora import unwrap_peft

    base = unwrap_peft(model)[0]
    embeddings = getattr(base, "get_input_embeddings", lambda: None)()
    if embeddings is None or getattr(embeddings, "weight", None) is None:
        return
    rows = embeddings.weight.shape[0]
    if len(tokenizer) > rows:
        raise ConfigError(f"{name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                          f"{rows}; tokens were added without resizing the model. Call model.resize_token_embeddings"
                          f"(len(tokenizer)) and save it, or use the tokenizer the model was trained with")


def freeze(model):
    """Eval mode and requires_grad False on every parameter; returns `model`."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_reference(name_or_path, dtype="float32", device="cpu", trust_remote_code: bool = False):
    """A frozen copy of a causal LM: eval mode, no parameter requires grad."""
    return freeze(load_causal_lm(name_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code))


@contextmanager
def atomic_dir(out_dir):
    """Yields a temporary sibling folder; on success it replaces `out_dir` by renames.

    A crash while writing leaves the previous `out_dir` intact (only the temp folder is left over).
    Replacing an existing folder takes two renames, so there is a moment without `out_dir`.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model(model, tokenizer, out_dir) -> str:
    """Save a policy (a LoRA model is saved merged) and its tokenizer in plain HF format, atomically.

    The folder loads back with `load_causal_lm` / `AutoModelForCausalLM` without peft. A
    `ScalarHeadModel` is saved with its own `save_pretrained` (reward statistics included).
    Returns the folder as a string.
    """
    from rlhfkit.models.lora import merged_state_dict, unwrap_peft

    if getattr(model, "is_scalar_head", False):  # a ScalarHeadModel saves itself
        return model.save_pretrained(out_dir, tokenizer=tokenizer)
    base, is_peft = unwrap_peft(model)
    with atomic_dir(out_dir) as tmp:
        state_dict = merged_state_dict(model) if is_peft else None
        base.save_pretrained(str(tmp), state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return str(out_dir)


def is_sharded(module) -> bool:
    """Whether `module`'s weights are FSDP2-sharded (DTensors): each rank then holds a slice and every
    forward gathers them, so ranks must run the same forwards (generation: `synced_gpus`)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())
