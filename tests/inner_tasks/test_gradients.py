import numpy as np
import pytest

from metasched.inner_tasks.gradients import (
    GradientTask,
    require_gradient_task,
    supports_gradients,
)
from metasched.inner_tasks.nmf import NMFFamily, NMFTask

FAMILY = NMFFamily(seed=0)


def _pair(index=0, **kw):
    cfg = FAMILY.instance_config("test", index)
    a, b = FAMILY.make_task(cfg, **kw), FAMILY.make_task(cfg, **kw)
    a.reset(np.random.default_rng(3))
    b.reset(np.random.default_rng(3))
    return a, b


@pytest.mark.parametrize("kw", [{}, {"update_cap": 1e-3}])
def test_one_step_through_the_interface_equals_train_one_step(kw):
    a, b = _pair(**kw)
    lr = 1.5 * a.default_lr()
    for _ in range(30):
        stats = a.train(1, lr)
        batch = b.sample_minibatch()
        loss, grads = b.minibatch_gradients(batch)
        res = b.apply_update(grads, [lr, lr])
        assert loss == stats.losses[0]
        # train counts a row drawn twice twice; the dense update counts entries once
        assert 0 < res.capped <= stats.capped or not kw
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.H, b.H)
    assert a.evaluate() == b.evaluate()


def test_blocks_shapes_and_parameter_round_trip():
    task, _ = _pair()
    assert isinstance(task, GradientTask) and supports_gradients(task)
    (nw, sw), (nh, sh) = task.parameter_blocks()
    assert (nw, nh) == ("W", "H") and sw == task.W.shape and sh == task.H.shape
    params = task.get_parameters()
    params[0][:] = 0.0  # a copy: the task is untouched
    assert task.W.any()
    task.set_parameters([np.ones(sw), np.ones(sh)])
    assert task.W.sum() == task.W.size
    with pytest.raises(ValueError, match="shape"):
        task.set_parameters([np.ones(sh), np.ones(sw)])


def test_gradient_matches_finite_differences_without_noise():
    task = NMFTask.from_matrix(np.random.default_rng(0).random((12, 7)), rank=3, batch_size=12)
    task.reset(np.random.default_rng(1))
    batch = np.arange(12)
    loss, (gw, gh) = task.minibatch_gradients(batch)
    assert loss == pytest.approx(task.minibatch_loss(batch))
    W0, H0 = task.get_parameters()
    eps = 1e-6
    for block, g, idx in ((0, gw, (4, 1)), (1, gh, (2, 5))):
        plus = [W0.copy(), H0.copy()]
        plus[block][idx] += eps
        task.set_parameters(plus)
        up = task.minibatch_loss(batch)
        minus = [W0.copy(), H0.copy()]
        minus[block][idx] -= eps
        task.set_parameters(minus)
        down = task.minibatch_loss(batch)
        assert g[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_sensitivity_is_zero_where_the_projection_clamps():
    task = NMFTask.from_matrix(np.ones((6, 4)), rank=2, batch_size=6)
    task.reset(np.random.default_rng(0))
    grads = [np.full((6, 2), 1e6), np.full((2, 4), -1.0)]
    res = task.apply_update(grads, [1.0, 0.1])
    assert not task.W.any()  # every W entry clamped at 0
    assert not res.sensitivity[0].any()
    np.testing.assert_array_equal(res.sensitivity[1], 1.0)  # -M g with M = 1 on H
    assert res.update_sq > 0


def test_divergence_rule():
    task, _ = _pair()
    assert not task.is_diverged() and not task.is_diverged(task.evaluate())
    assert task.is_diverged(float("nan")) and task.is_diverged(1e300)
    task.set_parameters([np.zeros_like(task.W), task.H])
    assert task.is_diverged()


def test_require_gradient_task_names_the_task():
    class Plain:
        name = "plain-task"

    with pytest.raises(ValueError, match="plain-task"):
        require_gradient_task(Plain(), "hypergradient")
