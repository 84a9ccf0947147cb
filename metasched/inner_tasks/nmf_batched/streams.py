"""The random streams of the batched NMF engine: each call's minibatch rows and gradient noise.

Both functions turn one call's draws into what the kernel reads
(:func:`~metasched.inner_tasks.nmf_batched.kernel.run_steps`): flat indices into the stacked
W/V rows to gather per step, the rows the updates are written back to, and the zero-padded
gradient noise pre-multiplied by ``sigma / sqrt(r)``.

* :func:`per_slot_draws` (``rng="per_slot"``): every slot draws exactly what
  :meth:`~metasched.inner_tasks.nmf.NMFTask.train` draws, from its own generators.
* :func:`shared_draws` (``rng="shared"``): one draw per call for the whole batch (see its
  docstring).

Rows are laid out as in :class:`~metasched.inner_tasks.nmf_batched.kernel.Workspace`: slot
``k`` owns rows ``[k M, (k + 1) M)``, padded minibatch positions read the all-zero row
``zero_row``, and writes that must not land (repeated draws, padding) go to the slots'
private scratch rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Draws", "SlotLayout", "last_draws", "per_slot_draws", "shared_draws"]


class SlotLayout(NamedTuple):
    """The first ``hi`` slots of a batch, as the draws see them."""

    #: the padding box ``(M, N, R, Bmax)``.
    box: tuple[int, int, int, int]
    #: index of the all-zero row that padded minibatch positions read.
    zero_row: int
    #: ``(hi, Bmax)`` the slots' private scratch rows.
    scratch: np.ndarray
    #: ``(m, n, rank, batch_size)`` of the slots, one int array ``(hi,)`` each.
    shapes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    #: ``(hi,)`` gradient-noise scales.
    sigma: np.ndarray


class Draws(NamedTuple):
    """One call's draws, laid out for the kernel (``T`` steps, the first ``hi`` slots)."""

    #: ``(T, hi * Bmax)`` rows of the stacked W/V storage each step gathers.
    read: torch.Tensor
    #: ``(T, hi * Bmax)`` rows the updated minibatch rows are written to (unique per step).
    write: torch.Tensor
    #: ``(T, hi, R, Bmax)`` noise of the (transposed) W-block gradient, or None if noiseless.
    noise_w: torch.Tensor | None
    #: ``(T, hi, R, N)`` noise of the H gradient, or None if noiseless.
    noise_h: torch.Tensor | None


def last_draws(read: np.ndarray, n_rows: int) -> np.ndarray:
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


def _with_targets(
    read: np.ndarray,
    layout: SlotLayout,
    noise_w: torch.Tensor | None,
    noise_h: torch.Tensor | None,
) -> Draws:
    """Pair the gathered rows with their write targets: the last draw of a row writes it."""
    keep = last_draws(read, layout.zero_row + 1) & (read != layout.zero_row)
    write = np.where(keep, read, layout.scratch.reshape(1, -1))
    return Draws(torch.from_numpy(read), torch.from_numpy(write), noise_w, noise_h)


def per_slot_draws(
    n_steps: int,
    slots: np.ndarray,
    layout: SlotLayout,
    *,
    rngs: Sequence[np.random.Generator],
    noise_gens: Sequence[torch.Generator],
    noise_storage: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
) -> Draws:
    """Draw, slot by slot, exactly what :meth:`NMFTask.train` draws from the slot's generators.

    Args:
        n_steps: steps ``T`` of the call.
        slots: the active slots (all ``< hi``).
        layout: the first ``hi`` slots.
        rngs: per-slot minibatch generators (indexed by slot).
        noise_gens: per-slot noise generators (indexed by slot).
        noise_storage: returns zero-padded ``(T, B, R, Bmax)`` and ``(T, B, R, N)`` noise
            storage whose padding stays zero (each noisy slot overwrites its own block).
    """
    M, N, R, P = layout.box
    sigma = layout.sigma
    T, hi = n_steps, sigma.size
    read = np.full((T, hi, P), layout.zero_row, dtype=np.int64)
    noise_w = noise_h = z_all = None
    if any(sigma[k] > 0 for k in slots):
        noise_w, noise_h = noise_storage(T)
        z_all = torch.empty(T * R * (P + N))  # one slot's draw at a time
    ms, ns, rs, bs = (x.tolist() for x in layout.shapes)
    for k in slots.tolist():
        m, n, r, b = ms[k], ns[k], rs[k], bs[k]
        u = rngs[k].random((T, b))
        u *= m
        block = read[:, k, :b]
        block[...] = u  # truncates, as the single task's astype(np.intp) does
        block += k * M
        if sigma[k] > 0:
            assert noise_w is not None and noise_h is not None and z_all is not None
            size = T * (b * r + r * n)
            z = torch.randn(size, generator=noise_gens[k], out=z_all[:size])
            zw = z[: T * b * r].view(T, b, r).transpose(1, 2)
            zh = z[T * b * r :].view(T, r, n)
            scale = float(sigma[k]) / math.sqrt(r)
            torch.mul(zw, scale, out=noise_w[:, k, :r, :b])
            torch.mul(zh, scale, out=noise_h[:, k, :r, :n])
    if noise_w is not None:
        assert noise_h is not None
        noise_w, noise_h = noise_w[:, :hi], noise_h[:, :hi]
    return _with_targets(read.reshape(T, hi * P), layout, noise_w, noise_h)


