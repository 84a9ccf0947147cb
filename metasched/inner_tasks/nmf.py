"""Stochastic non-negative matrix factorisation with a stability bound on the learning rate.

Objective (normalised by the number of entries)::

    f(W, H) = 1/(2 m n) * ||V - W H||_F^2 = (1/m) * sum_i l_i,   l_i = 1/(2n) ||V_i - W_i H||^2

One step of stochastic projected SGD draws a minibatch B of ``b`` rows (with replacement),
computes the row losses' gradients

    G_{W_i} = (W_i H - V_i) H^T / n              for i in B (row-local variables)
    G_H     = W_B^T (W_B H - V_B) / (b n)        (unbiased for grad_H f)

optionally adds Gaussian gradient noise of scale ``grad_noise`` ("only a noisy gradient is
known"), and projects: ``W_B <- max(0, W_B - lr G_W)``, ``H <- max(0, H - lr G_H)``.

Stability bound (a design choice from the standard L-smooth SGD analysis, since the source's
exact formula is not public): the block Lipschitz constants of the gradients above are
``L_W = ||H||_2^2 / n`` (Hessian of l_i in W_i is H H^T / n) and
``L_H = ||W||_2^2 / (m n)`` (expected minibatch Hessian in H), ``L = max(L_W, L_H)``.
The deterministic-safe rate is ``1/L``; the noise-aware rate
``2 ||g||^2 / (L (||g||^2 + s^2))`` shrinks to zero as the signal ``||g||^2`` of the expected
step falls below the gradient-noise variance ``s^2``, so convergent schedules must decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metasched.inner_tasks.base import InnerTask, StepStats, TaskFamily, check_split
from metasched.inner_tasks.gradients import GradientTask, StepSize, UpdateResult
from metasched.stability import CurvatureTask, MatVec, StabilityEstimator

__all__ = ["NMFConfig", "NMFFamily", "NMFTask", "planted_matrix"]


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_nonneg_float(name: str, value: Any) -> None:
    if not isinstance(value, int | float | np.number) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


@dataclass(frozen=True, slots=True)
class NMFConfig:
    """One planted NMF instance.

    Attributes:
        m: rows of V.
        n: columns of V.
        rank: rank of the planted factors and of the fitted factorisation.
        noise: scale of the non-negative noise added to V, relative to V's mean.
        grad_noise: standard deviation of the additive Gaussian gradient noise.
        batch_size: rows per minibatch.
        seed: seed of the instance's data.
        split: the family split the instance came from (``custom`` for hand-made ones).
        index: index of the instance in its split.
    """

    m: int
    n: int
    rank: int
    noise: float
    grad_noise: float
    batch_size: int
    seed: int
    split: str = "custom"
    index: int = 0

    def __post_init__(self) -> None:
        for field in ("m", "n", "rank", "batch_size"):
            _check_positive_int(field, getattr(self, field))
        _check_nonneg_float("noise", self.noise)
        _check_nonneg_float("grad_noise", self.grad_noise)
        if self.rank > min(self.m, self.n):
            raise ValueError(f"rank must be <= min(m, n) = {min(self.m, self.n)}, got {self.rank}")
        if self.batch_size > self.m:
            raise ValueError(f"batch_size must be <= m = {self.m}, got {self.batch_size}")

    @property
    def name(self) -> str:
        """Deterministic instance name, e.g. ``nmf-m300-n120-r8-s0.10-g0.50-b32-test7``."""
        return (
            f"nmf-m{self.m}-n{self.n}-r{self.rank}-s{self.noise:.2f}-g{self.grad_noise:.2f}"
            f"-b{self.batch_size}-{self.split}{self.index}"
        )


def planted_matrix(config: NMFConfig) -> np.ndarray:
    """Generate V = W* H* + non-negative noise, scaled to mean 1 (deterministic in the seed)."""
    rng = np.random.default_rng(config.seed)
    w = rng.gamma(shape=1.0, scale=1.0, size=(config.m, config.rank))
    h = rng.gamma(shape=1.0, scale=1.0, size=(config.rank, config.n))
    v = w @ h
    v /= v.mean()
    if config.noise > 0:
        v += config.noise * rng.exponential(1.0, size=v.shape)
        v /= v.mean()
    return v


class NMFTask(InnerTask, GradientTask, CurvatureTask):
    """Stochastic projected-SGD NMF on one matrix (see the module docstring for the maths).

    Args:
        V: non-negative, finite 2-D array.
        rank: rank of the factorisation.
        batch_size: rows per minibatch (default: ``min(32, m)``).
        grad_noise: standard deviation of additive Gaussian gradient noise.
        update_cap: if set, each entry's update is limited to ``[-cap, cap]`` (counted).
        divergence_factor: a minibatch loss above this multiple of the initial full loss, or
            a non-finite one, counts as divergence; so does the collapse of W or H to zero.
        name: instance name.

    Example:
        >>> import numpy as np
        >>> task = NMFTask.from_matrix(np.ones((20, 10)), rank=2, batch_size=5)
        >>> task.reset(np.random.default_rng(0))
        >>> stats = task.train(100, lr=0.5 * task.lr_bound())
        >>> stats.n_done, stats.diverged, task.evaluate() < 0.01
        (100, False, True)
    """

    def __init__(
        self,
        V: np.ndarray,
        rank: int,
        *,
        batch_size: int | None = None,
        grad_noise: float = 0.0,
        update_cap: float | None = None,
        divergence_factor: float = 1e3,
        name: str = "nmf-custom",
    ) -> None:
        V = _validate_matrix(V)
        m, n = V.shape
        _check_positive_int("rank", rank)
        if rank > min(m, n):
            raise ValueError(f"rank must be <= min(m, n) = {min(m, n)}, got {rank}")
        batch_size = min(32, m) if batch_size is None else batch_size
        _check_positive_int("batch_size", batch_size)
        if batch_size > m:
            raise ValueError(f"batch_size must be <= m = {m}, got {batch_size}")
        _check_nonneg_float("grad_noise", grad_noise)
        if update_cap is not None and not (update_cap > 0 and math.isfinite(update_cap)):
            raise ValueError(f"update_cap must be a positive finite number, got {update_cap!r}")
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
        self.V = V
        self.m, self.n, self.rank = m, n, int(rank)
        self.batch_size = int(batch_size)
        self.grad_noise = float(grad_noise)
        self.update_cap = update_cap
        self.divergence_factor = float(divergence_factor)
        self.name = name
        self._v_norm = float(np.linalg.norm(V))
        self._v_mean = float(V.mean())
        self.W = np.zeros((m, rank))
        self.H = np.zeros((rank, n))
        self._rng = np.random.default_rng(0)
        self._noise_gen = torch.Generator().manual_seed(0)
        self._ref_loss = 1.0
        self._clear_plan()

    #: ``apply_update`` clamps the factors at zero.
    projected = True

    @classmethod
    def from_matrix(cls, V: Any, rank: int, **kwargs: Any) -> NMFTask:
        """Build a task on any non-negative finite 2-D array (``ValueError`` otherwise)."""
        return cls(np.asarray(V), rank, **kwargs)

    @classmethod
    def from_config(cls, config: NMFConfig, **kwargs: Any) -> NMFTask:
        """Build the planted instance described by ``config``."""
        return cls(
            planted_matrix(config),
            config.rank,
            batch_size=config.batch_size,
            grad_noise=config.grad_noise,
            name=config.name,
            **kwargs,
        )

    # -- InnerTask -------------------------------------------------------------------------
    def reset(self, generator: np.random.Generator) -> None:
        """Initialise W, H uniformly so that E[WH] matches V's mean; reseed the minibatch RNG."""
        scale = 2.0 * math.sqrt(max(self._v_mean, 1e-12) / self.rank)
        self.W = generator.random((self.m, self.rank)) * scale
        self.H = generator.random((self.rank, self.n)) * scale
        self._rng = np.random.default_rng(generator.integers(2**63))
        self._noise_gen = torch.Generator().manual_seed(int(generator.integers(2**63)))
        self._ref_loss = max(self.evaluate(), 1e-300)
        self._clear_plan()

    def train(self, n_steps: int, lr: float) -> StepStats:
        """Run ``n_steps`` projected SGD steps at ``lr`` (stops at the first divergence)."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be non-negative, got {n_steps}")
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite non-negative number, got {lr!r}")
        W, H, V = self.W, self.H, self.V
        b, n, r = self.batch_size, self.n, self.rank
        rng, sigma, cap = self._rng, self.grad_noise, self.update_cap
        self._clear_plan()
        rows = (rng.random((n_steps, b)) * self.m).astype(np.intp)
        if sigma > 0:
            noise_w, noise_h = self._draw_noise(n_steps)
            sw = sigma / (n * math.sqrt(r))
            sh = sigma / (b * n * math.sqrt(r))
        losses = np.empty(n_steps)
        inv_n, inv_bn = 1.0 / n, 1.0 / (b * n)
        limit = self.divergence_factor * self._ref_loss
        g2_sum = u2_sum = 0.0
        capped = ups = 0
        prev = math.inf
        done = 0
        diverged = False
        with np.errstate(over="ignore", invalid="ignore"):
            for t in range(n_steps):
                idx = rows[t]
                wb = W[idx]
                res = wb @ H
                res -= V[idx]
                loss = 0.5 * float(np.vdot(res, res)) * inv_bn
                losses[t] = loss
                ups += loss > prev
                prev = loss
                done = t + 1
                if not loss <= limit:  # also catches NaN
                    diverged = True
                    break
                gw = (res @ H.T) * inv_n
                gh = (wb.T @ res) * inv_bn
                if sigma > 0:
                    gw += noise_w[t] * (sw * math.sqrt(float(np.vdot(H, H))))
                    gh += noise_h[t] * (sh * math.sqrt(float(np.vdot(wb, wb))))
                g2_sum += float(np.vdot(gw, gw) + np.vdot(gh, gh))
                dw = gw * -lr
                dh = gh * -lr
                if cap is not None:
                    capped += int(np.count_nonzero(np.abs(dw) > cap))
                    capped += int(np.count_nonzero(np.abs(dh) > cap))
                    np.clip(dw, -cap, cap, out=dw)
                    np.clip(dh, -cap, cap, out=dh)
                new_w = np.maximum(wb + dw, 0.0)
                new_h = np.maximum(H + dh, 0.0)
                dw = new_w - wb
                dh = new_h - H
                u2_sum += float(np.vdot(dw, dw) + np.vdot(dh, dh))
                W[idx] = new_w
                H[...] = new_h
        if not diverged and done and not (H.any() and W.any()):
            diverged = True  # collapse to the trivial factorisation: relative error 1
        steps = max(done, 1)
        return StepStats(
            losses=losses[:done],
            grad_norm=math.sqrt(g2_sum / steps),
            update_norm=math.sqrt(u2_sum / steps),
            diverged=diverged,
            n_done=done,
            capped=capped,
            n_increasing=int(ups),
        )

    def _draw_noise(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw the unit gradient noise of ``n_steps`` steps, shaped ``(n, b, r)``, ``(n, r, n)``.

        Isotropic per block, scaled in the step by the variance that N(0, sigma^2) noise on
        the observed V_B would induce: E||eps H^T||^2 / n^2 and E||W_B^T eps||^2 / (b n)^2.
        float32 normals from torch's vectorised sampler (~3x cheaper than numpy's), one
        block per interval: ``train(n)`` and ``plan_steps(n)`` draw the same.
        """
        b, n, r = self.batch_size, self.n, self.rank
        noise = torch.randn(n_steps * (b * r + r * n), generator=self._noise_gen).numpy()
        return (
            noise[: n_steps * b * r].reshape(n_steps, b, r),
            noise[n_steps * b * r :].reshape(n_steps, r, n),
        )

    def _clear_plan(self) -> None:
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._plan_pos = 0
        self._last_noise: list[np.ndarray] | None = None

    def evaluate(self) -> float:
        """Full-data loss ``||V - WH||_F^2 / (2 m n)``."""
        with np.errstate(over="ignore", invalid="ignore"):
            res = self.W @ self.H - self.V
            return 0.5 * float(np.vdot(res, res)) / (self.m * self.n)

    def relative_error(self) -> float:
        """``||V - WH||_F / ||V||_F`` (exactly 1 when W or H has collapsed to zero)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.linalg.norm(self.W @ self.H - self.V)) / max(self._v_norm, 1e-300)

    def snapshot(self) -> dict[str, Any]:
        """Copy W, H, the minibatch RNG state and the divergence reference."""
        return {
            "W": self.W.copy(),
            "H": self.H.copy(),
            "rng": self._rng.bit_generator.state,
            "noise_rng": self._noise_gen.get_state(),
            "ref_loss": self._ref_loss,
            "plan": None if self._plan is None else (self._plan, self._plan_pos),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Return to a snapshot (the snapshot itself is not modified)."""
        self.W = snap["W"].copy()
        self.H = snap["H"].copy()
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = snap["rng"]
        self._noise_gen = torch.Generator()
        self._noise_gen.set_state(snap["noise_rng"])
        self._ref_loss = snap["ref_loss"]
        self._clear_plan()
        if snap.get("plan") is not None:  # arrays are never written to: sharing is safe
            self._plan, self._plan_pos = snap["plan"]

    # -- GradientTask (per-step access for hypergradient descent and line search) --------
    def parameter_blocks(self) -> list[tuple[str, tuple[int, ...]]]:
        """Return the two blocks ``W`` (m x rank) and ``H`` (rank x n)."""
        return [("W", (self.m, self.rank)), ("H", (self.rank, self.n))]

    def get_parameters(self) -> list[np.ndarray]:
        """Return copies of ``[W, H]``."""
        return [self.W.copy(), self.H.copy()]

    def set_parameters(self, params: Any) -> None:
        """Overwrite ``W`` and ``H`` (copied; shapes must match)."""
        if len(params) != 2:
            raise ValueError(f"NMF has 2 parameter blocks (W, H), got {len(params)}")
        for (name, shape), p in zip(self.parameter_blocks(), params, strict=True):
            if np.shape(p) != shape:
                raise ValueError(f"block {name} must have shape {shape}, got {np.shape(p)}")
        self.W = np.array(params[0], dtype=np.float64)
        self.H = np.array(params[1], dtype=np.float64)

    def sample_minibatch(self) -> np.ndarray:
        """Row indices of the next minibatch (the same draw as one step of ``train``)."""
        return (self._rng.random(self.batch_size) * self.m).astype(np.intp)

    def minibatch_loss(self, batch: np.ndarray) -> float:
        """``||V_B - W_B H||^2 / (2 b n)`` at the current parameters."""
        with np.errstate(over="ignore", invalid="ignore"):
            res = self.W[batch] @ self.H
            res -= self.V[batch]
            return 0.5 * float(np.vdot(res, res)) * (1.0 / (self.batch_size * self.n))

    def minibatch_gradients(self, batch: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Loss of ``batch`` and its gradients ``[∇_W, ∇_H]`` (noisy as in ``train``).

        ``∇_W`` is dense and zero outside the sampled rows (a row drawn twice gets the
        gradient of its last draw, as in ``train``); the gradient noise is drawn as by
        ``train(1, lr)``. ``train`` steps the row-local W rows along ``G_W = b ∇_W`` (the
        gradient of the row loss ``l_i``), so :meth:`apply_update` preconditions the W block
        by ``b`` (exact in floating point for power-of-two ``b``).
        """
        b, n, r = self.batch_size, self.n, self.rank
        W, H = self.W, self.H
        with np.errstate(over="ignore", invalid="ignore"):
            wb = W[batch]
            res = wb @ H
            res -= self.V[batch]
            loss = 0.5 * float(np.vdot(res, res)) * (1.0 / (b * n))
            gw = (res @ H.T) * (1.0 / n)
            gh = (wb.T @ res) * (1.0 / (b * n))
            self._last_noise = None
            if self.grad_noise > 0:
                if self._plan is not None and self._plan_pos < len(self._plan[0]):
                    unit_w = self._plan[0][self._plan_pos]
                    unit_h = self._plan[1][self._plan_pos]
                    self._plan_pos += 1
                else:
                    self._plan = None
                    unit_w, unit_h = (x[0] for x in self._draw_noise(1))
                sw = self.grad_noise / (n * math.sqrt(r))
                sh = self.grad_noise / (b * n * math.sqrt(r))
                xi_w = unit_w * (sw * math.sqrt(float(np.vdot(H, H))))
                xi_h = unit_h * (sh * math.sqrt(float(np.vdot(wb, wb))))
                gw += xi_w
                gh += xi_h
                noise_w = np.zeros_like(W)
                noise_w[batch] = xi_w * (1.0 / b)
                self._last_noise = [noise_w, xi_h.astype(np.float64)]
        g_w = np.zeros_like(W)
        g_w[batch] = gw * (1.0 / b)
        return loss, [g_w, gh]

    def plan_steps(self, n_steps: int) -> None:
        """Draw the gradient noise of the next ``n_steps`` steps in one block, as ``train``."""
        n_steps = int(n_steps)
        self._clear_plan()
        if self.grad_noise > 0 and n_steps > 0:
            self._plan = self._draw_noise(n_steps)

    def gradient_noise(self) -> list[np.ndarray] | None:
        """Return the additive noise inside the last gradients, ``[ξ_W, ξ_H]`` (or ``None``)."""
        return self._last_noise

    def project(self, params: list[np.ndarray]) -> None:
        """Clamp every block at zero, in place."""
        for p in params:
            np.maximum(p, 0.0, out=p)

    def apply_update(self, grads: Any, step_sizes: Any) -> UpdateResult:
        """Projected step ``p <- max(0, p - s * M g)`` per block (``M``: ``b`` on W, 1 on H).

        The optional update cap limits each entry's change, as in ``train``.
        """
        if len(grads) != 2 or len(step_sizes) != 2:
            raise ValueError(
                f"NMF has 2 parameter blocks (W, H); got {len(grads)} gradients and "
                f"{len(step_sizes)} step sizes"
            )
        cap = self.update_cap
        deltas, sens = [], []
        capped = 0
        with np.errstate(over="ignore", invalid="ignore"):
            precond = (float(self.batch_size), 1.0)
            for i, (p, g, s) in enumerate(zip((self.W, self.H), grads, step_sizes, strict=True)):
                step: StepSize = s if np.ndim(s) == 0 else np.asarray(s)
                direction = g * precond[i] if precond[i] != 1.0 else g
                d = direction * -step
                free = np.ones(p.shape, dtype=bool)
                if cap is not None:
                    over = np.abs(d) > cap
                    capped += int(np.count_nonzero(over))
                    free &= ~over
                    np.clip(d, -cap, cap, out=d)
                new = np.maximum(p + d, 0.0)
                free &= (p + d) > 0.0
                deltas.append(new - p)
                sens.append(np.where(free, -direction, 0.0))
                if i == 0:
                    self.W = new
                else:
                    self.H = new
        return UpdateResult(delta=deltas, sensitivity=sens, capped=capped)

    def batches_per_epoch(self) -> float:
        """Return ``m / batch_size`` (rows of V over rows per minibatch)."""
        return self.m / self.batch_size

    def is_diverged(self, loss: float | None = None) -> bool:
        """``train``'s rule: a loss above the limit (or NaN); W or H collapsed or non-finite."""
        if loss is not None:
            return not loss <= self.divergence_factor * self._ref_loss
        if not (np.isfinite(self.W).all() and np.isfinite(self.H).all()):
            return True
        return not (self.H.any() and self.W.any())

    # -- stability bound -------------------------------------------------------------------
    def lipschitz(self) -> tuple[float, float]:
        """Return the block Lipschitz constants ``(L_W, L_H)`` at the current point."""
        grams = np.stack((self.H @ self.H.T, self.W.T @ self.W))
        top = np.linalg.eigvalsh(grams)[:, -1]
        return float(top[0]) / self.n, float(top[1]) / (self.m * self.n)

    def lr_bound(self) -> float:
        """Deterministic-safe learning rate ``1/L`` with ``L = max(L_W, L_H)``."""
        with np.errstate(over="ignore", invalid="ignore"):
            big = max(self.lipschitz())
        if not math.isfinite(big):
            return 0.0
        return 1.0 / big if big > 0 else math.inf

    def noise_aware_bound(self) -> float:
        """Noise-aware rate ``2 ||g||^2 / (L (||g||^2 + s^2))`` at the current point.

        ``||g||^2`` is the squared norm of the expected step's clean gradient (H block plus
        the b sampled W rows) and ``s^2`` its variance: minibatch sampling of the H gradient
        (computed exactly from the per-row terms) plus the additive gradient noise.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            L = max(self.lipschitz())
            res = self.W @ self.H - self.V  # m x n
            b, m, n = self.batch_size, self.m, self.n
            gh = self.W.T @ res / (m * n)
            gw_rows = (res @ self.H.T) / n  # per-row gradients of l_i
            signal = float(np.vdot(gh, gh)) + b * float(np.vdot(gw_rows, gw_rows)) / m
            # per-row H-gradient terms g_i = W_i^T res_i / n have ||g_i|| = ||W_i|| ||res_i|| / n
            row_sq = np.sum(self.W**2, axis=1) * np.sum(res**2, axis=1) / n**2
            var_h = max(float(row_sq.mean()) - float(np.vdot(gh, gh)), 0.0) / b
            noise = var_h + self.grad_noise**2 * (
                b * float(np.vdot(self.H, self.H)) / n**2
                + float(np.vdot(self.W, self.W)) / (b * m * n)
            )
        if not (math.isfinite(L) and math.isfinite(signal)) or L <= 0:
            return 0.0
        if signal + noise <= 0:
            return 2.0 / L
        return 2.0 * signal / (L * (signal + noise))

    # -- measured stability bound (metasched.stability), beside the analytic one -----------
    #: one Hessian-vector product in SGD-step units (benchmarks/bench_stability.py measures it)
    hvp_cost: float = 3.5
    #: lr_bound() is the analytic 1/L (half the largest stable LR: metasched.loop's scale)
    analytic_bound = True

    def measured_lr_bound(self, estimator: StabilityEstimator | None = None) -> float:
        """Measure the bound ``2 / lam`` (minibatch-Hessian sharpness), for comparison.

        :meth:`lr_bound` stays the analytic ``1/L``; this measures what
        :mod:`metasched.stability` measures on tasks without an analytic bound.
        """
        return (estimator or StabilityEstimator()).measure(self).bound

    def curvature_batches(self, n: int, generator: torch.Generator) -> list[Any]:
        """Draw ``n`` row minibatches from ``generator`` (the training stream is untouched)."""
        rows = torch.randint(self.m, (n, self.batch_size), generator=generator).numpy()
        return [rows[i].astype(np.intp) for i in range(n)]

    def hessian_operator(self, batch: Any) -> tuple[MatVec, int, torch.dtype]:
        """Hessian of the minibatch loss in ``(W_B, H)``, the W rows scaled by ``M = b``.

        With ``R = W_B H - V_B`` and ``u = M^(1/2) v``: ``dR = u_W H + W_B u_H``,
        ``H u = ((dR H^T + R u_H^T), (u_W^T R + W_B^T dR)) / (b n)``; the W block of
        ``M^(1/2) H M^(1/2)`` is then ``H H^T / n`` per row, as in ``L_W``.
        """
        b, n, r = self.batch_size, self.n, self.rank
        wb, H = self.W[batch], self.H
        R = wb @ H - self.V[batch]
        sb, scale = math.sqrt(b), 1.0 / (b * n)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            x = v.numpy()
            uw = x[: b * r].reshape(b, r) * sb
            uh = x[b * r :].reshape(r, n)
            dr = uw @ H + wb @ uh
            hw = (dr @ H.T + R @ uh.T) * (scale * sb)
            hh = (uw.T @ R + wb.T @ dr) * scale
            return torch.from_numpy(np.concatenate((hw.ravel(), hh.ravel())))

        return matvec, b * r + r * n, torch.float64

    def hvp_step_cost(self) -> float:
        """One Hessian-vector product in SGD steps (``hvp_cost``)."""
        return self.hvp_cost

    def default_lr(self) -> float:
        """Half the deterministic-safe rate at the current point."""
        return 0.5 * self.lr_bound()


def _validate_matrix(V: Any) -> np.ndarray:
    try:
        arr = np.asarray(V, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"V must be a numeric 2-D array: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"V must be a 2-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"V must be non-empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"V must be finite; it has {int(np.sum(~np.isfinite(arr)))} NaN/inf entries"
        )
    if np.any(arr < 0):
        raise ValueError(f"V must be non-negative; its minimum is {float(arr.min())!r}")
    if not np.any(arr > 0):
        raise ValueError("V must have at least one positive entry (it is all zeros)")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True, slots=True)
class _Range:
    low: float
    high: float


class NMFFamily(TaskFamily):
    """Planted stochastic-NMF instances.

    ``train``, ``val`` and ``test`` share one distribution (disjoint seeds); ``shift`` draws larger,
    noisier, higher-rank matrices with more gradient noise and smaller minibatches.

    Args:
        seed: family seed; instance ``i`` of a split is a pure function of (seed, split, i).
        m, n, rank, noise, grad_noise: ``(low, high)`` ranges for ``train``/``test``.
        batch_sizes: choices of minibatch size.
    """

    #: LR range as multiples of the reference LR (half the stability bound 1/L).
    lr_range = (1e-3, 64.0)

    name = "nmf"

    def __init__(
        self,
        seed: int = 0,
        *,
        m: tuple[int, int] = (100, 300),
        n: tuple[int, int] = (50, 150),
        rank: tuple[int, int] = (4, 12),
        noise: tuple[float, float] = (0.0, 0.2),
        grad_noise: tuple[float, float] = (0.5, 2.0),
        batch_sizes: tuple[int, ...] = (16, 32, 64),
    ) -> None:
        super().__init__(seed)
        self.ranges = {
            "train": {"m": m, "n": n, "rank": rank, "noise": noise, "grad_noise": grad_noise},
        }
        self.ranges["val"] = self.ranges["test"] = self.ranges["train"]
        self.ranges["shift"] = {
            "m": (2 * m[1], 3 * m[1]),
            "n": (2 * n[1], 3 * n[1]),
            "rank": (rank[1], 2 * rank[1]),
            "noise": (noise[1], 2 * noise[1] + 0.1),
            "grad_noise": (grad_noise[1], 2 * grad_noise[1]),
        }
        for split, ranges in self.ranges.items():
            for key, (lo, hi) in ranges.items():
                if not lo <= hi:
                    raise ValueError(
                        f"{key} range for {split} must have low <= high, got {(lo, hi)}"
                    )
        self.batch_sizes = {"train": batch_sizes, "val": batch_sizes, "test": batch_sizes}
        self.batch_sizes["shift"] = tuple(sorted({max(1, b // 2) for b in batch_sizes}))

    def max_shape(self, split: str) -> tuple[int, int, int, int]:
        """Largest ``(m, n, rank, batch_size)`` any instance of ``split`` can have."""
        check_split(split)
        r = self.ranges[split]
        return int(r["m"][1]), int(r["n"][1]), int(r["rank"][1]), max(self.batch_sizes[split])

    def instance_config(self, split: str, index: int) -> NMFConfig:
        """Return the config of instance ``index`` of ``split`` (pure in its arguments)."""
        rng = self.rng_for(split, index)
        r = self.ranges[split]
        m = int(rng.integers(r["m"][0], r["m"][1] + 1))
        n = int(rng.integers(r["n"][0], r["n"][1] + 1))
        rank = int(rng.integers(r["rank"][0], r["rank"][1] + 1))
        noise = round(float(rng.uniform(*r["noise"])), 2)
        grad_noise = round(float(rng.uniform(*r["grad_noise"])), 2)
        batch = int(rng.choice(self.batch_sizes[split]))
        return NMFConfig(
            m=m,
            n=n,
            rank=min(rank, m, n),
            noise=noise,
            grad_noise=grad_noise,
            batch_size=min(batch, m),
            seed=int(rng.integers(2**31)),
            split=split,
            index=int(index),
        )

    def make_task(self, config: NMFConfig, **kwargs: Any) -> NMFTask:
        """Build the task of ``config``."""
        return NMFTask.from_config(config, **kwargs)
