"""Batched NMF's shared-RNG mode: one draw per call for the batch, per-slot streams derived."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasched.envs.batched import BatchedNMFVecEnv
from metasched.inner_tasks.nmf import NMFConfig, NMFTask, planted_matrix
from metasched.inner_tasks.nmf_batched import BatchedNMF, BucketedNMF

SHAPES = [(30, 20, 3, 5, 0.7), (50, 15, 4, 8, 1.5), (25, 40, 5, 10, 0.0)]
BOX = (50, 40, 5, 10)


def run(ts, rng_seed=0, loaded=(0, 1, 2), n_slots=4, calls=3):
    """Load ``ts[k]`` for ``k`` in ``loaded`` into a shared-RNG batch; train ``calls`` times."""
    batch = BatchedNMF(n_slots, BOX, dtype=torch.float64, rng="shared", rng_seed=rng_seed)
    for k in loaded:
        batch.load(k, ts[k], np.random.default_rng(100 + k))
    lr = 0.5 * batch.lr_bound()
    lr = np.where(np.isfinite(lr), lr, 0.0)
    out = [batch.train(20, lr) for _ in range(calls)]
    return batch, out


def test_shared_mode_is_deterministic_and_trains(planted_nmf):
    batch, out = run(planted_nmf(SHAPES))
    again, out2 = run(planted_nmf(SHAPES))
    for a, b in zip(out, out2, strict=True):
        np.testing.assert_array_equal(a.losses, b.losses)
    _, other = run(planted_nmf(SHAPES), rng_seed=1)
    assert not np.array_equal(out[0].losses[:3], other[0].losses[:3])
    first, last = out[0].losses[:3, 0], out[-1].losses[:3, -1]
    assert (last < 0.7 * first).all() and not out[-1].diverged.any()
    np.testing.assert_allclose(batch.evaluate([0, 1, 2]), again.evaluate([0, 1, 2]), rtol=0)


def test_a_slot_stream_does_not_depend_on_the_other_problems(planted_nmf):
    """Slot 0 alone and slot 0 beside two other problems see the same draws."""
    _, alone = run(planted_nmf(SHAPES), loaded=(0,))
    _, shared = run(planted_nmf(SHAPES), loaded=(0, 1, 2))
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_allclose(a.losses[0], b.losses[0], rtol=1e-12)


def test_shared_mode_draws_are_the_single_task_rows_of_one_uniform_draw():
    """With zero noise, shared mode equals per-slot draws fed those rows."""
    m, n, r, b = 30, 20, 3, 5
    cfg = NMFConfig(m=m, n=n, rank=r, noise=0.1, grad_noise=0.0, batch_size=b, seed=3)
    task = NMFTask(planted_matrix(cfg), r, batch_size=b, grad_noise=0.0)
    shared = BatchedNMF(2, (m, n, r, b), dtype=torch.float64, rng="shared", rng_seed=5)
    per_slot = BatchedNMF(2, (m, n, r, b), dtype=torch.float64)
    shared.load(0, task, np.random.default_rng(1))
    per_slot.load(0, task, np.random.default_rng(1))
    # give the per-slot batch the shared batch's stream, restricted to slot 0's block
    u = shared._shared_rng.bit_generator.state
    gen = np.random.default_rng()
    gen.bit_generator.state = u
    block = gen.random((10, 2, b))[:, 0, :]

    class Replay:
        def random(self, shape):
            assert shape == (10, b)
            return block

    per_slot._rngs[0] = Replay()
    lr = np.array([0.3 * shared.lr_bound()[0], 0.0])
    a, c = shared.train(10, lr), per_slot.train(10, lr)
    np.testing.assert_allclose(a.losses[0], c.losses[0], rtol=1e-12)


def test_bucketed_and_env_accept_shared_mode_and_reject_others():
    BucketedNMF(4, [BOX], rng="shared", rng_seed=3)
    with pytest.raises(ValueError, match="rng"):
        BatchedNMF(2, BOX, rng="global")
    with pytest.raises(ValueError, match="rng"):
        BatchedNMFVecEnv(2, rng="global")


def test_env_in_shared_mode_is_deterministic_and_ends_episodes():
    def roll(seed):
        venv = BatchedNMFVecEnv(6, seed=seed, rng="shared", budget=200, steps_per_action=20)
        out = [venv.reset()]
        for _ in range(10):
            obs, r, d, infos = venv.step(np.ones(6, dtype=int))
            out += [obs, r[:, None]]
        assert d.all() and all(i["final_loss"] > 0 for i in infos)
        return np.concatenate([o.reshape(-1) for o in out])

    np.testing.assert_array_equal(roll(1), roll(1))
    assert not np.array_equal(roll(1), roll(2))
