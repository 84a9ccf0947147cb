"""Stability-bound clipping in a plain torch loop (issue 13, item 3): the closure API."""

import math

import pytest
import torch

from metasched.errors import ConfigError
from metasched.schedulers import LearnedScheduler, TorchLRScheduler
from metasched.schedulers.loop_bound import ClosureForkTest

INTERVAL, STEPS = 20, 600


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g)).tanh() + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 512, 16)]

    def loss_fn(batch):
        return (model(batch[0]) - batch[1]).pow(2).mean()

    return model, batches, loss_fn


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
}


def train(policy, opt_name, clip):
    model, batches, loss_fn = problem()
    opt = OPTIMIZERS[opt_name](model.parameters())
    kw = {"clip": clip, "loss_fn": loss_fn} if clip != "none" else {}
    sched = TorchLRScheduler(opt, LearnedScheduler.load(policy), total_steps=STEPS, **kw)
    with torch.no_grad():
        first = float(sum(loss_fn(b) for b in batches) / len(batches))
    for t in range(STEPS):
        batch = batches[t % len(batches)]
        opt.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        opt.step()
        sched.step(loss, batch=batch) if clip != "none" else sched.step(loss)
    with torch.no_grad():
        last = float(sum(loss_fn(b) for b in batches) / len(batches))
    return first, last, sched


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_always_double_policy_does_not_diverge_with_clip_auto(fixed_action_policy, opt_name):
    policy = fixed_action_policy(2, lr_range=(1e-3, 1e9), interval=INTERVAL)
    first, last, sched = train(policy, opt_name, "auto")
    assert math.isfinite(last) and last < first, (opt_name, first, last)
    assert sched.clip_count > 0 and sched.lr_bound is not None and sched.lr_bound > 0
    assert sched.get_last_lr()[0] <= 0.707 * sched.lr_bound * (1 + 1e-12)
    assert 0 < sched.bound_cost_steps < STEPS  # counted, and amortised
    # the same policy without the clip blows up (the test can fail)
    first_n, last_n, _ = train(policy, opt_name, "none")
    assert not (math.isfinite(last_n) and last_n < 3 * first_n), (opt_name, first_n, last_n)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fork_test_leaves_model_optimizer_and_rng_untouched(opt_name):
    model, batches, loss_fn = problem(1)
    model.append(torch.nn.Dropout(0.1))  # consumes torch's random stream in the forks
    opt = OPTIMIZERS[opt_name](model.parameters())
    for b in batches[:5]:  # build up momentum / Adam moments
        opt.zero_grad()
        loss_fn(b).backward()
        opt.step()
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.detach().clone() for p in model.parameters()]
    state = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
             for k, s in opt.state_dict()["state"].items()}  # fmt: skip
    rng = torch.get_rng_state()
    fork = ClosureForkTest(opt, loss_fn, model=model)
    bound = fork.measure(batches[5:10])
    assert bound > 0 and fork.cost_steps >= 10
    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters(), strict=True))
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters(), strict=True))
    after = opt.state_dict()["state"]
    for k, s in state.items():
        for n, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(after[k][n])), (k, n)
    assert torch.equal(rng, torch.get_rng_state())
    assert opt.param_groups[0]["lr"] == OPTIMIZERS[opt_name]([torch.zeros(1)]).defaults["lr"]


def test_bad_clip_arguments_are_clear():
    model, _, loss_fn = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ConfigError, match="no analytic bound: use 'measured' or 'auto'"):
        TorchLRScheduler(opt, "constant", clip="deterministic", loss_fn=loss_fn)
    with pytest.raises(ConfigError, match="pass loss_fn="):
        TorchLRScheduler(opt, "constant", clip="auto")
    with pytest.raises(ConfigError, match=r"kappa must be .* got 0"):
        TorchLRScheduler(opt, "constant", clip="auto", loss_fn=loss_fn, kappa=0)
    sched = TorchLRScheduler(opt, "constant", clip="measured", loss_fn=loss_fn)
    with pytest.raises(ValueError, match="call step\\(loss, batch=batch\\)"):
        sched.step(torch.tensor(1.0))


def test_state_dict_keeps_the_bound_and_warm_start():
    model, batches, loss_fn = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = TorchLRScheduler(opt, "constant", interval=10, clip="auto", loss_fn=loss_fn)
    for t in range(30):
        opt.zero_grad()
        loss = loss_fn(batches[t])
        loss.backward()
        opt.step()
        sched.step(loss, batch=batches[t])
    state = sched.state_dict()
    again = TorchLRScheduler(opt, "constant", interval=10, clip="auto", loss_fn=loss_fn)
    again.load_state_dict(state)
    assert again.lr_bound == sched.lr_bound and again.bound_cost_steps == sched.bound_cost_steps
    assert again._fork.k == sched._fork.k and again._decisions == 3
