"""Metric names and definitions, loggers (jsonl; tensorboard and wandb lazily), plots, run report.

matplotlib, tqdm, tensorboard and wandb are imported only inside the functions that use them.
"""

from rlhfkit.reporting.logger import MetricsLogger, last_value, read_metrics, series
from rlhfkit.reporting.metrics import EVENTS, METRICS, SUMMARY_FIELDS, MetricDef, describe, undefined_metrics
from rlhfkit.reporting.plots import PLOT_GROUPS, plot_curves, render_plots
from rlhfkit.reporting.report import Section, build_report, build_report_from_dir, write_report
from rlhfkit.reporting.terminal import Progress, progress

__all__ = [
    "EVENTS", "METRICS", "PLOT_GROUPS", "SUMMARY_FIELDS", "MetricDef", "MetricsLogger", "Progress", "Section",
    "build_report", "build_report_from_dir", "describe", "last_value", "plot_curves", "progress",
    "read_metrics", "render_plots", "series", "undefined_metrics", "write_report",
]
