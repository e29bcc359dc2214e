"""One RL step: rollout -> score -> shape -> advantages -> update -> log.

`rl_step(run, step)` is the whole step, read top to bottom; the stages are the functions below
it. Everything an algorithm changes comes from `run.algo` (resolved once), never from its name.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from rlhfkit import algos as A
from rlhfkit.data import prompt_fields
from rlhfkit.models import position_ids_from_mask, response_logprobs
from rlhfkit.rollout import Experience, make_experience
from rlhfkit.rollout.remote import scorer_metrics
from rlhfkit.rollout.seeded import row_keys
from rlhfkit.trainers.distributed import gather_left_padded, gather_rows
from rlhfkit.trainers.rl_update import Shard, UpdateContext, optimizer_step, run_updates


def prompt_batch(rows: list, step: int, per_step: int, seed: int) -> list:
    """The prompts of RL step `step`: a fixed function of (seed, step), so resume sees the same data."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, len(rows))
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(rows[int(order[pos])])
    return out


def rl_step(run, step: int) -> tuple[dict, list]:
    """Step `step` (0-based) of the run: returns (metrics, events); events are (name, message) pairs."""
    cfg, algo, w, models = run.cfg, run.algo, run.world, run.models
    t0 = time.perf_counter()
    # 1. rollout: this rank's share of the step's prompts (whole groups, so group statistics stay local),
    #    sampled by the engine, with the policy / reference logprobs, values and 2. the scores
    lo, hi = w.share(cfg.prompts_per_step, "prompts per step")
    batch_rows = prompt_batch(run.rows, step, cfg.prompts_per_step, cfg.seed)[lo:hi]
    n = algo.n
    keys = row_keys(cfg.seed, step, torch.arange(lo * n, hi * n)) if cfg.seeded_sampling else None
    exp = make_experience(models.policy, models.tokenizer, [r["prompt_text"] for r in batch_rows], run.settings,
                          reference=models.reference, critic=models.critic, scorer=models.scorer,
                          fields=prompt_fields(batch_rows), ref_context=models.ref_context,
                          prompt_ids=[r["prompt_ids"] for r in batch_rows], policy_logprobs=not algo.single_pass,
                          row_keys=keys, engine=run.engine)
    t_rollout = time.perf_counter() - t0
    view, gold_scores = global_view(w, exp, models.gold(exp) if models.gold is not None else None)
    metrics = rollout_metrics(view, gold_scores)
    metrics.update(scorer_metrics(models.scorer))  # reward/remote_*: failures of reward services, if any
    process = None
    if algo.process_reward:  # PRIME: the implicit PRM learns from this batch's outcomes first
        process, prm_stats = update_prm(cfg, models, run.opt, exp, step)
        metrics.update(prm_stats)
    # 3-4. rewards (scores, KL), advantages, loss mask: filled into the batch
    metrics.update(shape_rewards(cfg, algo, view, run.ctl.kl.value, run.ctl.moments, run.ctl.baseline, process,
                                 run.ctl.return_moments))
    shard, batch = update_rows(w, view, exp, lo * n, balance=algo.micro_batch_tokens > 0)
    # 5-6. policy and critic updates (the critic alone during warm-up)
    t1 = time.perf_counter()
    events = []
    if bool(view.loss_mask.sum() > 0):
        ctx = UpdateContext(cfg, algo, models, run.opt, run.ctl.kl.value, run.ctl.penalty.value, run.ptx)
        metrics.update(run_updates(ctx, step, batch, update_policy=step >= cfg.critic_warmup_steps, shard=shard))
    else:
        events.append(("groups_all_dropped", "every group had equal scores; no update this step"))
    metrics.update(perplexities(view, metrics.pop("_nll_policy", None)))
    run.engine.sync_weights(models.policy)
    # 7. KL controllers
    metrics["kl/coef"] = run.ctl.kl.value
    metrics.setdefault("kl/mean", 0.0)  # no reference model, or no update this step
    run.ctl.kl.update(metrics["kl/mean"], n_steps=view.batch_size)
    if "policy/kl" in metrics:  # the KL(old||new) penalty's own statistic: adapt its coefficient
        run.ctl.penalty.update(metrics["policy/kl"], n_steps=view.batch_size)
        metrics["policy/penalty_coef"] = run.ctl.penalty.value
    # 8. what the outer loop logs
    metrics.update({"lr": run.opt.policy_sched.get_last_lr()[0], "time/generate_s": t_rollout,
                    "time/train_s": time.perf_counter() - t1, "time/step_s": time.perf_counter() - t0})
    return metrics, events


