"""Direct preference optimization: the policy learns from preference pairs without a reward model.

DPO, conservative DPO, IPO and SimPO (`rlhfkit/algos/dpo.py`) on the supervised loop that SFT
and RM share: this module is a collate function, a loss, an evaluation and the reference.

1. load the policy (LoRA adapters optional) and the pairs, in any format `rlhfkit rm` reads;
2. the reference's summed log-probabilities of every chosen and rejected response, computed once
   (the SFT model, or with LoRA the policy with its adapters off) and cached in
   OUTPUT/reference_logps.pt next to the tokenized pairs; SimPO needs no reference;
3. `run_supervised` with `DPOLoss`: one forward of the 2B sequences per micro-batch;
4. evaluation: the same loss and stats on the held-out pairs, and KL to the reference on
   responses sampled for held-out prompts; the final policy is saved as a plain HF model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.algos.dpo import PREFERENCE_LOSSES, PreferenceInputs, preference_loss
from rlhfkit.config import ConfigError, option
from rlhfkit.data.preferences import PREFERENCE_FORMATS
from rlhfkit.trainers.supervised import (SupervisedConfig, SupervisedStage, begin_stage, load_language_model,
                                         run_supervised)

CACHE_NAME = "reference_logps.pt"
CACHE_VERSION = 1


@dataclass(kw_only=True)
class DPOConfig(SupervisedConfig):
    """`rlhfkit dpo`: train a policy directly on (prompt, chosen, rejected) pairs (DPO, IPO, cDPO, SimPO)."""

    model: str = option(help="policy to start from (usually the SFT output folder); also the reference: "
                             "a local folder or a hub name")
    data: str = option(help="preference pairs: prompt/chosen/rejected (strings or chats), HH-RLHF, SHP, WebGPT "
                            "or Summarize-from-Feedback layouts, or rankings of several responses (every ordered "
                            "pair is trained on) (.jsonl/.json/.parquet/.csv/folder/hub)")
    data_format: str | None = option(None, "force the row format instead of detecting it",
                                     choices=(None, *(name for name, _, _ in PREFERENCE_FORMATS), "ranked"))
    loss: str = option("sigmoid", "preference loss: sigmoid (DPO), cdpo (label smoothing), ipo, simpo "
                                  "(reference-free); docs/dpo.md", choices=tuple(PREFERENCE_LOSSES))
    beta: float = option(0.1, "inverse temperature of the implicit reward beta * log(pi / pi_ref); IPO's tau; "
                              "SimPO's reward scale (its paper uses 2-10)")
    label_smoothing: float = option(0.1, "loss=cdpo only: probability in (0, 0.5) that a pair's label is wrong")
    simpo_gamma: float = option(0.5, "loss=simpo only: target margin gamma between the length-normalized rewards")
    lr: float = option(1e-6, "peak learning rate (AdamW); DPO moves far at SFT learning rates")
    lora_r: int = option(0, "LoRA rank (0 = full fine-tuning); with LoRA the reference is the policy with its "
                            "adapters off (no second model); needs `pip install peft`")
    lora_alpha: int = option(16, "LoRA alpha")
    eval_kl_prompts: int = option(32, "held-out prompts answered once at each evaluation to measure eval/kl_to_ref "
                                      "(0: off; never with loss=simpo, which has no reference)")
    eval_max_new_tokens: int = option(64, "longest response sampled for eval/kl_to_ref")

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in PREFERENCE_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(PREFERENCE_LOSSES)}, got {self.loss!r}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0 (try 0.1 for DPO, 2.0 for SimPO), got {self.beta}")
        if self.loss == "cdpo" and not 0 < self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in (0, 0.5) for loss=cdpo (0 is loss=sigmoid), "
                              f"got {self.label_smoothing}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.simpo_gamma < 0:
            raise ConfigError(f"simpo_gamma must be >= 0, got {self.simpo_gamma}")
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.eval_kl_prompts < 0 or self.eval_max_new_tokens < 1:
            raise ConfigError("eval_kl_prompts must be >= 0 and eval_max_new_tokens >= 1")
        if self.fsdp:
            raise ConfigError("rlhfkit dpo does not shard with fsdp yet; use --lora-r to fit a large model")


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each row's response tokens, and their counts.

    batch (from `collate_preferences`): input_ids, attention_mask, position_ids, loss_mask (N, T).
    Returns logps (N,) = sum_t loss_mask[t] log pi(x_t | x_<t), lengths (N,) = response tokens.
    """
    from rlhfkit.algos import logprobs_from_logits, masked_sum

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits  # (N, T, V)
    logprobs = logprobs_from_logits(logits[:, :-1], batch["input_ids"][:, 1:])  # (N, T-1)
    mask = batch["loss_mask"][:, 1:]  # (N, T-1), aligned with the labels
    return masked_sum(logprobs, mask, dim=-1), mask.sum(-1)


