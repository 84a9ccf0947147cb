"""Batched NMF must reproduce the single NMFTask slot by slot (float64), padding exactly.

The batch draws the single task's minibatches and noise; its kernel orders the arithmetic
differently (the float32 noise is scaled in another order), so a float64 slot agrees with the
task to 1e-6 relative, and exactly in every count (steps, divergence, capped entries).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.nmf import NMFFamily
from metasched.inner_tasks.nmf_batched import (
    BatchedNMF,
    BatchedStepStats,
    BucketedNMF,
    shape_classes,
)

# (m, n, rank, batch_size, grad_noise): all different, all noisy
SHAPES = [(30, 20, 3, 5, 0.7), (50, 15, 4, 8, 1.5), (25, 40, 5, 10, 0.3), (40, 30, 2, 4, 1.0)]
RTOL = 1e-6


def make_pair(tasks, seed=100, **kwargs):
    """Single tasks reset from seed+i and a float64 batch loaded from equal generators."""
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
    np.testing.assert_allclose(W, task.W, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(H, task.H, rtol=RTOL, atol=1e-7)


def assert_stats_match(bstats, k, single: StepStats, track_updates=True):
    stats = bstats.for_slot(k)
    assert stats.n_done == single.n_done
    assert stats.diverged == single.diverged
    assert stats.capped == single.capped
    np.testing.assert_allclose(stats.losses, single.losses, rtol=RTOL)
    assert np.all(np.isnan(bstats.losses[k, single.n_done :]))
    np.testing.assert_allclose(stats.grad_norm, single.grad_norm, rtol=RTOL)
    if track_updates:
        np.testing.assert_allclose(stats.update_norm, single.update_norm, rtol=RTOL)
    else:
        assert np.isnan(stats.update_norm)


def train_both(batch, tasks, n_steps, lr, slots=None, track_updates=True):
    """Train the batch and each task (slot ``slots[i]`` holds ``tasks[i]``); check they agree."""
    bstats = batch.train(n_steps, lr, track_updates=track_updates)
    for k, task in zip(range(len(tasks)) if slots is None else slots, tasks, strict=True):
        assert_stats_match(bstats, k, task.train(n_steps, float(lr[k])), track_updates)
        assert_slot_matches(batch, k, task)
    return bstats


def assert_padding_zero(batch):
    W, H = batch.padded_factors()
    for k, (m, n, r, _) in enumerate(batch.shapes):
        assert not W[k, m:].any() and not W[k, :, r:].any()
        assert not H[k, r:].any() and not H[k, :, n:].any()
    assert not batch._Wf[batch._zero_row].any()  # the shared row padded draws read
    assert not batch._Vf[batch._zero_row].any()


@pytest.mark.parametrize("track_updates", [True, False])
def test_matches_single_tasks_over_several_calls(track_updates, planted_nmf):
    tasks, batch = make_pair(planted_nmf(SHAPES))
    assert batch.max_shape == (50, 40, 5, 10)
    np.testing.assert_allclose(batch.evaluate(), [t.evaluate() for t in tasks], rtol=RTOL)
    for call, n_steps in enumerate([7, 13, 1, 20, 9]):
        lr = single_lrs(tasks, factor=0.3 + 0.1 * call)
        bstats = train_both(batch, tasks, n_steps, lr, track_updates=track_updates)
        assert isinstance(bstats, BatchedStepStats)
        assert bstats.losses.shape == (4, n_steps)
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


def test_slot_snapshot_restores_into_a_single_task(planted_nmf):
    tasks, batch = make_pair(planted_nmf(SHAPES))
    batch.train(10, single_lrs(tasks))
    clone = planted_nmf(SHAPES)[2]
    clone.restore(batch.slot_snapshot(2))
    expected = clone.train(8, 0.1)
    got = batch.train(8, np.full(4, 0.1)).for_slot(2)
    np.testing.assert_allclose(got.losses, expected.losses, rtol=RTOL)
    assert_slot_matches(batch, 2, clone)


def test_mixed_noise_and_zero_lr_match_single_tasks(planted_nmf):
    shapes = [(30, 20, 3, 5, 0.0), (25, 40, 5, 10, 0.8), (40, 30, 2, 4, 0.0)]
    tasks, batch = make_pair(planted_nmf(shapes))
    lr = single_lrs(tasks)
    lr[1] = 0.0  # still draws minibatches and noise, reports losses, does not move
    W1, H1 = batch.factors(1)
    for _ in range(3):
        train_both(batch, tasks, 11, lr)
    np.testing.assert_array_equal(batch.factors(1)[0], W1)
    np.testing.assert_array_equal(batch.factors(1)[1], H1)
    assert_padding_zero(batch)


def test_divergence_freezes_only_that_slot(planted_nmf):
    tasks, batch = make_pair(planted_nmf(SHAPES))
    lr = single_lrs(tasks)
    lr[1] = 1e4 * tasks[1].lr_bound()
    bstats = batch.train(15, lr)
    singles = [task.train(15, float(lr[k])) for k, task in enumerate(tasks)]
    assert singles[1].diverged and singles[1].n_done < 15
    for k, task in enumerate(tasks):
        assert_stats_match(bstats, k, singles[k])
        if k != 1:  # a diverged slot ran to the end of the call: its factors are undefined
            assert_slot_matches(batch, k, task)
    np.testing.assert_array_equal(bstats.diverged, [False, True, False, False])
    np.testing.assert_array_equal(batch.active, [True, False, True, True])
    assert_padding_zero(batch)

    # the diverged slot stays frozen (no draws, no stats) while the others go on matching
    frozen = batch.factors(1)
    rng_state = batch.slot_snapshot(1)["rng"]
    lr = single_lrs([tasks[0], tasks[0], tasks[2], tasks[3]])
    others = [tasks[k] for k in (0, 2, 3)]
    bstats = train_both(batch, others, 12, lr, slots=(0, 2, 3))
    assert bstats.n_done[1] == 0 and not bstats.diverged[1] and np.isnan(bstats.losses[1]).all()
    assert batch.slot_snapshot(1)["rng"] == rng_state
    np.testing.assert_array_equal(batch.factors(1)[0], frozen[0])
    np.testing.assert_array_equal(batch.factors(1)[1], frozen[1])

    # reloading makes the slot active again, identical to a freshly reset task
    batch.load(1, tasks[1], np.random.default_rng(7))
    tasks[1].reset(np.random.default_rng(7))
    assert batch.active.all()
    train_both(batch, tasks, 10, single_lrs(tasks))
    assert_padding_zero(batch)


def test_snapshot_restore_reproduces(planted_nmf):
    tasks, batch = make_pair(planted_nmf(SHAPES))
    lr = single_lrs(tasks)
    batch.train(5, lr)
    snap = batch.snapshot()

    def run():
        stats = [batch.train(n, lr) for n in (6, 9)]
        return stats, batch.padded_factors(), batch.evaluate()

    stats_a, (Wa, Ha), eval_a = run()
    # reload one slot with another problem in between: restore brings the old one back
    batch.load(2, planted_nmf([(12, 9, 2, 3, 0.5)])[0], np.random.default_rng(3))
    batch.restore(snap)
    stats_b, (Wb, Hb), eval_b = run()
    np.testing.assert_array_equal(Wa, Wb)
    np.testing.assert_array_equal(Ha, Hb)
    np.testing.assert_array_equal(eval_a, eval_b)
    for sa, sb in zip(stats_a, stats_b, strict=True):
        np.testing.assert_array_equal(sa.losses, sb.losses)
        np.testing.assert_array_equal(sa.update_norm, sb.update_norm)
    assert_padding_zero(batch)


def test_empty_slots_and_validation(planted_nmf):
    tasks = planted_nmf(SHAPES)[:2]
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
        batch.load(1, planted_nmf([(60, 10, 2, 4, 0.1)])[0], np.random.default_rng(0))
    with pytest.raises(IndexError):
        batch.load(3, tasks[0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_steps"):
        batch.train(-1, 0.1)
    batch.deactivate(0)
    assert not batch.active.any()


# -- update cap, zero rates, inactive slots, float32 ------------------------------------
def test_update_cap_and_zero_lr_match_single_tasks(planted_nmf):
    cap = 2e-3
    shapes = [(30, 20, 3, 5, 0.0), (25, 40, 5, 10, 0.8), (40, 30, 2, 4, 1.2)]
    tasks, batch = make_pair(planted_nmf(shapes, update_cap=cap), update_cap=cap)
    total = np.zeros(3, dtype=int)
    for call in range(3):
        lr = single_lrs(tasks, factor=0.9)
        lr[1] = 0.0 if call == 1 else lr[1]  # draws, reports losses, does not move
        total += train_both(batch, tasks, 10, lr).capped
    assert (total > 0).all()
    assert_padding_zero(batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inactive_slots_stay_frozen(dtype, planted_nmf):
    """An inactive slot inside the computed range draws nothing and does not move."""
    tasks, batch = make_pair(planted_nmf(SHAPES), dtype=dtype)
    batch.train(5, single_lrs(tasks))
    batch.deactivate(1)
    W, H = batch.factors(1)
    rng_state = batch.slot_snapshot(1)["rng"]
    for _ in range(3):
        stats = batch.train(7, single_lrs(tasks))
        assert stats.n_done.tolist() == [7, 0, 7, 7] and np.isnan(stats.losses[1]).all()
    np.testing.assert_array_equal(batch.factors(1)[0], W)
    np.testing.assert_array_equal(batch.factors(1)[1], H)
    assert batch.slot_snapshot(1)["rng"] == rng_state
    assert_padding_zero(batch)


def test_float32_tracks_float64(planted_nmf):
    tasks = planted_nmf(SHAPES)
    b32 = BatchedNMF.from_tasks(tasks, [np.random.default_rng(5 + i) for i in range(4)])
    assert b32.dtype == torch.float32
    ref = BatchedNMF.from_tasks(
        tasks, [np.random.default_rng(5 + i) for i in range(4)], dtype=torch.float64
    )
    start = b32.evaluate()
    for _ in range(4):
        lr = 0.5 * ref.lr_bound()
        s32, s64 = b32.train(10, lr, track_updates=False), ref.train(10, lr)
        np.testing.assert_allclose(s32.losses, s64.losses, rtol=1e-3)
        np.testing.assert_allclose(s32.grad_norm, s64.grad_norm, rtol=1e-3)
    np.testing.assert_allclose(b32.evaluate(), ref.evaluate(), rtol=1e-3)
    assert (b32.evaluate() < start).all()
    assert_padding_zero(b32)


def test_float32_snapshot_restore_reproduces(planted_nmf):
    tasks, batch = make_pair(planted_nmf(SHAPES), dtype=torch.float32)
    lr = single_lrs(tasks)
    batch.train(5, lr)
    snap = batch.snapshot()
    first = batch.train(7, lr).losses, batch.evaluate()
    batch.load(1, planted_nmf([(12, 9, 2, 3, 0.5)])[0], np.random.default_rng(3))
    batch.restore(snap)
    again = batch.train(7, lr).losses, batch.evaluate()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert_padding_zero(batch)


# -- slot management: trailing slots, move, resize -------------------------------------------
def test_trailing_empty_slots_change_nothing(planted_nmf):
    """A call covers the slots up to the last active one; the rest are left as they are."""
    tasks = planted_nmf(SHAPES)
    small = BatchedNMF.from_tasks(
        tasks, [np.random.default_rng(i) for i in range(4)], dtype=torch.float64
    )
    big = BatchedNMF(7, small.max_shape, dtype=torch.float64)
    for i, task in enumerate(tasks):
        big.load(i, task, np.random.default_rng(i))
    big.load(5, tasks[0], np.random.default_rng(50))
    big.deactivate(5)
    frozen = big.factors(5)
    for _ in range(3):
        lr = 0.4 * small.lr_bound()
        a = small.train(9, lr)
        b = big.train(9, np.concatenate([lr, [0.1, 0.1, 0.1]]))
        np.testing.assert_array_equal(a.losses, b.losses[:4])
        np.testing.assert_array_equal(a.grad_norm, b.grad_norm[:4])
        assert (b.n_done[4:] == 0).all()
    for k in range(4):
        np.testing.assert_array_equal(small.factors(k)[0], big.factors(k)[0])
        np.testing.assert_array_equal(small.factors(k)[1], big.factors(k)[1])
    np.testing.assert_array_equal(big.factors(5)[0], frozen[0])
    assert_padding_zero(big)


def test_move_and_resize_carry_the_full_state(planted_nmf):
    tasks, batch = make_pair(planted_nmf(SHAPES))
    batch.train(6, single_lrs(tasks))
    for task in tasks:
        task.train(6, 0.5 * task.lr_bound())  # the same rates: lr_bound was taken before
    batch.resize(6)
    batch.move(0, 5)  # slot 0 is now empty, its problem lives in slot 5
    assert batch.active.tolist() == [False, True, True, True, False, True]
    assert batch.shapes[0].tolist() == [1, 1, 1, 1]
    order = [5, 1, 2, 3]
    lr = np.zeros(6)
    lr[order] = single_lrs(tasks)
    train_both(batch, tasks, 11, lr, slots=order)
    assert_padding_zero(batch)
    batch.resize(3)  # shrinking drops slots 3.. (here: the moved problem)
    assert batch.n_slots == 3 and batch.active.tolist() == [False, True, True]


# -- bucketing ------------------------------------------------------------------------------
def family_tasks(family, split, indices):
    return [family.make_task(family.instance_config(split, i)) for i in indices]


def test_shape_classes_cover_the_family():
    family = NMFFamily(0)
    classes = shape_classes(family, "train", n_bins=2)
    assert len(classes) == 6
    assert {c[3] for c in classes} == {16, 32, 64} and {c[1] for c in classes} == {100, 150}
    assert all(c[0] == 300 and c[2] == 12 for c in classes)
    assert len(shape_classes(family, "train", n_bins=3, rank_bins=2)) == 18
    batch = BucketedNMF(40, classes, dtype=torch.float64)
    for i, task in enumerate(family_tasks(family, "train", range(40))):
        g = batch.class_of(task)
        box = batch.classes[g]
        assert task.n <= box[1] and task.rank <= box[2] and task.batch_size <= box[3]
        # the cheapest box that fits: no earlier class contains the task
        assert not any(grp.fits(task) for grp in batch.groups[:g])
        assert task.batch_size == box[3] and box[1] - task.n < 51
        batch.load(i, task, np.random.default_rng(i))
    for shift in family_tasks(family, "shift", range(3)):
        with pytest.raises(ValueError, match="max_shape"):
            batch.class_of(shift)


def test_bucketed_slots_match_single_tasks():
    """Per slot, a bucketed batch is the single task, also across reloads that move slots."""
    family = NMFFamily(3, m=(20, 60), n=(10, 40), rank=(2, 6), batch_sizes=(4, 8))
    tasks = family_tasks(family, "train", range(10))
    batch = BucketedNMF.for_family(10, family, "train", dtype=torch.float64, capacity=2)
    for k, task in enumerate(tasks):
        batch.load(k, task, np.random.default_rng(k))
        task.reset(np.random.default_rng(k))
    assert sum(1 for m in batch._members if m) > 2
    for call in range(4):
        lr = np.array([0.45 * t.lr_bound() for t in tasks])
        np.testing.assert_allclose(batch.lr_bound(), 2 * lr / 0.9, rtol=RTOL)
        train_both(batch, tasks, 8, lr)
        np.testing.assert_allclose(batch.evaluate(), [t.evaluate() for t in tasks], rtol=RTOL)
        # new problems for a few slots: they change class, the classes re-pack
        for k in (call, call + 5):
            tasks[k] = family_tasks(family, "train", [100 + 10 * call + k])[0]
            batch.load(k, tasks[k], np.random.default_rng(1000 + k))
            tasks[k].reset(np.random.default_rng(1000 + k))
    for g, members in enumerate(batch._members):  # every class packed at its front
        assert batch.groups[g].active[: len(members)].all()
        assert not batch.groups[g].active[len(members) :].any()
        assert [batch._pos[s] for s in members] == list(range(len(members)))
    np.testing.assert_array_equal(batch.shapes, [[t.m, t.n, t.rank, t.batch_size] for t in tasks])
    snap, ref = batch.slot_snapshot(4), tasks[4].snapshot()
    assert snap["rng"] == ref["rng"] and snap["ref_loss"] == ref["ref_loss"]


def test_bucketed_results_do_not_depend_on_the_other_slots():
    """float32: the same problems in one batch or split in two, bit for bit."""
    family = NMFFamily(0)
    tasks = family_tasks(family, "train", range(24))

    def run(indices):
        batch = BucketedNMF.for_family(len(indices), family, "train")
        for j, i in enumerate(indices):
            batch.load(j, tasks[i], np.random.default_rng(i))
        out = []
        for _ in range(3):
            lr = 0.5 * batch.lr_bound()
            stats = batch.train(20, lr, track_updates=False)
            out.append(np.column_stack([stats.losses, stats.grad_norm, batch.evaluate(), lr]))
        return np.stack(out)

    whole = run(list(range(24)))
    parts = np.concatenate([run(list(range(9))), run(list(range(9, 24)))], axis=1)
    np.testing.assert_array_equal(whole, parts)


def test_bucketed_deactivate_empty_slots_and_validation():
    family = NMFFamily(0)
    batch = BucketedNMF.for_family(4, family, "test", dtype=torch.float64)
    tasks = family_tasks(family, "test", range(2))
    batch.load(0, tasks[0], np.random.default_rng(0))
    batch.load(2, tasks[1], np.random.default_rng(1))
    assert batch.active.tolist() == [True, False, True, False]
    assert batch.slot_classes[1] == -1 and batch.lr_bound()[1] == np.inf
    assert batch.evaluate()[3] == 0.0
    stats = batch.train(3, np.array([0.0, np.nan, 0.0, -1.0]))  # empty slots: lr ignored
    assert stats.n_done.tolist() == [3, 0, 3, 0]
    with pytest.raises(ValueError, match="lr"):
        batch.train(3, np.array([np.inf, 0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="empty"):
        batch.factors(1)
    with pytest.raises(IndexError):
        batch.load(4, tasks[0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_slots"):
        BucketedNMF(0, [(10, 10, 2, 2)])
    with pytest.raises(ValueError, match="dtype"):
        BatchedNMF(2, (10, 10, 2, 2), dtype=torch.float16)
    batch.deactivate(0)
    assert batch.active.tolist() == [False, False, True, False]
    assert batch.train(3, 0.0).n_done.tolist() == [0, 0, 3, 0]
