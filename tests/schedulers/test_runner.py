import json
import math

import numpy as np
import pytest

from metasched.inner_tasks.nmf import NMFFamily
from metasched.schedulers import TRACE_COLUMNS, Run, make_scheduler, run_schedule

FAMILY = NMFFamily(seed=1)


def test_trace_layout_and_outcome():
    task = FAMILY.make("test", 0)
    tr = run_schedule(task, make_scheduler("constant"), budget=500, interval=50, seed=2)
    assert len(tr) == 11
    assert tr["step"].tolist() == list(range(0, 501, 50))
    assert math.isnan(tr["lr"][0]) and np.all(tr["lr"][1:] == tr["lr"][1])
    assert np.all(tr["applied_lr"][1:] <= tr["lr"][1:])
    assert tr["inner_steps"].tolist() == tr["step"].tolist()
    assert np.all(np.diff(tr["wall_time"]) >= 0)
    assert tr.final_loss == pytest.approx(task.evaluate())
    assert tr.final_loss < tr["train_loss"][0]
    rows = list(tr.rows())
    assert set(rows[0]) == {"task", "scheduler", *TRACE_COLUMNS}
    assert rows[3]["task"] == task.name and rows[3]["scheduler"] == "ConstantSchedule()"
    json.dumps(tr.to_dict(), allow_nan=False)


def test_default_base_lr_is_the_task_default_at_initialisation():
    task = FAMILY.make("test", 3)
    run = Run(task, make_scheduler("constant"), budget=100, interval=50)
    run.start(0)
    assert run.scheduler.lr == pytest.approx(task.default_lr())


def test_same_seed_same_trace_different_seed_different():
    def go(seed):
        return run_schedule(
            FAMILY.make("test", 4), make_scheduler("cosine"), budget=300, interval=50, seed=seed
        )

    a, b, c = go(5), go(5), go(6)
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])
    assert a.final_loss == b.final_loss
    assert not np.array_equal(a["train_loss"], c["train_loss"])


def test_divergence_ends_the_run_with_infinite_final_loss():
    task = FAMILY.make("test", 0)
    tr = run_schedule(
        task, make_scheduler("constant"), budget=1000, interval=50, base_lr=1e4, clip="none"
    )
    assert tr.diverged and tr.final_loss == math.inf
    assert len(tr) < 21 and tr["step"][-1] <= 1000


def test_clipping_caps_the_applied_lr_and_counts_it():
    task = FAMILY.make("test", 0)
    tr = run_schedule(
        task, make_scheduler("constant"), budget=200, interval=50, base_lr=1e4, kappa=1.0
    )
    assert not tr.diverged and tr.clip_count == 4
    assert np.all(tr["applied_lr"][1:] < 1e4)


def test_bad_calls_are_clear():
    task = FAMILY.make("test", 0)
    with pytest.raises(TypeError, match="Scheduler"):
        Run(task, "cosine", budget=10, interval=5)
    with pytest.raises(ValueError, match="base_lr"):
        Run(task, make_scheduler("constant"), budget=10, interval=5, base_lr=-1.0)
    run = Run(task, make_scheduler("constant"), budget=10, interval=5)
    with pytest.raises(RuntimeError, match="start"):
        run.step()
    run.start(0)
    run.run()
    with pytest.raises(RuntimeError, match="over"):
        run.step()


def test_measure_val_records_validation_losses():
    task = FAMILY.make("test", 0)
    tr = run_schedule(task, make_scheduler("constant"), budget=100, interval=50, measure_val=True)
    assert np.all(np.isfinite(tr["val_loss"]))
    assert tr["val_loss"][-1] == pytest.approx(tr.final_loss)
