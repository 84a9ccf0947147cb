"""AutoLRS (Jin et al., 2021): a constant LR per stage, found by Bayesian optimisation.

Training is cut into stages of τ inner steps. At the start of each stage, Gaussian-process
BO over ``log LR`` in ``[lr_min, lr_max]`` evaluates ``k`` LRs (default 10). Each evaluation
trains ``τ' = τ/10`` steps from the same snapshot (same minibatches), smooths the loss series,
fits ``y = a·exp(b·t) + c`` with ``b < 0`` and extrapolates it to the end of the stage, ``t =
τ``; the training then rolls back and the stage runs at the LR with the best forecast. τ
doubles after every stage up to ``tau_max``. So a stage spends as many exploration steps
(``k τ'``) as training steps, as in the paper; they are counted as extra compute.

τ scales with the run: by default ``τ_0`` is about a sixteenth of the budget, rounded to a
multiple of the decision interval (2,000 steps at 50 per decision: ``τ_0 = 100``, ``τ' =
10``), and ``tau_max = 8 τ_0``.

The forecaster (:func:`fit_exponential`, :func:`forecast_loss`) is guarded where the
original crashes or predicts negative losses: the fit is a variable-projection least squares
(for fixed ``b`` the model is linear in ``a`` and ``c``; ``b`` is searched on a log grid and
refined by bounded Brent), constrained to ``c >= 0`` and ``b`` in a finite negative range, so
flat series give ``a ≈ 0``, near-linear ones a slow exponential with a non-negative floor,
and a forecast is always finite and non-negative. Non-finite losses (divergence) make the
forecast pessimistic: the worst finite value seen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize

from metasched.inner_tasks.costs import eval_cost
from metasched.loop import Driver, IntervalInfo
from metasched.schedulers.base import Scheduler, check_int, check_positive, register
from metasched.schedulers.state_codec import decode_tree, encode_tree
from metasched.schedulers.stepwise import lr_cap
from metasched.signal import TrainingSignal

__all__ = ["AutoLRSScheduler", "ExpFit", "bo_minimize", "fit_exponential", "forecast_loss"]

#: Range of the decay rate times the series length, ``-b · T``, the fit searches.
RATE_RANGE = (1e-3, 50.0)


@dataclass(frozen=True, slots=True)
class ExpFit:
    """A least-squares fit ``y = a·exp(b·t) + c`` (``b < 0``, ``c >= 0``)."""

    a: float
    b: float
    c: float
    sse: float

    def __call__(self, t: float | np.ndarray) -> float | np.ndarray:
        """Evaluate the fitted curve at ``t``."""
        return self.a * np.exp(self.b * np.asarray(t, dtype=float)) + self.c


def _linear_ac(e: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Best ``(a, c)`` with ``c >= 0`` for the basis ``a e + c``; returns ``(a, c, sse)``."""
    n = len(y)
    se, sy = float(e.sum()), float(y.sum())
    see, sey = float(e @ e), float(e @ y)
    det = see * n - se * se
    if det > 1e-12 * max(see * n, 1e-300):
        a = (sey * n - se * sy) / det
        c = (see * sy - se * sey) / det
    else:  # e is (nearly) constant: fit the mean
        a, c = 0.0, sy / n
    if c < 0:
        c = 0.0
        a = sey / see if see > 0 else 0.0
    r = y - a * e - c
    return a, c, float(r @ r)


