"""Pieces every trainer shares: seeding, devices, optimizers, stop signals, non-finite checks."""

from __future__ import annotations

import math
import random
import signal
from contextlib import contextmanager

import torch


class TrainingError(RuntimeError):
    """A run stopped on purpose (non-finite loss, bad setting); the message says why and what to do."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM arrived; a checkpoint was written. `exit_code` is 130 (INT) or 143 (TERM)."""

    def __init__(self, signal_name: str, step: int, out_dir):
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
        super().__init__(f"{signal_name}: stopped after step {step} with a checkpoint in {out_dir}/checkpoints; "
                         f"rerun the same command with --resume to continue.")


def set_seed(seed: int) -> None:
    """Seed Python and torch (all devices). numpy is not used by the training loops."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_optimizer(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    """AdamW over the trainable parameters (foreach kernels: one launch per group, not per tensor)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters (is everything frozen?)")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def make_scheduler(optimizer, total_steps: int, warmup_steps: int = 0, kind: str = "constant"):
    """Linear warm-up, then constant, linear or cosine decay to 0 over `total_steps` optimizer steps."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(step: int, **quantities) -> None:
    """Raise TrainingError naming the step and the first non-finite quantity."""
    for name, value in quantities.items():
        v = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        if not torch.isfinite(v).all():
            raise TrainingError(
                f"step {step}: {name} is not finite ({v.float().flatten()[:4].tolist()}); the update was not "
                f"applied. Lower the learning rate, enable gradient clipping (--max-grad-norm), check the reward "
                f"for NaN, or pass --on-nonfinite skip to skip such steps.")


def grad_norm(params) -> torch.Tensor:
    """Global L2 norm of the gradients (without clipping)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class StopFlag:
    """Turns SIGINT / SIGTERM into a flag the loop checks between steps.

    The loop then writes a checkpoint and exits cleanly; a second Ctrl-C aborts at once.
    """

    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @contextmanager
    def installed(self):
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: signals stay with the caller
            previous = {}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
