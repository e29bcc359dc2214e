"""Log-probabilities and entropy from logits, without a full float32 log-softmax copy."""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(label) under softmax(logits).

    logits: (..., V); labels: (...) int64 -> (...) float32.
    Computes `logit[label] - logsumexp(logits)` row chunk by row chunk in float32, so at most
    `chunk_size` rows are upcast at once (a (B, T, V) log-softmax copy is never made).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    out = torch.empty(flat_labels.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, flat_logits.shape[0], chunk_size):
        rows = flat_logits[start:start + chunk_size].float()  # (n, V)
        picked = rows.gather(-1, flat_labels[start:start + chunk_size, None]).squeeze(-1)
        out[start:start + chunk_size] = picked - torch.logsumexp(rows, dim=-1)
    return out.view(labels.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy H = logsumexp(z) - sum softmax(z) * z of the categorical given by logits.

    logits: (..., V) -> (...) float32, computed in row chunks like `logprobs_from_logits`.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], chunk_size):
        rows = flat[start:start + chunk_size].float()
        probs = torch.softmax(rows, dim=-1)
        out[start:start + chunk_size] = torch.logsumexp(rows, dim=-1) - (probs * rows).sum(-1)
    return out.view(logits.shape[:-1])