def fit_exponential(t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> ExpFit:
    """Fit ``y = a·exp(b·t) + c`` with ``b < 0`` and ``c >= 0`` by least squares.

    ``t`` and ``y`` must be finite and of equal length ``>= 1``. ``-b`` is searched within
    :data:`RATE_RANGE` divided by the span of ``t``.

    Example:
        >>> t = np.arange(50.0)
        >>> f = fit_exponential(t, 2.0 * np.exp(-0.1 * t) + 0.5)
        >>> round(f.a, 6), round(f.b, 6), round(f.c, 6)
        (2.0, -0.1, 0.5)
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    if t.shape != y.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(f"t and y must be 1-D of equal non-zero length, got {t.shape}, {y.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        raise ValueError("t and y must be finite (forecast_loss filters non-finite losses)")
    t0 = float(t.min())
    span = max(float(t.max()) - t0, 1.0)
    s = (t - t0) / span

    def sse(log_rate: float) -> float:
        return _linear_ac(np.exp(-math.exp(log_rate) * s), y)[2]

    grid = np.linspace(math.log(RATE_RANGE[0]), math.log(RATE_RANGE[1]), 60)
    errs = [sse(g) for g in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = grid[i]
    if hi > lo:
        res = optimize.minimize_scalar(
            sse, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
        )
        if res.fun <= errs[i]:
            best = float(res.x)
    rate = math.exp(best)
    a, c, err = _linear_ac(np.exp(-rate * s), y)
    b = -rate / span
    # shift the origin back from t0 to 0: a·exp(b(t - t0)) = (a·exp(-b t0))·exp(b t)
    return ExpFit(a=a * math.exp(-b * t0), b=b, c=c, sse=err)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < 3:
        return y
    window = min(window, len(y))
    kernel = np.ones(window)
    num = np.convolve(y, kernel, mode="same")
    den = np.convolve(np.ones_like(y), kernel, mode="same")
    return num / den


def forecast_loss(
    losses: Sequence[float] | np.ndarray,
    horizon: float,
    *,
    smooth: int | None = None,
    fallback: float = 0.0,
) -> float:
    """Forecast the loss at step ``horizon`` from a loss series (loss ``i`` at step ``i``).

    The series is smoothed by a centred moving average (``smooth`` points; default a tenth of
    its length), fitted by :func:`fit_exponential` and extrapolated. Guards: the result is
    always finite and ``>= 0``; a series with non-finite values is forecast at its worst
    finite value (a diverging trial must not look good); one without any finite value gives
    ``fallback``; fewer than three points give their mean.

    Example:
        >>> forecast_loss([1.0] * 20, 200), forecast_loss([1.0, 0.9, float("nan")], 100)
        (1.0, 1.0)
    """
    y = np.asarray(losses, dtype=float).ravel()
    finite = np.isfinite(y)
    if not finite.any():
        return float(fallback)
    if not finite.all():
        return float(max(np.max(y[finite]), 0.0))
    if len(y) < 3:
        return float(max(y.mean(), 0.0))
    window = max(1, len(y) // 10) if smooth is None else int(smooth)
    ys = _smooth(y, window)
    fit = fit_exponential(np.arange(len(ys), dtype=float), ys)
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(fit(float(horizon)))
    if not math.isfinite(value):
        return float(max(ys[-1], 0.0))
    return max(value, 0.0)


def bo_minimize(
    objective: Callable[[float], float],
    low: float,
    high: float,
    *,
    k: int = 10,
    n_init: int = 3,
    kappa: float = 2.0,
    grid: int = 201,
    seed: int = 0,
) -> tuple[float, list[float], list[float]]:
    """Minimise ``objective(lr)`` over ``lr`` in ``[low, high]`` with ``k`` evaluations.

    Gaussian-process BO over ``log lr``: ``n_init`` evaluations at fixed quantiles of the
    log range, then a GP (constant × Matern(ν=2.5) + white noise, normalised targets) and the
    lower confidence bound ``μ - kappa·σ`` minimised on a grid of unevaluated points. Returns
    the best evaluated LR, and all LRs and values in evaluation order.

    Example:
        >>> f = lambda lr: (math.log(lr) - math.log(0.03)) ** 2
        >>> best, xs, ys = bo_minimize(f, 1e-4, 1.0, k=10)
        >>> 0.015 < best < 0.06, len(xs)
        (True, 10)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"need 0 < low <= high < inf, got low={low!r}, high={high!r}")
    k = check_int("k", k, minimum=1)
    lo, hi = math.log(low), math.log(high)
    span = hi - lo
    xs: list[float] = []  # in [0, 1]
    ys: list[float] = []

    def evaluate(u: float) -> None:
        xs.append(u)
        y = float(objective(math.exp(lo + u * span)))
        ys.append(y if math.isfinite(y) else math.inf)

    if span == 0:
        evaluate(0.0)
        return low, [low], ys
    inits = [(i + 0.5) / n_init for i in range(min(n_init, k))]
    for u in inits:
        evaluate(u)
    cand = np.linspace(0.0, 1.0, grid)
    while len(xs) < k:
        finite = [y for y in ys if math.isfinite(y)]
        worst = max(finite) if finite else 0.0
        spread = (max(finite) - min(finite)) if len(finite) > 1 else 1.0
        y_arr = np.array([y if math.isfinite(y) else worst + spread for y in ys])
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
            length_scale=0.2, length_scale_bounds=(0.02, 5.0), nu=2.5
        ) + WhiteKernel(1e-3, (1e-8, 1e-1))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(np.array(xs)[:, None], y_arr)
        mu, sd = gp.predict(cand[:, None], return_std=True)
        lcb = mu - kappa * sd
        taken = np.min(np.abs(cand[:, None] - np.array(xs)[None, :]), axis=1) < 0.5 / grid
        lcb[taken] = np.inf
        if not np.isfinite(lcb).any():
            break
        evaluate(float(cand[int(np.argmin(lcb))]))
    best = int(np.argmin(ys))
    lrs = [math.exp(lo + u * span) for u in xs]
    return lrs[best], lrs, ys


