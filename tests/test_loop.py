"""The shared driving loop: one clipping default everywhere (issue 12, item 10; issue 13)."""

import dataclasses
import inspect

import numpy as np
import pytest

from metasched.distill import sanity
from metasched.distill.compare import CompareSpec
from metasched.envs.batched import BatchedNMFVecEnv
from metasched.envs.lr_control import LRControlEnv
from metasched.inner_tasks.nmf import NMFTask
from metasched.loop import (
    ANALYTIC_SCALE,
    DEFAULT_CLIP,
    DEFAULT_KAPPA,
    DEFAULT_KAPPA_MEASURED,
    Driver,
)
from metasched.schedulers import make_scheduler
from metasched.schedulers.runner import Run, run_schedule


def _default(func, name):
    return inspect.signature(func).parameters[name].default


@pytest.mark.parametrize(
    "func",
    [
        Driver,
        Run,
        run_schedule,
        LRControlEnv,
        BatchedNMFVecEnv,
        sanity.constant_vs_cosine,
    ],
    ids=lambda f: f.__qualname__,
)
def test_every_kappa_and_clip_default_is_the_shared_one(func):
    assert _default(func, "kappa") == DEFAULT_KAPPA
    assert _default(func, "clip") == DEFAULT_CLIP


def test_compare_spec_uses_the_shared_kappa():
    fields = {f.name: f.default for f in dataclasses.fields(CompareSpec)}
    assert fields["kappa"] == DEFAULT_KAPPA


def test_driver_clips_at_default_kappa_times_the_bound():
    task = NMFTask.from_matrix(np.ones((20, 10)), rank=2, batch_size=5)
    drv = Driver(task, budget=50, interval=10)
    drv.start(np.random.default_rng(0))
    bound = task.lr_bound()
    assert bound is not None and bound > 0
    assert drv.bound == pytest.approx(ANALYTIC_SCALE * bound)  # the common scale
    _, info = drv.advance(1e6)
    assert info.clipped
    assert info.applied_lr == pytest.approx(DEFAULT_KAPPA * bound)
    assert DEFAULT_KAPPA == 2.0  # the value the env, runner and comparison were tuned with


def _mlp_task():
    from metasched.inner_tasks import MLPConfig, MLPTask

    return MLPTask(MLPConfig(width=16, depth=1, batch_size=16))


def test_auto_is_deterministic_on_nmf():
    runs = []
    for clip in ("auto", "deterministic"):
        task = NMFTask.from_matrix(np.random.default_rng(1).random((30, 12)), rank=3, batch_size=6)
        tr = run_schedule(task, make_scheduler("constant"), budget=60, interval=10, clip=clip,
                          base_lr=1e3)  # fmt: skip
        runs.append(tr)
    a, b = runs
    np.testing.assert_array_equal(a["applied_lr"], b["applied_lr"])
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])
    assert a.extra_steps == b.extra_steps == 0 and a.clip_count == b.clip_count > 0


def test_auto_measures_the_bound_of_a_network_and_clips_at_kappa_measured():
    task = _mlp_task()
    drv = Driver(task, budget=80, interval=20)
    assert drv.clip == "auto" and drv.source == "measured"
    drv.start(np.random.default_rng(0))
    bound = drv.bound
    assert bound is not None and 0 < bound < 1e3
    assert drv.extra_steps > 0  # the fork test ran and is charged
    sig, info = drv.advance(1e6)
    assert info.clipped and info.applied_lr == pytest.approx(DEFAULT_KAPPA_MEASURED * bound)
    assert sig.lr_bound is not None and not sig.diverged
    assert task.stability is None  # the driver's estimator is not left on the task


def test_measured_on_nmf_uses_the_hessian_bound():
    task = NMFTask.from_matrix(np.random.default_rng(1).random((30, 12)), rank=3, batch_size=6)
    drv = Driver(task, budget=40, interval=10, clip="measured")
    drv.start(np.random.default_rng(0))
    analytic = task.lr_bound()
    # 2 / lam of the minibatch Hessian: near the common scale 2 / L (benchmark: median 1.0)
    assert 0.25 * ANALYTIC_SCALE * analytic < drv.bound < 4 * ANALYTIC_SCALE * analytic
    assert drv.extra_steps > 0


def test_measured_bound_cost_counts_in_compute():
    def run(clip):
        return run_schedule(_mlp_task(), make_scheduler("constant"), budget=100, interval=20,
                            clip=clip)  # fmt: skip

    measured, none = run("measured"), run("none")
    assert none.extra_steps == 0
    assert measured.extra_steps > 0
    # compute = main line + extra: the last row's inner_steps carries the estimator's cost
    assert measured["inner_steps"][-1] == 100 + measured.extra_steps
    assert measured.to_dict()["extra_steps"] == measured.extra_steps


def test_measured_bound_is_amortised():
    task = _mlp_task()
    drv = Driver(task, budget=800, interval=40, clip="measured")  # MLP-v1's budget
    drv.start(np.random.default_rng(0))
    while not drv.done:
        drv.advance(0.05)
    # 20 bound queries (start + 19 intervals: none after the last), re-measured on every
    # 10th, warm-started; a steady LR triggers no extra measurement
    assert drv.estimator.n_measurements == 2
    assert drv.extra_steps < 0.3 * 800  # cold start ~90 steps, then ~30-80 per re-measurement


def test_bad_clip_and_kappa_measured_are_rejected():
    task = _mlp_task()
    with pytest.raises(ValueError, match=r"clip must be one of.*'sometimes'"):
        Driver(task, 10, 5, clip="sometimes")
    with pytest.raises(ValueError, match=r"kappa_measured must be .* got -1"):
        Driver(task, 10, 5, kappa_measured=-1)
