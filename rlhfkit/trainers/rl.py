"""Stage 3: the one RL loop every algorithm runs through.

Per step: 1. sample n responses per prompt; 2. score them; 3. reference logprobs and the KL
(in the reward per token, or as a loss term); 4. advantages from the registry; 5. ppo_epochs x
minibatches of policy updates with gradient accumulation; 6. critic update; 7. KL-controller
update; 8. log and checkpoint. What differs between algorithms comes from `AlgorithmSpec`.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from rlhfkit.config import ConfigError, save_config
from rlhfkit.trainers.algorithms import get_algorithm
from rlhfkit.reporting.health import DETECTOR_NAMES, HealthMonitor
from rlhfkit.trainers.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, rng_state, save_checkpoint
from rlhfkit.trainers.common import RunInterrupted, StopFlag, TrainingError, make_optimizer, make_scheduler, set_seed
from rlhfkit.trainers.distributed import (NullLogger, any_rank, barrier, broadcast_parameters, check_fsdp,
                                          full_state_dict, init_distributed, load_optimizer_state, optimizer_state,
                                          rank_rng_states, set_rank_rng_state, shard_model)
from rlhfkit.trainers.rl_config import RLConfig
from rlhfkit.trainers.rl_update import Shard, UpdateBatch, _kl_estimator, _kl_in_loss, run_updates

__all__ = ["RLConfig", "train_rl"]


def build_models(cfg: RLConfig, spec, device) -> SimpleNamespace:
    """Load only the models the algorithm needs: no critic without GAE, no reference when beta = 0."""
    from rlhfkit import models as M
    from rlhfkit.rollout import FunctionScorer, RewardModelScorer, load_reward_function

    trc = cfg.trust_remote_code
    tokenizer = M.load_tokenizer(cfg.policy, trust_remote_code=trc)
    policy = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    need_ref = cfg.kl_coef > 0 or spec.process_reward
    reference, ref_context = None, None
    if cfg.lora_r:
        policy = M.apply_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha)
        ref_context = M.adapters_disabled if need_ref else None
    elif need_ref:
        reference = M.load_reference(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    if cfg.reward_model:
        scorer = RewardModelScorer(M.load_reward_model(cfg.reward_model, dtype=cfg.dtype, device=device,
                                                       trust_remote_code=trc), tokenizer)
    else:
        scorer = FunctionScorer(load_reward_function(cfg.reward_fn))
    gold = FunctionScorer(load_reward_function(cfg.gold_fn)) if cfg.gold_fn else None
    critic = None
    if spec.critic:
        critic = M.load_critic(cfg.critic or cfg.reward_model or cfg.policy, dtype=cfg.dtype, device=device,
                               trust_remote_code=trc)
    prm = None
    if spec.process_reward:
        prm = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    return SimpleNamespace(tokenizer=tokenizer, policy=policy, reference=reference, ref_context=ref_context,
                           scorer=scorer, gold=gold, critic=critic, prm=prm)


def build_optimizers(cfg: RLConfig, models) -> SimpleNamespace:
    opt = SimpleNamespace(policy_params=[p for p in models.policy.parameters() if p.requires_grad])
    # TRPO steps the policy itself and never uses this optimizer; it keeps lr logging and checkpoints uniform.
    opt.policy = make_optimizer(opt.policy_params, cfg.lr, cfg.weight_decay)
    opt.policy_sched = make_scheduler(opt.policy, cfg.steps, cfg.warmup_steps, "constant")
    opt.critic = opt.prm = None
    if models.critic is not None:
        opt.critic_params = [p for p in models.critic.parameters() if p.requires_grad]
        opt.critic = make_optimizer(opt.critic_params, cfg.critic_lr or 5 * cfg.lr, cfg.weight_decay)
    if models.prm is not None:
        opt.prm_params = [p for p in models.prm.parameters() if p.requires_grad]
        opt.prm = make_optimizer(opt.prm_params, cfg.prime_lr or cfg.lr, cfg.weight_decay)
    return opt


def prompt_batch(rows: list, step: int, per_step: int, seed: int) -> list:
    """The prompts of RL step `step`: a fixed function of (seed, step), so resume sees the same data."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, len(rows))
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(rows[int(order[pos])])
    return out


