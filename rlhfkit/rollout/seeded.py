"""Batch-invariant sampling: each row's draws depend only on its own key and the token position.

`torch.multinomial` inside HF `generate` draws from one stream for the whole batch, so the
response sampled for a prompt changes with its neighbours, the batch size, and, in a
data-parallel run, the number of ranks. Here every row gets a 64-bit key, and the token at
position t is argmax(logits / T + g) with Gumbel noise g = -log(-log u), u a counter-based hash
of (key, t, vocabulary index). The Gumbel-max trick makes that an exact sample of
softmax(logits / T) (restricted by top-k / top-p), yet it is a pure function of the row: a
2-rank run samples exactly the tokens a 1-process run samples for the same prompts.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64 increment (2^64 / phi)
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64 finalizer constants


def _signed(x: int) -> int:
    """An unsigned 64-bit value as the int64 with the same bits (torch has no uint64 arithmetic)."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors; multiplication wraps modulo 2^64 as in C."""
    z = (z ^ _srl(z, 30)) * _signed(_MIX1)
    z = (z ^ _srl(z, 27)) * _signed(_MIX2)
    return z ^ _srl(z, 31)


def row_keys(seed: int, step: int, rows: torch.Tensor) -> torch.Tensor:
    """Keys (N,) int64 for global row indices `rows` (N,) of RL step `step` in a run seeded `seed`."""
    base = _mix(torch.tensor([_signed(seed * _GOLDEN + step * _MIX1 + 0x5EED)], dtype=torch.long))
    return _mix(base + rows.long() * _signed(_GOLDEN))


def uniforms(keys: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """u (N, V) in (0, 1), float32, a pure function of (key, position, vocabulary index).

    keys: (N,) int64 on the target device. 24 random bits per entry, centred in their bin so
    that u is never exactly 0 or 1.
    """
    state = _mix(keys + _signed(position * _MIX2))  # (N,) one stream per (row, position)
    cols = torch.arange(vocab, device=keys.device, dtype=torch.long) * _signed(_GOLDEN)
    bits = _srl(_mix(state[:, None] + cols[None, :]), 40)  # (N, V) top 24 bits
    return (bits.float() + 0.5) / float(1 << 24)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every token outside the k most likely, and outside the smallest set whose
    probability reaches top_p (the most likely token always stays). logits: (N, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def keyed_gumbel_scores(scores: torch.Tensor, keys: torch.Tensor, position: int, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits / T, filtered by top-k / top-p, plus the keyed Gumbel noise of `position`: (N, V) float32.

    scores: (N, V) logits of the token at generated position `position`; keys: (N,) int64. The
    argmax of the result is a sample of the filtered softmax(logits / T), a pure function of (key, position).
    """
    z = filter_top_k_top_p(scores.float() / temperature, top_k, top_p)  # (N, V)
    u = uniforms(keys, position, z.shape[-1])
    return z - torch.log(-torch.log(u))


class SeededSampling:
    """A `LogitsProcessor` for greedy `generate` that turns argmax into a keyed sample.

    keys: (N,) int64, one per row of the generate batch; prompt_length: P, so the position of
    the token being chosen is input_ids.shape[1] - P. Returns logits / T, filtered, plus Gumbel
    noise: their argmax is a sample of the filtered softmax(logits / T).
    """

    def __init__(self, keys: torch.Tensor, prompt_length: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0):
        self.keys, self.prompt_length = keys, prompt_length
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != self.keys.shape[0]:
            raise ValueError(f"{scores.shape[0]} rows to sample but {self.keys.shape[0]} keys")
        return keyed_gumbel_scores(scores, self.keys.to(scores.device), input_ids.shape[1] - self.prompt_length,
                                   self.temperature, self.top_k, self.top_p)
