"""Train several copies of a torch task together: forks for probe, PBT and AutoLRS.

Search schedulers fork training: the probe heuristic trains three copies at L/2, L and 2L
on the same minibatches, PBT trains a population, AutoLRS evaluates k trial LRs from one
checkpoint. Each copy of a tiny model is overhead-bound, so instead of restoring and
training the copies one after another, :func:`train_copies` stacks their parameters along a
leading "copy" dimension and runs every step once for all of them with
:func:`torch.func.vmap` over :func:`torch.func.grad_and_value` of the task's own minibatch
loss (through :func:`torch.func.functional_call`). The optimizer is the task's: SGD with
EMA momentum and weight decay, one learning rate per copy.

The result equals ``restore(snap); train(n, lr); snapshot()`` per copy up to float rounding
(vmap may sum in another order), with the same minibatches: ``shared_batches=True`` draws
one stream for all copies from the first snapshot's generator (copies forked from one
snapshot, as probe does), ``False`` gives each copy its own stream (PBT members). A copy that
diverges stops updating; the others go on. ``method="sequential"`` is the reference
implementation (and the fallback for models that vmap cannot batch).

Two batched implementations: ``"stacked"`` for Linear/ReLU classifiers (the ``mlp`` family
and MNIST-1D MLPs) stacks the weights and runs a hand-written forward and backward pass with
``baddbmm`` / ``bmm`` (no autograd graph); ``"vmap"`` works for any model.

Speed (``benchmarks/bench_multicopy.py``, one thread, copy-steps/s relative to sequential
training, which for MLPs already uses hand-written backprop; noisy, measured on a loaded
machine): stacked on the digits MLP (width 64, depth 2, batch 16) 1.8x at 3 copies, 3x at 8,
3.5x at 16; on the MNIST-1D MLP (width 128, batch 32) 1.0x at 3, 1.5x at 8 and 0.55x at 16
copies (the stacked products outgrow the cache). vmap pays only for many copies of
overhead-bound models (the MNIST-1D CNN 1.2x at 8 copies, 1.8x at 16) and loses at 3 copies
(about 0.55x) and on compute-bound models (Fashion CNN, char transformer: 0.6-0.9x).
``method="auto"`` therefore uses stacked training for MLPs while copies x parameters stay
under :data:`AUTO_STACKED_MAX`, vmap from :data:`AUTO_MIN_COPIES` copies of other models of
at most :data:`AUTO_MAX_PARAMETERS` parameters, and sequential training otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.torch_task import (
    ArrayClassificationTask,
    TorchTask,
    _threads,
    is_plain_mlp,
)

__all__ = [
    "AUTO_MAX_PARAMETERS",
    "AUTO_MIN_COPIES",
    "AUTO_STACKED_MAX",
    "METHODS",
    "is_plain_mlp",
    "train_copies",
]

METHODS = ("auto", "stacked", "vmap", "sequential")
#: ``method="auto"`` stacks MLP copies while copies x parameters stay below this ...
AUTO_STACKED_MAX = 200_000
#: ... and batches other models with vmap from this many copies ...
AUTO_MIN_COPIES = 8
#: ... of models with at most this many parameters (vmap loses on larger ones).
AUTO_MAX_PARAMETERS = 12_000


class _Loss(nn.Module):
    """The task's minibatch loss as a module whose parameters ``functional_call`` can swap."""

    def __init__(self, task: TorchTask) -> None:
        super().__init__()
        self.model = task.model
        self._task = [task]  # a list: not registered as a submodule

    def forward(self, draw: torch.Tensor) -> torch.Tensor:
        return self._task[0].batch_loss(draw.unsqueeze(0), 0)


def _check(task: Any, snaps: Sequence[Any], lrs: Sequence[float], n_steps: Any) -> None:
    if not isinstance(task, TorchTask):
        raise ValueError(f"task must be a TorchTask, got {type(task).__name__}")
    if len(snaps) == 0 or len(snaps) != len(lrs):
        raise ValueError(
            f"snaps and lrs must be non-empty and of equal length, got {len(snaps)} and {len(lrs)}"
        )
    if not isinstance(n_steps, int | np.integer) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    for lr in lrs:
        if not (isinstance(lr, int | float | np.number) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"every lr must be a finite non-negative number, got {lr!r}")


def _sequential(
    task: TorchTask,
    snaps: Sequence[dict[str, Any]],
    lrs: Sequence[float],
    n_steps: int,
    shared_batches: bool,
) -> tuple[list[dict[str, Any]], list[StepStats]]:
    own = task.snapshot()
    out, stats = [], []
    try:
        for snap, lr in zip(snaps, lrs, strict=True):
            task.restore(snap)
            if shared_batches:
                task.data_gen.set_state(snaps[0]["data_gen"])
            stats.append(task.train(n_steps, float(lr)))
            out.append(task.snapshot())
    finally:
        task.restore(own)
    return out, stats