def shape_rewards(cfg, algo, exp: Experience, kl_coef: float, moments, baseline, process_rewards=None,
                  return_moments=None) -> dict:
    """Stages 3-4: normalized (and clipped) scores, the KL, per-token rewards (scaled by the returns' std
    with `scale_rewards`) and advantages.

    Fills exp.rewards, exp.advantages, exp.returns and exp.loss_mask (all (N, R)); returns metrics.
    """
    mask = exp.response_mask
    raw = exp.scores.float()
    metrics = {}
    if cfg.normalize_rewards:
        # PPO-max (Zheng et al. 2023): running mean/std; the logged mean is before the clip.
        scores = A.normalize_and_clip_scores(raw, moments, clip=None)
        metrics["reward/normalized_mean"] = float(scores.mean())
    else:
        scores = raw
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    ref = exp.ref_logprobs
    zeros = mask.new_zeros(mask.shape)
    if exp.logprobs is None:  # single pass with the KL (if any) in the loss: kl/mean comes from the update
        rewards = A.kl_shaped_rewards(scores, zeros, zeros, mask, 0.0)
    elif ref is not None:
        kl_tok = A.kl_divergence(exp.logprobs, ref, "k1") * mask  # (B, R)
        metrics["kl/mean"] = float(kl_tok.sum(-1).mean())
        metrics["kl/token_mean"] = float(A.masked_mean(kl_tok, mask))
        rewards = A.kl_shaped_rewards(scores, exp.logprobs, ref, mask, 0.0 if algo.kl_in_loss else kl_coef,
                                      estimator=algo.kl_estimator, at_end=algo.kl_at_end)
    else:
        metrics["kl/mean"] = 0.0
        rewards = A.kl_shaped_rewards(scores, exp.logprobs, exp.logprobs, mask, 0.0)
    if cfg.scale_rewards:  # PPO-max: rewards / running std of the returns, no mean shift
        rewards = A.scale_by_return_std(rewards, mask, return_moments, cfg.gamma)
        metrics["reward/return_std"] = return_moments.std
    inputs = A.AdvantageInputs(token_rewards=rewards, mask=mask, values=exp.values, group_size=exp.group_size,
                               gamma=cfg.gamma, lam=cfg.lam, normalize_std=cfg.grpo_std_normalize,
                               baseline=baseline, process_rewards=process_rewards, whiten=False,
                               # The outcome includes the KL penalty when the KL is in the reward.
                               outcome_scores=rewards.sum(-1))
    advantages, returns = A.compute_advantages(algo.advantage, inputs)
    loss_mask = mask
    if cfg.drop_uniform_groups and exp.group_size > 1:
        keep = A.nonuniform_groups(raw, exp.group_size)  # (B,)
        loss_mask = mask * keep[:, None].to(mask.dtype)
        metrics["groups/dropped_fraction"] = 1.0 - float(keep.float().mean())
    if algo.whiten and loss_mask.sum() > 1:
        advantages = A.masked_whiten(advantages, loss_mask) * loss_mask
    valid = loss_mask.sum() > 1
    metrics.update({"advantages/mean": float(A.masked_mean(advantages, loss_mask)),
                    "advantages/std": float(A.masked_var(advantages, loss_mask).sqrt()) if valid else 0.0,
                    "returns/mean": float(A.masked_mean(returns, mask))})
    if exp.values is not None:
        ev = float(A.explained_variance(exp.values, returns, mask))
        if ev == ev:  # undefined (NaN) when every return is equal: nothing to explain, nothing logged
            metrics["value/explained_variance"] = ev
    exp.rewards, exp.advantages, exp.returns, exp.loss_mask = rewards, advantages, returns, loss_mask
    return metrics


def rollout_metrics(exp: Experience, gold_scores=None) -> dict:
    """Score and length statistics of a batch; gold_scores (N,) from the task's gold reward, if any."""
    raw = exp.scores.float()
    lengths = exp.response_mask.sum(-1).float()
    out = {"reward/score_mean": float(raw.mean()), "reward/score_std": float(raw.std()) if raw.numel() > 1 else 0.0,
           "reward/score_min": float(raw.min()), "reward/score_max": float(raw.max()),
           "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
           "response/eos_fraction": float(exp.eos.float().mean()),
           "response/truncated_fraction": 1.0 - float(exp.eos.float().mean())}
    p10, p50, p90 = A.length_quantiles(exp.response_mask)
    out.update({"response/length_p10": p10, "response/length_p50": p50, "response/length_p90": p90})
    if exp.response_ids is not None:
        out.update({"response/distinct_1": A.distinct_n(exp.response_ids, exp.response_mask, 1),
                    "response/distinct_2": A.distinct_n(exp.response_ids, exp.response_mask, 2),
                    "response/repeat_3gram_fraction": A.repeated_ngram_fraction(exp.response_ids, exp.response_mask, 3)})
    if gold_scores is not None:
        out["reward/gold_mean"] = float(gold_scores.float().mean())
    return out


