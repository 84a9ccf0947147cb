"""Shared machinery of the small neural-network inner tasks (MLP, CNN, char transformer).

:class:`TorchTask` implements everything the :class:`~metasched.inner_tasks.base.InnerTask`
contract asks of a torch model trained by minibatch SGD, so that each concrete task only says
which model it trains and where its minibatches come from:

* **Parameters** are (re-)initialised in place at :meth:`~TorchTask.reset` from a
  ``torch.Generator`` derived from the ``reset(generator)`` argument: weights of dimension
  >= 2 are drawn ``N(0, init_scale^2 * 2 / fan_in)`` (He initialisation scaled by the
  instance's ``init_scale``), 1-D ``weight`` tensors (norm layers) start at 1, biases at 0.
  Subclasses can override :meth:`~TorchTask.init_parameter`. No global RNG is read or
  advanced, not even when the model is built.
* **SGD** with optional momentum, written as an exponential moving average of the gradient
  (``buf <- mu * buf + (1 - mu) * g``, ``p <- p - lr * buf``, i.e. torch's ``SGD`` with
  ``dampening = momentum``), so that the useful LR range does not move with the momentum;
  optional L2 weight decay is added to the gradient.
* **Gradients** come from autograd on the task's minibatch loss, except for plain
  Linear/ReLU classifiers (:func:`is_plain_mlp`: the ``mlp`` family and MNIST-1D MLPs),
  whose exact gradients a hand-written backward pass computes about twice as fast (autograd
  overhead dominates such tiny models). :meth:`TorchTask.loss_and_grads` is the one place
  both :meth:`~TorchTask.train` and the gradient interface get them from.
* **Snapshots** copy the parameters, the momentum buffers, the minibatch ``torch.Generator``
  state and the divergence reference, so restoring one and training again replays the same
  minibatches and gives bit-identical losses.
* **Divergence** is a non-finite minibatch loss, a loss above ``divergence_factor`` times the
  loss at initialisation, or a non-finite gradient; training stops at the first such step.
* **Threads**: a task never changes torch's process-wide thread setting on its own: it
  trains with whatever the process uses. Tiny models are overhead-bound, and torch's
  intra-op pool running beside numpy's OpenBLAS pool was seen to collapse throughput
  10-100x on two cores, so the processes metasched owns run one thread each: the
  ``metasched`` command (``METASCHED_THREADS=N`` overrides it) and the worker processes it
  starts (comparison pool, batched-env workers, ``SubprocVecEnv`` workers); parallelism
  comes from processes. In your own script, call ``torch.set_num_threads(1)`` and set
  ``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1`` (the Makefile does) for the
  same speed. ``num_threads=N`` is an explicit opt-in: that task then runs its calls with N
  torch threads and restores the previous setting after each.

:class:`ArrayClassificationTask` adds what the image / signal classification tasks share:
in-memory ``(x, y)`` training and validation tensors, minibatches drawn uniformly with
replacement, cross-entropy loss, and :meth:`~ArrayClassificationTask.evaluate` = the mean
cross-entropy over the held-out set.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from metasched.inner_tasks.base import InnerTask, StepStats
from metasched.inner_tasks.gradients import GradientTask, HyperparameterTask, UpdateResult
from metasched.stability import (
    CurvatureTask,
    ForkTestEstimator,
    MatVec,
    StabilityEstimator,
)

__all__ = [
    "ArrayClassificationTask",
    "TorchTask",
    "build_module",
    "check_fraction",
    "check_nonneg_float",
    "check_positive_int",
    "check_search_space",
    "choice",
    "flip_labels",
    "is_plain_mlp",
    "torch_generator",
]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int or raise a ``ValueError`` naming ``name`` and the value."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_nonneg_float(name: str, value: Any) -> float:
    """Return ``value`` as a float or raise a ``ValueError`` unless finite and >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any, *, one_ok: bool = False) -> float:
    """Return ``value`` as a float in ``[0, 1)`` (``[0, 1]`` with ``one_ok``) or raise."""
    v = check_nonneg_float(name, value)
    if v > 1 or (v == 1 and not one_ok):
        bound = "[0, 1]" if one_ok else "[0, 1)"
        raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    return v



