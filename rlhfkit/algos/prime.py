"""PRIME: Process Reinforcement through IMplicit rEwards (Cui et al. 2025, arXiv:2502.01456).

An implicit PRM pi_phi is a causal LM trained only on outcome labels; its log-ratio to a frozen
reference gives a reward for every token:
  r_phi(y_t) = beta * (log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t))        (process reward)
  r_phi(y)   = sum_t r_phi(y_t)                                                (sequence reward)
The PRM is updated online on each batch of rollouts with the cross-entropy of sigmoid(r_phi(y))
against the verifier's 0/1 outcome r_o(y). The advantage combines leave-one-out (RLOO)
baselines of both reward sources within each group of K samples of one prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.algos.advantages import _groups, broadcast_to_tokens, discounted_returns, rloo_advantages
from rlhfkit.algos.masking import _valid, masked_mean, masked_sum


def implicit_process_rewards(
    prm_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """r_phi(y_t) = beta * (log pi_prm(y_t) - log pi_ref(y_t)): (B, T) each -> (B, T), 0 on padding."""
    diff = beta * (prm_logprobs - ref_logprobs)
    return torch.where(_valid(mask), diff, torch.zeros((), dtype=diff.dtype, device=diff.device))


def prime_prm_loss(
    prm_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Online update of the implicit PRM: cross-entropy on outcome labels (PRIME eq. 3).

    prm_logprobs (with grad), ref_logprobs, mask: (B, T); labels: (B,) in [0, 1] -> (loss, stats):
      r_phi(y) = beta * sum_t (log pi_prm(y_t) - log pi_ref(y_t))
      L = -mean_b [ r_o log sigmoid(r_phi(y)) + (1 - r_o) log(1 - sigmoid(r_phi(y))) ]
    `normalizer` replaces the mean's B (pass the minibatch size when accumulating micro-batches).
    stats: accuracy (sign of r_phi(y) agrees with the label), reward_mean (of r_phi(y)).
    """
    seq_reward = beta * masked_sum(prm_logprobs - ref_logprobs, mask, dim=-1)  # (B,)
    targets = labels.to(seq_reward.dtype)
    total = F.binary_cross_entropy_with_logits(seq_reward, targets, reduction="sum")
    loss = total / (seq_reward.shape[0] if normalizer is None else normalizer)
    with torch.no_grad():
        stats = {
            "accuracy": ((seq_reward > 0) == (targets > 0.5)).float().mean(),
            "reward_mean": seq_reward.mean(),
        }
    return loss, stats


@torch.no_grad()
def prime_advantages(
    process_rewards: torch.Tensor | None,
    outcome_scores: torch.Tensor | None,
    mask: torch.Tensor,
    group_size: int,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRIME's advantage (Cui et al. 2025, eq. 5): RLOO on process and outcome rewards, combined.

    process_rewards: (B, T) implicit rewards r_phi(y_t) (or None); outcome_scores: (B,) r_o(y)
    (or None); mask: (B, T) -> (advantages, returns), (B, T), equal here (no critic), 0 on padding.
    For sample i of a group of K:
      rbar_j  = mean over valid tokens of r_phi(y^j_t)                (averaged process reward)
      A^i_t = sum_{s >= t} gamma^(s-t) [r_phi(y^i_s) - 1/(K-1) sum_{j != i} rbar_j]
            + r_o(y^i) - 1/(K-1) sum_{j != i} r_o(y^j)
    The two returns are computed separately and then summed, as the paper does, because mixing
    the raw values first is numerically unstable.
    """
    if process_rewards is None and outcome_scores is None:
        raise ValueError("prime_advantages needs process_rewards, outcome_scores, or both")
    valid = _valid(mask)
    advantages = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    if process_rewards is not None:
        advantages = advantages.to(process_rewards.dtype)
        token_mean = masked_mean(process_rewards, mask, dim=-1)  # (B,)
        groups = _groups(token_mean, group_size, "prime_advantages")  # (B // K, K)
        loo_baseline = ((groups.sum(-1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)  # (B,)
        normalized = process_rewards - loo_baseline[:, None]
        advantages = advantages + discounted_returns(normalized, mask, gamma)
    if outcome_scores is not None:
        outcome = rloo_advantages(outcome_scores.to(advantages.dtype), group_size)  # (B,)
        advantages = advantages + broadcast_to_tokens(outcome, mask)
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))
    return advantages, advantages.clone()
