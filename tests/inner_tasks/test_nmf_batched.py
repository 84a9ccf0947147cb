"""Batched NMF must reproduce the single NMFTask slot by slot (float64), padding exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.nmf import NMFConfig, NMFTask, planted_matrix
from metasched.inner_tasks.nmf_batched import BatchedNMF, BatchedStepStats

# (m, n, rank, batch_size, grad_noise): all different, all noisy
SHAPES = [(30, 20, 3, 5, 0.7), (50, 15, 4, 8, 1.5), (25, 40, 5, 10, 0.3), (40, 30, 2, 4, 1.0)]
RTOL = 1e-9


def make_tasks(shapes=SHAPES, **kwargs):
    tasks = []
    for i, (m, n, r, b, g) in enumerate(shapes):
        cfg = NMFConfig(m=m, n=n, rank=r, noise=0.1, grad_noise=g, batch_size=b, seed=10 + i)
        tasks.append(NMFTask(planted_matrix(cfg), r, batch_size=b, grad_noise=g, **kwargs))
    return tasks


def make_pair(shapes=SHAPES, seed=100, task_kwargs=None, **kwargs):
    """Single tasks reset from seed+i and a float64 batch loaded from equal generators."""
    tasks = make_tasks(shapes, **(task_kwargs or {}))
    kwargs.setdefault("dtype", torch.float64)
    gens = [np.random.default_rng(seed + i) for i in range(len(tasks))]
    batch = BatchedNMF.from_tasks(tasks, gens, **kwargs)
    for i, task in enumerate(tasks):
        task.reset(np.random.default_rng(seed + i))
    return tasks, batch


def single_lrs(tasks, factor=0.5):
    return np.array([factor * t.lr_bound() for t in tasks])


def assert_slot_matches(batch, k, task):
    W, H = batch.factors(k)
    np.testing.assert_allclose(W, task.W, rtol=RTOL, atol=1e-13)
    np.testing.assert_allclose(H, task.H, rtol=RTOL, atol=1e-13)


def assert_stats_match(bstats, k, single: StepStats):
    stats = bstats.for_slot(k)
    assert stats.n_done == single.n_done
    assert stats.diverged == single.diverged
    assert stats.capped == single.capped
    np.testing.assert_allclose(stats.losses, single.losses, rtol=RTOL)
    assert np.all(np.isnan(bstats.losses[k, single.n_done :]))
    np.testing.assert_allclose(stats.grad_norm, single.grad_norm, rtol=RTOL)
    np.testing.assert_allclose(stats.update_norm, single.update_norm, rtol=RTOL)


def assert_padding_zero(batch):
    W, H = batch.padded_factors()
    for k, (m, n, r, _) in enumerate(batch.shapes):
        assert not W[k, m:].any() and not W[k, :, r:].any()
        assert not H[k, r:].any() and not H[k, :, n:].any()
    assert not batch._Wf[batch._zero_row].any()  # the shared row padded draws read
    assert not batch._Vf[batch._zero_row].any()


def test_matches_single_tasks_over_several_calls():
    tasks, batch = make_pair()
    assert batch.max_shape == (50, 40, 5, 10)
    np.testing.assert_allclose(batch.evaluate(), [t.evaluate() for t in tasks], rtol=RTOL)
    for call, n_steps in enumerate([7, 13, 1, 20, 9]):
        lr = single_lrs(tasks, factor=0.3 + 0.1 * call)
        bstats = batch.train(n_steps, lr)
        assert isinstance(bstats, BatchedStepStats)
        assert bstats.losses.shape == (4, n_steps)
        for k, task in enumerate(tasks):
            assert_stats_match(bstats, k, task.train(n_steps, float(lr[k])))
            assert_slot_matches(batch, k, task)
        np.testing.assert_allclose(batch.evaluate(), [t.evaluate() for t in tasks], rtol=RTOL)
        np.testing.assert_allclose(batch.lr_bound(), [t.lr_bound() for t in tasks], rtol=RTOL)
        assert_padding_zero(batch)
    assert batch.active.all()
    # the RNG streams advanced identically
    for k, task in enumerate(tasks):
        snap, ref = batch.slot_snapshot(k), task.snapshot()
        assert snap["rng"] == ref["rng"]
        assert torch.equal(snap["noise_rng"], ref["noise_rng"])
        assert snap["ref_loss"] == ref["ref_loss"]


def test_slot_snapshot_restores_into_a_single_task():
    tasks, batch = make_pair()
    batch.train(10, single_lrs(tasks))
    clone = make_tasks()[2]
    clone.restore(batch.slot_snapshot(2))
    expected = clone.train(8, 0.1)
    got = batch.train(8, np.full(4, 0.1)).for_slot(2)
    np.testing.assert_allclose(got.losses, expected.losses, rtol=RTOL)
    assert_slot_matches(batch, 2, clone)


def test_mixed_noise_and_zero_lr_match_single_tasks():
    shapes = [(30, 20, 3, 5, 0.0), (25, 40, 5, 10, 0.8), (40, 30, 2, 4, 0.0)]
    tasks, batch = make_pair(shapes)
    lr = single_lrs(tasks)
    lr[1] = 0.0  # still draws minibatches and noise, reports losses, does not move
    W1, H1 = batch.factors(1)
    for _ in range(3):
        bstats = batch.train(11, lr)
        for k, task in enumerate(tasks):
            assert_stats_match(bstats, k, task.train(11, float(lr[k])))
            assert_slot_matches(batch, k, task)
    np.testing.assert_array_equal(batch.factors(1)[0], W1)
    np.testing.assert_array_equal(batch.factors(1)[1], H1)
    assert_padding_zero(batch)


def test_divergence_freezes_only_that_slot():
    tasks, batch = make_pair()
    lr = single_lrs(tasks)
    lr[1] = 1e4 * tasks[1].lr_bound()
    bstats = batch.train(15, lr)
    singles = [task.train(15, float(lr[k])) for k, task in enumerate(tasks)]
    assert singles[1].diverged and singles[1].n_done < 15
    for k, task in enumerate(tasks):
        assert_stats_match(bstats, k, singles[k])
        assert_slot_matches(batch, k, task)
    np.testing.assert_array_equal(bstats.diverged, [False, True, False, False])
    np.testing.assert_array_equal(batch.active, [True, False, True, True])
    assert_padding_zero(batch)

    # the diverged slot stays frozen (no draws, no stats) while the others go on matching
    frozen = batch.factors(1)
    lr = single_lrs([tasks[0], tasks[0], tasks[2], tasks[3]])
    bstats = batch.train(12, lr)
    assert bstats.n_done[1] == 0 and not bstats.diverged[1] and np.isnan(bstats.losses[1]).all()
    np.testing.assert_array_equal(batch.factors(1)[0], frozen[0])
    np.testing.assert_array_equal(batch.factors(1)[1], frozen[1])
    for k in (0, 2, 3):
        assert_stats_match(bstats, k, tasks[k].train(12, float(lr[k])))
        assert_slot_matches(batch, k, tasks[k])

    # reloading makes the slot active again, identical to a freshly reset task
    batch.load(1, tasks[1], np.random.default_rng(7))
    tasks[1].reset(np.random.default_rng(7))
    assert batch.active.all()
    lr = single_lrs(tasks)
    bstats = batch.train(10, lr)
    for k, task in enumerate(tasks):
        assert_stats_match(bstats, k, task.train(10, float(lr[k])))
        assert_slot_matches(batch, k, task)
    assert_padding_zero(batch)


def test_update_cap_matches_single_task():
    cap = 2e-3
    tasks, batch = make_pair(task_kwargs={"update_cap": cap}, update_cap=cap)
    total = np.zeros(4, dtype=int)
    for _ in range(3):
        lr = single_lrs(tasks, factor=0.9)
        bstats = batch.train(10, lr)
        for k, task in enumerate(tasks):
            assert_stats_match(bstats, k, task.train(10, float(lr[k])))
            assert_slot_matches(batch, k, task)
        total += bstats.capped
    assert (total > 0).all()
    assert_padding_zero(batch)


def test_snapshot_restore_reproduces():
    tasks, batch = make_pair()
    lr = single_lrs(tasks)
    batch.train(5, lr)
    snap = batch.snapshot()

    def run():
        stats = [batch.train(n, lr) for n in (6, 9)]
        return stats, batch.padded_factors(), batch.evaluate()

    stats_a, (Wa, Ha), eval_a = run()
    # reload one slot with another problem in between: restore brings the old one back
    batch.load(2, make_tasks([(12, 9, 2, 3, 0.5)])[0], np.random.default_rng(3))
    batch.restore(snap)
    stats_b, (Wb, Hb), eval_b = run()
    np.testing.assert_array_equal(Wa, Wb)
    np.testing.assert_array_equal(Ha, Hb)
    np.testing.assert_array_equal(eval_a, eval_b)
    for sa, sb in zip(stats_a, stats_b, strict=True):
        np.testing.assert_array_equal(sa.losses, sb.losses)
        np.testing.assert_array_equal(sa.update_norm, sb.update_norm)
    assert_padding_zero(batch)


def test_float32_tracks_float64():
    tasks = make_tasks()
    gens = [np.random.default_rng(5 + i) for i in range(4)]
    b32 = BatchedNMF.from_tasks(tasks, gens)
    gens = [np.random.default_rng(5 + i) for i in range(4)]
    b64 = BatchedNMF.from_tasks(tasks, gens, dtype=torch.float64)
    assert b32.dtype == torch.float32
    start = b32.evaluate()
    for _ in range(4):
        lr = 0.5 * b64.lr_bound()
        s32, s64 = b32.train(10, lr), b64.train(10, lr)
        np.testing.assert_allclose(s32.losses, s64.losses, rtol=1e-3)
    np.testing.assert_allclose(b32.evaluate(), b64.evaluate(), rtol=1e-3)
    assert (b32.evaluate() < start).all()
    assert_padding_zero(b32)


def test_empty_slots_and_validation():
    tasks = make_tasks()[:2]
    batch = BatchedNMF(3, (50, 20, 4, 8), dtype=torch.float64)
    batch.load(0, tasks[0], np.random.default_rng(0))
    assert batch.active.tolist() == [True, False, False]
    stats = batch.train(4, np.array([0.1, np.nan, -1.0]))  # inactive slots' lr is ignored
    assert stats.n_done.tolist() == [4, 0, 0]
    assert np.isnan(stats.losses[1:]).all()
    assert batch.lr_bound()[1] == np.inf and batch.evaluate()[1] == 0.0
    assert batch.train(0, 0.1).losses.shape == (3, 0)
    with pytest.raises(ValueError, match="lr"):
        batch.train(3, np.array([np.inf, 0.1, 0.1]))
    with pytest.raises(ValueError, match="max_shape"):
        batch.load(1, make_tasks([(60, 10, 2, 4, 0.1)])[0], np.random.default_rng(0))
    with pytest.raises(IndexError):
        batch.load(3, tasks[0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_steps"):
        batch.train(-1, 0.1)
    batch.deactivate(0)
    assert not batch.active.any()
