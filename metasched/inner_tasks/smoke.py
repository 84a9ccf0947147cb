"""A reusable smoke test for any :class:`~metasched.inner_tasks.base.InnerTask`.

:func:`smoke_test_task` checks the contract every task must honour — training lowers the
validation loss at a sensible LR, snapshots replay bit-identically, the same generator gives
the same trajectory, an absurd LR is reported as divergence, bad arguments raise
``ValueError`` and no global RNG is read or advanced — so a new task needs one line of test.

Example:
    >>> from metasched.inner_tasks.mlp import MLPConfig, MLPTask
    >>> report = smoke_test_task(MLPTask(MLPConfig(width=16, depth=1)), lr=0.2, steps=40)
    >>> report["diverged_at"] <= 40
    True
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from metasched.inner_tasks.base import InnerTask

__all__ = ["smoke_test_task"]


def _global_rng_states() -> tuple[Any, ...]:
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


def smoke_test_task(
    task: InnerTask,
    *,
    lr: float,
    steps: int = 50,
    bad_lr: float = 1e4,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the contract checks on ``task``; raise ``AssertionError`` at the first failure.

    Args:
        task: the task (it is reset several times).
        lr: a learning rate at which ``steps`` steps must lower :meth:`~InnerTask.evaluate`.
        steps: steps per training call.
        bad_lr: an absurd learning rate that must be reported as divergence.
        seed: seed of the generators passed to ``reset``.

    Returns:
        A small report: the losses before and after training and the step of divergence.
    """
    before_rng = _global_rng_states()

    # training at a sensible LR lowers the held-out loss and reports consistent stats
    task.reset(np.random.default_rng(seed))
    before = task.evaluate()
    assert math.isfinite(before), f"initial evaluate() is not finite: {before}"
    stats = task.train(steps, lr)
    assert not stats.diverged and stats.n_done == steps, f"diverged at a sane LR: {stats}"
    assert stats.losses.shape == (steps,) and np.all(np.isfinite(stats.losses))
    assert math.isfinite(stats.grad_norm) and stats.grad_norm > 0
    assert math.isfinite(stats.update_norm) and stats.update_norm > 0
    after = task.evaluate()
    assert after < before, f"evaluate() did not improve: {before} -> {after}"
    assert task.train(0, lr).n_done == 0

    # snapshot / restore replays bit-identically, and the snapshot stays reusable
    snap = task.snapshot()
    first = task.train(steps, lr).losses
    val_first = task.evaluate()
    for _ in range(2):
        task.restore(snap)
        again = task.train(steps, lr).losses
        assert np.array_equal(first, again), "restore did not replay the same losses"
        assert task.evaluate() == val_first, "restore did not replay the same parameters"

    # determinism per seed
    def trajectory(s: int) -> np.ndarray:
        task.reset(np.random.default_rng(s))
        return task.train(steps, lr).losses

    a, b, c = trajectory(seed), trajectory(seed), trajectory(seed + 1)
    assert np.array_equal(a, b), "the same generator gave different trajectories"
    assert not np.array_equal(a, c), "different generators gave the same trajectory"

    # divergence at an absurd LR
    task.reset(np.random.default_rng(seed))
    bad = task.train(10 * steps, bad_lr)
    assert bad.diverged, f"lr={bad_lr} was not reported as divergence"
    assert bad.n_done <= 10 * steps and len(bad.losses) == bad.n_done

    # bad arguments
    for n, rate in ((-1, lr), (1, math.nan), (1, -1.0), (1, math.inf)):
        try:
            task.train(n, rate)
        except ValueError:
            continue
        raise AssertionError(f"train({n}, {rate}) did not raise ValueError")

    after_rng = _global_rng_states()
    assert torch.equal(before_rng[0], after_rng[0]), "torch's global RNG was used"
    assert np.array_equal(before_rng[1], after_rng[1]), "numpy's global RNG was used"
    assert before_rng[2] == after_rng[2], "Python's global RNG was used"
    return {"before": before, "after": after, "diverged_at": bad.n_done}