def shared_draws(
    n_steps: int,
    slots: np.ndarray,
    layout: SlotLayout,
    *,
    rng: np.random.Generator,
    noise_gen: torch.Generator,
    n_slots: int,
    dtype: torch.dtype,
) -> Draws:
    """Draw once for the whole batch from its shared generators, block ``k`` per slot.

    ``(T, B, Bmax)`` uniforms give the rows (slot ``k`` row ``floor(u m_k)`` of its
    first ``b_k`` positions, as the single task turns its uniforms into rows); the noise
    comes from one pool of ``T + B`` normal draws of one step's size, slot ``k`` reading
    a cyclic shift of it (a random offset per call) times a random sign, zeroed on
    padding and on noiseless slots. Slot ``k``'s stream is thus a fixed function of the
    batch seed, the call sequence, ``B`` and its position ``k``, whatever else is loaded;
    within a slot, noise entries are i.i.d. ``N(0, 1)`` as in the single task, while
    different slots see shifted copies of the same draws.

    Args:
        n_steps: steps ``T`` of the call.
        slots: the active slots (all ``< hi``).
        layout: the first ``hi`` slots.
        rng: the batch's minibatch generator (also draws the noise offsets and signs).
        noise_gen: the batch's noise generator.
        n_slots: slots ``B`` of the batch (every slot's block is drawn).
        dtype: the compute dtype the noise is returned in.
    """
    M, N, R, P = layout.box
    sigma, zero_row = layout.sigma, layout.zero_row
    T, hi = n_steps, sigma.size
    live = np.zeros(hi, dtype=bool)
    live[slots] = True
    ms, ns, rs, bs = layout.shapes
    # drawn for every slot (not only the first hi), so a slot's stream does not depend
    # on which other slots are loaded
    u = rng.random((T, n_slots, P))[:, :hi]
    u *= ms[None, :, None]
    rows = u.astype(np.int64)  # truncates, as the single task's astype(np.intp) does
    rows += (np.arange(hi, dtype=np.int64) * M)[None, :, None]
    valid = (np.arange(P)[None, :] < bs[:, None]) & live[:, None]
    read = np.where(valid[None], rows, zero_row).reshape(T, hi * P)
    noise_w = noise_h = None
    noisy = live & (sigma > 0)
    if noisy.any():
        # one pool of L = T + B standard-normal "rows" (one step's noise each) for the
        # batch; slot k reads rows (t + offset_k) mod L with a random sign: its own steps
        # get distinct rows (i.i.d. N(0, 1), as the single task's), at 1/(B+1)-ish of the
        # draws of per-slot streams
        L = T + n_slots
        pool = torch.randn(L, R, P + N, generator=noise_gen)
        offset = rng.integers(L, size=n_slots)[:hi]
        sign = rng.integers(2, size=n_slots)[:hi] * 2.0 - 1.0
        which = (np.arange(T)[:, None] + offset[None, :]) % L
        z = pool.index_select(0, torch.from_numpy(which.reshape(-1)))
        z = z.view(T, hi, R, P + N)  # one contiguous copy of whole rows
        scale = np.where(noisy, sigma / np.sqrt(rs), 0.0) * sign
        r_ok = np.arange(R)[None, :] < rs[:, None]
        cols = np.arange(P + N)[None, None, :]
        ok = np.where(cols < P, cols < bs[:, None, None], cols - P < ns[:, None, None])
        mask = (r_ok[:, :, None] & ok) * scale[:, None, None]
        z.mul_(torch.from_numpy(mask).to(z.dtype))  # padding and noiseless slots: zero
        if dtype != z.dtype:
            z = z.to(dtype)
        noise_w, noise_h = z[..., :P], z[..., P:]
    return _with_targets(read, layout, noise_w, noise_h)
