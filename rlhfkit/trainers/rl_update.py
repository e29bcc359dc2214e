"""Stages 5-6 of the RL loop: policy and critic updates over minibatches of experience.

Every loss is aggregated with one global normalizer per minibatch (its valid tokens, or its
sequences: `algos.aggregation_normalizer`), so gradient accumulation over micro-batches gives the
same gradient as one pass. How the policy moves is the algorithm's `update` ("gradient" or
"trpo", `POLICY_UPDATES`), chosen once by its data; the policy loss comes from the registry
`algos.POLICY_LOSSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit import algos as A
from rlhfkit.models import response_logits, response_logprobs
from rlhfkit.models.packing import bin_rows
from rlhfkit.rollout import Experience
from rlhfkit.trainers.common import TrainingError, check_finite, clip_gradients, sft_token_loss
from rlhfkit.trainers.distributed import (World, all_reduce_grads, balance_rows, loss_scale, max_over_ranks,
                                          sum_dict)


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


@dataclass
class UpdateContext:
    """What one step's update reads besides the batch: config, effective algorithm, models,
    optimizers, the step's coefficients and the PPO-ptx stream."""

    cfg: object  # RLConfig
    algo: object  # Algorithm (trainers.algorithms.resolve_algorithm)
    models: object
    opt: object
    kl_coef: float = 0.0
    penalty_coef: float = 0.0
    ptx_stream: object = None


@dataclass
class Shard:
    """Where a rank's rows sit in the global batch of a data-parallel step.

    The rank holds global rows [offset, offset + n); `loss_mask` (N, R_max) is the global batch's,
    so every rank forms the same minibatches and divides by the same normalizers. With `tokens`
    (N,) the rank holds every global row (offset 0) and updates on its token-balanced share of each
    minibatch (`balance_rows`) instead of the rows it generated.
    """

    offset: int
    loss_mask: torch.Tensor  # (N, R_max)
    world: World = field(default_factory=World)
    tokens: torch.Tensor | None = None  # (N,) valid tokens per global row, when balancing by tokens

    def mine(self, rows: torch.Tensor, local_n: int) -> torch.Tensor:
        """This rank's rows (local indices) of the global minibatch `rows` (M,)."""
        if self.tokens is not None:
            return balance_rows(rows, self.tokens[rows], self.world.size)[self.world.rank]
        return rows[(rows >= self.offset) & (rows < self.offset + local_n)] - self.offset


def micro_batches(minibatch: Experience, rows: int, tokens: int = 0) -> list[torch.Tensor]:
    """Row indices of each micro-batch of `minibatch`: consecutive slices of `rows` rows, or with a
    token budget (tokens > 0) bins of rows whose valid prompt + response tokens add up to at most
    `tokens` (`bin_rows`: first fit, longest first; a longer row alone)."""
    n = minibatch.batch_size
    if tokens <= 0:
        return [torch.arange(s, min(s + rows, n)) for s in range(0, n, rows)]
    lengths = minibatch.attention_mask.sum(-1).tolist()
    return [torch.tensor(b, dtype=torch.long) for b in bin_rows(lengths, tokens)]


def _normalizer(mask: torch.Tensor, agg: str) -> float:
    return float(A.aggregation_normalizer(mask, agg).clamp(min=1))


