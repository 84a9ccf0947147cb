"""The one loop that drives an inner task at a learning rate chosen per decision interval.

:class:`Driver` is shared by the Gymnasium env (the agent picks the LR), the scheduler runner
(a scheduler picks it) and the comparison harness, so clipping, divergence handling and the
:class:`~metasched.signal.TrainingSignal` they observe are identical everywhere.

**One scale for every stability bound.** Bounds come in two kinds: *analytic* (NMF's
deterministic-safe ``1/L`` and its noise-aware variant) and *measured*
(:mod:`metasched.stability`: the fork test on networks, the minibatch-Hessian ``2/lam`` on
NMF). They do not mean the same thing: ``benchmarks/bench_stability.py`` found NMF's ``1/L``
to be about half the empirical largest stable LR, while the measured bounds estimate that
limit itself (fork test median ratio 0.6-1.0 on networks, Hessian median 1.0 on NMF). The
common scale is therefore **the estimated largest stable LR** ``eta``:

====================  ====================  ==============================================
bound kind            ``eta`` (the scale)   default clip cap
====================  ====================  ==============================================
analytic (NMF)        ``2 x bound``         ``kappa x bound`` = ``1.0 x eta`` (kappa 2.0)
measured (fork,       ``bound``             ``kappa_measured x bound`` = ``0.707 x eta``
Hessian)
====================  ====================  ==============================================

``TrainingSignal.lr_bound`` (and so the ``log_lr_over_bound`` feature of every env and of
the learned scheduler) carries ``eta``; ``kappa`` stays a factor on the task's own analytic
bound, as before (so NMF runs clip exactly as they always did), and ``kappa_measured``
(default :data:`DEFAULT_KAPPA_MEASURED` = 0.707) is the factor on a measured bound, at which
the fork test was at or below the empirical limit at 95-100% of the validation checkpoints.

The measured bound is amortised (re-measured every few decisions with a warm start, see the
estimators' ``every``), and also re-measured before an LR is applied that is higher than every
LR applied since the last measurement and above :data:`RECHECK_FRACTION` of the bound (so an
LR ramp always meets a fresh bound, while steady or decaying schedules pay only the amortised
cost). Its cost, in SGD-step units, is :attr:`Driver.extra_steps`, which the runner adds to
the run's ``compute``.
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
from metasched.stability import ForkTestEstimator, StabilityEstimator, supports_curvature

__all__ = [
    "ANALYTIC_SCALE",
    "CLIP_MODES",
    "DEFAULT_CLIP",
    "DEFAULT_KAPPA",
    "DEFAULT_KAPPA_MEASURED",
    "RECHECK_FRACTION",
    "ClipMode",
    "Driver",
    "IntervalInfo",
    "default_estimator",
]

ClipMode = Literal["none", "deterministic", "noise_aware", "measured", "auto"]
CLIP_MODES: tuple[str, ...] = ("none", "deterministic", "noise_aware", "measured", "auto")
#: Clipping the env, the runner and the comparison use unless told otherwise: the task's
#: analytic bound where it has one (NMF: exactly ``"deterministic"``), else the measured one.
DEFAULT_CLIP: ClipMode = "auto"
#: Clip factor on an analytic bound (``kappa x 1/L`` on NMF = 1.0 x the common scale).
DEFAULT_KAPPA = 2.0
#: Clip factor on a measured bound (already on the common scale; validated safe at 0.707).
DEFAULT_KAPPA_MEASURED = 0.707
#: An analytic bound times this is the estimated largest stable LR (the common scale).
ANALYTIC_SCALE = 2.0
#: A requested LR above this fraction of a measured bound, and above every LR applied since
#: the bound was measured, triggers a re-measurement before it is applied (the bound of a
#: network can fall between the amortised measurements: progressive sharpening).
RECHECK_FRACTION = 0.25


def default_estimator(task: Any, interval: int) -> ForkTestEstimator | StabilityEstimator:
    """Return the validated measured-bound estimator for ``task`` at decision ``interval``.

    Tasks with an analytic bound that support curvature (NMF) measure with the minibatch
    Hessian (tight there, the fork test overshoots slow divergence); every other task uses
    the fork test sized for the interval (:meth:`ForkTestEstimator.for_interval`).
    """
    if getattr(task, "analytic_bound", False) and supports_curvature(task):
        return StabilityEstimator(generator=0)
    return ForkTestEstimator.for_interval(int(interval))


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
            which shrinks near a stationary point), ``"measured"`` (measured on any task, see
            the module doc), ``"auto"`` (the default: analytic where the task has it, i.e.
            ``"deterministic"`` on NMF, measured otherwise) or ``"none"`` (no clipping; the
            signal still carries the task's own bound where it has one, for free).
            ``"deterministic"`` and ``"noise_aware"`` on a network (no analytic bound) leave
            it unclipped.
        kappa: factor on an analytic bound: the LR is capped at ``kappa * bound`` (default
            :data:`DEFAULT_KAPPA`, the env's, runner's and comparison's default too).
        kappa_measured: factor on a measured bound (default :data:`DEFAULT_KAPPA_MEASURED`).
        estimator: the measured-bound estimator (default: :func:`default_estimator`, or the
            torch task's own :attr:`~metasched.inner_tasks.torch_task.TorchTask.stability`
            when one is attached); reset at every :meth:`start`.
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
        kappa_measured: float = DEFAULT_KAPPA_MEASURED,
        estimator: ForkTestEstimator | StabilityEstimator | None = None,
    ) -> None:
        if not isinstance(budget, int | np.integer) or budget < 1:
            raise ValueError(f"budget must be a positive integer, got {budget!r}")
        if not isinstance(interval, int | np.integer) or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, got {clip!r}")
        for name, value in (("kappa", kappa), ("kappa_measured", kappa_measured)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.task = task
        self.budget = int(budget)
        self.interval = int(interval)
        self.clip: ClipMode = clip
        self.kappa = float(kappa)
        self.kappa_measured = float(kappa_measured)
        analytic = bool(getattr(task, "analytic_bound", False))
        #: where the bound comes from: "analytic" (the task's lr_bound), "noise_aware",
        #: "measured" (the estimator) or None (no bound)
        self.source: str | None = {
            "deterministic": "analytic",
            "noise_aware": "noise_aware" if hasattr(task, "noise_aware_bound") else "analytic",
            "measured": "measured",
            "auto": "analytic" if analytic else "measured",
            "none": "analytic",
        }[clip]
        self.estimator = None
        if self.source == "measured":
            own = getattr(task, "stability", None)
            self.estimator = estimator or own or default_estimator(task, int(interval))
        self._raw: float | None = None
        self._scale = 1.0
        self._factor = self.kappa
        self._tested_lr = 0.0  # highest LR applied since the measured bound was measured
        self._applied_lr = 0.0  # the LR of the latest interval
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
        """The current stability bound on the common scale (the estimated largest stable LR).

        ``None`` when the task has no bound of the configured kind.
        """
        return self._bound

    @property
    def extra_steps(self) -> float:
        """Cost of the measured bound since :meth:`start`, in SGD-step units (0 if analytic)."""
        return float(self.estimator.cost_steps) if self.estimator is not None else 0.0

    def _measure(self) -> float:
        est, task = self.estimator, self.task
        assert est is not None
        if hasattr(task, "stability") and not getattr(task, "analytic_bound", False):
            # through the task's lr_bound(), which runs the estimator under its thread setting
            saved = task.stability
            task.stability = est
            try:
                return float(task.lr_bound())
            finally:
                task.stability = saved
        return float(est.bound(task))

    def _recheck(self, lr: float) -> None:
        """Re-measure the bound now if ``lr`` (as clipped) ramps above what it was checked under."""
        raw = self._raw
        if self.source != "measured" or raw is None or not math.isfinite(raw):
            return
        would = min(lr, self._factor * raw) if self.clip != "none" else lr
        if would <= self._tested_lr or would < RECHECK_FRACTION * raw:
            return
        est, task = self.estimator, self.task
        assert est is not None
        measure = getattr(task, "measured_lr_bound", None)  # under the task's thread setting
        raw = float(measure(est)) if callable(measure) else float(est.measure(task).bound)
        self._raw, self._bound = raw, raw
        self._tested_lr = 0.0

    def _update_bound(self) -> None:
        """Refresh the raw bound, its clip factor and the common-scale bound of the signal."""
        if self.source == "measured":
            assert self.estimator is not None
            before = self.estimator.n_measurements
            raw: float | None = self._measure()
            if self.estimator.n_measurements != before:  # measured under the LR in use
                self._tested_lr = self._applied_lr
            measured = True
        else:
            if self.source == "noise_aware":
                raw = float(self.task.noise_aware_bound())  # type: ignore[attr-defined]
            else:
                raw = self.task.lr_bound()
            # a network's lr_bound() is measured (when an estimator is attached to it)
            measured = not getattr(self.task, "analytic_bound", False)
        self._raw = raw
        self._scale = 1.0 if measured else ANALYTIC_SCALE
        self._factor = self.kappa_measured if measured else self.kappa
        self._bound = None if raw is None else self._scale * raw

    def start(self, generator: np.random.Generator, lr: float | None = None) -> TrainingSignal:
        """Reset the task and return the step-0 signal (full loss at initialisation)."""
        self.task.reset(generator)
        self.step = 0
        self.diverged = False
        self.clip_count = 0
        self.capped_count = 0
        self._tested_lr = self._applied_lr = 0.0
        if self.estimator is not None:
            self.estimator.reset()
        self._update_bound()
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
            "bound": (
                self._raw,
                self._scale,
                self._factor,
                self._bound,
                self._tested_lr,
                self._applied_lr,
            ),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Return to a state captured by :meth:`snapshot` (which stays reusable)."""
        self.task.restore(snap["task"])
        self.step = snap["step"]
        self.diverged = snap["diverged"]
        self.clip_count = snap["clip_count"]
        self.capped_count = snap["capped_count"]
        (self._raw, self._scale, self._factor, self._bound, self._tested_lr, self._applied_lr) = (
            snap["bound"]
        )

    def clip_lr(self, lr: float) -> tuple[float, bool]:
        """Return ``(applied_lr, clipped)`` for a requested ``lr`` under the current bound."""
        raw = self._raw
        if self.clip != "none" and raw is not None and math.isfinite(raw):
            cap = self._factor * raw
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
        self._recheck(float(lr))
        applied, clipped = self.clip_lr(float(lr))
        self.clip_count += int(clipped)
        self._tested_lr = max(self._tested_lr, applied)
        self._applied_lr = applied
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
            if self.source != "measured" or self.step < self.budget:
                self._update_bound()  # (no decision follows the last interval: not measured)
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