@register
class AutoLRSScheduler(Scheduler):
    """AutoLRS: per stage, BO over the LR with forecasts from short trials (module docstring).

    Args:
        k: LRs BO evaluates per stage.
        tau: first stage length τ_0 in inner steps (default: about budget/16, a multiple of
            the decision interval).
        tau_max: cap on τ (default ``8 τ_0``).
        trial_fraction: τ'/τ (default 1/10).
        lr_range: search range ``[lo, hi] × base_lr`` (the upper end is lowered to the
            driver's stability cap).
        kappa: exploration weight of the lower confidence bound.
        seed: seed of the GP's optimiser.

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.nmf import NMFTask
        >>> from metasched.schedulers import run_schedule
        >>> task = NMFTask.from_matrix(np.ones((30, 20)), rank=2, batch_size=8)
        >>> s = AutoLRSScheduler(k=4, tau=100)
        >>> tr = run_schedule(task, s, budget=300, interval=50)
        >>> [h["tau"] for h in s.history], s.extra_evals  # one full evaluation per stage
        ([100, 200], 2)
        >>> tr.extra_steps  # BO trials 4 x 10 + 4 x 20 steps, + 2 evaluations at 0.74 steps
        121
    """

    name = "autolrs"
    drives_training = True

    def __init__(
        self,
        *,
        k: int = 10,
        tau: int | None = None,
        tau_max: int | None = None,
        trial_fraction: float = 0.1,
        lr_range: list[float] | tuple[float, float] = (0.01, 10.0),
        kappa: float = 2.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        k = check_int("k", k, minimum=1)
        if tau is not None:
            tau = check_int("tau", tau, minimum=1)
        if tau_max is not None:
            tau_max = check_int("tau_max", tau_max, minimum=1)
        if tau is not None and tau_max is not None and tau_max < tau:
            raise ValueError(f"tau_max ({tau_max}) must be >= tau ({tau})")
        trial_fraction = check_positive("trial_fraction", trial_fraction)
        if trial_fraction > 1:
            raise ValueError(f"trial_fraction must lie in (0, 1], got {trial_fraction!r}")
        ok = isinstance(lr_range, list | tuple) and len(lr_range) == 2
        if ok:
            lo, hi = (check_positive("lr_range", v) for v in lr_range)
            ok = lo <= hi
        if not ok:
            raise ValueError(
                f"lr_range must be a pair [low, high] with low <= high, got {lr_range!r}"
            )
        kappa = check_positive("kappa", kappa, allow_zero=True)
        seed = check_int("seed", seed, minimum=0)
        self.k, self.tau0, self.tau_max, self.trial_fraction = k, tau, tau_max, trial_fraction
        self.lr_range, self.kappa, self.seed = (lo, hi), kappa, seed
        self._set_config(
            k=k,
            tau=tau,
            tau_max=tau_max,
            trial_fraction=trial_fraction,
            lr_range=[lo, hi],
            kappa=kappa,
            seed=seed,
        )
        self._init_state()

    def _init_state(self) -> None:
        self.tau = 0  # length of the next stage (0: not started)
        self.stage_left = 0
        self._extra_steps = 0
        self.extra_evals = 0
        #: Training-step equivalents of :attr:`extra_evals` (see ``eval_cost``).
        self.eval_steps = 0.0
        #: One record per stage: step, tau, trial steps, LRs tried, forecasts, chosen LR.
        self.history: list[dict[str, Any]] = []

    @property
    def extra_steps(self) -> int:
        """Inner steps spent in BO trials plus the stage-start evaluations (``eval_cost``)."""
        return self._extra_steps + round(self.eval_steps)

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return the search range ``lr_range × base_lr``."""
        return (self.lr_range[0] * base_lr, self.lr_range[1] * base_lr)

    def first_tau(self, budget: int, interval: int) -> int:
        """τ_0 for a run: ``tau`` if given, else about ``budget/16`` in whole intervals."""
        if self.tau0 is not None:
            return self.tau0
        return interval * max(1, round(budget / (16 * interval)))

    # -- protocol --------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        self._init_state()
        return base_lr

    def _step(self, signal: TrainingSignal) -> float:
        return self._lr  # stages are searched in advance()

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one interval; at a stage start, search the stage's LR first."""
        if not self.base_lrs:
            raise RuntimeError("AutoLRSScheduler.advance() called before reset(base_lr)")
        if self.stage_left <= 0:
            self._search(driver)
        sig, info = driver.advance(self._lr)
        self.stage_left -= info.inner_steps
        return sig, info

    def _search(self, driver: Driver) -> None:
        tau0 = self.first_tau(driver.budget, driver.interval)
        tau_max = self.tau_max if self.tau_max is not None else 8 * tau0
        tau = tau0 if self.tau == 0 else self.tau
        horizon = min(tau, driver.budget - driver.step)
        trial = max(1, round(self.trial_fraction * tau))
        lo, hi = self.bounds(self.base_lrs[0])
        hi = max(min(hi, lr_cap(driver)), lo)
        origin = driver.snapshot()
        task = driver.task
        ref = float(task.evaluate())
        self.extra_evals += 1
        self.eval_steps += eval_cost(task)
        penalty = math.log(max(10.0 * ref, 1e-300)) if math.isfinite(ref) else 0.0
        forecasts: list[float] = []

        def objective(lr: float) -> float:
            driver.restore(origin)
            applied, _ = driver.clip_lr(lr)
            stats = task.train(trial, applied)
            self._extra_steps += stats.n_done
            if stats.diverged:
                forecasts.append(math.inf)
                return penalty
            f = forecast_loss(stats.losses, horizon, fallback=10.0 * ref)
            forecasts.append(f)
            return math.log(max(f, 1e-300))

        seed = self.seed + len(self.history)
        best, lrs, _ = bo_minimize(objective, lo, hi, k=self.k, kappa=self.kappa, seed=seed)
        driver.restore(origin)
        self._lr = best
        self.history.append(
            {
                "step": driver.step,
                "tau": tau,
                "trial_steps": trial,
                "lrs": lrs,
                "forecasts": [f if math.isfinite(f) else None for f in forecasts],
                "lr": best,
            }
        )
        self.stage_left = tau
        self.tau = min(2 * tau, tau_max)

    # -- state -----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return encode_tree(
            {
                "tau": self.tau,
                "stage_left": self.stage_left,
                "extra_steps": self._extra_steps,
                "extra_evals": self.extra_evals,
                "eval_steps": self.eval_steps,
                "history": self.history,
            }
        )

    def _set_state(self, state: dict[str, Any]) -> None:
        st = decode_tree(state)
        self.eval_steps = float(st.get("eval_steps", 0.0))
        self.tau = int(st["tau"])
        self.stage_left = int(st["stage_left"])
        self._extra_steps = int(st["extra_steps"])
        self.extra_evals = int(st["extra_evals"])
        self.history = st["history"]
