"""Many stochastic-NMF instances stepped together as one batched torch computation.

:class:`BatchedNMF` holds ``n_slots`` independent :class:`~metasched.inner_tasks.nmf.NMFTask`
problems, zero-padded to one common shape ``(M, N, R, Bmax)``, and advances all of them with
batched matrix products (``torch.bmm`` / ``torch.baddbmm``) over a leading slot dimension, as
a vectorised RL environment needs. Each slot reproduces the single task step for step:

* :meth:`BatchedNMF.load` draws the initial factors and the two per-slot RNG seeds from the
  caller's generator in exactly the order of :meth:`NMFTask.reset`;
* every :meth:`BatchedNMF.train` call draws, per slot, one ``rng.random((n_steps, b))`` array
  of minibatch rows and (when ``grad_noise > 0``) one float32 ``torch.randn`` vector of the
  single task's length, so with ``dtype=torch.float64`` a slot and an :class:`NMFTask` reset
  from equal generators agree to rounding error.

Padding is exact. Unused rows/columns of V, unused rank columns of W and rank rows of H, and
minibatch positions beyond a slot's ``batch_size`` all hold zeros that the updates keep at
zero: padded minibatch positions read a shared all-zero row of W and V (so their residual,
gradients and updates vanish), the gradient noise is zero on padding, and each slot is
normalised by its own ``1/n`` and ``1/(b n)``. Write-back goes through ``index_copy_`` with
unique targets only: a row drawn several times in one minibatch is written by its last draw
(as numpy's ``W[idx] = new`` does), and the other draws go to private scratch rows.

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

from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.nmf import NMFTask

__all__ = ["BatchedNMF", "BatchedStepStats"]


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


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


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


class BatchedNMF:
    """``n_slots`` stochastic projected-SGD NMF problems advanced as one tensor computation.

    Slots are filled with :meth:`load` (or all at once with :meth:`from_tasks`); a slot is
    *active* from its load until it diverges. ``train`` moves active slots only; a slot that
    diverges stops for the rest of the call and stays inactive until it is loaded again.

    The task-specific settings taken from each :class:`NMFTask` are its matrix, rank,
    minibatch size and gradient-noise scale; ``update_cap`` and ``divergence_factor`` are
    shared by all slots and given here (the tasks' own values are ignored).

    Args:
        n_slots: number of problem slots ``B``.
        max_shape: ``(M, N, R, Bmax)``: the largest rows, columns, rank and minibatch size
            any loaded task may have; every slot is zero-padded to it.
        dtype: ``torch.float32`` (default, fastest) or ``torch.float64`` (matches
            :class:`NMFTask` to rounding error).
        divergence_factor: a minibatch loss above this multiple of the slot's initial full
            loss, or a non-finite one, counts as divergence; so does a collapse to zero.
        update_cap: if set, each entry's update is limited to ``[-cap, cap]`` (counted).
    """

    def __init__(
        self,
        n_slots: int,
        max_shape: tuple[int, int, int, int],
        *,
        dtype: torch.dtype = torch.float32,
        divergence_factor: float = 1e3,
        update_cap: float | None = None,
    ) -> None:
        B = _check_int("n_slots", n_slots)
        if len(max_shape) != 4:
            raise ValueError(f"max_shape must be (M, N, R, Bmax), got {max_shape!r}")
        M, N, R, P = (_check_int(f"max_shape[{i}]", v) for i, v in enumerate(max_shape))
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
        if update_cap is not None and not (update_cap > 0 and math.isfinite(update_cap)):
            raise ValueError(f"update_cap must be a positive finite number, got {update_cap!r}")
        self.n_slots = B
        self.max_shape = (M, N, R, P)
        self.dtype = dtype
        self.divergence_factor = float(divergence_factor)
        self.update_cap = None if update_cap is None else float(update_cap)

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
        self._vb = torch.empty(B, P, N, dtype=dtype)
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
        self._loads = 0
        self._sources: list[np.ndarray | None] = [None] * B
        self._rngs: list[np.random.Generator] = [np.random.default_rng(0) for _ in range(B)]
        self._noise_gens = [torch.Generator().manual_seed(0) for _ in range(B)]

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
        if any(v > cap for v, cap in zip((m, n, r, b), self.max_shape, strict=True)):
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
        self._V[slot, :m, :n] = torch.from_numpy(V)
        self._W[slot].zero_()
        self._W[slot, :m, :r] = torch.from_numpy(W)
        self._H[slot].zero_()
        self._H[slot, :r, :n] = torch.from_numpy(H)

    def deactivate(self, slot: int) -> None:
        """Mark ``slot`` inactive (``train`` leaves it alone until it is loaded again)."""
        self._active[self._check_slot(slot)] = False

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
                for key in (
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
                self._V[slot, : src.shape[0], : src.shape[1]] = torch.from_numpy(src)
        self._sources = list(snap["sources"])
        self._W.copy_(snap["W"])
        self._H.copy_(snap["H"])
        for key, value in snap["settings"].items():
            setattr(self, key, value.clone() if isinstance(value, torch.Tensor) else value.copy())
        for gen, state in zip(self._rngs, snap["rngs"], strict=True):
            gen.bit_generator.state = state
        for gen, state in zip(self._noise_gens, snap["noise_rngs"], strict=True):
            gen.set_state(state)

    # -- training --------------------------------------------------------------------------
    def _noise_buffers(self, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return zero-padded float32 noise storage for ``n_steps`` steps.

        The storage persists between calls (and grows to the longest call seen), so padding
        is zeroed once per allocation and per :meth:`load`, not on every call: each noisy
        slot overwrites exactly its own unpadded block every call.
        """
        if n_steps > self._noise_steps:
            B = self.n_slots
            _, N, R, P = self.max_shape
            self._noise_w = torch.zeros(n_steps, B, R, P, dtype=torch.float32)
            self._noise_h = torch.zeros(n_steps, B, R, N, dtype=torch.float32)
            self._noise_steps = n_steps
        return self._noise_w[:n_steps], self._noise_h[:n_steps]

    def _clear_noise(self, slot: int) -> None:
        if self._noise_steps:
            self._noise_w[:, slot].zero_()
            self._noise_h[:, slot].zero_()

    def _draw(
        self, n_steps: int, slots: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Draw one call's minibatch rows and gradient noise for ``slots`` (the per-call loop).

        Returns:
            ``(read, write, noise_w, noise_h)``: flat row indices ``(T, B*Bmax)`` to gather
            and to write back, and the zero-padded float32 noise of the W block (transposed,
            ``(T, B, R, Bmax)``) and of H (``(T, B, R, N)``), ``None`` when no slot is noisy.
        """
        B = self.n_slots
        M, _, _, P = self.max_shape
        T = n_steps
        read = np.full((T, B, P), self._zero_row, dtype=np.int64)
        noise_w = noise_h = None
        if any(self._sigma[k] > 0 for k in slots):
            noise_w, noise_h = self._noise_buffers(T)
        for k in slots:
            m, n, r, b = int(self._m[k]), int(self._n[k]), int(self._r[k]), int(self._b[k])
            rows = (self._rngs[k].random((T, b)) * m).astype(np.intp)
            read[:, k, :b] = rows + k * M
            if self._sigma[k] > 0:
                z = torch.randn(T * (b * r + r * n), generator=self._noise_gens[k])
                noise_w[:, k, :r, :b] = z[: T * b * r].view(T, b, r).transpose(1, 2)
                noise_h[:, k, :r, :n] = z[T * b * r :].view(T, r, n)
        read = read.reshape(T, B * P)
        keep = _last_draws(read, self._zero_row + 1) & (read != self._zero_row)
        write = np.where(keep, read, self._scratch.reshape(1, -1))
        return (
            torch.from_numpy(read),
            torch.from_numpy(write),
            noise_w,
            noise_h,
        )

    def train(self, n_steps: int, lr: np.ndarray | float) -> BatchedStepStats:
        """Run ``n_steps`` projected SGD steps on every active slot at its own rate.

        Args:
            n_steps: steps per slot (a slot stops early at its first divergence).
            lr: ``(B,)`` learning rates (or one scalar for all); entries of inactive slots
                are ignored. A slot at ``lr = 0`` still draws its minibatches and reports
                losses, exactly like ``NMFTask.train(n_steps, 0.0)``.

        Returns:
            The per-slot statistics of the call.
        """
        T = _check_int("n_steps", n_steps, low=0)
        B = self.n_slots
        start = self._active.copy()
        lr = np.where(start, np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,)), 0.0)
        if not np.all(np.isfinite(lr) & (lr >= 0)):
            bad = np.flatnonzero(~(np.isfinite(lr) & (lr >= 0))).tolist()
            raise ValueError(f"lr must be finite and non-negative; slots {bad} are not")
        slots = np.flatnonzero(start)
        losses = np.full((B, T), np.nan)
        n_done = np.zeros(B, dtype=np.int64)
        zeros = np.zeros(B)
        if T == 0 or slots.size == 0:
            return BatchedStepStats(
                losses, zeros, zeros.copy(), np.zeros(B, dtype=bool), n_done, n_done.copy()
            )
        read, write, noise_w, noise_h = self._draw(T, slots)
        with torch.no_grad():
            out = self._run(T, lr, start, read, write, noise_w, noise_h)
        loss_t, done_t, g2_t, u2_t, capped_t, running_t = out
        n_done = done_t.numpy().astype(np.int64)
        running = running_t.numpy()
        losses[:] = loss_t.T.numpy()
        losses[np.arange(T)[None, :] >= n_done[:, None]] = np.nan
        diverged = start & ~running
        # collapse to the trivial factorisation counts as divergence (relative error 1)
        ran = running & (n_done > 0)
        if ran.any():
            w_any = self._W.flatten(1).any(dim=1).numpy()
            h_any = self._H.flatten(1).any(dim=1).numpy()
            diverged |= ran & ~(w_any & h_any)
        self._active &= ~diverged
        steps = np.maximum(n_done, 1)
        return BatchedStepStats(
            losses=losses,
            grad_norm=np.sqrt(g2_t.numpy() / steps),
            update_norm=np.sqrt(u2_t.numpy() / steps),
            diverged=diverged,
            n_done=n_done,
            capped=capped_t.numpy().astype(np.int64),
        )

    def _run(
        self,
        T: int,
        lr: np.ndarray,
        start: np.ndarray,
        read: torch.Tensor,
        write: torch.Tensor,
        noise_w: torch.Tensor | None,
        noise_h: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """Run the batched step loop: every tensor op acts on all slots at once.

        The W-block gradient is kept transposed, ``(B, R, Bmax)``, because ``H @ res^T`` is
        the faster batched product; the arithmetic is the single task's, entry for entry.
        """
        B = self.n_slots
        _, _, R, P = self.max_shape
        dt = self.dtype
        exact = dt == torch.float64
        cap = self.update_cap
        Wf, Vf = self._Wf, self._Vf
        H, H_next = self._H, self._H_next
        wb, vb, res = self._wb, self._vb, self._res
        gwT, gh, w_next, dw = self._gwT, self._gh, self._w_next, self._dw
        wb2, vb2, w_next2 = wb.view(B * P, R), vb.view(B * P, -1), w_next.view(B * P, R)
        wbT, gw = wb.transpose(1, 2), gwT.transpose(1, 2)
        flat = (wb, res, gwT, gh, dw, H, H_next)
        wb_f, res_f, gwT_f, gh_f, dw_f, H_f, H_next_f = (x.view(B, -1) for x in flat)
        inv_n = self._inv_n.view(B, 1, 1)
        inv_bn = self._inv_bn.view(B, 1, 1)
        half_inv_bn = 0.5 * self._inv_bn
        neg_lr = torch.from_numpy(-lr).to(dt).view(B, 1, 1)
        limit = torch.from_numpy(self.divergence_factor * self._ref_loss)
        # exact mode: scale in float64, then round to float32 as numpy's float32 * float does
        sw = self._sw if exact else self._sw.to(dt)
        sh = self._sh if exact else self._sh.to(dt)
        nbw, nbh = self._noise_w_buf, self._noise_h_buf
        scratch = torch.from_numpy(self._scratch.reshape(-1))

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
        self._H, self._H_next = H, H_next
        return loss_log, n_done, g2_sum, u2_sum, capped, running

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> np.ndarray:
        """``(B,)`` full-data losses ``||V - WH||_F^2 / (2 m n)`` of all slots."""
        with torch.no_grad():
            res = torch.baddbmm(self._V, self._W, self._H, beta=-1.0)
            ss = torch.linalg.vector_norm(res.flatten(1), dim=1, dtype=torch.float64).square_()
        return 0.5 * ss.numpy() / (self._m * self._n)

    def lipschitz(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the block Lipschitz constants ``(L_W, L_H)``, each ``(B,)``.

        ``L_W = lambda_max(H H^T) / n`` and ``L_H = lambda_max(W^T W) / (m n)``; padding only
        adds zero rows/columns to these Gram matrices, which leaves ``lambda_max`` unchanged.
        Slots whose Gram matrices are not finite get ``inf``.
        """
        with torch.no_grad():
            W = self._W.to(torch.float64)
            H = self._H.to(torch.float64)
            grams = torch.cat([H @ H.transpose(1, 2), W.transpose(1, 2) @ W])  # (2B, R, R)
            finite = torch.isfinite(grams).flatten(1).all(dim=1)
            safe = torch.where(finite.view(-1, 1, 1), grams, 0.0)
            top = torch.linalg.eigvalsh(safe)[:, -1]
            top = torch.where(finite, top, math.inf).numpy()
        B = self.n_slots
        return top[:B] / self._n, top[B:] / (self._m * self._n)

    def lr_bound(self) -> np.ndarray:
        """``(B,)`` deterministic-safe rates ``1/max(L_W, L_H)`` (0 where not finite)."""
        big = np.maximum(*self.lipschitz())
        with np.errstate(divide="ignore"):
            bound = np.where(big > 0, 1.0 / big, math.inf)
        return np.where(np.isfinite(big), bound, 0.0)

    def default_lr(self) -> np.ndarray:
        """``(B,)`` half the deterministic-safe rates at the current points."""
        return 0.5 * self.lr_bound()
