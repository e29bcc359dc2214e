"""Reward-model loss on rankings of K responses per prompt (InstructGPT, Ouyang et al. 2022, eq. 1).

Every strictly ordered pair (i better than j) of a prompt's K responses gives a Bradley-Terry
term; a prompt's terms are averaged (1 / C(K, 2) when nothing is tied), so each prompt counts
once however many responses it has: InstructGPT trains on all K-choose-2 pairs of a prompt in
one batch element to avoid overfitting from seeing a response K-1 times per epoch.
"""

from __future__ import annotations

import torch

from rlhfkit.algos.losses import bradley_terry_nll


def ranking_pairs(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Which ordered pairs are preferences: ranks, valid (B, K) -> better (B, K, K) bool.

    better[b, i, j]: response i is ranked strictly above j (a smaller rank number; 1 = best) and
    both are valid. Equal ranks (ties) and padded slots give no pair.
    """
    both = valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    return both & (ranks[:, :, None] < ranks[:, None, :])


def ranking_loss(
    scores: torch.Tensor,
    ranks: torch.Tensor,
    valid: torch.Tensor | None = None,
    margin: float | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over prompts of the mean Bradley-Terry loss over each prompt's ordered pairs.

    scores: (B, K) reward-model scores; ranks: (B, K) rank of each response (1 = best, equal
    numbers = tied); valid: (B, K) bool, False on padding (prompts with fewer than K responses);
    margin: float or (B,), subtracted from every gap of that prompt (Llama 2); label_smoothing:
    see `bradley_terry_nll`. Prompts without any ordered pair (all tied) are left out.
      L = (1 / B') sum_b (1 / P_b) sum_{i better than j} l(s_bi - s_bj - m_b)
    with P_b the prompt's number of ordered pairs (C(K, 2) without ties), B' the prompts with P_b > 0.
    With K = 2 and ranks (1, 2) this is `pairwise_reward_loss(scores[:, 0], scores[:, 1])` exactly.
    Returns (loss, stats) with per-prompt tensors (B,) in stats: row_loss (0 where P_b = 0),
    pairs (P_b), correct (pairs with s_better > s_worse), ordered (1. when every pair is correct),
    and the scalar pair_accuracy (correct pairs / all pairs).
    """
    if scores.dim() != 2 or scores.shape != ranks.shape:
        raise ValueError(f"ranking_loss: scores {tuple(scores.shape)} and ranks {tuple(ranks.shape)} must "
                         f"both be (B, K)")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    better = ranking_pairs(ranks, valid.bool())  # (B, K, K)
    gap = scores[:, :, None] - scores[:, None, :]  # (B, K, K): s_i - s_j
    if margin is not None:
        m = torch.as_tensor(margin, dtype=scores.dtype, device=scores.device)
        gap = gap - (m[:, None, None] if m.dim() == 1 else m)
    pair_loss = bradley_terry_nll(gap, label_smoothing) * better  # (B, K, K), 0 off the pairs
    pairs = better.sum(dim=(1, 2))  # (B,)
    has_pairs = pairs > 0
    row_loss = pair_loss.sum(dim=(1, 2)) / pairs.clamp(min=1)  # (B,)
    loss = row_loss.sum() / has_pairs.sum().clamp(min=1)
    with torch.no_grad():
        correct = ((scores[:, :, None] > scores[:, None, :]) & better).sum(dim=(1, 2))  # (B,)
        stats = {"row_loss": row_loss.detach(), "pairs": pairs, "correct": correct,
                 "ordered": ((correct == pairs) & has_pairs).to(scores.dtype),
                 "pair_accuracy": correct.sum() / pairs.sum().clamp(min=1)}
    return loss, stats
