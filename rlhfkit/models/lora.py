"""LoRA (Hu et al. 2021, arXiv:2106.09685) through `peft`, for the policy and the critic.

With LoRA the reference policy is the same network with its adapters switched off
(`adapters_disabled`): the frozen base weights are exactly the reference, so no second copy
is kept in memory. Saving merges W + (alpha/r) B A out of place, so the base weights (and
hence the reference) are never touched by a save.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _adapter_host(model):
    """The module that carries the adapters: a `ScalarHeadModel`'s backbone (`.model`), else the model.
    (Recognized by its `is_scalar_head` attribute, so this module needs no import of scalar_head.)"""
    return model.model if getattr(model, "is_scalar_head", False) else model


def unwrap_peft(model):
    """(the transformers model inside, whether `model` is a peft model) for a model or peft wrapper."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model(), True
    return model, False


def apply_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules=None):
    """Wrap `model` with fresh LoRA adapters; only adapter (and scalar head) weights stay trainable.

    model: a causal LM, or a `ScalarHeadModel` (critic / reward model: its head is trained in full).
    target_modules: module names or "all-linear" (the default when None: every linear layer but the
    output layer, as QLoRA recommends, arXiv:2305.14314). B starts at zero, so the wrapped model
    initially computes exactly what `model` did. Returns the peft model (for a `ScalarHeadModel`,
    the same wrapper with its inner model replaced). `model` itself is modified in place.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # optional dependency
        raise ImportError("LoRA needs peft: pip install 'rlhfkit[lora]'") from err
    common = dict(r=r, lora_alpha=alpha, lora_dropout=dropout,
                  target_modules=target_modules if target_modules is not None else "all-linear")
    if getattr(model, "is_scalar_head", False):
        config = LoraConfig(task_type="SEQ_CLS", modules_to_save=[model.head_name], **common)
        model.model = get_peft_model(model.model, config)
        return model
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **common))


def is_lora(model) -> bool:
    """True when `model` (or a `ScalarHeadModel`'s inner model) is a peft model."""
    return unwrap_peft(_adapter_host(model))[1]


@contextmanager
def adapters_disabled(model):
    """Context in which a LoRA `model` computes with its base weights only (the reference policy).

    Raises a ValueError for a model without adapters: silently using the policy as its own
    reference would make every KL term zero.
    """
    inner = _adapter_host(model)
    if not unwrap_peft(inner)[1]:
        raise ValueError("adapters_disabled needs a LoRA (peft) model; for a full fine-tune pass a separate "
                         "reference model (load_reference) instead")
    with inner.disable_adapter():
        yield model


def merged_state_dict(model) -> dict:
    """State dict of the base model with every LoRA delta added, under the base model's own key names.

    model: a peft model. W_merged = W + get_delta_weight (scaling * B A, transposed for
    fan-in-fan-out layers), computed out of place; `modules_to_save` copies replace the originals.
    """
    from peft.tuners.lora import LoraLayer

    base, is_peft = unwrap_peft(model)
    if not is_peft:
        return base.state_dict()
    deltas = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or module.merged:
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
        if any(module.use_dora.get(a, False) for a in adapters):
            raise ValueError(f"{name}: DoRA adapters cannot be merged by this function; merge with peft first")
        if adapters:
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    active = getattr(model, "active_adapter", "default")
    out = {}
    with torch.no_grad():
        for key, value in base.state_dict().items():
            if "lora_" in key or ".original_module." in key:
                continue
            if key in deltas:
                value = value + deltas[key].to(value.dtype)
            key = key.replace(".base_layer.", ".").replace(f".modules_to_save.{active}.", ".")
            out[key] = value
    return out
