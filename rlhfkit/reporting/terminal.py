"""Terminal progress bar: one tqdm bar per stage with the key numbers in its postfix.

Quiet (prints nothing) when the output is not a terminal or RLHFKIT_QUIET is set, so logs of
batch jobs and tests stay clean; metrics.jsonl is the record, the bar is only for people.
"""

from __future__ import annotations

import os
import sys

# Names shown in the progress bar when `keys` is not given, with their short labels.
PROGRESS_KEYS: dict[str, str] = {
    "reward/score_mean": "score",
    "reward/gold_mean": "gold",
    "kl/mean": "kl",
    "kl/coef": "kl_coef",
    "policy/entropy": "ent",
    "train/loss": "loss",
    "eval/loss": "eval_loss",
    "train/accuracy": "acc",
    "eval/accuracy": "eval_acc",
}


class Progress:
    """A tqdm bar whose postfix shows key numbers; silent when quiet (see `progress`)."""

    def __init__(self, total: int | None, desc: str, keys=None, quiet: bool | None = None, file=None):
        from tqdm import tqdm

        stream = file if file is not None else sys.stderr
        if quiet is None:
            quiet = os.environ.get("RLHFKIT_QUIET", "") not in ("", "0") or not _isatty(stream)
        self.quiet = quiet
        self.keys = None if keys is None else {k: k.rsplit("/", 1)[-1] for k in keys}
        self._postfix: dict[str, str] = {}
        self._bar = tqdm(total=total, desc=desc, disable=quiet, file=stream, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **numbers) -> None:
        """Advance by n; `numbers` (metric names or short labels -> value) update the postfix.

        With the default keys, names in PROGRESS_KEYS and un-namespaced names (e.g. reward=0.3)
        are shown; pass a whole metrics row freely, other names are ignored.
        """
        for name, value in numbers.items():
            label = self._label(name)
            if label is not None and value is not None:
                self._postfix[label] = _short(value)
        if self._postfix:
            self._bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in self._postfix.items()), refresh=False)
        self._bar.update(n)

    def write(self, message: str) -> None:
        """Print a line above the bar without breaking it (nothing when quiet)."""
        if not self.quiet:
            self._bar.write(message, file=self._bar.fp)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _label(self, name: str) -> str | None:
        if self.keys is not None:
            return self.keys.get(name, name if name in self.keys.values() else None)
        if name in PROGRESS_KEYS:
            return PROGRESS_KEYS[name]
        return None if "/" in name or name == "step" else name


def progress(total: int | None, desc: str, keys=None, quiet: bool | None = None, file=None) -> Progress:
    """A progress bar for one stage: `with progress(n, "rl") as bar: bar.update(1, **row)`.

    keys: metric names to show (default PROGRESS_KEYS). quiet: None = quiet when the output is
    not a terminal or RLHFKIT_QUIET is set to anything but "" / "0". file: stream (default stderr).
    """
    return Progress(total, desc, keys=keys, quiet=quiet, file=file)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _short(value) -> str:
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
