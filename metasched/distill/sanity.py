"""Does scheduling matter on a task family? Tuned constant LR vs tuned cosine decay.

Both baselines get their (peak) LR tuned by grid search on ``train`` instances (lowest median
final loss, diverged runs counting as infinitely bad) and are then run on ``test`` instances.
If the tuned cosine does not beat the tuned constant, "always take the maximum safe LR" is
close to optimal and the control problem teaches an agent nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metasched.inner_tasks.base import InnerTask, TaskFamily
from metasched.loop import DEFAULT_KAPPA, ClipMode
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
    clip: ClipMode = "deterministic",
    kappa: float = DEFAULT_KAPPA,
) -> float:
    """Train ``task`` with a ``constant`` or ``cosine`` schedule; return the final full loss.

    The LR is set once per decision interval (as an agent would); divergence returns ``inf``.
    """
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
    )
    return trace.final_loss


@dataclass(frozen=True)
class SchedulingCheck:
    """Outcome of :func:`constant_vs_cosine`."""

    grid: tuple[float, ...]
    train_median: dict[str, tuple[float, ...]]
    tuned_lr: dict[str, float]
    test_final: dict[str, tuple[float, ...]]

    @property
    def test_median(self) -> dict[str, float]:
        """Median final test loss per schedule."""
        return {k: float(np.median(v)) for k, v in self.test_final.items()}

    @property
    def cosine_win_rate(self) -> float:
        """Fraction of test instances where the tuned cosine ends lower than the constant."""
        c, k = np.array(self.test_final["constant"]), np.array(self.test_final["cosine"])
        return float(np.mean(k < c))

    def table(self) -> str:
        """Markdown summary."""
        med = self.test_median
        return "\n".join(
            [
                "| schedule | tuned (peak) LR | median final test loss |",
                "|---|---|---|",
                f"| constant | {self.tuned_lr['constant']:.3g} | {med['constant']:.4g} |",
                f"| cosine | {self.tuned_lr['cosine']:.3g} | {med['cosine']:.4g} |",
                "",
                f"cosine lower on {self.cosine_win_rate:.0%} of "
                f"{len(self.test_final['cosine'])} test instances",
            ]
        )


def constant_vs_cosine(
    family: TaskFamily,
    *,
    n_train: int = 10,
    n_test: int = 20,
    budget: int = 2000,
    interval: int = 50,
    grid: Sequence[float] = DEFAULT_GRID,
    clip: ClipMode = "deterministic",
    kappa: float = DEFAULT_KAPPA,
) -> SchedulingCheck:
    """Tune constant and cosine LRs on ``train`` instances and compare them on ``test``."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    kw = {"budget": budget, "interval": interval, "clip": clip, "kappa": kappa}
    train = [family.make("train", i) for i in range(n_train)]
    test = [family.make("test", i) for i in range(n_test)]
    medians: dict[str, tuple[float, ...]] = {}
    tuned: dict[str, float] = {}
    finals: dict[str, tuple[float, ...]] = {}
    for sched in ("constant", "cosine"):
        med = tuple(
            float(
                np.median([run_open_loop(t, sched, lr, seed=i, **kw) for i, t in enumerate(train)])
            )
            for lr in grid
        )
        medians[sched] = med
        tuned[sched] = float(grid[int(np.argmin(med))])
        finals[sched] = tuple(
            run_open_loop(t, sched, tuned[sched], seed=1000 + i, **kw) for i, t in enumerate(test)
        )
    return SchedulingCheck(tuple(grid), medians, tuned, finals)