def check_search_space(
    *,
    reference_lr: float,
    choices: Mapping[str, Sequence[Any]] | None = None,
    momenta: Sequence[float] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> float:
    """Validate a task family's search space; return ``reference_lr`` as a float.

    ``choices``: non-empty option lists of positive integers (widths, batch sizes, ...);
    ``momenta``: each in ``[0, 1)``; ``ranges``: ``(low, high)`` pairs with
    ``0 <= low <= high`` (a ``label_noise`` range must also end at most at 1). Every error is
    a ``ValueError`` naming the argument and its value.
    """
    for key, opts in (choices or {}).items():
        if not opts:
            raise ValueError(f"{key} must not be empty, got {opts!r}")
        for o in opts:
            check_positive_int(key, o)
    for m in momenta:
        check_fraction("momenta", m)
    for key, (lo, hi) in (ranges or {}).items():
        if not 0 <= lo <= hi:
            raise ValueError(f"{key} range must have 0 <= low <= high, got {(lo, hi)}")
        if key == "label_noise" and hi > 1:
            raise ValueError(f"label_noise must lie in [0, 1], got {(lo, hi)!r}")
    if not (math.isfinite(reference_lr) and reference_lr > 0):
        raise ValueError(f"reference_lr must be positive and finite, got {reference_lr!r}")
    return float(reference_lr)


def choice(rng: np.random.Generator, options: tuple[Any, ...]) -> Any:
    """Return one of ``options``, drawn uniformly from ``rng``."""
    return options[int(rng.integers(len(options)))]


def flip_labels(
    y: np.ndarray, fraction: float, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Return a copy of ``y`` with a ``fraction`` of labels replaced by random classes."""
    y = np.array(y, dtype=np.int64)
    if fraction > 0:
        mask = rng.random(len(y)) < fraction
        y[mask] = rng.integers(n_classes, size=int(mask.sum()))
    return y


def torch_generator(generator: np.random.Generator) -> torch.Generator:
    """Return a fresh CPU ``torch.Generator`` seeded from a numpy ``generator``."""
    return torch.Generator().manual_seed(int(generator.integers(2**63)))


def build_module(factory: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """Call ``factory(*args, **kwargs)`` without reading or advancing torch's global RNG.

    torch layers initialise themselves from the global generator when constructed; the
    tasks re-initialise every parameter from their own generator anyway, so construction
    runs inside :func:`torch.random.fork_rng`, which restores the global state afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        return factory(*args, **kwargs)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` torch threads; ``None`` leaves the process setting alone."""
    prev = torch.get_num_threads()
    if n is None or prev == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class TorchTask(InnerTask, GradientTask, HyperparameterTask, CurvatureTask):
    """An :class:`InnerTask` that trains a torch ``nn.Module`` with minibatch SGD.

    It also implements the optional capabilities of :mod:`metasched.inner_tasks.gradients`:
    per-step gradient access (:class:`GradientTask`: one block per parameter tensor, the
    identity projection, plain SGD without the task's momentum, weight decay included in the
    gradient; one step through it at a scalar step size equals ``train(1, lr)`` without
    momentum bit for bit) and tunable ``momentum`` / ``weight_decay``
    (:class:`HyperparameterTask`).

    Subclasses build the model in their constructor (through :func:`build_module`), assign it
    to :attr:`model`, then call :meth:`_setup`; they implement :meth:`draw_batches` (the
    randomness of ``n`` steps, drawn at once from :attr:`data_gen`), :meth:`batch_loss` (the
    loss of step ``t`` of those draws) and :meth:`evaluate`.

    Args:
        name: instance name.
        momentum: EMA momentum ``mu`` in ``[0, 1)`` (0: plain SGD).
        weight_decay: L2 coefficient added to the gradient.
        init_scale: multiplier of the He-initialisation standard deviation.
        divergence_factor: a minibatch loss above this multiple of the loss at
            initialisation (or a non-finite loss or gradient) counts as divergence.
        reference_lr: what :meth:`default_lr` returns (the env's ``lr_ref``, the runner's
            default base LR): a good constant LR for the family, not tuned per instance.
        num_threads: torch intra-op threads during :meth:`train` / :meth:`evaluate`;
            ``None`` (default): the process's setting, untouched (see the module docstring).
    """

    model: nn.Module
    #: one Hessian-vector product in SGD-step units (benchmarks/bench_stability.py measures it)
    hvp_cost: float = 3.0

    def __init__(
        self,
        *,
        name: str,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        init_scale: float = 1.0,
        divergence_factor: float = 1e3,
        reference_lr: float = 0.1,
        num_threads: int | None = None,
    ) -> None:
        self.name = name
        self.momentum = check_fraction("momentum", momentum)
        self.weight_decay = check_nonneg_float("weight_decay", weight_decay)
        self.init_scale = check_nonneg_float("init_scale", init_scale)
        if not (isinstance(divergence_factor, int | float) and divergence_factor > 1):
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
        self.divergence_factor = float(divergence_factor)
        if (
            not (isinstance(reference_lr, int | float) and math.isfinite(reference_lr))
            or not reference_lr > 0
        ):
            raise ValueError(f"reference_lr must be a positive finite number, got {reference_lr!r}")
        self.reference_lr = float(reference_lr)
        self.num_threads = (
            None if num_threads is None else check_positive_int("num_threads", num_threads)
        )
        self.data_gen = torch.Generator().manual_seed(0)
        self._ref_loss = 1.0
        self._eval_cache: float | None = None  # evaluate() at unchanged parameters
        #: when set, lr_bound() returns its (amortised) measured bound
        self.stability: ForkTestEstimator | StabilityEstimator | None = None

    def _setup(self) -> None:
        """Collect the trainable parameters of :attr:`model` and their momentum buffers."""
        self.model.requires_grad_(True)
        self._named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params: list[torch.Tensor] = [p for _, p in self._named]
        self.buffers: list[torch.Tensor] = [torch.zeros_like(p) for p in self.params]

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.params)

    # -- hooks -------------------------------------------------------------------------------
    @abc.abstractmethod
    def draw_batches(self, n_steps: int) -> Any:
        """Draw the minibatch randomness of ``n_steps`` steps from :attr:`data_gen`."""

    @abc.abstractmethod
    def batch_loss(self, draws: Any, t: int) -> torch.Tensor:
        """Return the (scalar, differentiable) minibatch loss of step ``t`` of ``draws``."""

    def loss_and_grads(self, draws: Any, t: int) -> tuple[float, list[torch.Tensor]]:
        """Return the loss of step ``t`` and its gradient per parameter (before weight decay).

        The default differentiates :meth:`batch_loss` with autograd; tasks with a cheaper
        exact gradient override it (both :meth:`train` and the gradient interface use it).
        """
        loss = self.batch_loss(draws, t)
        return loss.item(), list(torch.autograd.grad(loss, self.params))

    def init_parameter(self, name: str, param: torch.Tensor, gen: torch.Generator) -> None:
        """Initialise one parameter in place (see the module docstring for the default)."""
        if param.dim() >= 2:
            fan_in = param[0].numel()
            std = self.init_scale * math.sqrt(2.0 / fan_in)
            nn.init.normal_(param, 0.0, std, generator=gen)
        elif name.endswith("weight"):
            nn.init.ones_(param)
        else:
            nn.init.zeros_(param)

    # -- InnerTask ---------------------------------------------------------------------------
    def reset(self, generator: np.random.Generator) -> None:
        """Re-initialise parameters, zero the momentum, reseed the minibatch generator."""
        init_gen = torch_generator(generator)
        self.data_gen = torch_generator(generator)
        with torch.no_grad():
            for (name, p), buf in zip(self._named, self.buffers, strict=True):
                self.init_parameter(name, p, init_gen)
                buf.zero_()
        self._eval_cache = None
        loss = self.evaluate()
        self._ref_loss = loss if math.isfinite(loss) and loss > 0 else 1.0

    def train(self, n_steps: int, lr: float) -> StepStats:
        """Run ``n_steps`` SGD steps at ``lr``; stop at the first divergent step."""
        if not isinstance(n_steps, int | np.integer) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        if not (isinstance(lr, int | float | np.number) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite non-negative number, got {lr!r}")
        lr = float(lr)
        n_steps = int(n_steps)
        params, bufs = self.params, self.buffers
        mu, wd = self.momentum, self.weight_decay
        limit = self.divergence_factor * self._ref_loss
        losses = np.empty(n_steps)
        g2 = torch.zeros(())
        u2 = torch.zeros(())
        done, diverged = 0, False
        if n_steps:
            self._eval_cache = None
        with _threads(self.num_threads):
            draws = self.draw_batches(n_steps) if n_steps else None
            for t in range(n_steps):
                value, grads = self.loss_and_grads(draws, t)
                losses[t] = value
                done = t + 1
                if not value <= limit:  # also catches NaN
                    diverged = True
                    break
                with torch.no_grad():
                    if wd:
                        torch._foreach_add_(grads, params, alpha=wd)
                    g2 += torch.stack(torch._foreach_norm(grads)).square().sum()
                    if mu:
                        torch._foreach_lerp_(bufs, grads, 1.0 - mu)
                        u2 += torch.stack(torch._foreach_norm(bufs)).square().sum()
                        torch._foreach_add_(params, bufs, alpha=-lr)
                    else:  # the update is -lr * g: its norm follows from g2 at the end
                        torch._foreach_add_(params, grads, alpha=-lr)
        n_updates = done - int(diverged)
        g2_mean = float(g2) / max(n_updates, 1)
        u2_mean = (float(u2) if mu else float(g2)) * (lr * lr) / max(n_updates, 1)
        if not math.isfinite(g2_mean):
            diverged = True  # a non-finite gradient poisoned the parameters
        ups = int(np.count_nonzero(np.diff(losses[:done]) > 0)) if done > 1 else 0
        return StepStats(
            losses=losses[:done],
            grad_norm=math.sqrt(g2_mean) if math.isfinite(g2_mean) else math.inf,
            update_norm=math.sqrt(u2_mean) if math.isfinite(u2_mean) else math.inf,
            diverged=diverged,
            n_done=done,
            n_increasing=ups,
        )

    def snapshot(self) -> dict[str, Any]:
        """Copy parameters, momentum buffers, the minibatch RNG state and the reference loss."""
        return {
            "params": [p.detach().clone() for p in self.params],
            "buffers": [b.clone() for b in self.buffers],
            "data_gen": self.data_gen.get_state(),
            "ref_loss": self._ref_loss,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Return to a snapshot (copied in place; the snapshot itself stays reusable)."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, snap["params"])
            torch._foreach_copy_(self.buffers, snap["buffers"])
        self.data_gen = torch.Generator()
        self.data_gen.set_state(snap["data_gen"])
        self._ref_loss = snap["ref_loss"]
        self._eval_cache = None

    def default_lr(self) -> float:
        """Return the family's reference learning rate (see ``reference_lr``)."""
        return self.reference_lr

    @property
    def has_validation(self) -> bool:
        """True: :meth:`evaluate` measures a held-out set."""
        return True

    def evaluate(self) -> float:
        """Return the held-out loss (non-finite when the parameters are).

        The value is cached until the parameters change (``train``, ``restore``, ``reset``,
        or the gradient interface), so the driver's and the env's repeated calls are free.
        """
        if self._eval_cache is None:
            with _threads(self.num_threads), torch.no_grad():
                self._eval_cache = float(self.validation_loss())
        return self._eval_cache

    @abc.abstractmethod
    def validation_loss(self) -> float:
        """Compute the held-out loss (called without gradients, with the thread setting)."""

    # -- GradientTask ------------------------------------------------------------------------
    def parameter_blocks(self) -> list[tuple[str, tuple[int, ...]]]:
        """Return ``(name, shape)`` of every trainable tensor, in model order."""
        return [(n, tuple(p.shape)) for n, p in self._named]

    def get_parameters(self) -> list[np.ndarray]:
        """Return float32 copies of every trainable tensor."""
        return [p.detach().numpy().copy() for p in self.params]

    def set_parameters(self, params: Any) -> None:
        """Overwrite every trainable tensor (shapes as in :meth:`parameter_blocks`)."""
        if len(params) != len(self.params):
            raise ValueError(
                f"{self.name} has {len(self.params)} parameter blocks, got {len(params)}"
            )
        for (name, shape), p in zip(self.parameter_blocks(), params, strict=True):
            if tuple(np.shape(p)) != shape:
                raise ValueError(f"block {name} must have shape {shape}, got {np.shape(p)}")
        with torch.no_grad():
            for dst, src in zip(self.params, params, strict=True):
                dst.copy_(torch.as_tensor(np.asarray(src, dtype=np.float32)))
        self._eval_cache = None

    def sample_minibatch(self) -> Any:
        """Draw the next minibatch (the same draw as one step of :meth:`train`)."""
        with _threads(self.num_threads):
            return self.draw_batches(1)

    def minibatch_loss(self, batch: Any) -> float:
        """Return the training loss of ``batch`` at the current parameters."""
        with _threads(self.num_threads), torch.no_grad():
            return float(self.batch_loss(batch, 0))

    def minibatch_gradients(self, batch: Any) -> tuple[float, list[np.ndarray]]:
        """Return the loss of ``batch`` and its gradient per block (plus weight decay)."""
        with _threads(self.num_threads):
            value, grads = self.loss_and_grads(batch, 0)
            if self.weight_decay:
                with torch.no_grad():
                    torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        return value, [g.numpy() for g in grads]

    def apply_update(self, grads: Any, step_sizes: Any) -> UpdateResult:
        """Apply ``p <- p - s * g`` per block (no projection, no cap, no momentum)."""
        n = len(self.params)
        if len(grads) != n or len(step_sizes) != n:
            raise ValueError(
                f"{self.name} has {n} parameter blocks; got {len(grads)} gradients and "
                f"{len(step_sizes)} step sizes"
            )
        deltas, sens = [], []
        with torch.no_grad():
            for p, g, s in zip(self.params, grads, step_sizes, strict=True):
                gt = torch.as_tensor(np.asarray(g, dtype=np.float32))
                if gt.shape != p.shape:
                    raise ValueError(f"gradient of shape {tuple(gt.shape)} for {tuple(p.shape)}")
                before = p.detach().clone()
                if np.ndim(s) == 0:
                    p.add_(gt, alpha=-float(s))
                else:
                    p.sub_(torch.as_tensor(np.asarray(s, dtype=np.float32)) * gt)
                deltas.append((p - before).numpy())
                sens.append((-gt).numpy())
        self._eval_cache = None
        return UpdateResult(delta=deltas, sensitivity=sens)

    def is_diverged(self, loss: float | None = None) -> bool:
        """``train``'s rule: a loss above the limit (or NaN); non-finite parameters."""
        if loss is not None:
            return not loss <= self.divergence_factor * self._ref_loss
        return not all(bool(torch.isfinite(p).all()) for p in self.params)

    # -- HyperparameterTask ------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        """Return the EMA ``momentum`` and the L2 ``weight_decay``."""
        return {"momentum": self.momentum, "weight_decay": self.weight_decay}

    def set_hyperparameters(self, **values: float) -> None:
        """Set ``momentum`` (in ``[0, 1)``) and/or ``weight_decay`` (>= 0)."""
        unknown = set(values) - {"momentum", "weight_decay"}
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {sorted(unknown)}; {self.name} has momentum, weight_decay"
            )
        if "momentum" in values:
            self.momentum = check_fraction("momentum", values["momentum"])
        if "weight_decay" in values:
            self.weight_decay = check_nonneg_float("weight_decay", values["weight_decay"])

    # -- measured stability bound (metasched.stability) --------------------------------------
    def lr_bound(self) -> float | None:
        """Return the measured bound if :attr:`stability` holds an estimator (amortised), else None.

        Attach one with ``task.stability = make_estimator("fork")`` (or ``"hessian"``, see
        :mod:`metasched.stability`); each call counts as one decision of its ``every``.
        """
        if self.stability is None:
            return None
        with _threads(self.num_threads):
            return self.stability.bound(self)

    def measured_lr_bound(
        self, estimator: ForkTestEstimator | StabilityEstimator | None = None
    ) -> float:
        """Measure the stability bound now.

        Uses ``estimator``, else :attr:`stability`, else a fresh
        :class:`~metasched.stability.ForkTestEstimator` (the validated default).
        """
        est = estimator or self.stability or ForkTestEstimator()
        with _threads(self.num_threads):
            return est.measure(self).bound

    def curvature_batches(self, n: int, generator: torch.Generator) -> list[Any]:
        """Draw ``n`` training minibatches from ``generator`` (not from :attr:`data_gen`)."""
        saved = self.data_gen
        self.data_gen = generator
        try:
            draws = self.draw_batches(n)
        finally:
            self.data_gen = saved
        return [(draws, t) for t in range(n)]

    def hessian_operator(self, batch: Any) -> tuple[MatVec, int, torch.dtype]:
        """Minibatch Hessian (plus weight decay) by double backward through :meth:`batch_loss`."""
        draws, t = batch
        params = self.params
        # the fused CPU attention kernels have no double backward; the math kernel has
        with sdpa_kernel(SDPBackend.MATH):
            grads = torch.autograd.grad(self.batch_loss(draws, t), params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        sizes = [p.numel() for p in params]
        wd = self.weight_decay

        def matvec(v: torch.Tensor) -> torch.Tensor:
            hv = torch.autograd.grad(flat, params, grad_outputs=v, retain_graph=True)
            out = torch.cat([h.reshape(-1) for h in hv]).detach()
            return out + wd * v if wd else out

        return matvec, sum(sizes), flat.dtype

    def stability_momentum(self) -> float:
        """Return the task's EMA momentum."""
        return self.momentum

    def hvp_step_cost(self) -> float:
        """One Hessian-vector product in SGD steps (``hvp_cost``, measured per family)."""
        return self.hvp_cost


def is_plain_mlp(task: TorchTask) -> bool:
    """Whether ``task`` is an array classifier whose model is Linear / ReLU layers only.

    Such tasks train with hand-written backprop (:func:`_mlp_loss_and_grads`) and, in
    :func:`~metasched.inner_tasks.multicopy.train_copies`, with stacked weights.
    """
    model = task.model
    if not isinstance(task, ArrayClassificationTask) or not isinstance(model, nn.Sequential):
        return False
    if type(task).batch_loss is not ArrayClassificationTask.batch_loss:
        return False
    if type(task).prepare is not ArrayClassificationTask.prepare:
        return False
    layers = list(model)
    return (
        len(layers) % 2 == 1
        and all(isinstance(m, nn.Linear) and m.bias is not None for m in layers[::2])
        and all(isinstance(m, nn.ReLU) for m in layers[1::2])
        and task.x_train.dtype == torch.float32
    )


def _mlp_loss(
    params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Mean cross-entropy of a Linear/ReLU MLP (``params`` = weight, bias, weight, ...).

    Returns the loss, the layer inputs, the pre-activations and the log-probabilities.
    """
    weights, biases = params[0::2], params[1::2]
    acts, pre = [x], []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        z = torch.addmm(b, acts[-1], w.t())
        pre.append(z)
        if i < len(weights) - 1:
            acts.append(torch.relu(z))
    logp = torch.log_softmax(pre[-1], dim=1)
    loss = -logp.gather(1, y.unsqueeze(1)).mean()
    return loss, acts, pre, logp


def _mlp_loss_and_grads(
    params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, list[torch.Tensor]]:
    """Loss and exact gradients of :func:`_mlp_loss` by the chain rule (no autograd graph).

    ``dz_L = (softmax(z_L) - onehot(y)) / B``, ``dW_l = dz_l^T h_{l-1}``,
    ``db_l = sum_batch dz_l``, ``dz_{l-1} = (dz_l W_l) * [z_{l-1} > 0]``.
    """
    loss, acts, pre, logp = _mlp_loss(params, x, y)
    weights = params[0::2]
    dz = logp.exp()
    dz[torch.arange(len(y)), y] -= 1.0
    dz.mul_(1.0 / len(y))
    grads: list[torch.Tensor] = [torch.empty(0)] * len(params)
    for i in range(len(weights) - 1, -1, -1):
        grads[2 * i] = dz.t().mm(acts[i])
        grads[2 * i + 1] = dz.sum(0)
        if i:
            dz = dz.mm(weights[i]).mul_(pre[i - 1] > 0)
    return loss.item(), grads


def _input_tensor(x: np.ndarray) -> torch.Tensor:
    arr = np.asarray(x)
    dtype = torch.uint8 if arr.dtype == np.uint8 else torch.float32
    return torch.tensor(arr, dtype=dtype)


class ArrayClassificationTask(TorchTask):
    """A classifier trained on in-memory arrays with cross-entropy loss.

    Args:
        model: the network (built with :func:`build_module`); its output is ``(batch, k)``
            logits.
        x_train, y_train: training inputs and integer labels (possibly noisy). ``uint8``
            inputs are stored as they are (4x less memory) and turned into model inputs per
            minibatch by :meth:`prepare`; others are stored as float32.
        x_val, y_val: held-out inputs and labels.
        batch_size: examples per minibatch, drawn uniformly with replacement.
        eval_chunk: examples per forward pass in :meth:`evaluate`.
        **kwargs: the :class:`TorchTask` arguments.
    """

    def __init__(
        self,
        model: nn.Module,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        *,
        batch_size: int,
        eval_chunk: int = 2048,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.eval_chunk = check_positive_int("eval_chunk", eval_chunk)
        self.x_train = _input_tensor(x_train)
        self.y_train = torch.tensor(np.asarray(y_train), dtype=torch.long)
        self.x_val = _input_tensor(x_val)
        self.y_val = torch.tensor(np.asarray(y_val), dtype=torch.long)
        for what, x, y in (("train", self.x_train, self.y_train), ("val", self.x_val, self.y_val)):
            if len(x) == 0 or len(x) != len(y):
                raise ValueError(
                    f"{what} inputs and labels must be non-empty and of equal length, "
                    f"got {len(x)} and {len(y)}"
                )
        self.model = model
        self._setup()
        self._plain_mlp = is_plain_mlp(self)

    def to_float64(self) -> ArrayClassificationTask:
        """Turn this task into float64 in place (autograd path) and return it.

        The model, the inputs and later initialisations become float64, with parameters
        still drawn in float32 and then widened, so a float64 copy starts from the same
        weights as the float32 task: the reference the stacked and batched computations are
        checked against.
        """
        self.model.double()
        self.x_train = self.x_train.double()
        self.x_val = self.x_val.double()
        self._setup()
        self._plain_mlp = False  # autograd, not the hand-written backprop: the reference
        draw = self.init_parameter

        def init_parameter(name: str, param: torch.Tensor, gen: torch.Generator) -> None:
            tmp = torch.empty(param.shape, dtype=torch.float32)
            draw(name, tmp, gen)
            with torch.no_grad():
                param.copy_(tmp)

        self.init_parameter = init_parameter  # type: ignore[method-assign]
        return self

    def batches_per_epoch(self) -> float:
        """Return training-set size over minibatch size."""
        return len(self.x_train) / self.batch_size

    def draw_batches(self, n_steps: int) -> torch.Tensor:
        """Return the indices of ``n_steps`` minibatches, uniform with replacement."""
        return torch.randint(len(self.x_train), (n_steps, self.batch_size), generator=self.data_gen)

    def batch_loss(self, draws: torch.Tensor, t: int) -> torch.Tensor:
        """Cross-entropy of minibatch ``t``."""
        idx = draws[t]
        if self._plain_mlp:
            # read the layers' current tensors (functional_call may have swapped them)
            params = [p for m in list(self.model)[::2] for p in (m.weight, m.bias)]
            return _mlp_loss(params, self.x_train[idx], self.y_train[idx])[0]
        return F.cross_entropy(self.model(self.prepare(self.x_train[idx])), self.y_train[idx])

    def loss_and_grads(self, draws: Any, t: int) -> tuple[float, list[torch.Tensor]]:
        """Loss and gradients; Linear/ReLU models use hand-written backprop (~2x faster)."""
        if not self._plain_mlp:
            return super().loss_and_grads(draws, t)
        idx = draws[t]
        with torch.no_grad():
            return _mlp_loss_and_grads(self.params, self.x_train[idx], self.y_train[idx])

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Turn stored inputs into model inputs (identity; ``uint8`` data override it)."""
        return x

    def _chunks(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        for i in range(0, len(x), self.eval_chunk):
            yield x[i : i + self.eval_chunk], y[i : i + self.eval_chunk]

    def validation_loss(self) -> float:
        """Mean cross-entropy over the held-out set."""
        total = 0.0
        for xb, yb in self._chunks(self.x_val, self.y_val):
            logits = self.model(self.prepare(xb))
            total += float(F.cross_entropy(logits, yb, reduction="sum"))
        return total / len(self.x_val)

    def accuracy(self, split: str = "val") -> float:
        """Classification accuracy on the ``val`` (default) or ``train`` set."""
        if split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {split!r}")
        x, y = (self.x_val, self.y_val) if split == "val" else (self.x_train, self.y_train)
        correct = 0
        with _threads(self.num_threads), torch.no_grad():
            for xb, yb in self._chunks(x, y):
                correct += int((self.model(self.prepare(xb)).argmax(1) == yb).sum())
        return correct / len(x)
