import numpy as np
import pytest
import torch

from metasched.inner_tasks.charlm import CharLMConfig, CharLMTask
from metasched.inner_tasks.gradients import supports_gradients, supports_hyperparameters
from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.mnist1d import MNIST1DConfig, MNIST1DTask
from metasched.inner_tasks.torch_task import build_module, check_fraction, flip_labels


def mlp(**kw):
    return MLPTask(MLPConfig(**{"width": 16, "depth": 1, "batch_size": 8, **kw}))


TASKS = {
    "mlp": lambda: mlp(),
    "mlp-wd": lambda: mlp(weight_decay=1e-2),
    "mnist1d-cnn": lambda: MNIST1DTask(MNIST1DConfig(arch="cnn", width=4, train_size=200)),
    "charlm": lambda: CharLMTask(CharLMConfig(context=8, batch_size=2, n_val_windows=2)),
}


@pytest.mark.parametrize("name", TASKS)
def test_gradient_interface_step_equals_train_one_step(name):
    a, b = TASKS[name](), TASKS[name]()
    assert supports_gradients(a) and supports_hyperparameters(a)
    a.reset(np.random.default_rng(4))
    b.reset(np.random.default_rng(4))
    for _ in range(5):
        stats = a.train(1, 0.05)
        batch = b.sample_minibatch()
        loss, grads = b.minibatch_gradients(batch)
        assert loss == stats.losses[0]
        b.apply_update(grads, [0.05] * len(grads))
    for p, q in zip(a.get_parameters(), b.get_parameters(), strict=True):
        np.testing.assert_array_equal(p, q)
    assert a.evaluate() == b.evaluate()


def test_blocks_round_trip_and_errors():
    task = mlp()
    task.reset(np.random.default_rng(0))
    blocks = task.parameter_blocks()
    assert [n for n, _ in blocks] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    params = task.get_parameters()
    assert [p.shape for p in params] == [s for _, s in blocks]
    before = task.evaluate()
    task.set_parameters([np.zeros(s) for _, s in blocks])
    assert task.evaluate() == pytest.approx(np.log(10), rel=1e-6)  # cache invalidated
    task.set_parameters(params)
    assert task.evaluate() == before
    with pytest.raises(ValueError, match="shape"):
        task.set_parameters([np.zeros((*s, 1)) for _, s in blocks])
    with pytest.raises(ValueError, match="blocks"):
        task.set_parameters(params[:1])
    with pytest.raises(ValueError, match="step sizes"):
        task.apply_update(params, [0.1])


def test_gradient_matches_a_directional_finite_difference():
    task = mlp()
    task.reset(np.random.default_rng(1))
    batch = task.sample_minibatch()
    loss, grads = task.minibatch_gradients(batch)
    assert loss == pytest.approx(task.minibatch_loss(batch))
    p0 = task.get_parameters()
    rng = np.random.default_rng(2)
    d = [rng.standard_normal(p.shape).astype(np.float32) for p in p0]
    eps = 1e-3
    task.set_parameters([p + eps * v for p, v in zip(p0, d, strict=True)])
    up = task.minibatch_loss(batch)
    task.set_parameters([p - eps * v for p, v in zip(p0, d, strict=True)])
    down = task.minibatch_loss(batch)
    directional = sum(float(np.vdot(g, v)) for g, v in zip(grads, d, strict=True))
    assert (up - down) / (2 * eps) == pytest.approx(directional, rel=2e-2)


def test_per_entry_step_sizes_and_sensitivity():
    task = mlp()
    task.reset(np.random.default_rng(0))
    p0 = task.get_parameters()
    _, grads = task.minibatch_gradients(task.sample_minibatch())
    steps = [np.full(g.shape, 0.1) for g in grads]
    steps[0][0] = 0.0  # freeze one row
    res = task.apply_update(grads, steps)
    p1 = task.get_parameters()
    np.testing.assert_array_equal(p1[0][0], p0[0][0])
    np.testing.assert_allclose(res.delta[1], -0.1 * grads[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(res.sensitivity[2], -grads[2])
    assert res.update_sq > 0


def test_divergence_rule_and_hyperparameters():
    task = mlp()
    task.reset(np.random.default_rng(0))
    assert not task.is_diverged() and not task.is_diverged(task.evaluate())
    assert task.is_diverged(float("nan")) and task.is_diverged(1e30)
    blocks = task.get_parameters()
    blocks[0][0, 0] = np.inf
    task.set_parameters(blocks)
    assert task.is_diverged()
    assert task.hyperparameters() == {"momentum": 0.0, "weight_decay": 0.0}
    task.set_hyperparameters(momentum=0.9, weight_decay=1e-4)
    assert task.hyperparameters() == {"momentum": 0.9, "weight_decay": 1e-4}
    with pytest.raises(ValueError, match="momentum"):
        task.set_hyperparameters(momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        task.set_hyperparameters(lr=0.1)


def test_momentum_is_an_ema_and_is_snapshotted():
    task = mlp(momentum=0.9)
    task.reset(np.random.default_rng(0))
    task.train(5, 0.1)
    snap = task.snapshot()
    assert any(b.abs().sum() > 0 for b in snap["buffers"])
    a = task.train(5, 0.1).losses
    task.reset(np.random.default_rng(9))  # momentum zeroed, other params
    task.restore(snap)
    np.testing.assert_array_equal(task.train(5, 0.1).losses, a)


def test_helpers_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    build_module(torch.nn.Linear, 3, 4)
    assert torch.equal(state, torch.get_rng_state())
    y = flip_labels(np.zeros(1000, dtype=np.int64), 0.5, 10, np.random.default_rng(0))
    assert 0.4 < float(np.mean(y != 0)) < 0.5
    with pytest.raises(ValueError, match="momentum"):
        check_fraction("momentum", 1.0)


def test_train_rejects_bad_arguments_and_threads_are_restored():
    task = mlp()
    task.reset(np.random.default_rng(0))
    prev = torch.get_num_threads()
    task.train(2, 0.1)
    assert torch.get_num_threads() == prev
    with pytest.raises(ValueError, match="n_steps"):
        task.train(1.5, 0.1)
    with pytest.raises(ValueError, match="num_threads"):
        MLPTask(MLPConfig(), num_threads=0)
    with pytest.raises(ValueError, match="divergence_factor"):
        MLPTask(MLPConfig(), divergence_factor=1.0)


@pytest.mark.parametrize("depth", [1, 3])
def test_handwritten_mlp_backprop_matches_autograd(depth):
    from metasched.inner_tasks.torch_task import TorchTask, is_plain_mlp

    task = mlp(depth=depth, width=12)
    assert is_plain_mlp(task)
    assert not is_plain_mlp(TASKS["mnist1d-cnn"]()) and not is_plain_mlp(TASKS["charlm"]())
    task.reset(np.random.default_rng(3))
    draws = task.draw_batches(1)
    value, grads = task.loss_and_grads(draws, 0)
    idx = draws[0]
    ref = torch.nn.functional.cross_entropy(task.model(task.x_train[idx]), task.y_train[idx])
    ref_grads = torch.autograd.grad(ref, task.params)
    assert value == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    # the generic autograd path of the base class agrees too
    auto_value, auto_grads = TorchTask.loss_and_grads(task, draws, 0)
    assert auto_value == pytest.approx(value, rel=1e-6)
    for g, r in zip(grads, auto_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
