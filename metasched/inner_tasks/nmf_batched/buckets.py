"""Shape classes: batched NMF problems grouped by size, each group padded to its own box.

Padding every slot to a family's largest shape wastes most of the work (an NMF family whose
sizes vary 3x pads the average instance ~4x). :class:`BucketedNMF` therefore keeps one
:class:`~metasched.inner_tasks.nmf_batched.BatchedNMF` per *shape class* (e.g. one per
minibatch size and range of ``n``, see :func:`shape_classes`), puts each loaded problem into
the cheapest class that contains it and keeps every class packed (a slot that leaves a class
is replaced by the class's last one), so each class pads only to its own, much smaller, box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metasched.inner_tasks.base import check_split
from metasched.inner_tasks.nmf import NMFFamily, NMFTask
from metasched.inner_tasks.nmf_batched.batch import (
    BatchedNMF,
    bound_from_lipschitz,
    top_eigenvalues,
)
from metasched.inner_tasks.nmf_batched.stats import BatchedStepStats, check_int, check_lr

__all__ = ["BucketedNMF", "box_cost", "shape_classes"]


def shape_classes(
    family: NMFFamily, split: str, *, n_bins: int = 2, rank_bins: int = 1
) -> list[tuple[int, int, int, int]]:
    """Return padding boxes ``(M, N, R, Bmax)`` covering all instances of ``split``.

    One class per minibatch size of the split times ``n_bins`` equal ranges of ``n`` times
    ``rank_bins`` equal ranges of the rank; ``M`` is always the split's largest ``m`` (rows
    only cost memory, not work). Boxes are sorted by the work of one step (cheapest first).
    """
    check_split(split)
    check_int("n_bins", n_bins)
    check_int("rank_bins", rank_bins)
    M, n_hi, r_hi, _ = family.max_shape(split)
    n_lo = int(family.ranges[split]["n"][0])
    r_lo = int(family.ranges[split]["rank"][0])

    def edges(lo: int, hi: int, bins: int) -> list[int]:
        tops = {math.ceil(lo - 1 + (hi - lo + 1) * (i + 1) / bins) for i in range(bins)}
        return sorted(min(max(x, lo), hi) for x in tops)

    sizes = sorted({min(int(b), M) for b in family.batch_sizes[split]})
    boxes = {
        (M, n, r, b)
        for b in sizes
        for n in edges(n_lo, n_hi, n_bins)
        for r in edges(r_lo, r_hi, rank_bins)
    }
    return sorted(boxes, key=_box_cost)


def box_cost(box: tuple[int, int, int, int]) -> int:
    """Modelled work of one padded step in box ``(M, N, R, Bmax)`` (for load balancing)."""
    return _box_cost(box)[0]


def _box_cost(box: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Work of one padded step: three ``b r n`` products plus a few ``b n`` passes."""
    _, n, r, b = box
    return (b * n * (r + 4) + 4 * r * n, box[1], box[2], box[3])