def shape_rewards(cfg, spec, exp, kl_coef: float, moments, baseline, prm_logprobs=None):
    """Stages 2-4: normalized scores, KL, per-token rewards and advantages. Returns (UpdateBatch, metrics)."""
    from rlhfkit import algos as A

    mask = exp.response_mask
    raw = exp.scores.float()
    scores = raw
    metrics = {}
    if cfg.normalize_rewards:
        moments.update(raw)
        scores = (raw - moments.mean) / (moments.std + 1e-8)
        metrics["reward/normalized_mean"] = float(scores.mean())
    if cfg.reward_clip is not None:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    ref = exp.ref_logprobs
    if exp.logprobs is None:  # single pass with the KL (if any) in the loss: kl/mean comes from the update
        token_rewards = A.kl_shaped_rewards(scores, mask.new_zeros(mask.shape), mask.new_zeros(mask.shape), mask, 0.0)
    elif ref is not None:
        kl_tok = A.kl_divergence(exp.logprobs, ref, "k1") * mask  # (B, R)
        metrics["kl/mean"] = float(kl_tok.sum(-1).mean())
        metrics["kl/token_mean"] = float(A.masked_mean(kl_tok, mask))
        reward_beta = 0.0 if _kl_in_loss(cfg, spec) else kl_coef
        token_rewards = A.kl_shaped_rewards(scores, exp.logprobs, ref, mask, reward_beta,
                                            estimator=_kl_estimator(cfg, spec))
    else:
        metrics["kl/mean"] = 0.0
        token_rewards = A.kl_shaped_rewards(scores, exp.logprobs, exp.logprobs, mask, 0.0)
    n = exp.group_size
    process = None
    if prm_logprobs is not None:
        process = A.implicit_process_rewards(prm_logprobs, ref, mask, cfg.prime_beta)
    inputs = A.AdvantageInputs(token_rewards=token_rewards, mask=mask, values=exp.values, group_size=n,
                               gamma=cfg.gamma, lam=cfg.lam, normalize_std=cfg.grpo_std_normalize,
                               baseline=baseline, process_rewards=process, whiten=False,
                               # The outcome includes the KL penalty when the KL is in the reward.
                               outcome_scores=token_rewards.sum(-1))
    advantages, returns = A.compute_advantages(spec.advantage, inputs)
    whiten = spec.whiten if cfg.whiten_advantages is None else cfg.whiten_advantages
    loss_mask = mask
    if cfg.drop_uniform_groups and n > 1:
        keep = A.nonuniform_groups(raw, n)  # (B,)
        loss_mask = mask * keep[:, None].to(mask.dtype)
        metrics["groups/dropped_fraction"] = 1.0 - float(keep.float().mean())
    if whiten and loss_mask.sum() > 1:
        advantages = A.masked_whiten(advantages, loss_mask) * loss_mask
    valid = loss_mask.sum() > 1
    metrics.update({"advantages/mean": float(A.masked_mean(advantages, loss_mask)),
                    "advantages/std": float(A.masked_var(advantages, loss_mask).sqrt()) if valid else 0.0,
                    "returns/mean": float(A.masked_mean(returns, mask))})
    if exp.values is not None:
        ev = float(A.explained_variance(exp.values, returns, mask))
        if ev == ev:  # undefined (NaN) when every return is equal: nothing to explain, nothing logged
            metrics["value/explained_variance"] = ev
    batch = UpdateBatch(input_ids=exp.input_ids, attention_mask=exp.attention_mask, position_ids=exp.position_ids,
                        loss_mask=loss_mask, old_logprobs=exp.logprobs, ref_logprobs=ref, advantages=advantages,
                        returns=returns, old_values=exp.values)
    return batch, metrics


def rollout_metrics(exp, gold_scores=None) -> dict:
    """Score and length statistics of a batch; gold_scores (N,) from the task's gold reward, if any."""
    raw = exp.scores.float()
    lengths = exp.response_mask.sum(-1).float()
    out = {"reward/score_mean": float(raw.mean()), "reward/score_std": float(raw.std()) if raw.numel() > 1 else 0.0,
           "reward/score_min": float(raw.min()), "reward/score_max": float(raw.max()),
           "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
           "response/eos_fraction": float(exp.eos.float().mean()),
           "response/truncated_fraction": 1.0 - float(exp.eos.float().mean())}
    if gold_scores is not None:
        out["reward/gold_mean"] = float(gold_scores.float().mean())
    return out


