"""Interfaces of inner tasks (trainable problem instances) and task families."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from metasched.errors import ConfigError

__all__ = [
    "NETWORK_LR_RANGE",
    "SPLITS",
    "InnerTask",
    "Split",
    "StepStats",
    "TaskFamily",
    "check_split",
]

Split = Literal["train", "val", "test", "shift"]
SPLITS: tuple[str, ...] = ("train", "val", "test", "shift")
#: Seed-stream id of each split. ``val`` came last and got the next free id, so every
#: ``train``/``test``/``shift`` instance is the one it always was.
_SPLIT_IDS = {"train": 0, "test": 1, "shift": 2, "val": 3}
#: LR range of the neural-network families, as multiples of the reference LR.
NETWORK_LR_RANGE: tuple[float, float] = (0.01, 20.0)


def check_split(split: str) -> int:
    """Return the numeric id of ``split`` or raise a ``ConfigError`` naming it."""
    if split not in _SPLIT_IDS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return _SPLIT_IDS[split]


@dataclass(frozen=True, slots=True)
class StepStats:
    """What :meth:`InnerTask.train` reports about the steps it ran.

    Attributes:
        losses: per-step minibatch training loss (before each update), length ``n_done``.
        grad_norm: mean gradient norm over the steps run.
        update_norm: mean parameter-update norm over the steps run.
        diverged: a non-finite or exploding loss, or a collapse to the trivial solution.
        n_done: steps actually run (training stops at the first divergence).
        capped: number of parameter entries whose update the per-parameter cap limited.
        n_increasing: number of consecutive minibatch-loss pairs that went up (computed from
            ``losses`` when not given).
    """

    losses: np.ndarray
    grad_norm: float
    update_norm: float
    diverged: bool
    n_done: int
    capped: int = 0
    n_increasing: int | None = None

    @property
    def mean_loss(self) -> float:
        """Mean minibatch loss over the steps run (``inf`` when none ran)."""
        return float(self.losses.sum()) / self.n_done if self.n_done else float("inf")

    @property
    def frac_increasing(self) -> float:
        """Fraction of consecutive minibatch losses that increased (a noise proxy)."""
        if self.n_done < 2:
            return 0.0
        ups = self.n_increasing
        if ups is None:
            ups = int(np.count_nonzero(np.diff(self.losses) > 0))
        return ups / (self.n_done - 1)


class InnerTask(abc.ABC):
    """One trainable problem instance with its own parameters and optimizer state.

    Subclasses must be deterministic given the generator passed to :meth:`reset`: every
    random draw (initialisation, minibatches, gradient noise) comes from that generator.
    """

    name: str
    #: whether :meth:`lr_bound` is analytic (computed from the task's maths, free); otherwise
    #: it is measured (:mod:`metasched.stability`) or unknown. See :mod:`metasched.loop`.
    analytic_bound: bool = False

    @abc.abstractmethod
    def reset(self, generator: np.random.Generator) -> None:
        """Re-initialise parameters and optimizer state, drawing randomness from ``generator``."""

    @abc.abstractmethod
    def train(self, n_steps: int, lr: float) -> StepStats:
        """Run ``n_steps`` optimizer steps at learning rate ``lr``; stop early on divergence."""

    @abc.abstractmethod
    def evaluate(self) -> float:
        """Return the validation loss (the full-data loss where there is no held-out set)."""

    @abc.abstractmethod
    def snapshot(self) -> Any:
        """Return an opaque copy of the full training state (parameters, optimizer, RNG)."""

    @abc.abstractmethod
    def restore(self, snap: Any) -> None:
        """Return to a state captured by :meth:`snapshot` (the snapshot stays reusable)."""

    def lr_bound(self) -> float | None:
        """Return the task's stability bound on the learning rate, or ``None`` if unknown."""
        return None

    def default_lr(self) -> float:
        """Return a sensible reference learning rate for this instance."""
        bound = self.lr_bound()
        return 0.5 * bound if bound is not None else 1e-2

    @property
    def has_validation(self) -> bool:
        """Whether :meth:`evaluate` measures a held-out set (not the training data)."""
        return False


class TaskFamily(abc.ABC):
    """A seeded distribution over task instances with ``train``/``val``/``test``/``shift`` splits.

    ``instance_config(split, index)`` is a pure function of ``(family seed, split, index)``:
    the same arguments always give the same frozen config, and different splits draw from
    disjoint seed streams. ``val`` and ``test`` draw from the distribution of ``train``;
    ``shift`` draws from a deliberately different one. Roles: ``train`` for meta-training and
    tuning, ``val`` for every selection (checkpoints, configs, distillation), ``test`` and
    ``shift`` for reported numbers only.
    """

    name: ClassVar[str]
    #: Number of distinct instances per split that an env samples from (train: unbounded).
    pool_sizes: ClassVar[dict[str, int]] = {
        "train": 2**31 - 1,
        "val": 100,
        "test": 100,
        "shift": 100,
    }
    #: The LR range an agent (and a bounded scheduler such as GreedyLR in comparisons) moves
    #: in, as multiples ``(low, high)`` of the instance's reference LR ``default_lr()``. The
    #: one place this range is set: the env's default ``lr_range``, the registered env specs,
    #: ``compare`` and distillation all read it.
    lr_range: ClassVar[tuple[float, float]] = (1e-3, 64.0)

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"family seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def rng_for(self, split: str, index: int) -> np.random.Generator:
        """Return the generator that defines instance ``index`` of ``split``."""
        split_id = check_split(split)
        if index < 0:
            raise ValueError(f"instance index must be non-negative, got {index}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, split_id, int(index)]))

    @abc.abstractmethod
    def instance_config(self, split: str, index: int) -> Any:
        """Return the frozen config of instance ``index`` of ``split``."""

    @abc.abstractmethod
    def make_task(self, config: Any) -> InnerTask:
        """Build the task instance described by ``config``."""

    def make(self, split: str, index: int) -> InnerTask:
        """Build instance ``index`` of ``split``."""
        return self.make_task(self.instance_config(split, index))

    def configs(self, split: str, indices: Sequence[int]) -> list[Any]:
        """Return the configs of several instances."""
        return [self.instance_config(split, i) for i in indices]
