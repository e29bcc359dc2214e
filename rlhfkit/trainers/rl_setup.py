"""Setup of an RL run: models, optimizers, controllers, data and the rollout engine, as typed objects.

`setup_rl(cfg)` builds everything `rl_step` and the outer loop of `train_rl` read; nothing here
runs a step. Only what the algorithm needs is loaded (no critic without GAE, no reference when
beta = 0), as decided once by `resolve_algorithm`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit import algos as A
from rlhfkit import models as M
from rlhfkit.config import ConfigError, save_config
from rlhfkit.models.packing import enable_padding_free
from rlhfkit.reporting.health import DETECTOR_NAMES, HealthMonitor
from rlhfkit.rollout import (Engine, FunctionScorer, GenerationSettings, load_reward_function, load_reward_scorer,
                             make_engine)
from rlhfkit.rollout.ensemble import EnsembleScorer
from rlhfkit.rollout.sources import with_remote_rewards
from rlhfkit.trainers.algorithms import Algorithm, resolve_algorithm
from rlhfkit.trainers.common import configure_cpu_threads, make_optimizer, make_scheduler, set_seed
from rlhfkit.trainers.distributed import World, broadcast_parameters, check_fsdp, init_distributed, shard_model
from rlhfkit.trainers.probe import build_probe


@dataclass
class Models:
    """The models of a run; None where the algorithm does not need one."""

    tokenizer: object
    policy: torch.nn.Module
    scorer: object  # RewardModelScorer, FunctionScorer, RemoteScorer, ...: scorer(experience) -> (N,) scores
    # (a reward model of another family reads its own tokenizer's ids: rollout/reward_model.py)
    reference: torch.nn.Module | None = None
    ref_context: object = None  # LoRA: adapters_disabled, the policy computing as the reference
    gold: FunctionScorer | None = None  # logged only, never trained on
    critic: torch.nn.Module | None = None
    prm: torch.nn.Module | None = None  # PRIME's implicit process reward model
    # The probe's reference when training loads none (kl_coef 0): a frozen copy, or LoRA's adapters off.
    monitor_reference: torch.nn.Module | None = None
    monitor_context: object = None
    ensemble: object = None  # rollout.ensemble.EnsembleScorer with several reward models (also inside scorer)

    def set_padding_free(self, on: bool) -> None:
        """Decide once per model whether its forwards run on packed rows (`enable_padding_free`): policy
        (and the reference through its disabled adapters), reference, critic, PRM, the probe's reference
        and every in-process reward model."""
        for model in (self.policy, self.reference, self.critic, self.prm, self.monitor_reference,
                      *self.reward_models()):
            if model is not None:
                enable_padding_free(model, on)

    def reward_models(self) -> list:
        """The in-process reward models: an ensemble's members, the scorer's one, or none."""
        if self.ensemble is not None:
            return self.ensemble.reward_models
        model = getattr(self.scorer, "reward_model", None)
        return [] if model is None else [model]

    def trained(self) -> dict:
        """name -> module of every model with an optimizer (their weights are checkpointed)."""
        return {k: m for k, m in (("policy", self.policy), ("critic", self.critic), ("prm", self.prm))
                if m is not None}


@dataclass
class Optimizers:
    policy: torch.optim.Optimizer
    policy_params: list
    policy_sched: object
    critic: torch.optim.Optimizer | None = None
    critic_params: list = field(default_factory=list)
    prm: torch.optim.Optimizer | None = None
    prm_params: list = field(default_factory=list)

    def by_model(self) -> dict:
        """name -> optimizer, for the models that have one (the names of `Models.trained`)."""
        return {k: o for k, o in (("policy", self.policy), ("critic", self.critic), ("prm", self.prm))
                if o is not None}


@dataclass
class Controllers:
    """Objects whose state carries across steps and is checkpointed (each has state_dict())."""

    kl: object  # FixedKLController or AdaptiveKLController
    penalty: A.AdaptivePenaltyCoef
    moments: A.RunningMoments  # reward normalization
    baseline: A.MovingAverageBaseline  # reinforce
    health: HealthMonitor
    return_moments: A.RunningMoments  # reward scaling (std of the returns)

    def stateful(self) -> dict:
        return {"kl_ctl": self.kl, "penalty_ctl": self.penalty, "moments": self.moments, "baseline": self.baseline,
                "health": self.health, "return_moments": self.return_moments}


@dataclass
class RLRun:
    """Everything a run holds between steps."""

    cfg: object  # RLConfig
    algo: Algorithm
    world: World
    device: torch.device
    threads: int
    models: Models
    opt: Optimizers
    ctl: Controllers
    engine: Engine
    rows: list  # tokenized prompts
    prompt_stats: dict
    settings: GenerationSettings
    ptx: object = None  # PPO-ptx demonstration stream
    out_dir: Path = Path(".")
    probe: object = None  # trainers.probe.Probe, or None

    @property
    def uses_rollback(self) -> bool:
        return any(getattr(self.ctl.health.config, f"{d}_policy") == "rollback" for d in DETECTOR_NAMES)


def build_models(cfg, algo: Algorithm, device) -> Models:
    """Load only the models the algorithm needs: no critic without GAE, no reference when beta = 0."""
    trc = cfg.trust_remote_code
    tokenizer = M.load_tokenizer(cfg.policy, trust_remote_code=trc)
    policy = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    M.check_vocab_fits(policy, tokenizer, cfg.policy)
    reference, ref_context = None, None
    if cfg.lora_r:
        policy = M.apply_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha)
        ref_context = M.adapters_disabled if algo.needs_reference else None
    elif algo.needs_reference:
        reference = M.load_reference(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    local, ensemble = None, None
    if cfg.reward_model:
        members = [load_reward_scorer(path, tokenizer, dtype=cfg.dtype, device=device, trust_remote_code=trc)
                   for path in cfg.reward_model]
        ensemble = EnsembleScorer(members, cfg.reward_ensemble_k) if len(members) > 1 else None
        local = ensemble or members[0]
    elif cfg.reward_fn:
        local = FunctionScorer(load_reward_function(cfg.reward_fn))
    scorer = with_remote_rewards(cfg, local)  # + --reward-url services and the --reward-judge-url judge
    gold = FunctionScorer(load_reward_function(cfg.gold_fn)) if cfg.gold_fn else None
    critic = None
    if algo.critic:  # a critic reads the policy's tokens: refuse a base of another vocabulary
        M.check_critic_base(algo.critic_init, tokenizer, trust_remote_code=trc)
        critic = M.load_critic(algo.critic_init, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    prm = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc) \
        if algo.process_reward else None
    monitor_reference, monitor_context = None, None
    if cfg.probe_every and not algo.needs_reference:  # the probe still measures the KL to the start
        if cfg.lora_r:
            monitor_context = M.adapters_disabled
        else:
            monitor_reference = M.load_reference(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    return Models(tokenizer=tokenizer, policy=policy, scorer=scorer, reference=reference, ref_context=ref_context,
                  gold=gold, critic=critic, prm=prm, monitor_reference=monitor_reference,
                  monitor_context=monitor_context, ensemble=ensemble)


def build_optimizers(cfg, algo: Algorithm, models: Models) -> Optimizers:
    """AdamW per trained model. TRPO steps the policy itself and never uses its optimizer; it keeps
    lr logging and checkpoints uniform."""
    params = [p for p in models.policy.parameters() if p.requires_grad]
    policy = make_optimizer(params, cfg.lr, cfg.weight_decay)
    opt = Optimizers(policy=policy, policy_params=params,
                     policy_sched=make_scheduler(policy, cfg.steps, cfg.warmup_steps, "constant"))
    if models.critic is not None:
        opt.critic_params = [p for p in models.critic.parameters() if p.requires_grad]
        opt.critic = make_optimizer(opt.critic_params, algo.critic_lr, cfg.weight_decay)
    if models.prm is not None:
        opt.prm_params = [p for p in models.prm.parameters() if p.requires_grad]
        opt.prm = make_optimizer(opt.prm_params, algo.prime_lr, cfg.weight_decay)
    return opt


def build_controllers(cfg) -> Controllers:
    kl = (A.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
          else A.FixedKLController(cfg.kl_coef))
    return Controllers(kl=kl, penalty=A.AdaptivePenaltyCoef(cfg.penalty_coef, cfg.penalty_target),
                       moments=A.RunningMoments(), baseline=A.MovingAverageBaseline(cfg.baseline_decay),
                       health=HealthMonitor.from_config(cfg), return_moments=A.RunningMoments())


def ptx_stream(cfg, algo: Algorithm, tokenizer, device, rank: int = 0):
    """PPO-ptx demonstrations (any `rlhfkit sft` format), endlessly reshuffled, one micro-batch per call."""
    from rlhfkit.data import collate_sft, load_sft, tokenize_sft

    examples, _ = tokenize_sft(load_sft(cfg.ptx_data), tokenizer, cfg.max_prompt_length + cfg.max_new_tokens)
    # one demonstration micro-batch per optimizer step: micro_batch_size, else minibatch_size, else
    # prompts_per_step rows (as given in the config, not the algorithm's defaults)
    size = cfg.micro_batch_size or cfg.minibatch_size or cfg.prompts_per_step
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * rank)  # each rank its own demonstrations
    for _ in itertools.count():
        for idx in torch.randperm(len(examples), generator=gen).split(size):
            batch = collate_sft([examples[i] for i in idx.tolist()], tokenizer.pad_token_id)
            yield {k: v.to(device) for k, v in batch.items()}


def check_world(cfg, algo: Algorithm, w: World) -> None:
    """What a data-parallel run cannot do yet, said before any model is loaded."""
    check_fsdp(cfg, w)
    if not w.enabled:
        return
    if algo.update != "gradient" or algo.process_reward:
        raise ConfigError(f"--algo {cfg.algo} runs on one process only for now (its step needs more than summed "
                          f"gradients across ranks); launch it without torchrun")
    if cfg.prompts_per_step % w.size:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} cannot be split over {w.size} ranks; use a "
                          f"multiple of {w.size}")


def setup_rl(cfg) -> RLRun:
    """Resolve the algorithm, start the process group, load models and data, build optimizers,
    controllers and the rollout engine. Saves the resolved config and algorithm (rank 0)."""
    from rlhfkit.data import load_prompts, tokenize_prompts

    algo = resolve_algorithm(cfg)
    out_dir = Path(cfg.output)
    w, device = init_distributed(cfg.device)
    check_world(cfg, algo, w)
    if w.main:
        save_config(cfg, out_dir)
        save_config(algo, out_dir, name="algorithm.yaml")
    set_seed(cfg.seed)
    threads = configure_cpu_threads(device)  # 1 thread on a CPU already kept busy by other jobs (see its docstring)
    models = build_models(cfg, algo, device)
    broadcast_parameters(w, models.trained().values())
    if cfg.fsdp:  # before the optimizers: they must hold the sharded parameters
        frozen = [models.reference, *models.reward_models()]
        for m in [*models.trained().values(), *(f for f in frozen if f is not None)]:
            shard_model(m, cfg.fsdp_param_dtype, cfg.fsdp_cpu_offload)
    rows, prompt_stats = tokenize_prompts(load_prompts(cfg.prompts, prompt_field=cfg.prompt_field), models.tokenizer,
                                          cfg.max_prompt_length, overlong=cfg.overlong)
    if not rows:
        raise ConfigError(f"{cfg.prompts}: no prompt left after over-long handling ({prompt_stats})")
    getattr(models.scorer, "add_prompts", lambda rows: None)(rows)  # multi-turn chats re-rendered exactly
    opt = build_optimizers(cfg, algo, models)
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  top_k=cfg.top_k, n=algo.n, stop_strings=tuple(cfg.stop_strings))
    ctl = build_controllers(cfg)
    ptx = ptx_stream(cfg, algo, models.tokenizer, device, w.rank) if cfg.ptx_coef > 0 else None
    if w.enabled:  # ranks sample different responses (unless seeded_sampling makes them row-keyed)
        torch.manual_seed(cfg.seed + 1_000_003 * w.rank)
    # Dropout stays off for the whole run (eval mode also while training): the update's logprobs
    # must equal the rollout's at the first pass, or the PPO ratio is noise before any step.
    for m in models.trained().values():
        m.eval()
    engine = make_engine(cfg.engine, models.policy, models.tokenizer)
    return RLRun(cfg=cfg, algo=algo, world=w, device=device, threads=threads, models=models, opt=opt, ctl=ctl,
                 engine=engine, rows=rows, prompt_stats=prompt_stats, settings=settings, ptx=ptx, out_dir=out_dir,
                 probe=build_probe(cfg, models.tokenizer, rows, out_dir / "probe_samples.jsonl" if w.main else None))
