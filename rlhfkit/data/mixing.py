"""Several data files mixed with weights: `a.jsonl:0.7` + `b.jsonl:0.3`.

A weighted mix keeps the total size (the sum of the parts' sizes) and gives part i
round(w_i * total) rows, drawn without replacement when the part has enough rows and with
replacement (repeats) when it must be up-sampled; the draw is seeded. Without weights the
parts are simply concatenated.
"""

from __future__ import annotations

import random

from rlhfkit.data.errors import DataError


def parse_data_spec(spec: str) -> tuple[str, float | None]:
    """'path:0.7' -> ('path', 0.7); 'path' -> ('path', None). A weight must be a number > 0."""
    path, sep, tail = str(spec).rpartition(":")
    if not sep or not path:
        return str(spec), None
    try:
        weight = float(tail)
    except ValueError:
        return str(spec), None  # a ':' that is part of the name (e.g. C:\\data.jsonl), not a weight
    if not weight > 0:
        raise DataError(f"data {spec!r}: the mixing weight after ':' must be a number > 0, got {tail!r}.")
    return path, weight


def mix_parts(parts: list[list], weights: list[float | None], seed: int = 0) -> list:
    """The rows of `parts` mixed by `weights` (all given, or all None for plain concatenation)."""
    if all(w is None for w in weights):
        return [row for part in parts for row in part]
    if any(w is None for w in weights):
        raise DataError("give a mixing weight to every data file (a.jsonl:0.7 b.jsonl:0.3), or to none.")
    total, norm = sum(len(p) for p in parts), sum(weights)
    rng = random.Random(seed)
    out = []
    for part, w in zip(parts, weights):
        want = max(1, round(w / norm * total))
        if want <= len(part):
            out += rng.sample(part, want)
        else:  # up-sample: every row once, the rest drawn with replacement
            out += list(part) + rng.choices(part, k=want - len(part))
    rng.shuffle(out)
    return out
