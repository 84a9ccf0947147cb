"""The step kernel of the batched NMF engine: projected SGD on every slot at once.

:func:`run_steps` runs ``T`` steps of the single task's stochastic projected SGD
(:meth:`~metasched.inner_tasks.nmf.NMFTask.train`) on the first ``B`` slots of a
:class:`~metasched.inner_tasks.nmf_batched.BatchedNMF`, with batched matrix products over the
slot dimension. It takes the minibatch rows and gradient noise the batch drew and computes
the single task's step with few tensor operations:

* gradients stay in raw (unnormalised) units, ``res H^T`` and ``W_B^T res``; the ``1/n`` and
  ``1/(b n)`` normalisations ride on the per-slot rates ``-lr/n`` and ``-lr/(b n)`` (one
  ``addcmul`` per block) and on the logged norms;
* the noise arrives pre-scaled by ``sigma/sqrt(r)``, so that ``raw + noise * ||H||`` (and
  ``* ||W_B||``) is the single task's noisy gradient times ``n`` (times ``b n``);
* V is stored negated, so that gathering its minibatch rows starts the residual in place;
* divergence is found after the call, from a log of per-step norms (residual, both gradient
  blocks and, if asked, both update blocks), instead of by a check after every step.

The minibatches, the noise and every reported statistic are the single task's; only
rounding differs (float64 slots agree with :class:`~metasched.inner_tasks.nmf.NMFTask` to
~1e-6 relative, the float32 noise being scaled in another order). A slot that diverges keeps
running to the end of the call, so its factors are undefined afterwards (the batch marks it
inactive until it is loaded again). Per-slot results do not depend on the other slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["StepsOut", "Workspace", "run_steps"]


@dataclass(frozen=True, slots=True)
class Workspace:
    """The storage one call of :func:`run_steps` works on (views of the first ``B`` slots).

    Attributes:
        Wf: ``(rows, R)`` W rows of all slots stacked (slot ``k`` owns rows
            ``[k M, (k + 1) M)``), then one all-zero row that padded minibatch positions
            read, then private scratch rows that receive the writes which must not land.
        Vf: ``(rows, N)`` the negated V rows, same layout (no scratch rows).
        H: ``(B, R, N)`` the slots' H factors; holds the updated H after the call.
        H_spare: ``(B, R, N)`` room for the next H.
        wb: ``(B, Bmax, R)`` the gathered minibatch rows of W.
        res: ``(B, Bmax, N)`` the residual ``W_B H - V_B``.
        gwT: ``(B, R, Bmax)`` the W-block gradient, transposed (``H @ res^T`` is the faster
            batched product).
        gh: ``(B, R, N)`` the H gradient.
        w_next: ``(B, Bmax, R)`` the updated minibatch rows of W.
    """

    Wf: torch.Tensor
    Vf: torch.Tensor
    H: torch.Tensor
    H_spare: torch.Tensor
    wb: torch.Tensor
    res: torch.Tensor
    gwT: torch.Tensor
    gh: torch.Tensor
    w_next: torch.Tensor


class StepsOut(NamedTuple):
    """Per-slot results of :func:`run_steps` (arrays over the ``B`` slots)."""

    #: ``(B, T)`` minibatch losses before each update (also after a slot's divergence).
    losses: np.ndarray
    #: steps each slot ran, the diverging step included (0 for slots not started).
    n_done: np.ndarray
    #: sums of squared (normalised) gradient norms over the updates made.
    g2_sum: np.ndarray
    #: sums of squared update norms over the updates made (NaN if not tracked).
    u2_sum: np.ndarray
    #: update entries the per-entry cap limited, over the updates made.
    capped: np.ndarray
    #: slots that started and did not diverge.
    running: np.ndarray


def run_steps(
    ws: Workspace,
    read: torch.Tensor,
    write: torch.Tensor,
    noise_w: torch.Tensor | None,
    noise_h: torch.Tensor | None,
    *,
    lr: np.ndarray,
    start: np.ndarray,
    n: np.ndarray,
    b: np.ndarray,
    limit: np.ndarray,
    cap: float | None,
    track_updates: bool = True,
) -> StepsOut:
    """Run ``T`` projected-SGD steps on the ``B`` slots of ``ws`` (see the module docstring).

    Args:
        ws: factors and buffers of the slots.
        read: ``(T, B * Bmax)`` rows of ``Wf``/``Vf`` each step's minibatch gathers.
        write: ``(T, B * Bmax)`` rows the updated minibatch rows go to (unique per step).
        noise_w: ``(T, B, R, Bmax)`` W-block gradient noise pre-scaled by
            ``sigma / sqrt(r)`` (zero on padding), or None when no slot is noisy.
        noise_h: ``(T, B, R, N)`` the same for the H gradient.
        lr: ``(B,)`` rates (0 for slots not started).
        start: ``(B,)`` slots that take part (the others draw nothing and stay put).
        n: ``(B,)`` columns of each slot's matrix.
        b: ``(B,)`` minibatch size of each slot.
        limit: ``(B,)`` minibatch loss above which (or at NaN) a slot diverged.
        cap: per-entry update cap, or None.
        track_updates: log the update norms (``u2_sum`` is NaN when False).
    """
    Wf, Vf, H0, H_next = ws.Wf, ws.Vf, ws.H, ws.H_spare
    wb, res, gwT, gh, w_next = ws.wb, ws.res, ws.gwT, ws.gh, ws.w_next
    T = read.shape[0]
    B, P, R = wb.shape
    dt = H0.dtype
    H = H0
    wb2, res2, w_next2 = wb.view(B * P, R), res.view(B * P, -1), w_next.view(B * P, R)
    wbT, resT, gw = wb.transpose(1, 2), res.transpose(1, 2), gwT.transpose(1, 2)
    wb_f, res_f, gwT_f, gh_f = (x.view(B, -1) for x in (wb, res, gwT, gh))
    H_f, H_next_f = H.view(B, -1), H_next.view(B, -1)
    n = n.astype(np.float64)
    bn = n * b
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
        assert noise_h is not None
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
    return StepsOut(
        losses=loss,
        n_done=n_done,
        g2_sum=np.where(stepped, g2, 0.0).sum(axis=1),
        u2_sum=u2_sum,
        capped=capped,
        running=start & (first == T),
    )