class DPOLoss:
    """The registered preference loss on a collated batch of B pairs (rows 0..B-1 chosen, B..2B-1 rejected)."""

    def __init__(self, name: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0):
        self.name, self.beta, self.label_smoothing, self.gamma = name, beta, label_smoothing, gamma

    def __call__(self, model, batch: dict, normalizer: float):
        logps, lengths = sequence_logps(model, batch)  # (2B,)
        n = batch["margin"].shape[0]
        x = PreferenceInputs(logps[:n], logps[n:], batch.get("ref_chosen_logps"), batch.get("ref_rejected_logps"),
                             lengths[:n], lengths[n:], beta=self.beta, label_smoothing=self.label_smoothing,
                             gamma=self.gamma)  # each registered loss reads only its own knobs
        loss, stats = preference_loss(self.name, x, normalizer)
        return loss, {k: float(v) for k, v in stats.items()}


def collate_dpo(examples: list[dict], pad_id: int) -> dict:
    """`collate_preferences` plus ref_chosen_logps, ref_rejected_logps (B,) when the examples carry them."""
    from rlhfkit.data import collate_preferences

    batch = collate_preferences(examples, pad_id)
    if examples and "ref_chosen_logps" in examples[0]:
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
    return batch


# ---------------------------------------------------------------- 2. the reference, once

def cache_key(cfg: DPOConfig, train: list[dict], evals: list[dict]) -> str:
    """sha256 of what the reference log-probabilities depend on.

    The reference (cfg.model: for a local folder its files' names, sizes and modification times;
    otherwise the hub name), dtype, LoRA or not, and every tokenized pair (ids, prompt length) of
    the train and eval splits in order. Any change there recomputes the cache.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "reference": _fingerprint(cfg.model), "dtype": cfg.dtype,
                         "lora": cfg.lora_r > 0, "sizes": [len(train), len(evals)]}).encode())
    for e in [*train, *evals]:
        h.update(json.dumps([e["chosen_ids"], e["rejected_ids"], e["prompt_length"]]).encode())
    return h.hexdigest()


def _fingerprint(name_or_path: str):
    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    return [(p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()]


@torch.no_grad()
def reference_logps(model, examples: list[dict], pad_id: int, batch_size: int) -> torch.Tensor:
    """(N, 2) float32: summed log pi_ref of each example's chosen and rejected response."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_dpo(chunk, pad_id).items()}
        logps, _ = sequence_logps(model, batch)  # (2b,)
        out.append(logps.float().view(2, -1).T.cpu())  # (b, 2): chosen, rejected
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def attach_reference(cfg: DPOConfig, policy, train: list[dict], evals: list[dict], pad_id: int, out_dir: Path,
                     main: bool = True) -> tuple[list[dict], list[dict], str]:
    """The examples with ref_chosen_logps / ref_rejected_logps, from the cache when its key matches.

    Returns (train, evals, "reused" | "computed"). The cache file holds the key, the tokenized
    pairs and the (N, 2) log-probabilities; it is written atomically (rank 0 only).
    """
    key = cache_key(cfg, train, evals)
    path = out_dir / CACHE_NAME
    cached = _read_cache(path)
    if cached is not None and cached.get("key") == key:
        status, logps = "reused", (cached["train"], cached["eval"])
    else:
        status, logps = "computed", compute_reference_logps(cfg, policy, train, evals, pad_id)
        if main:
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            torch.save({"key": key, "train": logps[0], "eval": logps[1], "train_pairs": train, "eval_pairs": evals},
                       tmp)
            os.replace(tmp, path)

    def attach(examples, values):
        return [{**e, "ref_chosen_logps": float(v[0]), "ref_rejected_logps": float(v[1])}
                for e, v in zip(examples, values.tolist())]

    return attach(train, logps[0]), attach(evals, logps[1]), status


