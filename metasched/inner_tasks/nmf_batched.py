"""Many stochastic-NMF instances stepped together as one batched torch computation.

:class:`BatchedNMF` holds ``n_slots`` independent :class:`~metasched.inner_tasks.nmf.NMFTask`
problems, zero-padded to one common shape ``(M, N, R, Bmax)``, and advances all of them with
batched matrix products (``torch.bmm``) over a leading slot dimension, as a vectorised RL
environment needs. Each slot follows the single task's random streams draw for draw:

* :meth:`BatchedNMF.load` draws the initial factors and the two per-slot RNG seeds from the
  caller's generator in exactly the order of :meth:`NMFTask.reset`;
* every :meth:`BatchedNMF.train` call draws, per slot, one ``rng.random((n_steps, b))`` array
  of minibatch rows and (when ``grad_noise > 0``) one float32 ``torch.randn`` vector of the
  single task's length, so a slot and an :class:`NMFTask` reset from equal generators see the
  same minibatches and the same gradient noise.

With ``rng="shared"`` the batch draws instead, per call, once for all slots from its own
generators (seeded by ``rng_seed``): one uniform array gives every slot's minibatch rows,
and one pool of ``T + B`` steps of standard-normal noise gives every slot's gradient noise
(slot ``k`` reads a cyclic shift of the pool with a random sign). Each slot's stream is a
fixed function of the seed, the call sequence and its position, with the single task's
distribution (rows uniform, noise i.i.d. normal within the slot), but no longer the single
task's draws, and slots share shifted noise; the per-slot loop of draws disappears.

Two kernels run the steps (``kernel=``):

* ``"exact"`` (the default of :class:`BatchedNMF`) repeats the single task's arithmetic entry
  for entry, checks divergence after every step and freezes a diverged slot exactly where the
  single task stops; with ``dtype=torch.float64`` a slot agrees with an :class:`NMFTask` to
  rounding error (``rtol ~ 1e-12``).
* ``"fast"`` computes the same step with about half the tensor operations: gradients are kept
  in raw (unnormalised) units and the normalisations are folded into per-slot learning-rate
  and noise scales, the noise is pre-scaled while it is laid out, V is stored negated so that
  gathering its rows starts the residual in place, and divergence is found
  after the call from the logged losses instead of by a per-step check. The minibatches,
  the noise and every reported statistic are those of the exact kernel (same MDP, same random
  streams); only rounding differs, and a slot that diverges keeps running to the end of the
  call, so its factors are undefined afterwards (it is inactive until it is loaded again).

Padding is exact. Unused rows/columns of V, unused rank columns of W and rank rows of H, and
minibatch positions beyond a slot's ``batch_size`` all hold zeros that the updates keep at
zero: padded minibatch positions read a shared all-zero row of W and V (so their residual,
gradients and updates vanish), the gradient noise is zero on padding, and each slot is
normalised by its own ``1/n`` and ``1/(b n)``. Write-back goes through ``index_copy_`` with
unique targets only: a row drawn several times in one minibatch is written by its last draw
(as numpy's ``W[idx] = new`` does), and the other draws go to private scratch rows. A call
computes only the slots up to the last active one, so trailing empty slots cost nothing.

Padding every slot to a family's largest shape wastes most of the work (an NMF family whose
sizes vary 3x pads the average instance ~4x). :class:`BucketedNMF` therefore keeps one
:class:`BatchedNMF` per *shape class* (e.g. one per minibatch size and range of ``n``, see
:func:`shape_classes`), puts each loaded problem into the cheapest class that contains it
and keeps every class packed (a slot that leaves a class is replaced by the class's last
one), so each class pads only to its own, much smaller, box.

Example:
    >>> import numpy as np
    >>> tasks = [NMFTask.from_matrix(np.ones((8, 6)), 2, batch_size=4),
    ...          NMFTask.from_matrix(np.ones((5, 9)), 3, batch_size=2)]
    >>> batch = BatchedNMF.from_tasks(tasks, [np.random.default_rng(i) for i in range(2)])
    >>> stats = batch.train(50, 0.5 * batch.lr_bound())
    >>> stats.n_done.tolist(), bool((batch.evaluate() < 0.05).all())
    ([50, 50], True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metasched.inner_tasks.base import StepStats, check_split
from metasched.inner_tasks.nmf import NMFFamily, NMFTask

__all__ = [
    "KERNELS",
    "RNG_MODES",
    "BatchedNMF",
    "BatchedStepStats",
    "BucketedNMF",
    "box_cost",
    "shape_classes",
]

#: Step kernels of :class:`BatchedNMF` (see the module docstring).
KERNELS: tuple[str, ...] = ("exact", "fast")
#: Where the minibatches and gradient noise come from (see the module docstring).
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


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def _check_lr(lr: np.ndarray) -> None:
    if not np.all(np.isfinite(lr) & (lr >= 0)):
        bad = np.flatnonzero(~(np.isfinite(lr) & (lr >= 0))).tolist()
        raise ValueError(f"lr must be finite and non-negative; slots {bad} are not")


def _last_draws(read: np.ndarray, n_rows: int) -> np.ndarray:
    """Mark, per step (row of ``read``), the last draw of each distinct index.

    Uses numpy's own fancy-assignment order (the last write wins), the very rule by which
    ``W[idx] = new`` resolves repeated rows in :meth:`NMFTask.train`.
    """
    last = np.empty(read.shape, dtype=bool)
    stamp = np.empty(n_rows, dtype=np.intp)
    pos = np.arange(read.shape[1])
    for t, idx in enumerate(read):  # per step, vectorised over all slots' draws
        stamp[idx] = pos
        np.equal(stamp[idx], pos, out=last[t])
    return last


def _top_eigenvalues(grams: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each PSD matrix in ``grams`` (``inf`` where not finite)."""
    finite = torch.isfinite(grams).flatten(1).all(dim=1)
    safe = torch.where(finite.view(-1, 1, 1), grams, 0.0)
    top = torch.linalg.eigvalsh(safe)[:, -1]
    return torch.where(finite, top, math.inf)


