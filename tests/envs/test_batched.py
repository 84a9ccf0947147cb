import os

import numpy as np
import pytest
import torch
from gymnasium.utils import seeding
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from metasched.envs.batched import BatchedNMFVecEnv
from metasched.envs.lr_control import LRControlEnv
from metasched.features import N_FEATURES

SMALL = {"budget": 200, "steps_per_action": 20}


def test_is_an_sb3_vecenv_with_autoreset():
    venv = BatchedNMFVecEnv(4, seed=0, **SMALL)
    assert isinstance(venv, VecEnv)
    obs = venv.reset()
    assert obs.shape == (4, N_FEATURES) and venv.observation_space.contains(obs[0])
    for _ in range(10):
        obs, rewards, dones, infos = venv.step(np.full(4, 1))
        assert obs.shape == (4, N_FEATURES) and rewards.shape == (4,) and np.all(np.isfinite(obs))
        assert all(venv.observation_space.contains(o) for o in obs)
    assert dones.all()  # 10 decisions = the budget
    for info in infos:
        assert "terminal_observation" in info and info["inner_steps"] == 200
        assert info["TimeLimit.truncated"] is False
    obs, _, dones, infos = venv.step(np.full(4, 1))
    assert not dones.any() and all(i["inner_steps"] == 20 for i in infos)


def test_same_seed_same_rollout_and_seed_method():
    def roll(seed):
        venv = BatchedNMFVecEnv(3, **SMALL)
        venv.seed(seed)
        out = [venv.reset()]
        for _ in range(5):
            obs, r, _, _ = venv.step(np.array([0, 1, 2]))
            out += [obs, r[:, None]]
        return np.concatenate([o.reshape(-1) for o in out])

    np.testing.assert_array_equal(roll(5), roll(5))
    assert not np.array_equal(roll(5), roll(6))


