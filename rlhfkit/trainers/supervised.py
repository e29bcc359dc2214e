"""The one loop behind SFT and reward-model training: shuffle, minibatch, accumulate, step.

Both stages differ only in how a batch is collated and which loss it gets; this loop owns the
rest (epochs, gradient accumulation with a global normalizer, clipping, logging, evaluation,
atomic checkpoints, resume, Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhfkit.config import ConfigError, option
from rlhfkit.models.loading import is_sharded
from rlhfkit.trainers.checkpoint import (latest_checkpoint, load_checkpoint, rank_rng_states, rng_state,
                                        save_checkpoint, set_rank_rng_state)
from rlhfkit.trainers.common import (RunInterrupted, StopFlag, TrainingError, check_finite, clip_gradients,
                                     make_optimizer, make_scheduler)


@dataclass(kw_only=True)
class SupervisedConfig:
    """Fields shared by `rlhfkit sft` and `rlhfkit rm` (each stage adds its own and may change defaults)."""

    model: str = option(help="model to start from: a local folder or a hub name")
    data: str = option(help="training rows (.jsonl/.json/.parquet/.csv, a save_to_disk folder or a hub dataset)")
    output: str = option(help="output folder (metrics.jsonl, checkpoints/, final/)")
    eval_data: str | None = option(None, "held-out rows; default: eval_fraction of `data`")
    eval_fraction: float = option(0.05, "fraction of `data` held out when eval_data is not given")
    max_length: int = option(512, "longest prompt + response in tokens")
    overlong: str = option("truncate", "what to do with longer rows (counted in the log)", choices=("truncate", "drop"))
    epochs: int = option(1, "passes over the training data")
    batch_size: int = option(16, "examples per optimizer step")
    micro_batch_size: int | None = option(None, "examples per forward/backward (gradient accumulation; the "
                                                "gradient equals the whole batch's); default: batch_size")
    lr: float = option(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(0, "linear warm-up steps")
    scheduler: str = option("cosine", "learning-rate decay after warm-up", choices=("constant", "linear", "cosine"))
    max_grad_norm: float = option(1.0, "global gradient-norm clip (0 disables)")
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    device: str = option("auto", "cpu, cuda, cuda:1, ... or auto")
    seed: int = option(0, "random seed")
    log_every: int = option(10, "log train metrics every N steps")
    eval_every: int = option(0, "evaluate every N steps (0: at the end only)")
    save_every: int = option(0, "checkpoint every N steps (0: only on interrupt)")
    resume: bool = option(False, "continue from the newest complete checkpoint in output/checkpoints")
    on_nonfinite: str = option("stop", "on a NaN/inf loss or gradient", choices=("stop", "skip"))
    report_to: tuple[str, ...] = option(("jsonl",), "metric backends: jsonl, tensorboard, wandb")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")
    fsdp: bool = option(False, "shard weights, gradients and optimizer state over the ranks of a torchrun launch "
                               "(FSDP2 fully_shard), for models that do not fit one device (docs/distributed.md)")
    fsdp_param_dtype: str | None = option(None, "with fsdp: compute dtype (mixed precision; gradients reduced in "
                                                "float32)", choices=(None, "bfloat16", "float16"))
    fsdp_cpu_offload: bool = option(False, "with fsdp: keep shards and optimizer state in CPU memory (GPU runs)")

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise ConfigError("micro_batch_size must be between 1 and batch_size")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("eval_fraction must be in [0, 1)")
        if self.max_length < 2:
            raise ConfigError("max_length must be at least 2 tokens")


@dataclass
class SupervisedStage:
    """What a supervised stage plugs into the loop.

    collate(examples) -> batch dict of tensors; loss(batch, normalizer) -> (loss, stats) where
    loss is already divided by `normalizer` (the minibatch's total count from `count`), so summing
    micro-batch losses gives the minibatch loss exactly; evaluate() -> metrics dict.
    """

    collate: Callable
    loss: Callable
    count: Callable  # example -> its weight in the normalizer (tokens for SFT, 1 pair for RM)
    evaluate: Callable
    stats_per: str = "example"  # stats returned by loss are sums over examples ("example") to average


def run_supervised(cfg, model, examples: list, stage: SupervisedStage, out_dir: Path) -> dict:
    """Train `model` on `examples` for cfg.epochs; returns the last eval metrics.

    Reads from cfg: epochs, batch_size, micro_batch_size, lr, weight_decay, warmup_steps, scheduler,
    max_grad_norm, seed, log_every, eval_every, save_every, resume, on_nonfinite.
    """
    from rlhfkit.reporting import MetricsLogger, progress
    from rlhfkit.trainers import distributed as D

    w = D.world()
    if cfg.batch_size % w.size:
        raise ConfigError(f"batch_size={cfg.batch_size} cannot be split over {w.size} ranks; use a multiple of {w.size}")
    sharded = is_sharded(model)
    if not sharded:  # a sharded model was broadcast before sharding (see shard_for)
        D.broadcast_parameters(w, [model])
    scale = D.loss_scale(w, [model])  # FSDP averages gradients; our losses need their sum
    device = next(model.parameters()).device
    steps_per_epoch = max(1, len(examples) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, cfg.warmup_steps, cfg.scheduler)
    micro = cfg.micro_batch_size or cfg.batch_size
    ckpt_root = out_dir / "checkpoints"
    step = 0
    if cfg.resume and (ckpt := latest_checkpoint(ckpt_root)) is not None:
        state = load_checkpoint(ckpt, {"model": model})
        D.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rank_rng_state(state, w, ckpt)
        step = int(state["step"])
    logger = MetricsLogger(out_dir, backends=tuple(cfg.report_to), resume_step=step) if w.main else D.NullLogger()

    def checkpoint():
        state = {"step": step, "optimizer": D.optimizer_state(model, optimizer), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(), **rank_rng_states(w)}
        weights = D.full_state_dict(model) if sharded else model
        if w.main:
            save_checkpoint(ckpt_root, step, {"model": weights}, state)
        D.barrier(w)

    eval_metrics: dict = {}
    stop = StopFlag()
    bar = progress(total_steps, desc=out_dir.name, quiet=None if w.main else True)
    bar.update(step)
    with stop.installed():
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            # The order of an epoch depends only on (seed, epoch): resuming mid-epoch sees the same order.
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            batch_ids = order[index * cfg.batch_size:(index + 1) * cfg.batch_size].tolist()
            batch = [examples[i] for i in batch_ids]
            t0 = time.perf_counter()
            model.train()
            # The normalizer counts the whole global batch; each rank back-propagates its share of it
            # and the gradients are summed over ranks: the single-process gradient (distributed.py).
            normalizer = float(sum(stage.count(e) for e in batch))
            lo, hi = (len(batch) * w.rank // w.size, len(batch) * (w.rank + 1) // w.size)
            batch = batch[lo:hi]
            totals: dict[str, float] = {}
            for start in range(0, len(batch), micro):
                mb = {k: v.to(device) if torch.is_tensor(v) else v
                      for k, v in stage.collate(batch[start:start + micro]).items()}
                loss, stats = stage.loss(model, mb, normalizer)
                (loss * scale).backward()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
            totals = D.sum_dict(w, totals)
            D.all_reduce_grads(w, params, scale)
            norm = clip_gradients(params, cfg.max_grad_norm)
            try:
                check_finite(step, **{"loss": totals.get("loss", 0.0), "gradient norm": norm})
            except TrainingError:
                optimizer.zero_grad(set_to_none=True)
                if cfg.on_nonfinite != "skip":
                    checkpoint()
                    raise
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            metrics = {f"train/{k}": v for k, v in totals.items()}
            metrics.update({"grad/norm": float(norm), "lr": scheduler.get_last_lr()[0],
                            "time/step_s": time.perf_counter() - t0})
            evaluated = (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps
            if evaluated and (w.main or sharded):  # same weights everywhere: rank 0 evaluates (all, if sharded)
                eval_metrics = stage.evaluate()
                metrics.update(eval_metrics)
            if evaluated or step % cfg.log_every == 0:
                logger.log(step, metrics)
            bar.update(1, loss=totals.get("loss", float("nan")))
            stop.requested = D.any_rank(w, stop.requested)
            if cfg.save_every and step % cfg.save_every == 0:
                checkpoint()
            if stop.requested:
                checkpoint()
                bar.close()
                logger.close()
                raise RunInterrupted(stop.signal_name, step, out_dir)
    bar.close()
    logger.close()
    return eval_metrics


def shard_for(cfg, w, *models) -> None:
    """With cfg.fsdp: rank 0's weights to every rank, then FSDP2 sharding (before the optimizer)."""
    from rlhfkit.trainers import distributed as D

    D.check_fsdp(cfg, w)
    if not cfg.fsdp:
        return
    for model in models:
        if model is not None:
            D.broadcast_parameters(w, [model])
            D.shard_model(model, cfg.fsdp_param_dtype, cfg.fsdp_cpu_offload)


def begin_stage(cfg):
    """The start every offline stage shares (SFT, RM, DPO): the process group, the FSDP check, the
    resolved config saved in the output folder (rank 0), the seed. Returns (out_dir, world, device)."""
    from rlhfkit.config import save_config
    from rlhfkit.trainers.common import set_seed
    from rlhfkit.trainers.distributed import check_fsdp, init_distributed

    out_dir = Path(cfg.output)
    w, device = init_distributed(cfg.device)
    check_fsdp(cfg, w)
    if w.main:
        save_config(cfg, out_dir)
    set_seed(cfg.seed)
    return out_dir, w, device


def load_language_model(cfg, device):
    """(tokenizer, causal LM) of a stage's `model`, with fresh LoRA adapters when `lora_r` > 0 (SFT, DPO)."""
    from rlhfkit.models import apply_lora, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    return tokenizer, model
