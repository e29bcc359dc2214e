"""One registry of policy losses with one signature: `fn(PolicyLossInputs) -> (loss, stats)`.

Like the advantage registry (`registry.py`): the rl loop fills one `PolicyLossInputs` per
micro-batch and calls `compute_policy_loss(name, inputs)`; it never branches on a loss's name.
Every loss returns a scalar with gradient, aggregated by `aggregate_loss`, and a dict of detached
0-dim statistics that always holds `approx_kl` (k3 estimate of KL(old || new) per token) and
`ratio_mean`, plus the loss's own (`clipfrac`, ...). The loop logs them as `policy/<name>`.

A new loss is one `@register_policy_loss("name")` function here, its test and its docs page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhfkit.algos.masking import _valid, aggregate_loss, masked_mean
from rlhfkit.algos.ppo import _log_ratio, ppo_penalty_loss, ppo_policy_loss


@dataclass
class PolicyLossInputs:
    """Everything any policy loss may read. Token tensors are (B, T), right-padded."""

    logprobs: torch.Tensor
    """(B, T) log pi(y_t) of the current policy, with gradient."""
    old_logprobs: torch.Tensor
    """(B, T) log pi_old(y_t) of the policy that sampled the batch (no gradient)."""
    advantages: torch.Tensor
    """(B, T) advantages, 0 on padding."""
    mask: torch.Tensor
    """(B, T) loss mask: response tokens, minus dropped groups."""
    agg: str = "token-mean"
    """Loss aggregation mode of `aggregate_loss`."""
    normalizer: float | torch.Tensor | None = None
    """The whole minibatch's denominator, so micro-batch losses add up to the minibatch loss."""
    norm_len: int | None = None
    """Fixed length of seq-mean-token-sum-norm (the max response length)."""
    clip_eps: float = 0.2
    """Clip range of the ratio (low side; also the high side unless clip_eps_high)."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO clip-higher); None = clip_eps."""
    dual_clip: float | None = None
    """"clip" only: dual-clip constant c > 1 for negative advantages."""
    penalty_coef: float = 0.1
    """"penalty" only: beta of the KL(old || new) penalty."""

    def __post_init__(self) -> None:
        shape = self.mask.shape
        for name in ("logprobs", "old_logprobs", "advantages"):
            t = getattr(self, name)
            if t.dim() != 2 or t.shape != shape:
                raise ValueError(f"PolicyLossInputs.{name} has shape {tuple(t.shape)}, expected (B, T) = "
                                 f"{tuple(shape)}")

    @property
    def high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high


