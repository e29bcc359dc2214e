"""Stages 5-6 of the RL loop: policy and critic updates over minibatches of experience.

Every loss is aggregated with one global normalizer per minibatch (its valid tokens, or its
sequences), so gradient accumulation over micro-batches gives the same gradient as one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.trainers.common import TrainingError, check_finite, clip_gradients


@dataclass
class UpdateBatch:
    """Experience tensors the update needs, (N, ...) along the batch; `loss_mask` drops rows/tokens."""

    input_ids: torch.Tensor  # (N, P+R)
    attention_mask: torch.Tensor  # (N, P+R)
    position_ids: torch.Tensor  # (N, P+R)
    loss_mask: torch.Tensor  # (N, R) response_mask, zeroed for dropped groups
    old_logprobs: torch.Tensor | None  # (N, R); None: single pass, the update's own forward is "old"
    ref_logprobs: torch.Tensor | None  # (N, R)
    advantages: torch.Tensor  # (N, R)
    returns: torch.Tensor  # (N, R)
    old_values: torch.Tensor | None  # (N, R)

    def take(self, idx: torch.Tensor) -> "UpdateBatch":
        return UpdateBatch(**{k: (v[idx] if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})

    @property
    def response_length(self) -> int:
        return self.loss_mask.shape[1]


@dataclass
class Accumulator:
    """Token- or sequence-weighted sums of micro-batch statistics, for logging."""

    sums: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)

    def add(self, stats: dict, weight: float):
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def means(self) -> dict:
        return {k: self.sums[k] / max(self.weights[k], 1e-12) for k in self.sums}


def _normalizer(mask: torch.Tensor, agg: str) -> float:
    if agg == "token-mean":
        return float(mask.sum().clamp(min=1.0))
    return float((mask.sum(-1) > 0).sum().clamp(min=1))


def policy_loss_micro(cfg, spec, policy, mb: UpdateBatch, normalizer: float, kl_coef: float, penalty_coef: float,
                      minibatch_seqs: float = 1.0):
    """Loss of one micro-batch, already divided by the minibatch normalizer.

    Returns (loss, sums, means): `sums` are loss terms that add up over micro-batches to the
    minibatch's; `means` are per-token statistics of this micro-batch.
    """
    from rlhfkit.algos import entropy_loss, kl_loss, masked_mean, ppo_penalty_loss, ppo_policy_loss
    from rlhfkit.models import response_logprobs

    logprobs, entropy = response_logprobs(policy, mb.input_ids, mb.attention_mask, mb.position_ids,
                                          mb.response_length, temperature=cfg.temperature, return_entropy=True)
    common = dict(agg=cfg.loss_agg, normalizer=normalizer, norm_len=cfg.max_new_tokens)
    # Single pass on fresh samples: the policy has not moved since the rollout, so its own detached
    # logprobs are the old ones (ratio 1, gradient A * grad log pi) and the rollout forward is skipped.
    old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
    if spec.policy_loss == "penalty":
        loss, stats = ppo_penalty_loss(logprobs, old, mb.advantages, mb.loss_mask, beta=penalty_coef,
                                       **common)
    else:
        loss, stats = ppo_policy_loss(logprobs, old, mb.advantages, mb.loss_mask, clip_eps=cfg.clip_eps,
                                      clip_eps_high=cfg.clip_eps_high, dual_clip=cfg.dual_clip, **common)
    means = {f"policy/{k}": float(v) for k, v in stats.items()}
    means.setdefault("policy/approx_kl", means.get("policy/kl", 0.0))  # the penalty loss calls it kl
    means["policy/entropy"] = float(masked_mean(entropy.detach(), mb.loss_mask))
    sums = {"loss/policy": float(loss.detach())}
    if mb.old_logprobs is None and mb.ref_logprobs is not None:
        # kl/mean (k1 summed per sequence, mean over the minibatch's sequences) from this forward.
        sums["kl/mean"] = float(((logprobs.detach() - mb.ref_logprobs) * mb.loss_mask).sum()) / minibatch_seqs
    if cfg.entropy_coef:
        ent, _ = entropy_loss(entropy, mb.loss_mask, **common)
        loss = loss - cfg.entropy_coef * ent
        sums["loss/entropy"] = float(ent.detach())
    if kl_coef > 0 and mb.ref_logprobs is not None and _kl_in_loss(cfg, spec):
        kl, _ = kl_loss(logprobs, mb.ref_logprobs, mb.loss_mask, estimator=_kl_estimator(cfg, spec), **common)
        loss = loss + kl_coef * kl
        sums["loss/kl"] = float(kl.detach())
    return loss, sums, means


def value_loss_micro(cfg, critic, mb: UpdateBatch, normalizer: float):
    """Clipped value loss of one micro-batch / minibatch normalizer: (loss, sums, means)."""
    from rlhfkit.algos import value_loss

    # Value of the state before each response token: hidden state one position earlier.
    values = critic.values(mb.input_ids, mb.attention_mask, mb.position_ids)[:, -mb.response_length - 1:-1]  # (n, R)
    loss, stats = value_loss(values, mb.old_values, mb.returns, mb.loss_mask, clip_range=cfg.value_clip,
                             agg="token-mean", normalizer=normalizer)
    return loss, {"loss/value": float(loss.detach())}, {f"value/{k}": float(v) for k, v in stats.items() if k not in ("loss", "returns_mean")}


def _kl_in_loss(cfg, spec) -> bool:
    return (cfg.kl_placement or spec.kl_placement) == "loss"


def _kl_estimator(cfg, spec) -> str:
    """The configured estimator, else the algorithm's for its own placement, else k3 in the loss / k1 in the reward."""
    if cfg.kl_estimator:
        return cfg.kl_estimator
    if (cfg.kl_placement or spec.kl_placement) == spec.kl_placement:
        return spec.kl_estimator
    return "k3" if _kl_in_loss(cfg, spec) else "k1"