def policy_loss_micro(ctx: UpdateContext, mb: Experience, normalizer: float, minibatch_seqs: float = 1.0):
    """Loss of one micro-batch, already divided by the minibatch normalizer.

    Returns (loss, sums, means): `sums` are loss terms that add up over micro-batches to the
    minibatch's; `means` are per-token statistics of this micro-batch.
    """
    cfg, algo = ctx.cfg, ctx.algo
    logprobs, entropy = response_logprobs(ctx.models.policy, mb.input_ids, mb.attention_mask, mb.position_ids,
                                          mb.response_length, temperature=cfg.temperature, return_entropy=True)
    common = dict(agg=algo.loss_agg, normalizer=normalizer, norm_len=cfg.max_new_tokens)
    # Single pass on fresh samples: the policy has not moved since the rollout, so its own detached
    # logprobs are the old ones (ratio 1, gradient A * grad log pi) and the rollout forward is skipped.
    old = mb.logprobs if mb.logprobs is not None else logprobs.detach()
    loss, stats = A.compute_policy_loss(algo.policy_loss, A.PolicyLossInputs(
        logprobs, old, mb.advantages, mb.loss_mask, clip_eps=algo.clip_eps, clip_eps_high=algo.clip_eps_high,
        dual_clip=cfg.dual_clip, penalty_coef=ctx.penalty_coef, **common))
    means = {f"policy/{k}": float(v) for k, v in stats.items()}
    means["policy/entropy"] = float(A.masked_mean(entropy.detach(), mb.loss_mask))
    if mb.logprobs is None:  # single pass: the response perplexity comes from this forward (popped by rl_step)
        means["_nll_policy"] = float(A.masked_mean(-logprobs.detach(), mb.loss_mask))
    sums = {"loss/policy": float(loss.detach())}
    if mb.logprobs is None and mb.ref_logprobs is not None:
        # kl/mean (k1 summed per sequence, mean over the minibatch's sequences) from this forward.
        sums["kl/mean"] = float(((logprobs.detach() - mb.ref_logprobs) * mb.loss_mask).sum()) / minibatch_seqs
    if cfg.entropy_coef:
        ent, _ = A.entropy_loss(entropy, mb.loss_mask, **common)
        loss = loss - cfg.entropy_coef * ent
        sums["loss/entropy"] = float(ent.detach())
    if ctx.kl_coef > 0 and mb.ref_logprobs is not None and algo.kl_in_loss:
        kl, _ = A.kl_loss(logprobs, mb.ref_logprobs, mb.loss_mask, estimator=algo.kl_estimator, **common)
        loss = loss + ctx.kl_coef * kl
        sums["loss/kl"] = float(kl.detach())
    return loss, sums, means


def value_loss_micro(cfg, critic, mb: Experience, normalizer: float):
    """Clipped value loss of one micro-batch / minibatch normalizer: (loss, sums, means)."""
    # Value of the state before each response token: hidden state one position earlier.
    values = critic.values(mb.input_ids, mb.attention_mask, mb.position_ids)[:, -mb.response_length - 1:-1]  # (n, R)
    loss, stats = A.value_loss(values, mb.values, mb.returns, mb.loss_mask, clip_range=cfg.value_clip,
                               agg="token-mean", normalizer=normalizer)
    return loss, {"loss/value": float(loss.detach())}, {f"value/{k}": float(v) for k, v in stats.items()
                                                         if k not in ("loss", "returns_mean")}


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


def run_updates(ctx: UpdateContext, step: int, batch: Experience, update_policy: bool,
                shard: Shard | None = None) -> dict:
    """ppo_epochs x minibatches x micro-batches of policy (and critic) updates; returns mean stats.

    batch: the step's Experience with loss_mask, advantages and returns filled (`shape_rewards`).
    shard: in a data-parallel run, this rank's place in the global batch; the minibatches are
    drawn from the global rows (the same order as one process would use), each rank
    back-propagates the rows it holds, and gradients are summed over ranks.
    """
    cfg, algo = ctx.cfg, ctx.algo
    local_n = batch.batch_size
    shard = shard or Shard(0, batch.loss_mask)
    # FSDP: every rank must run as many forwards as the busiest one; the extra ones are this
    # row with its loss masked out (zero gradient).
    filler = batch.select([0])
    filler.loss_mask = torch.zeros_like(filler.loss_mask)
    n = shard.loss_mask.shape[0]
    mb_size = algo.minibatch_size
    acc = Accumulator()
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    policy = POLICY_UPDATES[algo.update] if update_policy else None
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(n, generator=gen) if mb_size < n else torch.arange(n)
        for start in range(0, n, mb_size):
            rows = order[start:start + mb_size]  # global row indices
            mine = shard.mine(rows, local_n)
            try:
                sums = _minibatch_update(ctx, step, batch.select(mine), policy, acc, shard.loss_mask[rows],
                                         shard.world, filler)
            except TrainingError:
                if cfg.on_nonfinite != "skip":
                    raise
                for o in (ctx.opt.policy, ctx.opt.critic):
                    if o is not None:
                        o.zero_grad(set_to_none=True)
                acc.add({"train/skipped_minibatches": 1.0}, 1.0)
                continue
            acc.add(sums, 1.0)  # minibatch totals, averaged over minibatches and epochs
    if shard.world.enabled:
        # Token-weighted means merge exactly by summing sums and weights over ranks; minibatch
        # totals are already equal on every rank, and summing both sides leaves their mean as is.
        acc.sums, acc.weights = sum_dict(shard.world, acc.sums), sum_dict(shard.world, acc.weights)
    return acc.means()