@pytest.mark.parametrize(
    ("action", "bucketing", "anneal"),
    [
        ("discrete3", False, "none"),
        ("discrete3", True, "none"),
        ("absolute", True, "none"),
        ("absolute", False, "none"),
        ("discrete3", True, "wsd"),
        ("discrete3", False, "cosine"),
    ],
)
def test_slot_matches_single_env(action, bucketing, anneal):
    """A float64 slot follows the single env's MDP: same observations and rewards."""
    seed, index = 7, 3
    single = LRControlEnv(split="test", action=action, anneal=anneal, **SMALL)
    obs_s, _ = single.reset(seed=seed, options={"instance": index})
    venv = BatchedNMFVecEnv(
        2,
        split="test",
        action=action,
        dtype=torch.float64,
        bucketing=bucketing,
        anneal=anneal,
        **SMALL,
    )
    venv.reset()
    np_random, _ = seeding.np_random(seed)
    venv.reset_slot(1, index, np.random.default_rng(np_random.integers(2**63)))
    obs_b = venv.tracker.observation
    np.testing.assert_allclose(obs_b[1], obs_s, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = (
            rng.integers(0, 3)
            if action == "discrete3"
            else rng.uniform(-1, 1, size=1).astype(np.float32)
        )
        obs_s, r_s, term, _, info_s = single.step(a)
        acts = np.array([1, a]) if action == "discrete3" else np.array([[0.0], a])
        obs_b, r_b, dones, infos = venv.step(acts)
        o = infos[1]["terminal_observation"] if dones[1] else obs_b[1]
        np.testing.assert_allclose(o, obs_s, rtol=1e-5, atol=1e-5)
        assert r_b[1] == pytest.approx(r_s, rel=1e-5, abs=1e-6)
        assert infos[1]["applied_lr"] == pytest.approx(info_s["applied_lr"], rel=1e-9)
        assert infos[1]["lr"] == pytest.approx(info_s["lr"], rel=1e-12)
        if term:
            assert dones[1]
            break


def test_divergence_terminates_one_slot_with_penalty():
    venv = BatchedNMFVecEnv(3, action="absolute", clip="none", divergence_penalty=2.0, **SMALL)
    venv.reset()
    total = np.zeros(3)
    for _ in range(10):
        _, r, dones, infos = venv.step(np.array([[-1.0], [1.0], [-1.0]]))
        total += r
        if dones[1]:
            break
    assert dones[1] and infos[1]["diverged"] and not dones[0]
    assert total[1] == pytest.approx(-2.0, abs=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        BatchedNMFVecEnv(2, budget=210, steps_per_action=20)
    with pytest.raises(ValueError, match="clip"):
        BatchedNMFVecEnv(2, clip="noise_aware")
    with pytest.raises(ValueError, match="action"):
        BatchedNMFVecEnv(2, action="discrete9")
    with pytest.raises(ValueError, match="anneal must be one of none, wsd, cosine, got 'cos'"):
        BatchedNMFVecEnv(2, anneal="cos")
    with pytest.raises(ValueError, match="n_processes"):
        BatchedNMFVecEnv(2, n_processes=3)
    with pytest.raises(ValueError, match="n_processes"):
        BatchedNMFVecEnv(2, n_processes="many")
    with pytest.raises(ValueError, match="dtype"):
        BatchedNMFVecEnv(2, dtype=torch.float16)


def test_ppo_trains_on_the_batched_env():
    venv = BatchedNMFVecEnv(8, seed=0, **SMALL)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256


def rollout(steps=25, num_envs=6, seed=3, **kwargs):
    """Observations, rewards, dones and infos of a random-action rollout."""
    venv = BatchedNMFVecEnv(num_envs, seed=seed, **SMALL, **kwargs)
    venv.action_space.seed(0)
    hosts = set()
    try:
        out = [venv.reset()]
        infos = []
        for _ in range(steps):
            actions = np.array([venv.action_space.sample() for _ in range(num_envs)])
            obs, r, d, info = venv.step(actions)
            hosts |= {tuple(venv._host_of)}
            out += [obs, r[:, None], d[:, None]]
            infos.append(info)
    finally:
        venv.close()
    if venv.n_processes > 1 and venv.bucketing:
        moved = np.array(sorted(hosts))
        assert (moved != moved[:1]).any(axis=0).any()  # some problem changed process
    return np.concatenate([o.reshape(-1).astype(np.float64) for o in out]), infos


@pytest.mark.parametrize("bucketing", [True, False])
def test_worker_processes_give_identical_rollouts(bucketing):
    """Results do not depend on how the problems are spread over processes (bit for bit).

    Random absolute LRs without clipping make episodes diverge at different times, so the
    problems of restarted episodes move between processes.
    """
    kwargs = {"action": "absolute", "clip": "none", "bucketing": bucketing, "steps": 30}
    ref, ref_infos = rollout(n_processes=1, **kwargs)
    got, got_infos = rollout(n_processes=3, **kwargs)
    np.testing.assert_array_equal(got, ref)
    for a, b in zip(ref_infos, got_infos, strict=True):
        assert len(a) == len(b) == 6
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
    assert any("terminal_observation" in i for infos in ref_infos for i in infos)


def test_worker_processes_reset_slot_seed_and_close():
    venv = BatchedNMFVecEnv(4, n_processes=2, seed=0, **SMALL)
    try:
        assert venv.n_processes == 2 and len(venv._remotes) == 1
        proc = venv._remotes[0].proc
        venv.seed(11)
        first = venv.reset()
        venv.seed(11)
        np.testing.assert_array_equal(venv.reset(), first)
        venv.reset_slot(3, 5, np.random.default_rng(0))  # a slot of the worker's block
        _, _, _, infos = venv.step(np.ones(4, dtype=int))
        assert infos[3]["instance"].endswith("train5") and infos[3]["inner_steps"] == 20
        venv.set_attr("kappa", 1.0)
        assert venv.get_attr("kappa") == [1.0] * 4
    finally:
        venv.close()
    assert not proc.is_alive()


def test_auto_processes():
    assert BatchedNMFVecEnv(8, **SMALL).n_processes == 1
    venv = BatchedNMFVecEnv(32, **SMALL)
    try:
        assert venv.n_processes == (2 if (os.cpu_count() or 1) >= 2 else 1)
    finally:
        venv.close()


def test_float32_bucketed_tracks_float64_unbucketed():
    """The default bucketed float32 env follows the float64 arithmetic closely."""
    fast, _ = rollout(steps=10)
    ref, _ = rollout(steps=10, bucketing=False, dtype=torch.float64)
    np.testing.assert_allclose(fast, ref, rtol=1e-3, atol=1e-3)


def test_instances_come_from_the_split_pool():
    venv = BatchedNMFVecEnv(5, split="test", seed=1, **SMALL)
    venv.reset()
    names = set()
    for _ in range(30):
        _, _, _, infos = venv.step(np.ones(5, dtype=int))
        names |= {i["instance"] for i in infos}
    pool = venv.family.pool_sizes["test"]
    indices = {int(name.rsplit("test", 1)[1]) for name in names}
    assert len(indices) > 5 and all(0 <= i < pool for i in indices)
    configs = {venv.family.instance_config("test", i).name for i in indices}
    assert configs == names


def test_monitor_records_episodes():
    venv = VecMonitor(BatchedNMFVecEnv(3, seed=0, **SMALL))
    venv.reset()
    episodes = []
    for _ in range(20):
        _, _, dones, infos = venv.step(np.ones(3, dtype=int))
        episodes += [i["episode"] for i, d in zip(infos, dones, strict=True) if d]
    assert len(episodes) == 6 and all(ep["l"] == 10 for ep in episodes)
    assert all(np.isfinite(ep["r"]) for ep in episodes)