class BatchedNMF:
    """``n_slots`` stochastic projected-SGD NMF problems advanced as one tensor computation.

    Slots are filled with :meth:`load` (or all at once with :meth:`from_tasks`); a slot is
    *active* from its load until it diverges. ``train`` moves active slots only; a slot that
    diverges stops for the rest of the call and stays inactive until it is loaded again.

    The task-specific settings taken from each :class:`NMFTask` are its matrix, rank,
    minibatch size and gradient-noise scale; ``update_cap`` and ``divergence_factor`` are
    shared by all slots and given here (the tasks' own values are ignored).

    Args:
        n_slots: number of problem slots ``B`` (see also :meth:`resize`).
        max_shape: ``(M, N, R, Bmax)``: the largest rows, columns, rank and minibatch size
            any loaded task may have; every slot is zero-padded to it.
        dtype: ``torch.float32`` (default, fastest) or ``torch.float64`` (matches
            :class:`NMFTask` to rounding error).
        divergence_factor: a minibatch loss above this multiple of the slot's initial full
            loss, or a non-finite one, counts as divergence; so does a collapse to zero.
        update_cap: if set, each entry's update is limited to ``[-cap, cap]`` (counted).
        kernel: ``"exact"`` (default) or ``"fast"`` (see the module docstring).
        rng: ``"per_slot"`` (default): every slot draws its minibatches and noise from its own
            generators, as the single task does; ``"shared"``: one draw per call for the
            whole batch from the batch's own generators (seeded by ``rng_seed``), slot ``k``
            taking block ``k`` of it (see the module docstring).
        rng_seed: seed of the shared generators (``rng="shared"`` only).
    """

    def __init__(
        self,
        n_slots: int,
        max_shape: tuple[int, int, int, int],
        *,
        dtype: torch.dtype = torch.float32,
        divergence_factor: float = 1e3,
        update_cap: float | None = None,
        kernel: str = "exact",
        rng: str = "per_slot",
        rng_seed: int = 0,
    ) -> None:
        B = _check_int("n_slots", n_slots)
        if rng not in RNG_MODES:
            raise ValueError(f"rng must be one of {', '.join(RNG_MODES)}, got {rng!r}")
        if len(max_shape) != 4:
            raise ValueError(f"max_shape must be (M, N, R, Bmax), got {max_shape!r}")
        M, N, R, P = (_check_int(f"max_shape[{i}]", v) for i, v in enumerate(max_shape))
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
        if update_cap is not None and not (update_cap > 0 and math.isfinite(update_cap)):
            raise ValueError(f"update_cap must be a positive finite number, got {update_cap!r}")
        self.max_shape = (M, N, R, P)
        self.dtype = dtype
        self.divergence_factor = float(divergence_factor)
        self.update_cap = None if update_cap is None else float(update_cap)
        self.kernel = _check_kernel(kernel)
        # the fast kernel keeps -V (it gathers -V_B straight into the residual buffer)
        self._v_sign = 1.0 if kernel == "exact" else -1.0
        self.rng = rng
        seeds = np.random.SeedSequence(int(rng_seed)).generate_state(2, dtype=np.uint64)
        self._shared_rng = np.random.default_rng(int(seeds[0]))
        self._shared_noise = torch.Generator().manual_seed(int(seeds[1]) >> 1)
        self._loads = 0
        self.n_slots = 0
        self._alloc(B)

    def _alloc(self, B: int) -> None:
        """(Re)allocate storage for ``B`` empty slots, keeping the first ones' state."""
        M, N, R, P = self.max_shape
        dtype = self.dtype
        keep = min(B, self.n_slots)
        old = self.__dict__.copy() if keep else None
        self.n_slots = B
        # W rows of all slots stacked: slot k owns rows [k M, (k+1) M); then one all-zero row
        # that padded minibatch positions read, then B*Bmax private scratch rows that receive
        # the writes which must not land (repeated draws, padding, stopped slots).
        self._zero_row = B * M
        self._scratch = np.arange(B * P, dtype=np.int64).reshape(B, P) + (B * M + 1)
        self._Wf = torch.zeros(B * M + 1 + B * P, R, dtype=dtype)
        self._Vf = torch.zeros(B * M + 1, N, dtype=dtype)
        self._H = torch.zeros(B, R, N, dtype=dtype)
        self._H_next = torch.zeros(B, R, N, dtype=dtype)
        # per-step work buffers
        self._wb = torch.empty(B, P, R, dtype=dtype)
        self._vb = torch.empty(B, P, N, dtype=dtype) if self.kernel == "exact" else None
        self._res = torch.empty(B, P, N, dtype=dtype)
        self._gwT = torch.empty(B, R, P, dtype=dtype)
        self._w_next = torch.empty(B, P, R, dtype=dtype)
        self._dw = torch.empty(B, P, R, dtype=dtype)
        self._gh = torch.empty(B, R, N, dtype=dtype)
        self._noise_w_buf = torch.empty(B, R, P, dtype=torch.float32)
        self._noise_h_buf = torch.empty(B, R, N, dtype=torch.float32)
        self._noise_steps = 0  # persistent noise storage, see _noise_buffers
        self._noise_w = torch.empty(0)
        self._noise_h = torch.empty(0)

        # per-slot settings (unloaded slots get harmless placeholders)
        self._m = np.ones(B, dtype=np.int64)
        self._n = np.ones(B, dtype=np.int64)
        self._r = np.ones(B, dtype=np.int64)
        self._b = np.ones(B, dtype=np.int64)
        self._sigma = np.zeros(B)
        self._ref_loss = np.ones(B)
        self._inv_n = torch.ones(B, dtype=dtype)
        self._inv_bn = torch.ones(B, dtype=dtype)
        self._sw = torch.zeros(B, dtype=torch.float64)
        self._sh = torch.zeros(B, dtype=torch.float64)
        self._active = np.zeros(B, dtype=bool)
        self._load_id = np.zeros(B, dtype=np.int64)  # unique id of each slot's last load
        self._sources: list[np.ndarray | None] = [None] * B
        self._rngs: list[np.random.Generator] = [np.random.default_rng(0) for _ in range(B)]
        self._noise_gens = [torch.Generator().manual_seed(0) for _ in range(B)]
        if old is None:
            return
        # same max_shape: slot k's rows keep their offsets k M
        self._Wf[: keep * M] = old["_Wf"][: keep * M]
        self._Vf[: keep * M] = old["_Vf"][: keep * M]
        self._H[:keep] = old["_H"][:keep]
        for key in self._SETTINGS:
            getattr(self, key)[:keep] = old[key][:keep]
        for key in ("_sources", "_rngs", "_noise_gens"):
            getattr(self, key)[:keep] = old[key][:keep]

    _SETTINGS = (
        "_m",
        "_n",
        "_r",
        "_b",
        "_sigma",
        "_ref_loss",
        "_inv_n",
        "_inv_bn",
        "_sw",
        "_sh",
        "_active",
        "_load_id",
    )

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_tasks(
        cls,
        tasks: Sequence[NMFTask],
        generators: Sequence[np.random.Generator],
        *,
        max_shape: tuple[int, int, int, int] | None = None,
        **kwargs: Any,
    ) -> BatchedNMF:
        """Build a batch with one slot per task, each initialised like ``task.reset(gen)``.

        Args:
            tasks: the tasks, one per slot.
            generators: one generator per task (consumed exactly as ``reset`` would).
            max_shape: padding shape; defaults to the tasks' largest ``(m, n, rank, b)``.
            **kwargs: forwarded to the constructor (``dtype``, ``update_cap``, ...).
        """
        if len(tasks) != len(generators):
            raise ValueError(f"got {len(tasks)} tasks but {len(generators)} generators")
        if not tasks:
            raise ValueError("need at least one task")
        if max_shape is None:
            max_shape = (
                max(t.m for t in tasks),
                max(t.n for t in tasks),
                max(t.rank for t in tasks),
                max(t.batch_size for t in tasks),
            )
        batch = cls(len(tasks), max_shape, **kwargs)
        for slot, (task, gen) in enumerate(zip(tasks, generators, strict=True)):
            batch.load(slot, task, gen)
        return batch

    def _check_slot(self, slot: int) -> int:
        if not isinstance(slot, int | np.integer) or not 0 <= slot < self.n_slots:
            raise IndexError(f"slot must be in [0, {self.n_slots}), got {slot!r}")
        return int(slot)

    @property
    def _W(self) -> torch.Tensor:
        M, _, R, _ = self.max_shape
        return self._Wf[: self.n_slots * M].view(self.n_slots, M, R)

    @property
    def _V(self) -> torch.Tensor:
        M, N, _, _ = self.max_shape
        return self._Vf[: self.n_slots * M].view(self.n_slots, M, N)

    def fits(self, task: NMFTask) -> bool:
        """Whether ``task``'s ``(m, n, rank, batch_size)`` fits into ``max_shape``."""
        shape = (task.m, task.n, task.rank, task.batch_size)
        return all(v <= cap for v, cap in zip(shape, self.max_shape, strict=True))

    def load(self, slot: int, task: NMFTask, generator: np.random.Generator) -> None:
        """Put ``task``'s problem into ``slot`` and initialise it like ``task.reset(generator)``.

        The generator is consumed exactly as :meth:`NMFTask.reset` consumes it (W, H, then
        the minibatch and noise seeds), so the slot and a task reset from an equal generator
        start identical. The task object itself is not modified.

        Raises:
            ValueError: if ``task`` is not an :class:`NMFTask` or exceeds ``max_shape``.
        """
        slot = self._check_slot(slot)
        if not isinstance(task, NMFTask):
            raise ValueError(f"task must be an NMFTask, got {type(task).__name__}")
        m, n, r, b = task.m, task.n, task.rank, task.batch_size
        if not self.fits(task):
            raise ValueError(
                f"task shape (m, n, rank, batch_size) = {(m, n, r, b)} exceeds "
                f"max_shape {self.max_shape}"
            )
        V = task.V
        # -- the draws of NMFTask.reset, in its order --
        scale = 2.0 * math.sqrt(max(float(V.mean()), 1e-12) / r)
        W = generator.random((m, r)) * scale
        H = generator.random((r, n)) * scale
        self._rngs[slot] = np.random.default_rng(generator.integers(2**63))
        self._noise_gens[slot] = torch.Generator().manual_seed(int(generator.integers(2**63)))
        with np.errstate(over="ignore", invalid="ignore"):
            res = W @ H - V
            ref = max(0.5 * float(np.vdot(res, res)) / (m * n), 1e-300)
        self._put(slot, V, W, H)
        self._clear_noise(slot)
        sigma = float(task.grad_noise)
        self._m[slot], self._n[slot], self._r[slot], self._b[slot] = m, n, r, b
        self._sigma[slot] = sigma
        self._ref_loss[slot] = ref
        self._inv_n[slot] = 1.0 / n
        self._inv_bn[slot] = 1.0 / (b * n)
        self._sw[slot] = sigma / (n * math.sqrt(r)) if sigma > 0 else 0.0
        self._sh[slot] = sigma / (b * n * math.sqrt(r)) if sigma > 0 else 0.0
        self._active[slot] = True
        self._loads += 1
        self._load_id[slot] = self._loads
        self._sources[slot] = V

    def _put(self, slot: int, V: np.ndarray, W: np.ndarray, H: np.ndarray) -> None:
        m, n = V.shape
        r = W.shape[1]
        self._V[slot].zero_()
        self._V[slot, :m, :n] = torch.from_numpy(V if self._v_sign > 0 else -V)
        self._W[slot].zero_()
        self._W[slot, :m, :r] = torch.from_numpy(W)
        self._H[slot].zero_()
        self._H[slot, :r, :n] = torch.from_numpy(H)

    def deactivate(self, slot: int) -> None:
        """Mark ``slot`` inactive (``train`` leaves it alone until it is loaded again)."""
        self._active[self._check_slot(slot)] = False

    # -- slot management -------------------------------------------------------------------
    def clear(self, slot: int) -> None:
        """Empty ``slot``: zero its factors and matrix, forget its settings; inactive."""
        slot = self._check_slot(slot)
        self._W[slot].zero_()
        self._V[slot].zero_()
        self._H[slot].zero_()
        self._clear_noise(slot)
        self._m[slot] = self._n[slot] = self._r[slot] = self._b[slot] = 1
        self._sigma[slot] = 0.0
        self._ref_loss[slot] = 1.0
        self._inv_n[slot] = self._inv_bn[slot] = 1.0
        self._sw[slot] = self._sh[slot] = 0.0
        self._active[slot] = False
        self._load_id[slot] = 0
        self._sources[slot] = None
        self._rngs[slot] = np.random.default_rng(0)
        self._noise_gens[slot] = torch.Generator().manual_seed(0)

    def move(self, src: int, dst: int) -> None:
        """Move slot ``src``'s problem and full state (RNGs included) to ``dst``; empty ``src``.

        Whatever ``dst`` held is discarded. The moved problem continues exactly as it would
        have in ``src``.
        """
        src, dst = self._check_slot(src), self._check_slot(dst)
        if src == dst:
            return
        self._W[dst] = self._W[src]
        self._V[dst] = self._V[src]
        self._H[dst] = self._H[src]
        for key in self._SETTINGS:
            arr = getattr(self, key)
            arr[dst] = arr[src]
        for key in ("_sources", "_rngs", "_noise_gens"):
            lst = getattr(self, key)
            lst[dst] = lst[src]
        self._clear_noise(dst)
        self.clear(src)

    def resize(self, n_slots: int) -> None:
        """Change the number of slots; slots ``< min(old, new)`` keep their full state.

        Invalidates snapshots taken before (``restore`` refuses them).
        """
        self._alloc(_check_int("n_slots", n_slots))

    # -- state -----------------------------------------------------------------------------
    @property
    def active(self) -> np.ndarray:
        """``(B,)`` bool: slots that are loaded and have not diverged since (a copy)."""
        return self._active.copy()

    @property
    def shapes(self) -> np.ndarray:
        """``(B, 4)`` int: each slot's ``(m, n, rank, batch_size)`` (ones for empty slots)."""
        return np.stack([self._m, self._n, self._r, self._b], axis=1)

    def factors(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of slot ``slot``'s unpadded ``(W, H)`` as float64 numpy arrays."""
        slot = self._check_slot(slot)
        m, n, r = int(self._m[slot]), int(self._n[slot]), int(self._r[slot])
        W = self._W[slot, :m, :r].to(torch.float64).numpy().copy()
        H = self._H[slot, :r, :n].to(torch.float64).numpy().copy()
        return W, H

    def padded_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of all slots' zero-padded ``W`` ``(B, M, R)`` and ``H`` ``(B, R, N)``."""
        return self._W.numpy().copy(), self._H.numpy().copy()

    def slot_snapshot(self, slot: int) -> dict[str, Any]:
        """Return slot ``slot``'s state in :meth:`NMFTask.snapshot` format.

        ``task.restore(batch.slot_snapshot(k))`` puts a task holding the same matrix into the
        slot's exact state (factors, minibatch and noise RNGs, divergence reference).
        """
        slot = self._check_slot(slot)
        W, H = self.factors(slot)
        return {
            "W": W,
            "H": H,
            "rng": self._rngs[slot].bit_generator.state,
            "noise_rng": self._noise_gens[slot].get_state(),
            "ref_loss": float(self._ref_loss[slot]),
        }

    def snapshot(self) -> dict[str, Any]:
        """Copy the full state of all slots (factors, RNGs, settings, activity).

        The matrices are held by reference to the loaded tasks' arrays (not copied); a slot
        that is loaded with another task later gets its matrix back on :meth:`restore`.
        """
        return {
            "W": self._W.clone(),
            "H": self._H.clone(),
            "rngs": [g.bit_generator.state for g in self._rngs],
            "noise_rngs": [g.get_state() for g in self._noise_gens],
            "settings": {
                key: getattr(self, key).clone()
                if isinstance(getattr(self, key), torch.Tensor)
                else getattr(self, key).copy()
                for key in self._SETTINGS
            },
            "sources": list(self._sources),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Return to a state captured by :meth:`snapshot` (the snapshot stays reusable)."""
        if snap["W"].shape != self._W.shape or snap["W"].dtype != self.dtype:
            raise ValueError("snapshot was taken from a batch of a different shape or dtype")
        stale = np.flatnonzero(snap["settings"]["_load_id"] != self._load_id)
        for slot in stale:
            self._clear_noise(slot)
            src = snap["sources"][slot]
            self._V[slot].zero_()
            if src is not None:
                self._V[slot, : src.shape[0], : src.shape[1]] = torch.from_numpy(
                    src if self._v_sign > 0 else -src
                )
        self._sources = list(snap["sources"])
        self._W.copy_(snap["W"])
        self._H.copy_(snap["H"])
        for key, value in snap["settings"].items():
            setattr(self, key, value.clone() if isinstance(value, torch.Tensor) else value.copy())
        self._rngs = [np.random.default_rng() for _ in range(self.n_slots)]
        for gen, state in zip(self._rngs, snap["rngs"], strict=True):
            gen.bit_generator.state = state
        self._noise_gens = [torch.Generator() for _ in range(self.n_slots)]
        for gen, state in zip(self._noise_gens, snap["noise_rngs"], strict=True):
            gen.set_state(state)

    # -- training --------------------------------------------------------------------------
    def _noise_buffers(self, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return zero-padded noise storage for ``n_steps`` steps.

        The storage persists between calls (and grows to the longest call seen), so padding
        is zeroed once per allocation and per :meth:`load`, not on every call: each noisy
        slot overwrites exactly its own unpadded block every call. The exact kernel keeps
        the noise in float32 (as the single task does); the fast one in the compute dtype.
        """
        if n_steps > self._noise_steps:
            B = self.n_slots
            _, N, R, P = self.max_shape
            dt = torch.float32 if self.kernel == "exact" else self.dtype
            self._noise_w = torch.zeros(n_steps, B, R, P, dtype=dt)
            self._noise_h = torch.zeros(n_steps, B, R, N, dtype=dt)
            self._noise_steps = n_steps
        return self._noise_w[:n_steps], self._noise_h[:n_steps]

    def _clear_noise(self, slot: int) -> None:
        if self._noise_steps:
            self._noise_w[:, slot].zero_()
            self._noise_h[:, slot].zero_()

    def _draw(
        self, n_steps: int, slots: np.ndarray, hi: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Draw one call's minibatch rows and gradient noise for ``slots`` (the per-call loop).

        Every slot draws exactly what :meth:`NMFTask.train` draws, from its own generators.

        Returns:
            ``(read, write, noise_w, noise_h)``: flat row indices ``(T, hi*Bmax)`` to gather
            and to write back, and the zero-padded noise of the W block (transposed,
            ``(T, hi, R, Bmax)``) and of H (``(T, hi, R, N)``), ``None`` when no slot is
            noisy. The fast kernel gets the noise pre-multiplied by ``sigma / sqrt(r)``.
        """
        if self.rng == "shared":
            return self._draw_shared(n_steps, slots, hi)
        M, N, R, P = self.max_shape
        T = n_steps
        read = np.full((T, hi, P), self._zero_row, dtype=np.int64)
        noise_w = noise_h = z_all = None
        sigma = self._sigma
        if any(sigma[k] > 0 for k in slots):
            noise_w, noise_h = self._noise_buffers(T)
            z_all = torch.empty(T * R * (P + N))  # one slot's draw at a time
        fast = self.kernel == "fast"
        ms, ns, rs, bs = (x.tolist() for x in (self._m, self._n, self._r, self._b))
        for k in slots.tolist():
            m, n, r, b = ms[k], ns[k], rs[k], bs[k]
            u = self._rngs[k].random((T, b))
            u *= m
            block = read[:, k, :b]
            block[...] = u  # truncates, as the single task's astype(np.intp) does
            block += k * M
            if sigma[k] > 0:
                size = T * (b * r + r * n)
                z = torch.randn(size, generator=self._noise_gens[k], out=z_all[:size])
                zw = z[: T * b * r].view(T, b, r).transpose(1, 2)
                zh = z[T * b * r :].view(T, r, n)
                if fast:
                    scale = float(sigma[k]) / math.sqrt(r)
                    torch.mul(zw, scale, out=noise_w[:, k, :r, :b])
                    torch.mul(zh, scale, out=noise_h[:, k, :r, :n])
                else:
                    noise_w[:, k, :r, :b] = zw
                    noise_h[:, k, :r, :n] = zh
        read = read.reshape(T, hi * P)
        keep = _last_draws(read, self._zero_row + 1) & (read != self._zero_row)
        write = np.where(keep, read, self._scratch[:hi].reshape(1, -1))
        if noise_w is not None:
            noise_w, noise_h = noise_w[:, :hi], noise_h[:, :hi]
        return torch.from_numpy(read), torch.from_numpy(write), noise_w, noise_h

    def _draw_shared(
        self, n_steps: int, slots: np.ndarray, hi: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`_draw` of ``rng="shared"``: one draw for the whole batch, block k per slot.

        ``(T, B, Bmax)`` uniforms give the rows (slot ``k`` row ``floor(u m_k)`` of its
        first ``b_k`` positions, as the single task turns its uniforms into rows); the noise
        comes from one pool of ``T + B`` normal draws of one step's size, slot ``k`` reading
        a cyclic shift of it (a random offset per call) times a random sign, zeroed on
        padding and on noiseless slots. Slot ``k``'s stream is thus a fixed function of the
        batch seed, the call sequence, ``B`` and its position ``k``, whatever else is loaded;
        within a slot, noise entries are i.i.d. ``N(0, 1)`` as in the single task, while
        different slots see shifted copies of the same draws.
        """
        M, N, R, P = self.max_shape
        T = n_steps
        live = np.zeros(hi, dtype=bool)
        live[slots] = True
        ms, bs, rs, ns = self._m[:hi], self._b[:hi], self._r[:hi], self._n[:hi]
        # drawn for every slot (not only the first hi), so a slot's stream does not depend
        # on which other slots are loaded
        u = self._shared_rng.random((T, self.n_slots, P))[:, :hi]
        u *= ms[None, :, None]
        rows = u.astype(np.int64)  # truncates, as the single task's astype(np.intp) does
        rows += (np.arange(hi, dtype=np.int64) * M)[None, :, None]
        valid = (np.arange(P)[None, :] < bs[:, None]) & live[:, None]
        read = np.where(valid[None], rows, self._zero_row).reshape(T, hi * P)
        keep = _last_draws(read, self._zero_row + 1) & (read != self._zero_row)
        write = np.where(keep, read, self._scratch[:hi].reshape(1, -1))
        noise_w = noise_h = None
        sigma = self._sigma[:hi]
        noisy = live & (sigma > 0)
        if noisy.any():
            # one pool of L = T + B standard-normal "rows" (one step's noise each) for the
            # batch; slot k reads rows (t + offset_k) mod L with a random sign: its own steps
            # get distinct rows (i.i.d. N(0, 1), as the single task's), at 1/(B+1)-ish of the
            # draws of per-slot streams
            L = T + self.n_slots
            pool = torch.randn(L, R, P + N, generator=self._shared_noise)
            offset = self._shared_rng.integers(L, size=self.n_slots)[:hi]
            sign = self._shared_rng.integers(2, size=self.n_slots)[:hi] * 2.0 - 1.0
            which = (np.arange(T)[:, None] + offset[None, :]) % L
            z = pool.index_select(0, torch.from_numpy(which.reshape(-1)))
            z = z.view(T, hi, R, P + N)  # one contiguous copy of whole rows
            fast = self.kernel == "fast"
            scale = np.where(noisy, sigma / np.sqrt(rs), 0.0) if fast else noisy * 1.0
            scale = scale * sign
            r_ok = np.arange(R)[None, :] < rs[:, None]
            cols = np.arange(P + N)[None, None, :]
            ok = np.where(cols < P, cols < bs[:, None, None], cols - P < ns[:, None, None])
            mask = (r_ok[:, :, None] & ok) * scale[:, None, None]
            z.mul_(torch.from_numpy(mask).to(z.dtype))  # padding and noiseless slots: zero
            if fast and self.dtype != z.dtype:
                z = z.to(self.dtype)
            noise_w, noise_h = z[..., :P], z[..., P:]
        return torch.from_numpy(read), torch.from_numpy(write), noise_w, noise_h

    def train(
        self, n_steps: int, lr: np.ndarray | float, *, track_updates: bool = True
    ) -> BatchedStepStats:
        """Run ``n_steps`` projected SGD steps on every active slot at its own rate.

        Args:
            n_steps: steps per slot (a slot stops early at its first divergence).
            lr: ``(B,)`` learning rates (or one scalar for all); entries of inactive slots
                are ignored. A slot at ``lr = 0`` still draws its minibatches and reports
                losses, exactly like ``NMFTask.train(n_steps, 0.0)``.
            track_updates: measure the update norms; the fast kernel skips that work (and
                reports ``update_norm`` as NaN) when False. The exact kernel always does.

        Returns:
            The per-slot statistics of the call.
        """
        T = _check_int("n_steps", n_steps, low=0)
        B = self.n_slots
        start = self._active.copy()
        lr = np.where(start, np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,)), 0.0)
        _check_lr(lr)
        slots = np.flatnonzero(start)
        if T == 0 or slots.size == 0:
            return BatchedStepStats.empty(B, T)
        hi = int(slots[-1]) + 1  # slots past the last active one are left out entirely
        read, write, noise_w, noise_h = self._draw(T, slots, hi)
        args = (T, hi, lr[:hi], start[:hi], read, write, noise_w, noise_h)
        with torch.no_grad():
            if self.kernel == "exact":
                out = self._run(*args)
            else:
                out = self._run_fast(*args, track_updates=track_updates)
        loss_log, done, g2, u2, capped, running = out
        n_done = np.zeros(B, dtype=np.int64)
        n_done[:hi] = done
        losses = np.full((B, T), np.nan)
        losses[:hi] = loss_log.T
        losses[np.arange(T)[None, :] >= n_done[:, None]] = np.nan
        live = np.zeros(B, dtype=bool)
        live[:hi] = running
        diverged = start & ~live
        # collapse to the trivial factorisation counts as divergence (relative error 1)
        ran = live & (n_done > 0)
        if ran.any():
            w_any = self._W[:hi].flatten(1).any(dim=1).numpy()
            h_any = self._H[:hi].flatten(1).any(dim=1).numpy()
            diverged[:hi] |= ran[:hi] & ~(w_any & h_any)
        self._active &= ~diverged
        steps = np.maximum(n_done, 1)
        pad = np.zeros(B - hi)
        return BatchedStepStats(
            losses=losses,
            grad_norm=np.sqrt(np.concatenate([g2, pad]) / steps),
            update_norm=np.sqrt(np.concatenate([u2, pad]) / steps),
            diverged=diverged,
            n_done=n_done,
            capped=np.concatenate([capped, pad]).astype(np.int64),
        )

    def _run(
        self,
        T: int,
        B: int,
        lr: np.ndarray,
        start: np.ndarray,
        read: torch.Tensor,
        write: torch.Tensor,
        noise_w: torch.Tensor | None,
        noise_h: torch.Tensor | None,
    ) -> tuple[np.ndarray, ...]:
        """Run the exact kernel: every tensor op acts on the first ``B`` slots at once.

        The W-block gradient is kept transposed, ``(B, R, Bmax)``, because ``H @ res^T`` is
        the faster batched product; the arithmetic is the single task's, entry for entry.
        """
        _, _, R, P = self.max_shape
        dt = self.dtype
        exact = dt == torch.float64
        cap = self.update_cap
        Wf, Vf = self._Wf, self._Vf
        H0 = self._H[:B]
        H, H_next = H0, self._H_next[:B]
        wb, vb, res = self._wb[:B], self._vb[:B], self._res[:B]
        gwT, gh, w_next, dw = self._gwT[:B], self._gh[:B], self._w_next[:B], self._dw[:B]
        wb2, vb2, w_next2 = wb.view(B * P, R), vb.view(B * P, -1), w_next.view(B * P, R)
        wbT, gw = wb.transpose(1, 2), gwT.transpose(1, 2)
        flat = (wb, res, gwT, gh, dw, H, H_next)
        wb_f, res_f, gwT_f, gh_f, dw_f, H_f, H_next_f = (x.view(B, -1) for x in flat)
        inv_n = self._inv_n[:B].view(B, 1, 1)
        inv_bn = self._inv_bn[:B].view(B, 1, 1)
        half_inv_bn = 0.5 * self._inv_bn[:B]
        neg_lr = torch.from_numpy(-lr).to(dt).view(B, 1, 1)
        limit = torch.from_numpy(self.divergence_factor * self._ref_loss[:B])
        # exact mode: scale in float64, then round to float32 as numpy's float32 * float does
        sw = self._sw[:B] if exact else self._sw[:B].to(dt)
        sh = self._sh[:B] if exact else self._sh[:B].to(dt)
        nbw, nbh = self._noise_w_buf[:B], self._noise_h_buf[:B]
        scratch = torch.from_numpy(self._scratch[:B].reshape(-1))

        def sq_norm(x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.vector_norm(x, dim=1).square_()

        running = torch.from_numpy(start.copy())
        n_done = torch.zeros(B, dtype=torch.int64)
        loss_log = torch.zeros(T, B, dtype=torch.float64)
        g2_sum = torch.zeros(B, dtype=torch.float64)
        u2_sum = torch.zeros(B, dtype=torch.float64)
        capped = torch.zeros(B, dtype=torch.int64)
        masked = bool(start.sum() < B)

        for t in range(T):
            idx = read[t]
            torch.index_select(Wf, 0, idx, out=wb2)
            torch.index_select(Vf, 0, idx, out=vb2)
            torch.bmm(wb, H, out=res).sub_(vb)  # W_B H - V_B
            loss = sq_norm(res_f).mul_(half_inv_bn)
            loss_log[t] = loss
            n_done += running
            ok = running & (loss <= limit)  # also rejects NaN
            if not torch.equal(ok, running):
                running = ok
                n_live = int(running.sum())
                if n_live == 0:
                    break
                masked = n_live < B
            torch.bmm(H, res.transpose(1, 2), out=gwT).mul_(inv_n)  # (res H^T / n)^T
            torch.bmm(wbT, res, out=gh).mul_(inv_bn)
            if noise_w is not None:
                h_scale = torch.linalg.vector_norm(H_f, dim=1).mul_(sw)
                w_scale = torch.linalg.vector_norm(wb_f, dim=1).mul_(sh)
                if exact:
                    h_scale = h_scale.to(torch.float32)
                    w_scale = w_scale.to(torch.float32)
                    gwT.add_(torch.mul(noise_w[t], h_scale.view(B, 1, 1), out=nbw))
                    gh.add_(torch.mul(noise_h[t], w_scale.view(B, 1, 1), out=nbh))
                else:
                    gwT.addcmul_(noise_w[t], h_scale.view(B, 1, 1))
                    gh.addcmul_(noise_h[t], w_scale.view(B, 1, 1))
            g2 = sq_norm(gwT_f).add_(sq_norm(gh_f))
            gwT.mul_(neg_lr)
            gh.mul_(neg_lr)
            if cap is not None:
                over = (gwT_f.abs() > cap).sum(1) + (gh_f.abs() > cap).sum(1)
                capped += torch.where(running, over, 0)
                gwT.clamp_(-cap, cap)
                gh.clamp_(-cap, cap)
            torch.add(wb, gw, out=w_next).clamp_min_(0.0)
            torch.add(H, gh, out=H_next).clamp_min_(0.0)
            torch.sub(w_next, wb, out=dw)
            torch.sub(H_next_f, H_f, out=gh_f)
            u2 = sq_norm(dw_f).add_(sq_norm(gh_f))
            if masked:
                g2_sum += torch.where(running, g2, 0.0)
                u2_sum += torch.where(running, u2, 0.0)
                live_rows = running.repeat_interleave(P)
                Wf.index_copy_(0, torch.where(live_rows, write[t], scratch), w_next2)
                frozen = ~running
                H_next[frozen] = H[frozen]
            else:
                g2_sum += g2
                u2_sum += u2
                Wf.index_copy_(0, write[t], w_next2)
            H, H_next = H_next, H
            H_f, H_next_f = H_next_f, H_f
        if H.data_ptr() != H0.data_ptr():
            H0.copy_(H)
        return (
            loss_log.numpy(),
            n_done.numpy(),
            g2_sum.numpy(),
            u2_sum.numpy(),
            capped.numpy(),
            running.numpy(),
        )

    def _run_fast(
        self,
        T: int,
        B: int,
        lr: np.ndarray,
        start: np.ndarray,
        read: torch.Tensor,
        write: torch.Tensor,
        noise_w: torch.Tensor | None,
        noise_h: torch.Tensor | None,
        track_updates: bool = True,
    ) -> tuple[np.ndarray, ...]:
        """Run the fast kernel: the exact step in fewer ops, divergence found afterwards.

        Gradients stay in raw units, ``res H^T`` and ``W_B^T res``; the ``1/n`` and
        ``1/(b n)`` normalisations ride on the per-slot rates ``-lr/n`` and ``-lr/(b n)``
        (one ``addcmul`` per block) and on the logged norms, and the noise arrives
        pre-scaled by ``sigma/sqrt(r)``, so that ``raw + noise * ||H||`` (and ``* ||W_B||``)
        is the single task's noisy gradient times ``n`` (times ``b n``). Every step logs the
        norms of the residual, of both gradient blocks and (if ``track_updates``) of both
        update blocks; the losses, the first diverging step and the statistics up to it
        come from that log. Per-slot results do not depend on the other slots.
        """
        _, _, R, P = self.max_shape
        dt = self.dtype
        cap = self.update_cap
        Wf, Vf = self._Wf, self._Vf
        H0 = self._H[:B]
        H, H_next = H0, self._H_next[:B]
        wb, res = self._wb[:B], self._res[:B]
        gwT, gh, w_next = self._gwT[:B], self._gh[:B], self._w_next[:B]
        wb2, res2, w_next2 = wb.view(B * P, R), res.view(B * P, -1), w_next.view(B * P, R)
        wbT, resT, gw = wb.transpose(1, 2), res.transpose(1, 2), gwT.transpose(1, 2)
        wb_f, res_f, gwT_f, gh_f = (x.view(B, -1) for x in (wb, res, gwT, gh))
        H_f, H_next_f = H.view(B, -1), H_next.view(B, -1)
        n = self._n[:B].astype(np.float64)
        bn = n * self._b[:B]
        neg_lr_n = torch.from_numpy(-lr / n).to(dt).view(B, 1, 1)
        neg_lr_bn = torch.from_numpy(-lr / bn).to(dt).view(B, 1, 1)
        h_norm = torch.empty(B, dtype=dt).view(B, 1, 1)
        w_norm = torch.empty(B, dtype=dt).view(B, 1, 1)
        h_norm_f, w_norm_f = h_norm.view(B), w_norm.view(B)
        log = torch.full((T, 5, B), math.nan, dtype=dt)
        over = torch.zeros(T, B, dtype=torch.int64) if cap is not None else None
        norm = torch.linalg.vector_norm
        # per-step views made in one call each (cheaper than indexing inside the loop)
        rows, writes, outs = read.unbind(0), write.unbind(0), log.view(T * 5, B).unbind(0)
        if noise_w is not None:
            nws, nhs = noise_w.unbind(0), noise_h.unbind(0)

        for t in range(T):
            idx = rows[t]
            lt = outs[5 * t : 5 * t + 5]
            torch.index_select(Wf, 0, idx, out=wb2)
            torch.index_select(Vf, 0, idx, out=res2)  # -V_B (the storage is negated)
            res.baddbmm_(wb, H)  # W_B H - V_B
            norm(res_f, dim=1, out=lt[0])
            torch.bmm(H, resT, out=gwT)  # n * (gradient of W_B)^T
            torch.bmm(wbT, res, out=gh)  # b n * (gradient of H)
            if noise_w is not None:
                norm(H_f, dim=1, out=h_norm_f)
                norm(wb_f, dim=1, out=w_norm_f)
                gwT.addcmul_(nws[t], h_norm)
                gh.addcmul_(nhs[t], w_norm)
            norm(gwT_f, dim=1, out=lt[1])
            norm(gh_f, dim=1, out=lt[2])
            if over is not None:
                gwT.mul_(neg_lr_n)
                gh.mul_(neg_lr_bn)
                torch.add((gwT_f.abs() > cap).sum(1), (gh_f.abs() > cap).sum(1), out=over[t])
                gwT.clamp_(-cap, cap)
                gh.clamp_(-cap, cap)
            if track_updates:
                if over is None:
                    torch.addcmul(wb, gw, neg_lr_n, out=w_next).clamp_min_(0.0)
                    torch.addcmul(H, gh, neg_lr_bn, out=H_next).clamp_min_(0.0)
                else:
                    torch.add(wb, gw, out=w_next).clamp_min_(0.0)
                    torch.add(H, gh, out=H_next).clamp_min_(0.0)
                norm(wb_f.sub_(w_next.view(B, -1)), dim=1, out=lt[3])  # W_B is spent
                Wf.index_copy_(0, writes[t], w_next2)
                norm(H_f.sub_(H_next_f), dim=1, out=lt[4])  # so is the old H
                H, H_next = H_next, H
                H_f, H_next_f = H_next_f, H_f
            else:  # update in place
                if over is None:
                    wb.addcmul_(gw, neg_lr_n).clamp_min_(0.0)
                    H.addcmul_(gh, neg_lr_bn).clamp_min_(0.0)
                else:
                    wb.add_(gw).clamp_min_(0.0)
                    H.add_(gh).clamp_min_(0.0)
                Wf.index_copy_(0, writes[t], wb2)
        if H.data_ptr() != H0.data_ptr():
            H0.copy_(H)

        # per-slot rows, so that every sum runs over one contiguous row (the same order
        # whatever the number of slots)
        logs = log.to(torch.float64).numpy().transpose(1, 2, 0).copy()  # (5, B, T)
        loss = 0.5 * np.square(logs[0]) / bn[:, None]
        limit = self.divergence_factor * self._ref_loss[:B]
        with np.errstate(invalid="ignore"):
            bad = ~(loss <= limit[:, None]) & start[:, None]  # also catches NaN
        first = np.where(bad.any(axis=1), bad.argmax(axis=1), T)  # the diverging step
        n_done = np.where(start, np.minimum(first + 1, T), 0)
        stepped = np.arange(T)[None, :] < np.where(start, first, 0)[:, None]  # updates made
        with np.errstate(over="ignore", invalid="ignore"):
            g2 = np.square(logs[1] / n[:, None]) + np.square(logs[2] / bn[:, None])
            u2 = np.square(logs[3]) + np.square(logs[4])
        capped = np.zeros(B, dtype=np.int64)
        if over is not None:
            capped = np.where(stepped, over.numpy().T, 0).sum(axis=1)
        u2_sum = np.where(stepped, u2, 0.0).sum(axis=1) if track_updates else np.full(B, np.nan)
        return (
            loss.T,
            n_done,
            np.where(stepped, g2, 0.0).sum(axis=1),
            u2_sum,
            capped,
            start & (first == T),
        )

    # -- evaluation ------------------------------------------------------------------------
    def _select(self, slots: Sequence[int] | np.ndarray | None) -> np.ndarray | slice:
        if slots is None:
            return slice(None)
        return np.asarray(slots, dtype=np.int64).reshape(-1)

    def evaluate(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Full-data losses ``||V - WH||_F^2 / (2 m n)`` of all slots (or of ``slots``)."""
        sel = self._select(slots)
        with torch.no_grad():
            if isinstance(sel, slice):
                V, W, H = self._V, self._W, self._H
            else:
                idx = torch.from_numpy(sel)
                V, W, H = self._V[idx], self._W[idx], self._H[idx]
            res = torch.baddbmm(V, W, H, beta=-self._v_sign)  # W H - V
            ss = torch.linalg.vector_norm(res.flatten(1), dim=1, dtype=torch.float64).square_()
        return 0.5 * ss.numpy() / (self._m[sel] * self._n[sel])

    def grams(self, slots: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """``(2 k, R, R)`` float64 Gram matrices ``H H^T`` (first ``k``) and ``W^T W``.

        The exact kernel forms them in float64 (as the single task does); the fast one in
        the compute dtype, converting only the small ``R x R`` results.
        """
        sel = self._select(slots)
        with torch.no_grad():
            if isinstance(sel, slice):
                W, H = self._W, self._H
            else:
                idx = torch.from_numpy(sel)
                W, H = self._W[idx], self._H[idx]
            if self.kernel == "exact" and self.dtype != torch.float64:
                W, H = W.to(torch.float64), H.to(torch.float64)
            grams = torch.cat([H @ H.transpose(1, 2), W.transpose(1, 2) @ W])
            return grams.to(torch.float64)

    def lipschitz(
        self, slots: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the block Lipschitz constants ``(L_W, L_H)``, each ``(B,)`` (or per slot).

        ``L_W = lambda_max(H H^T) / n`` and ``L_H = lambda_max(W^T W) / (m n)``; padding only
        adds zero rows/columns to these Gram matrices, which leaves ``lambda_max`` unchanged.
        Slots whose Gram matrices are not finite get ``inf``.
        """
        sel = self._select(slots)
        with torch.no_grad():
            top = _top_eigenvalues(self.grams(slots)).numpy()
        k = top.size // 2
        n = self._n[sel]
        return top[:k] / n, top[k:] / (self._m[sel] * n)

    def lr_bound(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` deterministic-safe rates ``1/max(L_W, L_H)`` (0 where not finite)."""
        return _bound_from_lipschitz(*self.lipschitz(slots))

    def default_lr(self) -> np.ndarray:
        """``(B,)`` half the deterministic-safe rates at the current points."""
        return 0.5 * self.lr_bound()


def _bound_from_lipschitz(lw: np.ndarray, lh: np.ndarray) -> np.ndarray:
    big = np.maximum(lw, lh)
    with np.errstate(divide="ignore"):
        bound = np.where(big > 0, 1.0 / big, math.inf)
    return np.where(np.isfinite(big), bound, 0.0)


# -- shape classes ---------------------------------------------------------------------------
def shape_classes(
    family: NMFFamily, split: str, *, n_bins: int = 2, rank_bins: int = 1
) -> list[tuple[int, int, int, int]]:
    """Return padding boxes ``(M, N, R, Bmax)`` covering all instances of ``split``.

    One class per minibatch size of the split times ``n_bins`` equal ranges of ``n`` times
    ``rank_bins`` equal ranges of the rank; ``M`` is always the split's largest ``m`` (rows
    only cost memory, not work). Boxes are sorted by the work of one step (cheapest first).
    """
    check_split(split)
    _check_int("n_bins", n_bins)
    _check_int("rank_bins", rank_bins)
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
        dtype, divergence_factor, update_cap, kernel: as for :class:`BatchedNMF`
            (``kernel`` defaults to ``"fast"`` here).
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
        kernel: str = "fast",
        capacity: int | None = None,
        rng: str = "per_slot",
        rng_seed: int = 0,
    ) -> None:
        B = _check_int("n_slots", n_slots)
        boxes = [tuple(int(v) for v in c) for c in classes]
        if not boxes:
            raise ValueError("need at least one shape class")
        _check_kernel(kernel)
        if capacity is None:
            capacity = max(2, math.ceil(1.5 * B / len(boxes)))
        cap0 = _check_int("capacity", capacity)
        self.n_slots = B
        self.classes = sorted(boxes, key=_box_cost)
        self.groups = [
            BatchedNMF(
                cap0,
                box,
                dtype=dtype,
                divergence_factor=divergence_factor,
                update_cap=update_cap,
                kernel=kernel,
                rng=rng,
                rng_seed=int(np.random.SeedSequence([int(rng_seed), g]).generate_state(1)[0]),
            )
            for g, box in enumerate(self.classes)
        ]
        self.dtype = dtype
        self.kernel = kernel
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
        T = _check_int("n_steps", n_steps, low=0)
        B = self.n_slots
        active = self.active
        lr = np.where(active, np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,)), 0.0)
        _check_lr(lr)
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
        top = _top_eigenvalues(torch.cat(parts, dim=1).view(-1, R, R)).numpy()
        k = top.size // 2
        idx, m, n = np.concatenate(where), np.concatenate(ms), np.concatenate(ns)
        out[idx] = _bound_from_lipschitz(top[:k] / n, top[k:] / (m * n))
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
