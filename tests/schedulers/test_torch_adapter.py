import copy
import json
import math
import re

import pytest
import torch
from torch.optim import lr_scheduler as tls

from metasched.errors import ConfigError
from metasched.schedulers import SCHEDULERS, TorchLRScheduler, make_scheduler


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
    with pytest.raises(ConfigError, match="drives training itself"):
        TorchLRScheduler(opt, "probe")
    with pytest.raises(ConfigError, match=r"optimizer prodigyopt\.Prodigy, not an LR schedule"):
        TorchLRScheduler(opt, "prodigy")
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


# -- every registry name in a plain loop, with and without total_steps (issue 12, item 1) ----
@pytest.fixture
def keep_policy(fixed_action_policy):
    """A hand-built .msched policy over the LR-control observations that keeps the LR."""
    return fixed_action_policy(1, interval=5, name="keep.msched")


def _rules_file(tmp_path):
    from metasched.features import FEATURE_NAMES
    from metasched.schedulers.rules import write_rules

    header = {
        "observation": {"names": list(FEATURE_NAMES)},
        "action": {"mode": "discrete3"},
        "env_kwargs": {"action": "discrete3", "lr_range": [1e-3, 64.0], "init_lr": 1.0},
        "decision_interval": 5,
    }
    used = FEATURE_NAMES.index("budget_used")  # halve the LR in the second half of the run
    tree = {
        "feature": [used, -1, -1],
        "threshold": [0.5, 0.0, 0.0],
        "left": [1, -1, -1],
        "right": [2, -1, -1],
        "action": [1, 1, 0],
    }
    path = tmp_path / "rules.json"
    write_rules(path, header, tree, {"note": "hand-made"})
    return path


def _registry_kwargs(name, tmp_path, policy_file):
    if name == "learned":
        return {"path": str(policy_file)}
    if name == "rules":
        return {"path": str(_rules_file(tmp_path))}
    return {}


@pytest.mark.parametrize("total_steps", [None, 40])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_registry_name_in_a_plain_loop(name, total_steps, tmp_path, keep_policy):
    """Runs, or refuses at construction with a ConfigError that names the fix."""
    X, y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kwargs = _registry_kwargs(name, tmp_path, keep_policy)
    try:
        sched = TorchLRScheduler(opt, name, total_steps=total_steps, **kwargs)
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg
        cls = SCHEDULERS[name]
        if cls.drives_training:
            assert "run_schedule" in msg
        else:
            assert total_steps is None and "total_steps=" in msg, msg
        return
    lrs = [lr[0] for lr in _train(model, opt, sched, X, y, 40)]
    assert all(math.isfinite(lr) and lr >= 0 for lr in lrs)
    assert opt.param_groups[0]["lr"] == lrs[-1]
    json.dumps(sched.state_dict(), allow_nan=False)


def test_which_schedules_need_total_steps(keep_policy):
    _X, _y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for name, kw in [
        ("constant", {}),
        ("greedy", {}),
        ("step", {"milestones": [10, 20]}),
        ("exponential", {"gamma": 0.9}),
        ("cyclic", {"half_cycle": 5}),
        ("sgdr", {"first_cycle": 8}),
    ]:
        TorchLRScheduler(opt, name, **kw)  # no total_steps needed
    for name, kw, fix in [
        ("cosine", {}, "total_steps="),
        ("linear", {"warmup": 5}, "total_steps="),
        ("onecycle", {}, "total_steps="),
        ("step", {}, "or give milestones as int step counts"),
        ("exponential", {}, "or give gamma="),
        ("cyclic", {}, "or give half_cycle as an int step count"),
        ("sgdr", {}, "or give first_cycle as an int step count"),
        ("learned", {"path": str(keep_policy)}, "total_steps="),
    ]:
        with pytest.raises(ConfigError, match=re.escape(fix)):
            TorchLRScheduler(opt, name, **kw)


@pytest.mark.parametrize(
    ("name", "kwargs", "make_ref"),
    [
        ("constant", {}, lambda o: tls.ConstantLR(o, factor=1.0, total_iters=0)),
        ("step", {"milestones": [7, 19], "gamma": 0.3},
         lambda o: tls.MultiStepLR(o, milestones=[7, 19], gamma=0.3)),
        ("exponential", {"gamma": 0.93}, lambda o: tls.ExponentialLR(o, gamma=0.93)),
        ("cyclic", {"half_cycle": 6, "min_ratio": 0.1},
         lambda o: tls.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=6,
                                cycle_momentum=False)),
    ],
)  # fmt: skip
def test_step_count_schedules_match_torch_without_total_steps(name, kwargs, make_ref):
    _X, _y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours = TorchLRScheduler(opt, name, **kwargs)
    ref_opt = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)
    ref = make_ref(ref_opt)
    assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-12)
    for _ in range(50):
        opt.step()
        ours.step()
        ref_opt.step()
        ref.step()
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-9)


