"""The measured stability bound of stacked networks: the single fork estimator, batched.

Agreement is tested exactly (same bounds, same costs). The grid is discrete, so a stacked
slot and the single task find the same grid point unless a candidate's pass/fail margin
(its running-mean loss against ``rise`` times the paired reference) is within rounding of
zero; the stacked and single computations differ by ~1e-15 relative in float64 and ~1e-7 in
float32, while the margins at these checkpoints are far larger. Training between the checks
runs at a quarter of the bound: at half of it, rounding differences grow ~10x per decision
interval on ``mlp`` (edge-of-stability dynamics), which would compare different states.
"""

import numpy as np
import pytest
import torch

from metasched.inner_tasks import make_family
from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.stacked import StackedNetworks
from metasched.stability import ForkTestEstimator

MNIST1D_SMALL = {"train_sizes": [2000]}


def stacked_and_singles(family, n, dtype, every, **family_kwargs):
    fam = make_family(family, 0, **family_kwargs)
    est = ForkTestEstimator.for_interval(40, every=every)
    nets = StackedNetworks(n, dtype=dtype, stability=est)
    singles = []
    for i in range(n):
        cfg = fam.instance_config("test", i)
        nets.load(i, fam.make_task(cfg), np.random.default_rng(i))
        task = fam.make_task(cfg)
        if dtype == torch.float64:
            task = task.to_float64()
        task.reset(np.random.default_rng(i))
        task.stability = ForkTestEstimator.for_interval(40, every=every)
        singles.append(task)
    return nets, singles


@pytest.mark.parametrize(
    ("family", "n", "dtype", "calls", "kwargs"),
    [
        ("mlp", 4, torch.float64, 8, {}),
        ("mlp", 6, torch.float32, 8, {}),
        ("mnist1d", 5, torch.float32, 3, MNIST1D_SMALL),  # CNN and MLP buckets
    ],
)
def test_batched_bound_equals_single_fork_estimator(family, n, dtype, calls, kwargs):
    """Every slot: the single estimator's bound and cost, cold and warm-started, amortised."""
    every = 2
    nets, singles = stacked_and_singles(family, n, dtype, every, **kwargs)
    assert len(nets.bucket_sizes()) > 1 or family == "mlp"
    for call in range(calls):
        bounds = nets.lr_bound()
        ref = np.array([t.lr_bound() for t in singles])
        np.testing.assert_array_equal(bounds, ref)
        measured = call % every == 0
        expected = [t.stability.last.cost_steps if measured else 0.0 for t in singles]
        np.testing.assert_array_equal(nets.bound_cost_last, expected)
        lr = 0.25 * ref
        nets.train(40, lr)
        for task, rate in zip(singles, lr, strict=True):
            task.train(40, float(rate))
    total = [t.stability.cost_steps for t in singles]
    np.testing.assert_array_equal(nets.bound_cost_steps, total)
    assert all(t.stability.n_measurements == -(-calls // every) for t in singles)


def test_measuring_leaves_training_untouched():
    fam = make_family("mlp", 0)

    def run(measure):
        est = ForkTestEstimator.for_interval(40, every=1) if measure else None
        nets = StackedNetworks(3, dtype=torch.float64, stability=est)
        for i in range(3):
            nets.load(i, fam.make_task(fam.instance_config("test", i)), np.random.default_rng(i))
        out = []
        for _ in range(3):
            nets.lr_bound()
            out.append(nets.train(40, np.array([0.05, 0.1, 0.2])).losses)
        return np.concatenate(out, axis=1), nets.evaluate()

    (a, va), (b, vb) = run(True), run(False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(va, vb)


def test_warm_start_is_cheaper_and_a_new_problem_starts_cold():
    fam = make_family("mlp", 0)
    nets = StackedNetworks(2, stability=ForkTestEstimator.for_interval(40, every=1))
    tasks = [fam.make_task(fam.instance_config("test", i)) for i in range(2)]
    for i, t in enumerate(tasks):
        nets.load(i, t, np.random.default_rng(i))
    nets.lr_bound()
    cold = nets.bound_cost_last
    nets.train(40, 0.01)
    nets.lr_bound()
    warm = nets.bound_cost_last
    assert (warm < cold).all() and (warm >= 20).all()  # base + at least one fork of 10
    np.testing.assert_array_equal(nets.bound_cost_steps, cold + warm)
    nets.load(1, tasks[1], np.random.default_rng(1))  # the same problem again: cold search
    nets.lr_bound([1])
    assert nets.bound_cost_last[1] == cold[1] and nets.bound_cost_last[0] == 0
    assert nets.bound_cost_steps[1] == cold[1]


def test_single_bucket_slot_uses_the_fork_estimator():
    """A model the stacked buckets do not take is measured by the single estimator."""

    class Custom(MLPTask):
        def batch_loss(self, draws, t):
            return super().batch_loss(draws, t)

    task = Custom(MLPConfig(width=16, depth=1, batch_size=16, seed=0))
    nets = StackedNetworks(2, stability=ForkTestEstimator(steps=5, every=1))
    nets.load(0, task, np.random.default_rng(0))
    assert next(iter(nets.bucket_sizes()))[0] == "single"
    ref = Custom(MLPConfig(width=16, depth=1, batch_size=16, seed=0))
    ref.reset(np.random.default_rng(0))
    est = ForkTestEstimator(steps=5, every=1)
    for _ in range(2):
        bound = nets.lr_bound()
        assert bound[0] == est.measure(ref).bound and np.isnan(bound[1])
        assert nets.bound_cost_last[0] == est.last.cost_steps
        nets.train(20, np.array([0.05, 0.0]))
        ref.train(20, 0.05)


def test_no_estimator_no_bound_and_bad_settings():
    nets = StackedNetworks(2)
    nets.load(0, MLPTask(MLPConfig(width=8, depth=1, batch_size=8)), np.random.default_rng(0))
    assert np.isnan(nets.lr_bound()).all() and (nets.bound_cost_last == 0).all()
    with pytest.raises(ValueError, match="stability"):
        StackedNetworks(2, stability="fork")
    with pytest.raises(IndexError, match="slot"):
        nets.lr_bound([5])
