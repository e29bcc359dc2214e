"""A deterministic train / eval split."""

from __future__ import annotations

import random

from rlhfkit.data.errors import DataError


def split_train_eval(rows: list, eval_fraction: float | None = None, eval_size: int | None = None,
                     seed: int = 0) -> tuple[list, list]:
    """Split rows into (train, eval); the same seed always gives the same split.

    Give exactly one of eval_fraction (0 <= f < 1; eval gets round(f * n) rows, at least 1 when
    f > 0) or eval_size (0 <= k < n). Zero means no eval rows. Rows are picked by a seeded
    shuffle of the indices; both parts keep the original order.
    """
    n = len(rows)
    if (eval_fraction is None) == (eval_size is None):
        raise ValueError("give exactly one of eval_fraction or eval_size")
    if eval_fraction is not None:
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        eval_size = max(1, round(eval_fraction * n)) if eval_fraction > 0 else 0
    if not isinstance(eval_size, int) or eval_size < 0:
        raise ValueError(f"eval_size must be a non-negative integer, got {eval_size!r}")
    if eval_size and eval_size >= n:
        raise DataError(f"cannot hold out {eval_size} eval rows from {n}: no training row would be left. "
                        f"Add data, give a separate eval file, or set the eval fraction to 0.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:eval_size])
    train = [row for i, row in enumerate(rows) if i not in held_out]
    evals = [row for i, row in enumerate(rows) if i in held_out]
    return train, evals
