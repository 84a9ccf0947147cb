import numpy as np
import pytest
import torch
from gymnasium.utils import seeding
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from metasched.envs.batched_torch import BatchedTorchVecEnv
from metasched.envs.lr_control import LRControlEnv
from metasched.errors import ConfigError
from metasched.features import N_FEATURES
from metasched.inner_tasks import make_family
from metasched.inner_tasks.base import TaskFamily
from metasched.inner_tasks.mixed import MixedConfig
from metasched.inner_tasks.torch_task import ArrayClassificationTask

SMALL = {"budget": 120, "steps_per_action": 20}
MNIST1D_SMALL = {"family_kwargs": {"train_sizes": [2000]}}


class Float64Family(TaskFamily):
    """A registered family whose network instances train in float64 (the reference)."""

    def __init__(self, name, **kwargs):
        self.inner = make_family(name, **kwargs)
        self.name = self.inner.name
        self.lr_range = self.inner.lr_range
        self.pool_sizes = self.inner.pool_sizes
        super().__init__(0)

    def instance_config(self, split, index):
        return self.inner.instance_config(split, index)

    def make_task(self, config, **kwargs):
        task = self.inner.make_task(config, **kwargs)
        return task.to_float64() if isinstance(task, ArrayClassificationTask) else task


def slot_vs_single(
    family,
    index,
    action,
    family_kwargs=None,
    clip="deterministic",
    rel=1e-9,
    lr_rel=1e-12,
    anneal="none",
    **extra,
):
    """Step a float64 slot and the float64 single env side by side; compare everything.

    ``rel`` and ``lr_rel`` are the relative tolerances of the losses and of the applied LR.
    """
    seed = 7
    single = LRControlEnv(
        family=Float64Family(family, **(family_kwargs or {})),
        split="test",
        action=action,
        clip=clip,
        anneal=anneal,
        **SMALL,
    )
    obs_s, _ = single.reset(seed=seed, options={"instance": index})
    venv = BatchedTorchVecEnv(
        2,
        family=family,
        split="test",
        action=action,
        dtype=torch.float64,
        family_kwargs=family_kwargs,
        clip=clip,
        anneal=anneal,
        **SMALL,
        **extra,
    )
    venv.reset()
    np_random, _ = seeding.np_random(seed)
    venv.reset_slot(1, index, np.random.default_rng(np_random.integers(2**63)))
    np.testing.assert_allclose(venv.observation[1], obs_s, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(SMALL["budget"] // SMALL["steps_per_action"]):
        if action == "discrete3":
            a = int(rng.integers(0, 3))
            acts = np.array([1, a])
        else:
            a = rng.uniform(-1, 1, size=1).astype(np.float32)
            acts = np.array([[0.0], a])
        obs_s, r_s, term, _, info_s = single.step(a)
        obs_b, r_b, dones, infos = venv.step(acts)
        o = infos[1]["terminal_observation"] if dones[1] else obs_b[1]
        np.testing.assert_allclose(o, obs_s, rtol=1e-6, atol=1e-6)
        assert r_b[1] == pytest.approx(r_s, rel=1e-6, abs=1e-6)
        assert infos[1]["applied_lr"] == pytest.approx(info_s["applied_lr"], rel=lr_rel)
        assert infos[1]["lr"] == pytest.approx(info_s["lr"], rel=1e-12)
        assert infos[1]["train_loss"] == pytest.approx(info_s["train_loss"], rel=rel)
        if info_s["val_loss"] is None:
            assert infos[1]["val_loss"] is None
        else:
            assert infos[1]["val_loss"] == pytest.approx(info_s["val_loss"], rel=rel)
        assert dones[1] == term
        if term:
            assert infos[1]["final_loss"] == pytest.approx(info_s["final_loss"], rel=rel)
            assert infos[1]["diverged"] == info_s["diverged"]
            break
    venv.close()
    return single


@pytest.mark.parametrize("index", [0, 1, 2, 3])
@pytest.mark.parametrize("action", ["discrete3", "absolute"])
def test_mlp_slot_matches_single_env(index, action):
    """A float64 slot follows the single env's MDP: observations, rewards, losses."""
    slot_vs_single("mlp", index, action)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_mnist1d_slot_matches_single_env(index):
    slot_vs_single("mnist1d", index, "absolute", MNIST1D_SMALL["family_kwargs"])


def test_mixed_slots_match_single_env_for_every_member():
    family = make_family("mixed", 0)
    seen = {}
    for index in range(40):
        member = family.instance_config("test", index).family
        seen.setdefault(member, index)
    assert set(seen) == {"nmf", "mlp", "mnist1d"}
    for member, index in seen.items():
        # the batched NMF kernel agrees with the single NMF task to ~1e-7 relative
        tol = {"rel": 1e-6, "lr_rel": 1e-6} if member == "nmf" else {}
        slot_vs_single("mixed", index, "absolute", **tol)
    assert isinstance(family.instance_config("test", seen["nmf"]), MixedConfig)


@pytest.mark.parametrize("anneal", ["wsd", "cosine"])
def test_anneal_slots_match_single_env(anneal):
    """With ``anneal`` set a slot still follows the single env, for every mixed member."""
    family = make_family("mixed", 0)
    seen = {}
    for index in range(40):
        seen.setdefault(family.instance_config("test", index).family, index)
    for member, index in seen.items():
        tol = {"rel": 1e-6, "lr_rel": 1e-6} if member == "nmf" else {}
        slot_vs_single("mixed", index, "discrete3", anneal=anneal, **tol)


def test_divergence_matches_single_env():
    """Large absolute LRs without clipping diverge at the same step with the same penalty."""
    family = make_family("mlp", 0)
    kw = {"action": "absolute", "clip": "none", **SMALL}
    single = LRControlEnv(family=Float64Family("mlp"), split="test", **kw)
    venv = BatchedTorchVecEnv(2, split="test", dtype=torch.float64, **kw)
    venv.reset()
    hit = False
    for index in range(6):
        _, _ = single.reset(seed=index, options={"instance": index})
        np_random, _ = seeding.np_random(index)
        venv.reset_slot(0, index, np.random.default_rng(np_random.integers(2**63)))
        while True:
            _, r_s, term, _, info_s = single.step(np.array([1.0], dtype=np.float32))
            _, r_b, dones, infos = venv.step(np.array([[1.0], [0.0]]))
            assert r_b[0] == pytest.approx(r_s, rel=1e-6, abs=1e-6)
            assert infos[0]["diverged"] == info_s["diverged"] and dones[0] == term
            if term:
                hit |= info_s["diverged"]
                break
    assert family.name == "mlp" and hit  # some instance diverged at the largest LR


def test_is_an_sb3_vecenv_with_autoreset():
    venv = BatchedTorchVecEnv(3, seed=0, **SMALL)
    assert isinstance(venv, VecEnv)
    obs = venv.reset()
    assert obs.shape == (3, N_FEATURES)
    for _ in range(6):
        obs, rewards, dones, infos = venv.step(np.full(3, 1))
        assert all(venv.observation_space.contains(o) for o in obs)
        assert rewards.shape == (3,) and np.all(np.isfinite(rewards))
    assert dones.all()
    for info in infos:
        assert "terminal_observation" in info and info["inner_steps"] == 120
        assert info["TimeLimit.truncated"] is False and info["val_loss"] > 0
    obs, _, dones, infos = venv.step(np.full(3, 1))
    assert not dones.any() and all(i["inner_steps"] == 20 for i in infos)


def rollout(n_processes, family="mlp", steps=8, num_envs=5, **kwargs):
    venv = BatchedTorchVecEnv(
        num_envs,
        family=family,
        seed=3,
        n_processes=n_processes,
        action="absolute",
        **SMALL,
        **kwargs,
    )
    venv.action_space.seed(0)
    try:
        out = [venv.reset()]
        for _ in range(steps):
            actions = np.array([venv.action_space.sample() for _ in range(num_envs)])
            obs, r, d, _ = venv.step(actions)
            out += [obs, r[:, None], d[:, None]]
    finally:
        venv.close()
    return np.concatenate([o.reshape(-1).astype(np.float64) for o in out])


def test_same_seed_same_rollout():
    np.testing.assert_array_equal(rollout(1), rollout(1))


def test_worker_processes_give_identical_rollouts():
    np.testing.assert_array_equal(rollout(2, clip="none"), rollout(1, clip="none"))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="multiple"):
        BatchedTorchVecEnv(2, budget=130, steps_per_action=20)
    with pytest.raises(ConfigError, match="family"):
        BatchedTorchVecEnv(2, family="charlm")
    with pytest.raises(ConfigError, match="clip"):
        BatchedTorchVecEnv(2, clip="noise_aware")
    with pytest.raises(ConfigError, match="n_processes"):
        BatchedTorchVecEnv(2, n_processes=3)
    with pytest.raises(ConfigError, match="dtype"):
        BatchedTorchVecEnv(2, dtype=torch.float16)
    with pytest.raises(ConfigError, match="member"):
        BatchedTorchVecEnv(2, family="mixed", family_kwargs={"families": ["mlp", "fashion"]})
    with pytest.raises(ConfigError, match="anneal must be one of none, wsd, cosine, got 'cos'"):
        BatchedTorchVecEnv(2, anneal="cos")
    venv = BatchedTorchVecEnv(2, **SMALL)
    with pytest.raises(ConfigError, match="anneal"):
        venv.set_attr("anneal", "wsd")


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [("mlp", {}), ("mnist1d", MNIST1D_SMALL), ("mixed", {})],
)
def test_ppo_trains_on_the_batched_env(family, kwargs):
    venv = VecMonitor(BatchedTorchVecEnv(4, family=family, seed=0, **SMALL, **kwargs))
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    venv.close()
