"""Masked statistics and the ONE loss-aggregation function every loss calls.

Masks are `(B, T)`, non-zero (1.0 or True) on response tokens. Values at masked-out positions
never reach a result: they are selected away with `torch.where`, not multiplied by 0, so NaN
or inf garbage on padding can neither leak into a value nor into a gradient.
"""

from __future__ import annotations

import torch

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool() if mask.dtype != torch.bool else mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting valid tokens only: cumsum(mask) - 1, clamped at 0.

    attention_mask: (B, T) of 0/1 -> (B, T) int64. Left padding gets position 0; the first valid
    token 0, the next 1, ...; masked tokens after the row repeat its last position (never read:
    their outputs are masked). The one helper for every padded batch (rollout, SFT, RM).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over valid positions.

    x, mask: (B, T) (any matching shape) -> scalar if `dim` is None, else reduced along `dim`.
    """
    kept = torch.where(_valid(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of valid positions: scalar, or per slice along `dim` (e.g. (B,) for dim=-1)."""
    valid = _valid(mask)
    return valid.sum() if dim is None else valid.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """mean(x) over valid positions: sum(x * m) / sum(m).

    x, mask: (B, T) -> scalar (dim=None) or reduced along `dim`, e.g. (B,) for dim=-1.
    A slice with no valid position has mean 0 (the count is clamped to 1), so an empty
    response row contributes nothing instead of NaN.
    """
    count = masked_count(mask, dim).clamp(min=1).to(x.dtype)
    return masked_sum(x, mask, dim) / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over all valid positions.

    x, mask: (B, T) -> scalar. `unbiased=True` divides by (n - 1) (Bessel), else by n.
    Raises ValueError when there are too few valid positions (n < 2 unbiased, n < 1 biased).
    """
    n = int(masked_count(mask))
    if n < (2 if unbiased else 1):
        raise ValueError(
            f"masked_var: {n} valid position(s) in the mask; the {'unbiased' if unbiased else 'biased'} "
            "variance needs at least 2 (1). Check the response_mask, or use a larger batch.")
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    return sq / (n - 1 if unbiased else n)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten over all valid positions of the batch: (x - mean) * rsqrt(var + 1e-8).

    x, mask: (B, T) -> (B, T), zero on padding. `var` is the unbiased variance.
    `shift_mean=False` adds the mean back (rescale only), as for rewards whose sign matters.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(_valid(mask), out, torch.zeros((), dtype=out.dtype, device=out.device))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over valid tokens (CleanRL's critic diagnostic).

    values, returns, mask: (B, T) -> scalar. 1 is a perfect critic, 0 no better than the mean,
    negative worse than the mean; NaN when the returns have zero variance.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_error = masked_var(returns - values, mask, unbiased=False)
    if var_returns == 0:
        return torch.full((), float("nan"), dtype=var_returns.dtype, device=var_returns.device)
    return 1.0 - var_error / var_returns


def aggregation_normalizer(mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """The denominator `aggregate_loss` uses by default for this `mask` and `mode`.

    mask: (B, T) -> scalar. Compute it once on a whole minibatch and pass it as
    `normalizer=` to every micro-batch so the accumulated gradient equals the full-batch one:
    the number of valid tokens (token-mean), or of sequences with at least one valid token.
    """
    _check_mode(mode)
    valid = _valid(mask)
    if mode == "token-mean":
        return valid.sum()
    return valid.any(dim=-1).sum()


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGG_MODES)}")


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar; every loss of rlhfkit goes through here.

    loss, mask: (B, T) -> scalar. With n_b valid tokens in row b and S the rows that have any:
      token-mean               sum_{b,t} m l / sum_{b,t} m          (all tokens weigh the same)
      seq-mean-token-mean      sum_b [sum_t m l / n_b] / |S|        (all sequences weigh the same)
      seq-mean-token-sum-norm  sum_b [sum_t m l / norm_len] / |S|   (Dr. GRPO, Liu et al. 2025:
                               a constant length normalizer removes GRPO's length bias)
    `normalizer` replaces the denominator (sum m, or |S|): pass `aggregation_normalizer` of
    the whole minibatch so that summing micro-batch losses gives exactly the minibatch loss and
    gradient. `norm_len` defaults to T of this tensor; pass the fixed maximum response length
    when micro-batches are trimmed to different T, or they will not add up.
    """
    _check_mode(mode)
    if loss.shape != mask.shape:
        raise ValueError(f"aggregate_loss: loss {tuple(loss.shape)} and mask {tuple(mask.shape)} must match (B, T)")
    if mode == "token-mean":
        total = masked_sum(loss, mask)
        denom = masked_count(mask).clamp(min=1) if normalizer is None else normalizer
        return total / denom
    if mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss, mask, dim=-1)  # (B,)
    else:
        length = loss.shape[-1] if norm_len is None else norm_len
        if length <= 0:
            raise ValueError(f"aggregate_loss: norm_len must be positive, got {length}")
        per_seq = masked_sum(loss, mask, dim=-1) / length  # (B,)
    denom = _valid(mask).any(dim=-1).sum().clamp(min=1) if normalizer is None else normalizer
    return per_seq.sum() / denom


def packed_attention_mask(seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(R, L) segment ids -> (R, 1, L, L) additive block-diagonal causal mask of `dtype`.

    0 where query t may attend key s (same segment, s <= t), the dtype's minimum elsewhere.
    Additive rather than boolean: transformers' eager attention adds the mask to the scores.
    Use the model's dtype (sdpa requires the mask dtype to match the query's).
    """
    same = seq_ids[:, :, None] == seq_ids[:, None, :]  # (R, L, L)
    length = seq_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seq_ids.device).tril()
    allowed = (same & causal)[:, None]  # (R, 1, L, L)
    return torch.zeros(allowed.shape, dtype=dtype, device=seq_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)
