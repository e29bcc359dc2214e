"""The monitor the RL loop calls each step: history, cooldowns, actions, rollback bookkeeping, state."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from typing import Any

from rlhfkit.reporting.health.config import WATCHED, HealthConfig, HealthWarning
from rlhfkit.reporting.health.detectors import DETECTORS, REMEDIES

# "continue" < "rollback" < "stop": when several warnings fire at once the strongest action wins.
_ACTION_RANK = {"continue": 0, "rollback": 1, "stop": 2}


class HealthMonitor:
    """Feeds each step's metrics to the detectors and returns the warnings that fire.

    A detector that fired stays quiet for `cooldown` steps (then, if the condition still holds, it
    reminds once more). Metrics that are missing, None or non-finite are skipped; a detector whose
    metrics are not logged (no critic, no gold) never fires.
    """

    def __init__(self, config: HealthConfig | None = None):
        self.config = config or HealthConfig()
        self.history: dict[str, deque] = {}
        self.initial: dict[str, float] = {}     # start-of-run references, e.g. the initial entropy
        self._entropy_start: list[tuple[int, float]] = []  # (step, entropy) until the baseline is set
        self.last_fired: dict[str, int] = {}
        self.rollbacks = 0
        self.last_step: int | None = None

    @classmethod
    def from_values(cls, values: dict | None = None, **kwargs) -> HealthMonitor:
        """`HealthMonitor(HealthConfig.from_values(values, **kwargs))`; `health_` prefixes are accepted."""
        return cls(HealthConfig.from_values(values, **kwargs))

    @classmethod
    def from_config(cls, config: Any) -> HealthMonitor:
        """`HealthMonitor(HealthConfig.from_config(config))`: reads `health_*` attributes (RLConfig)."""
        return cls(HealthConfig.from_config(config))

    def update(self, step: int, metrics: dict) -> list[HealthWarning]:
        """Record one step's metrics and return the warnings that fire at this step (often none).

        Call once per RL step, with every metric computed at that step, whether or not it is logged.
        Steps must increase; a repeated or older step raises (after a rollback call `rolled_back`).
        """
        step = int(step)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"health monitor got step {step} after step {self.last_step}; steps must increase "
                             f"(after restoring a checkpoint call rolled_back(step) first)")
        self.last_step = step
        self._record(step, metrics)
        cfg = self.config
        out = []
        for name, detect in DETECTORS.items():
            policy = getattr(cfg, f"{name}_policy")
            if policy == "off":
                continue
            last = self.last_fired.get(name)
            if last is not None and step - last < cfg.cooldown:
                continue
            found = detect(cfg, self.history, self.initial)
            if found is None:
                continue
            figures, seen, since = found
            remedies = REMEDIES[name]
            message = f"{name} at step {step}: {seen}. Try: {'; '.join(remedies)}."
            if policy != "warn":
                message += f" Policy: {policy}."
            self.last_fired[name] = step
            out.append(HealthWarning(name, step, since, message, policy,
                                     {k: float(v) for k, v in figures.items()}, remedies))
        return out

    def action(self, warnings: Iterable[HealthWarning]) -> str:
        """What the loop should do after this step's warnings: "continue", "stop" or "rollback".

        The strongest policy wins (stop > rollback > warn). "rollback" becomes "stop" once
        `max_rollbacks` rollbacks were made.
        """
        best = "continue"
        for w in warnings:
            act = {"warn": "continue", "off": "continue"}.get(w.policy, w.policy)
            if act == "rollback" and self.rollbacks >= self.config.max_rollbacks:
                act = "stop"
            if _ACTION_RANK[act] > _ACTION_RANK[best]:
                best = act
        return best

    def rollback_step(self, warnings: Iterable[HealthWarning], checkpoint_steps: Iterable[int]) -> int | None:
        """The checkpoint to restore: the newest step <= the earliest `since` of the rollback warnings
        (the start of the window that showed the failure). None when no checkpoint is that old (then
        stop instead)."""
        starts = [w.since for w in warnings if w.policy == "rollback"]
        if not starts:
            return None
        limit = min(starts)
        older = [int(s) for s in checkpoint_steps if int(s) <= limit]
        return max(older) if older else None

    def rolled_back(self, step: int) -> None:
        """Tell the monitor the loop restored the checkpoint of `step`: it forgets the metrics and the
        firings after `step` (so a failure that comes back is reported again) and counts the rollback
        (the count is what `action` compares with `max_rollbacks`)."""
        step = int(step)
        for name, items in self.history.items():
            self.history[name] = deque(((s, v) for s, v in items if s <= step), maxlen=items.maxlen)
        self.last_fired = {k: v for k, v in self.last_fired.items() if v <= step}
        self._entropy_start = [(s, v) for s, v in self._entropy_start if s <= step]
        if len(self._entropy_start) < self.config.entropy_baseline_steps:
            self.initial.pop("policy/entropy", None)
        self.rollbacks += 1
        self.last_step = step

    # -- state for checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain lists, numbers and dicts (safe for `torch.load(weights_only=True)` and JSON)."""
        return {"history": {k: [[s, v] for s, v in items] for k, items in self.history.items()},
                "initial": dict(self.initial), "entropy_start": [[s, v] for s, v in self._entropy_start],
                "last_fired": dict(self.last_fired), "rollbacks": self.rollbacks, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore after resume. (Not after a health rollback: call `rolled_back` so the count survives.)"""
        size = self._history_size()
        self.history = {k: deque(((int(s), float(v)) for s, v in items), maxlen=size)
                        for k, items in state["history"].items()}
        self.initial = {k: float(v) for k, v in state["initial"].items()}
        self._entropy_start = [(int(s), float(v)) for s, v in state["entropy_start"]]
        self.last_fired = {k: int(v) for k, v in state["last_fired"].items()}
        self.rollbacks = int(state["rollbacks"])
        self.last_step = state["last_step"]

    # -- internals ------------------------------------------------------------------------
    def _history_size(self) -> int:
        return self.config.longest_window + 1

    def _record(self, step: int, metrics: dict) -> None:
        size = self._history_size()
        for name in WATCHED:
            value = _number(metrics.get(name))
            if value is None:
                continue
            self.history.setdefault(name, deque(maxlen=size)).append((step, value))
            if name.startswith("probe/"):  # the first probe (step 0: the starting policy) is the reference
                self.initial.setdefault(name, value)
            if name == "policy/entropy" and name not in self.initial:
                self._entropy_start.append((step, value))
                if len(self._entropy_start) >= self.config.entropy_baseline_steps:
                    self.initial[name] = statistics.median(v for _, v in self._entropy_start)


def _number(value) -> float | None:
    """A finite float, or None for missing / null / non-finite / non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def scan(rows: Iterable[dict], config: HealthConfig | None = None) -> list[HealthWarning]:
    """Run a fresh monitor over logged metric rows (e.g. `read_metrics(run_dir)[0]`) and return every
    warning, in order: a post-hoc check of a finished run. Rows sharing a step are merged."""
    monitor = HealthMonitor(config)
    merged: dict[int, dict] = {}
    for row in rows:
        if "step" in row and "event" not in row:
            merged.setdefault(int(row["step"]), {}).update(row)
    out = []
    for step in sorted(merged):
        out += monitor.update(step, merged[step])
    return out
