"""Stateful running statistics: score moments (PPO-max) and the REINFORCE moving-average baseline.

Both keep plain Python floats (float64) so long runs do not drift, and both checkpoint through
`state_dict()` / `load_state_dict()`. In multi-process training, update them with the
gathered batch so every rank holds the same state.
"""

from __future__ import annotations

import math

import torch


class RunningMoments:
    """Running mean and variance of every value seen, merged batch by batch.

    `update(x)` merges a batch with Chan et al.'s parallel algorithm (1979):
      delta = mean_b - mean;  n' = n + n_b;  mean' = mean + delta * n_b / n'
      M2' = M2 + M2_b + delta^2 * n * n_b / n'
    which equals the statistics of the concatenation of all batches. `var` and `std` are the
    population (biased) moments.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.m2 = 0.0
        self.count = 0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count > 0 else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Merge the values of `x` (any shape, e.g. scores (B,)); returns the batch's (mean, std)."""
        x = x.detach().double().flatten()
        n_b = x.numel()
        if n_b == 0:
            raise ValueError("RunningMoments.update got an empty tensor")
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.count * n_b / total
        self.count = total
        return mean_b, math.sqrt(m2_b / n_b)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])
        self.count = int(state["count"])


def normalize_and_clip_scores(
    scores: torch.Tensor,
    moments: RunningMoments,
    clip: float | None = None,
    update: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Reward normalization and clipping of PPO-max (Zheng et al. 2023, "Secrets of RLHF").

    scores: (B,) -> (B,):  clip((s - mu) / (sigma + eps), -clip, clip), with mu, sigma the running
    moments of all scores seen so far, including this batch when `update` (the default).
    `clip=None` skips the clipping.
    """
    if update:
        moments.update(scores)
    out = (scores - moments.mean) / (moments.std + eps)
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"score clip must be > 0, got {clip}")
        out = out.clamp(-clip, clip)
    return out


class MovingAverageBaseline:
    """The REINFORCE baseline b: an exponential moving average of batch mean returns.

    Williams 1992's REINFORCE with a baseline: A_t = G_t - b. The caller subtracts `value`
    first, then calls `update(batch_mean_return)`, so a batch's baseline never depends on that
    batch (which keeps the gradient unbiased). The average is bias-corrected like Adam's:
      ema_k = decay * ema_{k-1} + (1 - decay) * m_k;   value = ema_k / (1 - decay^k)
    so the first update sets `value` to the first batch mean. `value` is 0 before any update.
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverageBaseline decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.ema = 0.0
        self.n_updates = 0

    @property
    def value(self) -> float:
        if self.n_updates == 0:
            return 0.0
        return self.ema / (1.0 - self.decay ** self.n_updates)

    def update(self, batch_mean_return: float | torch.Tensor) -> None:
        self.ema = self.decay * self.ema + (1.0 - self.decay) * float(batch_mean_return)
        self.n_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "ema": self.ema, "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.ema = float(state["ema"])
        self.n_updates = int(state["n_updates"])


def scale_by_return_std(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    moments: RunningMoments,
    gamma: float = 1.0,
    update: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Reward scaling of PPO-max (Zheng et al. 2023, "Secrets of RLHF", after Engstrom et al. 2020,
    "Implementation Matters in Deep Policy Gradients"): divide the rewards by the running standard
    deviation of the discounted returns, without shifting their mean (a shift would change which
    responses are preferred once the returns are whitened or clipped).

    rewards, mask: (B, T) -> (B, T): rewards / (sigma_G + eps), sigma_G the running std of every
    sequence's return from its first token G_0 = sum_t gamma^t r_t seen so far, including this
    batch's when `update` (the default). A single return seen so far has no spread: divide by 1.
    """
    from rlhfkit.algos.advantages import discounted_returns

    g0 = discounted_returns(rewards, mask, gamma)[:, 0]  # (B,) return from the first token
    if update:
        moments.update(g0)
    std = moments.std if moments.count > 1 else 1.0
    return rewards / (std + eps)