def _read_cache(path: Path) -> dict | None:
    """The cache file's contents, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a file from another torch version or damaged by hand: recompute
        print(f"[dpo] ignoring unreadable reference cache {path} ({type(err).__name__}); recomputing it")
        return None


def compute_reference_logps(cfg: DPOConfig, policy, train: list[dict], evals: list[dict], pad_id: int):
    """(train (N, 2), eval (M, 2)) under the reference: the LoRA policy with adapters off, or cfg.model
    loaded frozen for this computation only (it is freed before training starts)."""
    from rlhfkit.models import adapters_disabled, is_lora, load_reference

    batch_size = cfg.micro_batch_size or cfg.batch_size
    if is_lora(policy):
        with adapters_disabled(policy):
            return (reference_logps(policy, train, pad_id, batch_size),
                    reference_logps(policy, evals, pad_id, batch_size))
    device = next(policy.parameters()).device
    reference = load_reference(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    out = reference_logps(reference, train, pad_id, batch_size), reference_logps(reference, evals, pad_id, batch_size)
    del reference
    return out


# ---------------------------------------------------------------- 4. evaluation

@torch.no_grad()
def evaluate_dpo(model, examples: list[dict], collate, batch_size: int, loss: DPOLoss) -> dict:
    """The loss and every stat of `preference_loss`, averaged over the held-out pairs, as eval/<name>."""
    if not examples:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples[start:start + batch_size]).items()}
        _, stats = loss(model, batch, float(len(examples)))
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v
    model.train(was_training)
    return {f"eval/{k}": v for k, v in totals.items()}


@torch.no_grad()
def kl_to_reference(cfg: DPOConfig, policy, tokenizer, prompts: list[dict]) -> dict:
    """eval/kl_to_ref: mean over held-out prompts of sum_t log pi(y_t) - log pi_ref(y_t) (k1, unbiased),
    one response sampled per prompt at temperature 1 with a fixed seed (the training RNG is untouched)."""
    from rlhfkit.models import adapters_disabled, is_lora, load_reference
    from rlhfkit.rollout import GenerationSettings, make_experience

    if not prompts:
        return {}
    device = next(policy.parameters()).device
    ref = dict(ref_context=adapters_disabled) if is_lora(policy) else dict(
        reference=load_reference(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code))
    settings = GenerationSettings(max_new_tokens=cfg.eval_max_new_tokens)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed + 1)
        exp = make_experience(policy, tokenizer, [p["prompt_text"] for p in prompts], settings,
                              prompt_ids=[p["prompt_ids"] for p in prompts], **ref)
    kl = ((exp.logprobs - exp.ref_logprobs) * exp.response_mask).sum(-1)  # (N,)
    return {"eval/kl_to_ref": float(kl.mean())}


def _held_out_prompts(cfg: DPOConfig, rows: list[dict], tokenizer) -> list[dict]:
    """The first cfg.eval_kl_prompts distinct prompts of the eval pairs, tokenized for generation."""
    from rlhfkit.data import tokenize_prompts

    if not cfg.eval_kl_prompts or not PREFERENCE_LOSSES[cfg.loss].needs_reference or not rows:
        return []
    prompts, _ = tokenize_prompts([{"prompt": r["prompt"]} for r in rows], tokenizer, cfg.max_length)
    unique = list({p["prompt_text"]: p for p in prompts}.values())
    return unique[:cfg.eval_kl_prompts]


# ---------------------------------------------------------------- the stage

def train_dpo(cfg: DPOConfig) -> dict:
    """Train the policy end to end; returns {"output", "final", "reference_cache", eval metrics, data counts}."""
    from rlhfkit.data import split_train_eval, tokenize_preferences
    from rlhfkit.data.rankings import load_preference_pairs
    from rlhfkit.models import save_model
    from rlhfkit.trainers.distributed import barrier

    out_dir, w, device = begin_stage(cfg)
    # 1. policy and pairs
    tokenizer, policy = load_language_model(cfg, device)
    rows = load_preference_pairs(cfg.data, format=cfg.data_format)
    if cfg.eval_data:
        train_rows, eval_rows = rows, load_preference_pairs(cfg.eval_data, format=cfg.data_format)
    else:
        train_rows, eval_rows = split_train_eval(rows, cfg.eval_fraction, seed=cfg.seed)
    train, stats = tokenize_preferences(train_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    evals, _ = tokenize_preferences(eval_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    if not train:
        raise ConfigError(f"{cfg.data}: no pair is left after over-long handling ({stats}); raise --max-length")
    pad_id = tokenizer.pad_token_id
    # 2. the reference's log-probabilities, once (SimPO has none)
    cache = "none"
    if PREFERENCE_LOSSES[cfg.loss].needs_reference:
        train, evals, cache = attach_reference(cfg, policy, train, evals, pad_id, out_dir, main=w.main)
        barrier(w)
    # 3. the supervised loop
    loss = DPOLoss(cfg.loss, cfg.beta, cfg.label_smoothing, cfg.simpo_gamma)
    collate = lambda ex: collate_dpo(ex, pad_id)  # noqa: E731
    prompts = _held_out_prompts(cfg, eval_rows, tokenizer)
    eval_bs = cfg.micro_batch_size or cfg.batch_size

    def evaluate():  # 4.
        return {**evaluate_dpo(policy, evals, collate, eval_bs, loss), **kl_to_reference(cfg, policy, tokenizer, prompts)}

    stage = SupervisedStage(collate=collate, loss=loss, count=lambda e: 1, evaluate=evaluate)
    if w.main:
        print(f"[dpo] loss={cfg.loss} beta={cfg.beta}: {len(train)} training pairs ({stats}), {len(evals)} eval "
              f"pairs; reference log-probabilities: {cache}" + (f" ({out_dir / CACHE_NAME})" if cache != "none" else ""))
    metrics = run_supervised(cfg, policy, train, stage, out_dir)
    final = save_model(policy, tokenizer, out_dir / "final") if w.main else out_dir / "final"
    barrier(w)
    return {"output": str(out_dir), "final": str(final), "reference_cache": cache, **metrics,
            **{f"data/{k}": v for k, v in stats.items()}}
