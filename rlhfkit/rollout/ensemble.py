"""Several reward models scoring as one: `rlhfkit rl --reward-model a --reward-model b`."""

from __future__ import annotations

import torch

from rlhfkit.algos.ensemble import ensemble_reward


class EnsembleScorer:
    """Scores each response with every member (each normalized by its own reward_mean / reward_std, so
    their scales agree) and returns `ensemble_reward(scores, k)`: the mean, minus k x the members'
    standard deviation when k > 0. `last_std` (N,) holds the disagreement of the latest call;
    `pop_metrics` reports its mean as reward/ensemble_std."""

    name = "reward-model ensemble"

    def __init__(self, members: list, k: float = 0.0):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 reward models, got {len(members)}")
        self.members, self.k = list(members), float(k)
        self.last_std: torch.Tensor | None = None

    @property
    def reward_model(self):  # the first member's model (as a single reward model scorer exposes its own)
        return self.members[0].reward_model

    @property
    def reward_models(self) -> list:
        return [m.reward_model for m in self.members]

    @property
    def how(self) -> str:
        return "; ".join(f"member {i}: {m.how}" for i, m in enumerate(self.members))

    def add_prompts(self, rows) -> None:
        for m in self.members:
            m.add_prompts(rows)

    def member_scores(self, experience) -> torch.Tensor:
        """(K, N) each member's scores of the experience's responses."""
        return torch.stack([m(experience).float() for m in self.members])

    def __call__(self, experience) -> torch.Tensor:
        reward, self.last_std = ensemble_reward(self.member_scores(experience), self.k)
        return reward

    def pop_metrics(self) -> dict:
        if self.last_std is None:
            return {}
        out, self.last_std = {"reward/ensemble_std": float(self.last_std.mean())}, None
        return out