def global_view(w, exp, gold_scores=None):
    """What the statistics of a step need from the whole batch, gathered from every rank in rank
    order (the order of one process's batch): scores, masks, logprobs, values, (N, R_max) padded.
    With one process, the experience itself."""
    if not w.enabled:
        return exp, gold_scores
    from rlhfkit.trainers.distributed import gather_rows

    view = SimpleNamespace(**{k: gather_rows(w, getattr(exp, k)) for k in (
        "scores", "response_mask", "logprobs", "ref_logprobs", "values")})
    view.eos = gather_rows(w, exp.eos)
    view.group_size = exp.group_size
    view.input_ids = view.attention_mask = view.position_ids = None  # the update reads the local ones
    return view, gather_rows(w, gold_scores)


def local_batch(batch, exp, offset: int):
    """This rank's rows [offset, offset + n) of a batch shaped from the global view, cropped to the
    local response length, with the local token ids."""
    from rlhfkit.trainers.rl_update import UpdateBatch

    n, R = exp.response_mask.shape
    fields = {k: (v[offset:offset + n, :R] if torch.is_tensor(v) else v) for k, v in batch.__dict__.items()}
    fields.update(input_ids=exp.input_ids, attention_mask=exp.attention_mask, position_ids=exp.position_ids)
    return UpdateBatch(**fields)


def update_prm(cfg, models, opt, exp, step: int) -> tuple[torch.Tensor, dict]:
    """PRIME: one step of the implicit PRM on outcome labels (scores in [0, 1]); returns fresh PRM logprobs."""
    from rlhfkit.algos import prime_prm_loss
    from rlhfkit.models import response_logprobs
    from rlhfkit.trainers.rl_update import optimizer_step

    R = exp.response_mask.shape[1]
    labels = exp.scores.float().clamp(0, 1)
    prm_lp = response_logprobs(models.prm, exp.input_ids, exp.attention_mask, exp.position_ids, R,
                               temperature=cfg.temperature)
    loss, stats = prime_prm_loss(prm_lp, exp.ref_logprobs, exp.response_mask, labels, cfg.prime_beta)
    loss.backward()
    optimizer_step(step, "prm", opt.prm_params, opt.prm, None, cfg.max_grad_norm)
    with torch.no_grad():
        fresh = response_logprobs(models.prm, exp.input_ids, exp.attention_mask, exp.position_ids, R,
                                  temperature=cfg.temperature)
    return fresh, {"prime/prm_loss": float(loss.detach()), "prime/prm_accuracy": float(stats["accuracy"]),
                   "prime/reward_mean": float(stats["reward_mean"])}


def _ptx_stream(cfg, tokenizer, device, rank: int = 0):
    from rlhfkit.data import collate_sft, load_sft, tokenize_sft

    examples, _ = tokenize_sft(load_sft(cfg.ptx_data), tokenizer, cfg.max_prompt_length + cfg.max_new_tokens)
    size = cfg.micro_batch_size or cfg.minibatch_size or cfg.prompts_per_step
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * rank)  # each rank its own demonstrations
    for _ in itertools.count():
        for idx in torch.randperm(len(examples), generator=gen).split(size):
            batch = collate_sft([examples[i] for i in idx.tolist()], tokenizer.pad_token_id)
            yield {k: v.to(device) for k, v in batch.items()}


