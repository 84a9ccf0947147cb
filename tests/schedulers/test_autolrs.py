import math

import numpy as np
import pytest

from metasched.inner_tasks.costs import eval_cost
from metasched.schedulers import AutoLRSScheduler, run_schedule
from metasched.schedulers.autolrs import bo_minimize, fit_exponential, forecast_loss


@pytest.mark.parametrize(
    ("a", "b", "c", "n"),
    [(1.5, -0.02, 0.3, 100), (0.2, -0.3, 0.05, 30), (4.0, -0.005, 1.0, 400), (1.0, -0.1, 0.0, 50)],
)
def test_fit_recovers_synthetic_exponentials_within_one_percent(a, b, c, n):
    t = np.arange(n, dtype=float)
    fit = fit_exponential(t, a * np.exp(b * t) + c)
    assert fit.a == pytest.approx(a, rel=1e-2)
    assert fit.b == pytest.approx(b, rel=1e-2)
    assert fit.c == pytest.approx(c, rel=1e-2, abs=1e-6)


def test_fit_with_offset_time_axis():
    t = np.arange(10.0, 60.0)
    fit = fit_exponential(t, 2.0 * np.exp(-0.05 * t) + 0.4)
    assert (fit.a, fit.b, fit.c) == pytest.approx((2.0, -0.05, 0.4), rel=1e-3)


def test_forecast_extrapolates_a_clean_exponential():
    t = np.arange(20.0)
    y = 1.0 * np.exp(-0.1 * t) + 0.2
    assert forecast_loss(y, 200, smooth=1) == pytest.approx(0.2 + math.exp(-20), rel=1e-3)


@pytest.mark.parametrize(
    "series",
    [
        np.full(30, 0.7),  # flat
        np.linspace(1.0, 0.5, 30),  # near-linear decrease: naive fits go negative
        np.linspace(1.0, 0.99, 30) + 1e-9 * np.arange(30) ** 2,  # almost flat, almost linear
        np.linspace(0.5, 1.0, 30),  # increasing
        np.r_[np.linspace(1.0, 0.8, 10), np.nan, np.linspace(0.8, 0.7, 10)],  # a NaN
        np.r_[np.linspace(1.0, 0.8, 10), np.inf],  # divergence
        np.full(5, np.nan),  # nothing finite
        np.array([0.3]),
        np.array([]),
        np.random.default_rng(0).random(40) * 1e-3,  # pure noise near zero
    ],
)
def test_forecast_is_finite_and_non_negative_on_hard_series(series):
    for horizon in (1, 10 * max(len(series), 1), 1e4):
        f = forecast_loss(series, horizon)
        assert math.isfinite(f) and f >= 0


def test_forecast_guards_behave_sensibly():
    assert forecast_loss(np.full(30, 0.7), 300) == pytest.approx(0.7)
    lin = np.linspace(1.0, 0.5, 30)
    assert 0 <= forecast_loss(lin, 300) < 0.5
    assert forecast_loss(np.r_[np.linspace(1.0, 0.8, 10), np.inf], 100) == pytest.approx(1.0)
    assert forecast_loss([np.nan] * 4, 100, fallback=3.0) == 3.0


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        fit_exponential([0, 1, 2], [1.0, np.nan, 0.5])
    with pytest.raises(ValueError, match="length"):
        fit_exponential([], [])


@pytest.mark.parametrize("optimum", [3e-4, 0.03, 0.5])
def test_bo_finds_the_optimum_of_a_function_of_log_lr_within_factor_two(optimum):
    def f(lr):  # a quadratic in log LR plus a gentle asymmetric term
        x = math.log(lr / optimum)
        return x * x + 0.1 * x + 1.0

    best, lrs, ys = bo_minimize(f, 1e-5, 1.0, k=10, seed=0)
    true_best = optimum * math.exp(-0.05)
    assert true_best / 2 <= best <= true_best * 2
    assert len(lrs) == 10 and min(ys) == f(best)


def test_bo_is_deterministic_and_handles_infinite_values():
    def f(lr):
        return math.inf if lr > 0.1 else (math.log(lr) - math.log(0.01)) ** 2

    a = bo_minimize(f, 1e-4, 1.0, k=8, seed=1)
    b = bo_minimize(f, 1e-4, 1.0, k=8, seed=1)
    assert a == b
    assert 0.005 <= a[0] <= 0.02


def test_stages_double_up_to_the_cap_and_trials_are_counted(nmf_task):
    task = nmf_task(0)
    s = AutoLRSScheduler(k=3, tau=100, tau_max=200)
    tr = run_schedule(task, s, budget=700, interval=50)
    assert [h["tau"] for h in s.history] == [100, 200, 200, 200]
    assert [h["step"] for h in s.history] == [0, 100, 300, 500]
    assert [h["trial_steps"] for h in s.history] == [10, 20, 20, 20]
    # BO trials plus one full-data evaluation per stage at the measured NMF cost
    assert s.extra_evals == 4
    assert tr.extra_steps == 3 * (10 + 20 + 20 + 20) + round(4 * eval_cost(task))
    assert tr.total_steps == 700 + tr.extra_steps
    # the stage LR is constant within a stage and is the chosen one
    lrs = tr["lr"][1:]
    assert np.all(lrs[:2] == s.history[0]["lr"]) and np.all(lrs[2:6] == s.history[1]["lr"])


def test_default_tau_scales_with_the_budget():
    s = AutoLRSScheduler()
    assert s.first_tau(2000, 50) == 100
    assert s.first_tau(200_000, 100) == 12_500
    assert s.first_tau(100, 50) == 50


@pytest.mark.parametrize(
    "kw",
    [{"k": 0}, {"tau": 0}, {"tau": 100, "tau_max": 50}, {"trial_fraction": 2.0}, {"lr_range": [1]}],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        AutoLRSScheduler(**kw)


def test_end_to_end_on_nmf_budget_2000(nmf_task):
    task = nmf_task(0)
    s = AutoLRSScheduler()
    tr = run_schedule(task, s, budget=2000, interval=50)
    assert not tr.diverged and tr.final_loss < 0.5 * tr["train_loss"][0]
    assert [h["tau"] for h in s.history] == [100, 200, 400, 800, 800]
    trials = sum(10 * h["trial_steps"] for h in s.history)
    assert tr.extra_steps == trials + round(len(s.history) * eval_cost(task))
