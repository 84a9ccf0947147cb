"""Library calls leave process-wide thread settings alone (issue 12, item 9).

Only the ``metasched`` command and the worker processes metasched starts set threads.
"""

import numpy as np
import pytest
import threadpoolctl
import torch

from metasched.distill.compare import CompareSpec, compare, parse_scheduler
from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.multicopy import train_copies


@pytest.fixture
def spy(monkeypatch):
    """Record every change of torch's or the BLAS pools' thread settings; start from 2."""
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("torch", n)) or real(n))
    monkeypatch.setattr(
        threadpoolctl,
        "threadpool_limits",
        lambda *a, **k: calls.append(("blas", a)) or pytest.fail("threadpool_limits called"),
    )
    yield calls
    real(prev)


def test_torch_task_train_and_evaluate_leave_threads_alone(spy):
    task = MLPTask(MLPConfig(width=16, depth=1))
    task.reset(np.random.default_rng(0))
    task.train(5, 0.1)
    task.evaluate()
    task.accuracy()
    snap = task.snapshot()
    train_copies(task, [snap] * 2, [0.05, 0.1], 3)
    assert spy == []
    assert torch.get_num_threads() == 2


def test_explicit_num_threads_is_an_opt_in_and_restored(spy):
    task = MLPTask(MLPConfig(width=16, depth=1), num_threads=1)
    task.reset(np.random.default_rng(0))
    spy.clear()
    task.train(2, 0.1)
    assert spy == [("torch", 1), ("torch", 2)]
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("family", ["nmf", "mlp"])
def test_compare_with_one_job_leaves_threads_alone(spy, family, tmp_path):
    spec = CompareSpec(
        families=(family,), n_instances=1, budget=40, interval=20, tune_instances=1, grid=(1.0,)
    )
    compare(spec, [parse_scheduler("constant")], tmp_path / "cmp", jobs=1, log=lambda _: None)
    assert spy == []
    assert torch.get_num_threads() == 2