def optimizer_step(step: int, what: str, params, optimizer, scheduler, max_grad_norm: float) -> float:
    """Check, clip and apply the accumulated gradient; returns the pre-clip norm.

    A non-finite gradient raises TrainingError before anything is applied (the caller decides
    whether that stops the run or skips the minibatch).
    """
    # The pre-clip norm comes from the clipping pass itself. A non-finite norm may scale the
    # gradients to NaN, but they are zeroed below before any step.
    norm = clip_gradients(params, max_grad_norm)
    try:
        check_finite(step, **{f"{what} gradient norm": norm})
    except TrainingError:
        optimizer.zero_grad(set_to_none=True)
        raise
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


@dataclass
class Shard:
    """Where a rank's rows sit in the global batch of a data-parallel step.

    The rank holds global rows [offset, offset + n); `loss_mask` (N, R_max) is the global batch's,
    so every rank forms the same minibatches and divides by the same normalizers.
    """

    offset: int
    loss_mask: torch.Tensor  # (N, R_max)
    world: object = None  # rlhfkit.trainers.distributed.World


def run_updates(cfg, spec, step: int, batch: UpdateBatch, models, opt, kl_coef: float, penalty_coef: float,
                update_policy: bool, ptx_stream=None, shard: Shard | None = None) -> dict:
    """ppo_epochs x minibatches x micro-batches of policy (and critic) updates; returns mean stats.

    shard: in a data-parallel run, this rank's place in the global batch; the minibatches are
    drawn from the global rows (the same order as one process would use), each rank
    back-propagates the rows it holds, and gradients are summed over ranks.
    """
    from rlhfkit.trainers.distributed import World

    local_n = batch.input_ids.shape[0]
    shard = shard or Shard(0, batch.loss_mask, World())
    # FSDP: every rank must run as many forwards as the busiest one; the extra ones are this
    # row with its loss masked out (zero gradient).
    filler = batch.take(torch.tensor([0]))
    filler.loss_mask = torch.zeros_like(filler.loss_mask)
    n = shard.loss_mask.shape[0]
    mb_size = cfg.minibatch_size or n
    micro = cfg.micro_batch_size or mb_size
    acc = Accumulator()
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=gen) if mb_size < n else torch.arange(n)
        for start in range(0, n, mb_size):
            rows = order[start:start + mb_size]  # global row indices
            mine = rows[(rows >= shard.offset) & (rows < shard.offset + local_n)] - shard.offset
            minibatch = batch.take(mine)
            try:
                sums = _minibatch_update(cfg, spec, step, minibatch, models, opt, kl_coef, penalty_coef,
                                         update_policy, ptx_stream, acc, micro,
                                         global_mask=shard.loss_mask[rows], world=shard.world, filler=filler)
            except TrainingError:
                if cfg.on_nonfinite != "skip":
                    raise
                for o in (opt.policy, opt.critic):
                    if o is not None:
                        o.zero_grad(set_to_none=True)
                acc.add({"train/skipped_minibatches": 1.0}, 1.0)
                continue
            acc.add(sums, 1.0)  # minibatch totals, averaged over minibatches and epochs
    if shard.world.enabled:
        # Token-weighted means merge exactly by summing sums and weights over ranks; minibatch
        # totals are already equal on every rank, and summing both sides leaves their mean as is.
        from rlhfkit.trainers.distributed import sum_dict
        acc.sums, acc.weights = sum_dict(shard.world, acc.sums), sum_dict(shard.world, acc.weights)
    return acc.means()


