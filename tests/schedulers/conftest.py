"""Shared scaffolding of the scheduler tests: tiny tasks, tiny runs, JSON state round trips."""

import json

import pytest

from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.nmf import NMFFamily
from metasched.schedulers import scheduler_from_state


@pytest.fixture(scope="session")
def nmf_family():
    """The default NMF family (seed 0) the scheduler tests train on."""
    return NMFFamily(seed=0)


@pytest.fixture(scope="session")
def nmf_task():
    """Factory of small NMF problems: instance ``index`` of the ``test`` split.

    ``seed`` picks the family (default 0, :func:`nmf_family`); each call builds a fresh task.
    """
    families = {}

    def make(index=0, seed=0):
        family = families.setdefault(seed, NMFFamily(seed=seed))
        return family.make("test", index)

    return make


@pytest.fixture(scope="session")
def tiny_mlp():
    """Factory of a tiny MLP on digits (width 16, one hidden layer); options override."""

    def make(**options):
        return MLPTask(MLPConfig(**{"width": 16, "depth": 1, **options}))

    return make


@pytest.fixture(scope="session")
def json_round_trip():
    """Rebuild a scheduler from its ``state_dict`` sent through strict JSON."""

    def rebuild(scheduler):
        blob = json.dumps(scheduler.state_dict(), allow_nan=False)
        return scheduler_from_state(json.loads(blob))

    return rebuild


@pytest.fixture(scope="session")
def resumed_run(json_round_trip):
    """Start a ``Run`` from ``seed``, take ``cut`` decisions, resume from JSON, finish.

    The run's scheduler is swapped mid-run for one rebuilt from its JSON state; the trace
    returned covers the whole run, so it must equal an uninterrupted run's.
    """

    def go(run, seed, cut):
        run.start(seed)
        for _ in range(cut):
            run.step()
        run.scheduler = json_round_trip(run.scheduler)
        return run.run()

    return go
