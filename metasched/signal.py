"""The read-only record every scheduler observes.

Fixed, reactive, search-based and learned schedulers all receive the same
:class:`TrainingSignal` after each decision interval, so they share one ``step(signal)``
signature (no ``step(metrics)`` special case as in torch's ``ReduceLROnPlateau``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["LossSource", "TrainingSignal"]

LossSource = Literal["auto", "train", "val"]


@dataclass(frozen=True, slots=True)
class TrainingSignal:
    """What happened during the last decision interval of inner training.

    Attributes:
        step: inner (main-line) optimizer steps taken so far, after this interval.
        budget: total inner steps of the run.
        lr: learning rate that was in force during the interval (after any clipping).
        train_loss: mean minibatch training loss over the interval.
        val_loss: validation (or full-data) loss at the end of the interval, if measured.
        grad_norm: mean minibatch gradient norm over the interval, if known.
        update_norm: mean parameter-update norm over the interval, if known.
        lr_bound: the stability bound at the end of the interval, if known, on the common
            scale of :mod:`metasched.loop`: the estimated largest stable LR (twice NMF's
            analytic ``1/L``; a measured bound as it is).
        frac_increasing: fraction of consecutive minibatch losses that went up (a noise proxy).
        diverged: the interval ended in divergence (non-finite or exploding loss).
        interval_steps: inner steps in this interval.
        losses: the per-step minibatch losses of the interval (may be empty).
    """

    step: int
    budget: int
    lr: float
    train_loss: float
    val_loss: float | None = None
    grad_norm: float | None = None
    update_norm: float | None = None
    lr_bound: float | None = None
    frac_increasing: float | None = None
    diverged: bool = False
    interval_steps: int = 0
    losses: tuple[float, ...] = field(default=(), repr=False)

    def loss(self, source: LossSource = "auto") -> float:
        """Return the loss a loss-driven scheduler should read.

        ``"auto"`` reads ``val_loss`` when the signal carries one and ``train_loss`` otherwise;
        ``"train"`` and ``"val"`` force one (``"val"`` falls back to train when absent).
        """
        if source not in ("auto", "train", "val"):
            raise ValueError(f"loss source must be 'auto', 'train' or 'val', got {source!r}")
        if source != "train" and self.val_loss is not None:
            return float(self.val_loss)
        return float(self.train_loss)

    @property
    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]."""
        return min(1.0, self.step / self.budget) if self.budget > 0 else 1.0

    @property
    def finite(self) -> bool:
        """Whether the training loss is finite."""
        return math.isfinite(self.train_loss)
