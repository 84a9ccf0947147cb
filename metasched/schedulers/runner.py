"""Drive any inner task with any scheduler and record what happened.

The runner is a thin layer over :class:`~metasched.loop.Driver` (the loop the env uses
too): per decision interval it asks the scheduler for the LR, trains — or lets a search
scheduler train, fork and roll back through the driver — and records one :class:`Trace` row.
The comparison harness builds on :func:`run_schedule`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metasched.inner_tasks.base import InnerTask
from metasched.loop import DEFAULT_CLIP, DEFAULT_KAPPA, DEFAULT_KAPPA_MEASURED, ClipMode, Driver
from metasched.schedulers.base import Scheduler, check_positive
from metasched.signal import TrainingSignal

__all__ = ["TRACE_COLUMNS", "Run", "Trace", "run_schedule"]

#: Columns of a trace, one value per decision (row 0 is the state before training).
TRACE_COLUMNS: tuple[str, ...] = (
    "step",
    "lr",
    "applied_lr",
    "train_loss",
    "val_loss",
    "inner_steps",
    "wall_time",
)


@dataclass
class Trace:
    """One run of a scheduler on a task: a row per decision plus the outcome.

    Row 0 is the state at initialisation (``lr`` and ``applied_lr`` are ``nan``, both losses
    are the initial full loss). Row ``i > 0`` describes decision interval ``i``: the main-line
    ``step`` reached, the LR the scheduler asked for and the LR applied after clipping, the
    mean minibatch ``train_loss`` over the interval, the ``val_loss`` at its end (``nan`` when
    not measured), the cumulative ``inner_steps`` spent *including* probes and forks, and the
    cumulative ``wall_time`` in seconds.

    Attributes:
        task: the task instance name.
        scheduler: the scheduler's ``repr``.
        budget: main-line inner-step budget.
        interval: inner steps per decision.
        final_loss: the task's validation (or full-data) loss at the end; ``inf`` if diverged.
        diverged: whether training diverged.
        extra_steps: inner steps spent off the main line (probes, forks).
        clip_count: decisions whose LR the stability bound clipped.
    """

    task: str
    scheduler: str
    budget: int
    interval: int
    columns: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in TRACE_COLUMNS})
    final_loss: float = math.nan
    diverged: bool = False
    extra_steps: int = 0
    clip_count: int = 0

    def append(self, **row: float) -> None:
        """Add one row (every column must be given)."""
        missing = set(TRACE_COLUMNS) - set(row)
        if missing:
            raise ValueError(f"trace row misses {sorted(missing)}")
        for c in TRACE_COLUMNS:
            self.columns[c].append(float(row[c]))

    def __len__(self) -> int:
        return len(self.columns["step"])

    def __getitem__(self, column: str) -> np.ndarray:
        return np.asarray(self.columns[column], dtype=float)

    @property
    def total_steps(self) -> int:
        """Inner steps spent in all: main line plus :attr:`extra_steps`."""
        return int(self.columns["inner_steps"][-1]) if len(self) else 0

    @property
    def wall_time(self) -> float:
        """Seconds spent in the run (training, probes and scheduler decisions)."""
        return self.columns["wall_time"][-1] if len(self) else 0.0

    def rows(self) -> Iterator[dict[str, Any]]:
        """Yield one dict per row (tidy/long layout), tagged with task and scheduler."""
        for i in range(len(self)):
            row: dict[str, Any] = {"task": self.task, "scheduler": self.scheduler}
            row.update({c: self.columns[c][i] for c in TRACE_COLUMNS})
            row["step"] = int(row["step"])
            row["inner_steps"] = int(row["inner_steps"])
            yield row

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite floats become ``None``)."""

        def enc(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "task": self.task,
            "scheduler": self.scheduler,
            "budget": self.budget,
            "interval": self.interval,
            "final_loss": enc(self.final_loss),
            "diverged": self.diverged,
            "extra_steps": self.extra_steps,
            "clip_count": self.clip_count,
            "columns": {c: [enc(x) for x in v] for c, v in self.columns.items()},
        }