def train_rl(cfg: RLConfig) -> dict:
    """Run RL end to end; returns {"output", "final", last metrics}."""
    from rlhfkit import algos as A
    from rlhfkit.data import load_prompts, prompt_fields, tokenize_prompts
    from rlhfkit.models import save_model
    from rlhfkit.reporting import MetricsLogger, progress
    from rlhfkit.rollout import GenerationSettings, make_experience
    from rlhfkit.rollout.seeded import row_keys

    spec = get_algorithm(cfg.algo)
    out_dir = Path(cfg.output)
    w, device = init_distributed(cfg.device)
    _check_world(cfg, spec, w)
    if w.main:
        save_config(cfg, out_dir)
    set_seed(cfg.seed)
    from rlhfkit.trainers.common import configure_cpu_threads
    threads = configure_cpu_threads(device)  # 1 thread on a CPU already kept busy by other jobs (see its docstring)
    models = build_models(cfg, spec, device)
    trained = {"policy": models.policy, **({"critic": models.critic} if models.critic is not None else {}),
               **({"prm": models.prm} if models.prm is not None else {})}
    broadcast_parameters(w, trained.values())
    if cfg.fsdp:  # before the optimizers: they must hold the sharded parameters
        frozen = [models.reference, getattr(models.scorer, "reward_model", None)]
        for m in [*trained.values(), *(f for f in frozen if f is not None)]:
            shard_model(m, cfg.fsdp_param_dtype, cfg.fsdp_cpu_offload)
    rows, prompt_stats = tokenize_prompts(load_prompts(cfg.prompts, prompt_field=cfg.prompt_field), models.tokenizer,
                                          cfg.max_prompt_length, overlong=cfg.overlong)
    if not rows:
        raise ConfigError(f"{cfg.prompts}: no prompt left after over-long handling ({prompt_stats})")
    opt = build_optimizers(cfg, models)
    n = cfg.n or spec.n
    single_pass = _single_pass(cfg, spec, cfg.prompts_per_step * n)
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  top_k=cfg.top_k, n=n, stop_strings=tuple(cfg.stop_strings))
    kl_ctl = (A.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
              else A.FixedKLController(cfg.kl_coef))
    penalty_ctl = A.AdaptivePenaltyCoef(cfg.penalty_coef, cfg.penalty_target)
    moments = A.RunningMoments()
    baseline = A.MovingAverageBaseline(cfg.baseline_decay)
    ptx = _ptx_stream(cfg, models.tokenizer, device, w.rank) if cfg.ptx_coef > 0 else None
    if w.enabled:  # ranks sample different responses (unless seeded_sampling makes them row-keyed)
        torch.manual_seed(cfg.seed + 1_000_003 * w.rank)
    # Dropout stays off for the whole run (eval mode also while training): the update's logprobs
    # must equal the rollout's at the first pass, or the PPO ratio is noise before any step.
    for m in trained.values():
        m.eval()
    stateful = {"kl_ctl": kl_ctl, "penalty_ctl": penalty_ctl, "moments": moments, "baseline": baseline}

    health = HealthMonitor.from_config(cfg)
    stateful["health"] = health
    uses_rollback = any(getattr(health.config, f"{d}_policy") == "rollback" for d in DETECTOR_NAMES)
    keep = 2 + (math.ceil(health.config.longest_window / cfg.save_every) if uses_rollback else 0)

    def checkpoint():
        state = _trainer_state(step, opt, stateful, w, trained)
        weights = {k: full_state_dict(m) for k, m in trained.items()} if cfg.fsdp else trained
        if w.main:
            save_checkpoint(out_dir / "checkpoints", step, weights, state, keep_last=keep)
        barrier(w)

    step = 0
    if cfg.resume and (ckpt := latest_checkpoint(out_dir / "checkpoints")) is not None:
        step = _restore(ckpt, trained, opt, stateful, world=w)
        if w.main:
            print(f"[rl] resumed from {ckpt} at step {step}")
    if uses_rollback and latest_checkpoint(out_dir / "checkpoints") is None:
        checkpoint()  # the starting point is healthy by definition: always something to roll back to

    new_logger = (lambda at: MetricsLogger(out_dir, backends=tuple(cfg.report_to), resume_step=at)) if w.main \
        else (lambda at: NullLogger())
    logger = new_logger(step)
    ranks = f"; {w.size} ranks" if w.enabled else ""
    # The thread count is part of the record: float sums, and so the sampled tokens, depend on it.
    cpu = f"; {threads} CPU thread(s)" if device.type == "cpu" else ""
    logger.event(step, "start", f"{cfg.algo}: {spec.summary}; {len(rows)} prompts ({prompt_stats}){ranks}{cpu}",
                 threads=threads)
    bar = progress(cfg.steps, desc=f"rl {cfg.algo}", quiet=None if w.main else True)
    bar.update(step)
    stop = StopFlag()
    metrics: dict = {}
    with stop.installed():
        while step < cfg.steps:
            t0 = time.perf_counter()
            # This rank's share of the step's prompts: whole groups, so group statistics stay local.
            lo, hi = w.share(cfg.prompts_per_step, "prompts per step")
            batch_rows = prompt_batch(rows, step, cfg.prompts_per_step, cfg.seed)[lo:hi]
            keys = row_keys(cfg.seed, step, torch.arange(lo * n, hi * n)) if cfg.seeded_sampling else None
            # 1-3. rollout: generate, policy / reference logprobs, values, scores
            exp = make_experience(models.policy, models.tokenizer, [r["prompt_text"] for r in batch_rows], settings,
                                  reference=models.reference, critic=models.critic, scorer=models.scorer,
                                  fields=prompt_fields(batch_rows), ref_context=models.ref_context,
                                  prompt_ids=[r["prompt_ids"] for r in batch_rows],
                                  policy_logprobs=not single_pass, row_keys=keys)
            t_rollout = time.perf_counter() - t0
            view, gold_scores = global_view(w, exp, models.gold(exp) if models.gold is not None else None)
            metrics = rollout_metrics(view, gold_scores)
            prm_lp = None
            if models.prm is not None:
                prm_lp, prm_stats = update_prm(cfg, models, opt, exp, step)
                metrics.update(prm_stats)
            # 4. rewards, KL and advantages
            batch, shaped = shape_rewards(cfg, spec, view, kl_ctl.value, moments, baseline, prm_lp)
            metrics.update(shaped)
            shard = None
            if w.enabled:
                shard = Shard(lo * n, batch.loss_mask, w)
                batch = local_batch(batch, exp, lo * n)
            # 5-6. policy and critic updates (the critic alone during warm-up)
            t1 = time.perf_counter()
            has_signal = bool((batch.loss_mask if shard is None else shard.loss_mask).sum() > 0)
            if not has_signal:
                logger.event(step + 1, "groups_all_dropped", "every group had equal scores; no update this step")
            try:
                if has_signal:
                    metrics.update(run_updates(cfg, spec, step, batch, models, opt, kl_ctl.value, penalty_ctl.value,
                                               update_policy=step >= cfg.critic_warmup_steps, ptx_stream=ptx,
                                               shard=shard))
            except TrainingError as err:
                logger.event(step + 1, "nonfinite", str(err))
                logger.close()
                bar.close()
                raise
            # 7. KL controllers
            metrics["kl/coef"] = kl_ctl.value
            metrics.setdefault("kl/mean", 0.0)  # no reference model, or no update this step
            kl_ctl.update(metrics["kl/mean"], n_steps=view.response_mask.shape[0])
            if spec.policy_loss == "penalty" and "policy/kl" in metrics:
                penalty_ctl.update(metrics["policy/kl"], n_steps=view.response_mask.shape[0])
                metrics["policy/penalty_coef"] = penalty_ctl.value
            step += 1
            # 8. log and checkpoint
            metrics.update({"lr": opt.policy_sched.get_last_lr()[0], "time/generate_s": t_rollout,
                            "time/train_s": time.perf_counter() - t1, "time/step_s": time.perf_counter() - t0})
            if step % cfg.log_every == 0 or step == cfg.steps:
                logger.log(step, metrics)
            bar.update(1, score=metrics["reward/score_mean"], kl=metrics["kl/mean"])
            # Run health: named warnings, and the configured policy (warn, stop, roll back).
            warnings = health.update(step, metrics)
            for warn in warnings:
                logger.event(warn.step, warn.detector, warn.message, **warn.event_data())
            action = health.action(warnings)
            if action == "rollback":
                target = health.rollback_step(warnings, [int(p.name.split("-")[1])
                                                         for p in list_checkpoints(out_dir / "checkpoints")])
                if target is not None:
                    _restore(out_dir / "checkpoints" / f"step-{target:06d}", trained, opt, stateful, skip=("health",),
                             world=w)
                    health.rolled_back(target)
                    _after_rollback(cfg, opt, health.rollbacks, target + 7 * w.rank)
                    logger.close()
                    logger = new_logger(target)
                    logger.event(target, "rollback", f"rolled back from step {step} to the checkpoint of step "
                                 f"{target} after {', '.join(x.detector for x in warnings)}; policy lr halved")
                    step = target
                    continue
                action = "stop"
            if action == "stop":
                checkpoint()
                logger.event(step, "stopped", f"stopped by the health monitor "
                             f"({', '.join(x.detector for x in warnings)}); checkpoint of step {step} saved")
                break
            # A signal may reach one rank first: every rank checkpoints and stops at the same step.
            stop.requested = any_rank(w, stop.requested)
            if (cfg.save_every and step % cfg.save_every == 0) or stop.requested:
                checkpoint()
            if stop.requested:
                bar.close()
                logger.close()
                raise RunInterrupted(stop.signal_name, step, out_dir)
    bar.close()
    logger.close()
    final = out_dir / "final"
    policy, critic = models.policy, models.critic
    if cfg.fsdp:  # rank 0 saves unsharded copies in plain HF format
        policy, critic = _unsharded(cfg, w, policy, critic)
    if w.main:
        final = Path(save_model(policy, models.tokenizer, final))
        if critic is not None:
            critic.save_pretrained(final / "critic")
    barrier(w)
    return {"output": str(out_dir), "final": str(final), **metrics}


