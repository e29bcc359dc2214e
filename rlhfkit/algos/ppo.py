"""PPO losses: the clipped policy surrogate, the KL-penalty surrogate, and the clipped value loss.

Each takes per-token tensors (B, T), reduces them with `aggregate_loss` (`agg`, `normalizer`,
`norm_len` as documented there) and returns `(loss, stats)`: a scalar with gradient and a dict
of detached 0-dim tensors, each a masked mean over this call's valid tokens.
"""

from __future__ import annotations

import torch

from rlhfkit.algos.masking import _valid, aggregate_loss, masked_mean

# exp() of a log-ratio above this overflows float32 soon after; clamp so padding garbage or a
# wild token cannot produce inf * 0 = NaN gradients. Legit ratios are nowhere near e^20.
_MAX_LOG_RATIO = 20.0


def _log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    diff = torch.where(_valid(mask), logprobs - old_logprobs, torch.zeros((), dtype=logprobs.dtype,
                                                                         device=logprobs.device))
    return diff.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), with DAPO's asymmetric clip and dual clip.

    logprobs (with grad), old_logprobs, advantages, mask: (B, T) -> (loss, stats). Per token:
      ratio = exp(logprobs - old_logprobs)
      l_t = max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps_high))
    with clip_eps_high = clip_eps unless given (DAPO's clip-higher, Yu et al. 2025). Dual clip
    (Ye et al. 2020), for A < 0 only: l_t = min(l_t, -A * dual_clip), dual_clip > 1, which bounds
    the loss when the ratio explodes on a negative-advantage token.
    stats: clipfrac (tokens where the clipped term is the larger), dual_clipfrac, approx_kl
    (k3 estimate of KL(old || new): mean of ratio - 1 - log ratio), ratio_mean, ratio_max.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps <= 0 or high <= 0:
        raise ValueError(f"ppo_policy_loss: clip_eps and clip_eps_high must be > 0, got {clip_eps}, {high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_policy_loss: dual_clip must be > 1 (e.g. 3.0), got {dual_clip}")
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    dual_clipped = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (per_token > bound)
        per_token = torch.where(dual_clipped, bound, per_token)
    loss = aggregate_loss(per_token, mask, agg, normalizer, norm_len)
    with torch.no_grad():
        valid = _valid(mask)
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "dual_clipfrac": masked_mean(dual_clipped.float(), mask),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, stats


def ppo_penalty_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO with an adaptive KL penalty instead of clipping (Schulman et al. 2017, eq. 8).

    logprobs, old_logprobs, advantages, mask: (B, T) -> (loss, stats). Per token:
      l_t = -ratio * A + beta * kl_t,   kl_t = ratio - 1 - log ratio
    kl_t is the k3 estimate of KL(old || new) from tokens sampled by the old policy (>= 0,
    unbiased). Adapt `beta` between updates with `AdaptivePenaltyCoef` fed `stats["kl"]`.
    stats: kl, ratio_mean, pg_loss (the -ratio * A part).
    """
    if beta < 0:
        raise ValueError(f"ppo_penalty_loss: beta must be >= 0, got {beta}")
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    kl = ratio - 1.0 - log_ratio
    surrogate = -advantages * ratio
    loss = aggregate_loss(surrogate + beta * kl, mask, agg, normalizer, norm_len)
    with torch.no_grad():
        stats = {
            "kl": masked_mean(kl, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "pg_loss": masked_mean(surrogate, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = None,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Critic loss with optional value clipping (PPO as in the OpenAI baselines / Ziegler 2019).

    values (with grad), old_values, returns, mask: (B, T) -> (loss, stats). Per token:
      l_t = 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)
    and l_t = 0.5 * (V - R)^2 when `clip_range` is None.
    stats: clipfrac (tokens where the clipped error is the larger), mean (of V), returns_mean,
    mse (mean (V - R)^2).
    """
    valid = _valid(mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values_v = torch.where(valid, values, zero)
    returns_v = torch.where(valid, returns, zero)
    error = (values_v - returns_v).square()
    per_token = error
    clipped_frac = torch.zeros((), device=values.device)
    if clip_range is not None:
        if clip_range <= 0:
            raise ValueError(f"value_loss: clip_range must be > 0 or None, got {clip_range}")
        old = torch.where(valid, old_values, zero)
        clipped_values = old + torch.clamp(values_v - old, -clip_range, clip_range)
        clipped_error = (clipped_values - returns_v).square()
        per_token = torch.maximum(error, clipped_error)
        with torch.no_grad():
            clipped_frac = masked_mean((clipped_error > error).float(), mask)
    loss = aggregate_loss(0.5 * per_token, mask, agg, normalizer, norm_len)
    with torch.no_grad():
        stats = {
            "clipfrac": clipped_frac,
            "mean": masked_mean(values, mask),
            "returns_mean": masked_mean(returns, mask),
            "mse": masked_mean(error, mask),
        }
    return loss, stats
