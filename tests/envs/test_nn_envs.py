import math

import gymnasium as gym
import numpy as np
import pytest

import metasched  # noqa: F401  (registers the envs)
from metasched.envs import ENV_IDS
from metasched.errors import MissingDataError, UnknownNameError
from metasched.features import FEATURE_NAMES
from metasched.inner_tasks import MixedConfig, MixedFamily, make_family
from metasched.inner_tasks import fashion as fm

NN_IDS = [
    "metasched/MLP-v1",
    "metasched/MNIST1D-v1",
    "metasched/CNN-v1",
    "metasched/CharLM-v1",
    "metasched/Mixed-v1",
]
SHORT = {"budget": 40, "steps_per_action": 10}
TINY = {
    "metasched/CNN-v1": {"family_kwargs": {"channels": [2], "train_sizes": [500], "val_size": 100}},
    "metasched/CharLM-v1": {"family_kwargs": {"contexts": [16], "batch_sizes": [4]}},
}


def make(env_id, **kw):
    return gym.make(env_id, **{**SHORT, **TINY.get(env_id, {}), **kw})


def test_all_registered():
    assert set(NN_IDS) <= set(ENV_IDS)


@pytest.mark.parametrize("env_id", NN_IDS)
def test_episode_reaches_the_budget_with_validation_features(env_id):
    env = make(env_id, split="test")
    obs, info = env.reset(seed=0)
    total, term, trunc, steps = 0.0, False, False, 0
    while not (term or trunc):
        obs, r, term, trunc, info = env.step(1)
        total += r
        steps += 1
    assert steps == 4 and term and not trunc and not info["diverged"]
    assert info["inner_steps"] == 40 and math.isfinite(info["final_loss"])
    assert info["val_loss"] is not None and math.isfinite(info["val_loss"])
    if not info["instance"].startswith("nmf"):  # NMF has no held-out set
        assert obs[FEATURE_NAMES.index("val_known")] == 1.0


@pytest.mark.parametrize("env_id", ["metasched/MLP-v1", "metasched/MNIST1D-v1"])
def test_same_seed_same_rollout(env_id):
    def rollout(seed):
        env = make(env_id)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in (2, 0, 1, 2):
            obs, r, *_ = env.step(a)
            out.append(np.append(obs, r))
        return np.concatenate(out)

    np.testing.assert_array_equal(rollout(5), rollout(5))
    assert not np.array_equal(rollout(5), rollout(6))


def test_divergence_terminates_with_the_penalty():
    env = make(
        "metasched/MLP-v1",
        action="absolute",
        lr_range=(1.0, 5e4),
        divergence_penalty=2.0,
        clip="none",  # the default clip="auto" keeps it from diverging
    )
    env.reset(seed=0)
    total, term, info = 0.0, False, {}
    while not term:
        _, r, term, trunc, info = env.step(np.array([1.0], dtype=np.float32))
        total += r
        assert not trunc
    assert info["diverged"] and math.isinf(info["final_loss"])
    assert total == pytest.approx(-2.0)


def test_mixed_family_draws_from_every_member():
    fam = MixedFamily(seed=0)
    configs = [fam.instance_config("train", i) for i in range(40)]
    assert {c.family for c in configs} == {"nmf", "mlp", "mnist1d"}
    c = configs[0]
    assert isinstance(c, MixedConfig)
    assert c.config == fam.members[c.family].instance_config("train", 0) and c.name
    assert fam.instance_config("test", 7) == MixedFamily(seed=0).instance_config("test", 7)
    only = MixedFamily(families=["mlp", "nmf"], weights=[1.0, 0.0])
    assert {only.instance_config("train", i).family for i in range(10)} == {"mlp"}
    task = only.make("test", 0)
    assert task.name.startswith("mlp-")
    assert isinstance(make_family("mixed"), MixedFamily)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"families": []}, ValueError, "at least one"),
        ({"families": ["mlp", "mlp"]}, ValueError, "repeat"),
        ({"families": ["mlpp"]}, UnknownNameError, "did you mean 'mlp'"),
        ({"families": ["mlp"], "weights": [1.0, 2.0]}, ValueError, "weights"),
        ({"families": ["mlp"], "weights": [0.0]}, ValueError, "weights"),
        ({"families": ["mlp"], "family_kwargs": {"nmf": {}}}, ValueError, "family_kwargs"),
        ({"families": ["mixed"]}, ValueError, "mixed"),
    ],
)
def test_mixed_family_rejects_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        MixedFamily(**kw)


def test_fashion_env_without_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("METASCHED_FASHION_MNIST_DIR", str(tmp_path))
    fm.fashion_data.cache_clear()
    try:
        env = make("metasched/CNN-v1")
        with pytest.raises(MissingDataError, match="dataset-fashion-mnist"):
            env.reset(seed=0)
    finally:
        fm.fashion_data.cache_clear()
