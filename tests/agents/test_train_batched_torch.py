"""The network envs train on the stacked batched VecEnv by default."""

import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from metasched.agents.config import load_config
from metasched.agents.train import make_train_env, train
from metasched.cli import main
from metasched.envs.batched_torch import BatchedTorchVecEnv
from metasched.errors import ConfigError

NETWORK_IDS = ["metasched/MLP-v1", "metasched/MNIST1D-v1", "metasched/Mixed-v1"]


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3", "recurrentppo"])
@pytest.mark.parametrize("env_id", NETWORK_IDS)
def test_network_envs_default_to_the_batched_env(algo, env_id):
    assert load_config(algo, env_id).vec_env == "batched"


@pytest.mark.parametrize("env_id", NETWORK_IDS)
def test_make_train_env_builds_the_registered_spec(env_id):
    cfg = load_config("ppo", env_id, overrides={"n_envs": 2})
    venv = make_train_env(cfg, seed=0)
    try:
        inner = venv.venv.venv  # VecNormalize(VecMonitor(env))
        assert isinstance(inner, BatchedTorchVecEnv) and inner.num_envs == 2
        family = {"MLP": "mlp", "MNIST1D": "mnist1d", "Mixed": "mixed"}
        assert inner.family_name == family[env_id.split("/")[1].split("-")[0]]
        budgets = {"mlp": (800, 40), "mnist1d": (1000, 50), "mixed": (1000, 50)}
        assert (inner.budget, inner.steps_per_action) == budgets[inner.family_name]
        assert inner.lr_range == (0.01, 20.0)
    finally:
        venv.close()


def test_vec_env_choice_overrides_the_default():
    cfg = load_config("ppo", "metasched/MLP-v1", overrides={"vec_env": "dummy", "n_envs": 2})
    venv = make_train_env(cfg, seed=0)
    try:
        assert isinstance(venv.venv.venv, DummyVecEnv)
    finally:
        venv.close()


def test_batched_refuses_other_network_envs_and_unsupported_kwargs():
    cfg = load_config("ppo", "metasched/CNN-v1", overrides={"vec_env": "batched"})
    with pytest.raises(ConfigError, match="batched"):
        make_train_env(cfg, seed=0)
    cfg = load_config("ppo", "metasched/MLP-v1", overrides={"env_kwargs": {"clip": "noise_aware"}})
    with pytest.raises(ConfigError, match="clip"):
        make_train_env(cfg, seed=0)


def test_train_mlp_on_the_batched_env(tmp_path):
    overrides = {
        "n_timesteps": 128,
        "n_envs": 4,
        "eval_freq": 0,
        "checkpoint_freq": 0,
        "n_eval_episodes": 1,
        "policy_kwargs": {"net_arch": [16]},
        "env_kwargs": {"budget": 80, "steps_per_action": 20},
        "n_steps": 32,
        "batch_size": 64,
        "n_epochs": 1,
    }
    cfg = load_config("ppo", "metasched/MLP-v1", overrides=overrides)
    assert cfg.vec_env == "batched"
    res = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert res.timesteps == 128


def test_cli_vec_env_flag_is_checked(tmp_path, capsys):
    code = main(
        ["train", "--env", "metasched/CNN-v1", "--vec-env", "batched", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    assert "batched" in capsys.readouterr().err
