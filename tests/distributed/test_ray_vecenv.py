"""Env workers as Ray actors: the same rollouts as SubprocVecEnv; training resumes."""

from functools import partial

import numpy as np
import pytest

from metasched.agents.config import load_config
from metasched.agents.train import _make_env, train

TINY_ENV = {"budget": 150, "steps_per_action": 50}  # 3 decisions: episodes end often


def _rollout(venv, seed, n_steps=8):
    """Seed, reset and step with a fixed action sequence; return everything observed."""
    venv.seed(seed)
    obs = [venv.reset()]
    rews, dones, terms = [], [], []
    rng = np.random.default_rng(0)
    for _ in range(n_steps):
        actions = rng.integers(0, 3, size=venv.num_envs)
        o, r, d, infos = venv.step(actions)
        obs.append(o)
        rews.append(r)
        dones.append(d)
        terms.extend(
            (k, info["terminal_observation"], info["TimeLimit.truncated"])
            for k, info in enumerate(infos)
            if "terminal_observation" in info
        )
    attrs = venv.get_attr("budget", [3, 0])
    return np.array(obs), np.array(rews), np.array(dones), terms, attrs


def test_ray_actor_vec_env_equals_subproc_vec_env(ray_local):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from metasched.distributed.vecenv import RayVecEnv

    fns = [partial(_make_env, "metasched/NMF-v1", TINY_ENV) for _ in range(4)]
    venv = RayVecEnv(fns, num_workers=2)  # sub-envs 0-1 in one actor, 2-3 in the other
    try:
        ray_out = _rollout(venv, seed=7)
        other = _rollout(venv, seed=8)  # reseeding mid-stream restarts every episode
    finally:
        venv.close()
    sub = SubprocVecEnv(fns, start_method="forkserver")
    try:
        sub_out = _rollout(sub, seed=7)
    finally:
        sub.close()
    for a, b in zip(ray_out[:3], sub_out[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert ray_out[2].sum() == 8  # every sub-env finished two episodes
    assert len(ray_out[3]) == len(sub_out[3]) == 8
    for (k1, t1, tr1), (k2, t2, tr2) in zip(ray_out[3], sub_out[3], strict=True):
        assert k1 == k2 and tr1 == tr2
        np.testing.assert_array_equal(t1, t2)
    assert ray_out[4] == sub_out[4] == [150, 150]
    assert not np.array_equal(other[0], ray_out[0])  # the seed matters


@pytest.mark.slow
def test_ray_batched_actors_step_and_reset(ray_local):
    from metasched.distributed.vecenv import RayVecEnv

    venv = RayVecEnv.batched(4, 2, split="train", budget=150, steps_per_action=50)
    try:
        a, b = _rollout(venv, seed=3), _rollout(venv, seed=3)
    finally:
        venv.close()
    assert a[0].shape == (9, 4, 12)
    np.testing.assert_array_equal(a[0], b[0])  # deterministic for a seed
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].sum() == 8


def _cfg(vec_env):
    return load_config(
        "ppo",
        "metasched/NMF-v1",
        overrides={
            "n_timesteps": 64, "n_envs": 4, "vec_env": vec_env, "num_workers": 2,
            "eval_freq": 0, "checkpoint_freq": 32, "n_eval_episodes": 1,
            "policy_kwargs": {"net_arch": [8]}, "env_kwargs": TINY_ENV,
            "n_steps": 8, "batch_size": 32, "n_epochs": 1,
        },
    )  # fmt: skip


@pytest.mark.slow
def test_training_on_ray_actors_resumes_like_local_envs(tmp_path, ray_local):
    """Ray-actor envs train and resume to the same model as in-process envs.

    Equal up to float rounding: the inner NMF runs with one torch thread in the actors and
    with the test process's threads in ``dummy`` (last-bit differences, ~1e-9).
    """
    import torch

    from metasched.agents.config import algo_class

    finals = {}
    for kind in ("ray", "dummy"):
        run = tmp_path / kind
        first = train(_cfg(kind), run, progress=False, log=lambda s: None)
        assert first.timesteps == 64
        again = train(None, run, resume=True, total_timesteps=128, progress=False,
                      log=lambda s: None)  # fmt: skip
        assert again.resumed_from == 64 and again.timesteps == 128
        finals[kind] = algo_class("ppo").load(run / "final" / "model.zip", device="cpu")
    for p, q in zip(finals["ray"].policy.parameters(), finals["dummy"].policy.parameters(),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_num_workers_is_validated():
    from metasched.errors import ConfigError

    with pytest.raises(ConfigError, match="num_workers"):
        load_config("ppo", "metasched/NMF-v1", overrides={"num_workers": 0})
