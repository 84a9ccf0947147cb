"""The shared driving loop: one clipping default everywhere (issue 12, item 10)."""

import dataclasses
import inspect

import numpy as np
import pytest

from metasched.distill import sanity
from metasched.distill.compare import CompareSpec
from metasched.envs.batched import BatchedNMFVecEnv
from metasched.envs.lr_control import LRControlEnv
from metasched.inner_tasks.nmf import NMFTask
from metasched.loop import DEFAULT_CLIP, DEFAULT_KAPPA, Driver
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
    bound = drv.bound
    assert bound is not None and bound > 0
    _, info = drv.advance(1e6)
    assert info.clipped
    assert info.applied_lr == pytest.approx(DEFAULT_KAPPA * bound)
    assert DEFAULT_KAPPA == 2.0  # the value the env, runner and comparison were tuned with
