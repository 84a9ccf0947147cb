import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasched.errors import UnknownNameError
from metasched.inner_tasks import NMFConfig, NMFFamily, NMFTask, make_family


def small_task(**kw):
    cfg = NMFConfig(m=40, n=30, rank=4, noise=0.1, grad_noise=0.5, batch_size=8, seed=3)
    return NMFTask.from_config(cfg, **kw)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[1.0, -0.5], [0.2, 0.3]]), "non-negative"),
        (np.array([[1.0, np.nan], [0.2, 0.3]]), "finite"),
        (np.array([[1.0, np.inf], [0.2, 0.3]]), "finite"),
        (np.ones(5), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.zeros((3, 3)), "all zeros"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_from_matrix_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        NMFTask.from_matrix(bad, rank=1)


def test_from_matrix_rejects_bad_hyperparameters():
    v = np.ones((10, 8))
    with pytest.raises(ValueError, match="rank"):
        NMFTask.from_matrix(v, rank=9)
    with pytest.raises(ValueError, match="batch_size"):
        NMFTask.from_matrix(v, rank=2, batch_size=11)
    with pytest.raises(ValueError, match="grad_noise"):
        NMFTask.from_matrix(v, rank=2, grad_noise=-1.0)
    with pytest.raises(ValueError, match="update_cap"):
        NMFTask.from_matrix(v, rank=2, update_cap=0.0)


def test_user_matrix_is_factorised():
    rng = np.random.default_rng(0)
    v = rng.random((60, 3)) @ rng.random((3, 40))
    task = NMFTask.from_matrix(v, rank=3, batch_size=20)
    task.reset(np.random.default_rng(1))
    before = task.relative_error()
    for _ in range(20):
        task.train(100, 0.5 * task.lr_bound())
    assert task.relative_error() < 0.3 * before


def test_same_generator_same_trajectory():
    a, b = small_task(), small_task()
    a.reset(np.random.default_rng(7))
    b.reset(np.random.default_rng(7))
    sa, sb = a.train(50, 0.3), b.train(50, 0.3)
    np.testing.assert_array_equal(sa.losses, sb.losses)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.H, b.H)


def test_snapshot_restore_reproduces_and_forks():
    task = small_task()
    task.reset(np.random.default_rng(0))
    task.train(20, 0.3)
    snap = task.snapshot()
    first = task.train(30, 0.3).losses.copy()
    w_after = task.W.copy()
    task.restore(snap)
    np.testing.assert_array_equal(task.train(30, 0.3).losses, first)
    np.testing.assert_array_equal(task.W, w_after)
    task.restore(snap)  # the snapshot stays reusable and is not aliased
    task.W[:] = 123.0
    task.restore(snap)
    np.testing.assert_array_equal(task.train(30, 0.3).losses, first)


def test_divergence_detected_and_training_stops():
    task = small_task()
    task.reset(np.random.default_rng(0))
    stats = task.train(200, 1e4 * task.lr_bound())
    assert stats.diverged
    assert stats.n_done < 200
    assert len(stats.losses) == stats.n_done


def test_collapse_counts_as_divergence():
    task = small_task()
    task.reset(np.random.default_rng(0))
    task.H[:] = 0.0
    task.W[:] = 0.0
    assert task.relative_error() == pytest.approx(1.0)
    assert task.train(1, 0.1).diverged


def test_losses_are_the_minibatch_objective():
    task = small_task(update_cap=None)
    task.grad_noise = 0.0
    task.reset(np.random.default_rng(0))
    stats = task.train(200, 0.0)  # lr 0: parameters frozen, losses are unbiased samples
    assert stats.update_norm == 0.0
    assert np.mean(stats.losses) == pytest.approx(task.evaluate(), rel=0.15)


