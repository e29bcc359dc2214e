"""plot_curves draws one real PNG per group that has data, marks events, leaves pyplot alone."""

import matplotlib

from rlhfkit.reporting.plots import PLOT_GROUPS, plot_curves, render_plots

from ._fake_runs import rl_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_rl_rows_give_one_png_per_group_with_data(tmp_path):
    backend = matplotlib.get_backend()
    events = [{"step": 12, "event": "kl_high", "message": "kl high"}]
    paths = plot_curves(rl_rows(), tmp_path / "plots", events=events, prefix="rl_")
    stems = [p.stem for p in paths]
    assert stems == ["rl_score", "rl_kl", "rl_entropy", "rl_clipfrac", "rl_length", "rl_value", "rl_loss", "rl_time"]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 8000, path
    assert matplotlib.get_backend() == backend


def test_only_present_metrics_are_plotted_and_nulls_are_skipped(tmp_path):
    rows = [{"step": s, "train/loss": 2.0 / s, "eval/loss": None if s == 2 else 2.5 / s} for s in range(1, 6)]
    rows.append({"step": 5, "eval/accuracy": 0.7})
    plots = render_plots(rows, tmp_path)
    assert [p.group.key for p in plots] == ["train_loss", "accuracy"]
    assert all(p.path.read_bytes()[:8] == PNG_MAGIC for p in plots)
    assert plot_curves([], tmp_path / "empty") == []


def test_events_are_drawn(tmp_path):
    rows, kl_group = rl_rows(10), tuple(g for g in PLOT_GROUPS if g.key == "kl")
    plain = render_plots(rows, tmp_path / "a", groups=kl_group)[0].path.read_bytes()
    event = {"step": 5, "event": "nonfinite", "message": "x"}
    marked = render_plots(rows, tmp_path / "b", events=[event], groups=kl_group)[0].path.read_bytes()
    assert marked[:8] == PNG_MAGIC and marked != plain
    info = {"step": 5, "event": "start", "message": "informational events are not drawn"}
    assert render_plots(rows, tmp_path / "c", events=[info], groups=kl_group)[0].path.read_bytes() == plain


def test_every_plotted_name_is_a_defined_metric():
    from rlhfkit.reporting.metrics import undefined_metrics

    names = [n for g in PLOT_GROUPS for n in (*g.left, *g.right, *(x for pair in g.band for x in pair))]
    assert undefined_metrics(names) == []
