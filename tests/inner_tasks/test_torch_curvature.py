"""The torch tasks' curvature hook: exact minibatch Hessians and the measured ``lr_bound``."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metasched.inner_tasks import CharLMConfig, CharLMTask, MLPConfig, MLPTask
from metasched.stability import ForkTestEstimator, StabilityEstimator


def _mlp(momentum: float = 0.0, weight_decay: float = 0.0) -> MLPTask:
    task = MLPTask(
        MLPConfig(width=4, depth=1, batch_size=8, momentum=momentum, weight_decay=weight_decay)
    )
    task.reset(np.random.default_rng(0))
    task.train(20, 0.1)
    return task


def test_lr_bound_is_none_until_an_estimator_is_attached():
    task = _mlp()
    assert task.lr_bound() is None
    assert task.default_lr() == task.reference_lr


def test_attached_estimator_amortises_the_measurement():
    task = _mlp(momentum=0.5)
    est = StabilityEstimator(generator=0, every=3)
    task.stability = est
    bounds = [task.lr_bound() for _ in range(5)]
    assert est.n_measurements == 2  # calls 0 and 3
    assert bounds[0] == bounds[1] == bounds[2] and bounds[3] == bounds[4]
    assert all(b is not None and 0 < b < math.inf for b in bounds)
    # momentum-aware: (1 + mu) / (1 - mu) = 3 times 2 / sharpness
    assert est.last is not None
    assert bounds[4] == pytest.approx(3 * 2 / est.last.sharpness)


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_hessian_operator_matches_the_full_hessian(weight_decay):
    task = _mlp(weight_decay=weight_decay)
    batch = task.curvature_batches(1, torch.Generator().manual_seed(3))[0]
    mv, dim, _ = task.hessian_operator(batch)
    assert dim == task.n_parameters
    names = [n for n, _ in task.parameter_blocks()]
    shapes = [p.shape for p in task.params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in task.params]).double()
    model = copy.deepcopy(task.model).double()
    x = task.x_train[batch[0][batch[1]]].double()
    y = task.y_train[batch[0][batch[1]]]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = math.prod(s)
            parts[n] = flat[i : i + k].reshape(s)
            i += k
        out = functional_call(model, parts, (x,))
        return torch.nn.functional.cross_entropy(out, y) + 0.5 * weight_decay * flat @ flat

    hess = torch.autograd.functional.hessian(loss, flat0)
    v = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(mv(v).numpy(), (hess @ v.double()).numpy(), rtol=1e-3, atol=1e-4)
    top = float(torch.linalg.eigvalsh(hess)[-1])
    est = StabilityEstimator(n_batches=1, max_iter=200, tol=1e-9, generator=0)
    est._gen = torch.Generator().manual_seed(3)  # the same minibatch as above
    assert est.measure(task).sharpness == pytest.approx(top, rel=1e-3)


def test_charlm_hessian_vector_products_work():
    task = CharLMTask(CharLMConfig(context=16, batch_size=4, n_val_windows=4))
    task.reset(np.random.default_rng(0))
    m = StabilityEstimator(n_batches=1, max_iter=4, generator=0).measure(task)
    assert 0 < m.bound < math.inf and m.n_hvp >= 1


def test_default_measurement_is_the_fork_test_and_replays_training():
    task = _mlp(momentum=0.5)
    snap = task.snapshot()
    bound = task.measured_lr_bound()
    # the fork test searches a half-octave grid anchored at the reference LR
    k = 2 * math.log2(bound / task.reference_lr)
    assert k == pytest.approx(round(k), abs=1e-9)
    after = task.train(10, 0.1).losses
    task.restore(snap)
    assert np.array_equal(after, task.train(10, 0.1).losses)
    task.stability = ForkTestEstimator(steps=5, every=2)
    assert task.lr_bound() == task.lr_bound()
    assert task.stability.n_measurements == 1
