"""Stage 2: a reward model from preference pairs or rankings (Bradley-Terry), with an optional LM loss."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, option
from rlhfkit.trainers.supervised import (SupervisedConfig, SupervisedStage, begin_stage, run_supervised,
                                         shard_for)


def _appended(f: dataclasses.Field) -> dataclasses.Field:
    """The field with a repeatable flag (`--data a.jsonl:0.7 --data b.jsonl:0.3`)."""
    return dataclasses.field(default=f.default, metadata={**f.metadata, "append": True})


@dataclass(kw_only=True)
class RMConfig(SupervisedConfig):
    """`rlhfkit rm`: train a scalar reward model on preference pairs or rankings of K responses."""

    model: str = option(help="backbone to start from (usually the SFT output folder): local folder or hub name")
    data: tuple[str, ...] = _appended(option(
        help="preference data: pairs (prompt/chosen/rejected, HH-RLHF, SHP, WebGPT, Summarize-from-Feedback) or "
             "rankings (prompt, responses, ranking|scores); .jsonl/.json/.parquet/.csv/folder/hub. Repeat the "
             "flag (or give a YAML list) to mix files, each optionally weighted as FILE:WEIGHT"))
    data_format: str | None = option(None, "force the row format instead of detecting it",
                                     choices=(None, "prompt_chosen_rejected", "hh_rlhf", "shp", "webgpt",
                                              "summarize_from_feedback", "ranked"))
    use_margin: bool = option(True, "subtract the per-pair `margin` field inside the sigmoid when present")
    label_smoothing: float = option(0.0, "conservative Bradley-Terry loss for noisy labels: "
                                         "-(1-e) log s(d) - e log s(-d), e in [0, 0.5); 0 = off")
    group_by: str | None = option(None, "a row field (e.g. category); held-out accuracy, margin, loss and count "
                                        "are also reported per value. 'source_file' = the data file (the default "
                                        "when several files are mixed)")
    lm_coef: float = option(0.0, "weight of the LM loss on the best response (MOSS-RLHF imitation term); 0 = off")
    lr: float = option(1e-5, "peak learning rate (AdamW)")

    def __post_init__(self):
        super().__post_init__()
        from rlhfkit.data.mixing import parse_data_spec

        self.data = (self.data,) if isinstance(self.data, str) else tuple(self.data)
        if not self.data:
            raise ConfigError("data: give at least one preference file")
        for spec in self.data:
            try:
                parse_data_spec(spec)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if self.lm_coef < 0:
            raise ConfigError("lm_coef must be >= 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5) (0 = off; 0.05-0.2 for noisy labels), "
                              f"got {self.label_smoothing}")


class RankLoss:
    """Ranking loss on a collated batch of B prompts with K_b responses each (+ lm_coef * NLL of the best).

    Pairs are prompts with K = 2, so this is the Bradley-Terry loss of Ouyang et al. (2022, eq. 1).
    Called with a ModuleDict holding "model" (the scalar-head reward model) and, when lm_coef > 0,
    "lm_head" (a trainable copy of the backbone's LM head).
    """

    def __init__(self, use_margin: bool, lm_coef: float = 0.0, label_smoothing: float = 0.0):
        self.use_margin, self.lm_coef, self.label_smoothing = use_margin, lm_coef, label_smoothing

    def __call__(self, modules, batch: dict, normalizer: float):
        from rlhfkit.algos import logprobs_from_logits, ranking_loss

        model = modules["model"]
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["position_ids"])  # (N, T, H)
        flat = model.head_scores(hidden, batch["last_index"])  # (N,)
        scores = flat.new_zeros(batch["valid"].shape).masked_scatter(batch["valid"], flat)  # (B, K)
        margin = batch["margin"] if self.use_margin else None
        mean, st = ranking_loss(scores, batch["ranks"], batch["valid"], margin, self.label_smoothing)
        # Each prompt counts once: the sum of per-prompt means, over the whole batch's prompts.
        loss = mean * (st["pairs"] > 0).sum() / normalizer
        stats = {"loss": float(st["row_loss"].sum()) / normalizer,
                 "accuracy": float((st["correct"] / st["pairs"].clamp(min=1)).sum()) / normalizer,
                 "ordering_accuracy": float(st["ordered"].sum()) / normalizer}
        if self.lm_coef > 0:
            # Imitation term on the best responses (MOSS-RLHF): token-mean NLL within the micro-batch.
            n, best = len(batch["best"]), batch["best"]
            logits = modules["lm_head"](hidden[best, :-1])  # (B, T-1, V)
            logprobs = logprobs_from_logits(logits, batch["input_ids"][best, 1:])
            mask = batch["best_loss_mask"][:, 1:].to(logprobs.dtype)
            nll = -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)
            loss = loss + self.lm_coef * nll * (n / normalizer)
            stats["lm_loss"] = float(nll.detach()) * n / normalizer
        return loss, stats


@torch.no_grad()
def evaluate_rankings(model, examples: list, collate, batch_size: int, use_margin: bool,
                      label_smoothing: float = 0.0) -> dict:
    """Held-out loss, accuracy (per pair), ordering accuracy (per prompt), mean margin r_better - r_worse,
    and the mean/std of all scores; with groups, eval/{accuracy,margin_mean,loss,count}/<group> too."""
    from rlhfkit.algos import ranking_loss, ranking_pairs

    if not examples:
        return {}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_row, all_scores = [], []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) if torch.is_tensor(v) else v
                 for k, v in collate(examples[start:start + batch_size]).items()}
        flat = model.score(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["last_index"])
        scores = flat.new_zeros(batch["valid"].shape).masked_scatter(batch["valid"], flat.float())  # (B, K)
        margin = batch["margin"] if use_margin else None
        _, st = ranking_loss(scores, batch["ranks"], batch["valid"], margin, label_smoothing)
        better = ranking_pairs(batch["ranks"], batch["valid"])  # (B, K, K)
        gaps = ((scores[:, :, None] - scores[:, None, :]) * better).sum(dim=(1, 2))  # (B,) sum of r_i - r_j
        for b, group in enumerate(batch["groups"]):
            per_row.append((group, float(st["row_loss"][b]), int(st["pairs"][b]), int(st["correct"][b]),
                            float(st["ordered"][b]), float(gaps[b])))
        all_scores.append(flat.float())
    model.train(was_training)
    both = torch.cat(all_scores)
    out = _summarize(per_row, "eval")
    out.update({"eval/ordering_accuracy": sum(r[4] for r in per_row) / len(per_row),
                "eval/score_mean": float(both.mean()),
                "eval/score_std": float(both.std()) if both.numel() > 1 else 0.0})
    groups = sorted({r[0] for r in per_row if r[0] is not None})
    for g in groups:
        rows = [r for r in per_row if r[0] == g]
        sub = _summarize(rows, "eval")
        for key in ("accuracy", "margin_mean", "loss"):
            out[f"eval/{key}/{g}"] = sub[f"eval/{key}"]
        out[f"eval/count/{g}"] = len(rows)
    return out


def _summarize(rows: list[tuple], prefix: str) -> dict:
    """(group, row_loss, pairs, correct, ordered, gap_sum) rows -> loss (per prompt), accuracy and margin (per pair)."""
    pairs = max(sum(r[2] for r in rows), 1)
    return {f"{prefix}/loss": sum(r[1] for r in rows) / len(rows),
            f"{prefix}/accuracy": sum(r[3] for r in rows) / pairs,
            f"{prefix}/margin_mean": sum(r[5] for r in rows) / pairs}


def train_rm(cfg: RMConfig) -> dict:
    """Train the reward model end to end; returns {"output", "final", eval metrics}."""
    from rlhfkit.data.rankings import collate_rankings, tokenize_rankings
    from rlhfkit.models import load_critic, load_tokenizer
    from rlhfkit.trainers.distributed import barrier

    out_dir, w, device = begin_stage(cfg)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    # A scalar head on the backbone, zero-initialised: every pair starts at loss log 2.
    model = load_critic(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    lm_head = _lm_head(cfg, device) if cfg.lm_coef > 0 else None
    shard_for(cfg, w, model, lm_head)

    train_rows, eval_rows = load_rm_data(cfg)
    train, stats = tokenize_rankings(train_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    evals, _ = tokenize_rankings(eval_rows, tokenizer, cfg.max_length, overlong=cfg.overlong)
    if not train:
        raise ConfigError(f"{', '.join(cfg.data)}: no example is left after over-long handling ({stats}); "
                          f"raise --max-length")
    pad_id = tokenizer.pad_token_id
    collate = lambda ex: collate_rankings(ex, pad_id)  # noqa: E731
    eval_bs = cfg.micro_batch_size or cfg.batch_size
    stage = SupervisedStage(collate=collate, loss=RankLoss(cfg.use_margin, cfg.lm_coef, cfg.label_smoothing),
                            count=lambda e: 1,
                            evaluate=lambda: evaluate_rankings(model, evals, collate, eval_bs, cfg.use_margin,
                                                               cfg.label_smoothing))
    trainable = torch.nn.ModuleDict({"model": model, **({"lm_head": lm_head} if lm_head is not None else {})})
    if w.main:
        print(f"[rm] {len(train)} training prompts ({stats}), {len(evals)} eval prompts")
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
    result = {"output": str(out_dir), "final": str(final), **metrics, **{f"data/{k}": v for k, v in stats.items()}}
    if w.main:
        _write_summary(out_dir, result)
    barrier(w)
    return result


def load_rm_data(cfg: RMConfig) -> tuple[list, list]:
    """(train rows, eval rows) as rankings: each file split (unless eval_data), train parts mixed by weight."""
    from rlhfkit.data import split_train_eval
    from rlhfkit.data.mixing import mix_parts, parse_data_spec
    from rlhfkit.data.rankings import load_rankings

    specs = [parse_data_spec(s) for s in cfg.data]
    group_by = cfg.group_by or ("source_file" if len(specs) > 1 else None)
    load = lambda src: load_rankings(src, format=cfg.data_format, group_by=group_by)  # noqa: E731
    parts = [load(path) for path, _ in specs]
    weights = [w for _, w in specs]
    if cfg.eval_data:
        return mix_parts(parts, weights, seed=cfg.seed), load(cfg.eval_data)
    splits = [split_train_eval(p, cfg.eval_fraction, seed=cfg.seed) for p in parts]
    return mix_parts([t for t, _ in splits], weights, seed=cfg.seed), [r for _, e in splits for r in e]


def _write_summary(out_dir: Path, result: dict) -> None:
    """OUTPUT/summary.json (the final numbers) and OUTPUT/report.html (with the per-group table)."""
    from rlhfkit.reporting.report import Section, group_table_html, write_report

    (out_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    numbers = {k: v for k, v in result.items() if k.startswith(("eval/", "data/")) and k.count("/") == 1}
    body = "".join(f"<tr><td><code>{k}</code></td><td class=num>{v:.4g}</td></tr>" for k, v in numbers.items()
                   if isinstance(v, (int, float)))
    sections = [Section("Held-out numbers", f"<table><tbody>{body}</tbody></table>")]
    groups = group_table_html(result)
    if groups:
        sections.append(Section("Per group", groups))
    write_report(out_dir / "report.html", f"rlhfkit reward model: {out_dir.name}", sections)


def _lm_head(cfg: RMConfig, device):
    """A trainable copy of the backbone's LM head, used only for the imitation loss (not saved)."""
    from rlhfkit.models import load_causal_lm

    lm = load_causal_lm(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    head = lm.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    return head
