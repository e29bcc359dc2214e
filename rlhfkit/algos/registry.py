"""One registry of advantage estimators with one signature: `fn(AdvantageInputs) -> (advantages, returns)`.

The rl loop fills one `AdvantageInputs` and calls `compute_advantages(name, inputs)`; it never
branches on the algorithm's name. Estimators read only the fields they need and raise a
clear error when one of those is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhfkit.algos.advantages import (
    broadcast_to_tokens,
    discounted_returns,
    gae_advantages,
    grpo_advantages,
    reinforce_baseline_advantages,
    rloo_advantages,
    sequence_returns,
)
from rlhfkit.algos.masking import masked_whiten
from rlhfkit.algos.prime import prime_advantages


@dataclass
class AdvantageInputs:
    """Everything any advantage estimator may read. Token tensors are (B, T), right-padded."""

    token_rewards: torch.Tensor
    """(B, T) per-token rewards: the score on the last valid token, minus the KL penalty per
    token when the KL is in the reward (`kl_shaped_rewards`)."""
    mask: torch.Tensor
    """(B, T) response mask, non-zero on response tokens."""
    values: torch.Tensor | None = None
    """(B, T) critic values of the rollout; required by "gae"."""
    group_size: int = 1
    """Samples per prompt, stored consecutively; >= 2 for "grpo", "rloo", "reinforce++-baseline", "prime"."""
    gamma: float = 1.0
    """Discount factor in [0, 1]."""
    lam: float = 0.95
    """GAE lambda in [0, 1]."""
    normalize_std: bool = True
    """"grpo" only: divide by the group std (GRPO); False gives Dr. GRPO."""
    baseline: object | None = None
    """"reinforce" only: a `MovingAverageBaseline`, updated in place from the batch mean return."""
    process_rewards: torch.Tensor | None = None
    """(B, T) PRIME implicit process rewards (`implicit_process_rewards`); required by "prime"."""
    outcome_scores: torch.Tensor | None = None
    """(B,) PRIME outcome rewards r_o; defaults to token_rewards.sum(-1)."""
    whiten: bool | None = None
    """Whiten the advantages over all valid tokens of the batch after the estimator.
    None: the estimator's own definition, which whitens only for "reinforce++" and
    "reinforce++-baseline" (PPO's usual advantage whitening is the caller's choice)."""

    def __post_init__(self) -> None:
        if self.token_rewards.dim() != 2 or self.token_rewards.shape != self.mask.shape:
            raise ValueError(f"AdvantageInputs.token_rewards {tuple(self.token_rewards.shape)} and mask "
                             f"{tuple(self.mask.shape)} must both be (B, T)")
        for name in ("values", "process_rewards"):
            t = getattr(self, name)
            if t is not None and t.shape != self.mask.shape:
                raise ValueError(f"AdvantageInputs.{name} has shape {tuple(t.shape)}, expected (B, T) = "
                                 f"{tuple(self.mask.shape)}")
        if self.outcome_scores is not None and self.outcome_scores.shape != self.mask.shape[:1]:
            raise ValueError(f"AdvantageInputs.outcome_scores has shape {tuple(self.outcome_scores.shape)}, "
                             f"expected (B,) = ({self.mask.shape[0]},)")
        if self.group_size < 1:
            raise ValueError(f"AdvantageInputs.group_size must be >= 1, got {self.group_size}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"AdvantageInputs.gamma and lam must lie in [0, 1], got {self.gamma}, {self.lam}")


Estimator = Callable[[AdvantageInputs], "tuple[torch.Tensor, torch.Tensor]"]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


def register_advantage_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator adding `fn(inputs) -> (advantages, returns)` to ADVANTAGE_ESTIMATORS under `name`."""

    def add(fn: Estimator) -> Estimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return add


def compute_advantages(name: str, inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the estimator registered as `name`: -> (advantages (B, T), returns (B, T)), 0 on padding."""
    try:
        fn = ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; valid names: "
                         f"{', '.join(sorted(ADVANTAGE_ESTIMATORS))}") from None
    return fn(inputs)


def _finish(advantages: torch.Tensor, inputs: AdvantageInputs, whiten_by_default: bool) -> torch.Tensor:
    whiten = whiten_by_default if inputs.whiten is None else inputs.whiten
    return masked_whiten(advantages, inputs.mask) if whiten else advantages


def _require(inputs: AdvantageInputs, field: str, estimator: str, hint: str):
    value = getattr(inputs, field)
    if value is None:
        raise ValueError(f"advantage estimator {estimator!r} needs AdvantageInputs.{field}: {hint}")
    return value


def _returns(inputs: AdvantageInputs) -> torch.Tensor:
    return discounted_returns(inputs.token_rewards, inputs.mask, inputs.gamma)


@register_advantage_estimator("gae")
def _gae(inputs: AdvantageInputs):
    values = _require(inputs, "values", "gae", "the critic's values (B, T) of the rollout")
    adv, returns = gae_advantages(inputs.token_rewards, values, inputs.mask, inputs.gamma, inputs.lam)
    return _finish(adv, inputs, False), returns


@register_advantage_estimator("reinforce")
def _reinforce(inputs: AdvantageInputs):
    baseline = _require(inputs, "baseline", "reinforce", "a MovingAverageBaseline() kept across steps")
    adv, returns = reinforce_baseline_advantages(inputs.token_rewards, inputs.mask, baseline, inputs.gamma)
    return _finish(adv, inputs, False), returns


@register_advantage_estimator("reinforce++")
def _reinforce_pp(inputs: AdvantageInputs):
    returns = _returns(inputs)
    return _finish(returns.clone(), inputs, True), returns


def _group_estimator(name: str, per_seq_fn):
    """Group estimators score each sequence by its whole return R_b = sum_t r_bt (Shao et al. 2024)."""

    def run(inputs: AdvantageInputs):
        seq_return = sequence_returns(inputs.token_rewards, inputs.mask)  # (B,)
        adv = broadcast_to_tokens(per_seq_fn(seq_return, inputs), inputs.mask)
        return _finish(adv, inputs, name == "reinforce++-baseline"), _returns(inputs)

    register_advantage_estimator(name)(run)


_group_estimator("grpo", lambda r, i: grpo_advantages(r, i.group_size, normalize_std=i.normalize_std))
_group_estimator("rloo", lambda r, i: rloo_advantages(r, i.group_size))
# REINFORCE++-baseline: subtract the group mean, then whiten over the batch (default whiten=True)
_group_estimator("reinforce++-baseline", lambda r, i: grpo_advantages(r, i.group_size, normalize_std=False))


@register_advantage_estimator("prime")
def _prime(inputs: AdvantageInputs):
    process = _require(inputs, "process_rewards", "prime",
                       "implicit_process_rewards(prm_logprobs, ref_logprobs, mask, beta), (B, T)")
    outcome = inputs.outcome_scores
    if outcome is None:
        outcome = sequence_returns(inputs.token_rewards, inputs.mask)
    adv, returns = prime_advantages(process, outcome, inputs.mask, inputs.group_size, inputs.gamma)
    return _finish(adv, inputs, False), returns
