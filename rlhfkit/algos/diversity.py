"""Statistics of sampled responses that practitioners watch for reward hacking (MOSS-RLHF, "Secrets of
RLHF" part I: repetitive, meaningless output is its usual face): length quantiles, distinct-n, repeated
n-grams, and perplexity from log-probabilities the step already has.

All read token ids and an explicit response mask (never a pad id): ids, mask (B, T), right-padded.
"""

from __future__ import annotations

import math

import torch

from rlhfkit.algos.masking import _valid


def _responses(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    valid = _valid(mask)
    return [row[keep].tolist() for row, keep in zip(ids, valid)]


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(ids: torch.Tensor, mask: torch.Tensor, n: int) -> float:
    """Distinct-n over the batch (Li et al. 2016): distinct n-grams / all n-grams of the responses
    (each n-gram inside one response). 1.0 when every n-gram is new; low when responses repeat
    themselves or each other. ids, mask: (B, T) -> float (0.0 for a batch without any n-gram)."""
    grams = [g for tokens in _responses(ids, mask) for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_fraction(ids: torch.Tensor, mask: torch.Tensor, n: int = 3) -> float:
    """Fraction of responses in which some n-gram occurs at least twice (a loop like "very very very"
    or a repeated phrase). ids, mask: (B, T) -> float in [0, 1]."""
    rows = _responses(ids, mask)
    looped = sum(len(set(g)) < len(g) for g in (_ngrams(tokens, n) for tokens in rows))
    return looped / len(rows) if rows else 0.0


def length_quantiles(mask: torch.Tensor, qs=(0.1, 0.5, 0.9)) -> list[float]:
    """Quantiles of the response lengths (valid tokens per row), linear interpolation. mask (B, T)."""
    lengths = _valid(mask).sum(-1).float()
    return torch.quantile(lengths, torch.tensor(qs, dtype=lengths.dtype)).tolist()


def perplexity(logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """exp of the mean negative log-probability per valid token: logprobs, mask (B, T) -> float.
    Under the policy it is exp(entropy of its samples); under the reference it grows as the policy
    writes text the reference finds unlikely."""
    valid = _valid(mask)
    count = int(valid.sum())
    if count == 0:
        return float("nan")
    return math.exp(-float(torch.where(valid, logprobs, torch.zeros((), dtype=logprobs.dtype)).sum()) / count)
