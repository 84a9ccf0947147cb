"""The tuning protocol of the baselines, and the tuning-cost view.

**Protocol.** A tuned baseline is run at every point of its grid (an LR multiple of the
instance's reference LR, possibly joined with other settings) on the same ``n`` ``train``
instances. Each run is scored by its *log final loss*; the grid point with the lowest **mean**
score over the instances wins (ties: the earlier grid point). The mean of logs is smooth
where a 10-instance median is flat within noise, and it weighs every instance on the same
relative scale.

**Diverged runs.** A run that diverged (or collapsed, or ended non-finite) scores
``log(DIVERGED_FACTOR × its initial loss)``: ten times worse than where it started. The
penalty is finite, so a mean over instances stays a number (one divergence among 40 costs a
grid point ``log(10 L0 / L_T) / 40`` instead of making it ``inf``); it is larger than the
score of any run that made progress; and it depends on that run alone, so which grid point
wins among any subset of the grid never depends on the points left out (the tuning-cost view
relies on this).

**Uncertainty and flat optima.** Every grid point's mean score gets a percentile-bootstrap
95% CI (instances resampled with replacement, the same resample for every point). Since all
points run on the same instances, a comparison with the winner is *paired*: a grid point is
*indistinguishable* from the winner when the bootstrap 95% CI of its mean score minus the
winner's (per resample, over the same instances) reaches down to 0 or below. (Overlapping
marginal CIs would be far too lenient: instances differ much more from each other than
neighbouring LRs do on one instance.) The tuned value *sits in a flat region* when at least
one of its grid neighbours (the points one step away along one axis of the grid) is
indistinguishable from it: the data cannot tell the winner from that neighbour, so the
choice between them is noise and the tuned value should be read as a range (``flat`` lists
every indistinguishable point).

**Tuning-cost view.** *One tuning run* is one grid point trained on one ``train`` instance
(one full main-line budget). Tuning with a random subset of ``k`` grid points on all ``n``
instances costs ``k × n`` tuning runs. For each ``k`` the curve gives the test median of the
point the protocol picks from the subset, averaged over **all** ``C(P, k)`` subsets of the
``P`` grid points (computed exactly, not by sampling: with per-run penalties the pick from a
subset is its best-ranked point, and the point ranked ``r`` on the full grid is the pick of
``C(P - r, k - 1)`` of the subsets). At ``k = P`` it is the fully tuned baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DIVERGED_FACTOR",
    "CostPoint",
    "TuningCurve",
    "cost_curve",
    "grid_neighbours",
    "log_score",
    "runs_to_match",
    "tune_curve",
]

#: A diverged run scores as if it had ended at this multiple of its initial loss.
DIVERGED_FACTOR = 10.0


def log_score(final_loss: float | None, initial_loss: float | None, diverged: bool) -> float:
    """Score of one tuning run: ``log(final loss)``, or the divergence penalty.

    Args:
        final_loss: the run's final (validation) loss.
        initial_loss: its loss before training (the penalty's scale).
        diverged: whether the run diverged or collapsed.

    Returns:
        ``log(final_loss)`` for a finished run; ``log(DIVERGED_FACTOR * initial_loss)`` for a
        diverged or non-finite one (``log(DIVERGED_FACTOR)`` if the initial loss is unknown).

    Example:
        >>> round(log_score(0.01, 1.0, False), 4), round(log_score(None, 1.0, True), 4)
        (-4.6052, 2.3026)
    """
    ok = final_loss is not None and math.isfinite(final_loss) and final_loss > 0
    if ok and not diverged:
        return math.log(float(final_loss))  # type: ignore[arg-type]
    scale = 1.0
    if initial_loss is not None and math.isfinite(initial_loss) and initial_loss > 0:
        scale = float(initial_loss)
    if ok:  # diverged but finite (e.g. a collapse): never better than its own end
        scale = max(scale, float(final_loss))  # type: ignore[arg-type]
    return math.log(DIVERGED_FACTOR * scale)


def grid_neighbours(coords: Sequence[Sequence[int]]) -> list[list[int]]:
    """For each grid point (its index along every axis), the points one axis step away."""
    index = {tuple(c): i for i, c in enumerate(coords)}
    out = []
    for c in coords:
        nb = []
        for axis in range(len(c)):
            for d in (-1, 1):
                other = list(c)
                other[axis] += d
                j = index.get(tuple(other))
                if j is not None:
                    nb.append(j)
        out.append(sorted(nb))
    return out


@dataclass(frozen=True)
class TuningCurve:
    """The protocol's outcome on one grid (see the module docstring).

    Attributes:
        mean: mean log final loss of each grid point over the instances.
        lo, hi: its percentile-bootstrap 95% CI.
        n_instances: tuning instances per grid point.
        n_diverged: diverged runs per grid point.
        best: index of the winning grid point (lowest ``mean``).
        flat: indices of the points indistinguishable from the winner (the winner included):
            the paired bootstrap 95% CI of their mean score minus the winner's reaches 0.
        in_flat_region: a grid neighbour of the winner is indistinguishable from it.
        at_grid_edge: the winner is at an end of the LR-multiple axis (axis 0).
    """

    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n_instances: int
    n_diverged: tuple[int, ...]
    best: int
    flat: tuple[int, ...]
    in_flat_region: bool
    at_grid_edge: bool

    @property
    def ranking(self) -> list[int]:
        """Grid indices from best to worst (ties: earlier point first)."""
        return sorted(range(len(self.mean)), key=lambda i: (self.mean[i], i))


def tune_curve(
    scores: np.ndarray,
    coords: Sequence[Sequence[int]] | None = None,
    *,
    diverged: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> TuningCurve:
    """Apply the protocol to a score matrix.

    Args:
        scores: ``(grid points, instances)`` log scores (:func:`log_score`), all finite.
        coords: each point's index along every grid axis (axis 0: the LR multiple); default:
            a one-axis grid in the order given.
        diverged: ``(grid points, instances)`` booleans, for the counts only.
        n_boot: bootstrap resamples of the instances.
        seed: seed of the bootstrap.

    Returns:
        The :class:`TuningCurve`.

    Raises:
        ValueError: an empty or non-finite score matrix, or coords of another length.

    Example:
        >>> s = np.array([[0.0, 0.2], [-1.0, -0.8], [-0.9, -0.7]])
        >>> c = tune_curve(s)  # point 2 is 0.1 worse on both instances: clearly worse
        >>> c.best, c.flat, c.in_flat_region, c.at_grid_edge
        (1, (1,), False, False)
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty (points, instances) matrix: {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (score diverged runs with log_score)")
    n_points, n = scores.shape
    if coords is None:
        coords = [(i,) for i in range(n_points)]
    if len(coords) != n_points:
        raise ValueError(f"{len(coords)} coords for {n_points} grid points")
    mean = scores.mean(axis=1)
    best = min(range(n_points), key=lambda i: (mean[i], i))
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_points, n]))
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = scores[:, idx].mean(axis=2)  # (points, n_boot), the same resamples for every point
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=1)
    diff_lo = np.percentile(boot - boot[best], 2.5, axis=1)  # paired: same resamples
    flat = [i for i in range(n_points) if diff_lo[i] <= 0.0]
    nb = grid_neighbours(coords)[best]
    axis0 = [c[0] for c in coords]
    at_edge = len(set(axis0)) > 1 and coords[best][0] in (min(axis0), max(axis0))
    n_div = (
        tuple(int(x) for x in np.asarray(diverged).sum(axis=1))
        if diverged is not None
        else (0,) * n_points
    )
    return TuningCurve(
        mean=tuple(float(x) for x in mean),
        lo=tuple(float(x) for x in lo),
        hi=tuple(float(x) for x in hi),
        n_instances=n,
        n_diverged=n_div,
        best=int(best),
        flat=tuple(flat),
        in_flat_region=any(j in flat for j in nb),
        at_grid_edge=bool(at_edge),
    )


