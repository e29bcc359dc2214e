"""Stage 2: a reward model from preference pairs (Bradley-Terry), with an optional LM loss."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, option, save_config
from rlhfkit.trainers.supervised import SupervisedConfig, SupervisedStage, run_supervised, shard_for


@dataclass(kw_only=True)
class RMConfig(SupervisedConfig):
    """`rlhfkit rm`: train a scalar reward model on (prompt, chosen, rejected) pairs."""

    model: str = option(help="backbone to start from (usually the SFT output folder): local folder or hub name")
    data: str = option(help="preference pairs: prompt/chosen/rejected, HH-RLHF, SHP, WebGPT or "
                            "Summarize-from-Feedback layouts (.jsonl/.json/.parquet/.csv/folder/hub)")
    data_format: str | None = option(None, "force the row format instead of detecting it",
                                     choices=(None, "prompt_chosen_rejected", "hh_rlhf", "shp", "webgpt",
                                              "summarize_from_feedback"))
    use_margin: bool = option(True, "subtract the per-pair `margin` field inside the sigmoid when present")
    lm_coef: float = option(0.0, "weight of the LM loss on the chosen response (MOSS-RLHF imitation term); 0 = off")
    lr: float = option(1e-5, "peak learning rate (AdamW)")

    def __post_init__(self):
        super().__post_init__()
        if self.lm_coef < 0:
            raise ConfigError("lm_coef must be >= 0")


class PairLoss:
    """Bradley-Terry loss on a collated batch of B pairs (+ lm_coef * NLL of the chosen responses).

    Called with a ModuleDict holding "model" (the scalar-head reward model) and, when lm_coef > 0,
    "lm_head" (a trainable copy of the backbone's LM head).
    """

    def __init__(self, use_margin: bool, lm_coef: float = 0.0):
        self.use_margin, self.lm_coef = use_margin, lm_coef

    def __call__(self, modules, batch: dict, normalizer: float):
        from rlhfkit.algos import logprobs_from_logits, pairwise_reward_loss

        model = modules["model"]

        n = batch["margin"].shape[0]
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])  # (2B, T, H)
        scores = model.head_scores(hidden, batch["last_index"])  # (2B,)
        chosen, rejected = scores[:n], scores[n:]
        margin = batch["margin"] if self.use_margin else None
        pair_sum = pairwise_reward_loss(chosen, rejected, margin=margin) * n
        loss = pair_sum / normalizer
        stats = {"loss": float(pair_sum.detach()) / normalizer,
                 "accuracy": float((chosen > rejected).float().sum()) / normalizer}
        if self.lm_coef > 0:
            # Imitation term on the chosen responses (MOSS-RLHF): token-mean NLL within the micro-batch.
            logits = modules["lm_head"](hidden[:n, :-1])  # (B, T-1, V)
            logprobs = logprobs_from_logits(logits, batch["input_ids"][:n, 1:])
            mask = batch["chosen_loss_mask"][:, 1:].to(logprobs.dtype)
            nll = -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)
            loss = loss + self.lm_coef * nll * (n / normalizer)
            stats["lm_loss"] = float(nll.detach()) * n / normalizer
        return loss, stats


@torch.no_grad()
def evaluate_pairs(model, examples: list, collate, batch_size: int, use_margin: bool) -> dict:
    """Held-out loss, accuracy, mean margin r_c - r_r, and the mean/std of all scores."""
    from rlhfkit.algos import pairwise_reward_loss

    if not examples:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen_all, rejected_all, loss_sum = [], [], 0.0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples[start:start + batch_size]).items()}
        n = batch["margin"].shape[0]
        scores = model.score(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["last_index"])
        chosen_all.append(scores[:n])
        rejected_all.append(scores[n:])
        loss_sum += float(pairwise_reward_loss(scores[:n], scores[n:], batch["margin"] if use_margin else None)) * n
    model.train(was_training)
    chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)
    both = torch.cat([chosen, rejected])
    return {"eval/loss": loss_sum / len(chosen), "eval/accuracy": float((chosen > rejected).float().mean()),
            "eval/margin_mean": float((chosen - rejected).mean()), "eval/score_mean": float(both.mean()),
            "eval/score_std": float(both.std()) if both.numel() > 1 else 0.0}


def train_rm(cfg: RMConfig) -> dict:
    """Train the reward model end to end; returns {"output", "final", eval metrics}."""
    from rlhfkit.data import collate_preferences, load_preferences, split_train_eval, tokenize_preferences
    from rlhfkit.models import load_critic, load_tokenizer
    from rlhfkit.trainers.common import set_seed
    from rlhfkit.trainers.distributed import barrier, check_fsdp, init_distributed

    out_dir = Path(cfg.output)
    w, device = init_distributed(cfg.device)
    check_fsdp(cfg, w)
    if w.main:
        save_config(cfg, out_dir)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    # A scalar head on the backbone, zero-initialised: every pair starts at loss log 2.
    model = load_critic(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    lm_head = _lm_head(cfg, device) if cfg.lm_coef > 0 else None
    shard_for(cfg, w, model, lm_head)

    rows = load_preferences(cfg.data, format=cfg.data_format)
    if cfg.eval_data:
        train_rows, eval_rows = rows, load_preferences(cfg.eval_data, format=cfg.data_format)
    else:
        train_rows, eval_rows = split_train_eval(rows, cfg.eval_fraction, seed=cfg.seed)
    train, stats = tokenize_preferences(train_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    evals, _ = tokenize_preferences(eval_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    if not train:
        raise ConfigError(f"{cfg.data}: no pair is left after over-long handling ({stats}); raise --max-length")
    pad_id = tokenizer.pad_token_id
    collate = lambda ex: collate_preferences(ex, pad_id)  # noqa: E731
    eval_bs = cfg.micro_batch_size or cfg.batch_size
    stage = SupervisedStage(collate=collate, loss=PairLoss(cfg.use_margin, cfg.lm_coef), count=lambda e: 1,
                            evaluate=lambda: evaluate_pairs(model, evals, collate, eval_bs, cfg.use_margin))
    trainable = torch.nn.ModuleDict({"model": model, **({"lm_head": lm_head} if lm_head is not None else {})})
    if w.main:
        print(f"[rm] {len(train)} training pairs ({stats}), {len(evals)} eval pairs")
    metrics = run_supervised(cfg, trainable, train, stage, out_dir)
    # Score statistics on the eval set travel with the model so RL can normalize rewards.
    model.reward_mean = metrics.get("eval/score_mean", 0.0)
    model.reward_std = metrics.get("eval/score_std", 1.0)
    final = out_dir / "final"
    if cfg.fsdp:  # rank 0 saves an unsharded copy
        from rlhfkit.trainers.distributed import full_state_dict
        state, stats_ = full_state_dict(model), (model.reward_mean, model.reward_std)
        if w.main:
            model = load_critic(cfg.model, dtype=cfg.dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
            model.load_state_dict(state)
            model.reward_mean, model.reward_std = stats_
    if w.main:
        model.save_pretrained(final, tokenizer=tokenizer)
    barrier(w)
    return {"output": str(out_dir), "final": str(final), **metrics, **{f"data/{k}": v for k, v in stats.items()}}


def _lm_head(cfg: RMConfig, device):
    """A trainable copy of the backbone's LM head, used only for the imitation loss (not saved)."""
    from rlhfkit.models import load_causal_lm

    lm = load_causal_lm(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    head = lm.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    return head