PolicyLoss = Callable[[PolicyLossInputs], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator adding `fn(inputs) -> (loss, stats)` to POLICY_LOSSES under `name`."""

    def add(fn: PolicyLoss) -> PolicyLoss:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return add


def compute_policy_loss(name: str, inputs: PolicyLossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the loss registered as `name`: -> (scalar loss, stats of detached 0-dim tensors)."""
    try:
        fn = POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; valid names: {', '.join(sorted(POLICY_LOSSES))}") from None
    return fn(inputs)


def _common(x: PolicyLossInputs) -> dict:
    return dict(agg=x.agg, normalizer=x.normalizer, norm_len=x.norm_len)


def _aggregate(per_token: torch.Tensor, x: PolicyLossInputs) -> torch.Tensor:
    return aggregate_loss(per_token, x.mask, x.agg, x.normalizer, x.norm_len)


def _k3(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of ratio - 1 - log ratio (k3 estimate of KL(old || new))."""
    return masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask)


@register_policy_loss("clip")
def _clip(x: PolicyLossInputs):
    """PPO's clipped surrogate with clip-higher and dual clip (`ppo_policy_loss`)."""
    return ppo_policy_loss(x.logprobs, x.old_logprobs, x.advantages, x.mask, clip_eps=x.clip_eps,
                           clip_eps_high=x.clip_eps_high, dual_clip=x.dual_clip, **_common(x))


@register_policy_loss("penalty")
def _penalty(x: PolicyLossInputs):
    """PPO with an adaptive KL(old || new) penalty (`ppo_penalty_loss`); its `kl` is the approx_kl."""
    loss, stats = ppo_penalty_loss(x.logprobs, x.old_logprobs, x.advantages, x.mask, beta=x.penalty_coef,
                                   **_common(x))
    return loss, {**stats, "approx_kl": stats["kl"]}


@register_policy_loss("pg")
def _pg(x: PolicyLossInputs):
    """Plain policy gradient (REINFORCE, Williams 1992): l_t = -A_t log pi(y_t). No ratio, no clip:
    on later passes over the same batch it ignores how far the policy moved."""
    loss = _aggregate(-x.advantages * x.logprobs, x)
    with torch.no_grad():
        log_ratio = _log_ratio(x.logprobs, x.old_logprobs, x.mask)
        stats = {"approx_kl": _k3(log_ratio, x.mask), "ratio_mean": masked_mean(torch.exp(log_ratio), x.mask)}
    return loss, stats


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's length-normalized sequence log-ratio: (B, T) -> (B,),
    log s_b = (1 / |y_b|) sum_t m_bt (log pi(y_bt) - log pi_old(y_bt)); 0 for a row with no valid token."""
    valid = _valid(mask)
    diff = torch.where(valid, logprobs - old_logprobs, torch.zeros((), dtype=logprobs.dtype, device=logprobs.device))
    return diff.sum(-1) / valid.sum(-1).clamp(min=1)


@register_policy_loss("gspo")
def _gspo(x: PolicyLossInputs):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7): one importance ratio per
    sequence, length-normalized, s_b = exp(mean_t log(pi / pi_old)), clipped per sequence:
      l_bt = max(-A_bt s_b, -A_bt clip(s_b, 1 - clip_eps, 1 + clip_eps_high))
    With the sequence-level advantages of GRPO (constant over a row) and `seq-mean-token-mean`
    this is the paper's objective. The paper's clip ranges are tiny (3e-4, 4e-4): a sequence ratio
    is a geometric mean of token ratios and moves far less than any one of them.
    stats: clipfrac (share of tokens whose sequence is clipped), approx_kl, ratio_mean (of s_b),
    ratio_max."""
    log_s = sequence_log_ratio(x.logprobs, x.old_logprobs, x.mask).clamp(-20.0, 20.0)  # (B,)
    s = torch.exp(log_s)[:, None].expand_as(x.advantages)  # (B, T)
    unclipped = -x.advantages * s
    clipped = -x.advantages * torch.clamp(s, 1.0 - x.clip_eps, 1.0 + x.high)
    loss = _aggregate(torch.maximum(unclipped, clipped), x)
    with torch.no_grad():
        valid = _valid(x.mask)
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), x.mask),
                 "approx_kl": _k3(_log_ratio(x.logprobs, x.old_logprobs, x.mask), x.mask),
                 "ratio_mean": masked_mean(s, x.mask),
                 "ratio_max": torch.where(valid, s, torch.zeros_like(s)).max()}
    return loss, stats


@register_policy_loss("cispo")
def _cispo(x: PolicyLossInputs):
    """CISPO (MiniMax-M1, 2025, eq. 4): REINFORCE with a clipped, stop-gradient importance weight,
      l_t = -sg(clip(r_t, 1 - clip_eps, 1 + clip_eps_high)) A_t log pi(y_t),   r_t = pi / pi_old.
    Unlike PPO's clip no token's gradient is dropped: a token outside the range keeps its gradient,
    with its weight capped. The paper leaves the low side open (a large clip_eps) and tunes the high side.
    stats: clipfrac (share of tokens whose weight was capped), approx_kl, ratio_mean, ratio_max."""
    log_ratio = _log_ratio(x.logprobs, x.old_logprobs, x.mask)
    ratio = torch.exp(log_ratio).detach()
    low = max(1.0 - x.clip_eps, 0.0)
    weight = torch.clamp(ratio, low, 1.0 + x.high)
    loss = _aggregate(-weight * x.advantages * x.logprobs, x)
    with torch.no_grad():
        valid = _valid(x.mask)
        stats = {"clipfrac": masked_mean((weight != ratio).float(), x.mask),
                 "approx_kl": _k3(log_ratio, x.mask),
                 "ratio_mean": masked_mean(ratio, x.mask),
                 "ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).max()}
    return loss, stats