# -- cost: no host sync per parameter tensor per step (issue 12, item 9) ----------------------
def test_no_host_reads_between_decisions(keep_policy, monkeypatch):
    """Losses and gradient norms stay on the device until the scheduler decides."""
    X, y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = TorchLRScheduler(
        opt, "learned", path=str(keep_policy), total_steps=100, interval=10
    )
    reads = []
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append("item") or real_item(t))
    monkeypatch.setattr(
        torch.Tensor, "tolist", lambda t: reads.append("tolist") or real_tolist(t)
    )
    real_float = torch.Tensor.__float__
    monkeypatch.setattr(
        torch.Tensor, "__float__", lambda t: reads.append("float") or real_float(t)
    )
    for i in range(30):
        idx = slice((i * 8) % 64, (i * 8) % 64 + 8)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        before = len(reads)
        sched.step(loss)
        if (i + 1) % 10:
            assert len(reads) == before, f"step {i + 1} read a tensor: {reads[before:]}"
        else:
            assert reads[before:] == ["tolist"], reads[before:]  # one read per decision


@pytest.mark.parametrize("fold_at", [4096, 3])
def test_gradient_norm_is_the_rms_global_norm_of_the_interval(keep_policy, monkeypatch, fold_at):
    """As the inner tasks report it: root mean square over steps of the global norm."""
    from metasched.schedulers import torch_adapter

    monkeypatch.setattr(torch_adapter, "_FOLD_AT", fold_at)  # 3: folded every step or two
    X, y, model = _problem()
    frozen = torch.nn.Linear(2, 1)  # a group whose gradients come and go
    opt = torch.optim.SGD([{"params": model.parameters()}, {"params": frozen.parameters()}])
    opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = 0.05
    sched = TorchLRScheduler(
        opt, "learned", path=str(keep_policy), total_steps=100, interval=5
    )
    seen = []
    step = sched.scheduler.step
    sched.scheduler.step = lambda sig: seen.append(sig.grad_norm) or step(sig)
    squares = []
    for i in range(5):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(X[i::5]), y[i::5])
        if i % 2:
            loss = loss + frozen(torch.ones(1, 2)).sum()
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        squares.append(sum(float(p.grad.double().pow(2).sum()) for p in params))
        opt.step()
        sched.step(loss)
    assert seen == [pytest.approx(math.sqrt(sum(squares) / 5), rel=1e-5)]


def test_state_mid_interval_keeps_the_gradient_norms_seen_so_far(keep_policy):
    policy = str(keep_policy)

    def signals(sched):
        seen = []
        step = sched.scheduler.step
        sched.scheduler.step = lambda sig: seen.append((sig.train_loss, sig.grad_norm)) or step(
            sig
        )
        return seen

    X, y, model = _problem()
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05)
    ref = TorchLRScheduler(ref_opt, "learned", path=policy, total_steps=40, interval=10)
    ref_seen = signals(ref)
    _train(ref_model, ref_opt, ref, X, y, 40)

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = TorchLRScheduler(opt, "learned", path=policy, total_steps=40, interval=10)
    first = signals(sched)
    _train(model, opt, sched, X, y, 25)
    blob = json.loads(json.dumps(sched.state_dict(), allow_nan=False))
    opt2 = torch.optim.SGD(model.parameters(), lr=0.05)
    sched2 = TorchLRScheduler(opt2, "learned", path=policy, total_steps=40, interval=10)
    sched2.load_state_dict(blob)
    second = signals(sched2)
    _train(model, opt2, sched2, X, y, 15, start=25)
    assert len(first + second) == len(ref_seen) == 4
    for (a_loss, a_norm), (b_loss, b_norm) in zip(first + second, ref_seen, strict=True):
        assert a_loss == pytest.approx(b_loss, rel=1e-6)
        assert a_norm == pytest.approx(b_norm, rel=1e-5)


def test_grad_norm_every_measures_a_subset_of_the_steps(keep_policy):
    X, y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = TorchLRScheduler(
        opt, "learned", path=str(keep_policy), total_steps=100, interval=6,
        grad_norm_every=3,
    )  # fmt: skip
    seen = []
    step = sched.scheduler.step
    sched.scheduler.step = lambda sig: seen.append(sig.grad_norm) or step(sig)
    squares = []
    for i in range(6):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X[i::6]), y[i::6]).backward()
        if i % 3 == 0:  # steps 1 and 4 of the interval
            squares.append(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
        opt.step()
        sched.step(1.0)
    assert seen == [pytest.approx(math.sqrt(sum(squares) / 2), rel=1e-5)]
    assert json.loads(json.dumps(sched.state_dict()))["grad_norm_every"] == 3
    with pytest.raises(ValueError, match="grad_norm_every"):
        TorchLRScheduler(opt, "greedy", grad_norm_every=0)
