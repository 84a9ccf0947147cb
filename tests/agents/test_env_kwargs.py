"""Issue 12, item 3: one resolver of env kwargs; the LR range of a family lives in one place."""

import json

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import metasched  # noqa: F401 - registers the envs
from metasched.agents.config import load_config
from metasched.agents.export import export_model
from metasched.agents.train import resolved_env_kwargs
from metasched.distill import rules
from metasched.distill.compare import CompareSpec
from metasched.envs.lr_control import LRControlEnv
from metasched.envs.registration import ENV_IDS, env_defaults, resolve_env_kwargs
from metasched.errors import UnknownNameError
from metasched.inner_tasks import MLPFamily, family_lr_range
from metasched.policyfile import load_policy


@pytest.fixture(scope="module")
def model():
    venv = DummyVecEnv([lambda: gym.make("metasched/NMF-v1", budget=40, steps_per_action=10)])
    return PPO("MlpPolicy", venv, n_steps=16, batch_size=16, seed=0, device="cpu",
               policy_kwargs={"net_arch": [8]})  # fmt: skip


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_exported_header_carries_the_registered_env_settings(env_id, model, tmp_path):
    """A policy trained on any env is exported with that env's settings, not NMF's."""
    cfg = load_config("ppo", env_id, overrides={"vec_env": "dummy"})
    path = export_model(model, tmp_path / "p.msched", env_id=env_id,
                        env_kwargs=resolved_env_kwargs(cfg), obs_norm=None)  # fmt: skip
    header = load_policy(path).header
    spec = json.loads(json.dumps(gym.spec(env_id).kwargs))
    for key, value in spec.items():
        if key not in cfg.env_kwargs:
            assert header["env_kwargs"][key] == value, key
    assert header["env_kwargs"]["lr_range"] == list(family_lr_range(spec["family"]))
    assert header["decision_interval"] == header["env_kwargs"]["steps_per_action"]
    made = gym.make(env_id).unwrapped  # the env itself runs with the same settings
    assert list(made.lr_range) == header["env_kwargs"]["lr_range"]
    assert made.budget == header["env_kwargs"]["budget"]


def test_resolver_precedence_and_errors():
    kw = resolve_env_kwargs("metasched/MNIST1D-v1", {"budget": 300, "lr_range": (0.1, 2)})
    assert kw["family"] == "mnist1d" and kw["steps_per_action"] == 50  # from the spec
    assert kw["budget"] == 300 and kw["lr_range"] == [0.1, 2]  # overrides win
    assert kw["init_lr"] == 1.0 and "split" not in kw  # signature defaults fill the rest
    with pytest.raises(UnknownNameError, match="did you mean 'metasched/MLP-v1'"):
        resolve_env_kwargs("metasched/MLPP-v1")


def test_every_consumer_reads_the_family_lr_range(monkeypatch):
    """Env default, compare's GreedyLR bounds and distillation all follow TaskFamily.lr_range."""
    monkeypatch.setattr(MLPFamily, "lr_range", (0.05, 5.0))
    assert LRControlEnv(family="mlp").lr_range == (0.05, 5.0)
    assert resolve_env_kwargs("metasched/MLP-v1")["lr_range"] == [0.05, 5.0]
    assert env_defaults("mlp") == (800, 40, (0.05, 5.0))
    spec = CompareSpec(families=("mlp",), n_instances=1, tune_instances=1)
    assert spec.scale("mlp")[2] == (0.05, 5.0)

    seen = []

    class Recording(rules.GreedyLR):
        def __init__(self, **kw):
            seen.append((kw["min_lr"], kw["max_lr"]))
            super().__init__(**kw)

    monkeypatch.setattr(rules, "GreedyLR", Recording)
    rules.fit_greedy([], None, family="mlp", indices=[0], budget=20, interval=10, top_k=1)
    lo, hi = seen[0]
    assert np.isclose(hi / lo, 5.0 / 0.05)


def test_nmf_keeps_its_range():
    assert family_lr_range("nmf") == (1e-3, 64.0)
    assert env_defaults("nmf") == (2000, 50, (1e-3, 64.0))
    assert LRControlEnv().lr_range == (1e-3, 64.0)
