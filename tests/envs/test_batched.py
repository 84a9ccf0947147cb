import numpy as np
import pytest
import torch
from gymnasium.utils import seeding
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from metasched.envs.batched import BatchedNMFVecEnv
from metasched.envs.lr_control import LRControlEnv

SMALL = {"budget": 200, "steps_per_action": 20}


def test_is_an_sb3_vecenv_with_autoreset():
    venv = BatchedNMFVecEnv(4, seed=0, **SMALL)
    assert isinstance(venv, VecEnv)
    obs = venv.reset()
    assert obs.shape == (4, 12) and venv.observation_space.contains(obs[0])
    for _ in range(10):
        obs, rewards, dones, infos = venv.step(np.full(4, 1))
        assert obs.shape == (4, 12) and rewards.shape == (4,) and np.all(np.isfinite(obs))
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


@pytest.mark.parametrize("action", ["discrete3", "absolute"])
def test_slot_matches_single_env(action):
    """A float64 slot follows the single env's MDP: same observations and rewards."""
    seed, index = 7, 3
    single = LRControlEnv(split="test", action=action, **SMALL)
    obs_s, _ = single.reset(seed=seed, options={"instance": index})
    venv = BatchedNMFVecEnv(2, split="test", action=action, dtype=torch.float64, **SMALL)
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


def test_ppo_trains_on_the_batched_env():
    venv = BatchedNMFVecEnv(8, seed=0, **SMALL)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
