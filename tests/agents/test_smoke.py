"""Smoke test: every registered env x every compatible algorithm trains, exports and loads.

Tiny env budgets (env kwargs) keep each case to seconds; the cases that are not needed to
catch a regression quickly are marked slow (``make test-slow``).
"""

import json
import math

import gymnasium as gym
import numpy as np
import pytest

from metasched.agents.config import load_config
from metasched.agents.rundir import read_json
from metasched.agents.train import export_run, train
from metasched.envs.registration import ENV_IDS
from metasched.inner_tasks import make_family
from metasched.policyfile import load_policy
from metasched.schedulers import LearnedScheduler, run_schedule

#: Action mode each algorithm is smoke-tested in.
ALGO_MODES = {
    "ppo": "discrete3",
    "a2c": "discrete5",
    "dqn": "discrete3",
    "sac": "continuous",
    "td3": "absolute",
    "recurrentppo": "discrete3",
}
TINY = {
    "ppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "a2c": {"n_steps": 8},
    "recurrentppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "dqn": {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32},
    "sac": {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32},
    "td3": {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32},
}
#: Fast cases kept in the default suite.
FAST = {("metasched/NMF-v1", "ppo"), ("metasched/MLP-v1", "ppo"), ("metasched/MLP-v1", "sac")}
BUDGET, INTERVAL = 40, 10
#: The evaluation envs run tens to hundreds of inner steps/s: shorter intervals there.
TINY_SCALE = {"metasched/CNN-v1": (8, 2), "metasched/CharLM-v1": (8, 2)}


def _json(x):
    return json.loads(json.dumps(x))


def _cases():
    for env_id in ENV_IDS:
        for algo in ALGO_MODES:
            marks = () if (env_id, algo) in FAST else (pytest.mark.slow,)
            yield pytest.param(env_id, algo, marks=marks, id=f"{env_id.split('/')[1]}-{algo}")


@pytest.mark.parametrize(("env_id", "algo"), list(_cases()))
def test_every_env_and_algorithm_trains_exports_and_loads(env_id, algo, tmp_path):
    budget, interval = TINY_SCALE.get(env_id, (BUDGET, INTERVAL))
    env_kwargs = {"budget": budget, "steps_per_action": interval, "action": ALGO_MODES[algo]}
    cfg = load_config(
        algo,
        env_id,
        overrides={
            "n_timesteps": 256,
            "n_envs": 2,
            "vec_env": "dummy",
            "eval_freq": 128,
            "checkpoint_freq": 128,
            "n_eval_episodes": 2,
            "policy_kwargs": {"net_arch": [8]},
            "env_kwargs": env_kwargs,
            **TINY[algo],
        },
    )
    run = tmp_path / "run"
    res = train(cfg, run, progress=False, log=lambda s: None)
    assert res.timesteps >= 256
    path = export_run(run, tmp_path / "policy.msched")
    header = load_policy(path).header
    # the exported settings are the registered env's, with this run's overrides on top
    expected = {**_json(gym.spec(env_id).kwargs), **env_kwargs}
    for key, value in expected.items():
        assert header["env_kwargs"][key] == value, key
    assert header["decision_interval"] == interval

    sched = LearnedScheduler(path=path)  # loads without SB3 and drives a task
    family = make_family(gym.spec(env_id).kwargs["family"])
    task = family.make("test", 0)
    trace = run_schedule(task, sched, budget=budget, interval=interval,
                         seed=np.random.default_rng(0))  # fmt: skip
    lrs = list(trace.columns["lr"][1:])  # row 0 is the state before training
    assert lrs and all(math.isfinite(x) and x > 0 for x in lrs)


def test_a_diverged_reference_episode_is_stored_not_fatal(tmp_path):
    """Regression (issue 12, item 15): a diverged reference run wrote ``inf`` into strict JSON.

    On ``metasched/MLP-v1`` without clipping the keep-the-LR policy at 1000x the reference LR
    diverges; the run must go on, and ``baselines.json`` must hold the infinite final losses.
    """
    from metasched.cli import main

    run = tmp_path / "run"
    code = main(["train", "--env", "metasched/MLP-v1", "--algo", "ppo", "--out", str(run),
                 "--timesteps", "64", "--n-envs", "2", "--vec-env", "dummy",
                 "--eval-freq", "0", "--checkpoint-freq", "64", "--eval-episodes", "2",
                 "--env-kwarg", "budget=40", "--env-kwarg", "steps_per_action=10",
                 "--env-kwarg", "lr_range=[0.01, 1000]", "--env-kwarg", "init_lr=1000",
                 "--env-kwarg", "clip=none", "--no-progress",
                 "--hyperparams", str(_hp(tmp_path))])  # fmt: skip
    assert code == 0
    keep = read_json(run / "baselines.json")["keep"]
    assert keep["diverged"] == 2 and keep["final_losses"] == [math.inf, math.inf]
    assert keep["median_final_loss"] == math.inf
    def not_strict(name):
        raise AssertionError(f"{name} in baselines.json is not strict JSON")

    json.loads((run / "baselines.json").read_text(), parse_constant=not_strict)


def _hp(tmp_path):
    f = tmp_path / "hp.yml"
    f.write_text("n_steps: 32\nbatch_size: 32\nn_epochs: 1\npolicy_kwargs: {net_arch: [8]}\n")
    return f
