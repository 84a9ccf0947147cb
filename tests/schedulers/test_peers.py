"""The LR-free peers: the packages' own optimizers taking every inner step of a task."""

import importlib
import math

import numpy as np
import pytest
import torch

from metasched.errors import ConfigError, MissingDependencyError
from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.schedulers import Run, make_scheduler, run_schedule
from metasched.schedulers import peers as peers_mod

PEERS = ["schedulefree", "prodigy", "dadapt"]
ON_NMF = ["prodigy", "dadapt"]


def _mlp():
    return MLPTask(MLPConfig(width=16, depth=1, batch_size=16))


def _direct(name, task, n_steps, base_lr, seed):
    """The package's optimizer run by hand on the task's own model, minibatch by minibatch."""
    task.reset(np.random.default_rng(seed))
    params = task.params
    if name == "schedulefree":
        import schedulefree

        opt = schedulefree.SGDScheduleFree(params, lr=10.0 * base_lr)
        opt.train()
    elif name == "prodigy":
        import prodigyopt

        opt = prodigyopt.Prodigy(params, lr=1.0)
    else:
        import dadaptation

        opt = dadaptation.DAdaptSGD(params, lr=1.0)
    for _ in range(n_steps):
        draws = task.draw_batches(1)
        loss = task.batch_loss(draws, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if name == "schedulefree":
        opt.eval()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", PEERS)
def test_matches_the_package_optimizer_run_directly(name):
    base = 0.05
    direct = _direct(name, _mlp(), 12, base, seed=3)
    task = _mlp()
    run = Run(task, make_scheduler(name), budget=12, interval=4, base_lr=base)
    run.start(np.random.default_rng(3))
    run.run()
    for ours, theirs in zip(task.params, direct, strict=True):
        torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PEERS)
def test_runs_on_a_torch_task_deterministically(name):
    a = run_schedule(_mlp(), make_scheduler(name), budget=200, interval=25, seed=1, base_lr=0.02)
    b = run_schedule(_mlp(), make_scheduler(name), budget=200, interval=25, seed=1, base_lr=0.02)
    np.testing.assert_array_equal(a["val_loss"], b["val_loss"])
    np.testing.assert_array_equal(a["lr"], b["lr"])
    assert not a.diverged and a.final_loss < a["val_loss"][0]
    assert a.extra_steps == 0 and a.total_steps == 200


@pytest.mark.parametrize("name", ON_NMF)
def test_runs_projected_on_nmf(name, nmf_task):
    task = nmf_task(0)
    s = make_scheduler(name)
    tr = run_schedule(task, s, budget=300, interval=50, seed=0)
    assert not tr.diverged and tr.final_loss < 0.5 * tr["train_loss"][0]
    assert task.W.min() >= 0 and task.H.min() >= 0
    # the step-size estimate grew from d0 = 1e-6
    assert tr["lr"][-1] > 1e3 * tr["lr"][1]


def test_schedulefree_refuses_projected_tasks(nmf_task):
    with pytest.raises(ConfigError, match=r"schedulefree.*projected"):
        run_schedule(nmf_task(0), make_scheduler("schedulefree"), budget=50, interval=50)


def test_schedulefree_lr_is_lr_scale_times_base_and_evaluation_sees_x():
    s = make_scheduler("schedulefree", lr_scale=4.0)
    assert s.reset(0.05) == pytest.approx(0.2)
    task = _mlp()
    run = Run(task, s, budget=40, interval=20, base_lr=0.05)
    run.start(0)
    run.step()
    opt = s._opt
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    assert not opt.param_groups[0]["train_mode"]  # between intervals: eval mode, params = x
    x = [p.detach().clone() for p in s._params]
    for p, t in zip(x, task.params, strict=True):
        torch.testing.assert_close(p, t.detach())
    # x differs from the gradient point y
    opt.train()
    y = [p.detach().clone() for p in s._params]
    opt.eval()
    assert any(not torch.equal(a, b) for a, b in zip(x, y, strict=True))
    task._eval_cache = None
    assert run.last_signal.val_loss == pytest.approx(task.evaluate())


@pytest.mark.parametrize("name", PEERS)
def test_state_resumes_mid_run_from_json(name, nmf_task, resumed_run):
    def task():
        return _mlp() if name == "schedulefree" else nmf_task(2)

    whole = run_schedule(task(), make_scheduler(name), budget=150, interval=25, seed=4)
    part = Run(task(), make_scheduler(name), budget=150, interval=25)
    tr = resumed_run(part, seed=4, cut=3)
    assert tr.final_loss == whole.final_loss
    np.testing.assert_array_equal(tr["lr"], whole["lr"])


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "prodigyopt":
            raise ImportError("No module named 'prodigyopt'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(peers_mod.importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError, match=r"prodigyopt.*metasched\[peers\]"):
        make_scheduler("prodigy")


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("schedulefree", {"lr_scale": 0}),
        ("schedulefree", {"momentum": 1.0}),
        ("prodigy", {"beta2": 1.0}),
        ("prodigy", {"d0": -1}),
        ("dadapt", {"momentum": -0.1}),
        ("dadapt", {"growth_rate": 1.0}),
    ],
)
def test_bad_arguments(name, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        make_scheduler(name, **kw)


def test_reported_lr_is_the_effective_step_size():
    s = make_scheduler("dadapt")
    assert s.reset(0.3) == pytest.approx(1e-6)  # d0 * lr: base_lr is not used
    run_schedule(_mlp(), s, budget=50, interval=25, seed=0)
    group = s._opt.param_groups[0]
    assert s.lr == pytest.approx(group["d"] * group["lr"]) and math.isfinite(s.lr)
