"""Does scheduling matter on a task family? Tuned constant LR vs tuned cosine decay.

Both baselines are tuned exactly as ``metasched compare`` tunes them (:func:`compare.tune
<metasched.distill.compare.tune>`, the protocol of :mod:`metasched.distill.tuning`): every
grid point is a multiple of each instance's reference LR, runs on the same ``train``
instances with the comparison's seeds, and the lowest mean log final loss wins (a diverged
run scoring ten times its initial loss). The picks then run on ``val`` instances (``split=``
picks another; the ``metasched check`` command stays on ``train``/``val``, so it never
touches ``test``). If the tuned cosine does not beat the tuned constant, "always take the
maximum safe LR" is close to optimal and the control problem teaches an agent nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metasched.distill.compare import (
    DEFAULT_GRID,
    CompareSpec,
    SchedulerSpec,
    evaluation_cells,
    run_cells,
    tune,
)
from metasched.distill.results import final_loss
from metasched.errors import ConfigError
from metasched.inner_tasks.base import check_split
from metasched.loop import DEFAULT_CLIP, DEFAULT_KAPPA

__all__ = ["SchedulingCheck", "constant_vs_cosine"]

#: The two tuned baselines of the check.
LABELS: tuple[str, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class SchedulingCheck:
    """Outcome of :func:`constant_vs_cosine`.

    Attributes:
        family: the task family.
        grid: the LR multiples tried (of each instance's reference LR).
        train_mean_log: mean log final loss on ``train`` of every grid point, per schedule.
        tuned_multiple: the protocol's pick per schedule.
        flat: whether that pick sits in a flat region (see :mod:`metasched.distill.tuning`).
        split: the split the tuned schedules were then run on.
        eval_final: their final losses there, per instance.
    """

    family: str
    grid: tuple[float, ...]
    train_mean_log: dict[str, tuple[float, ...]]
    tuned_multiple: dict[str, float]
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
        rows = [
            f"| {k} | {self.tuned_multiple[k]:.3g}{' (flat)' if self.flat[k] else ''} | "
            f"{med[k]:.4g} |"
            for k in LABELS
        ]
        return "\n".join(
            [
                f"| schedule | tuned (peak) LR, × reference LR | median final {self.split} loss |",
                "|---|---|---|",
                *rows,
                "",
                f"cosine lower on {self.cosine_win_rate:.0%} of "
                f"{len(self.eval_final['cosine'])} {self.split} instances",
            ]
        )


def constant_vs_cosine(
    family: str,
    *,
    family_seed: int = 0,
    n_train: int = 40,
    n_val: int = 20,
    split: str = "val",
    budget: int | None = None,
    interval: int | None = None,
    grid: Sequence[float] = DEFAULT_GRID,
    clip: str = DEFAULT_CLIP,
    kappa: float = DEFAULT_KAPPA,
    jobs: int = 1,
) -> SchedulingCheck:
    """Tune constant and cosine LRs on ``train`` instances as ``compare`` does; run the picks.

    Args:
        family: registered task family name.
        family_seed: seed of the task family.
        n_train: ``train`` instances every grid point runs on.
        n_val: instances of ``split`` the two tuned schedules run on.
        split: the evaluated split (``val``; ``test`` only for reported benchmark numbers).
        budget: inner steps per run (default: the family's env budget, as in ``compare``).
        interval: inner steps per LR decision (default: the family's env interval).
        grid: the LR multiples tried, of each instance's reference LR (default: compare's).
        clip: stability-bound clipping mode.
        kappa: clipping factor.
        jobs: worker processes.

    Returns:
        The :class:`SchedulingCheck`.

    Raises:
        ConfigError: a bad family, count, split or grid (naming the value).
    """
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if check_split(split) == check_split("train"):
        raise ConfigError("split must not be 'train' (the tuning split)")
    spec = CompareSpec(
        families=(family,),
        split=split,
        n_instances=n_val,
        budget=budget,
        interval=interval,
        family_seed=family_seed,
        tune_instances=n_train,
        grid=tuple(float(g) for g in grid),
        clip=clip,
        kappa=kappa,
    )
    with tempfile.TemporaryDirectory(prefix="metasched-check-") as tmp:
        tuning = tune(spec, LABELS, Path(tmp), jobs=jobs)
        cells = evaluation_cells(spec, [SchedulerSpec(lb, lb) for lb in LABELS], tuning)
        results = run_cells(cells, Path(tmp), jobs=jobs)
    picks = {lb: tuning[f"{family}/{lb}"] for lb in LABELS}
    return SchedulingCheck(
        family=family,
        grid=spec.grid,
        train_mean_log={lb: tuple(t["mean"]) for lb, t in picks.items()},
        tuned_multiple={lb: float(t["multiple"]) for lb, t in picks.items()},
        flat={lb: bool(t["in_flat_region"]) for lb, t in picks.items()},
        split=split,
        eval_final={
            lb: tuple(final_loss(r) for r in results if r["cell"]["label"] == lb)
            for lb in LABELS
        },
    )
