"""Per-run metrics and the statistics of a comparison.

A *run* is one scheduler on one task instance with one seed. Its metrics come from its
:class:`~metasched.schedulers.runner.Trace`; the aggregates compare schedulers over the
same set of (instance, seed) *problems*:

* **median** and **IQM** (interquartile mean, the 25%-trimmed mean: ``rliable``'s
  ``aggregate_iqm``) of a metric, each with a bootstrap 95% confidence interval over problems
  (``scipy.stats.bootstrap``, percentile method, seeded);
* **win rates**: ``W[a][b]`` = fraction of problems where ``a``'s final loss is equal or
  better than ``b``'s, and the *strict* rate, better by more than a relative margin (0.5%);
* **probability of improvement** (``rliable``, Agarwal et al. 2021): ``P[a][b]`` = the
  probability that ``a``'s final loss on an instance is lower than ``b``'s (over pairs of its
  seeds, ties counting half), averaged over instances;
* **performance profiles** (Dolan & Moré): for each scheduler, the fraction of problems on
  which its final loss is within a factor ``tau`` of the best scheduler's on that problem.

What ``rliable`` does not give is written here: the paired strict win rates and the
Dolan–Moré profile (rliable's profiles are score distributions, a fraction of runs above a
threshold, with no per-problem best). Its stratified bootstrap is not used: it resamples runs
within each task (here one seed per instance would give no spread at all), draws from
NumPy's global random state, and its module needs ``arch``, which does not import with
pandas 3; the CIs resample problems with ``scipy.stats.bootstrap`` from a seeded generator.

Diverged runs have final loss ``inf``: they lose every comparison and count as failures in
the profiles. Medians and IQMs treat them as ``inf`` too (an IQM with more than a quarter of
diverged runs is ``inf``), so a scheduler cannot look good by failing on the hard problems.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rliable import metrics as rly
from scipy import stats as sps

__all__ = [
    "STRICT_MARGIN",
    "Aggregate",
    "RunMetrics",
    "aggregate",
    "auc_log_loss",
    "iqm",
    "loss_at_compute",
    "performance_profile",
    "probability_of_improvement",
    "run_metrics",
    "steps_to_target",
    "win_rates",
]

#: Relative margin of a *strict* win: better by more than 0.5%.
STRICT_MARGIN = 0.005


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (``rliable.metrics.aggregate_iqm``).

    Infinities (diverged runs) sort to the top: trimmed while they are at most a quarter of
    the values, else the IQM is ``inf``.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan
    return float(rly.aggregate_iqm(x))


def auc_log_loss(steps: Sequence[float], losses: Sequence[float], budget: int) -> float:
    """Area under the log-loss curve over ``[0, budget]``, divided by ``budget``.

    The trapezoid rule over the recorded (step, loss) points; a curve that stops early
    (divergence) is continued at its last finite log-loss plus nothing better, i.e. the
    missing part counts at ``+inf`` — so a diverged run has an infinite area.
    """
    s = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    keep = ~np.isnan(y)
    s, y = s[keep], y[keep]
    if s.size < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        return math.inf if s.size else math.nan
    if s[-1] < budget:
        return math.inf
    return float(np.trapezoid(np.log(y), s) / budget)


def steps_to_target(steps: Sequence[float], losses: Sequence[float], target: float) -> float:
    """First main-line step at which the loss is at or below ``target`` (``inf`` if never)."""
    s = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    hit = np.flatnonzero(y <= target)
    return float(s[hit[0]]) if hit.size else math.inf


def loss_at_compute(compute: Sequence[float], losses: Sequence[float], spent: float) -> float:
    """Loss of the last recorded point whose cumulative compute is at most ``spent``.

    The equal-compute view: a scheduler that spends extra inner steps on probes or a
    population reaches a given amount of compute earlier on its main line.
    """
    c = np.asarray(compute, dtype=float)
    y = np.asarray(losses, dtype=float)
    ok = np.flatnonzero(c <= spent + 1e-9)
    return float(y[ok[-1]]) if ok.size else math.nan


@dataclass(frozen=True)
class RunMetrics:
    """Metrics of one run (see the module docstring).

    Attributes:
        final_loss: validation (or full-data) loss at the end; ``inf`` if diverged.
        best_loss: lowest recorded validation loss (``inf`` if diverged).
        auc_log_loss: area under the log-loss curve divided by the budget.
        steps_to_target: main-line steps to reach the target loss (``inf``: never).
        equal_compute_loss: loss when the run had spent ``budget`` inner steps in all.
        compute: inner steps spent in all (main line plus probes, forks, populations).
        wall_time: seconds.
        diverged: whether training diverged.
    """

    final_loss: float
    best_loss: float
    auc_log_loss: float
    steps_to_target: float
    equal_compute_loss: float
    compute: int
    wall_time: float
    diverged: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        """Plain dict."""
        return asdict(self)


def run_metrics(
    steps: Sequence[float],
    losses: Sequence[float],
    compute: Sequence[float],
    *,
    budget: int,
    final_loss: float,
    diverged: bool,
    wall_time: float,
    target: float = math.nan,
) -> RunMetrics:
    """Metrics of a run from its recorded curve (one point per decision, row 0 = start)."""
    y = np.asarray(losses, dtype=float)
    final = math.inf if diverged else float(final_loss)
    finite = y[np.isfinite(y)]
    best = math.inf if diverged else float(min(finite.min(), final) if finite.size else final)
    return RunMetrics(
        final_loss=final,
        best_loss=best,
        auc_log_loss=auc_log_loss(steps, y, budget),
        steps_to_target=steps_to_target(steps, y, target) if math.isfinite(target) else math.nan,
        equal_compute_loss=math.inf if diverged else loss_at_compute(compute, y, budget),
        compute=int(np.asarray(compute)[-1]) if len(compute) else 0,
        wall_time=float(wall_time),
        diverged=bool(diverged),
    )


@dataclass(frozen=True)
class Aggregate:
    """A metric over problems: median and IQM with bootstrap 95% CIs."""

    n: int
    median: float
    median_ci: tuple[float, float]
    iqm: float
    iqm_ci: tuple[float, float]


def _bootstrap_ci(x: np.ndarray, statistic, seed: int) -> tuple[float, float]:
    if x.size < 2 or np.all(x == x[0]):
        v = float(statistic(x)) if x.size else math.nan
        return (v, v)
    if np.isinf(x).any():
        # scipy's bootstrap rejects non-finite statistics: resample by hand, same method
        rng = np.random.default_rng(seed)
        vals = np.sort([statistic(x[i]) for i in rng.integers(0, x.size, (2000, x.size))])
        return (float(vals[49]), float(vals[1949]))
    def vectorised(a: np.ndarray, axis: int = -1) -> np.ndarray:
        if statistic is np.median:
            return np.median(a, axis=axis)
        return sps.trim_mean(a, 0.25, axis=axis)

    res = sps.bootstrap(
        (x,),
        vectorised,
        n_resamples=2000,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def aggregate(values: Iterable[float], *, seed: int = 0) -> Aggregate:
    """Median and IQM of ``values`` with percentile-bootstrap 95% CIs (seeded)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        nan2 = (math.nan, math.nan)
        return Aggregate(0, math.nan, nan2, math.nan, nan2)
    return Aggregate(
        n=int(x.size),
        median=float(np.median(x)),
        median_ci=_bootstrap_ci(x, np.median, seed),
        iqm=iqm(x),
        iqm_ci=_bootstrap_ci(x, iqm, seed + 1),
    )


