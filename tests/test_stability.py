"""Tests of the measured stability bound (metasched.stability)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metasched.errors import UnknownNameError
from metasched.inner_tasks import MLPConfig, MLPTask, NMFConfig, NMFTask, make_family
from metasched.inner_tasks.torch_task import TorchTask
from metasched.stability import (
    ForkTestEstimator,
    StabilityEstimator,
    lanczos_top_eigenvalue,
    make_estimator,
    momentum_factor,
    power_top_eigenvalue,
    sgd_stability_limit,
    supports_curvature,
)


def _spd(eigs: np.ndarray, seed: int = 0) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return torch.from_numpy(q @ np.diag(eigs) @ q.T)


class QuadraticTask(TorchTask):
    """``f(p) = 1/2 p^T A p`` (every minibatch the same), trained by the real TorchTask SGD."""

    def __init__(self, a: torch.Tensor, momentum: float = 0.0) -> None:
        super().__init__(name="quadratic", momentum=momentum, divergence_factor=1e6)
        self.a = a.float()
        self.model = torch.nn.Linear(a.shape[0], 1, bias=False)
        self._setup()

    def init_parameter(self, name: str, param: torch.Tensor, gen: torch.Generator) -> None:
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=gen))

    def draw_batches(self, n_steps: int) -> Any:
        return torch.randint(2, (n_steps,), generator=self.data_gen)

    def batch_loss(self, draws: Any, t: int) -> torch.Tensor:
        p = self.model.weight.reshape(-1)
        return 0.5 * p @ (self.a @ p)

    def validation_loss(self) -> float:
        return float(self.batch_loss(None, 0))


@pytest.mark.parametrize("solver", [lanczos_top_eigenvalue, power_top_eigenvalue])
def test_solvers_recover_top_eigenvalue_of_known_matrix(solver):
    eigs = np.array([5.0, 2.0, 1.0, 0.5, 0.1, 0.0, -0.3, 0.2])
    a = _spd(eigs)
    v0 = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam, vec, n = solver(lambda v: a @ v, v0, max_iter=200, tol=1e-12)
    assert lam == pytest.approx(5.0, rel=1e-9)
    assert abs(float(vec @ (a @ vec))) == pytest.approx(5.0, rel=1e-6)
    assert 1 <= n <= 200


def test_lanczos_exact_in_krylov_dimension():
    a = _spd(np.array([3.0, 1.0, -2.0, 0.5]), seed=3)
    lam, _, n = lanczos_top_eigenvalue(lambda v: a @ v, torch.ones(4, dtype=torch.float64),
                                       max_iter=10, tol=1e-15)
    assert n <= 4 and lam == pytest.approx(3.0, rel=1e-10)


def test_hessian_of_quadratic_task_measured_exactly():
    a = _spd(np.array([4.0, 1.0, 0.5, 0.25, 0.1]), seed=1)
    task = QuadraticTask(a)
    task.reset(np.random.default_rng(0))
    est = StabilityEstimator(max_iter=20, tol=1e-8, generator=0)
    m = est.measure(task)
    assert m.sharpness == pytest.approx(4.0, rel=1e-4)
    assert m.bound == pytest.approx(0.5, rel=1e-4)


def test_power_iteration_finds_top_when_negative_dominates():
    a = _spd(np.array([1.0, -5.0, 0.2]), seed=2).float()
    task = QuadraticTask(a)
    task.reset(np.random.default_rng(0))
    m = StabilityEstimator(method="power", max_iter=500, tol=1e-9, generator=0).measure(task)
    assert m.sharpness == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_momentum_limit_separates_stable_from_divergent(mu):
    """EMA-momentum SGD (the task's own train) at 0.95x / 1.05x the predicted limit."""
    a = _spd(np.array([2.0, 0.7, 0.3, 0.05]), seed=4)
    predicted = sgd_stability_limit(2.0, mu)
    task = QuadraticTask(a, momentum=mu)
    task.reset(np.random.default_rng(0))
    assert task.measured_lr_bound(StabilityEstimator(tol=1e-8, generator=0)) == pytest.approx(
        predicted, rel=1e-4
    )
    snap = task.snapshot()
    start = task.evaluate()
    stats = task.train(3000, 0.95 * predicted)
    assert not stats.diverged and task.evaluate() < start
    task.restore(snap)
    assert task.train(3000, 1.05 * predicted).diverged


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_heavy_ball_limit_matches_torch_sgd(beta):
    lam = 3.0
    limit = sgd_stability_limit(lam, beta, kind="heavy_ball")
    assert limit == pytest.approx(2 * (1 + beta) / lam)
    finals = []
    for scale in (0.95, 1.05):
        x = torch.ones(1, requires_grad=True)
        opt = torch.optim.SGD([x], lr=scale * limit, momentum=beta)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * lam * x.square()).sum().backward()
            opt.step()
        finals.append(abs(float(x.detach())))
    assert finals[0] < 1e-3
    assert not finals[1] < 1e3


def test_momentum_factor_and_limits():
    assert momentum_factor(0.5) == pytest.approx(3.0)
    assert momentum_factor(0.5, "heavy_ball") == pytest.approx(1.5)
    assert sgd_stability_limit(0.0) == math.inf
    assert sgd_stability_limit(math.inf) == 0.0
    with pytest.raises(ValueError, match=r"1\.0"):
        momentum_factor(1.0)
    with pytest.raises(ValueError, match="'adam'"):
        momentum_factor(0.1, "adam")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_batches": 0}, "n_batches"),
        ({"method": "arnoldi"}, "'arnoldi'"),
        ({"reduce": "median"}, "'median'"),
        ({"tol": 0.0}, "tol"),
        ({"every": 1.5}, "every"),
    ],
)
def test_bad_estimator_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        StabilityEstimator(**kwargs)