def _unsharded(cfg: RLConfig, w, policy, critic):
    """Plain copies of sharded models on rank 0 (None elsewhere), for saving; a collective."""
    from rlhfkit import models as M

    policy_state = full_state_dict(policy)
    critic_state = full_state_dict(critic) if critic is not None else None
    if not w.main:
        return None, None
    plain = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
    plain.load_state_dict(policy_state)
    plain_critic = None
    if critic is not None:
        plain_critic = M.load_critic(cfg.critic or cfg.reward_model or cfg.policy, dtype=cfg.dtype, device="cpu",
                                     trust_remote_code=cfg.trust_remote_code)
        plain_critic.load_state_dict(critic_state)
        plain_critic.reward_mean, plain_critic.reward_std = critic.reward_mean, critic.reward_std
    return plain, plain_critic


def _check_world(cfg: RLConfig, spec, w) -> None:
    """What a data-parallel run cannot do yet, said before any model is loaded."""
    check_fsdp(cfg, w)
    if not w.enabled:
        return
    if spec.policy_loss == "trpo" or spec.process_reward:
        raise ConfigError(f"--algo {cfg.algo} runs on one process only for now (its step needs more than summed "
                          f"gradients across ranks); launch it without torchrun")
    if cfg.prompts_per_step % w.size:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} cannot be split over {w.size} ranks; use a "
                          f"multiple of {w.size}")


