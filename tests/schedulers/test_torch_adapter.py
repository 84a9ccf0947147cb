import copy
import json

import pytest
import torch

from metasched.errors import ConfigError
from metasched.schedulers import TorchLRScheduler, make_scheduler


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 5, generator=g)
    y = X @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return X, y, model


def _train(model, opt, sched, X, y, steps, start=0):
    lrs = []
    for i in range(start, start + steps):
        idx = slice((i * 8) % 64, (i * 8) % 64 + 8)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step(loss)
        lrs.append(sched.get_last_lr())
    return lrs


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("name", ["greedy", "cosine", "onecycle"])
def test_plain_loop_with_sgd_and_adam(opt_cls, name):
    X, y, model = _problem()
    opt = opt_cls(model.parameters(), lr=0.05)
    kw = {"patience": 2} if name == "greedy" else {}
    sched = TorchLRScheduler(opt, name, total_steps=60, **kw)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    lrs = _train(model, opt, sched, X, y, 60)
    assert [opt.param_groups[0]["lr"]] == lrs[-1] == sched.get_last_lr()
    assert len({tuple(x) for x in lrs}) > 3  # the LR actually moved


def test_cosine_matches_torch_cosine_annealing_step_for_step():
    _X, _y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours = TorchLRScheduler(opt, "cosine", total_steps=40)
    ref_opt = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=40)
    for _ in range(40):
        opt.step()
        ours.step()
        ref_opt.step()
        ref.step()
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-12)


def test_several_param_groups_keep_ratios_under_open_loop_schedules():
    X, y, model = _problem()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": 0.01},
        ],
        lr=0.1,
    )
    sched = TorchLRScheduler(opt, "cosine", total_steps=30)
    _train(model, opt, sched, X, y, 15)
    a, b = sched.get_last_lr()
    assert a / b == pytest.approx(10.0)
    assert [g["lr"] for g in opt.param_groups] == [a, b]


def test_greedy_bounds_per_group():
    _X, _y, model = _problem()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.1}]
    )
    sched = TorchLRScheduler(
        opt, "greedy", patience=0, factor=0.5, min_lr=[0.05, 0.001], max_lr=[1.0, 1.0]
    )
    for _ in range(6):  # the first loss beats inf (x 2), then worsening ones (x 0.5 each)
        opt.step()
        sched.step(1.0 + _)
    lo, hi = sched.get_last_lr()
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.2 * 0.5**5)


def test_state_round_trip_mid_training_resumes_identically():
    X, y, model = _problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    sched = TorchLRScheduler(opt, "greedy", patience=1, smooth=True, window_size=4, interval=3)
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=0.02)
    ref_sched = TorchLRScheduler(
        ref_opt, "greedy", patience=1, smooth=True, window_size=4, interval=3
    )
    ref_lrs = _train(ref_model, ref_opt, ref_sched, X, y, 50)

    _train(model, opt, sched, X, y, 25)  # 25 is not a multiple of the interval: pending
    blob = json.dumps(sched.state_dict(), allow_nan=False)
    state_model = copy.deepcopy(model.state_dict())
    state_opt = copy.deepcopy(opt.state_dict())

    model2 = _problem()[2]
    model2.load_state_dict(state_model)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    opt2.load_state_dict(state_opt)
    sched2 = TorchLRScheduler(opt2, "greedy")  # default options: restored from the state
    sched2.load_state_dict(json.loads(blob))
    lrs2 = _train(model2, opt2, sched2, X, y, 25, start=25)
    assert lrs2 == ref_lrs[25:]
    for p, q in zip(model2.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_interval_updates_only_every_n_steps():
    X, y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = TorchLRScheduler(opt, "cosine", total_steps=100, interval=10)
    lrs = [lr[0] for lr in _train(model, opt, sched, X, y, 30)]
    assert len(set(lrs[:9])) == 1 and lrs[9] != lrs[8] and len(set(lrs[10:19])) == 1


def test_scheduler_instance_and_tensor_loss_accepted():
    _X, _y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = TorchLRScheduler(opt, make_scheduler("greedy", patience=0))
    sched.step(torch.tensor(1.0))
    assert sched.get_last_lr()[0] == pytest.approx(0.1 / 0.95)


def test_errors_are_clear():
    _X, _y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="forks training"):
        TorchLRScheduler(opt, "probe")
    with pytest.raises(ConfigError, match="total_steps"):
        TorchLRScheduler(opt, "cosine")
    with pytest.raises(ConfigError, match="did you mean"):
        TorchLRScheduler(opt, "greedy", patiense=2)
    sched = TorchLRScheduler(opt, "greedy")
    with pytest.raises(ValueError, match="reads the loss"):
        sched.step()
    with pytest.raises(ValueError, match="scalar"):
        sched.step(torch.ones(3))
    with pytest.raises(TypeError, match="Optimizer"):
        TorchLRScheduler(model, "constant")