def test_deterministic_bound_is_the_inverse_block_lipschitz_constant():
    task = small_task()
    task.reset(np.random.default_rng(0))
    lw = np.linalg.norm(task.H, 2) ** 2 / task.n
    lh = np.linalg.norm(task.W, 2) ** 2 / (task.m * task.n)
    assert task.lr_bound() == pytest.approx(1.0 / max(lw, lh), rel=1e-9)


def test_noise_aware_bound_shrinks_with_noise_and_is_at_most_2_over_L():
    rates = []
    for sigma in (0.0, 0.5, 5.0):
        task = small_task()
        task.grad_noise = sigma
        task.reset(np.random.default_rng(0))
        rate = task.noise_aware_bound()
        assert 0 < rate <= 2.0 * task.lr_bound() + 1e-12
        rates.append(rate)
    assert rates[0] > rates[1] > rates[2]


def test_noise_aware_bound_shrinks_towards_a_stationary_point():
    task = small_task()
    task.reset(np.random.default_rng(0))
    start = task.noise_aware_bound() * max(task.lipschitz())
    for _ in range(40):
        task.train(100, 0.2 * task.lr_bound())
    assert task.noise_aware_bound() * max(task.lipschitz()) < 0.5 * start


def test_update_cap_limits_every_entry_and_counts():
    task = small_task(update_cap=1e-3)
    task.reset(np.random.default_rng(0))
    w0, h0 = task.W.copy(), task.H.copy()
    stats = task.train(1, 10 * task.lr_bound())
    assert stats.capped > 0
    assert np.max(np.abs(task.W - w0)) <= 1e-3 + 1e-15
    assert np.max(np.abs(task.H - h0)) <= 1e-3 + 1e-15


def test_projection_keeps_factors_non_negative():
    task = small_task()
    task.reset(np.random.default_rng(0))
    task.train(100, 1.5 * task.lr_bound())
    assert task.W.min() >= 0 and task.H.min() >= 0


@given(st.integers(0, 10_000), st.sampled_from(["train", "test", "shift"]))
def test_family_configs_are_pure_and_valid(index, split):
    fam = NMFFamily(seed=5)
    a, b = fam.instance_config(split, index), fam.instance_config(split, index)
    assert a == b and a.name == b.name
    assert a.split == split and a.index == index
    assert 1 <= a.rank <= min(a.m, a.n) and a.batch_size <= a.m


def test_family_splits_are_disjoint_and_shift_differs():
    fam = NMFFamily(seed=0)
    seeds = {
        s: {fam.instance_config(s, i).seed for i in range(200)} for s in ("train", "test", "shift")
    }
    assert not seeds["train"] & seeds["test"]
    assert not seeds["train"] & seeds["shift"]
    train_m = [fam.instance_config("train", i).m for i in range(50)]
    shift_m = [fam.instance_config("shift", i).m for i in range(50)]
    assert min(shift_m) > max(train_m)
    assert NMFFamily(seed=1).instance_config("test", 0) != fam.instance_config("test", 0)


def test_instance_names_are_deterministic_and_descriptive():
    cfg = NMFFamily(seed=0).instance_config("test", 7)
    assert cfg.name.startswith(f"nmf-m{cfg.m}-n{cfg.n}-r{cfg.rank}-s")
    assert cfg.name.endswith("-test7")


def test_planted_instances_are_normalised_and_deterministic():
    fam = NMFFamily()
    t1, t2 = fam.make("train", 3), fam.make("train", 3)
    np.testing.assert_array_equal(t1.V, t2.V)
    assert t1.V.min() >= 0 and t1.V.mean() == pytest.approx(1.0)


def test_family_registry_suggests_names():
    with pytest.raises(UnknownNameError, match="did you mean 'nmf'"):
        make_family("nfm")
    with pytest.raises(ValueError, match="split"):
        NMFFamily().instance_config("valid", 0)


def test_train_rejects_bad_lr():
    task = small_task()
    task.reset(np.random.default_rng(0))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lr"):
            task.train(1, bad)
