"""Does scheduling matter on a task family? Tuned constant LR vs tuned cosine decay.

Both baselines get their (peak) LR tuned on ``train`` instances by the comparison's protocol
(:mod:`metasched.distill.tuning`: lowest mean log final loss, a diverged run scoring ten
times its initial loss) and are then run on ``val`` instances (``split=`` picks another; the
``metasched check`` command stays on ``train``/``val``, so it never touches ``test``).
If the tuned cosine does not beat the tuned constant, "always take the maximum safe LR" is
close to optimal and the control problem teaches an agent nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metasched.distill.tuning import log_score, tune_curve
from metasched.inner_tasks.base import InnerTask, TaskFamily, check_split
from metasched.loop import DEFAULT_CLIP, DEFAULT_KAPPA, ClipMode
from metasched.schedulers import make_scheduler, run_schedule

__all__ = ["SchedulingCheck", "constant_vs_cosine", "run_open_loop"]

DEFAULT_GRID: tuple[float, ...] = tuple(float(x) for x in np.geomspace(0.05, 20.0, 14))


def run_open_loop(
    task: InnerTask,
    schedule: str,
    peak_lr: float,
    *,
    budget: int,
    interval: int,
    seed: int,
    clip: ClipMode = DEFAULT_CLIP,
    kappa: float = DEFAULT_KAPPA,
) -> float:
    """Train ``task`` with a ``constant`` or ``cosine`` schedule; return the final full loss.

    The LR is set once per decision interval (as an agent would); divergence returns ``inf``.
    """
    return _run(task, schedule, peak_lr, budget=budget, interval=interval, seed=seed,
                clip=clip, kappa=kappa)[0]  # fmt: skip


def _run(
    task: InnerTask,
    schedule: str,
    peak_lr: float,
    *,
    budget: int,
    interval: int,
    seed: int,
    clip: ClipMode,
    kappa: float,
) -> tuple[float, float]:
    """Return ``(final loss, protocol score)`` of one open-loop run."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    trace = run_schedule(
        task,
        make_scheduler(schedule),
        budget=budget,
        interval=interval,
        seed=seed,
        base_lr=peak_lr,
        clip=clip,
        kappa=kappa,
        record_eval=True,
    )
    first = next((x for x in trace.columns["val_loss"] if math.isfinite(x)), None)
    return trace.final_loss, log_score(trace.final_loss, first, trace.diverged)


@dataclass(frozen=True)
class SchedulingCheck:
    """Outcome of :func:`constant_vs_cosine`.

    Attributes:
        grid: the (peak) LRs tried.
        train_mean_log: mean log final train loss of every grid LR, per schedule.
        tuned_lr: the protocol's pick per schedule.
        flat: whether that pick sits in a flat region (see :mod:`metasched.distill.tuning`).
        split: the split the tuned schedules were then run on.
        eval_final: their final losses there, per instance.
    """

    grid: tuple[float, ...]
    train_mean_log: dict[str, tuple[float, ...]]
    tuned_lr: dict[str, float]
    flat: dict[str, bool]
    split: str
    eval_final: dict[str, tuple[float, ...]]

    @property
    def eval_median(self) -> dict[str, float]:
        """Median final loss per schedule on the evaluated split."""
        return {k: float(np.median(v)) for k, v in self.eval_final.items()}

    @property
    def cosine_win_rate(self) -> float:
        """Fraction of evaluated instances where the tuned cosine ends lower than the constant."""
        c, k = np.array(self.eval_final["constant"]), np.array(self.eval_final["cosine"])
        return float(np.mean(k < c))

    def table(self) -> str:
        """Markdown summary."""
        med = self.eval_median
        flat = {k: " (flat)" if v else "" for k, v in self.flat.items()}
        return "\n".join(
            [
                f"| schedule | tuned (peak) LR | median final {self.split} loss |",
                "|---|---|---|",
                f"| constant | {self.tuned_lr['constant']:.3g}{flat['constant']} | "
                f"{med['constant']:.4g} |",
                f"| cosine | {self.tuned_lr['cosine']:.3g}{flat['cosine']} | {med['cosine']:.4g} |",
                "",
                f"cosine lower on {self.cosine_win_rate:.0%} of "
                f"{len(self.eval_final['cosine'])} {self.split} instances",
            ]
        )


def constant_vs_cosine(
    family: TaskFamily,
    *,
    n_train: int = 40,
    n_val: int = 20,
    split: str = "val",
    budget: int = 2000,
    interval: int = 50,
    grid: Sequence[float] = DEFAULT_GRID,
    clip: ClipMode = DEFAULT_CLIP,
    kappa: float = DEFAULT_KAPPA,
) -> SchedulingCheck:
    """Tune constant and cosine LRs on ``train`` instances; run the picks on ``split``.

    Args:
        family: the task family.
        n_train: ``train`` instances every grid LR runs on.
        n_val: instances of ``split`` the two tuned schedules run on.
        split: the evaluated split (``val``; ``test`` only for reported benchmark numbers).
        budget: inner steps per run.
        interval: inner steps per LR decision.
        grid: the (peak) LRs tried.
        clip: stability-bound clipping mode.
        kappa: clipping factor.

    Returns:
        The :class:`SchedulingCheck`.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    if check_split(split) == check_split("train"):
        raise ValueError("split must not be 'train' (the tuning split)")
    kw = {"budget": budget, "interval": interval, "clip": clip, "kappa": kappa}
    train = [family.make("train", i) for i in range(n_train)]
    evals = [family.make(split, i) for i in range(n_val)]
    means: dict[str, tuple[float, ...]] = {}
    tuned: dict[str, float] = {}
    flat: dict[str, bool] = {}
    finals: dict[str, tuple[float, ...]] = {}
    for sched in ("constant", "cosine"):
        scores = np.array(
            [[_run(t, sched, lr, seed=i, **kw)[1] for i, t in enumerate(train)] for lr in grid]
        )
        curve = tune_curve(scores)
        means[sched] = curve.mean
        tuned[sched] = float(grid[curve.best])
        flat[sched] = curve.in_flat_region
        finals[sched] = tuple(
            _run(t, sched, tuned[sched], seed=1000 + i, **kw)[0] for i, t in enumerate(evals)
        )
    return SchedulingCheck(tuple(grid), means, tuned, flat, split, finals)