def _draws(task: TorchTask, states: list[torch.Tensor], n_steps: int) -> list[Any]:
    """Draw ``n_steps`` of minibatches from each generator state; return the new states."""
    draws, new_states = [], []
    gen = task.data_gen
    try:
        for state in states:
            task.data_gen = torch.Generator()
            task.data_gen.set_state(state)
            draws.append(task.draw_batches(n_steps))
            new_states.append(task.data_gen.get_state())
    finally:
        task.data_gen = gen
    return [draws, new_states]


def _vmap_grad_fn(task: TorchTask, shared_batches: bool) -> Any:
    """``(params, draw) -> (grads, losses)`` for stacked params, by vmap over autograd."""
    names = [f"model.{n}" for n, _ in task._named]
    loss_module = _Loss(task)

    def loss_fn(params: tuple[torch.Tensor, ...], draw: torch.Tensor) -> torch.Tensor:
        return functional_call(loss_module, dict(zip(names, params, strict=True)), (draw,))

    return vmap(grad_and_value(loss_fn), in_dims=(0, None if shared_batches else 0))


def _stacked_mlp_grad_fn(task: ArrayClassificationTask, shared_batches: bool) -> Any:
    """``(params, draw) -> (grads, losses)`` for stacked MLP weights, by hand-written backprop.

    Forward ``z_l = h_{l-1} W_l^T + b_l`` with ``baddbmm`` over the copy dimension, ReLU
    between layers, mean cross-entropy per copy; backward by the chain rule (``dz_L =
    (softmax(z_L) - onehot(y)) / B``, ``dW_l = dz_l^T h_{l-1}``, ``db_l = sum dz_l``,
    ``dh_{l-1} = dz_l W_l``, masked by ``z_{l-1} > 0``): no autograd graph at all.
    """
    x_all, y_all = task.x_train, task.y_train

    def grad_fn(
        params: tuple[torch.Tensor, ...], draw: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        k = params[0].shape[0]
        x, y = x_all[draw], y_all[draw]  # (B, in) or (k, B, in)
        h = x.expand(k, *x.shape) if shared_batches else x
        yk = y.expand(k, *y.shape) if shared_batches else y
        weights, biases = params[0::2], params[1::2]
        acts, pre = [h], []
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            z = torch.baddbmm(b.unsqueeze(1), acts[-1], w.transpose(1, 2))
            pre.append(z)
            if i < len(weights) - 1:
                acts.append(torch.relu(z))
        logits = pre[-1]
        batch = logits.shape[1]
        logp = torch.log_softmax(logits, dim=2)
        picked = logp.gather(2, yk.unsqueeze(2)).squeeze(2)
        losses = -picked.mean(1)
        dz = logp.exp()
        dz.scatter_add_(2, yk.unsqueeze(2), torch.full_like(picked.unsqueeze(2), -1.0))
        dz.mul_(1.0 / batch)
        grads: list[torch.Tensor] = [torch.empty(0)] * len(params)
        for i in range(len(weights) - 1, -1, -1):
            grads[2 * i] = torch.bmm(dz.transpose(1, 2), acts[i])
            grads[2 * i + 1] = dz.sum(1)
            if i:
                dz = torch.bmm(dz, weights[i]).mul_(pre[i - 1] > 0)
        return grads, losses

    return grad_fn


def _batched(
    task: TorchTask,
    snaps: Sequence[dict[str, Any]],
    lrs: Sequence[float],
    n_steps: int,
    shared_batches: bool,
    grad_fn: Any,
) -> tuple[list[dict[str, Any]], list[StepStats]]:
    k = len(snaps)
    states = [snaps[0]["data_gen"]] if shared_batches else [s["data_gen"] for s in snaps]
    draws, new_states = _draws(task, states, n_steps)
    if shared_batches:
        step_draws = draws[0]
        new_states = new_states * k
    else:
        step_draws = torch.stack(draws, dim=1)  # n_steps, k, ...
    params = [torch.stack([s["params"][j] for s in snaps]) for j in range(len(task.params))]
    bufs = [torch.stack([s["buffers"][j] for s in snaps]) for j in range(len(task.params))]
    mu, wd = task.momentum, task.weight_decay
    lr = torch.tensor([float(x) for x in lrs], dtype=params[0].dtype)
    limits = [task.divergence_factor * s["ref_loss"] for s in snaps]
    losses = np.zeros((k, n_steps))
    done = np.zeros(k, dtype=int)
    active = np.ones(k, dtype=bool)
    g2 = torch.zeros(k, dtype=torch.float64)
    u2 = torch.zeros(k, dtype=torch.float64)
    for t in range(n_steps):
        grads, loss = grad_fn(tuple(params), step_draws[t])
        values = loss.tolist()
        for i in np.flatnonzero(active):
            losses[i, t] = values[i]
            done[i] = t + 1
            if not values[i] <= limits[i]:
                active[i] = False
        if not active.any():
            break
        mask = torch.from_numpy(active.astype(np.float32)).to(lr.dtype)
        rate = lr * mask
        with torch.no_grad():
            grads = list(grads)
            if wd:
                torch._foreach_add_(grads, params, alpha=wd)
            sq = sum(g.flatten(1).double().square().sum(1) for g in grads)
            g2 += sq * mask.double()
            if mu:
                for b, g, m in zip(bufs, grads, (mask,) * len(bufs), strict=True):
                    shape = (k,) + (1,) * (b.dim() - 1)
                    b.lerp_(g, (1.0 - mu) * m.view(shape))  # frozen copies keep their buffer
                step = bufs
            else:
                step = grads
            u2 += sum(s.flatten(1).double().square().sum(1) for s in step) * rate.double() ** 2
            for p, s in zip(params, step, strict=True):
                p.sub_(rate.view((k,) + (1,) * (p.dim() - 1)) * s)
    out, stats = [], []
    for i in range(k):
        diverged = bool(not active[i])
        n_updates = max(int(done[i]) - int(diverged), 1)
        g2m = float(g2[i]) / n_updates
        if not math.isfinite(g2m):
            diverged = True
        ls = losses[i, : done[i]]
        out.append(
            {
                "params": [p[i].clone() for p in params],
                "buffers": [b[i].clone() for b in bufs],
                "data_gen": new_states[i],
                "ref_loss": snaps[i]["ref_loss"],
            }
        )
        stats.append(
            StepStats(
                losses=ls,
                grad_norm=math.sqrt(g2m) if math.isfinite(g2m) else math.inf,
                update_norm=math.sqrt(max(float(u2[i]), 0.0) / n_updates),
                diverged=diverged,
                n_done=int(done[i]),
                n_increasing=int(np.count_nonzero(np.diff(ls) > 0)),
            )
        )
    return out, stats


def train_copies(
    task: TorchTask,
    snaps: Sequence[dict[str, Any]],
    lrs: Sequence[float],
    n_steps: int,
    *,
    shared_batches: bool = True,
    method: str = "auto",
) -> tuple[list[dict[str, Any]], list[StepStats]]:
    """Train copy ``i`` from ``snaps[i]`` for ``n_steps`` at ``lrs[i]``, all together.

    Args:
        task: the torch task whose model, data and optimizer settings the copies share; its
            own state is left unchanged.
        snaps: one :meth:`~TorchTask.snapshot` per copy.
        lrs: one learning rate per copy.
        n_steps: steps per copy.
        shared_batches: every copy sees the minibatches of ``snaps[0]``'s data stream
            (probe's "same batches"); otherwise each copy draws from its own.
        method: ``"stacked"`` (Linear/ReLU classifiers only: stacked weights, hand-written
            batched backprop), ``"vmap"`` (stacked parameters, vmap over autograd),
            ``"sequential"`` (restore / train / snapshot per copy) or ``"auto"`` (stacked
            for small MLPs, vmap for many copies of other small models, else sequential).

    Returns:
        ``(snapshots, stats)``: each copy's state after training (restorable into ``task``)
        and its :class:`~metasched.inner_tasks.base.StepStats`.

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.mlp import MLPConfig, MLPTask
        >>> task = MLPTask(MLPConfig(width=16, depth=1))
        >>> task.reset(np.random.default_rng(0))
        >>> snap = task.snapshot()
        >>> snaps, stats = train_copies(task, [snap] * 3, [0.05, 0.1, 0.2], 20)
        >>> [s.n_done for s in stats]
        [20, 20, 20]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    _check(task, snaps, lrs, n_steps)
    n_steps = int(n_steps)
    k = len(snaps)
    auto = method == "auto"
    if method == "stacked" and not is_plain_mlp(task):
        raise ValueError(f"method 'stacked' needs a Linear/ReLU classifier; {task.name} is not")
    if method == "auto":
        if is_plain_mlp(task) and 1 < k and k * task.n_parameters <= AUTO_STACKED_MAX:
            method = "stacked"
        elif k >= AUTO_MIN_COPIES and task.n_parameters <= AUTO_MAX_PARAMETERS:
            method = "vmap"
        else:
            method = "sequential"
    if method == "sequential":
        return _sequential(task, snaps, lrs, n_steps, shared_batches)
    with _threads(task.num_threads), torch.no_grad():
        if method == "stacked":
            grad_fn = _stacked_mlp_grad_fn(task, shared_batches)  # type: ignore[arg-type]
            return _batched(task, snaps, lrs, n_steps, shared_batches, grad_fn)
    with _threads(task.num_threads), warnings.catch_warnings():
        # functorch falls back to a per-copy loop for ops without a batching rule
        warnings.filterwarnings("ignore", message=".*batching rule.*", category=UserWarning)
        grad_fn = _vmap_grad_fn(task, shared_batches)
        try:
            return _batched(task, snaps, lrs, n_steps, shared_batches, grad_fn)
        except (RuntimeError, NotImplementedError):
            if not auto:
                raise
    return _sequential(task, snaps, lrs, n_steps, shared_batches)