class Run:
    """A scheduler driving a task, one decision at a time (see :func:`run_schedule`).

    Args:
        task: the inner task (reset by :meth:`start`).
        scheduler: any :class:`~metasched.schedulers.base.Scheduler`.
        budget: main-line inner steps.
        interval: inner steps per decision.
        base_lr: LR handed to ``scheduler.reset``; default: the task's ``default_lr()`` at
            initialisation (half the stability bound for NMF).
        clip, kappa, kappa_measured: stability-bound clipping, as in the env. A measured
            bound's cost (:attr:`~metasched.loop.Driver.extra_steps`, in SGD-step units)
            counts in the trace's ``extra_steps`` and ``inner_steps`` (compute), as probe
            and PBT count their forks.
        measure_val: evaluate the validation loss after every interval (default: tasks with
            a held-out set only). The scheduler sees it in its signal.
        record_eval: also record the task's :meth:`~InnerTask.evaluate` loss after every
            interval in the trace's ``val_loss`` column when the signal carries none — for
            metrics and plots only: the scheduler does not see it (its observations stay as
            in the env) and the task's random streams are untouched.

    The scheduler can be swapped between decisions (``run.scheduler = other``), e.g. for a
    fresh instance loaded from a ``state_dict``.
    """

    def __init__(
        self,
        task: InnerTask,
        scheduler: Scheduler,
        *,
        budget: int,
        interval: int,
        base_lr: float | None = None,
        clip: ClipMode = DEFAULT_CLIP,
        kappa: float = DEFAULT_KAPPA,
        measure_val: bool | None = None,
        record_eval: bool = False,
        kappa_measured: float = DEFAULT_KAPPA_MEASURED,
    ) -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a Scheduler, got {type(scheduler).__name__}")
        if base_lr is not None:
            check_positive("base_lr", base_lr)
        self.task = task
        self.scheduler = scheduler
        self.base_lr = base_lr
        self.driver = Driver(
            task,
            budget,
            interval,
            clip=clip,
            kappa=kappa,
            measure_val=measure_val,
            kappa_measured=kappa_measured,
        )
        if getattr(scheduler, "own_step_size", False) and self.driver.source == "measured":
            # an optimizer with its own step sizes (LR-free peers) ignores the LR: measuring
            # the task's SGD bound for it would be compute spent on nothing
            self.driver = Driver(task, budget, interval, clip="none", measure_val=measure_val)
        self.trace = Trace(task.name, repr(scheduler), int(budget), int(interval))
        self.record_eval = bool(record_eval)
        self.last_signal: TrainingSignal | None = None
        self._wall = 0.0
        self._started = False

    @property
    def done(self) -> bool:
        """Whether the budget is spent or training diverged."""
        return self._started and self.driver.done

    def start(self, generator: np.random.Generator | int) -> TrainingSignal:
        """Reset the task (from ``generator`` or an int seed) and the scheduler."""
        gen = (
            generator
            if isinstance(generator, np.random.Generator)
            else np.random.default_rng(generator)
        )
        t0 = time.perf_counter()
        sig0 = self.driver.start(gen)
        base = self.base_lr if self.base_lr is not None else self.task.default_lr()
        self.scheduler.reset(float(base), sig0)
        self._wall = time.perf_counter() - t0
        self.trace = Trace(
            self.task.name, repr(self.scheduler), self.driver.budget, self.driver.interval
        )
        val0 = sig0.val_loss if sig0.val_loss is not None else sig0.train_loss
        self.trace.append(
            step=0,
            lr=math.nan,
            applied_lr=math.nan,
            train_loss=sig0.train_loss,
            val_loss=val0,
            inner_steps=0,
            wall_time=self._wall,
        )
        self.last_signal = sig0
        self._started = True
        return sig0

    def step(self) -> TrainingSignal:
        """Run one decision interval and record it; return its signal."""
        if not self._started:
            raise RuntimeError("call start() before step()")
        if self.driver.done:
            raise RuntimeError("the run is over (budget spent or diverged)")
        t0 = time.perf_counter()
        lr = self.scheduler.lr
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"{self.scheduler!r} produced an invalid learning rate {lr!r}")
        signal, info = self.scheduler.advance(self.driver)
        self.scheduler.step(signal)
        self._wall += time.perf_counter() - t0
        val = math.nan if signal.val_loss is None else signal.val_loss
        if self.record_eval and signal.val_loss is None:
            val = math.inf if self.driver.diverged else float(self.task.evaluate())
        tr = self.trace
        tr.append(
            step=signal.step,
            lr=info.requested_lr,
            applied_lr=info.applied_lr,
            train_loss=signal.train_loss,
            val_loss=val,
            inner_steps=self.driver.step + self.extra_steps,
            wall_time=self._wall,
        )
        self.last_signal = signal
        if self.driver.done:
            self._finish()
        return signal

    @property
    def extra_steps(self) -> int:
        """Inner steps off the main line: the scheduler's plus the measured bound's cost."""
        return self.scheduler.extra_steps + round(self.driver.extra_steps)

    def _finish(self) -> None:
        tr = self.trace
        tr.diverged = self.driver.diverged
        tr.final_loss = math.inf if tr.diverged else float(self.task.evaluate())
        tr.extra_steps = self.extra_steps
        tr.clip_count = self.driver.clip_count

    def run(self) -> Trace:
        """Step until the budget is spent or training diverges; return the trace."""
        while not self.done:
            self.step()
        return self.trace


def run_schedule(
    task: InnerTask,
    scheduler: Scheduler,
    *,
    budget: int,
    interval: int,
    seed: int | np.random.Generator = 0,
    base_lr: float | None = None,
    clip: ClipMode = DEFAULT_CLIP,
    kappa: float = DEFAULT_KAPPA,
    measure_val: bool | None = None,
    record_eval: bool = False,
    kappa_measured: float = DEFAULT_KAPPA_MEASURED,
) -> Trace:
    """Train ``task`` for ``budget`` inner steps with ``scheduler`` deciding every ``interval``.

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.nmf import NMFTask
        >>> from metasched.schedulers import make_scheduler
        >>> task = NMFTask.from_matrix(np.ones((30, 20)), rank=2, batch_size=8)
        >>> tr = run_schedule(task, make_scheduler("cosine"), budget=200, interval=50)
        >>> len(tr), tr["step"].tolist(), bool(tr.final_loss < tr["train_loss"][0])
        (5, [0.0, 50.0, 100.0, 150.0, 200.0], True)
    """
    run = Run(
        task,
        scheduler,
        budget=budget,
        interval=interval,
        base_lr=base_lr,
        clip=clip,
        kappa=kappa,
        measure_val=measure_val,
        record_eval=record_eval,
        kappa_measured=kappa_measured,
    )
    run.start(seed)
    return run.run()
