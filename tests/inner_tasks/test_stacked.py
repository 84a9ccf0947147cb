"""Stacked network training: a slot's results do not depend on the other problems."""

import numpy as np
import pytest
import torch

from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.stacked import StackedNetworks, bucket_key


def task(i, **kw):
    cfg = {"width": 16, "depth": 2, "batch_size": 8 + 4 * (i % 3), "momentum": 0.5 * (i % 2)}
    return MLPTask(MLPConfig(seed=i, label_noise=0.2, **{**cfg, **kw}))


def alone(i, lr, calls):
    nets = StackedNetworks(1, dtype=torch.float64)
    nets.load(0, task(i), np.random.default_rng(i))
    out = [nets.train(10, np.array([lr])) for _ in range(calls)]
    return out, nets.evaluate()[0]


def test_slots_in_a_growing_shrinking_bucket_match_slots_alone():
    """Six problems of one architecture (the bucket grows past its capacity), one unloaded."""
    n = 6
    nets = StackedNetworks(n, dtype=torch.float64)
    for i in range(n):
        nets.load(i, task(i), np.random.default_rng(i))
    assert nets.bucket_sizes() == {bucket_key(task(0)): n}
    lrs = np.linspace(0.05, 0.3, n)
    first = nets.train(10, lrs)
    nets.unload(2)  # the last problem moves into its place
    second = nets.train(10, lrs)
    vals = nets.evaluate()
    for i in range(n):
        ref, val = alone(i, lrs[i], 1 if i == 2 else 2)
        np.testing.assert_allclose(first.losses[i], ref[0].losses[0], rtol=1e-10)
        assert first.grad_norm[i] == pytest.approx(ref[0].grad_norm[0], rel=1e-10)
        if i != 2:
            np.testing.assert_allclose(second.losses[i], ref[1].losses[0], rtol=1e-10)
            assert vals[i] == pytest.approx(val, rel=1e-10)
    assert np.isnan(vals[2]) and second.n_done[2] == 0


def test_divergence_stops_the_slot_with_the_single_task_accounting():
    nets = StackedNetworks(2, dtype=torch.float64)
    for i in range(2):
        nets.load(i, task(i, momentum=0.0), np.random.default_rng(i))
    single = task(0, momentum=0.0)
    single.reset(np.random.default_rng(0))
    st = nets.train(30, np.array([500.0, 0.1]))
    ref = single.train(30, 500.0)
    assert ref.diverged and st.diverged[0] and not st.diverged[1]
    assert st.n_done[0] == ref.n_done and st.n_done[1] == 30
    assert not nets.active[0] and nets.active[1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_slots"):
        StackedNetworks(0)
    with pytest.raises(ValueError, match="dtype"):
        StackedNetworks(2, dtype=torch.float16)
    nets = StackedNetworks(2)
    with pytest.raises(IndexError, match="slot"):
        nets.load(2, task(0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="lr"):
        nets.train(5, np.array([np.nan, 0.1]))