def _single_pass(cfg: RLConfig, spec, batch: int) -> bool:
    """True when the policy takes exactly one gradient step on each fresh batch and nothing before the
    update needs its logprobs (no KL in the reward, no PRIME, no TRPO): the rollout's no-grad policy
    forward is then skipped, as its result would equal the update's own detached logprobs."""
    kl_in_reward = cfg.kl_coef > 0 and (cfg.kl_placement or spec.kl_placement) == "reward"
    return (cfg.ppo_epochs == 1 and (cfg.minibatch_size or batch) == batch and spec.policy_loss != "trpo"
            and not kl_in_reward and not spec.process_reward and cfg.critic_warmup_steps == 0)


def _trainer_state(step: int, opt, stateful: dict, w=None, trained=None) -> dict:
    """Everything besides weights that a resume needs (weights_only-loadable); in a data-parallel run
    (a collective: every rank calls it) also every rank's RNG state, and unsharded optimizer states."""
    trained = trained or {}
    return {"step": step, "rng": rng_state(), **rank_rng_states(w), "sched_policy": opt.policy_sched.state_dict(),
            **{f"opt_{k}": (optimizer_state(trained[k], getattr(opt, k)) if k in trained else getattr(opt, k).state_dict())
               for k in ("policy", "critic", "prm") if getattr(opt, k) is not None},
            **{k: v.state_dict() for k, v in stateful.items()}}


def _restore(ckpt, trained: dict, opt, stateful: dict, skip=(), world=None) -> int:
    """Load checkpoint `ckpt` into models, optimizers and stateful objects; returns its step."""
    state = load_checkpoint(ckpt, trained)
    set_rank_rng_state(state, world, ckpt)
    for name in ("policy", "critic", "prm"):
        if getattr(opt, name) is not None:
            load_optimizer_state(trained[name], getattr(opt, name), state[f"opt_{name}"])
    opt.policy_sched.load_state_dict(state["sched_policy"])
    for name, obj in stateful.items():
        if name not in skip and name in state:  # a checkpoint older than a component keeps its fresh state
            obj.load_state_dict(state[name])
    return int(state["step"])


def _after_rollback(cfg: RLConfig, opt, rollbacks: int, target: int) -> None:
    """Do not replay the failure as it was: halve the policy lr and draw other samples."""
    for group in opt.policy.param_groups:
        group["lr"] *= 0.5
    opt.policy_sched.base_lrs = [lr * 0.5 for lr in opt.policy_sched.base_lrs]
    torch.manual_seed(cfg.seed + 7919 * rollbacks + target)
