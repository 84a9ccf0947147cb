"""The one loop that drives an inner task at a learning rate chosen per decision interval.

:class:`Driver` is shared by the Gymnasium env (the agent picks the LR), the scheduler runner
(a scheduler picks it) and the comparison harness, so clipping, divergence handling and the
:class:`~metasched.signal.TrainingSignal` they observe are identical everywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from metasched.inner_tasks.base import InnerTask, StepStats
from metasched.signal import TrainingSignal

__all__ = ["CLIP_MODES", "DEFAULT_CLIP", "DEFAULT_KAPPA", "ClipMode", "Driver", "IntervalInfo"]

ClipMode = Literal["none", "deterministic", "noise_aware"]
CLIP_MODES: tuple[str, ...] = ("none", "deterministic", "noise_aware")
#: Clipping the env, the runner and the comparison use unless told otherwise: the LR is
#: capped at ``DEFAULT_KAPPA`` times the task's deterministic stability bound.
DEFAULT_CLIP: ClipMode = "deterministic"
DEFAULT_KAPPA = 2.0


@dataclass(frozen=True, slots=True)
class IntervalInfo:
    """Bookkeeping of one decision interval (beyond what the signal carries)."""

    requested_lr: float
    applied_lr: float
    clipped: bool
    capped: int
    inner_steps: int
    wall_time: float


class Driver:
    """Drives ``task`` for ``budget`` inner steps, one decision interval at a time.

    Args:
        task: the inner task (already constructed; :meth:`start` resets it).
        budget: total main-line inner steps.
        interval: inner steps per decision.
        clip: which stability bound caps the LR: ``"deterministic"`` (the task's
            :meth:`~InnerTask.lr_bound`), ``"noise_aware"`` (the task's ``noise_aware_bound``,
            which shrinks near a stationary point) or ``"none"``. Tasks without a bound are
            never clipped.
        kappa: the LR is capped at ``kappa * bound`` (default :data:`DEFAULT_KAPPA`, the
            env's, runner's and comparison's default too).
        measure_val: evaluate the validation loss after every interval; by default only
            tasks with a held-out set do (on others it would re-measure the training data).

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.nmf import NMFTask
        >>> task = NMFTask.from_matrix(np.ones((20, 10)), rank=2, batch_size=5)
        >>> drv = Driver(task, budget=100, interval=25)
        >>> sig0 = drv.start(np.random.default_rng(0))
        >>> while not drv.done:
        ...     sig, info = drv.advance(0.5 * task.lr_bound())
        >>> sig.step, sig.train_loss < sig0.train_loss
        (100, True)
    """

    def __init__(
        self,
        task: InnerTask,
        budget: int,
        interval: int,
        *,
        clip: ClipMode = DEFAULT_CLIP,
        kappa: float = DEFAULT_KAPPA,
        measure_val: bool | None = None,
    ) -> None:
        if not isinstance(budget, int | np.integer) or budget < 1:
            raise ValueError(f"budget must be a positive integer, got {budget!r}")
        if not isinstance(interval, int | np.integer) or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, got {clip!r}")
        if not (isinstance(kappa, int | float) and math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be a positive finite number, got {kappa!r}")
        self.task = task
        self.budget = int(budget)
        self.interval = int(interval)
        self.clip: ClipMode = clip
        self.kappa = float(kappa)
        self.measure_val = task.has_validation if measure_val is None else bool(measure_val)
        self.step = 0
        self.diverged = False
        self.clip_count = 0
        self.capped_count = 0
        self._bound: float | None = None

    @property
    def done(self) -> bool:
        """Whether the budget is spent or training diverged."""
        return self.diverged or self.step >= self.budget

    @property
    def bound(self) -> float | None:
        """The current stability bound (of the configured kind), or ``None``."""
        return self._bound

    def _current_bound(self) -> float | None:
        if self.clip == "noise_aware" and hasattr(self.task, "noise_aware_bound"):
            return float(self.task.noise_aware_bound())
        return self.task.lr_bound()

    def start(self, generator: np.random.Generator, lr: float | None = None) -> TrainingSignal:
        """Reset the task and return the step-0 signal (full loss at initialisation)."""
        self.task.reset(generator)
        self.step = 0
        self.diverged = False
        self.clip_count = 0
        self.capped_count = 0
        self._bound = self._current_bound()
        loss = float(self.task.evaluate())
        return TrainingSignal(
            step=0,
            budget=self.budget,
            lr=float(self.task.default_lr() if lr is None else lr),
            train_loss=loss,
            val_loss=loss if self.measure_val else None,
            lr_bound=self._bound,
        )

    def snapshot(self) -> dict[str, Any]:
        """Copy the run's full state: the task's (parameters, optimizer, RNG) and the loop's.

        Search schedulers fork training with it: restoring a snapshot and training again
        replays the same minibatches.
        """
        return {
            "task": self.task.snapshot(),
            "step": self.step,
            "diverged": self.diverged,
            "clip_count": self.clip_count,
            "capped_count": self.capped_count,
            "bound": self._bound,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Return to a state captured by :meth:`snapshot` (which stays reusable)."""
        self.task.restore(snap["task"])
        self.step = snap["step"]
        self.diverged = snap["diverged"]
        self.clip_count = snap["clip_count"]
        self.capped_count = snap["capped_count"]
        self._bound = snap["bound"]

    def clip_lr(self, lr: float) -> tuple[float, bool]:
        """Return ``(applied_lr, clipped)`` for a requested ``lr`` under the current bound."""
        if self.clip != "none" and self._bound is not None and math.isfinite(self._bound):
            cap = self.kappa * self._bound
            if lr > cap:
                return cap, True
        return lr, False

    def advance(
        self, lr: float, *, train: Callable[[int, float], StepStats] | None = None
    ) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one decision interval at ``lr`` (clipped) and return its signal and info.

        ``train(n_steps, applied_lr)`` replaces ``task.train`` for schedulers that take the
        inner steps themselves (hypergradient descent, line search): clipping, step
        accounting, divergence handling and the signal stay those of every other interval.
        """
        if self.done:
            raise RuntimeError("the run is over (budget spent or diverged); call start() first")
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite non-negative number, got {lr!r}")
        applied, clipped = self.clip_lr(float(lr))
        self.clip_count += int(clipped)
        n = min(self.interval, self.budget - self.step)
        t0 = time.perf_counter()
        stats = (self.task.train if train is None else train)(n, applied)
        self.step += stats.n_done
        self.capped_count += stats.capped
        self.diverged = bool(stats.diverged)
        if self.diverged:
            self.step = self.step - stats.n_done + n  # the interval counts as spent
            train_loss = math.inf
        else:
            train_loss = stats.mean_loss
            self._bound = self._current_bound()
        val = float(self.task.evaluate()) if self.measure_val and not self.diverged else None
        wall = time.perf_counter() - t0
        signal = TrainingSignal(
            step=self.step,
            budget=self.budget,
            lr=applied,
            train_loss=train_loss,
            val_loss=val,
            grad_norm=stats.grad_norm,
            update_norm=stats.update_norm,
            lr_bound=self._bound,
            frac_increasing=stats.frac_increasing,
            diverged=self.diverged,
            interval_steps=stats.n_done,
            losses=tuple(stats.losses.tolist()),
        )
        info = IntervalInfo(float(lr), applied, clipped, stats.capped, stats.n_done, wall)
        return signal, info
