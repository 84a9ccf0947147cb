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
