"""Stage 1: supervised fine-tuning on demonstrations (loss on response tokens only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhfkit.config import ConfigError, option
from rlhfkit.trainers.common import sft_token_loss
from rlhfkit.trainers.supervised import (SupervisedConfig, SupervisedStage, begin_stage, load_language_model,
                                         run_supervised, shard_for)


@dataclass(kw_only=True)
class SFTConfig(SupervisedConfig):
    """`rlhfkit sft`: fine-tune a causal LM on prompt -> response demonstrations."""

    model: str = option(help="policy to fine-tune: a local folder or a hub name")
    data: str = option(help="demonstrations: .jsonl/.json/.parquet/.csv, a save_to_disk folder or a hub dataset "
                            "(prompt/response, instruction/input/output, or chat messages)")
    data_format: str | None = option(None, "force the row format instead of detecting it from the fields",
                                     choices=(None, "prompt_response", "alpaca", "messages"))
    packing: bool = option(False, "pack several examples into each row of max_length (no attention across them)")
    lora_r: int = option(0, "LoRA rank (0 = full fine-tuning); needs `pip install peft`")
    lora_alpha: int = option(16, "LoRA alpha")


@torch.no_grad()
def eval_loss(model, examples: list, collate, batch_size: int) -> dict:
    """Token-mean NLL and perplexity of the response tokens of `examples`."""
    if not examples:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples[start:start + batch_size]).items()}
        loss, stats = sft_token_loss(model, batch, 1.0)
        total += float(loss)
        tokens += stats["tokens"]
    model.train(was_training)
    mean = total / max(tokens, 1.0)
    return {"eval/loss": mean, "eval/ppl": math.exp(min(mean, 50.0))}


def train_sft(cfg: SFTConfig) -> dict:
    """Run SFT end to end; returns {"output", "final", eval metrics, data counts}."""
    from rlhfkit.data import collate_sft, load_sft, pack_sft, split_train_eval, tokenize_sft
    from rlhfkit.models import load_causal_lm, save_model
    from rlhfkit.trainers.distributed import barrier

    out_dir, w, device = begin_stage(cfg)
    tokenizer, model = load_language_model(cfg, device)
    shard_for(cfg, w, model)

    rows = load_sft(cfg.data, format=cfg.data_format)
    if cfg.eval_data:
        train_rows, eval_rows = rows, load_sft(cfg.eval_data, format=cfg.data_format)
    else:
        train_rows, eval_rows = split_train_eval(rows, cfg.eval_fraction, seed=cfg.seed)
    train, train_stats = tokenize_sft(train_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    evals, _ = tokenize_sft(eval_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    if not train:
        raise ConfigError(f"{cfg.data}: no training example is left after over-long handling "
                          f"({train_stats}); raise --max-length or use --overlong truncate")
    pad_id = tokenizer.pad_token_id
    if cfg.packing:
        train = pack_sft(train, cfg.max_length)
    collate = (lambda ex: collate_sft(ex, pad_id)) if not cfg.packing else _collate_packed
    stage = SupervisedStage(
        collate=collate, loss=sft_token_loss, count=_count_tokens,
        evaluate=lambda: eval_loss(model, evals, lambda ex: collate_sft(ex, pad_id), cfg.micro_batch_size or cfg.batch_size))
    if w.main:
        print(f"[sft] {len(train)} training rows ({train_stats}), {len(evals)} eval rows")
    metrics = run_supervised(cfg, model, train, stage, out_dir)
    if cfg.fsdp:  # rank 0 saves an unsharded copy
        from rlhfkit.trainers.distributed import full_state_dict
        state = full_state_dict(model)
        if w.main:
            model = load_causal_lm(cfg.model, dtype=cfg.dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
            model.load_state_dict(state)
    final = save_model(model, tokenizer, out_dir / "final") if w.main else out_dir / "final"
    barrier(w)
    return {"output": str(out_dir), "final": str(final), **metrics, **{f"data/{k}": v for k, v in train_stats.items()}}


def _count_tokens(example: dict) -> int:
    # The first token of a row is never predicted, so it never counts (matches `sft_token_loss`).
    return int(sum(example["loss_mask"][1:]))


def _collate_packed(rows):
    from rlhfkit.data import collate_packed
    return collate_packed(rows)