def _minibatch_update(ctx: UpdateContext, step: int, minibatch: Experience, policy, acc: Accumulator,
                      global_mask: torch.Tensor, world: World, filler: Experience) -> dict:
    """Accumulate the micro-batches' gradients of one minibatch, then step each optimizer.

    policy: the algorithm's `PolicyUpdate`, or None while only the critic trains. global_mask:
    (M, R) loss mask of the whole minibatch across ranks, from which the normalizers come;
    world: the process group whose gradients and sums are added up.
    """
    cfg, models = ctx.cfg, ctx.models
    parts = micro_batches(minibatch, ctx.algo.micro_batch_size, ctx.algo.micro_batch_tokens)
    norm = _normalizer(global_mask, ctx.algo.loss_agg)
    vnorm = _normalizer(global_mask, "token-mean")
    seqs = float(global_mask.shape[0])
    sums = policy.start(ctx, step, minibatch, parts) if policy is not None else {}
    # FSDP averages gradients over ranks; the losses are already divided by global normalizers,
    # so a sharded model's loss is scaled by the world size to make the reduction a sum.
    scale = loss_scale(world, [models.policy])
    vscale = loss_scale(world, [models.critic]) if models.critic is not None else 1.0
    n_micro = len(parts)
    if scale != 1.0 or vscale != 1.0:
        n_micro = max_over_ranks(world, n_micro)
    for i in range(n_micro):
        real = i < len(parts)
        mb = minibatch.select(parts[i]) if real else filler
        weight = float(mb.loss_mask.sum())
        terms = [policy.micro(ctx, mb, norm, seqs) if policy is not None else None, None]
        if terms[0] is not None:
            _backward(step, "policy loss", terms[0][0], scale, world)
        if models.critic is not None:
            terms[1] = value_loss_micro(cfg, models.critic, mb, vnorm)
            _backward(step, "value loss", terms[1][0], vscale, world)
        for term in terms:
            if term is not None and real:
                _add(sums, term[1])
                acc.add(term[2], weight)
    if policy is not None:
        _add(sums, policy.finish(ctx, world, scale))
    sums = sum_dict(world, sums)
    if policy is not None:
        sums.update(policy.step(ctx, step, world, scale))
    if models.critic is not None:
        all_reduce_grads(world, ctx.opt.critic_params, vscale)
        sums["grad/critic_norm"] = optimizer_step(step, "critic", ctx.opt.critic_params, ctx.opt.critic, None,
                                                  cfg.max_grad_norm)
    return sums


def _backward(step: int, what: str, loss: torch.Tensor, scale: float, world: World) -> None:
    if not world.enabled:  # across ranks a NaN reaches every rank through the summed gradient
        check_finite(step, **{what: loss})
    (loss * scale).backward()


def _add(into: dict, new: dict) -> None:
    for k, v in new.items():
        into[k] = into.get(k, 0.0) + v


class GradientUpdate:
    """The policy's optimizer steps on the summed micro-batch gradients of the registry's policy
    loss (plus the entropy bonus, the KL in the loss and PPO-ptx)."""

    def start(self, ctx, step, minibatch, parts) -> dict:
        return {}

    def micro(self, ctx, mb, norm, seqs):
        return policy_loss_micro(ctx, mb, norm, seqs)

    def finish(self, ctx, world, scale) -> dict:
        """Local terms after the micro-batches: PPO-ptx."""
        if ctx.ptx_stream is None:
            return {}
        return ptx_backward(ctx.cfg, ctx.models.policy, ctx.ptx_stream, world.size, scale)

    def step(self, ctx, step, world, scale) -> dict:
        """Gradients summed over ranks, then the policy's optimizer step."""
        all_reduce_grads(world, ctx.opt.policy_params, scale)
        return {"grad/norm": optimizer_step(step, "policy", ctx.opt.policy_params, ctx.opt.policy,
                                            ctx.opt.policy_sched, ctx.cfg.max_grad_norm)}