_GATHERED = ("scores", "response_ids", "response_mask", "logprobs", "ref_logprobs", "values", "eos")


def perplexities(exp: Experience, nll_policy: float | None = None) -> dict:
    """Perplexity of the sampled responses under the policy and the reference, from the step's own
    log-probabilities (no extra forward): the rollout's, or (single pass) the update's mean NLL."""
    out = {}
    if exp.logprobs is not None:
        out["response/ppl_policy"] = A.perplexity(exp.logprobs, exp.response_mask)
    elif nll_policy is not None:
        out["response/ppl_policy"] = math.exp(nll_policy)
    if exp.ref_logprobs is not None:
        out["response/ppl_ref"] = A.perplexity(exp.ref_logprobs, exp.response_mask)
    return out


def global_view(w, exp: Experience, gold_scores=None) -> tuple[Experience, torch.Tensor | None]:
    """The step's whole batch for its statistics, gathered from every rank in rank order (the order
    of one process's batch): scores, masks, logprobs, values, (N, R_max) padded; the ids stay
    local (None). With one process, the experience itself."""
    if not w.enabled:
        return exp, gold_scores
    gathered = {k: gather_rows(w, getattr(exp, k)) for k in _GATHERED}
    view = Experience(prompt_ids=None, prompt_mask=None, input_ids=None, attention_mask=None, position_ids=None,
                      group_size=exp.group_size, **gathered)
    return view, gather_rows(w, gold_scores)


def local_rows(view: Experience, exp: Experience, offset: int) -> Experience:
    """This rank's rows [offset, offset + n) of the shaped global batch, cropped to the local response
    length, with the local token ids: the batch this rank updates on."""
    n, R = exp.response_mask.shape
    crop = {f.name: getattr(view, f.name)[offset:offset + n, :R] for f in dataclasses.fields(Experience)
            if f.name in ("logprobs", "ref_logprobs", "values", "loss_mask", "rewards", "advantages", "returns")
            and getattr(view, f.name) is not None}
    return dataclasses.replace(exp, **crop)


def update_rows(w, view: Experience, exp: Experience, offset: int, balance: bool) -> tuple[Shard | None, Experience]:
    """The rows this rank updates on and its `Shard`: its own rows [offset, offset + n) of the shaped
    global batch (`local_rows`), or with `balance` (a token budget) every global row with its ids, of
    which each minibatch's rows are split over the ranks by tokens. One process: the batch itself."""
    if not w.enabled:
        return None, view
    if not balance:
        return Shard(offset, view.loss_mask, w), local_rows(view, exp, offset)
    prompt_ids, prompt_mask = gather_left_padded(w, exp.prompt_ids), gather_left_padded(w, exp.prompt_mask)
    attention_mask = torch.cat([prompt_mask, view.response_mask.to(prompt_mask.dtype)], dim=1)  # (N, P_max + R_max)
    full = dataclasses.replace(view, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                               input_ids=torch.cat([prompt_ids, view.response_ids], dim=1),
                               attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return Shard(0, view.loss_mask, w, tokens=attention_mask.sum(-1)), full


def update_prm(cfg, models, opt, exp: Experience, step: int) -> tuple[torch.Tensor, dict]:
    """PRIME: one step of the implicit PRM on outcome labels (scores in [0, 1]); returns the implicit
    process rewards of its fresh logprobs, (N, R), and its metrics."""
    R = exp.response_length
    labels = exp.scores.float().clamp(0, 1)
    prm_lp = response_logprobs(models.prm, exp.input_ids, exp.attention_mask, exp.position_ids, R,
                               temperature=cfg.temperature)
    loss, stats = A.prime_prm_loss(prm_lp, exp.ref_logprobs, exp.response_mask, labels, cfg.prime_beta)
    loss.backward()
    optimizer_step(step, "prm", opt.prm_params, opt.prm, None, cfg.max_grad_norm)
    with torch.no_grad():
        fresh = response_logprobs(models.prm, exp.input_ids, exp.attention_mask, exp.position_ids, R,
                                  temperature=cfg.temperature)
    process = A.implicit_process_rewards(fresh, exp.ref_logprobs, exp.response_mask, cfg.prime_beta)
    return process, {"prime/prm_loss": float(loss.detach()), "prime/prm_accuracy": float(stats["accuracy"]),
                     "prime/reward_mean": float(stats["reward_mean"])}
