"""Reward-model ensembles: one score per response from K reward models, and their disagreement.

Coste et al. 2023 ("Reward model ensembles help mitigate overoptimization"): where the members
disagree, the policy has left the ground they were trained on; a conservative reward
mean - k x std (their "uncertainty-weighted optimization" with the standard deviation) pays less
for answers only some members like.
"""

from __future__ import annotations

import torch


def ensemble_reward(scores: torch.Tensor, k: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (K, N): member k's score of response n. Returns (reward (N,), std (N,)):
    reward = mean over members - k x std, std = the members' population standard deviation
    (divided by K, so one member has std 0). k = 0 is the plain mean."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"ensemble_reward: scores must be (K, N) with K >= 1, got {tuple(scores.shape)}")
    if k < 0:
        raise ValueError(f"ensemble_reward: k must be >= 0 (a conservative reward), got {k}")
    mean = scores.mean(0)  # (N,)
    std = scores.std(0, unbiased=False)  # (N,)
    return mean - k * std, std