def _minibatch_update(cfg, spec, step, minibatch, models, opt, kl_coef, penalty_coef, update_policy, ptx_stream,
                      acc, micro, global_mask=None, world=None, filler=None) -> dict:
    """Accumulate the micro-batches' gradients of one minibatch, then step each optimizer.

    global_mask: (M, R) loss mask of the whole minibatch across ranks (default: this one's), from
    which the normalizers come; world: the process group whose gradients and sums are added up.
    """
    from rlhfkit.trainers.distributed import World, all_reduce_grads, loss_scale, max_over_ranks, sum_dict

    world = world or World()
    global_mask = minibatch.loss_mask if global_mask is None else global_mask
    mb_size = minibatch.input_ids.shape[0]
    norm = _normalizer(global_mask, cfg.loss_agg)
    vnorm = _normalizer(global_mask, "token-mean")
    seqs = float(global_mask.shape[0])
    sums: dict = {}
    trpo = update_policy and spec.policy_loss == "trpo"
    if trpo:
        sums.update(trpo_policy_update(cfg, models.policy, minibatch, micro))
        update_policy = False  # the step is taken; only the critic's gradient-based update follows
    # FSDP averages gradients over ranks; the losses are already divided by global normalizers,
    # so a sharded model's loss is scaled by the world size to make the reduction a sum.
    scale = loss_scale(world, [models.policy])
    vscale = loss_scale(world, [models.critic]) if models.critic is not None else 1.0
    n_micro = -(-mb_size // micro)
    if scale != 1.0 or vscale != 1.0:
        n_micro = max_over_ranks(world, n_micro)
    for i in range(n_micro):
        real = i * micro < mb_size
        mb = minibatch.take(torch.arange(i * micro, min((i + 1) * micro, mb_size))) if real else filler
        weight = float(mb.loss_mask.sum())
        if update_policy:
            loss, psums, means = policy_loss_micro(cfg, spec, models.policy, mb, norm, kl_coef, penalty_coef, seqs)
            if not world.enabled:  # across ranks a NaN reaches every rank through the summed gradient
                check_finite(step, **{"policy loss": loss})
            (loss * scale).backward()
            if real:
                _add(sums, psums)
                acc.add(means, weight)
        if models.critic is not None:
            vloss, vsums, vmeans = value_loss_micro(cfg, models.critic, mb, vnorm)
            if not world.enabled:
                check_finite(step, **{"value loss": vloss})
            (vloss * vscale).backward()
            if real:
                _add(sums, vsums)
                acc.add(vmeans, weight)
    if update_policy and ptx_stream is not None:
        _add(sums, ptx_backward(cfg, models.policy, ptx_stream, world.size, scale))
    sums = sum_dict(world, sums)
    if update_policy and opt.policy is not None:
        all_reduce_grads(world, opt.policy_params, scale)
        sums["grad/norm"] = optimizer_step(step, "policy", opt.policy_params, opt.policy, opt.policy_sched,
                                           cfg.max_grad_norm)
    if models.critic is not None:
        all_reduce_grads(world, opt.critic_params, vscale)
        sums["grad/critic_norm"] = optimizer_step(step, "critic", opt.critic_params, opt.critic, None,
                                                  cfg.max_grad_norm)
    return sums


def _add(into: dict, new: dict) -> None:
    for k, v in new.items():
        into[k] = into.get(k, 0.0) + v


def ptx_backward(cfg, policy, ptx_stream, ranks: int = 1, scale: float = 1.0) -> dict:
    """PPO-ptx (InstructGPT): ptx_coef x SFT loss on a demonstration micro-batch, accumulated.

    ranks: the data-parallel world size; each rank draws its own micro-batch and the summed
    gradient is their mean, like one batch `ranks` times larger."""
    from rlhfkit.trainers.sft import sft_token_loss

    batch = next(ptx_stream)
    tokens = float(batch["loss_mask"][:, 1:].sum().clamp(min=1.0))
    loss, stats = sft_token_loss(policy, batch, tokens)
    (cfg.ptx_coef * loss * scale / ranks).backward()
    return {"loss/sft": stats["loss"] / ranks}


def trpo_policy_update(cfg, policy, minibatch: UpdateBatch, micro: int) -> dict:
    """TRPO (Schulman et al. 2015, app. C): natural-gradient step by conjugate gradient on Fisher-vector
    products of the mean KL(old || new) over response tokens, scaled to `max_kl`, then a backtracking
    line search that keeps the measured KL under the limit. Closures are per micro-batch, so memory
    stays bounded; no explicit Hessian is ever built."""
    from rlhfkit.algos import (entropy_from_logits, logprobs_from_logits, masked_mean, mean_kl_old_new,
                               surrogate_advantage, trpo_step)
    from rlhfkit.models import response_logits

    R, n = minibatch.response_length, minibatch.input_ids.shape[0]
    norm = _normalizer(minibatch.loss_mask, cfg.loss_agg)  # surrogate shares add up to the minibatch's
    tok = _normalizer(minibatch.loss_mask, "token-mean")  # the KL is always a token mean
    parts = [minibatch.take(torch.arange(s, min(s + micro, n))) for s in range(0, n, micro)]

    def logits(mb):  # (n, R, V) at the sampling temperature
        return response_logits(policy, mb.input_ids, mb.attention_mask, mb.position_ids, R)[:, :-1] / cfg.temperature

    def surrogate(mb, z):
        return surrogate_advantage(logprobs_from_logits(z, mb.input_ids[:, -R:]), mb.old_logprobs, mb.advantages,
                                   mb.loss_mask, agg=cfg.loss_agg, normalizer=norm, norm_len=cfg.max_new_tokens)

    def kl(mb, old, z):
        return mean_kl_old_new(old, z, mb.loss_mask, normalizer=tok)

    def fisher(mb):
        z = logits(mb)
        return kl(mb, z.detach(), z)

    def both(mb, old):
        z = logits(mb)
        return surrogate(mb, z), kl(mb, old, z)

    with torch.no_grad():
        start = [logits(mb) for mb in parts]  # pi_old of this step
        entropy = sum(float(masked_mean(entropy_from_logits(z), mb.loss_mask)) * float(mb.loss_mask.sum())
                      for z, mb in zip(start, parts)) / tok
        before = sum(float(surrogate(mb, z)) for mb, z in zip(parts, start))
    params = [p for p in policy.parameters() if p.requires_grad]
    try:
        st = trpo_step(params, [lambda mb=mb: surrogate(mb, logits(mb)) for mb in parts],
                       [lambda mb=mb, s=s: kl(mb, s, logits(mb)) for mb, s in zip(parts, start)],
                       cfg.max_kl, cfg.damping, cfg.cg_iters, cfg.backtrack_ratio, cfg.max_backtracks,
                       fvp_kl_fn=[lambda mb=mb: fisher(mb) for mb in parts],
                       line_search_fn=[lambda mb=mb, s=s: both(mb, s) for mb, s in zip(parts, start)])
    except FloatingPointError as err:
        raise TrainingError(f"trpo: {err}") from None
    out = {f"trpo/{k}": float(st[k]) for k in ("kl", "surrogate_improvement", "line_search_steps", "cg_residual")}
    out["trpo/accepted"] = float(st["accepted"])
    out["policy/entropy"] = entropy
    out["policy/approx_kl"] = out["trpo/kl"]  # exact mean KL(old||new) of the step, not an estimate
    out["loss/policy"] = -(before + out["trpo/surrogate_improvement"])  # minus the surrogate after the step
    return out
