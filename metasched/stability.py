"""A measured stability bound on the learning rate, for tasks without an analytic one.

NMF knows its stability bound analytically; a network does not. This module measures the
LR at which SGD *as the task runs it* (its minibatch size, its momentum) stops being
stable, with two estimators that share one interface (``measure(task)`` ->
:class:`StabilityMeasurement`, ``bound(task)`` amortised over ``every`` calls, one call per
decision; ``cost_steps`` in SGD-step units so that ``compute`` can count it):

* :class:`ForkTestEstimator` (**the default**, :func:`make_estimator`): from a snapshot,
  a short fork of the task's own SGD (a quarter of the decision interval) at candidate LRs
  on a half-octave grid; the largest LR whose paired loss (against the same minibatches at
  the snapshot) never rises ``rise`` = 2x. Works on any inner task; warm-started from the
  previous result.
* :class:`StabilityEstimator`: ``2 / lam`` with ``lam`` the top eigenvalue of the
  *minibatch* Hessian at the training batch size (Lanczos or power iteration on
  Hessian-vector products, warm-started, averaged over a few minibatches drawn from the
  estimator's own generator), for tasks implementing :class:`CurvatureTask`. For a step
  ``p <- p - lr * M g`` the operator is ``M^(1/2) H M^(1/2)`` (NMF's row-local W rows,
  ``M = b``); L2 weight decay is included. Momentum: heavy ball
  ``p' = p - a g + b (p - p_prev)`` is stable on a quadratic iff ``a lam < 2 (1 + b)``; the
  torch tasks' EMA momentum (``buf <- mu buf + (1 - mu) g``, ``p <- p - lr buf``) is heavy
  ball with ``a = lr (1 - mu)``, ``b = mu``, so ``lr < 2 (1 + mu) / ((1 - mu) lam)``
  (:func:`sgd_stability_limit`).

Validation (``benchmarks/bench_stability.py``: 20-24 ``train`` checkpoints per family
against the largest half-octave-grid LR whose next decision interval stays finite and below
3x the start loss): on networks the fork test is tight (median ratio 0.6-1.0) and with
``kappa = 0.707`` at or below the empirical limit at 95-100% of checkpoints; ``2 / lam``
is safe but loose there (median 0.13-0.34 without momentum, 0.32-0.64 with the EMA
factor, which in turn overshoots at 10-33% of checkpoints: networks leave sharp regions
when the LR rises, and minibatch noise lowers the momentum limit below the quadratic
theory). On NMF the Hessian is the tight one (median 1.0; the analytic ``1/L`` is half of
it) and the fork test overshoots slow divergence (ratio up to 2), so NMF measures with the
Hessian.

A task opts in by implementing :class:`CurvatureTask` (the torch tasks and NMF do).

Example:
    >>> import numpy as np
    >>> from metasched.inner_tasks import MLPConfig, MLPTask
    >>> task = MLPTask(MLPConfig(width=16, depth=1, batch_size=16))
    >>> task.reset(np.random.default_rng(0))
    >>> est = StabilityEstimator(generator=np.random.default_rng(1))
    >>> m = est.measure(task)
    >>> bool(0 < m.bound < 100), m.n_hvp > 0
    (True, True)
    >>> fork = make_estimator("fork", steps=10)
    >>> bool(0 < fork.measure(task).bound < 100)
    True
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metasched.errors import UnknownNameError, did_you_mean

__all__ = [
    "ESTIMATORS",
    "CurvatureTask",
    "ForkTestEstimator",
    "StabilityEstimator",
    "StabilityMeasurement",
    "lanczos_top_eigenvalue",
    "make_estimator",
    "momentum_factor",
    "power_top_eigenvalue",
    "search_half_octaves",
    "sgd_stability_limit",
    "supports_curvature",
]

#: A symmetric linear operator on flat parameter vectors.
MatVec = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("lanczos", "power")
REDUCTIONS = ("mean", "max")


def momentum_factor(momentum: float, kind: str = "ema") -> float:
    """Return how far momentum moves the stability limit, relative to plain SGD.

    Args:
        momentum: ``mu`` (EMA) or ``beta`` (heavy ball), in ``[0, 1)``.
        kind: ``"ema"`` (``buf <- mu buf + (1 - mu) g``, the torch tasks' rule):
            ``(1 + mu) / (1 - mu)``; ``"heavy_ball"`` (``buf <- beta buf + g``, torch's
            ``SGD`` without dampening): ``1 + beta``.
    """
    if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    if kind == "ema":
        return (1.0 + momentum) / (1.0 - momentum)
    if kind == "heavy_ball":
        return 1.0 + momentum
    raise ValueError(f"kind must be 'ema' or 'heavy_ball', got {kind!r}")


def sgd_stability_limit(lam: float, momentum: float = 0.0, kind: str = "ema") -> float:
    """Largest stable LR of SGD (with momentum) on a quadratic of top curvature ``lam``.

    ``2 / lam`` times :func:`momentum_factor`; ``inf`` when ``lam <= 0`` (no positive
    curvature limits the step).
    """
    factor = momentum_factor(momentum, kind)
    if not math.isfinite(lam):
        return 0.0
    return 2.0 * factor / lam if lam > 0 else math.inf


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v)
    return v / n if n > 0 else v


def power_top_eigenvalue(
    matvec: MatVec, v0: torch.Tensor, *, max_iter: int = 20, tol: float = 1e-3
) -> tuple[float, torch.Tensor, int]:
    """Eigenvalue of largest magnitude of ``matvec`` by power iteration.

    Stops when the Rayleigh quotient changes by less than ``tol`` (relative) between
    iterations. Returns ``(eigenvalue, unit eigenvector estimate, matrix-vector products)``.
    """
    v = _unit(v0)
    lam_prev = math.nan
    lam = 0.0
    for i in range(1, max_iter + 1):
        w = matvec(v)
        lam = float(torch.dot(v, w))
        norm = torch.linalg.vector_norm(w)
        if not (math.isfinite(lam) and torch.isfinite(norm)):
            return math.inf, v, i
        if norm == 0:
            return 0.0, v, i
        v = w / norm
        if abs(lam - lam_prev) <= tol * abs(lam):
            return lam, v, i
        lam_prev = lam
    return lam, v, max_iter


def lanczos_top_eigenvalue(
    matvec: MatVec, v0: torch.Tensor, *, max_iter: int = 20, tol: float = 1e-3
) -> tuple[float, torch.Tensor, int]:
    """Largest (algebraic) eigenvalue of a symmetric ``matvec`` by Lanczos.

    Full re-orthogonalisation (``max_iter`` is small); stops when the top Ritz value changes
    by less than ``tol`` (relative) or the Krylov space is exhausted. Returns
    ``(top Ritz value, its unit Ritz vector, matrix-vector products)``.
    """
    q = _unit(v0)
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    top_prev = math.nan
    top = 0.0
    ritz = q
    n = q.numel()
    for k in range(1, max_iter + 1):
        w = matvec(basis[-1])
        if not bool(torch.isfinite(w).all()):
            return math.inf, q, k
        alpha = float(torch.dot(basis[-1], w))
        alphas.append(alpha)
        Q = torch.stack(basis)
        w = w - Q.t() @ (Q @ w)
        w = w - Q.t() @ (Q @ w)  # twice is enough (Kahan-Parlett)
        beta = float(torch.linalg.vector_norm(w))
        vals, vecs = np.linalg.eigh(_tridiagonal(alphas, betas))
        top = float(vals[-1])
        coef = torch.as_tensor(vecs[:, -1], dtype=Q.dtype)
        ritz = coef @ Q
        done = abs(top - top_prev) <= tol * abs(top)
        if done or k >= n or beta <= 1e-10 * max(abs(top), 1e-30):
            return top, _unit(ritz), k
        top_prev = top
        betas.append(beta)
        basis.append(w / beta)
    return top, _unit(ritz), max_iter


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    k = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    for i, b in enumerate(betas[: k - 1]):
        t[i, i + 1] = t[i + 1, i] = b
    return t


class CurvatureTask(abc.ABC):
    """What a task provides so that its stability bound can be measured.

    A mixin for inner tasks (the torch tasks and NMF implement it). Implementations must not
    change the task's parameters, optimizer state or training data stream.
    """

    @abc.abstractmethod
    def curvature_batches(self, n: int, generator: torch.Generator) -> list[Any]:
        """Draw ``n`` minibatches at the training batch size from ``generator``."""

    @abc.abstractmethod
    def hessian_operator(self, batch: Any) -> tuple[MatVec, int, torch.dtype]:
        """Return the step-preconditioned minibatch Hessian of ``batch`` at the current point.

        Returns ``(matvec, dimension, dtype)``: ``matvec`` maps a flat vector to
        ``M^(1/2) (H + wd I) M^(1/2) v`` (``M`` the task's fixed preconditioner, ``wd`` its
        L2 weight decay).
        """

    def stability_momentum(self) -> float:
        """EMA momentum ``mu`` of the task's SGD (0: plain SGD)."""
        return 0.0

    def hvp_step_cost(self) -> float:
        """Cost of one Hessian-vector product in SGD-step units (measured per family)."""
        return 2.0


def supports_curvature(task: Any) -> bool:
    """Whether ``task`` implements :class:`CurvatureTask` (checked by its methods)."""
    return all(
        callable(getattr(task, name, None))
        for name in ("curvature_batches", "hessian_operator", "stability_momentum", "hvp_step_cost")
    )


@dataclass(frozen=True, slots=True)
class StabilityMeasurement:
    """One measurement of the stability bound.

    Attributes:
        bound: the largest stable LR predicted for the task's SGD (momentum included).
        sharpness: the reduced top eigenvalue (mean or max over minibatches).
        eigenvalues: the top eigenvalue of each minibatch's Hessian.
        momentum: the EMA momentum the bound accounts for.
        n_hvp: Hessian-vector products spent.
        cost_steps: their cost in SGD-step equivalents.
    """

    bound: float
    sharpness: float
    eigenvalues: tuple[float, ...]
    momentum: float
    n_hvp: int
    cost_steps: float


class StabilityEstimator:
    """Measures ``2 (1 + mu) / ((1 - mu) lam)`` with ``lam`` the minibatch-Hessian sharpness.

    Args:
        n_batches: minibatches whose top eigenvalues are reduced to one sharpness.
        method: ``"lanczos"`` or ``"power"``.
        max_iter: Hessian-vector products per minibatch at most.
        tol: relative change of the eigenvalue estimate that stops the iteration.
        reduce: ``"mean"`` or ``"max"`` over the minibatches.
        momentum_aware: scale the bound by :func:`momentum_factor` of the task's momentum.
        every: :meth:`bound` re-measures on every ``every``-th call (1: every call).
        generator: numpy generator (or int seed) from which the estimator's minibatches and
            start vector are drawn; the estimator is deterministic given it.
    """

    def __init__(
        self,
        *,
        n_batches: int = 2,
        method: str = "lanczos",
        max_iter: int = 12,
        tol: float = 0.02,
        reduce: str = "mean",
        momentum_aware: bool = True,
        every: int = 5,
        generator: np.random.Generator | int = 0,
    ) -> None:
        for name, value in (("n_batches", n_batches), ("max_iter", max_iter), ("every", every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if not (isinstance(tol, int | float) and 0 < tol < 1):
            raise ValueError(f"tol must lie in (0, 1), got {tol!r}")
        if isinstance(generator, int):
            generator = np.random.default_rng(generator)
        self.n_batches, self.method, self.max_iter = n_batches, method, max_iter
        self.tol, self.reduce, self.momentum_aware, self.every = tol, reduce, momentum_aware, every
        self._gen = torch.Generator().manual_seed(int(generator.integers(2**63)))
        self._vector: torch.Tensor | None = None
        self._last: StabilityMeasurement | None = None
        self._calls = 0
        self.n_hvp = 0
        self.cost_steps = 0.0
        self.n_measurements = 0

    def __repr__(self) -> str:
        return (
            f"StabilityEstimator(n_batches={self.n_batches}, method={self.method!r}, "
            f"max_iter={self.max_iter}, tol={self.tol}, reduce={self.reduce!r}, "
            f"momentum_aware={self.momentum_aware}, every={self.every})"
        )

    def reset(self) -> None:
        """Forget the warm-start vector, the cached bound and the cost counters."""
        self._vector, self._last, self._calls = None, None, 0
        self.n_hvp, self.cost_steps, self.n_measurements = 0, 0.0, 0

    @property
    def last(self) -> StabilityMeasurement | None:
        """The most recent measurement (``None`` before the first)."""
        return self._last

    def measure(self, task: Any) -> StabilityMeasurement:
        """Measure the bound of ``task`` at its current parameters (see the class doc)."""
        if not supports_curvature(task):
            name = getattr(task, "name", type(task).__name__)
            raise ValueError(
                f"task {name!r} ({type(task).__name__}) does not implement "
                "metasched.stability.CurvatureTask, so its stability bound cannot be measured"
            )
        solve = lanczos_top_eigenvalue if self.method == "lanczos" else power_top_eigenvalue
        lams, n_hvp = [], 0
        for batch in task.curvature_batches(self.n_batches, self._gen):
            matvec, dim, dtype = task.hessian_operator(batch)
            v0 = self._start(dim, dtype)
            lam, vec, k = solve(matvec, v0, max_iter=self.max_iter, tol=self.tol)
            n_hvp += k
            if self.method == "power" and lam < 0 and math.isfinite(lam):
                # the dominant eigenvalue is negative: shift it away to reach the top one
                shift = -lam

                def shifted(v: torch.Tensor, mv: MatVec = matvec, s: float = shift) -> torch.Tensor:
                    return mv(v) + s * v

                lam, vec, k = solve(shifted, vec, max_iter=self.max_iter, tol=self.tol)
                lam -= shift
                n_hvp += k
            if math.isfinite(lam):
                self._vector = vec.detach()
            lams.append(lam)
        sharp = float(np.mean(lams)) if self.reduce == "mean" else float(np.max(lams))
        mu = task.stability_momentum() if self.momentum_aware else 0.0
        bound = sgd_stability_limit(sharp, mu) if not math.isnan(sharp) else 0.0
        cost = n_hvp * task.hvp_step_cost()
        self.n_hvp += n_hvp
        self.cost_steps += cost
        self.n_measurements += 1
        self._last = StabilityMeasurement(
            bound=bound,
            sharpness=sharp,
            eigenvalues=tuple(float(x) for x in lams),
            momentum=mu,
            n_hvp=n_hvp,
            cost_steps=cost,
        )
        return self._last

    def bound(self, task: Any) -> float:
        """Return the amortised bound: re-measured on every ``every``-th call, else cached."""
        if self._last is None or self._calls % self.every == 0:
            self.measure(task)
        self._calls += 1
        assert self._last is not None
        return self._last.bound

    def _start(self, dim: int, dtype: torch.dtype) -> torch.Tensor:
        if self._vector is not None and self._vector.numel() == dim:
            return self._vector.to(dtype)
        return torch.randn(dim, generator=self._gen, dtype=torch.float64).to(dtype)


def search_half_octaves(
    passes: Callable[[float], tuple[bool, int]],
    anchor: float,
    k: int | None,
    max_up: int,
    max_up_cold: int,
) -> tuple[int, bool, int]:
    """Search the half-octave grid ``anchor * 2 ** (k / 2)`` for the largest stable LR (fork tests).

    Starts at the previous result ``k`` (``None``: a cold start at ``k = 0``); if that LR
    passes, climbs at most ``max_up`` (cold: ``max_up_cold``) half-octaves while the next
    one passes, else steps down until one passes (at most to ``k = -40``). ``passes(lr)``
    returns whether the fork at ``lr`` stayed stable and the steps it spent.

    Returns:
        ``(k, found, spent)``: the grid index reached, whether an LR passed, and the steps
        of every fork run.
    """
    climbs = max_up if k is not None else max_up_cold
    k = 0 if k is None else k
    ok, spent = passes(anchor * 2 ** (k / 2))
    if ok:
        for _ in range(climbs):
            up, n = passes(anchor * 2 ** ((k + 1) / 2))
            spent += n
            if not up:
                break
            k += 1
    else:
        while k > -40:
            k -= 1
            ok, n = passes(anchor * 2 ** (k / 2))
            spent += n
            if ok:
                break
    return k, ok, spent


class ForkTestEstimator:
    """The largest LR on a half-octave grid at which a short fork of SGD does not blow up.

    From a snapshot, the task trains ``steps`` steps at a candidate LR (its own SGD, momentum
    included, on the minibatches training would draw next) and is restored; the candidate
    passes when no step diverges and the 3-step running mean of its minibatch losses stays
    below ``rise`` times that of the same minibatches at the snapshot's parameters (a fork at
    LR 0, run once per measurement: pairing the batches cancels their noise) at every step.
    The search starts at the previous result (warm start; first: ``anchor`` or the task's
    ``default_lr``), climbs while the candidate passes (at most ``max_up`` grid steps) and
    descends while it fails (the first measurement, without a warm start, may climb
    ``max_up_cold`` steps). Works on any :class:`~metasched.inner_tasks.base.InnerTask`;
    the cost is the fork steps run. :meth:`for_interval` sizes the fork for a decision
    interval the way ``benchmarks/bench_stability.py`` validated it.

    Args:
        steps: SGD steps per fork.
        rise: loss ratio (fork over LR-0 fork, 3-step running means) that counts as blowing up.
        max_up: grid steps climbed per warm-started measurement at most.
        max_up_cold: grid steps the first measurement may climb.
        every: :meth:`bound` re-measures on every ``every``-th call.
        anchor: LR the half-octave grid is aligned to (default: the task's ``default_lr``).
    """

    def __init__(
        self,
        *,
        steps: int = 10,
        rise: float = 2.0,
        max_up: int = 3,
        max_up_cold: int = 12,
        every: int = 10,
        anchor: float | None = None,
    ) -> None:
        checks = (("steps", steps), ("max_up", max_up), ("max_up_cold", max_up_cold))
        for name, value in (*checks, ("every", every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(rise, int | float) and rise > 1 and math.isfinite(rise)):
            raise ValueError(f"rise must be a finite number > 1, got {rise!r}")
        if anchor is not None and not (math.isfinite(anchor) and anchor > 0):
            raise ValueError(f"anchor must be a positive finite LR, got {anchor!r}")
        self.steps, self.rise, self.max_up, self.every = steps, float(rise), max_up, every
        self.max_up_cold = max_up_cold
        self.anchor = anchor
        self._k: int | None = None
        self._last: StabilityMeasurement | None = None
        self._calls = 0
        self.cost_steps = 0.0
        self.n_measurements = 0

    def __repr__(self) -> str:
        return (
            f"ForkTestEstimator(steps={self.steps}, rise={self.rise}, max_up={self.max_up}, "
            f"max_up_cold={self.max_up_cold}, every={self.every}, anchor={self.anchor})"
        )

    @classmethod
    def for_interval(cls, steps_per_action: int, **kwargs: Any) -> ForkTestEstimator:
        """Return the validated setting for a decision interval: forks of a quarter of it."""
        if not isinstance(steps_per_action, int) or steps_per_action < 1:
            raise ValueError(
                f"steps_per_action must be a positive integer, got {steps_per_action!r}"
            )
        return cls(steps=max(5, steps_per_action // 4), **kwargs)

    def reset(self) -> None:
        """Forget the warm start, the cached bound and the cost counter."""
        self._k, self._last, self._calls = None, None, 0
        self.cost_steps, self.n_measurements = 0.0, 0

    @property
    def last(self) -> StabilityMeasurement | None:
        """The most recent measurement (``None`` before the first)."""
        return self._last

    def _passes(self, task: Any, snap: Any, lr: float, base: np.ndarray) -> tuple[bool, int]:
        task.restore(snap)
        stats = task.train(self.steps, lr)
        losses = np.asarray(stats.losses, dtype=np.float64)
        if stats.diverged or stats.n_done < self.steps or not np.isfinite(losses).all():
            return False, stats.n_done
        k = min(3, self.steps)
        window = np.ones(k) / k
        fork = np.convolve(losses, window, mode="valid")
        ref = np.convolve(base, window, mode="valid")
        return bool(np.all(fork < self.rise * ref)), stats.n_done

    def measure(self, task: Any) -> StabilityMeasurement:
        """Search the grid from the previous result; the task is left as it was."""
        anchor = self.anchor if self.anchor is not None else float(task.default_lr())
        snap = task.snapshot()
        base = np.asarray(task.train(self.steps, 0.0).losses, dtype=np.float64)
        k, ok, spent = search_half_octaves(
            lambda lr: self._passes(task, snap, lr, base),
            anchor, self._k, self.max_up, self.max_up_cold,
        )  # fmt: skip
        spent += len(base)
        task.restore(snap)
        self._k = k
        bound = anchor * 2 ** (k / 2) if ok or k > -40 else 0.0
        self.cost_steps += spent
        self.n_measurements += 1
        mu = float(getattr(task, "momentum", 0.0))
        self._last = StabilityMeasurement(
            bound=bound, sharpness=math.nan, eigenvalues=(), momentum=mu, n_hvp=0,
            cost_steps=float(spent),
        )
        return self._last

    def bound(self, task: Any) -> float:
        """Return the amortised bound: re-measured on every ``every``-th call, else cached."""
        if self._last is None or self._calls % self.every == 0:
            self.measure(task)
        self._calls += 1
        assert self._last is not None
        return self._last.bound


#: Stability-bound estimators by name (``"fork"`` is the default: it won the validation).
ESTIMATORS: dict[str, type[ForkTestEstimator] | type[StabilityEstimator]] = {
    "fork": ForkTestEstimator,
    "hessian": StabilityEstimator,
}


def make_estimator(
    name: str = "fork", **kwargs: Any
) -> ForkTestEstimator | StabilityEstimator:
    """Build the estimator registered as ``name`` (``"fork"`` or ``"hessian"``)."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise UnknownNameError(did_you_mean(str(name), ESTIMATORS, "stability estimator"))
    return ESTIMATORS[name](**kwargs)
