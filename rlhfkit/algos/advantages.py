"""Advantage estimators: GAE, return-to-go, REINFORCE(+baseline), RLOO, GRPO, REINFORCE++.

Conventions: token tensors are (B, T), right-padded, `mask` non-zero on response tokens;
outputs are 0 on padding. Group estimators take samples in consecutive groups of
`group_size` completions of the same prompt (rows g*G .. g*G+G-1). Advantages are constants
of the policy-gradient loss, so every estimator runs under `torch.no_grad()`.
A masked position inside a row is skipped: recursions carry their state through it.
"""

from __future__ import annotations

import torch

from rlhfkit.algos.masking import _valid, masked_whiten


def _zero_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _groups(x: torch.Tensor, group_size: int, who: str) -> torch.Tensor:
    """(B,) -> (B // G, G), with a clear error when B is not a multiple of G."""
    if group_size < 2:
        raise ValueError(f"{who} needs group_size >= 2 samples per prompt (got {group_size}); "
                         "set the number of samples per prompt to 2 or more")
    if x.dim() != 1 or x.shape[0] % group_size != 0:
        raise ValueError(f"{who}: scores must be (B,) with B a multiple of group_size={group_size}, "
                         f"got shape {tuple(x.shape)}; keep the G samples of a prompt together in the batch")
    return x.view(-1, group_size)  # (B // G, G)


def broadcast_to_tokens(per_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Repeat one number per sequence on every valid token: per_seq (B,), mask (B, T) -> (B, T)."""
    per_seq = per_seq if per_seq.is_floating_point() else per_seq.float()
    return _zero_padding(per_seq[:, None].expand(mask.shape), _valid(mask))


@torch.no_grad()
def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return-to-go G_t = sum_{s >= t} gamma^(s - t) r_s over valid tokens.

    token_rewards, mask: (B, T) -> (B, T), 0 on padding.
    """
    valid = _valid(mask)
    rewards = _zero_padding(token_rewards, valid)
    if gamma == 1.0:
        # undiscounted: a reversed cumulative sum, exact and loop-free
        return _zero_padding(rewards.flip(-1).cumsum(-1).flip(-1), valid)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
        out[:, t] = running
    return _zero_padding(out, valid)


@torch.no_grad()
def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016).

    token_rewards, values, mask: (B, T) -> (advantages, returns), both (B, T), 0 on padding:
      delta_t = r_t + gamma * V_{t+1} - V_t      (V after the last valid token is 0)
      A_t     = delta_t + gamma * lam * A_{t+1}
      R_t     = A_t + V_t                        (the critic's regression target)
    No whitening here: the caller (or the "gae" registry entry) whitens.
    """
    valid = _valid(mask)
    rewards = _zero_padding(token_rewards, valid)
    values = _zero_padding(values, valid)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_adv = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        advantages[:, t] = next_adv
    advantages = _zero_padding(advantages, valid)
    return advantages, _zero_padding(advantages + values, valid)


@torch.no_grad()
def grpo_advantages(scores: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath).

    scores: (B,) -> (B,):  (s_i - mean_g) / (std_g + eps), std the UNBIASED std of the group.
    `normalize_std=False` gives Dr. GRPO's s_i - mean_g (Liu et al. 2025), which does not
    up-weight groups of nearly equal scores.
    """
    groups = _groups(scores, group_size, "grpo_advantages")  # (B // G, G)
    centered = groups - groups.mean(dim=-1, keepdim=True)
    if normalize_std:
        centered = centered / (groups.std(dim=-1, unbiased=True, keepdim=True) + eps)
    return centered.reshape(-1)


@torch.no_grad()
def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024).

    scores: (B,) -> (B,):  s_i - 1/(G-1) * sum_{j != i} s_j  within each group of G.
    """
    groups = _groups(scores, group_size, "rloo_advantages")  # (B // G, G)
    others_mean = (groups.sum(dim=-1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).reshape(-1)


@torch.no_grad()
def reinforce_pp_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): return-to-go whitened over all valid tokens of the batch.

    token_rewards, mask: (B, T) -> (B, T):  masked_whiten(G_t) with G_t = discounted_returns.
    The batch-level whitening is REINFORCE++'s global baseline and scale.
    """
    return masked_whiten(discounted_returns(token_rewards, mask, gamma), mask)


@torch.no_grad()
def reinforce_pp_baseline_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025): group-mean baseline, then batch whitening.

    token_rewards, mask: (B, T) -> (B, T). R_b = sum_t r_bt is the sequence return (the score,
    minus the KL penalty when the KL is in the reward); A_b = R_b - mean_{group}(R) is put on
    every valid token, then whitened over all valid tokens of the batch.
    """
    seq_returns = sequence_returns(token_rewards, mask)  # (B,)
    groups = _groups(seq_returns, group_size, "reinforce_pp_baseline_advantages")  # (B // G, G)
    centered = (groups - groups.mean(dim=-1, keepdim=True)).reshape(-1)  # (B,)
    return masked_whiten(broadcast_to_tokens(centered, mask), mask)


@torch.no_grad()
def reinforce_baseline_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    baseline,
    gamma: float = 1.0,
    update: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with a moving-average baseline (Williams 1992).

    token_rewards, mask: (B, T); baseline: a `MovingAverageBaseline` -> (advantages, returns):
      G_t = discounted_returns(r);  A_t = G_t - b  on valid tokens,
    with b the baseline before this batch; then (if `update`) the baseline absorbs the batch
    mean of the sequence returns G_0.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    valid = _valid(mask)
    advantages = _zero_padding(returns - baseline.value, valid)
    if update:
        baseline.update(float(sequence_returns(token_rewards, mask, gamma).mean()))
    return advantages, returns


@torch.no_grad()
def sequence_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """The return of each whole sequence, G_0 = sum_t gamma^t r_t: (B, T) -> (B,).

    With gamma = 1 this is token_rewards.sum(-1) over valid tokens: the score minus the summed
    KL penalty when the KL is in the reward, the score itself when it is not.
    """
    valid = _valid(mask)
    if gamma == 1.0:
        return _zero_padding(token_rewards, valid).sum(-1)
    returns = discounted_returns(token_rewards, mask, gamma)  # (B, T)
    first = valid.to(torch.uint8).argmax(dim=-1)  # (B,) first valid token
    return returns.gather(-1, first[:, None]).squeeze(-1)


@torch.no_grad()
def nonuniform_groups(scores: torch.Tensor, group_size: int, atol: float = 0.0) -> torch.Tensor:
    """DAPO's dynamic sampling filter (Yu et al. 2025): which samples to KEEP.

    scores: (B,) -> (B,) bool, True for every sample of a group whose scores are not all equal
    (within `atol`). A group where all G samples scored the same has zero group-relative
    advantage and only dilutes the batch.
    """
    groups = _groups(scores, group_size, "nonuniform_groups")  # (B // G, G)
    spread = groups.max(dim=-1).values - groups.min(dim=-1).values  # (B // G,)
    keep = spread > atol
    return keep[:, None].expand(-1, group_size).reshape(-1)


__all__ = [
    "broadcast_to_tokens", "discounted_returns", "nonuniform_groups", "gae_advantages", "grpo_advantages",
    "reinforce_baseline_advantages", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages",
    "rloo_advantages", "sequence_returns",
]