def win_rates(
    finals: Mapping[str, Sequence[float]], *, margin: float = STRICT_MARGIN
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Pairwise win rates over problems (all sequences aligned by problem).

    Returns ``(equal_or_better, strict)``: ``equal_or_better[a][b]`` is the fraction of
    problems with ``loss_a <= loss_b * (1 + margin)`` and ``strict[a][b]`` the fraction with
    ``loss_a < loss_b * (1 - margin)`` (a diverged ``a`` never wins; a diverged ``b`` loses to
    every finite ``a``; two diverged runs tie).
    """
    names = list(finals)
    arrs = {k: np.asarray(v, dtype=float) for k, v in finals.items()}
    sizes = {a.size for a in arrs.values()}
    if len(sizes) > 1:
        raise ValueError(f"win_rates needs aligned results, got sizes {sorted(sizes)}")
    eq: dict[str, dict[str, float]] = {}
    strict: dict[str, dict[str, float]] = {}
    for a in names:
        eq[a], strict[a] = {}, {}
        for b in names:
            x, y = arrs[a], arrs[b]
            both_inf = np.isinf(x) & np.isinf(y)
            with np.errstate(invalid="ignore"):
                ge = (x <= y * (1 + margin)) | both_inf
                st = (x < y * (1 - margin)) | (np.isfinite(x) & np.isinf(y))
            eq[a][b] = float(np.mean(ge)) if x.size else math.nan
            strict[a][b] = float(np.mean(st & ~both_inf)) if x.size else math.nan
    return eq, strict


def probability_of_improvement(
    finals: Mapping[str, Sequence[float]],
    instances: Sequence[Any],
    pairs: Iterable[tuple[str, str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Rliable's probability of improvement between schedulers, on final loss (lower wins).

    Args:
        finals: final losses per scheduler, aligned by problem.
        instances: the instance of each problem; the problems of one instance (its seeds)
            are one rliable *task*, each of them a *run*.
        pairs: the ``(a, b)`` pairs wanted (default: every ordered pair).

    Returns:
        ``P[a][b]``: for each instance, the probability that a random seed of ``a`` ends lower
        than a random seed of ``b`` (Mann–Whitney U over the seed pairs, ties counting half),
        averaged over instances. ``P[a][b] + P[b][a] = 1``; two diverged runs tie.
    """
    arrs = {k: np.asarray(v, dtype=float) for k, v in finals.items()}
    inst = list(instances)
    for k, a in arrs.items():
        if a.size != len(inst):
            raise ValueError(
                f"probability_of_improvement needs aligned results: {k!r} has {a.size} "
                f"problems, instances has {len(inst)}"
            )
    groups = [np.array([i == u for i in inst]) for u in dict.fromkeys(inst)]
    if pairs is None:
        pairs = [(a, b) for a in arrs for b in arrs]
    out: dict[str, dict[str, float]] = {}
    for a, b in pairs:
        if not groups:
            out.setdefault(a, {})[b] = math.nan
            continue
        # rliable scores are "higher is better" with shape (runs, tasks): one task at a time
        p = [rly.probability_of_improvement(-arrs[a][g, None], -arrs[b][g, None]) for g in groups]
        out.setdefault(a, {})[b] = float(np.mean(p))
    return out


def performance_profile(
    finals: Mapping[str, Sequence[float]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """Dolan–Moré profile: fraction of problems where ``loss / best loss <= tau``.

    The best loss of a problem is the lowest finite final loss any scheduler reached on it;
    problems where every scheduler diverged are left out.
    """
    names = list(finals)
    mat = np.array([np.asarray(finals[k], dtype=float) for k in names])
    finite = np.where(np.isfinite(mat), mat, np.nan)
    keep = ~np.all(np.isnan(finite), axis=0)
    mat, finite = mat[:, keep], finite[:, keep]
    if mat.shape[1] == 0:
        return {k: [math.nan] * len(taus) for k in names}
    best = np.nanmin(finite, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(mat), mat / best, np.inf)
    return {
        k: [float(np.mean(ratio[i] <= t)) for t in taus] for i, k in enumerate(names)
    }
