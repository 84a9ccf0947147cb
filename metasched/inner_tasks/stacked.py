"""Many small torch classifiers trained together: one stacked model per architecture.

:class:`StackedNetworks` holds ``n_slots`` independent network-training problems (instances
of the ``mlp`` and ``mnist1d`` families, or of any :class:`~metasched.inner_tasks.torch_task.
ArrayClassificationTask`) and advances all of them in one call, as a vectorised RL
environment needs. Problems are grouped into *shape buckets*:

* every Linear/ReLU classifier (:func:`~metasched.inner_tasks.torch_task.is_plain_mlp`) of
  one architecture (layer widths) shares a :class:`_MLPBucket`: its weights are stacked
  along a leading slot dimension and each step runs one hand-written forward and backward
  pass with ``baddbmm`` / ``bmm`` for all of them (no autograd graph). Everything else is
  per slot: training data (each instance has its own split, noise and size; padded to the
  bucket's largest), minibatch stream (the slot's own ``torch.Generator``, drawn exactly as
  the single task draws it), minibatch size (smaller minibatches are padded with rows of
  weight zero), learning rate, EMA momentum, weight decay and divergence limit;
* the MNIST-1D CNNs of one width share a :class:`_CNN1DBucket`: stacked parameters, one
  forward pass for all positions (each strided convolution as pad + unfold + one batched
  product), and one autograd pass of the summed losses for all their gradients;
* any other model sits in a :class:`_SingleBucket` that trains each problem with its own
  :meth:`~TorchTask.train` (the reference path).

A slot follows the single task draw for draw: :meth:`StackedNetworks.load` initialises the
parameters and the minibatch generator from the caller's generator exactly as
:meth:`TorchTask.reset` does, every call draws the single task's minibatches, and the
update is the task's SGD with EMA momentum (``buf <- lerp(buf, g, 1 - mu)``, ``p <- p - lr
buf``). With ``dtype=torch.float64`` a stacked slot agrees with a float64 copy of the single
task to rounding error; in float32 it agrees as float32 training runs do. Divergence (a
minibatch loss above ``divergence_factor`` times the validation loss at initialisation, or
a non-finite loss or gradient) is found after each call from the logged losses, with the
single task's accounting (the diverging step counts as run, its update does not); a
diverged slot's parameters are undefined afterwards (it is inactive until loaded again).

The per-slot stability bound :meth:`StackedNetworks.lr_bound` is measured, batched across
the slots of a bucket, with the fork test of :class:`~metasched.stability.ForkTestEstimator`
(the validated default for networks) when ``stability`` holds its settings: each round of
the search trains a *fork* of the bucket's slots still searching (parameters and momentum
copied, minibatch generators cloned, data shared) at each slot's candidate LR, so the slots'
problems are untouched and a float64 slot finds the single estimator's bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from metasched.inner_tasks.mnist1d import _CNN1D, StridedConv1d
from metasched.inner_tasks.nmf_batched import BatchedStepStats
from metasched.inner_tasks.torch_task import (
    ArrayClassificationTask,
    TorchTask,
    is_plain_mlp,
    torch_generator,
)
from metasched.stability import ForkTestEstimator

__all__ = ["StackedNetworks", "bucket_key"]


def _is_cnn1d(task: ArrayClassificationTask) -> bool:
    """Whether ``task`` trains an MNIST-1D CNN on float32 signals with the default loss."""
    return (
        type(task.model) is _CNN1D
        and type(task).batch_loss is ArrayClassificationTask.batch_loss
        and type(task).prepare is ArrayClassificationTask.prepare
        and task.x_train.dtype == torch.float32
        and task.x_train.dim() == 2
    )


def bucket_key(task: TorchTask) -> tuple[Any, ...]:
    """Return the shape bucket of ``task``: its layer widths for plain MLPs, else its name."""
    if isinstance(task, ArrayClassificationTask) and is_plain_mlp(task):
        linears = list(task.model)[::2]
        return ("mlp", linears[0].in_features, *(m.out_features for m in linears))
    if isinstance(task, ArrayClassificationTask) and _is_cnn1d(task):
        shapes = tuple(tuple(p.shape) for p in task.params)
        return ("cnn1d", tuple(task.x_train.shape[1:]), shapes)
    return ("single", task.name)


def _clone_generator(gen: torch.Generator) -> torch.Generator:
    out = torch.Generator()
    out.set_state(gen.get_state())
    return out


def _fork_settings(parent: Any, fork: Any, pos: np.ndarray) -> None:
    """Give ``fork`` (a shallow copy of ``parent``) the settings of positions ``pos`` only.

    The fork reads its training rows from the parent's (shared) data tensors through
    ``data_pos``; its minibatch generators are copies, so the parent's streams do not move.
    """
    fork.cap = len(pos)
    fork.members = [parent.members[p] for p in pos]
    fork.gens = [_clone_generator(parent.gens[p]) for p in pos]
    for name in ("n_train", "batch", "mu", "wd", "limit"):
        setattr(fork, name, getattr(parent, name)[pos].copy())
    fork.batch_max = int(fork.batch.max())
    fork.data_pos = pos if parent.data_pos is None else parent.data_pos[pos]


def _init_like_reset(task: TorchTask, generator: np.random.Generator) -> torch.Generator:
    """Initialise ``task``'s parameters as :meth:`TorchTask.reset` does; return its data stream.

    The draws (the initialisation generator, then the minibatch generator, then every
    parameter in model order) are those of ``reset``; the held-out loss it would also
    compute is left to the caller (the stacked evaluation measures it for all slots).
    """
    init_gen = torch_generator(generator)
    data_gen = torch_generator(generator)
    with torch.no_grad():
        for name, p in task._named:
            task.init_parameter(name, p, init_gen)
    return data_gen


def _store_problem(
    bucket: Any, pos: int, task: ArrayClassificationTask, x_train: torch.Tensor, x_val: torch.Tensor
) -> None:
    """Copy a problem's data (inputs as the bucket's model takes them) and settings to ``pos``."""
    n, nv = len(x_train), len(x_val)
    for dst, src, count in (
        (bucket.x, x_train, n),
        (bucket.y, task.y_train, n),
        (bucket.xv, x_val, nv),
        (bucket.yv, task.y_val, nv),
    ):
        dst[pos].zero_()
        dst[pos, :count] = src
    bucket.vw[pos].zero_()
    bucket.vw[pos, :nv] = 1.0 / nv
    bucket.n_train[pos] = n
    bucket.batch[pos] = task.batch_size
    bucket.batch_max = max(bucket.batch_max, task.batch_size)
    bucket.mu[pos] = task.momentum
    bucket.wd[pos] = task.weight_decay
    bucket.limit[pos] = np.inf


class _MLPBucket:
    """Stacked Linear/ReLU classifiers of one architecture (see the module docstring).

    All parameters live in one flat tensor :attr:`p` (and the momentum in :attr:`buf`):
    one contiguous ``(capacity, out, in)`` block per weight and ``(capacity, out)`` per bias,
    so the layers are plain views and the optimizer (weight decay, EMA momentum, update) is
    one operation on the whole tensor, with per-position rates spread per entry.
    """

    def __init__(self, dims: Sequence[int], dtype: torch.dtype, capacity: int = 4) -> None:
        self.dims = tuple(int(d) for d in dims)
        self.dtype = dtype
        self.members: list[int] = []  # env slot of each position
        self.gens: list[torch.Generator] = []
        self.shapes: list[tuple[int, ...]] = []
        for i in range(len(self.dims) - 1):
            self.shapes += [(self.dims[i + 1], self.dims[i]), (self.dims[i + 1],)]
        self.size = sum(math.prod(s) for s in self.shapes)
        self.data_pos: np.ndarray | None = None  # set on forks (see fork)
        self.cap = 0
        self.n_train_max = 1
        self.n_val_max = 1
        self.batch_max = 1
        self._alloc(capacity)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Return the ``(capacity, *shape)`` blocks (weight, bias, weight, ...) of a flat tensor."""
        out, off = [], 0
        for shape in self.shapes:
            n = self.cap * math.prod(shape)
            out.append(flat[off : off + n].view(self.cap, *shape))
            off += n
        return out

    def spread(self, values: np.ndarray) -> torch.Tensor:
        """Return a flat tensor holding ``values[pos]`` at every entry of position ``pos``."""
        v = torch.as_tensor(values, dtype=self.dtype).view(self.cap, 1)
        return torch.cat([v.expand(self.cap, math.prod(s)).reshape(-1) for s in self.shapes])

    # -- storage ---------------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        """(Re)allocate per-position storage for ``cap`` problems, keeping the current ones."""
        d, dt = self.dims, self.dtype
        k = len(self.members)
        old = self.__dict__.copy() if self.cap else None
        self.p = torch.zeros(cap * self.size, dtype=dt)
        self.buf = torch.zeros(cap * self.size, dtype=dt)
        self.grads = torch.zeros(cap * self.size, dtype=dt)
        self.x = torch.zeros(cap, self.n_train_max, d[0], dtype=dt)
        self.y = torch.zeros(cap, self.n_train_max, dtype=torch.long)
        self.xv = torch.zeros(cap, self.n_val_max, d[0], dtype=dt)
        self.yv = torch.zeros(cap, self.n_val_max, dtype=torch.long)
        self.vw = torch.zeros(cap, self.n_val_max, dtype=dt)  # 1/n_val on real rows
        self.n_train = np.ones(cap, dtype=np.int64)
        self.batch = np.ones(cap, dtype=np.int64)
        self.mu = np.zeros(cap)
        self.wd = np.zeros(cap)
        self.limit = np.full(cap, np.inf)
        old_cap = self.cap
        self.cap = cap
        if old is not None and k:
            self.cap = old_cap
            old_blocks = [self.views(old["p"]), self.views(old["buf"])]
            self.cap = cap
            new_blocks = [self.views(self.p), self.views(self.buf)]
            for new, prev in zip(new_blocks, old_blocks, strict=True):
                for a, b in zip(new, prev, strict=True):
                    a[:k] = b[:k]
            for name in ("x", "y", "xv", "yv", "vw"):
                prev = old[name]
                getattr(self, name)[:k, : prev.shape[1]] = prev[:k]
            for name in ("n_train", "batch", "mu", "wd", "limit"):
                getattr(self, name)[:k] = old[name][:k]
        self.cap = cap

    def _grow_data(self, n_train: int, n_val: int) -> None:
        if n_train > self.n_train_max or n_val > self.n_val_max:
            self.n_train_max = max(self.n_train_max, n_train)
            self.n_val_max = max(self.n_val_max, n_val)
            self._alloc(self.cap)

    def add(self, slot: int, task: ArrayClassificationTask, data_gen: torch.Generator) -> int:
        """Copy ``task``'s (freshly initialised) problem in; return its position."""
        self._grow_data(len(task.x_train), len(task.x_val))
        pos = len(self.members)
        if pos == self.cap:
            self._alloc(2 * self.cap)
        self.members.append(slot)
        self.gens.append(data_gen)
        with torch.no_grad():
            for block, buf, param in zip(
                self.views(self.p), self.views(self.buf), task.params, strict=True
            ):
                block[pos] = param
                buf[pos] = 0.0
            _store_problem(self, pos, task, task.x_train, task.x_val)
        return pos

    def set_limit(self, pos: np.ndarray, limit: np.ndarray) -> None:
        """Set the divergence limits (``divergence_factor`` x reference loss) of positions."""
        self.limit[pos] = limit

    def fork(self, pos: np.ndarray) -> _MLPBucket:
        """Return a bucket of positions ``pos`` that trains exactly as they would next.

        Parameters and momentum are copied, minibatch generators cloned and the data shared,
        so training the fork (a fork test of the stability bound) leaves this bucket as it
        was.
        """
        pos = np.asarray(pos, dtype=np.int64)
        idx = torch.from_numpy(pos)
        fork = object.__new__(_MLPBucket)
        fork.__dict__.update(self.__dict__)
        fork.p = torch.cat([v.index_select(0, idx).reshape(-1) for v in self.views(self.p)])
        fork.buf = torch.cat([v.index_select(0, idx).reshape(-1) for v in self.views(self.buf)])
        fork.grads = torch.zeros_like(fork.p)
        _fork_settings(self, fork, pos)
        return fork

    def remove(self, pos: int) -> int | None:
        """Drop position ``pos``; the last problem moves into it. Return the moved slot."""
        last = len(self.members) - 1
        moved = None
        if pos != last:
            for t in (*self.views(self.p), *self.views(self.buf)):
                t[pos] = t[last]
            for t in (self.x, self.y, self.xv, self.yv, self.vw):
                t[pos] = t[last]
            for a in (self.n_train, self.batch, self.mu, self.wd, self.limit):
                a[pos] = a[last]
            self.members[pos] = self.members[last]
            self.gens[pos] = self.gens[last]
            moved = self.members[pos]
        self.members.pop()
        self.gens.pop()
        self.batch_max = int(self.batch[: len(self.members)].max()) if self.members else 1
        return moved

    # -- computation ----------------------------------------------------------------------
    def _forward(
        self, weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Layer inputs, pre-activations and log-probabilities of ``x`` ``(k, rows, in)``."""
        acts, pre = [x], []
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            z = torch.baddbmm(b.unsqueeze(1), acts[-1], w.transpose(1, 2))
            pre.append(z)
            if i < last:
                acts.append(torch.relu(z))
        return acts, pre, torch.log_softmax(pre[-1], dim=2)

    def _draws(self, k: int, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat row indices ``(T, k, bmax)`` of every step's minibatches, and row weights."""
        P = self.batch_max
        idx = torch.zeros(n_steps, k, P, dtype=torch.long)
        rows = torch.zeros(k, P, dtype=self.dtype)
        base = self.x.shape[1]
        data_pos = self.data_pos  # a fork's rows in its parent's data
        for pos in range(k):
            b = int(self.batch[pos])
            # the single task's draw: randint(len(x_train), (n_steps, batch_size))
            drawn = torch.randint(int(self.n_train[pos]), (n_steps, b), generator=self.gens[pos])
            offset = (pos if data_pos is None else int(data_pos[pos])) * base
            idx[:, pos, :b] = drawn + offset
            idx[:, pos, b:] = offset
            rows[pos, :b] = 1.0 / b
        return idx, rows

    def train(self, n_steps: int, lr: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``n_steps`` SGD steps of every position at ``lr`` (one rate per position).

        Returns per position the step losses ``(k, T)`` and squared gradient norms ``(k, T)``
        (the caller finds divergence from them).
        """
        k, T = len(self.members), n_steps
        idx, rows = self._draws(k, T)
        xs = self.x.view(-1, self.dims[0])
        ys = self.y.view(-1)
        dt = self.dtype
        pad = np.zeros(self.cap - k)
        rate = self.spread(np.concatenate([lr[:k], pad]))
        momentum = bool(np.any(self.mu[:k] > 0))
        decay = bool(np.any(self.wd[:k] > 0))
        keep = self.spread(1.0 - self.mu)
        wd = self.spread(self.wd)
        g2 = torch.zeros(T, k, dtype=dt)
        params, bufs, grads = self.p, self.buf, self.grads
        grads.zero_()  # unused positions stay finite
        blocks = [b[:k] for b in self.views(params)]
        weights, biases = blocks[0::2], blocks[1::2]
        # views made once per call (the tensors are updated in place): fewer ops per step
        weights_t = [w.transpose(1, 2) for w in weights]
        biases_u = [b.unsqueeze(1) for b in biases]
        gblocks = [b[:k] for b in self.views(grads)]
        gw, gb = gblocks[0::2], gblocks[1::2]
        gflat = [g.flatten(1) for g in gblocks]
        last = len(weights) - 1
        row_w = rows.unsqueeze(2)
        minus_one = torch.full((k, self.batch_max, 1), -1.0, dtype=dt)
        with torch.no_grad():
            # every step's minibatches at once; the label's log-probability per row and step
            flat = idx.view(-1)
            xb = xs.index_select(0, flat).view(T, k, -1, self.dims[0])
            yb = ys.index_select(0, flat).view(T, k, -1, 1)
            picked = torch.empty(T, k, self.batch_max, 1, dtype=dt)
            for t in range(T):
                y = yb[t]
                acts = [xb[t]]
                for i in range(last):
                    acts.append(torch.baddbmm(biases_u[i], acts[i], weights_t[i]).relu_())
                logp = torch.baddbmm(biases_u[last], acts[last], weights_t[last])
                logp = torch.log_softmax(logp, dim=2)
                torch.gather(logp, 2, y, out=picked[t])
                dz = logp.exp_()
                dz.scatter_add_(2, y, minus_one)
                dz.mul_(row_w)
                for i in range(last, -1, -1):
                    torch.bmm(dz.transpose(1, 2), acts[i], out=gw[i])
                    torch.sum(dz, 1, out=gb[i])
                    if i:  # ReLU backward: through where the layer's output is positive
                        dz = torch.ops.aten.threshold_backward(
                            torch.bmm(dz, weights[i]), acts[i], 0
                        )
                if decay:
                    grads.addcmul_(params, wd)
                g2_t = g2[t]
                for g in gflat:  # in block order, whatever the bucket's size
                    g2_t += torch.linalg.vecdot(g, g)
                step = grads
                if momentum:
                    bufs.lerp_(grads, keep)
                    step = bufs
                params.addcmul_(step, rate, value=-1.0)
            losses = torch.mul(picked.squeeze(3), rows).sum(2).neg_()
        return {"losses": losses.T.double().numpy(), "g2": g2.T.double().numpy()}

    def minibatch_losses(self, n_steps: int) -> np.ndarray:
        """Losses ``(k, T)`` of the next ``n_steps`` minibatches at the current parameters.

        What :meth:`train` at LR 0 would log (its minibatch streams advance alike), by
        forward passes only: the paired reference of a fork test.
        """
        k, T = len(self.members), n_steps
        idx, rows = self._draws(k, T)
        flat = idx.transpose(0, 1).reshape(-1)  # per position, its T minibatches in a row
        x = self.x.view(-1, self.dims[0]).index_select(0, flat).view(k, -1, self.dims[0])
        y = self.y.view(-1).index_select(0, flat).view(k, -1, 1)
        blocks = [b[:k] for b in self.views(self.p)]
        with torch.no_grad():
            _, _, logp = self._forward(blocks[0::2], blocks[1::2], x)
            picked = logp.gather(2, y).view(k, T, -1)
            losses = torch.mul(picked, rows.unsqueeze(1)).sum(2).neg_()
        return losses.double().numpy()

    def evaluate(self, pos: np.ndarray) -> np.ndarray:
        """Held-out mean cross-entropy of ``pos`` (all positions' forward runs at once)."""
        k = len(self.members)
        if not k or not len(pos):
            return np.zeros(len(pos))
        with torch.no_grad():
            blocks = [b[:k] for b in self.views(self.p)]
            _, _, logp = self._forward(blocks[0::2], blocks[1::2], self.xv[:k])
            picked = logp.gather(2, self.yv[:k].unsqueeze(2)).squeeze(2)
            loss = -(picked * self.vw[:k]).sum(1)
        return loss.double().numpy()[pos]


class _CNN1DBucket:
    """Stacked MNIST-1D CNNs of one width (strided convolutions as unfold + ``baddbmm``).

    The parameters of every position are stacked per tensor and the forward pass of all
    positions runs as one computation (each convolution: pad, unfold, one batched product
    over the positions; then the linear head). One autograd pass of the sum of the
    positions' (row-weighted) minibatch losses gives every position its own gradient, since
    positions share nothing. Data, minibatch streams and settings are per position, as in
    :class:`_MLPBucket`.
    """

    def __init__(
        self, proto: ArrayClassificationTask, dtype: torch.dtype, capacity: int = 4
    ) -> None:
        self.dtype = dtype
        self.shapes = [tuple(p.shape) for _, p in proto._named]
        self.in_shape = tuple(proto.x_train.shape[1:])
        self.members: list[int] = []
        self.gens: list[torch.Generator] = []
        self.data_pos: np.ndarray | None = None  # set on forks (see fork)
        self.cap = 0
        self.n_train_max = 1
        self.n_val_max = 1
        self.batch_max = 1
        self._alloc(capacity)

        self.convs = [
            (m.kernel, m.stride, m.padding)
            for m in proto.model.features  # type: ignore[union-attr]
            if isinstance(m, StridedConv1d)
        ]

    def _logits(self, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits ``(k, rows, classes)`` of ``x`` ``(k, rows, length)`` for stacked params."""
        k, rows = x.shape[0], x.shape[1]
        h = x.reshape(k * rows, -1, 1)
        for i, (kernel, stride, pad) in enumerate(self.convs):
            w, b = params[2 * i], params[2 * i + 1]
            u = F.pad(h, (0, 0, pad, pad)).unfold(1, kernel, stride)  # k*rows, n, c, kernel
            n = u.shape[1]
            z = torch.baddbmm(b.unsqueeze(1), u.reshape(k, rows * n, -1), w.transpose(1, 2))
            h = torch.relu(z).view(k * rows, n, -1)
        w, b = params[-2], params[-1]
        return torch.baddbmm(b.unsqueeze(1), h.reshape(k, rows, -1), w.transpose(1, 2))

    def _alloc(self, cap: int) -> None:
        k = len(self.members)
        old = self.__dict__.copy() if self.cap else None
        dt = self.dtype
        self.p = [torch.zeros(cap, *s, dtype=dt) for s in self.shapes]
        self.buf = [torch.zeros(cap, *s, dtype=dt) for s in self.shapes]
        self.x = torch.zeros(cap, self.n_train_max, *self.in_shape, dtype=dt)
        self.y = torch.zeros(cap, self.n_train_max, dtype=torch.long)
        self.xv = torch.zeros(cap, self.n_val_max, *self.in_shape, dtype=dt)
        self.yv = torch.zeros(cap, self.n_val_max, dtype=torch.long)
        self.vw = torch.zeros(cap, self.n_val_max, dtype=dt)
        self.n_train = np.ones(cap, dtype=np.int64)
        self.batch = np.ones(cap, dtype=np.int64)
        self.mu = np.zeros(cap)
        self.wd = np.zeros(cap)
        self.limit = np.full(cap, np.inf)
        if old is not None and k:
            for name in ("p", "buf"):
                for new, prev in zip(getattr(self, name), old[name], strict=True):
                    new[:k] = prev[:k]
            for name in ("x", "y", "xv", "yv", "vw"):
                prev = old[name]
                getattr(self, name)[:k, : prev.shape[1]] = prev[:k]
            for name in ("n_train", "batch", "mu", "wd", "limit"):
                getattr(self, name)[:k] = old[name][:k]
        self.cap = cap

    def add(self, slot: int, task: ArrayClassificationTask, data_gen: torch.Generator) -> int:
        """Copy ``task``'s (freshly initialised) problem in; return its position."""
        n, nv = len(task.x_train), len(task.x_val)
        if n > self.n_train_max or nv > self.n_val_max:
            self.n_train_max = max(self.n_train_max, n)
            self.n_val_max = max(self.n_val_max, nv)
            self._alloc(self.cap)
        pos = len(self.members)
        if pos == self.cap:
            self._alloc(2 * self.cap)
        self.members.append(slot)
        self.gens.append(data_gen)
        with torch.no_grad():
            for block, buf, param in zip(self.p, self.buf, task.params, strict=True):
                block[pos] = param
                buf[pos] = 0.0
            _store_problem(self, pos, task, task.prepare(task.x_train), task.prepare(task.x_val))
        return pos

    set_limit = _MLPBucket.set_limit
    _draws = _MLPBucket._draws

    def fork(self, pos: np.ndarray) -> _CNN1DBucket:
        """Return a bucket of positions ``pos`` that trains as they would next (as MLPs do)."""
        pos = np.asarray(pos, dtype=np.int64)
        idx = torch.from_numpy(pos)
        fork = object.__new__(_CNN1DBucket)
        fork.__dict__.update(self.__dict__)
        fork.p = [t.index_select(0, idx) for t in self.p]
        fork.buf = [t.index_select(0, idx) for t in self.buf]
        _fork_settings(self, fork, pos)
        return fork

    def remove(self, pos: int) -> int | None:
        """Drop position ``pos``; the last problem moves into it. Return the moved slot."""
        last = len(self.members) - 1
        moved = None
        if pos != last:
            for t in (*self.p, *self.buf, self.x, self.y, self.xv, self.yv, self.vw):
                t[pos] = t[last]
            for a in (self.n_train, self.batch, self.mu, self.wd, self.limit):
                a[pos] = a[last]
            self.members[pos] = self.members[last]
            self.gens[pos] = self.gens[last]
            moved = self.members[pos]
        self.members.pop()
        self.gens.pop()
        self.batch_max = int(self.batch[: len(self.members)].max()) if self.members else 1
        return moved

    def train(self, n_steps: int, lr: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``n_steps`` SGD steps of every position at ``lr`` (as :class:`_MLPBucket`)."""
        k, T = len(self.members), n_steps
        idx, rows = self._draws(k, T)
        xs = self.x.view(-1, *self.in_shape)
        ys = self.y.view(-1)
        dt = self.dtype
        momentum = bool(np.any(self.mu[:k] > 0))
        decay = bool(np.any(self.wd[:k] > 0))
        rate = torch.as_tensor(lr[:k], dtype=dt)
        keep = torch.as_tensor(1.0 - self.mu[:k], dtype=dt)
        wd = torch.as_tensor(self.wd[:k], dtype=dt)
        params = [p[:k] for p in self.p]
        bufs = [b[:k] for b in self.buf]
        shaped = [(k,) + (1,) * len(s) for s in self.shapes]
        losses = torch.empty(T, k, dtype=dt)
        g2 = torch.zeros(T, k, dtype=dt)
        for t in range(T):
            flat = idx[t].view(-1)
            x = xs.index_select(0, flat).view(k, -1, *self.in_shape)
            y = ys.index_select(0, flat).view(k, -1)
            leaves = [p.detach().requires_grad_(True) for p in params]
            with torch.enable_grad():
                logp = torch.log_softmax(self._logits(leaves, x), dim=2)
                loss = -(logp.gather(2, y.unsqueeze(2)).squeeze(2) * rows).sum(1)
                grads = torch.autograd.grad(loss.sum(), leaves)
            losses[t] = loss.detach()
            with torch.no_grad():
                for i, (p, g, b) in enumerate(zip(params, grads, bufs, strict=True)):
                    if decay:
                        g = g + p * wd.view(shaped[i])
                    g2[t] += torch.linalg.vecdot(g.flatten(1), g.flatten(1))
                    if momentum:
                        b.lerp_(g, keep.view(shaped[i]))
                        g = b
                    p.sub_(g * rate.view(shaped[i]))
        return {"losses": losses.T.double().numpy(), "g2": g2.T.double().numpy()}

    def minibatch_losses(self, n_steps: int) -> np.ndarray:
        """Losses ``(k, T)`` of the next ``n_steps`` minibatches (as :class:`_MLPBucket`)."""
        k, T = len(self.members), n_steps
        idx, rows = self._draws(k, T)
        flat = idx.transpose(0, 1).reshape(-1)  # per position, its T minibatches in a row
        x = self.x.view(-1, *self.in_shape).index_select(0, flat).view(k, -1, *self.in_shape)
        y = self.y.view(-1).index_select(0, flat).view(k, -1, 1)
        with torch.no_grad():
            logp = torch.log_softmax(self._logits([p[:k] for p in self.p], x), dim=2)
            picked = logp.gather(2, y).view(k, T, -1)
            losses = -(picked * rows.unsqueeze(1)).sum(2)
        return losses.double().numpy()

    def evaluate(self, pos: np.ndarray) -> np.ndarray:
        """Held-out mean cross-entropy of ``pos``."""
        k = len(self.members)
        if not k or not len(pos):
            return np.zeros(len(pos))
        with torch.no_grad():
            logits = self._logits([p[:k] for p in self.p], self.xv[:k])
            logp = torch.log_softmax(logits, dim=2)
            picked = logp.gather(2, self.yv[:k].unsqueeze(2)).squeeze(2)
            loss = -(picked * self.vw[:k]).sum(1)
        return loss.double().numpy()[pos]


class _SingleBucket:
    """Problems trained one by one with their task's own :meth:`~TorchTask.train`."""

    def __init__(self) -> None:
        self.members: list[int] = []
        self.tasks: list[TorchTask] = []

    def add(self, slot: int, task: TorchTask, data_gen: torch.Generator) -> int:
        """Keep ``task`` (initialised; its minibatch stream becomes ``data_gen``)."""
        task.data_gen = data_gen
        task._eval_cache = None
        self.members.append(slot)
        self.tasks.append(task)
        return len(self.members) - 1

    def set_limit(self, pos: np.ndarray, limit: np.ndarray) -> None:
        """Set the reference losses so that the tasks' own limits are ``limit``."""
        for p, lim in zip(pos, limit, strict=True):
            task = self.tasks[int(p)]
            task._ref_loss = float(lim) / task.divergence_factor

    def remove(self, pos: int) -> int | None:
        """Drop position ``pos``; the last problem moves into it. Return the moved slot."""
        last = len(self.members) - 1
        moved = None
        if pos != last:
            self.members[pos] = self.members[last]
            self.tasks[pos] = self.tasks[last]
            moved = self.members[pos]
        self.members.pop()
        self.tasks.pop()
        return moved

    def train(self, n_steps: int, lr: np.ndarray) -> dict[str, Any]:
        """Train every problem ``n_steps`` at its own rate."""
        return {"stats": [t.train(n_steps, float(r)) for t, r in zip(self.tasks, lr, strict=True)]}

    def evaluate(self, pos: np.ndarray) -> np.ndarray:
        """Held-out losses of ``pos``."""
        return np.array([self.tasks[int(p)].evaluate() for p in pos], dtype=np.float64)


class StackedNetworks:
    """``n_slots`` network-training problems, one stacked model per shape bucket.

    Args:
        n_slots: number of slots ``B``.
        dtype: ``torch.float32`` (default) or ``torch.float64`` for the stacked buckets
            (problems in single buckets train in their task's own dtype).
        divergence_factor: a minibatch loss above this multiple of the slot's held-out loss
            at initialisation (or a non-finite one) counts as divergence.
        stability: the settings of the measured stability bound (:meth:`lr_bound`): a
            :class:`~metasched.stability.ForkTestEstimator` used as a template (its own
            state is not touched); ``None`` (default): no bound (``NaN``). Assignable later.

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.mlp import MLPConfig, MLPTask
        >>> nets = StackedNetworks(2)
        >>> for slot in range(2):
        ...     task = MLPTask(MLPConfig(width=16, depth=1, batch_size=8, seed=slot))
        ...     loss0 = nets.load(slot, task, np.random.default_rng(slot))
        >>> stats = nets.train(50, np.array([0.1, 0.2]))
        >>> stats.n_done.tolist(), bool((nets.evaluate() < loss0).all())
        ([50, 50], True)
    """

    def __init__(
        self,
        n_slots: int,
        *,
        dtype: torch.dtype = torch.float32,
        divergence_factor: float = 1e3,
        stability: ForkTestEstimator | None = None,
    ) -> None:
        if not isinstance(n_slots, int | np.integer) or n_slots < 1:
            raise ValueError(f"n_slots must be a positive integer, got {n_slots!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
        self.n_slots = int(n_slots)
        self.dtype = dtype
        self.divergence_factor = float(divergence_factor)
        self.buckets: dict[tuple[Any, ...], _MLPBucket | _SingleBucket] = {}
        self._bucket: list[tuple[Any, ...] | None] = [None] * self.n_slots
        self._pos = np.full(self.n_slots, -1, dtype=np.int64)
        self._active = np.zeros(self.n_slots, dtype=bool)
        self.stability = stability
        B = self.n_slots
        # per-slot state of the measured bound (reset when a slot is loaded)
        self._anchor = np.full(B, np.nan)  # the task's default_lr: the grid's anchor
        self._grid = np.full(B, np.nan)  # half-octave index of the last bound (warm start)
        self._bound = np.full(B, np.nan)  # last measured bound (NaN: none yet)
        self._bound_calls = np.zeros(B, dtype=np.int64)
        self._bound_cost = np.zeros(B)
        self._bound_cost_last = np.zeros(B)
        self._single_est: dict[int, ForkTestEstimator] = {}

    @property
    def stability(self) -> ForkTestEstimator | None:
        """The settings of the measured bound (``None``: no bound)."""
        return self._stability

    @stability.setter
    def stability(self, value: ForkTestEstimator | None) -> None:
        if value is not None and not isinstance(value, ForkTestEstimator):
            raise ValueError(
                f"stability must be a ForkTestEstimator or None, got {type(value).__name__}"
            )
        self._stability = value

    @property
    def active(self) -> np.ndarray:
        """``(B,)`` whether each slot holds a problem that has not diverged."""
        return self._active.copy()

    def _check_slot(self, slot: int) -> int:
        if not isinstance(slot, int | np.integer) or not 0 <= slot < self.n_slots:
            raise IndexError(f"slot must be in [0, {self.n_slots}), got {slot!r}")
        return int(slot)

    def unload(self, slot: int) -> None:
        """Empty ``slot``."""
        slot = self._check_slot(slot)
        key = self._bucket[slot]
        if key is None:
            return
        bucket = self.buckets[key]
        moved = bucket.remove(int(self._pos[slot]))
        if moved is not None:
            self._pos[moved] = self._pos[slot]
        if not bucket.members and key[0] == "single":
            del self.buckets[key]
        self._bucket[slot] = None
        self._pos[slot] = -1
        self._active[slot] = False
        self._forget_bound(slot)

    def _forget_bound(self, slot: int) -> None:
        """Start ``slot``'s bound afresh (cold grid search, cost from zero): a new problem."""
        self._grid[slot] = np.nan
        self._bound[slot] = np.nan
        self._bound_calls[slot] = 0
        self._bound_cost[slot] = 0.0
        self._bound_cost_last[slot] = 0.0
        self._single_est.pop(slot, None)

    def load(self, slot: int, task: TorchTask, generator: np.random.Generator) -> float:
        """Put ``task``'s problem into ``slot``, initialised like ``task.reset(generator)``.

        The generator is consumed exactly as :meth:`TorchTask.reset` consumes it. For a
        stacked bucket the task object only lends its data and settings (it can be reused);
        a single bucket keeps and trains it. Returns the held-out loss at initialisation.
        """
        slot = self._check_slot(slot)
        if not isinstance(task, TorchTask):
            raise ValueError(f"task must be a TorchTask, got {type(task).__name__}")
        self.unload(slot)
        data_gen = _init_like_reset(task, generator)
        key = bucket_key(task)
        bucket = self.buckets.get(key)
        if bucket is None:
            if key[0] == "mlp":
                bucket = _MLPBucket(key[1:], self.dtype)
            elif key[0] == "cnn1d":
                bucket = _CNN1DBucket(task, self.dtype)  # type: ignore[arg-type]
            else:
                bucket = _SingleBucket()
            self.buckets[key] = bucket
        pos = bucket.add(slot, task, data_gen)  # type: ignore[arg-type]
        self._bucket[slot] = key
        self._pos[slot] = pos
        loss = float(bucket.evaluate(np.array([pos]))[0])
        ref = loss if math.isfinite(loss) and loss > 0 else 1.0
        bucket.set_limit(np.array([pos]), np.array([self.divergence_factor * ref]))
        self._active[slot] = True
        self._anchor[slot] = float(task.default_lr())
        return loss

    def train(self, n_steps: int, lr: np.ndarray | float) -> BatchedStepStats:
        """Run ``n_steps`` SGD steps on every active slot at its own rate.

        A slot stops at its first divergent step (counted in ``n_done``, not updated), as
        :meth:`TorchTask.train` does, and is inactive afterwards.
        """
        if not isinstance(n_steps, int | np.integer) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        T, B = int(n_steps), self.n_slots
        lr = np.broadcast_to(np.asarray(lr, dtype=np.float64), (B,))
        if not np.all(np.isfinite(lr) & (lr >= 0)):
            raise ValueError(f"lr must be finite and non-negative, got {lr!r}")
        out = BatchedStepStats.empty(B, T)
        if T == 0:
            return out
        for bucket in self.buckets.values():
            members = np.array(bucket.members, dtype=np.int64)
            live = self._active[members]
            if not live.any():
                continue
            res = bucket.train(T, np.where(live, lr[members], 0.0))
            if "stats" in res:
                for slot, ok, st in zip(members, live, res["stats"], strict=True):
                    if ok:
                        out.losses[slot, : st.n_done] = st.losses
                        out.grad_norm[slot] = st.grad_norm
                        out.update_norm[slot] = st.update_norm
                        out.diverged[slot] = st.diverged
                        out.n_done[slot] = st.n_done
                continue
            losses, g2 = res["losses"], res["g2"]
            limit = bucket.limit[: len(members)]  # type: ignore[union-attr]
            with np.errstate(invalid="ignore"):
                bad = ~(losses <= limit[:, None])
            first = np.where(bad.any(1), bad.argmax(1), T)
            diverged = first < T
            done = np.minimum(first + 1, T)
            steps = np.arange(T)[None, :]
            with np.errstate(invalid="ignore", over="ignore"):
                g2_sum = np.where(steps < first[:, None], g2, 0.0).sum(1)
                n_upd = np.maximum(done - diverged, 1)
                g2_mean = g2_sum / n_upd
            diverged |= ~np.isfinite(g2_mean)
            sel = members[live]
            out.losses[sel] = np.where(steps < done[:, None], losses, np.nan)[live]
            out.grad_norm[sel] = np.where(np.isfinite(g2_mean), np.sqrt(g2_mean), np.inf)[live]
            out.update_norm[sel] = np.nan
            out.diverged[sel] = diverged[live]
            out.n_done[sel] = done[live]
        self._active &= ~out.diverged
        return out

    def evaluate(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Held-out losses of all slots (or of ``slots``); NaN for empty slots."""
        want = np.arange(self.n_slots) if slots is None else np.asarray(slots, dtype=np.int64)
        out = np.full(want.size, np.nan)
        for key, bucket in self.buckets.items():
            idx = np.flatnonzero([self._bucket[s] == key for s in want])
            if idx.size:
                out[idx] = bucket.evaluate(self._pos[want[idx]])
        return out

    def lr_bound(self, slots: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Per-slot measured stability bound, amortised and batched (``NaN`` without one).

        The algorithm of :class:`~metasched.stability.ForkTestEstimator`, slot for slot: each
        call counts as one decision of every requested active slot; a slot is re-measured on
        every ``every``-th of its calls since it was loaded (the first included) and keeps
        its last bound in between. A measurement forks the slot's problem (parameters,
        momentum, minibatch stream) from its current state, runs ``steps`` SGD steps at LR 0
        (the paired reference) and at candidate LRs on the half-octave grid anchored at the
        task's ``default_lr``, starting from the slot's previous grid point (climbing at most
        ``max_up`` steps, or ``max_up_cold`` the first time, while the candidate passes;
        descending while it fails), and leaves the slot untouched. The slots of one stacked
        bucket due at the same call are measured together: each round trains one fork of
        all of them still searching, each at its own candidate, as one stacked computation.
        Problems in single buckets use their own estimator. The cost, in SGD steps of the
        slot (the fork steps the single estimator would count), is in :attr:`bound_cost_last`
        and :attr:`bound_cost_steps`. Empty, diverged and unrequested slots are not measured
        (``NaN``).
        """
        want = np.arange(self.n_slots) if slots is None else np.asarray(slots, dtype=np.int64)
        for s in want:
            self._check_slot(s)
        self._bound_cost_last[:] = 0.0
        est = self.stability
        if est is None:
            return np.full(want.size, np.nan)
        live = np.unique(want[self._active[want]])
        due = live[np.isnan(self._bound[live]) | (self._bound_calls[live] % est.every == 0)]
        self._bound_calls[live] += 1
        groups: dict[tuple[Any, ...], list[int]] = {}
        for s in due:
            key = self._bucket[s]
            assert key is not None
            groups.setdefault(key, []).append(int(s))
        for key, members in groups.items():
            bucket = self.buckets[key]
            if isinstance(bucket, _SingleBucket):
                for s in members:
                    self._measure_single(bucket, s, est)
            else:
                self._measure_stacked(bucket, np.array(members, dtype=np.int64), est)
        return np.where(self._active[want], self._bound[want], np.nan)

    @property
    def bound_cost_steps(self) -> np.ndarray:
        """``(B,)`` SGD steps each slot's bound measurements cost since it was loaded."""
        return self._bound_cost.copy()

    @property
    def bound_cost_last(self) -> np.ndarray:
        """``(B,)`` SGD steps the last :meth:`lr_bound` call spent per slot (0: not measured)."""
        return self._bound_cost_last.copy()

    def _spend(self, slots: np.ndarray | int, cost: np.ndarray | float) -> None:
        self._bound_cost[slots] += cost
        self._bound_cost_last[slots] = cost

    def _measure_single(self, bucket: _SingleBucket, slot: int, est: ForkTestEstimator) -> None:
        """Measure a single-bucket slot with its own estimator (a copy of the settings)."""
        own = self._single_est.get(slot)
        if own is None:
            own = ForkTestEstimator(
                steps=est.steps,
                rise=est.rise,
                max_up=est.max_up,
                max_up_cold=est.max_up_cold,
                every=est.every,
                anchor=est.anchor,
            )
            self._single_est[slot] = own
        m = own.measure(bucket.tasks[int(self._pos[slot])])
        self._bound[slot] = m.bound
        self._spend(slot, m.cost_steps)

    def _measure_stacked(
        self, bucket: _MLPBucket | _CNN1DBucket, slots: np.ndarray, est: ForkTestEstimator
    ) -> None:
        """Run the fork-test search of ``slots`` of one stacked bucket, all slots per round."""
        pos = self._pos[slots]
        n, T = slots.size, est.steps
        limit = bucket.limit[pos]
        anchor = np.full(n, est.anchor) if est.anchor is not None else self._anchor[slots]
        width = min(3, T)
        window = np.ones(width) / width
        cost = np.full(n, float(T))

        # the paired reference: the same minibatches at LR 0 (forward passes only)
        base = bucket.fork(pos).minibatch_losses(T)
        ref = [np.convolve(row, window, mode="valid") for row in base]

        def passes(sel: np.ndarray, grid: np.ndarray) -> np.ndarray:
            # the rate exactly as the single estimator computes it, anchor * 2 ** (k / 2)
            lr = np.array([a * 2 ** (int(k) / 2) for a, k in zip(anchor[sel], grid, strict=True)])
            res = bucket.fork(pos[sel]).train(T, lr)
            losses, g2 = res["losses"], res["g2"]
            with np.errstate(invalid="ignore"):
                bad = ~(losses <= limit[sel, None])
            first = np.where(bad.any(1), bad.argmax(1), T)
            cost[sel] += np.minimum(first + 1, T)
            ok = ~bad.any(1) & np.isfinite(g2).all(1)
            for j, i in enumerate(sel):
                if ok[j]:
                    fork = np.convolve(losses[j], window, mode="valid")
                    ok[j] = bool(np.all(fork < est.rise * ref[i]))
            return ok

        warm = ~np.isnan(self._grid[slots])
        k = np.where(warm, np.nan_to_num(self._grid[slots]), 0).astype(np.int64)
        climbs = np.where(warm, est.max_up, est.max_up_cold)
        ok = passes(np.arange(n), k)
        up = ok & (climbs > 0)
        down = ~ok & (k > -40)
        while up.any() or down.any():
            sel = np.flatnonzero(up | down)
            rising = up[sel]
            res = passes(sel, np.where(rising, k[sel] + 1, k[sel] - 1))
            su, ru = sel[rising], res[rising]  # climbing: keep the step if it passed
            k[su] += ru
            climbs[su] -= ru
            up[su] = ru & (climbs[su] > 0)
            sd, rd = sel[~rising], res[~rising]  # descending: stop at the first pass
            k[sd] -= 1
            ok[sd] = rd
            down[sd] = ~rd & (k[sd] > -40)
        bound = np.array(
            [
                a * 2 ** (int(kk) / 2) if (o or kk > -40) else 0.0
                for a, kk, o in zip(anchor, k, ok, strict=True)
            ]
        )
        self._grid[slots] = k
        self._bound[slots] = bound
        self._spend(slots, cost)

    def bucket_sizes(self) -> dict[tuple[Any, ...], int]:
        """Return the number of problems in each bucket (how well the batch is shared)."""
        return {k: len(b.members) for k, b in self.buckets.items()}
