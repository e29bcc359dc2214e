"""Metric logging: `OUTPUT/metrics.jsonl` always, TensorBoard and W&B when asked.

One JSON object per line: metric rows `{"step": 3, "kl/mean": 1.2, ...}` and health events
`{"step": 3, "event": "kl_runaway", "message": "...", ...extra}`. Non-finite numbers are written as
JSON `null` (JSON has no NaN), counted in `MetricsLogger.nonfinite`, and warned about once per
name; the trainers stop on a non-finite loss anyway, this only keeps the file valid JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import operator
import os
import secrets
import tempfile
import warnings
from pathlib import Path
from typing import Any

from rlhfkit.reporting.metrics import INFO_EVENTS, METRICS, _unknown_message, definition_key
from rlhfkit.reporting.terminal import Progress, progress  # noqa: F401  (the brief's home for it)

BACKENDS = ("jsonl", "tensorboard", "wandb")
_log = logging.getLogger("rlhfkit.reporting")


class MetricsLogger:
    """Writes metric rows and health events for one run.

    out_dir: the run's output folder; the file is `out_dir/metrics.jsonl`.
    backends: any of "jsonl" (always on, listing it is optional), "tensorboard", "wandb".
    run_name: name shown in TensorBoard / W&B (default: the folder name).
    config: the resolved config (dataclass or dict), passed to TensorBoard as text and to W&B as
        its run config; it is not written to disk here (the trainers save it).
    resume_step: None starts a fresh file (an existing metrics.jsonl in out_dir is replaced). An
        int k keeps the lines with step <= k and drops the rest, so a run resumed from the
        checkpoint of step k never repeats a step. The rewrite is atomic (temp file + rename).
    strict: raise on a name that is not in METRICS (use it in tests); otherwise warn once per name.
    wandb_project: W&B project (default: $WANDB_PROJECT, else "rlhfkit"). The W&B run id is kept in
        out_dir/wandb_run_id.txt so a resumed run continues the same W&B run; W&B itself ignores
        steps it has already received (TensorBoard hides them via purge_step).
    """

    def __init__(self, out_dir, backends=("jsonl",), run_name: str | None = None, config: Any = None,
                 resume_step: int | None = None, strict: bool = False, wandb_project: str | None = None):
        backends = (backends,) if isinstance(backends, str) else tuple(backends)
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown logging backend(s) {unknown}; choose from {list(BACKENDS)}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.run_name = run_name or self.out_dir.resolve().name
        self.strict = strict
        self.nonfinite: dict[str, int] = {}
        self._warned_unknown: set[str] = set()
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            truncate_after(self.path, _as_step(resume_step))
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        self._wandb = None
        plain_config = _plain(config) if config is not None else None
        try:
            if "tensorboard" in backends:
                self._tb = _open_tensorboard(self.out_dir, plain_config, resume_step)
            if "wandb" in backends:
                self._wandb = _open_wandb(self.out_dir, self.run_name, plain_config, wandb_project)
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: dict) -> dict:
        """Append one row `{"step": step, **metrics}` and flush; returns the row as written.

        Values may be Python numbers, 0-dim tensors / numpy scalars (converted with `.item()`) or
        None. Calling `log` twice with the same step is allowed (e.g. train and eval metrics).
        """
        self._check_open()
        step = _as_step(step)
        row: dict[str, Any] = {"step": step}
        for name, value in metrics.items():
            if name == "step":
                if _as_step(value) != step:
                    raise ValueError(f"metrics['step']={value!r} disagrees with step={step}")
                continue
            self._check_name(name)
            row[name] = self._number(name, value)
        self._write(row)
        if self._tb is not None:
            for name, value in row.items():
                if name != "step" and value is not None:
                    self._tb.add_scalar(name, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        return row

    def event(self, step: int, name: str, message: str, **data) -> dict:
        """Append an event `{"step", "event": name, "message", **data}` and echo it on the Python
        logger "rlhfkit.reporting" (WARNING, or INFO for names in INFO_EVENTS such as "start").
        `data` values: numbers, strings, lists, dicts (non-finite numbers become null)."""
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ValueError(f"event name must be a non-empty string, got {name!r}")
        clash = {"step", "event", "message"} & set(data)
        if clash:
            raise ValueError(f"event data may not use the reserved keys {sorted(clash)}")
        record = {"step": _as_step(step), "event": name, "message": str(message)}
        for key, value in data.items():
            record[key] = _json_safe(value)
        self._write(record)
        level = logging.INFO if name in INFO_EVENTS else logging.WARNING
        _log.log(level, "step %d: %s: %s", record["step"], name, record["message"])
        if self._tb is not None:
            self._tb.add_text(f"events/{name}", record["message"], record["step"])
            self._tb.flush()
        return record

    def close(self) -> None:
        """Flush and close every backend; safe to call twice."""
        if getattr(self, "_file", None) is not None and not self._file.closed:
            self._file.close()
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None
        if getattr(self, "_wandb", None) is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._file.closed:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, got {name!r}")
        if definition_key(name) in METRICS or name in self._warned_unknown:
            return
        if self.strict:
            raise ValueError(_unknown_message(name))
        self._warned_unknown.add(name)
        warnings.warn(_unknown_message(name), stacklevel=3)

    def _number(self, name: str, value):
        if value is None:
            return None
        if hasattr(value, "item") and not isinstance(value, (int, float)):
            try:
                value = value.item()  # 0-dim tensor or numpy scalar
            except (ValueError, RuntimeError) as err:
                raise TypeError(f"metric {name!r}: expected a single number, got {type(value).__name__} "
                                f"with several elements ({err})") from None
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            if name not in self.nonfinite:
                warnings.warn(f"metric {name!r} is {value} at this step; written as null in {self.path}",
                              RuntimeWarning, stacklevel=3)
            self.nonfinite[name] = self.nonfinite.get(name, 0) + 1
            return None
        raise TypeError(f"metric {name!r}: expected a number or None, got {type(value).__name__} {value!r}")

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()


def truncate_after(path, step: int) -> None:
    """Keep the lines of a metrics.jsonl with step <= `step`; rewrite atomically.

    A half-written last line (a crash mid-write) and any other unreadable line are dropped.
    A missing file becomes an empty one.
    """
    path = Path(path)
    kept: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                keep = int(record["step"]) <= step
            except (ValueError, KeyError, TypeError):
                continue
            if keep:
                kept.append(line)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in kept))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_metrics(path) -> tuple[list[dict], list[dict]]:
    """Read a metrics.jsonl (or the run folder holding one) -> (rows, events), in file order.

    rows: metric records; events: records with an "event" key. A half-written last line is
    skipped with a warning; any other unreadable line raises ValueError naming file:line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is this a run output folder?")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows, events = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if lineno == len(lines):
                warnings.warn(f"{path}:{lineno}: skipping a half-written last line", stacklevel=2)
                continue
            raise ValueError(f"{path}:{lineno}: not a JSON object ({err}); each line must be one "
                             f"JSON object") from None
        (events if "event" in record else rows).append(record)
    return rows, events


