"""Algorithms are data: which models each needs, its advantage estimator and policy loss, where its KL goes.

`ALGORITHMS` holds one `AlgorithmSpec` row per `--algo`. `resolve_algorithm(cfg)` decides every
effective setting once (config value, else the algorithm's default) and returns an `Algorithm`;
the RL loop reads only that object, never `cfg.x or spec.x`, and never compares a name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rlhfkit.errors import ConfigError

UPDATES = ("gradient", "trpo")


@dataclass(frozen=True)
class AlgorithmSpec:
    """One RL algorithm of the loop.

    advantage: name in `rlhfkit.algos.ADVANTAGE_ESTIMATORS`.
    policy_loss: name in `rlhfkit.algos.POLICY_LOSSES` ("clip", "penalty", "pg", ...), used by the
        "gradient" update.
    update: how the policy moves: "gradient" (its optimizer steps on the summed micro-batch
        gradients of `policy_loss`) or "trpo" (conjugate-gradient natural step + line search under
        max_kl; no policy optimizer step).
    critic: trains a value model (GAE needs per-token values).
    kl_placement: "reward" (-beta*KL per token in the reward, Ziegler et al. 2019), "reward-end"
        (the response's summed KL charged once, at its last token) or "loss" (beta*KL added to the
        policy loss, GRPO, Shao et al. 2024).
    n: default samples per prompt (group size); group estimators need n >= 2.
    whiten: default for whitening advantages over the batch (the loop does it, after dropping groups;
        the estimators themselves never whiten here).
    kl_estimator: the estimator for the default placement ("k1" in the reward, "k3" in the loss).
    process_reward: keeps an implicit process reward model updated online (PRIME).
    loss_agg, clip_eps, clip_eps_high: the defaults of the config fields of the same names (the
        aggregation mode of `aggregate_loss`; the ratio clip range of the policy loss).
    ppo_epochs, minibatches: default passes over each batch of experience, and the number of
        minibatches (optimizer steps) per pass: PPO's data reuse. 1, 1 is one gradient step per batch.
    """

    name: str
    advantage: str
    policy_loss: str = "clip"
    update: str = "gradient"
    critic: bool = False
    kl_placement: str = "reward"
    n: int = 1
    whiten: bool = False
    kl_estimator: str = "k1"
    process_reward: bool = False
    loss_agg: str = "token-mean"
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    ppo_epochs: int = 1
    minibatches: int = 1
    summary: str = ""


ALGORITHMS: dict[str, AlgorithmSpec] = {s.name: s for s in [
    # PPO reuses each batch: 2 passes over it (docs/rl/ppo.md, "Defaults", has the measurement behind it).
    AlgorithmSpec("ppo", "gae", critic=True, whiten=True, ppo_epochs=2,
                  summary="PPO: GAE critic, clipped surrogate, KL in reward"),
    AlgorithmSpec("trpo", "gae", critic=True, whiten=True, update="trpo",
                  summary="natural-gradient step under a hard KL limit (Schulman et al. 2015), GAE critic"),
    AlgorithmSpec("ppo-penalty", "gae", critic=True, whiten=True, policy_loss="penalty", ppo_epochs=2,
                  summary="PPO with an adaptive KL(old||new) penalty instead of the clip"),
    AlgorithmSpec("reinforce", "reinforce", summary="Monte-Carlo return minus a moving-average baseline"),
    AlgorithmSpec("rloo", "rloo", n=4, summary="REINFORCE leave-one-out: baseline = mean of the other samples"),
    AlgorithmSpec("grpo", "grpo", n=4, kl_placement="loss", kl_estimator="k3",
                  summary="group-normalized advantages, KL in the loss (DeepSeekMath)"),
    AlgorithmSpec("reinforce++", "reinforce++", whiten=True, summary="return-to-go whitened over the batch, KL in reward"),
    AlgorithmSpec("reinforce++-baseline", "reinforce++-baseline", n=4, whiten=True,
                  summary="group-mean baseline, then batch whitening"),
    AlgorithmSpec("gspo", "grpo", policy_loss="gspo", n=4, kl_placement="loss", kl_estimator="k3",
                  loss_agg="seq-mean-token-mean", clip_eps=3e-4, clip_eps_high=4e-4,
                  summary="group advantages, one clipped importance ratio per sequence (Zheng et al. 2025)"),
    AlgorithmSpec("cispo", "grpo", policy_loss="cispo", n=4, kl_placement="loss", kl_estimator="k3",
                  clip_eps=1.0, clip_eps_high=0.28,
                  summary="REINFORCE with a clipped, stop-gradient importance weight on every token (MiniMax-M1)"),
    AlgorithmSpec("prime", "prime", n=4, process_reward=True,
                  summary="implicit process rewards from an online PRM + leave-one-out baselines (Cui et al. 2025)"),
]}


def get_algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm '{name}'; choose one of: {', '.join(ALGORITHMS)}") from None


@dataclass(frozen=True)
class Algorithm:
    """The effective settings of one run: the spec's defaults with the config's choices applied.

    Decided once by `resolve_algorithm`, logged in the run's `start` event and saved as
    OUTPUT/algorithm.yaml beside config.yaml.
    """

    name: str
    summary: str
    advantage: str
    policy_loss: str | None  # None when the update is not a loss (trpo)
    update: str
    critic: bool
    process_reward: bool
    n: int  # samples per prompt
    kl_placement: str  # "reward", "reward-end" or "loss"
    kl_estimator: str
    kl_in_loss: bool  # else the KL penalty is charged in the reward (per token, or summed at the end)
    kl_at_end: bool  # "reward-end": the response's summed KL charged at its last token
    needs_reference: bool  # kl_coef > 0, or PRIME's implicit rewards
    whiten: bool
    loss_agg: str
    clip_eps: float
    clip_eps_high: float | None
    ppo_epochs: int  # passes over each batch of experience
    batch_size: int  # sequences per step: prompts_per_step x n
    minibatch_size: int  # sequences per optimizer step
    micro_batch_size: int  # sequences per forward/backward
    micro_batch_tokens: int  # valid tokens per forward/backward (0: micro_batch_size rows instead)
    single_pass: bool  # one gradient step on fresh samples: the rollout's policy forward is skipped
    critic_init: str | None  # folder the critic starts from
    critic_lr: float | None
    prime_lr: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _kl_estimator(cfg, spec: AlgorithmSpec, placement: str) -> str:
    """The configured estimator, else the algorithm's for its own placement, else k3 in the loss / k1
    in the reward (k1 summed over a response is the unbiased sequence KL that the reward charges)."""
    if cfg.kl_estimator:
        return cfg.kl_estimator
    if placement == spec.kl_placement:
        return spec.kl_estimator
    return "k3" if placement == "loss" else "k1"


def default_minibatch_size(cfg, spec: AlgorithmSpec, batch: int) -> int:
    """`batch / spec.minibatches` when that divides the batch, else the whole batch (a batch too
    small to split keeps one optimizer step per pass rather than failing)."""
    if cfg.minibatch_size:
        return cfg.minibatch_size
    return batch // spec.minibatches if batch % spec.minibatches == 0 else batch


def resolve_algorithm(cfg) -> Algorithm:
    """Every effective setting of `cfg.algo` under this config (an RLConfig), decided once."""
    spec = get_algorithm(cfg.algo)
    n = cfg.n or spec.n
    placement = cfg.kl_placement or spec.kl_placement
    batch = cfg.prompts_per_step * n
    minibatch = default_minibatch_size(cfg, spec, batch)
    epochs = cfg.ppo_epochs or spec.ppo_epochs
    kl_in_reward = cfg.kl_coef > 0 and placement != "loss"
    # One gradient step on each fresh batch, and nothing before the update needs the policy's
    # logprobs: the rollout's no-grad forward would equal the update's own detached logprobs.
    single_pass = (epochs == 1 and minibatch == batch and spec.update == "gradient"
                   and not kl_in_reward and not spec.process_reward and cfg.critic_warmup_steps == 0)
    return Algorithm(
        name=spec.name, summary=spec.summary, advantage=spec.advantage,
        policy_loss=spec.policy_loss if spec.update == "gradient" else None, update=spec.update,
        critic=spec.critic, process_reward=spec.process_reward, n=n, kl_placement=placement,
        kl_estimator=_kl_estimator(cfg, spec, placement), kl_in_loss=placement == "loss",
        kl_at_end=placement == "reward-end", needs_reference=cfg.kl_coef > 0 or spec.process_reward,
        whiten=spec.whiten if cfg.whiten_advantages is None else cfg.whiten_advantages,
        loss_agg=cfg.loss_agg or spec.loss_agg, clip_eps=spec.clip_eps if cfg.clip_eps is None else cfg.clip_eps,
        clip_eps_high=spec.clip_eps_high if cfg.clip_eps_high is None else cfg.clip_eps_high,
        ppo_epochs=epochs, batch_size=batch, minibatch_size=minibatch, micro_batch_size=cfg.micro_batch_size or minibatch,
        micro_batch_tokens=cfg.micro_batch_tokens,
        single_pass=single_pass,
        critic_init=(cfg.critic or next(iter(cfg.reward_model), None) or cfg.policy) if spec.critic else None,
        critic_lr=(cfg.critic_lr or 5 * cfg.lr) if spec.critic else None,
        prime_lr=(cfg.prime_lr or cfg.lr) if spec.process_reward else None)
