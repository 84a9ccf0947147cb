"""What a call of the batched NMF engines reports, and the argument checks they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metasched.inner_tasks.base import StepStats

__all__ = ["RNG_MODES", "BatchedStepStats", "check_int", "check_lr"]

#: Where the minibatches and gradient noise come from (see
#: :mod:`metasched.inner_tasks.nmf_batched`).
RNG_MODES: tuple[str, ...] = ("per_slot", "shared")


@dataclass(frozen=True, slots=True)
class BatchedStepStats:
    """What :meth:`BatchedNMF.train` reports, one entry (or row) per slot.

    Attributes:
        losses: ``(B, n_steps)`` minibatch losses before each update; NaN for the steps a
            slot did not run (after it stopped, or throughout when it was inactive).
        grad_norm: ``(B,)`` root-mean-square gradient norm over the steps each slot ran.
        update_norm: ``(B,)`` root-mean-square update norm over the steps each slot ran.
        diverged: ``(B,)`` whether the slot diverged (or collapsed to zero) in this call.
        n_done: ``(B,)`` steps each slot ran, the diverging step included.
        capped: ``(B,)`` number of update entries the per-entry cap limited.
    """

    losses: np.ndarray
    grad_norm: np.ndarray
    update_norm: np.ndarray
    diverged: np.ndarray
    n_done: np.ndarray
    capped: np.ndarray

    def for_slot(self, slot: int) -> StepStats:
        """Return the single-task :class:`StepStats` of one slot."""
        done = int(self.n_done[slot])
        return StepStats(
            losses=self.losses[slot, :done].copy(),
            grad_norm=float(self.grad_norm[slot]),
            update_norm=float(self.update_norm[slot]),
            diverged=bool(self.diverged[slot]),
            n_done=done,
            capped=int(self.capped[slot]),
        )

    @classmethod
    def empty(cls, n_slots: int, n_steps: int) -> BatchedStepStats:
        """Statistics of ``n_slots`` slots that ran no step."""
        zeros = np.zeros(n_slots)
        ints = np.zeros(n_slots, dtype=np.int64)
        return cls(
            np.full((n_slots, n_steps), np.nan),
            zeros,
            zeros.copy(),
            np.zeros(n_slots, dtype=bool),
            ints,
            ints.copy(),
        )


def check_int(name: str, value: Any, low: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ``>= low``, else raise ValueError."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_lr(lr: np.ndarray) -> None:
    """Raise ValueError naming the slots whose rate is not finite and non-negative."""
    if not np.all(np.isfinite(lr) & (lr >= 0)):
        bad = np.flatnonzero(~(np.isfinite(lr) & (lr >= 0))).tolist()
        raise ValueError(f"lr must be finite and non-negative; slots {bad} are not")
