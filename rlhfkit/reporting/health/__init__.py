"""Run health: small rules over recent windows of the logged RL metrics that name a failure mode.

RLHF runs fail in a few well-known ways that the loss curve hides (MOSS-RLHF, Zheng et al. 2023,
recommend watching perplexity, response length and KL rather than reward and loss). Each detector
below is one documented rule over the last few steps of metrics; it returns a `HealthWarning` that
names the failure, gives the figures that triggered it and the usual remedies, and carries the
policy the user chose for it: "warn" (default), "stop" (checkpoint and end the run cleanly) or
"rollback" (restore the last checkpoint from before the failure began); "off" disables it.

    monitor = HealthMonitor(HealthConfig(kl_runaway_policy="stop"))
    for step ...:
        warnings = monitor.update(step, metrics)      # metrics: {"kl/mean": 3.1, ...}
        for w in warnings:
            logger.event(w.step, w.detector, w.message, **w.event_data())
        action = monitor.action(warnings)             # "continue" | "stop" | "rollback"

Pure Python (no torch): the monitor keeps a bounded history of the metrics its rules read, and its
state is a plain dict (`state_dict`) that fits in a checkpoint. docs/health/ has one page per rule.
"""

from rlhfkit.reporting.health.config import DETECTOR_NAMES, POLICIES, WATCHED, HealthConfig, HealthWarning
from rlhfkit.reporting.health.detectors import DETECTORS, REMEDIES, trend
from rlhfkit.reporting.health.monitor import HealthMonitor, scan

__all__ = ["DETECTOR_NAMES", "DETECTORS", "POLICIES", "REMEDIES", "WATCHED", "HealthConfig", "HealthMonitor",
           "HealthWarning", "scan", "trend"]
