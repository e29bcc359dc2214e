"""Algorithms are data: which models each needs, its advantage estimator, where its KL goes.

The RL loop makes one lookup here (`get_algorithm`) and never compares an algorithm's name.
Config fields left as None (n, kl placement, whitening, ...) take the algorithm's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import ConfigError


@dataclass(frozen=True)
class AlgorithmSpec:
    """One RL algorithm of the loop.

    advantage: name in `rlhfkit.algos.ADVANTAGE_ESTIMATORS`.
    critic: trains a value model (GAE needs per-token values).
    kl_placement: "reward" (-beta*KL per token in the reward, Ziegler et al. 2019) or "loss"
        (beta*KL added to the policy loss, GRPO, Shao et al. 2024).
    policy_loss: "clip" (PPO clipped surrogate), "penalty" (PPO with adaptive KL(old||new) penalty)
        or "trpo" (conjugate-gradient natural step + line search under max_kl; no policy optimizer).
    n: default samples per prompt (group size); group estimators need n >= 2.
    whiten: default for whitening advantages over the batch (the loop does it, after dropping groups;
        the estimators themselves never whiten here).
    kl_estimator: default estimator ("k1" in the reward, "k3" in the loss).
    process_reward: keeps an implicit process reward model updated online (PRIME).
    """

    name: str
    advantage: str
    critic: bool = False
    kl_placement: str = "reward"
    policy_loss: str = "clip"
    n: int = 1
    whiten: bool = False
    kl_estimator: str = "k1"
    process_reward: bool = False
    summary: str = ""


ALGORITHMS: dict[str, AlgorithmSpec] = {s.name: s for s in [
    AlgorithmSpec("ppo", "gae", critic=True, whiten=True, summary="PPO: GAE critic, clipped surrogate, KL in reward"),
    AlgorithmSpec("trpo", "gae", critic=True, whiten=True, policy_loss="trpo",
                  summary="natural-gradient step under a hard KL limit (Schulman et al. 2015), GAE critic"),
    AlgorithmSpec("ppo-penalty", "gae", critic=True, whiten=True, policy_loss="penalty",
                  summary="PPO with an adaptive KL(old||new) penalty instead of the clip"),
    AlgorithmSpec("reinforce", "reinforce", summary="Monte-Carlo return minus a moving-average baseline"),
    AlgorithmSpec("rloo", "rloo", n=4, summary="REINFORCE leave-one-out: baseline = mean of the other samples"),
    AlgorithmSpec("grpo", "grpo", n=4, kl_placement="loss", kl_estimator="k3",
                  summary="group-normalized advantages, KL in the loss (DeepSeekMath)"),
    AlgorithmSpec("reinforce++", "reinforce++", whiten=True, summary="return-to-go whitened over the batch, KL in reward"),
    AlgorithmSpec("reinforce++-baseline", "reinforce++-baseline", n=4, whiten=True,
                  summary="group-mean baseline, then batch whitening"),
    AlgorithmSpec("prime", "prime", n=4, process_reward=True,
                  summary="implicit process rewards from an online PRM + leave-one-out baselines (Cui et al. 2025)"),
]}


def get_algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm '{name}'; choose one of: {', '.join(ALGORITHMS)}") from None
