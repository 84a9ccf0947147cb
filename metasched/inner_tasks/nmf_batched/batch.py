"""The batched NMF engine: many stochastic-NMF slots in padded tensors, stepped at once.

See :mod:`metasched.inner_tasks.nmf_batched` for the layout, the random streams and the
padding; the step itself is :func:`~metasched.inner_tasks.nmf_batched.kernel.run_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metasched.inner_tasks.nmf import NMFTask
from metasched.inner_tasks.nmf_batched.kernel import Workspace, run_steps
from metasched.inner_tasks.nmf_batched.stats import (
    RNG_MODES,
    BatchedStepStats,
    check_int,
    check_lr,
)
from metasched.inner_tasks.nmf_batched.streams import (
    Draws,
    SlotLayout,
    per_slot_draws,
    shared_draws,
)

__all__ = ["BatchedNMF", "bound_from_lipschitz", "top_eigenvalues"]


def top_eigenvalues(grams: torch.Tensor) -> torch.Tensor:
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
            :class:`NMFTask` to ~1e-6 relative).
        divergence_factor: a minibatch loss above this multiple of the slot's initial full
            loss, or a non-finite one, counts as divergence; so does a collapse to zero.
        update_cap: if set, each entry's update is limited to ``[-cap, cap]`` (counted).
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
        rng: str = "per_slot",
        rng_seed: int = 0,
    ) -> None:
        B = check_int("n_slots", n_slots)
        if rng not in RNG_MODES:
            raise ValueError(f"rng must be one of {', '.join(RNG_MODES)}, got {rng!r}")
        if len(max_shape) != 4:
            raise ValueError(f"max_shape must be (M, N, R, Bmax), got {max_shape!r}")
        M, N, R, P = (check_int(f"max_shape[{i}]", v) for i, v in enumerate(max_shape))
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
        self._res = torch.empty(B, P, N, dtype=dtype)
        self._gwT = torch.empty(B, R, P, dtype=dtype)
        self._w_next = torch.empty(B, P, R, dtype=dtype)
        self._gh = torch.empty(B, R, N, dtype=dtype)
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

    #: Per-slot numpy arrays that travel with a slot (move, resize, snapshot).
    _SETTINGS = ("_m", "_n", "_r", "_b", "_sigma", "_ref_loss", "_active", "_load_id")

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
        self._active[slot] = True
        self._loads += 1
        self._load_id[slot] = self._loads
        self._sources[slot] = V

    def _put(self, slot: int, V: np.ndarray, W: np.ndarray, H: np.ndarray) -> None:
        m, n = V.shape
        r = W.shape[1]
        self._V[slot].zero_()
        self._V[slot, :m, :n] = torch.from_numpy(-V)  # stored negated (see kernel)
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
        self._alloc(check_int("n_slots", n_slots))

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
            "settings": {key: getattr(self, key).copy() for key in self._SETTINGS},
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
                self._V[slot, : src.shape[0], : src.shape[1]] = torch.from_numpy(-src)
        self._sources = list(snap["sources"])
        self._W.copy_(snap["W"])
        self._H.copy_(snap["H"])
        for key, value in snap["settings"].items():
            setattr(self, key, value.copy())
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
        slot overwrites exactly its own unpadded block every call.
        """
        if n_steps > self._noise_steps:
            B = self.n_slots
            _, N, R, P = self.max_shape
            self._noise_w = torch.zeros(n_steps, B, R, P, dtype=self.dtype)
            self._noise_h = torch.zeros(n_steps, B, R, N, dtype=self.dtype)
            self._noise_steps = n_steps
        return self._noise_w[:n_steps], self._noise_h[:n_steps]

    def _clear_noise(self, slot: int) -> None:
        if self._noise_steps:
            self._noise_w[:, slot].zero_()
            self._noise_h[:, slot].zero_()

    def _draw(self, n_steps: int, slots: np.ndarray, hi: int) -> Draws:
        """Draw one call's minibatch rows and gradient noise for ``slots`` (see :mod:`.streams`)."""
        layout = SlotLayout(
            box=self.max_shape,
            zero_row=self._zero_row,
            scratch=self._scratch[:hi],
            shapes=(self._m[:hi], self._n[:hi], self._r[:hi], self._b[:hi]),
            sigma=self._sigma[:hi],
        )
        if self.rng == "shared":
            return shared_draws(
                n_steps,
                slots,
                layout,
                rng=self._shared_rng,
                noise_gen=self._shared_noise,
                n_slots=self.n_slots,
                dtype=self.dtype,
            )
        return per_slot_draws(
            n_steps,
            slots,
            layout,
            rngs=self._rngs,
            noise_gens=self._noise_gens,
            noise_storage=self._noise_buffers,
        )

    def train(
        self, n_steps: int, lr: np.ndarray | float, *, track_updates: bool = True
    ) -> BatchedStepStats:
        """Run ``n_steps`` projected SGD steps on every active slot at its own rate.

        Args:
            n_steps: steps per slot (a slot stops early at its first divergence).
            lr: ``(B,)`` learning rates (or one scalar for all); entries of inactive slots
                are ignored. A slot at ``lr = 0`` still draws its minibatches and reports
                losses, exactly like ``NMFTask.train(n_steps, 0.0)``.
            track_updates: measure the update norms; when False the kernel skips that work
                and reports ``update_norm`` as NaN.

        Returns:
            The per-slot statistics of the call.
        """
        T = check_int("n_steps", n_steps, low=0)
        B = self.n_slots
        start = self._active.copy()
        lr = np.where(start, np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,)), 0.0)
        check_lr(lr)
        slots = np.flatnonzero(start)
        if T == 0 or slots.size == 0:
            return BatchedStepStats.empty(B, T)
        hi = int(slots[-1]) + 1  # slots past the last active one are left out entirely
        draws = self._draw(T, slots, hi)
        with torch.no_grad():
            out = run_steps(
                self._workspace(hi),
                *draws,
                lr=lr[:hi],
                start=start[:hi],
                n=self._n[:hi],
                b=self._b[:hi],
                limit=self.divergence_factor * self._ref_loss[:hi],
                cap=self.update_cap,
                track_updates=track_updates,
            )
        n_done = np.zeros(B, dtype=np.int64)
        n_done[:hi] = out.n_done
        losses = np.full((B, T), np.nan)
        losses[:hi] = out.losses
        losses[np.arange(T)[None, :] >= n_done[:, None]] = np.nan
        live = np.zeros(B, dtype=bool)
        live[:hi] = out.running
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
            grad_norm=np.sqrt(np.concatenate([out.g2_sum, pad]) / steps),
            update_norm=np.sqrt(np.concatenate([out.u2_sum, pad]) / steps),
            diverged=diverged,
            n_done=n_done,
            capped=np.concatenate([out.capped, pad]).astype(np.int64),
        )

    def _workspace(self, B: int) -> Workspace:
        """Return the kernel's view of the first ``B`` slots."""
        return Workspace(
            Wf=self._Wf,
            Vf=self._Vf,
            H=self._H[:B],
            H_spare=self._H_next[:B],
            wb=self._wb[:B],
            res=self._res[:B],
            gwT=self._gwT[:B],
            gh=self._gh[:B],
            w_next=self._w_next[:B],
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
            res = torch.baddbmm(V, W, H, beta=1.0)  # W H - V (V is stored negated)
            ss = torch.linalg.vector_norm(res.flatten(1), dim=1, dtype=torch.float64).square_()
        return 0.5 * ss.numpy() / (self._m[sel] * self._n[sel])

    def grams(self, slots: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """``(2 k, R, R)`` float64 Gram matrices ``H H^T`` (first ``k``) and ``W^T W``.

        They are formed in the compute dtype; only the small ``R x R`` results are converted.
        """
        sel = self._select(slots)
        with torch.no_grad():
            if isinstance(sel, slice):
                W, H = self._W, self._H
            else:
                idx = torch.from_numpy(sel)
                W, H = self._W[idx], self._H[idx]
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
            top = top_eigenvalues(self.grams(slots)).numpy()
        k = top.size // 2
        n = self._n[sel]
        return top[:k] / n, top[k:] / (self._m[sel] * n)

    def lr_bound(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` deterministic-safe rates ``1/max(L_W, L_H)`` (0 where not finite)."""
        return bound_from_lipschitz(*self.lipschitz(slots))

    def default_lr(self) -> np.ndarray:
        """``(B,)`` half the deterministic-safe rates at the current points."""
        return 0.5 * self.lr_bound()


def bound_from_lipschitz(lw: np.ndarray, lh: np.ndarray) -> np.ndarray:
    """Deterministic-safe rates ``1 / max(L_W, L_H)`` (``inf`` at 0, 0 where not finite)."""
    big = np.maximum(lw, lh)
    with np.errstate(divide="ignore"):
        bound = np.where(big > 0, 1.0 / big, math.inf)
    return np.where(np.isfinite(big), bound, 0.0)
