"""Response logprobs (+ entropy) from logits: rlhfkit's chunked function against plain PyTorch.

The update's logprob pass runs over (rows, R + 1, V) logits; this times that piece alone, forward and
backward, at the shapes of the RL benchmarks (32 rows, 33 positions; V = 1024 and 8192), the
variants interleaved (A B C A B C ...) in one process:

    plain      log_softmax(logits).gather(labels) (+ the entropy from the same log_softmax)
    rlhfkit    rlhfkit.algos.logprobs_and_entropy (row chunks, one logsumexp, hand-written backward)

    python bench/logprobs_kernel.py [--repeats 20] [--threads 1] [--rows 32] [--positions 33]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rlhfkit.algos.logprobs import logprobs_and_entropy  # noqa: E402
from rlhfkit.models.forward import _CHUNK_ELEMENTS  # noqa: E402


def plain(logits, labels, with_entropy):
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    lp = logp.gather(-1, labels[..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return lp, ent


def ours(logits, labels, with_entropy):
    chunk = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    return logprobs_and_entropy(logits, labels, chunk_size=chunk, with_entropy=with_entropy)


def run(fn, logits, labels, weights, with_entropy) -> tuple[float, float]:
    """(forward s, backward s) of sum(weights * logprobs); the entropy is computed but, as in an RL
    update with entropy_coef 0, only logged."""
    x = logits.detach().requires_grad_(True)
    t0 = time.perf_counter()
    lp, ent = fn(x, labels, with_entropy)
    loss = (lp * weights).sum()
    if ent is not None:
        float(ent.detach().mean())  # logged: the value is needed, the gradient is not
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--positions", type=int, default=33)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# logprobs + entropy, forward and backward, {args.rows} x {args.positions} positions, "
          f"{args.threads} thread(s), torch {torch.__version__}; median ms over {args.repeats} (first discarded)")
    print(f"{'V':>6s} {'entropy':>8s} {'variant':>8s} {'forward':>9s} {'backward':>9s} {'total':>9s} {'vs plain':>9s}")
    for vocab in (1024, 8192):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(args.rows, args.positions, vocab, generator=g)
        labels = torch.randint(vocab, (args.rows, args.positions), generator=g)
        weights = torch.randn(args.rows, args.positions, generator=g)
        for with_entropy in (True, False):
            times = {"plain": [], "rlhfkit": []}
            for _ in range(args.repeats + 1):
                for name, fn in (("plain", plain), ("rlhfkit", ours)):
                    times[name].append(run(fn, logits, labels, weights, with_entropy))
            base = None
            for name in ("plain", "rlhfkit"):
                fwd = statistics.median(t[0] for t in times[name][1:]) * 1e3
                bwd = statistics.median(t[1] for t in times[name][1:]) * 1e3
                total = fwd + bwd
                base = base or total
                print(f"{vocab:6d} {str(with_entropy):>8s} {name:>8s} {fwd:9.2f} {bwd:9.2f} {total:9.2f} "
                      f"{total / base:9.3f}")


if __name__ == "__main__":
    main()
