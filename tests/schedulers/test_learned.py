"""LearnedScheduler: replays an exported policy exactly as the env runs it, anywhere."""

import copy
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils import seeding
from hypothesis import given, settings
from hypothesis import strategies as st
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import metasched
from metasched.agents.export import export_model, obs_norm_from_vecnormalize
from metasched.errors import ConfigError, ExportError
from metasched.features import FeatureTracker
from metasched.inner_tasks.nmf import NMFFamily
from metasched.policyfile import minimal_header, write_policy
from metasched.schedulers import (
    SCHEDULERS,
    LearnedScheduler,
    Run,
    TorchLRScheduler,
    make_scheduler,
    run_schedule,
    scheduler_from_state,
)
from metasched.signal import TrainingSignal

ENV_ID = "metasched/NMF-v1"
TRAIN_ENV = {"budget": 200, "steps_per_action": 50}
ON = {"n_steps": 32, "batch_size": 32, "n_epochs": 2, "seed": 0, "device": "cpu"}
CASES = {
    "ppo-discrete3": (PPO, "discrete3", {"net_arch": [16]}),
    "ppo-continuous": (PPO, "continuous", {"net_arch": [16]}),
    "recurrentppo-discrete3": (RecurrentPPO, "discrete3", {"net_arch": [8], "lstm_hidden_size": 8}),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Lazily train a tiny agent per case (VecNormalize on) and export it, once per worker."""
    cache = {}
    out = tmp_path_factory.mktemp("learned")

    def get(name):
        if name not in cache:
            cls, action, policy_kwargs = CASES[name]
            kw = {**TRAIN_ENV, "action": action}
            venv = VecNormalize(DummyVecEnv([lambda: gym.make(ENV_ID, **kw)] * 2))
            policy = "MlpLstmPolicy" if cls is RecurrentPPO else "MlpPolicy"
            model = cls(policy, venv, policy_kwargs=policy_kwargs, **ON)
            model.learn(192)
            path = export_model(
                model,
                out / f"{name}.msched",
                env_id=ENV_ID,
                env_kwargs=kw,
                obs_norm=obs_norm_from_vecnormalize(venv),
            )
            cache[name] = (model, venv, path)
        return cache[name]

    return get


# -- the env, replayed exactly ---------------------------------------------------------------
def _env_episode(model, venv, env, seed):
    obs, _ = env.reset(seed=seed, options={"instance": 0})
    lrs, applied, losses, done, state, start = [], [], [], False, None, np.ones(1, dtype=bool)
    while not done:
        action, state = model.predict(
            venv.normalize_obs(obs[None]), state=state, episode_start=start, deterministic=True
        )
        start = np.zeros(1, dtype=bool)
        obs, _, terminated, truncated, info = env.step(action[0])
        lrs.append(info["lr"])
        applied.append(info["applied_lr"])
        losses.append(info["train_loss"])
        done = terminated or truncated
    return lrs, applied, losses, info["final_loss"]


@pytest.mark.parametrize("seed", [0, 17])
@pytest.mark.parametrize("budget", [None, 500])
@pytest.mark.parametrize("name", sorted(CASES))
def test_runner_reproduces_the_env_exactly(trained, name, budget, seed):
    model, venv, path = trained(name)
    kwargs = dict(TRAIN_ENV, action=CASES[name][1])
    if budget is not None:  # a longer run than in training: more decisions to agree on
        kwargs.update(budget=budget, steps_per_action=25)
    env = gym.make(ENV_ID, split="test", **kwargs)
    lrs, applied, losses, final = _env_episode(model, venv, env, seed)
    u = env.unwrapped
    # the env draws its task generator from its seeded RNG right after reset(seed=seed)
    np_random, _ = seeding.np_random(seed)
    task_gen = np.random.default_rng(np_random.integers(2**63))
    task = u.family.make_task(
        u.family.instance_config("test", 0), divergence_factor=u.divergence_factor
    )
    trace = run_schedule(
        task,
        LearnedScheduler.load(path),
        budget=u.budget,
        interval=u.steps_per_action,
        seed=task_gen,
        clip=u.clip,
        kappa=u.kappa,
    )
    assert len(lrs) == u.budget // u.steps_per_action
    assert trace["lr"][1:].tolist() == lrs  # exactly, not approximately
    assert trace["applied_lr"][1:].tolist() == applied
    assert trace["train_loss"][1:].tolist() == losses
    assert trace.final_loss == final


# -- the scheduler contract (cf. test_contract.py, which cannot build "learned" by name) ------
losses = st.one_of(st.floats(1e-6, 1e3), st.sampled_from([math.inf, math.nan, 0.0]))
sequences = st.lists(
    st.tuples(st.integers(1, 120), losses, st.one_of(st.none(), st.floats(1e-6, 1e3))),
    min_size=1,
    max_size=30,
)


def _signals(seq, budget, lr=0.1):
    t = 0
    for n, loss, val in seq:
        t += n
        yield TrainingSignal(
            step=t,
            budget=budget,
            lr=lr,
            train_loss=loss,
            val_loss=val,
            interval_steps=n,
            grad_norm=1.0,
            frac_increasing=0.5,
            losses=(loss,) * min(n, 3),
        )


def _check(s, base):
    lo, hi = s.bounds(base)
    assert math.isfinite(s.lr) and s.lr > 0, s
    assert lo * (1 - 1e-12) <= s.lr <= hi * (1 + 1e-12), (s.lr, lo, hi)
    assert all(math.isfinite(x) and x > 0 for x in s.lrs)


def _sig0(loss=2.0, bound=0.5):
    return TrainingSignal(step=0, budget=400, lr=0.1, train_loss=loss, lr_bound=bound)


@pytest.mark.parametrize("with_sig0", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=15)
@given(seq=sequences, base=st.floats(1e-4, 10.0), cut=st.integers(0, 30))
def test_contract_bounds_and_json_resume(trained, name, with_sig0, seq, base, cut):
    path = trained(name)[2]
    budget = max(sum(n for n, _, _ in seq) + 1, 200)
    sigs = list(_signals(seq, budget))
    cut = min(cut, len(sigs))
    a = make_scheduler("learned", path=str(path))
    a.reset(base, _sig0() if with_sig0 else None)
    _check(a, base)
    for sig in sigs[:cut]:
        a.step(sig)
        _check(a, base)
    blob = json.dumps(a.state_dict(), allow_nan=False)
    b = make_scheduler("learned", path=str(path))
    b.load_state_dict(json.loads(blob))
    c = scheduler_from_state(json.loads(blob))
    assert repr(a) == repr(b) == repr(c)
    for sig in sigs[cut:]:
        la, lb, lc = a.step(sig), b.step(sig), c.step(sig)
        assert la == lb == lc
        _check(a, base)


@pytest.mark.parametrize("name", sorted(CASES))
def test_runner_resume_mid_run_from_json_state(trained, name):
    path = trained(name)[2]
    family = NMFFamily(seed=3)
    budget, interval = 400, 25
    whole = Run(
        family.make("test", 0), LearnedScheduler.load(path), budget=budget, interval=interval
    )
    whole.start(7)
    ref = whole.run()
    assert len(ref) == budget // interval + 1 and np.all(ref["lr"][1:] > 0)
    part = Run(
        family.make("test", 0), LearnedScheduler.load(path), budget=budget, interval=interval
    )
    part.start(7)
    for _ in range(7):
        part.step()
    blob = json.dumps(part.scheduler.state_dict(), allow_nan=False)
    part.scheduler = scheduler_from_state(json.loads(blob))
    got = part.run()
    for col in ("step", "lr", "applied_lr", "train_loss", "inner_steps"):
        np.testing.assert_array_equal(got[col], ref[col], err_msg=col)
    assert got.final_loss == ref.final_loss


# -- a plain torch loop ----------------------------------------------------------------------
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
        lrs.append(opt.param_groups[0]["lr"])  # the LR this step trains at
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step(loss)
    return lrs


@pytest.mark.parametrize("name", sorted(CASES))
def test_plain_torch_loop_and_mid_run_resume(trained, name):
    path = trained(name)[2]
    total, cut = 500, 130  # the cut falls inside a decision interval
    X, y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = LearnedScheduler.load(path)
    with pytest.warns(UserWarning, match="clip='auto'"):  # trained with the clip, run without
        default = TorchLRScheduler(opt, policy, total_steps=total)
    # by default as many decisions per run as in its env; here the env's own interval
    assert default.interval == round(total / policy.decisions_per_run) != 50
    with pytest.warns(UserWarning):
        sched = TorchLRScheduler(opt, LearnedScheduler.load(path), total_steps=total, interval=50)
    lrs = _train(model, opt, sched, X, y, cut)
    snap_model, snap_opt = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    blob = json.dumps(sched.state_dict(), allow_nan=False)
    lrs += _train(model, opt, sched, X, y, total - cut, start=cut)
    assert all(math.isfinite(x) and x > 0 for x in lrs)
    assert lrs[:50] == [0.05] * 50  # no step-0 signal in a plain loop: first interval at base
    changes = [i for i in range(1, total) if lrs[i] != lrs[i - 1]]
    assert changes and all(i % 50 == 0 for i in changes)  # the policy acts, once per interval
    lo, hi = sched.scheduler.bounds(0.05)
    assert all(lo <= x <= hi for x in lrs)

    opt2 = torch.optim.SGD(snap_model.parameters(), lr=0.05)
    opt2.load_state_dict(snap_opt)
    with pytest.warns(UserWarning):
        fresh = TorchLRScheduler(opt2, "learned", path=str(path), total_steps=total, interval=50)
    fresh.load_state_dict(json.loads(blob))
    assert _train(snap_model, opt2, fresh, X, y, total - cut, start=cut) == lrs[cut:]


def test_plain_loop_starts_the_tracker_from_the_first_loss(trained, monkeypatch):
    path = trained("ppo-discrete3")[2]
    s = LearnedScheduler.load(path)
    seen = []
    predict = s.policy.predict
    monkeypatch.setattr(
        s.policy, "predict", lambda obs, state=None: seen.append(obs) or predict(obs, state)
    )
    assert s.reset(0.2) == 0.2 and not seen  # no decision before any signal
    sig = TrainingSignal(
        step=50,
        budget=400,
        lr=0.2,
        train_loss=1.5,
        grad_norm=3.0,
        frac_increasing=0.25,
        interval_steps=50,
        losses=(4.0, 1.0, 0.5),
    )
    s.step(sig)
    ft = FeatureTracker(1)
    ft.start(lr=0.2, loss=4.0)
    np.testing.assert_array_equal(seen[0], ft.update_from_signal(sig, lr=0.2))


def test_registry_flags_and_errors(trained, tmp_path):
    path = trained("ppo-discrete3")[2]
    assert SCHEDULERS["learned"] is LearnedScheduler is metasched.LearnedScheduler
    s = make_scheduler("learned", path=str(path))
    assert s.needs_loss and s.needs_budget and s.needs_grad_norm
    assert not s.drives_training and not s.open_loop
    assert s.decision_interval == 50 and s.config == {"path": str(path)}
    assert repr(s) == f"LearnedScheduler(path={str(path)!r})"
    assert s.bounds(0.1) == pytest.approx((0.1 * 1e-3, 0.1 * 64.0))
    missing = tmp_path / "missing.msched"
    with pytest.raises(ExportError, match=f"{missing}.*no such file"):
        make_scheduler("learned", path=str(missing))
    assert make_scheduler("learned").config == {"pretrained": "universal"}  # the shipped one
    with pytest.raises(ConfigError, match="total_steps"):
        TorchLRScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), s)
    # a state saved with another policy is refused
    other = make_scheduler("learned", path=str(trained("ppo-continuous")[2]))
    other.reset(0.1)
    state = other.state_dict()
    state["config"] = {"path": str(path)}
    with pytest.raises(ValueError, match="different policy"):
        make_scheduler("learned", path=str(path)).load_state_dict(state)


def test_policy_over_other_observations_is_refused(tmp_path):
    h = minimal_header(input_dim=12, action_mode="discrete3")
    h["network"]["layers"] = [{"type": "linear", "weight": "w", "bias": None}]
    path = write_policy(tmp_path / "odd.msched", {"w": torch.zeros(3, 12)}, h)
    with pytest.raises(ExportError, match="not trained on metasched's LR-control observations"):
        LearnedScheduler.load(path)


# -- anneal: the policy sets the level, the env's fixed shape anneals it ----------------------
@pytest.mark.parametrize("anneal", ["wsd", "cosine"])
def test_a_policy_that_keeps_its_level_replays_the_schedule_of_its_anneal(
    fixed_action_policy, anneal
):
    keep = LearnedScheduler.load(fixed_action_policy(1, anneal=anneal))
    assert keep.anneal == anneal
    family = NMFFamily(0)
    runs = {}
    for label, sched in (("keep", keep), (anneal, make_scheduler(anneal))):
        task = family.make_task(family.instance_config("test", 0))
        runs[label] = run_schedule(task, sched, budget=400, interval=50, seed=3)
    assert runs["keep"]["lr"][1:].tolist() == runs[anneal]["lr"][1:].tolist()  # exactly
    assert runs["keep"].final_loss == runs[anneal].final_loss


def test_wsd_anneal_applies_to_a_changing_level_and_old_files_replay(fixed_action_policy):
    from metasched.schedulers.classic import WSDSchedule

    family = NMFFamily(0)
    # a policy that doubles: its level doubles up to the top of its LR range (2 x the start
    # LR here), and the cooldown still applies to it
    path = fixed_action_policy(2, anneal="wsd", lr_range=(1e-3, 2.0), name="double.msched")
    task = family.make_task(family.instance_config("test", 0))
    trace = run_schedule(task, LearnedScheduler.load(path), budget=400, interval=50, seed=3)
    top = trace["lr"][1]  # the step-0 decision already doubled the start LR
    wsd = WSDSchedule()
    expect = [top * wsd.lr_at(50 * i, 400, base_lr=1.0) for i in range(8)]
    assert trace["lr"][1:].tolist() == pytest.approx(expect, rel=1e-12)
    # files from before anneal existed replay as they did; an unknown anneal is refused
    assert LearnedScheduler.load(fixed_action_policy(1, name="old.msched")).anneal == "none"
    with pytest.raises(ExportError, match=r"unknown env_kwargs\.anneal 'cos'"):
        LearnedScheduler.load(fixed_action_policy(1, anneal="cos", name="bad.msched"))


def test_wsd_anneal_policy_in_a_plain_torch_loop(fixed_action_policy):
    from metasched.schedulers.classic import WSDSchedule

    total = 200
    X, y, model = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = LearnedScheduler.load(fixed_action_policy(1, anneal="wsd", interval=10))
    sched = TorchLRScheduler(opt, policy, total_steps=total, interval=10)
    lrs = _train(model, opt, sched, X, y, total)
    wsd = WSDSchedule()
    assert lrs == pytest.approx(
        [wsd.lr_at(10 * (t // 10), total, base_lr=0.05) for t in range(total)], rel=1e-12
    )
    assert lrs[159] == 0.05 and lrs[-1] < 0.01  # stable for 80 %, then annealed
