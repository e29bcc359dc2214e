"""MetricsLogger writes valid JSONL, events, resumes without duplicate steps; progress bar."""

import importlib.util
import io
import json
import warnings

import numpy as np
import pytest
import torch

from rlhfkit.reporting.logger import MetricsLogger, read_metrics, series
from rlhfkit.reporting.terminal import progress


def _strict_lines(path):
    """Parse every line as strict JSON (NaN/Infinity rejected)."""
    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def test_log_writes_one_flushed_json_object_per_call(tmp_path):
    logger = MetricsLogger(tmp_path, strict=True)
    logger.log(1, {"kl/mean": torch.tensor(0.5), "response/length_max": np.int64(7), "lr": 1e-3})
    logger.log(2, {"kl/mean": 0.75, "step": 2})
    lines = _strict_lines(tmp_path / "metrics.jsonl")  # read before close: flushed each call
    assert lines == [{"step": 1, "kl/mean": 0.5, "response/length_max": 7, "lr": 1e-3},
                     {"step": 2, "kl/mean": 0.75}]
    assert isinstance(lines[0]["response/length_max"], int)
    logger.close()


def test_nonfinite_values_become_null_and_are_counted(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        with pytest.warns(RuntimeWarning, match="loss/value"):
            logger.log(1, {"loss/value": float("nan"), "kl/mean": 1.0})
        logger.log(2, {"loss/value": float("inf")})
        assert logger.nonfinite == {"loss/value": 2}
    lines = _strict_lines(tmp_path / "metrics.jsonl")
    assert lines[0]["loss/value"] is None and lines[1]["loss/value"] is None
    rows, _ = read_metrics(tmp_path)
    assert series(rows, "loss/value") == ([], [])
    assert series(rows, "kl/mean") == ([1], [1.0])


def test_events_go_to_the_same_file_and_read_back_separately(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"kl/mean": 1.0})
        logger.event(1, "kl_high", "kl/mean 14 > 10", value=14.0, threshold=10)
        logger.log(2, {"kl/mean": 2.0})
        with pytest.raises(ValueError, match="reserved"):
            logger.event(2, "x", "y", event="other")
    rows, events = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert events == [{"step": 1, "event": "kl_high", "message": "kl/mean 14 > 10", "value": 14.0, "threshold": 10}]


def test_bad_input_is_rejected_with_the_name(tmp_path):
    with MetricsLogger(tmp_path, strict=True) as logger:
        with pytest.raises(ValueError, match="kl/mean"):
            logger.log(1, {"kl/meen": 1.0})
        with pytest.raises(TypeError, match="kl/mean"):
            logger.log(1, {"kl/mean": "high"})
        with pytest.raises(TypeError, match="kl/mean"):
            logger.log(1, {"kl/mean": torch.ones(3)})
        with pytest.raises(ValueError, match="step"):
            logger.log(-1, {"kl/mean": 1.0})
        with pytest.raises(ValueError, match="disagrees"):
            logger.log(1, {"step": 2})
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(3, {"kl/mean": 1.0})
    with MetricsLogger(tmp_path) as lenient, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lenient.log(1, {"my/custom": 1.0})
        lenient.log(2, {"my/custom": 2.0})
    assert sum("my/custom" in str(w.message) for w in caught) == 1
    with pytest.raises(ValueError, match="backend"):
        MetricsLogger(tmp_path, backends=("jsonl", "mlflow"))


def _steps(path):
    return [(r["step"], r.get("event")) for r in _strict_lines(path)]


def test_resume_drops_later_steps_so_no_step_repeats(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log(step, {"kl/mean": float(step)})
            if step in (2, 4):
                logger.event(step, "kl_high", f"at {step}")
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "kl/me')  # a crash mid-write
    with MetricsLogger(tmp_path, resume_step=3) as logger:
        assert _steps(logger.path) == [(1, None), (2, None), (2, "kl_high"), (3, None)]
        for step in (4, 5):
            logger.log(step, {"kl/mean": 10.0 + step})
    rows, events = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["kl/mean"] for r in rows] == [1.0, 2.0, 3.0, 14.0, 15.0]
    assert [e["step"] for e in events] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left


def test_fresh_run_replaces_and_resume_without_file_starts_empty(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"kl/mean": 1.0})
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"kl/mean": 2.0})
    assert _strict_lines(tmp_path / "metrics.jsonl") == [{"step": 1, "kl/mean": 2.0}]
    with MetricsLogger(tmp_path / "new", resume_step=7) as logger:
        assert logger.path.read_text() == ""


def test_read_metrics_errors_name_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "kl\n')
    with pytest.warns(UserWarning, match="half-written"):
        rows, _ = read_metrics(path)
    assert rows == [{"step": 1}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2:"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="run output folder"):
        read_metrics(tmp_path / "nowhere")


@pytest.mark.parametrize("backend,package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_missing_optional_backend_says_how_to_install(tmp_path, backend, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=rf"pip install 'rlhfkit\[{package}\]'"):
        MetricsLogger(tmp_path, backends=("jsonl", backend))


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_key_numbers_on_a_terminal(monkeypatch):
    monkeypatch.delenv("RLHFKIT_QUIET", raising=False)
    stream = _Tty()
    with progress(3, "rl", file=stream) as bar:
        bar.update(1, **{"step": 1, "reward/score_mean": 0.5, "kl/mean": 1.25, "loss/value": 9.0})
        bar.update(1, reward=0.7)
    text = stream.getvalue()
    assert "rl" in text and "score=0.5" in text and "kl=1.25" in text and "reward=0.7" in text
    assert "9.0" not in text and "value" not in text
    stream = _Tty()
    with progress(2, "sft", keys=("train/loss",), file=stream) as bar:
        bar.update(1, **{"train/loss": 2.5, "kl/mean": 7.0})
    assert "loss=2.5" in stream.getvalue() and "kl" not in stream.getvalue()


@pytest.mark.parametrize("env,stream_cls", [("1", _Tty), ("", io.StringIO)])
def test_progress_is_quiet_when_asked_or_not_a_terminal(monkeypatch, env, stream_cls):
    monkeypatch.setenv("RLHFKIT_QUIET", env)
    stream = stream_cls()
    with progress(3, "rl", file=stream) as bar:
        bar.update(1, **{"reward/score_mean": 0.5})
        bar.write("hello")
    assert stream.getvalue() == ""
