"""Stage 3: the one RL loop every algorithm runs through.

`train_rl(cfg)`: 1. setup (`rl_setup.setup_rl`: the algorithm resolved once, models, optimizers,
controllers, data, the rollout engine); 2. resume from the newest checkpoint; 3. the outer loop:
`rl_step` (rollout -> score -> shape -> advantages -> update), then log, run health (warn / stop /
roll back) and checkpoint; 4. the final save. What differs between algorithms is data
(`trainers/algorithms.py`), never a branch here.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlhfkit import models as M
from rlhfkit.reporting import MetricsLogger, progress
from rlhfkit.rollout.remote import REMOTE_COUNTERS, RewardServiceError, scorer_metrics
from rlhfkit.trainers.checkpoint import (latest_checkpoint, list_checkpoints, restore_trainer_state, rng_state,
                                         save_checkpoint, set_rng_state, trainer_state)
from rlhfkit.trainers.common import RunInterrupted, StopFlag, TrainingError
from rlhfkit.trainers.distributed import NullLogger, any_rank, barrier, full_state_dict
from rlhfkit.trainers.probe import keep_if_best, run_probe
from rlhfkit.trainers.rl_config import RLConfig
from rlhfkit.trainers.rl_setup import RLRun, setup_rl
from rlhfkit.trainers.rl_step import rl_step

__all__ = ["RLConfig", "train_rl"]


def train_rl(cfg: RLConfig) -> dict:
    """Run RL end to end; returns {"output", "final", last metrics}."""
    run = setup_rl(cfg)
    ckpts = _Checkpoints(run)
    step = ckpts.resume() if cfg.resume else 0
    # Packed or padded forwards, decided per model by a test forward: after the resume (a forward leaves
    # FSDP2's root parameters gathered, and a sharded checkpoint loads only into sharded ones).
    run.models.set_padding_free(cfg.padding_free)
    if run.uses_rollback and latest_checkpoint(ckpts.root) is None:
        ckpts.save(step)  # the starting point is healthy by definition: always something to roll back to
    logger = _new_logger(run, step)
    logger.event(step, "start", _start_message(run), threads=run.threads, algorithm=run.algo.to_dict())
    bar = progress(cfg.steps, desc=f"rl {cfg.algo}", quiet=None if run.world.main else True)
    bar.update(step)
    stop, metrics = StopFlag(), {}
    try:
        with stop.installed():
            if run.probe is not None:
                run.probe.forget_after(step)
                if step == 0:  # the starting policy's probe: what every later probe is compared with
                    _probe_at_start(run, logger, ckpts)
            while step < cfg.steps:
                rng = rng_state()  # a step that fails in scoring is saved as not begun (its samples drew on the RNG)
                try:
                    metrics, events = rl_step(run, step)
                except RewardServiceError as err:
                    _stop_on_reward_failure(run, ckpts, logger, step, rng, err)
                except TrainingError as err:
                    logger.event(step + 1, "nonfinite", str(err))
                    raise
                step += 1
                if run.probe is not None and step % cfg.probe_every == 0:
                    _probe_into(run, step, metrics, ckpts, logger)
                for name, message in events:
                    logger.event(step, name, message)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    logger.log(step, metrics)
                bar.update(1, score=metrics["reward/score_mean"], kl=metrics["kl/mean"])
                action, target, fired = _health(run, logger, step, metrics, ckpts)
                if action == "rollback":
                    logger.close()
                    logger = _new_logger(run, target)
                    if run.probe is not None:
                        run.probe.forget_after(target)
                    logger.event(target, "rollback", f"rolled back from step {step} to the checkpoint of step "
                                 f"{target} after {fired}; policy lr halved")
                    step = target
                    continue
                if action == "stop":
                    ckpts.save(step)
                    logger.event(step, "stopped", f"stopped by the health monitor ({fired}); checkpoint of step "
                                 f"{step} saved")
                    break
                # A signal may reach one rank first: every rank checkpoints and stops at the same step.
                stop.requested = any_rank(run.world, stop.requested)
                if (cfg.save_every and step % cfg.save_every == 0) or stop.requested:
                    ckpts.save(step)
                if stop.requested:
                    raise RunInterrupted(stop.signal_name, step, run.out_dir)
    finally:
        bar.close()
        logger.close()
    best = run.out_dir / "best"
    return {"output": str(run.out_dir), "final": str(_save_final(run)), **({"best": str(best)} if
            run.probe is not None and run.probe.best else {}), **metrics}


def _probe_at_start(run: RLRun, logger, ckpts) -> None:
    """Probe the starting policy (step 0): logged as a row of probe/* metrics, seen by the health monitor,
    and the first candidate for OUTPUT/best."""
    start: dict = {}
    _probe_into(run, 0, start, ckpts, logger)
    logger.log(0, start)
    _health(run, logger, 0, start, ckpts)


def _probe_into(run: RLRun, step: int, metrics: dict, ckpts, logger) -> None:
    """Add the probe of `step` to the step's metrics (reward-service counters, reward/remote_*, add up). A
    reward service that fails in the probe stops the run as in a step: the step's row logged, a checkpoint
    of `step` to resume."""
    try:
        probe = _probe(run, step)
    except RewardServiceError as err:
        if metrics:
            logger.log(step, metrics)
        _stop_on_reward_failure(run, ckpts, logger, step, rng_state(), err)
    for name, value in probe.items():
        metrics[name] = metrics.get(name, 0.0) + value if name.startswith(REMOTE_COUNTERS) else value


def _probe(run: RLRun, step: int) -> dict:
    """The held-out probe's metrics; the policy is kept as OUTPUT/best when this probe is the best yet
    (not under FSDP, whose sharded weights are only gathered for the final save)."""
    out, gold = run_probe(run.probe, run.models, step, engine=run.engine)
    # The probe's own requests to reward services, if any (an ensemble's spread is probe/ensemble_std already).
    out.update({k: v for k, v in scorer_metrics(run.models.scorer).items() if k.startswith(REMOTE_COUNTERS)})
    if not run.cfg.fsdp:  # files from rank 0 only; every rank keeps the record of the best
        keep_if_best(run.probe, out, step, lambda folder: M.save_model(run.models.policy, run.models.tokenizer, folder),
                     run.out_dir if run.world.main else None, gold=gold)
    return out


def _stop_on_reward_failure(run: RLRun, ckpts, logger, step: int, rng: dict, err: Exception) -> None:
    """A reward service or judge failed after its retries (--reward-on-error stop): checkpoint the last
    completed step with the RNG as it was before the failed step, so --resume repeats that step exactly."""
    set_rng_state(rng)
    ckpts.save(step)
    message = (f"{err}; stopped with a checkpoint of step {step} in {run.out_dir}/checkpoints: restart the "
               f"service and rerun the same command with --resume")
    logger.event(step, "reward_service_failed", message)
    raise TrainingError(message) from err


class _Checkpoints:
    """Save and restore the run's whole state (weights, optimizers, schedule, RNG, controllers) in
    OUTPUT/checkpoints; the state's layout is `checkpoint.trainer_state`'s."""

    def __init__(self, run: RLRun):
        self.run, self.root = run, run.out_dir / "checkpoints"
        health = run.ctl.health.config
        self.keep = 2 + (math.ceil(health.longest_window / run.cfg.save_every) if run.uses_rollback else 0)

    def _parts(self):
        run = self.run
        stateful = {**run.ctl.stateful(), **({"probe": run.probe} if run.probe is not None else {})}
        return run.models.trained(), run.opt.by_model(), {"policy": run.opt.policy_sched}, stateful

    def save(self, step: int) -> None:
        run = self.run
        trained, optimizers, schedulers, stateful = self._parts()
        state = trainer_state(step, optimizers, schedulers, stateful, trained, run.world)
        weights = {k: full_state_dict(m) for k, m in trained.items()} if run.cfg.fsdp else trained
        if run.world.main:
            save_checkpoint(self.root, step, weights, state, keep_last=self.keep)
        barrier(run.world)

    def restore(self, ckpt, skip=()) -> int:
        trained, optimizers, schedulers, stateful = self._parts()
        return restore_trainer_state(ckpt, trained, optimizers, schedulers, stateful, skip=skip, w=self.run.world)

    def resume(self) -> int:
        ckpt = latest_checkpoint(self.root)
        if ckpt is None:
            return 0
        step = self.restore(ckpt)
        if self.run.world.main:
            print(f"[rl] resumed from {ckpt} at step {step}")
        return step

    def steps(self) -> list[int]:
        return [int(p.name.split("-")[1]) for p in list_checkpoints(self.root)]


def _health(run: RLRun, logger, step: int, metrics: dict, ckpts: _Checkpoints) -> tuple[str | None, int, str]:
    """Run health after a step: log the warnings and carry out the configured policy. Returns
    (action, step, detectors that fired): "rollback" with the step rolled back to (its checkpoint is
    restored here), "stop", or None."""
    health = run.ctl.health
    warnings = health.update(step, metrics)
    for warn in warnings:
        logger.event(warn.step, warn.detector, warn.message, **warn.event_data())
    action = health.action(warnings)
    fired = ", ".join(x.detector for x in warnings)
    if action == "rollback":
        target = health.rollback_step(warnings, ckpts.steps())
        if target is not None:
            ckpts.restore(ckpts.root / f"step-{target:06d}", skip=("health",))
            health.rolled_back(target)
            _after_rollback(run, health.rollbacks, target + 7 * run.world.rank)
            return "rollback", target, fired
        action = "stop"
    return action, step, fired


def _after_rollback(run: RLRun, rollbacks: int, target: int) -> None:
    """Do not replay the failure as it was: halve the policy lr and draw other samples."""
    for group in run.opt.policy.param_groups:
        group["lr"] *= 0.5
    run.opt.policy_sched.base_lrs = [lr * 0.5 for lr in run.opt.policy_sched.base_lrs]
    torch.manual_seed(run.cfg.seed + 7919 * rollbacks + target)


def _new_logger(run: RLRun, step: int):
    if not run.world.main:
        return NullLogger()
    return MetricsLogger(run.out_dir, backends=tuple(run.cfg.report_to), resume_step=step)


def _start_message(run: RLRun) -> str:
    """The `start` event: the algorithm as resolved, the data and where it runs. The thread count is
    part of the record: float sums, and so the sampled tokens, depend on it."""
    a = run.algo
    ranks = f"; {run.world.size} ranks" if run.world.enabled else ""
    cpu = f"; {run.threads} CPU thread(s)" if run.device.type == "cpu" else ""
    return (f"{a.name}: {a.summary}; {len(run.rows)} prompts ({run.prompt_stats}){ranks}{cpu}; "
            f"n={a.n}, advantage={a.advantage}, update={a.update}, policy_loss={a.policy_loss}, "
            f"kl={a.kl_placement}/{a.kl_estimator}, whiten={a.whiten}, minibatch={a.minibatch_size}, "
            f"micro_batch={a.micro_batch_size}, engine={run.engine.name}")


def _save_final(run: RLRun) -> Path:
    """The final policy in Hugging Face format under OUTPUT/final (and its critic under final/critic)."""
    final = run.out_dir / "final"
    policy, critic = run.models.policy, run.models.critic
    if run.cfg.fsdp:  # rank 0 saves unsharded copies in plain HF format
        policy, critic = _unsharded(run, policy, critic)
    if run.world.main:
        final = Path(M.save_model(policy, run.models.tokenizer, final))
        if critic is not None:
            critic.save_pretrained(final / "critic")
    barrier(run.world)
    return final


def _unsharded(run: RLRun, policy, critic):
    """Plain copies of sharded models on rank 0 (None elsewhere), for saving; a collective."""
    cfg = run.cfg
    policy_state = full_state_dict(policy)
    critic_state = full_state_dict(critic) if critic is not None else None
    if not run.world.main:
        return None, None
    plain = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
    plain.load_state_dict(policy_state)
    plain_critic = None
    if critic is not None:
        plain_critic = M.load_critic(run.algo.critic_init, dtype=cfg.dtype, device="cpu",
                                     trust_remote_code=cfg.trust_remote_code)
        plain_critic.load_state_dict(critic_state)
        plain_critic.reward_mean, plain_critic.reward_std = critic.reward_mean, critic.reward_std
    return plain, plain_critic
