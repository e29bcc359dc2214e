"""Critic and reward model: a causal-LM backbone with a scalar head.

Stored as ordinary `AutoModelForSequenceClassification` checkpoints with `num_labels=1`, so our
folders load anywhere and any such checkpoint loads here. HF's own pooled output is never used:
it finds the sequence end by comparing ids with `pad_token_id`, which is wrong when pad == EOS
or prompts are left-padded. We run the backbone with explicit masks and positions and read the
head where we choose (`last_index`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rlhfkit.algos.kl import last_valid_index
from rlhfkit.algos.masking import position_ids_from_mask
from rlhfkit.models.packing import pack, packed_kwargs, padding_free_mode

HEAD_NAMES = ("score", "classifier", "v_head")
REWARD_STATS_FILE = "rlhfkit_reward.json"


def _find_head(model) -> str:
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if head is None:
            continue
        linear = getattr(head, "original_module", head)  # peft's modules_to_save wrapper
        if isinstance(linear, nn.Linear) and linear.out_features == 1:
            return name
        raise ValueError(f"{type(model).__name__}.{name} is {type(linear).__name__}"
                         f"{f' with {linear.out_features} outputs' if isinstance(linear, nn.Linear) else ''}; "
                         "a scalar head must be one nn.Linear(hidden, 1) (a sequence-classification model "
                         "with num_labels=1)")
    raise ValueError(f"{type(model).__name__} has no scalar head named one of {HEAD_NAMES}; "
                     "load it with AutoModelForSequenceClassification(num_labels=1) first")


class ScalarHeadModel(nn.Module):
    """A sequence-classification model (num_labels=1) used as backbone + per-token scalar head.

    `values` gives one number per position (critic); `score` reads it at each row's last valid
    token (reward model). `reward_mean` / `reward_std` (None until set) are the reward model's
    score statistics on its eval set, saved beside the weights in `rlhfkit_reward.json`.
    """

    is_scalar_head = True  # how lora.py and loading.py recognize it without importing this module

    def __init__(self, model, head_name: str | None = None):
        super().__init__()
        self.model = model  # a *ForSequenceClassification, or a peft model wrapping one
        self.head_name = head_name or _find_head(self.base)
        self.reward_mean: float | None = None
        self.reward_std: float | None = None

    @property
    def base(self):
        """The transformers sequence-classification model (inside any peft wrapper)."""
        from rlhfkit.models.lora import unwrap_peft

        return unwrap_peft(self.model)[0]

    @property
    def config(self):
        return self.base.config

    @property
    def backbone(self):
        return getattr(self.base, self.base.base_model_prefix)

    @property
    def head(self):
        # Looked up each time: peft replaces the attribute with a wrapper when the head is trained.
        return getattr(self.base, self.head_name)

    def gradient_checkpointing_enable(self):
        self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def hidden_states(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """Last hidden states of the backbone: (B, T) ids, mask, positions -> (B, T, H).

        Padding-free (`enable_padding_free`): the backbone runs on packed rows and the states are
        unpacked, zero where attention_mask is 0.
        """
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        mode = padding_free_mode(self)
        if mode is not None:
            packing = pack(input_ids, attention_mask, position_ids)
            return packing.unpack(self.backbone(**packed_kwargs(self.backbone, packing, mode)).last_hidden_state)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        return out.last_hidden_state

    def head_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scalar head on every position: (B, T, H) -> (B, T) float32."""
        return self.head(hidden).squeeze(-1).float()

    def head_scores(self, hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """Scalar head at one position per row: hidden (B, T, H), last_index (B,) -> (B,) float32."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.head(hidden[rows, last_index.to(hidden.device)]).squeeze(-1).float()

    def values(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """V at every position: (B, T) -> (B, T) float32. Column t scores the prefix ending at token t."""
        return self.head_values(self.hidden_states(input_ids, attention_mask, position_ids))

    forward = values

    def score(self, input_ids, attention_mask, position_ids=None, last_index=None) -> torch.Tensor:
        """Reward r(x, y) read at the last valid token of each row: (B, T) -> (B,) float32.

        last_index: (B,) column of each row's last valid token (default: from attention_mask).
        """
        if last_index is None:
            last_index = last_valid_index(attention_mask)
        return self.head_scores(self.hidden_states(input_ids, attention_mask, position_ids), last_index)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """(scores - reward_mean) / reward_std when the statistics are set, else `scores` unchanged. (B,)."""
        if self.reward_mean is None or self.reward_std is None:
            return scores
        return (scores - self.reward_mean) / max(float(self.reward_std), 1e-8)

    def save_pretrained(self, out_dir, tokenizer=None) -> str:
        """Atomically save as a plain sequence-classification checkpoint (LoRA merged) + reward stats."""
        from rlhfkit.models.loading import atomic_dir
        from rlhfkit.models.lora import merged_state_dict, unwrap_peft

        base, is_peft = unwrap_peft(self.model)
        if base.config.pad_token_id is None and tokenizer is not None:
            # HF's own pooled forward refuses batches without it; ours never reads it.
            base.config.pad_token_id = tokenizer.pad_token_id
        with atomic_dir(out_dir) as tmp:
            base.save_pretrained(str(tmp), state_dict=merged_state_dict(self.model) if is_peft else None)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            if self.reward_mean is not None or self.reward_std is not None:
                stats = {"reward_mean": self.reward_mean, "reward_std": self.reward_std}
                (tmp / REWARD_STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        return str(out_dir)


def _load(path, dtype, device, trust_remote_code):
    """(ScalarHeadModel, whether its head was newly created) from a seq-cls or causal-LM folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from rlhfkit.models.loading import loading, resolve_dtype

    with loading(path):
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if is_classifier and config.num_labels != 1:
        raise ValueError(f"{path}: a sequence-classification checkpoint with num_labels={config.num_labels}; "
                         "a reward model or critic needs num_labels=1 (one scalar per sequence)")
    config.num_labels = 1
    # transformers' load report would flag the new head of a causal-LM folder (expected here);
    # we check the missing keys ourselves instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code,
            output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    wrapper = ScalarHeadModel(model)
    missing = sorted(info.get("missing_keys", []))
    fresh = any(key.split(".")[0] == wrapper.head_name for key in missing)
    backbone_missing = [key for key in missing if key.split(".")[0] != wrapper.head_name]
    if backbone_missing:
        raise ValueError(f"{path}: the checkpoint lacks backbone weights {backbone_missing[:5]}"
                         f"{' ...' if len(backbone_missing) > 5 else ''}; is it a causal LM or reward model "
                         f"of architecture {config.model_type}?")
    stats_file = Path(path) / REWARD_STATS_FILE
    if stats_file.is_file():
        try:
            stats = json.loads(stats_file.read_text())
            wrapper.reward_mean, wrapper.reward_std = stats.get("reward_mean"), stats.get("reward_std")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{stats_file}: not a JSON object with reward_mean / reward_std ({err})") from err
    return wrapper.to(device), fresh


def load_scalar_model(path, dtype="float32", device="cpu", trust_remote_code: bool = False) -> ScalarHeadModel:
    """A trained scalar-head model (our folder or any seq-cls checkpoint with num_labels=1)."""
    model, fresh = _load(path, dtype, device, trust_remote_code)
    if fresh:
        raise ValueError(f"{path}: no trained scalar head in this checkpoint (it looks like a causal LM); "
                         "train a reward model first (`rlhfkit rm`) or use load_critic for a fresh head")
    return model


def load_reward_model(path, dtype="float32", device="cpu", trust_remote_code: bool = False) -> ScalarHeadModel:
    """A frozen reward model: eval mode, no parameter requires grad."""
    model = load_scalar_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    return model


def load_critic(path, dtype="float32", device="cpu", trust_remote_code: bool = False,
                zero_head: bool | None = None) -> ScalarHeadModel:
    """A trainable critic from a reward-model folder or a causal-LM (policy) folder.

    From a reward model the trained head is kept (critic initialised from the RM, as in PPO-max,
    Zheng et al. 2023, arXiv:2307.04964). From a causal LM the head is new and zero-initialised,
    so every initial value is 0. zero_head=True zeroes the head in both cases.
    """
    model, fresh = _load(path, dtype, device, trust_remote_code)
    if zero_head or (zero_head is None and fresh):
        with torch.no_grad():
            head = model.head
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    return model
