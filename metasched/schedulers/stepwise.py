"""Shared plumbing of schedulers that take every inner step themselves (HD, line search).

Such a scheduler hands :meth:`~metasched.loop.Driver.advance` a ``train(n_steps, lr)``
callable that runs the interval through the task's
:class:`~metasched.inner_tasks.gradients.GradientTask` interface; :class:`StepRecorder`
collects what the interval did into the same :class:`~metasched.inner_tasks.base.StepStats`
that ``task.train`` returns, so the signal, divergence handling and step accounting are those
of every other scheduler.
"""

from __future__ import annotations

import math

import numpy as np

from metasched.inner_tasks.base import StepStats
from metasched.loop import Driver

__all__ = ["StepRecorder", "lr_cap"]


def lr_cap(driver: Driver) -> float:
    """Return the largest LR the driver lets through now (``inf`` when unclipped)."""
    cap, clipped = driver.clip_lr(math.inf)
    return cap if clipped else math.inf


class StepRecorder:
    """Accumulates per-step losses, gradient and update norms of one interval."""

    def __init__(self, n_steps: int) -> None:
        self.losses = np.empty(n_steps)
        self.done = 0
        self.updates = 0
        self.g2 = 0.0
        self.u2 = 0.0
        self.capped = 0
        self.diverged = False

    def loss(self, value: float) -> None:
        """Record the minibatch loss of the next step (before its update)."""
        self.losses[self.done] = value
        self.done += 1

    def update(self, g2: float, u2: float, capped: int = 0) -> None:
        """Record one applied update: squared gradient and update norms, capped entries."""
        self.updates += 1
        self.g2 += g2
        self.u2 += u2
        self.capped += capped

    def stats(self) -> StepStats:
        """Return the interval's :class:`StepStats`."""
        n = max(self.updates, 1)
        g2 = self.g2 / n
        return StepStats(
            losses=self.losses[: self.done].copy(),
            grad_norm=math.sqrt(g2) if math.isfinite(g2) else math.inf,
            update_norm=math.sqrt(self.u2 / n) if math.isfinite(self.u2) else math.inf,
            diverged=self.diverged,
            n_done=self.done,
            capped=self.capped,
        )
