"""Random right-padded batches for the algos tests, and plain-Python reference implementations."""

from __future__ import annotations

import math

import torch


def random_batch(batch: int = 6, length: int = 7, seed: int = 0, min_len: int = 1):
    """A mask (B, T) with random response lengths in [min_len, T], and a generator for more draws."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    return mask, gen


def randn(shape, gen, garbage_on=None):
    """Standard normal values; with `garbage_on=mask`, padding holds huge values and NaN."""
    x = torch.randn(shape, generator=gen)
    if garbage_on is not None:
        junk = torch.full(shape, 1e30)
        junk[..., ::2] = float("nan")
        x = torch.where(garbage_on.bool(), x, junk)
    return x


def pad_columns(x: torch.Tensor, extra: int, fill: float = float("nan")) -> torch.Tensor:
    """Append `extra` padding columns holding `fill` to a (B, T) tensor."""
    return torch.cat([x, torch.full((x.shape[0], extra), fill, dtype=x.dtype)], dim=1)


def row(x: torch.Tensor, mask: torch.Tensor, b: int) -> list[float]:
    """The valid values of row b as a Python list (responses are right-padded)."""
    n = int(mask[b].sum())
    return [float(v) for v in x[b, :n]]


# ---- per-row Python references, written independently of the vectorized code ----

def ref_returns(rewards: list[float], gamma: float) -> list[float]:
    out, g = [], 0.0
    for r in reversed(rewards):
        g = r + gamma * g
        out.append(g)
    return out[::-1]


def ref_gae(rewards: list[float], values: list[float], gamma: float, lam: float):
    n = len(rewards)
    adv = [0.0] * n
    for t in range(n):
        total = 0.0
        for s in range(t, n):
            next_v = values[s + 1] if s + 1 < n else 0.0
            delta = rewards[s] + gamma * next_v - values[s]
            total += (gamma * lam) ** (s - t) * delta
        adv[t] = total
    return adv, [a + v for a, v in zip(adv, values)]


def ref_whiten(rows: list[list[float]]) -> list[list[float]]:
    flat = [v for r in rows for v in r]
    mean = sum(flat) / len(flat)
    var = sum((v - mean) ** 2 for v in flat) / (len(flat) - 1)
    return [[(v - mean) / math.sqrt(var + 1e-8) for v in r] for r in rows]


def to_padded(rows: list[list[float]], length: int) -> torch.Tensor:
    return torch.tensor([r + [0.0] * (length - len(r)) for r in rows])


def ref_group_baselines(values: list[float], G: int):
    """Per sample: (group mean, unbiased group std, mean of the other G - 1 samples)."""
    out = []
    for i, v in enumerate(values):
        group = values[(i // G) * G:(i // G + 1) * G]
        mean = sum(group) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (G - 1))
        out.append((mean, std, (sum(group) - v) / (G - 1)))
    return out


def ref_prime(process: list[list[float]], outcomes: list[float], G: int, gamma: float) -> list[list[float]]:
    """PRIME eq. 5, row by row: RLOO on the averaged process rewards and on the outcomes."""
    averaged = [sum(r) / len(r) for r in process]
    proc_base = [loo for _, _, loo in ref_group_baselines(averaged, G)]
    out_base = [loo for _, _, loo in ref_group_baselines(outcomes, G)]
    rows = []
    for i, r in enumerate(process):
        ret = ref_returns([x - proc_base[i] for x in r], gamma)
        rows.append([x + outcomes[i] - out_base[i] for x in ret])
    return rows