def series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over rows that hold a non-null value for it."""
    steps, values = [], []
    for row in rows:
        value = row.get(name)
        if value is not None and "step" in row:
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def last_value(rows: list[dict], name: str):
    """The last non-null value of a metric, or None if it was never logged."""
    for row in reversed(rows):
        if row.get(name) is not None:
            return row[name]
    return None


def _as_step(step) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be an int, got {step!r}")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {type(step).__name__} {step!r}") from None
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def _json_safe(value):
    """Event payloads: numbers (non-finite -> null), strings, lists, dicts."""
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _plain(config) -> dict:
    """A dataclass or mapping as a JSON-friendly dict (paths and other objects become strings)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")
    return _json_safe(config)


def _open_tensorboard(out_dir: Path, config: dict | None, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("the 'tensorboard' logging backend needs the tensorboard package: "
                          "pip install 'rlhfkit[tensorboard]', or remove 'tensorboard' from the "
                          f"logging backends ({err})") from None
    # purge_step makes TensorBoard hide the events a resumed run is about to rewrite.
    purge = None if resume_step is None else resume_step + 1
    writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge)
    if config is not None:
        writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
    return writer


def _open_wandb(out_dir: Path, run_name: str, config: dict | None, project: str | None):
    try:
        import wandb
    except ImportError as err:
        raise ImportError("the 'wandb' logging backend needs the wandb package: pip install "
                          "'rlhfkit[wandb]', or remove 'wandb' from the logging backends "
                          f"({err})") from None
    # The run id is kept in the output folder so that a resumed run continues the same W&B run.
    id_file = out_dir / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
    id_file.write_text(run_id + "\n")
    return wandb.init(project=project or os.environ.get("WANDB_PROJECT", "rlhfkit"), name=run_name,
                      id=run_id, resume="allow", config=config, dir=str(out_dir))
