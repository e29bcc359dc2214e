"""KL estimators, KL-shaped token rewards, and the KL-coefficient controllers.

Notation: `d = logprobs - ref_logprobs = log pi(y_t) - log pi_ref(y_t)` for tokens sampled from
pi. Schulman's estimators of KL(pi || pi_ref) (http://joschu.net/blog/kl-approx.html):
  k1 = d                      unbiased, high variance, can be negative per token
  k2 = d**2 / 2               biased, low variance, >= 0
  k3 = exp(-d) - 1 + d        unbiased, low variance, >= 0   ((r - 1) - log r with r = pi_ref/pi)
  abs = |d|
"""

from __future__ import annotations

import torch

from rlhfkit.algos.masking import _valid

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def kl_divergence(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probabilities.

    logprobs, ref_logprobs: (B, T) -> (B, T). Not masked: the caller masks or aggregates.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        # expm1 keeps precision when d is tiny: exp(-d) - 1 + d is O(d^2)
        return torch.expm1(-d) + d
    if estimator == "abs":
        return d.abs()
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row: mask (B, T) -> (B,) int64.

    Read from the mask, never from pad/EOS ids (pad may equal EOS). Raises ValueError when
    a row has no valid token, since its score would have nowhere to go.
    """
    valid = _valid(mask)
    has_any = valid.any(dim=-1)
    if not bool(has_any.all()):
        rows = torch.nonzero(~has_any).flatten().tolist()
        raise ValueError(f"response_mask rows {rows[:10]} have no valid token; every response needs at "
                         "least one token (keep the EOS token in the response_mask)")
    T = mask.shape[-1]
    # argmax returns the first maximum, so search the flipped mask for the first valid token
    return (T - 1) - valid.flip(-1).to(torch.uint8).argmax(dim=-1)


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: str = "k1",
    at_end: bool = False,
) -> torch.Tensor:
    """Per-token rewards with the KL penalty in the reward (Ziegler et al. 2019, InstructGPT).

    scores: (B,); logprobs, ref_logprobs, mask: (B, T) -> rewards (B, T):
      r_t = -kl_coef * KL_t  on valid tokens,  plus scores[b] on the last valid token of row b,
    and 0 on padding. The score goes ON the last valid token, never one slot after it.
    at_end: charge the response's summed KL once, on its last valid token, instead of per token:
      r_last = scores[b] - kl_coef * sum_t KL_t, 0 elsewhere. The return from the first token is the
    same; the returns of later tokens (and GAE with lambda < 1) differ: per token, a token pays for
    its own divergence only; at the end, every token shares the whole response's bill.
    """
    valid = _valid(mask)
    kl = kl_divergence(logprobs, ref_logprobs, estimator)
    penalty = torch.where(valid, -kl_coef * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))  # (B, T)
    last = last_valid_index(mask)  # (B,)
    at_last = scores.to(penalty.dtype)
    if at_end:
        at_last = at_last + penalty.sum(-1)
        penalty = torch.zeros_like(penalty)
    bonus = torch.zeros_like(penalty).scatter_(-1, last[:, None], at_last[:, None])
    return penalty + bonus


class FixedKLController:
    """A constant KL coefficient with the controller interface (`.value`, `.update`)."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """KL coefficient steered towards a target KL (Ziegler et al. 2019, eq. 2).

    After each batch: e = clip(current_kl / target - 1, -0.2, 0.2);
    value *= 1 + e * n_steps / horizon. KL above target raises the coefficient, below lowers it.
    `n_steps` is the number of samples (episodes) in the batch, `horizon` in the same unit.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if init_kl_coef <= 0 or target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs init_kl_coef > 0, target > 0 and horizon > 0, got "
                             f"{init_kl_coef}, {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


class AdaptivePenaltyCoef:
    """The PPO-penalty coefficient rule of Schulman et al. 2017 (PPO paper, section 4).

    After each update with measured d = KL(old || new):
      d < target / tolerance  ->  beta /= factor
      d > target * tolerance  ->  beta *= factor
    (the paper uses tolerance 1.5 and factor 2). Same interface as the KL controllers;
    `n_steps` is accepted and ignored.
    """

    def __init__(self, init_beta: float, target: float, factor: float = 2.0, tolerance: float = 1.5):
        if init_beta <= 0 or target <= 0 or factor <= 1 or tolerance < 1:
            raise ValueError("AdaptivePenaltyCoef needs init_beta > 0, target > 0, factor > 1, tolerance >= 1; got "
                             f"{init_beta}, {target}, {factor}, {tolerance}")
        self.value = float(init_beta)
        self.target = float(target)
        self.factor = float(factor)
        self.tolerance = float(tolerance)

    def update(self, current_kl: float, n_steps: int = 1) -> None:
        kl = float(current_kl)
        if kl < self.target / self.tolerance:
            self.value /= self.factor
        elif kl > self.target * self.tolerance:
            self.value *= self.factor

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "factor": self.factor, "tolerance": self.tolerance}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.factor = float(state["factor"])
        self.tolerance = float(state["tolerance"])