def test_task_without_curvature_is_a_clear_error():
    with pytest.raises(ValueError, match="CurvatureTask"):
        StabilityEstimator().measure(object())


def _mlp() -> MLPTask:
    task = MLPTask(MLPConfig(width=16, depth=1, batch_size=16, momentum=0.5))
    task.reset(np.random.default_rng(0))
    task.train(30, 0.1)
    return task


def test_measurement_is_deterministic_and_leaves_training_untouched():
    task = _mlp()
    assert supports_curvature(task)
    snap = task.snapshot()
    a = StabilityEstimator(generator=np.random.default_rng(7)).measure(task)
    b = StabilityEstimator(generator=np.random.default_rng(7)).measure(task)
    c = StabilityEstimator(generator=np.random.default_rng(8)).measure(task)
    assert a == b
    assert c.eigenvalues != a.eigenvalues
    after = task.train(20, 0.1).losses
    task.restore(snap)
    assert np.array_equal(after, task.train(20, 0.1).losses)


def test_warm_start_and_cost_counting():
    task = _mlp()
    est = StabilityEstimator(generator=0, every=3)
    first = est.measure(task)
    assert est.n_hvp == first.n_hvp and est.cost_steps == pytest.approx(
        first.n_hvp * task.hvp_cost
    )
    second = est.measure(task)
    assert est.n_measurements == 2 and est.n_hvp == first.n_hvp + second.n_hvp
    est.reset()
    assert est.n_hvp == 0 and est.last is None


def test_nmf_measured_bound_near_analytic():
    family = make_family("nmf")
    for i in range(3):
        task = family.make("train", i)
        task.reset(np.random.default_rng(i))
        task.train(300, task.default_lr())
        analytic = task.lr_bound()
        measured = task.measured_lr_bound(StabilityEstimator(generator=i))
        # 2/lam with lam >= L_W (the W block alone): at most 2x the analytic 1/L, and the
        # coupled block matrix is not much sharper than its sharpest block
        assert 0.5 * analytic < measured <= 2.0 * analytic * (1 + 1e-6)


def test_nmf_hessian_operator_matches_finite_differences():
    task = NMFTask.from_config(
        NMFConfig(m=30, n=20, rank=3, noise=0.05, grad_noise=0.0, batch_size=4, seed=0)
    )
    task.reset(np.random.default_rng(0))
    drawn = task.curvature_batches(3, torch.Generator().manual_seed(0))
    assert len(drawn) == 3 and all(b.shape == (4,) for b in drawn)
    batch = np.array([0, 3, 7, 11])  # distinct rows, so the loss is a function of (W_B, H)
    mv, dim, _ = task.hessian_operator(batch)
    b, r, n = len(batch), task.rank, task.n
    v = np.random.default_rng(1).standard_normal(dim)

    def grad(x: np.ndarray) -> np.ndarray:  # gradient of f_B in (M^(1/2))-scaled coordinates
        wb = task.W[batch] + x[: b * r].reshape(b, r) * math.sqrt(b)
        h = task.H + x[b * r :].reshape(r, n)
        res = wb @ h - task.V[batch]
        gw = res @ h.T / (b * n) * math.sqrt(b)
        gh = wb.T @ res / (b * n)
        return np.concatenate((gw.ravel(), gh.ravel()))

    eps = 1e-5
    fd = (grad(eps * v) - grad(-eps * v)) / (2 * eps)
    np.testing.assert_allclose(mv(torch.from_numpy(v)).numpy(), fd, rtol=1e-5, atol=1e-9)


def test_benchmark_quick_mode_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stability.py"
    spec = importlib.util.spec_from_file_location("bench_stability", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    out = tmp_path / "rows.csv"
    recs = mod.main(["--quick", "--csv", str(out)])
    assert out.read_text().count("\n") == 5  # header + 2 checkpoints x (mlp, nmf)
    fams = {r["family"] for r in recs}
    assert fams == {"mlp", "nmf"}
    for r in recs:
        assert r["n"] == 2 and r["q5"] > 0 and 0 <= r["le1"] <= 1 and r["overhead"] > 0


def test_fork_test_brackets_quadratic_limit_and_leaves_task_untouched():
    a = _spd(np.array([8.0, 1.0, 0.5]), seed=5)
    task = QuadraticTask(a)
    task.reset(np.random.default_rng(0))
    snap = task.snapshot()
    fork = ForkTestEstimator(steps=30, max_up=20)
    m = fork.measure(task)
    limit = 2.0 / 8.0
    assert limit / 2**0.5 <= m.bound <= limit * 2**0.5
    assert m.cost_steps == fork.cost_steps > 0
    after = task.train(5, 0.01).losses
    task.restore(snap)
    assert np.array_equal(after, task.train(5, 0.01).losses)
    task.restore(snap)
    assert ForkTestEstimator(steps=30, max_up=20).measure(task) == m  # deterministic


def test_fork_test_descends_when_start_is_unstable():
    a = _spd(np.array([8.0, 1.0]), seed=6)
    task = QuadraticTask(a)
    task.reset(np.random.default_rng(0))
    m = ForkTestEstimator(steps=30, anchor=64.0).measure(task)
    assert 0.25 / 2**0.5 <= m.bound <= 0.25 * 2**0.5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"steps": 0}, "steps"), ({"rise": 1.0}, "rise"), ({"anchor": -1.0}, "anchor")],
)
def test_bad_fork_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ForkTestEstimator(**kwargs)


def test_make_estimator_by_name():
    assert isinstance(make_estimator(), ForkTestEstimator)
    assert isinstance(make_estimator("hessian", n_batches=1), StabilityEstimator)
    with pytest.raises(UnknownNameError, match="did you mean 'fork'"):
        make_estimator("forks")
