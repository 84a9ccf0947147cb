"""Statistics of a comparison, checked against values computed by hand."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasched.distill.stats import (
    aggregate,
    auc_log_loss,
    iqm,
    loss_at_compute,
    performance_profile,
    probability_of_improvement,
    run_metrics,
    steps_to_target,
    win_rates,
)

# a small fixed table: final losses of two schedulers on four problems
A = [1.0, 2.0, 3.0, 4.0]
B = [2.0, 2.0, 1.0, math.inf]  # B diverged on the last problem


def test_win_rates_by_hand():
    eq, strict = win_rates({"a": A, "b": B})
    # a <= b * 1.005: 1<=2 yes, 2<=2.01 yes, 3<=1.005 no, 4<=inf yes
    assert eq["a"]["b"] == 0.75
    # b <= a * 1.005: 2<=1.005 no, 2<=2.01 yes, 1<=3.015 yes, inf<=4.02 no
    assert eq["b"]["a"] == 0.5
    # a < b * 0.995: 1<1.99 yes, 2<1.99 no, 3<0.995 no, finite vs diverged yes
    assert strict["a"]["b"] == 0.5
    assert strict["b"]["a"] == 0.25
    assert eq["a"]["a"] == 1.0 and strict["a"]["a"] == 0.0


def test_two_diverged_runs_tie():
    eq, strict = win_rates({"a": [math.inf], "b": [math.inf]})
    assert eq["a"]["b"] == eq["b"]["a"] == 1.0
    assert strict["a"]["b"] == strict["b"]["a"] == 0.0


def test_win_rates_need_aligned_results():
    with pytest.raises(ValueError, match="aligned"):
        win_rates({"a": [1.0], "b": [1.0, 2.0]})


def test_performance_profile_by_hand():
    # best per problem: 1, 2, 1, 4 -> ratios a: 1, 1, 3, 1; b: 2, 1, 1, inf
    prof = performance_profile({"a": A, "b": B}, [1.0, 2.0, 3.0])
    assert prof["a"] == [0.75, 0.75, 1.0]
    assert prof["b"] == [0.5, 0.75, 0.75]


def test_iqm_by_hand():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([1, 2, 3, 100]) == pytest.approx(2.5)  # mean of 2, 3
    assert iqm([1, 2, 3, math.inf]) == pytest.approx(2.5)  # inf is trimmed
    assert iqm([1, math.inf, math.inf, math.inf]) == math.inf


def test_aggregate_median_iqm_and_ci():
    agg = aggregate([4, 1, 3, 2, 8, 6, 5, 7], seed=0)
    assert agg.n == 8 and agg.median == 4.5 and agg.iqm == pytest.approx(4.5)
    assert agg.median_ci[0] <= agg.median <= agg.median_ci[1]
    assert agg.iqm_ci[0] <= agg.iqm <= agg.iqm_ci[1]
    assert aggregate([4, 1, 3, 2, 8, 6, 5, 7], seed=0) == agg  # seeded
    const = aggregate([2.0, 2.0, 2.0])
    assert const.median_ci == (2.0, 2.0)


@given(st.lists(st.floats(0.01, 100.0), min_size=2, max_size=30))
def test_ci_brackets_the_statistic(xs):
    agg = aggregate(xs, seed=1)
    assert agg.median_ci[0] <= agg.median + 1e-12
    assert agg.median_ci[1] >= agg.median - 1e-12
    assert min(xs) - 1e-12 <= agg.iqm <= max(xs) + 1e-12


def test_curve_metrics_by_hand():
    steps = [0, 50, 100]
    losses = [1.0, math.e**-1, math.e**-2]
    # trapezoid of log-loss (0, -1, -2) over [0, 100], divided by 100: -1
    assert auc_log_loss(steps, losses, 100) == pytest.approx(-1.0)
    assert auc_log_loss(steps[:2], losses[:2], 100) == math.inf  # stopped early
    assert steps_to_target(steps, losses, 0.5) == 50
    assert steps_to_target(steps, losses, 0.01) == math.inf
    # compute 0, 75, 150 (probes): at compute 100 the last point within it is step 50
    assert loss_at_compute([0, 75, 150], losses, 100) == pytest.approx(math.e**-1)


def test_run_metrics_of_a_diverged_run():
    m = run_metrics([0, 50], [1.0, math.inf], [0, 50], budget=100, final_loss=math.inf,
                    diverged=True, wall_time=0.1, target=0.5)  # fmt: skip
    assert m.final_loss == m.best_loss == m.equal_compute_loss == math.inf
    assert m.steps_to_target == math.inf and m.diverged
    assert np.isinf(m.auc_log_loss)


# -- issue 17, item 7: the statistics rliable computes agree with the hand-written ones -------
def _iqm_by_hand(values):
    """The hand-written IQM metasched used before rliable (the reference)."""
    x = np.sort(np.asarray(values, dtype=float))
    k = math.floor(0.25 * x.size)
    mid = x[k : x.size - k]
    return math.inf if np.isinf(mid).any() else float(mid.mean())


@given(
    st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=40),
    st.integers(0, 12),
)
def test_rliable_iqm_equals_the_hand_written_one(xs, n_inf):
    data = xs + [math.inf] * n_inf
    assert iqm(data) == pytest.approx(_iqm_by_hand(data), rel=1e-12)


# a fixed table; the numbers were computed by metasched's hand-written IQM before the switch
X = [0.018327, 0.021266, 0.01597, 0.011734, 0.014591, 0.011155, 0.018875, 0.035797, 0.01432,
     0.01343, 0.023399, 0.021894, 0.019307, 0.011502, 0.01805, 0.02593, 0.009353, 0.01457,
     0.007079, 0.009612, 0.007293, 0.016284, 0.009719]  # fmt: skip


def test_aggregate_reproduces_the_numbers_from_before_rliable():
    a = aggregate(X, seed=3)
    assert (a.n, a.median, a.iqm) == (23, 0.014591, pytest.approx(0.015239615384615386, abs=1e-15))
    assert a.median_ci == (0.011734, 0.018875)
    assert a.iqm_ci == pytest.approx((0.012690284615384616, 0.018234950000000003), abs=1e-15)
    b = aggregate(X[:20] + [math.inf] * 3, seed=3)  # three diverged runs: resampled by hand
    assert b.iqm == pytest.approx(0.017364076923076923, abs=1e-15)
    assert b.iqm_ci == (pytest.approx(0.014244, abs=1e-15), math.inf)
    assert b.median_ci == (0.01432, 0.021266)


def test_probability_of_improvement_by_hand():
    # one seed per instance: lower counts 1, equal one half (a diverged run loses)
    p = probability_of_improvement({"a": A, "b": B}, [0, 1, 2, 3])
    assert p["a"]["b"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert p["b"]["a"] == pytest.approx(1 - p["a"]["b"])
    assert p["a"]["a"] == 0.5
    # two seeds per instance: every pair of seeds counts, then the mean over instances
    two = {"a": [1.0, 3.0, 5.0, 5.0], "b": [2.0, 2.0, 6.0, 6.0], "c": [2.0, 2.0, 5.0, 5.0]}
    p = probability_of_improvement(two, [0, 0, 1, 1], pairs=[("a", "b"), ("a", "c")])
    assert p["a"]["b"] == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert p["a"]["c"] == pytest.approx((2 / 4 + 0.5) / 2)  # identical seeds tie: one half
    assert set(p) == {"a"} and set(p["a"]) == {"b", "c"}
    inf = probability_of_improvement({"a": [math.inf], "b": [math.inf]}, [0])
    assert inf["a"]["b"] == 0.5


@given(
    st.lists(st.tuples(st.floats(0.1, 5.0), st.floats(0.1, 5.0)), min_size=1, max_size=12),
    st.integers(1, 3),
)
def test_probability_of_improvement_counts_seed_pairs(rows, seeds):
    inst = [i // seeds for i in range(len(rows))]
    a = [x for x, _ in rows]
    b = [y for _, y in rows]
    got = probability_of_improvement({"a": a, "b": b}, inst)["a"]["b"]
    per = []
    for u in sorted(set(inst)):
        xa = [v for v, i in zip(a, inst, strict=True) if i == u]
        xb = [v for v, i in zip(b, inst, strict=True) if i == u]
        if xa == xb:
            per.append(0.5)  # rliable: identical runs are a draw
            continue
        per.append(np.mean([(x < y) + 0.5 * (x == y) for x in xa for y in xb]))
    assert got == pytest.approx(np.mean(per))


def test_probability_of_improvement_needs_aligned_results():
    with pytest.raises(ValueError, match="aligned"):
        probability_of_improvement({"a": [1.0, 2.0]}, [0])