class TRPOUpdate:
    """TRPO moves the policy itself, once per minibatch, before the critic's micro-batches
    (`trpo_policy_update`); no policy optimizer step and no learning-rate schedule."""

    def start(self, ctx, step, minibatch, parts) -> dict:
        return trpo_policy_update(ctx.cfg, ctx.algo.loss_agg, ctx.models.policy, minibatch, parts)

    def micro(self, ctx, mb, norm, seqs):
        return None

    def finish(self, ctx, world, scale) -> dict:
        return {}

    def step(self, ctx, step, world, scale) -> dict:
        return {}


POLICY_UPDATES = {"gradient": GradientUpdate(), "trpo": TRPOUpdate()}


def ptx_backward(cfg, policy, ptx_stream, ranks: int = 1, scale: float = 1.0) -> dict:
    """PPO-ptx (InstructGPT): ptx_coef x SFT loss on a demonstration micro-batch, accumulated.

    ranks: the data-parallel world size; each rank draws its own micro-batch and the summed
    gradient is their mean, like one batch `ranks` times larger."""
    batch = next(ptx_stream)
    tokens = float(batch["loss_mask"][:, 1:].sum().clamp(min=1.0))
    loss, stats = sft_token_loss(policy, batch, tokens)
    (cfg.ptx_coef * loss * scale / ranks).backward()
    return {"loss/sft": stats["loss"] / ranks}


def trpo_policy_update(cfg, loss_agg: str, policy, minibatch: Experience, parts: list) -> dict:
    """TRPO (Schulman et al. 2015, app. C): natural-gradient step by conjugate gradient on Fisher-vector
    products of the mean KL(old || new) over response tokens, scaled to `max_kl`, then a backtracking
    line search that keeps the measured KL under the limit. Closures are per micro-batch, so memory
    stays bounded; no explicit Hessian is ever built. parts: the micro-batches' row indices."""
    R = minibatch.response_length
    norm = _normalizer(minibatch.loss_mask, loss_agg)  # surrogate shares add up to the minibatch's
    tok = _normalizer(minibatch.loss_mask, "token-mean")  # the KL is always a token mean
    parts = [minibatch.select(rows) for rows in parts]

    def logits(mb):  # (n, R, V) at the sampling temperature
        return response_logits(policy, mb.input_ids, mb.attention_mask, mb.position_ids, R)[:, :-1] / cfg.temperature

    def surrogate(mb, z):
        return A.surrogate_advantage(A.logprobs_from_logits(z, mb.input_ids[:, -R:]), mb.logprobs, mb.advantages,
                                     mb.loss_mask, agg=loss_agg, normalizer=norm, norm_len=cfg.max_new_tokens)

    def kl(mb, old, z):
        return A.mean_kl_old_new(old, z, mb.loss_mask, normalizer=tok)

    def fisher(mb):
        z = logits(mb)
        return kl(mb, z.detach(), z)

    def both(mb, old):
        z = logits(mb)
        return surrogate(mb, z), kl(mb, old, z)

    with torch.no_grad():
        start = [logits(mb) for mb in parts]  # pi_old of this step
        entropy = sum(float(A.masked_mean(A.entropy_from_logits(z), mb.loss_mask)) * float(mb.loss_mask.sum())
                      for z, mb in zip(start, parts)) / tok
        before = sum(float(surrogate(mb, z)) for mb, z in zip(parts, start))
    params = [p for p in policy.parameters() if p.requires_grad]
    try:
        st = A.trpo_step(params, [lambda mb=mb: surrogate(mb, logits(mb)) for mb in parts],
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
