"""The other losses: KL-in-the-loss, entropy, SFT negative log-likelihood, pairwise reward model.

Token losses take (B, T) tensors and reduce them with `aggregate_loss` (`agg`, `normalizer`,
`norm_len` as documented there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.algos.kl import kl_divergence
from rlhfkit.algos.masking import aggregate_loss, masked_mean


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k3",
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL(pi || pi_ref) as a loss term, for algorithms that keep the KL out of the reward (GRPO).

    logprobs (with grad), ref_logprobs, mask: (B, T) -> (loss, stats): aggregate of
    `kl_divergence(logprobs, ref_logprobs, estimator)`; GRPO (Shao et al. 2024, eq. 4) uses k3,
    whose gradient 1 - exp(-d) pulls log pi towards log pi_ref. The caller multiplies by its
    coefficient. stats: kl (masked mean of the estimate), kl_k1 (the plain log-ratio mean).
    """
    per_token = kl_divergence(logprobs, ref_logprobs, estimator)
    loss = aggregate_loss(per_token, mask, agg, normalizer, norm_len)
    with torch.no_grad():
        stats = {"kl": masked_mean(per_token, mask), "kl_k1": masked_mean(logprobs - ref_logprobs, mask)}
    return loss, stats


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The aggregated policy entropy H, a bonus (Mnih et al. 2016): entropy, mask (B, T) -> (H, stats).

    H is POSITIVE: SUBTRACT it, `loss = loss - coef * H`, so that minimizing the loss raises the
    entropy. stats: entropy (masked token mean).
    """
    bonus = aggregate_loss(entropy, mask, agg, normalizer, norm_len)
    with torch.no_grad():
        stats = {"entropy": masked_mean(entropy, mask)}
    return bonus, stats


# The trainers' name for the same term; it returns +H too, to be subtracted from the loss.
entropy_loss = entropy_bonus


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: logprobs, mask (B, T) -> scalar.

    L = aggregate(-log pi(y_t | y_<t)); with token-mean this is the usual per-token
    cross-entropy over the response (completion-only) tokens.
    """
    return aggregate_loss(-logprobs, mask, agg, normalizer, norm_len)


def bradley_terry_nll(gap: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss of the gap d = r_better - r_worse (- margin): any shape -> same shape.

      l(d) = -[(1 - e) log sigmoid(d) + e log sigmoid(-d)]     e = label_smoothing
    e = 0 is the plain loss; e > 0 is the conservative (label-smoothed) form, which assumes each
    label is flipped with probability e, so a confident wrong-looking pair costs at most linearly
    and the optimum gap is log((1 - e) / e) instead of infinity (noisy labels: MOSS-RLHF part II).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    loss = -F.logsigmoid(gap)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-gap)
    return loss


def pairwise_reward_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: float | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022, eq. 1; margin as in Llama 2).

    chosen_scores, rejected_scores: (B,); margin: float or (B,) -> scalar:
      L = mean_b -log sigmoid(r_c - r_r - margin)
    computed with logsigmoid, so gaps of +-1000 give 0 and 1000 rather than NaN or inf.
    label_smoothing e > 0: the conservative form of `bradley_terry_nll`.
    """
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"pairwise_reward_loss: chosen {tuple(chosen_scores.shape)} and rejected "
                         f"{tuple(rejected_scores.shape)} scores must have the same shape (B,)")
    gap = chosen_scores - rejected_scores
    if margin is not None:
        gap = gap - margin
    return bradley_terry_nll(gap, label_smoothing).mean()