@dataclass(frozen=True)
class CostPoint:
    """One point of the tuning-cost curve.

    Attributes:
        k: grid points in the tuning subset.
        tuning_runs: ``k × instances`` tuning runs.
        expected: the evaluated-split median of the pick, averaged over all subsets of size k.
        q10, q90: 10th and 90th percentile of that median over the subsets.
        p_best: probability that a subset of size ``k`` picks the full grid's winner.
    """

    k: int
    tuning_runs: int
    expected: float
    q10: float
    q90: float
    p_best: float


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[min(int(np.searchsorted(cum, q * cum[-1] - 1e-12)), len(v) - 1)])


def cost_curve(
    ranking: Sequence[int], eval_medians: Sequence[float], n_instances: int
) -> list[CostPoint]:
    """Compute the tuning-cost curve (see the module docstring), one point per subset size.

    Args:
        ranking: grid indices from the protocol's best to worst on the full grid
            (:attr:`TuningCurve.ranking`).
        eval_medians: median loss of each grid point on the evaluated split.
        n_instances: tuning instances per grid point (a subset of ``k`` points costs
            ``k × n_instances`` tuning runs).

    Returns:
        ``CostPoint`` for ``k = 1 .. P``.

    Example:
        >>> [round(p.expected, 3) for p in cost_curve([0, 1, 2], [1.0, 2.0, 3.0], 10)]
        [2.0, 1.333, 1.0]
    """
    p = len(ranking)
    if p == 0 or len(eval_medians) != p:
        raise ValueError(f"ranking and eval_medians must have the same non-zero length, got {p}")
    if sorted(ranking) != list(range(p)):
        raise ValueError(f"ranking must be a permutation of 0..{p - 1}, got {list(ranking)}")
    vals = np.array([float(eval_medians[i]) for i in ranking])
    out = []
    for k in range(1, p + 1):
        total = math.comb(p, k)
        # the point ranked r (0-based) is the pick of C(p - 1 - r, k - 1) subsets
        w = np.array([math.comb(p - 1 - r, k - 1) / total for r in range(p)])
        fin = np.isfinite(vals)
        # a pick that never finishes on the evaluated split makes the average infinite
        expected = math.inf if np.any(w[~fin] > 0) else float(np.sum(w[fin] * vals[fin]))
        out.append(
            CostPoint(
                k=k,
                tuning_runs=k * n_instances,
                expected=expected,
                q10=_weighted_quantile(vals, w, 0.1),
                q90=_weighted_quantile(vals, w, 0.9),
                p_best=float(w[0]),
            )
        )
    return out


def runs_to_match(curve: Sequence[CostPoint], target: float) -> float:
    """Fewest tuning runs whose expected median is at most ``target`` (``inf``: never).

    Example:
        >>> runs_to_match(cost_curve([0, 1, 2], [1.0, 2.0, 3.0], 10), 1.5)
        20.0
    """
    if not math.isfinite(target):
        return math.nan
    for pt in curve:
        if pt.expected <= target:
            return float(pt.tuning_runs)
    return math.inf