class BucketedNMF:
    """``n_slots`` NMF problems kept in one :class:`BatchedNMF` per shape class.

    It offers the slot interface of :class:`BatchedNMF` (``load``, ``train``, ``evaluate``,
    ``lr_bound``, ``active``, ...), but a problem lives in the cheapest class whose padding
    box contains it, and every class keeps its problems packed at its front: loading a slot
    with a problem of another class moves it, and the class it leaves fills the hole with
    its last problem (:meth:`BatchedNMF.move`, which carries the full state). Classes grow
    their capacity by doubling when needed. Each slot keeps the single task's random streams,
    so per-slot results do not depend on which other problems share its class.

    Args:
        n_slots: number of slots ``B``.
        classes: padding boxes ``(M, N, R, Bmax)`` (e.g. from :func:`shape_classes`).
        dtype, divergence_factor, update_cap: as for :class:`BatchedNMF`.
        capacity: initial slots per class (default: enough for an even spread, plus slack).
        rng, rng_seed: as for :class:`BatchedNMF`; with ``"shared"`` each class draws for
            all its problems at once (class ``g`` seeded from ``(rng_seed, g)``).
    """

    def __init__(
        self,
        n_slots: int,
        classes: Sequence[tuple[int, int, int, int]],
        *,
        dtype: torch.dtype = torch.float32,
        divergence_factor: float = 1e3,
        update_cap: float | None = None,
        capacity: int | None = None,
        rng: str = "per_slot",
        rng_seed: int = 0,
    ) -> None:
        B = check_int("n_slots", n_slots)
        boxes = [tuple(int(v) for v in c) for c in classes]
        if not boxes:
            raise ValueError("need at least one shape class")
        if capacity is None:
            capacity = max(2, math.ceil(1.5 * B / len(boxes)))
        cap0 = check_int("capacity", capacity)
        self.n_slots = B
        self.classes = sorted(boxes, key=_box_cost)
        self.groups = [
            BatchedNMF(
                cap0,
                box,
                dtype=dtype,
                divergence_factor=divergence_factor,
                update_cap=update_cap,
                rng=rng,
                rng_seed=int(np.random.SeedSequence([int(rng_seed), g]).generate_state(1)[0]),
            )
            for g, box in enumerate(self.classes)
        ]
        self.dtype = dtype
        self.divergence_factor = float(divergence_factor)
        self.update_cap = None if update_cap is None else float(update_cap)
        self.max_shape = tuple(int(v) for v in np.max(np.array(self.classes), axis=0))
        self._group = np.full(B, -1, dtype=np.int64)  # class of each slot (-1: empty)
        self._pos = np.full(B, -1, dtype=np.int64)  # position inside its class
        self._members: list[list[int]] = [[] for _ in self.classes]

    @classmethod
    def for_family(
        cls,
        n_slots: int,
        family: NMFFamily,
        split: str,
        *,
        n_bins: int = 2,
        rank_bins: int = 1,
        **kwargs: Any,
    ) -> BucketedNMF:
        """Build a bucketed batch whose classes come from :func:`shape_classes`."""
        classes = shape_classes(family, split, n_bins=n_bins, rank_bins=rank_bins)
        return cls(n_slots, classes, **kwargs)

    def _check_slot(self, slot: int) -> int:
        if not isinstance(slot, int | np.integer) or not 0 <= slot < self.n_slots:
            raise IndexError(f"slot must be in [0, {self.n_slots}), got {slot!r}")
        return int(slot)

    def class_of(self, task: NMFTask) -> int:
        """Index of the cheapest class whose box contains ``task`` (``ValueError`` if none)."""
        for g, group in enumerate(self.groups):
            if group.fits(task):
                return g
        shape = (task.m, task.n, task.rank, task.batch_size)
        raise ValueError(
            f"task shape (m, n, rank, batch_size) = {shape} exceeds max_shape {self.max_shape}"
        )

    def load(self, slot: int, task: NMFTask, generator: np.random.Generator) -> None:
        """Put ``task`` into ``slot``, initialised like ``task.reset(generator)``."""
        slot = self._check_slot(slot)
        if not isinstance(task, NMFTask):
            raise ValueError(f"task must be an NMFTask, got {type(task).__name__}")
        g = self.class_of(task)
        if g == self._group[slot]:  # same class: reuse the slot's place
            self.groups[g].load(int(self._pos[slot]), task, generator)
            return
        self._remove(slot)
        group, members = self.groups[g], self._members[g]
        pos = len(members)
        if pos == group.n_slots:
            group.resize(2 * group.n_slots)
        group.load(pos, task, generator)
        members.append(slot)
        self._group[slot], self._pos[slot] = g, pos

    def unload(self, slot: int) -> None:
        """Empty ``slot`` (its class fills the hole with its last problem)."""
        self._remove(self._check_slot(slot))

    def _remove(self, slot: int) -> None:
        g, pos = int(self._group[slot]), int(self._pos[slot])
        if g < 0:
            return
        group, members = self.groups[g], self._members[g]
        last = len(members) - 1
        if pos != last:
            group.move(last, pos)
            members[pos] = members[last]
            self._pos[members[pos]] = pos
        else:
            group.clear(last)
        members.pop()
        self._group[slot] = self._pos[slot] = -1

    def deactivate(self, slot: int) -> None:
        """Mark ``slot`` inactive (it keeps its problem and factors until loaded again)."""
        slot = self._check_slot(slot)
        if self._group[slot] >= 0:
            self.groups[self._group[slot]].deactivate(int(self._pos[slot]))

    # -- state -----------------------------------------------------------------------------
    @property
    def active(self) -> np.ndarray:
        """``(B,)`` bool: slots that are loaded and have not diverged since (a copy)."""
        out = np.zeros(self.n_slots, dtype=bool)
        for group, members in zip(self.groups, self._members, strict=True):
            if members:
                out[members] = group._active[: len(members)]
        return out

    @property
    def shapes(self) -> np.ndarray:
        """``(B, 4)`` int: each slot's ``(m, n, rank, batch_size)`` (ones for empty slots)."""
        out = np.ones((self.n_slots, 4), dtype=np.int64)
        for group, members in zip(self.groups, self._members, strict=True):
            if members:
                out[members] = group.shapes[: len(members)]
        return out

    @property
    def slot_classes(self) -> np.ndarray:
        """``(B,)`` class index of each slot (``-1`` for empty slots; a copy)."""
        return self._group.copy()

    def _locate(self, slot: int) -> tuple[BatchedNMF, int]:
        slot = self._check_slot(slot)
        if self._group[slot] < 0:
            raise ValueError(f"slot {slot} is empty")
        return self.groups[self._group[slot]], int(self._pos[slot])

    def factors(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of slot ``slot``'s unpadded ``(W, H)`` as float64 numpy arrays."""
        group, pos = self._locate(slot)
        return group.factors(pos)

    def slot_snapshot(self, slot: int) -> dict[str, Any]:
        """Return slot ``slot``'s state in :meth:`NMFTask.snapshot` format."""
        group, pos = self._locate(slot)
        return group.slot_snapshot(pos)

    # -- training and evaluation -----------------------------------------------------------
    def train(
        self, n_steps: int, lr: np.ndarray | float, *, track_updates: bool = True
    ) -> BatchedStepStats:
        """Run ``n_steps`` steps on every active slot at its own rate (see BatchedNMF)."""
        T = check_int("n_steps", n_steps, low=0)
        B = self.n_slots
        active = self.active
        lr = np.where(active, np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,)), 0.0)
        check_lr(lr)
        out = BatchedStepStats.empty(B, T)
        for group, members in zip(self.groups, self._members, strict=True):
            if not members:
                continue
            k = len(members)
            lr_g = np.zeros(group.n_slots)
            lr_g[:k] = lr[members]
            st = group.train(T, lr_g, track_updates=track_updates)
            for name in ("losses", "grad_norm", "update_norm", "diverged", "n_done", "capped"):
                getattr(out, name)[members] = getattr(st, name)[:k]
        return out

    def evaluate(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Full-data losses of all slots (or of ``slots``); 0 for empty slots."""
        return self._per_slot(slots, lambda group, pos: group.evaluate(pos), 0.0)

    def lr_bound(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Deterministic-safe rates of all slots (or of ``slots``); ``inf`` for empty slots.

        The Gram matrices of all classes go through one batched eigenvalue call.
        """
        want = self._wanted(slots)
        out = np.full(want.size, math.inf)
        R = self.max_shape[2]
        parts, where, ms, ns = [], [], [], []
        for g, group in enumerate(self.groups):
            idx = np.flatnonzero(self._group[want] == g)
            if idx.size == 0:
                continue
            pos = self._pos[want[idx]]
            grams = group.grams(pos)
            r = grams.shape[-1]
            if r < R:
                grams = torch.nn.functional.pad(grams, (0, R - r, 0, R - r))
            parts.append(grams.view(2, idx.size, R, R))
            where.append(idx)
            ms.append(group._m[pos])
            ns.append(group._n[pos])
        if not parts:
            return out
        top = top_eigenvalues(torch.cat(parts, dim=1).view(-1, R, R)).numpy()
        k = top.size // 2
        idx, m, n = np.concatenate(where), np.concatenate(ms), np.concatenate(ns)
        out[idx] = bound_from_lipschitz(top[:k] / n, top[k:] / (m * n))
        return out

    def _wanted(self, slots: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if slots is None:
            return np.arange(self.n_slots)
        return np.asarray(slots, dtype=np.int64).reshape(-1)

    def _per_slot(self, slots: Any, fn: Any, empty: float) -> np.ndarray:
        want = self._wanted(slots)
        out = np.full(want.size, empty)
        for g, group in enumerate(self.groups):
            idx = np.flatnonzero(self._group[want] == g)
            if idx.size:
                out[idx] = fn(group, self._pos[want[idx]])
        return out

    def default_lr(self) -> np.ndarray:
        """``(B,)`` half the deterministic-safe rates at the current points."""
        return 0.5 * self.lr_bound()
