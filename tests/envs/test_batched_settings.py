"""Run-time settings of the batched vector envs: ``set_attr`` and reseeding."""

import numpy as np
import pytest

from metasched.envs.batched import BatchedNMFVecEnv
from metasched.envs.batched_torch import BatchedTorchVecEnv
from metasched.errors import ConfigError
from metasched.loop import ANALYTIC_SCALE

NMF_SMALL = {"budget": 100, "steps_per_action": 20}
NET_SMALL = {"budget": 120, "steps_per_action": 20}


@pytest.mark.parametrize("n_processes", [1, 2])
def test_torch_env_set_attr_reaches_every_process(n_processes):
    """Budget and clipping changed by ``set_attr`` govern the next steps of every sub-env."""
    venv = BatchedTorchVecEnv(4, clip="none", seed=0, n_processes=n_processes, **NET_SMALL)
    try:
        venv.reset()
        venv.set_attr("budget", 80)
        venv.set_attr("clip", "measured")
        venv.set_attr("kappa_measured", 0.1)
        assert venv.get_attr("budget") == [80] * 4
        clipped, bound = [], None
        for step in range(4):
            _, _, dones, infos = venv.step(np.full(4, 2))  # always double the LR
            for i, info in enumerate(infos):
                assert info["bound_steps"] >= 0 and not info["diverged"]
                clipped.append(info["clipped"])
                if bound is not None:  # the cap of this decision is the last bound
                    assert info["applied_lr"] <= 0.1 * bound[i] * (1 + 1e-12)
            assert step == 0 or not any(i["bound_steps"] for i in infos)  # cached bounds
            bound = [info["lr_bound"] for info in infos]
            assert dones.all() == (step == 3)  # the new budget: 4 decisions of 20 steps
        assert all(i["inner_steps"] == 80 for i in infos)
        assert any(clipped[:4]) and sum(clipped) >= len(clipped) // 2  # from the first decision
    finally:
        venv.close()


def test_torch_env_set_attr_rejects_bad_values():
    venv = BatchedTorchVecEnv(2, **NET_SMALL)
    with pytest.raises(ConfigError, match="kappa"):
        venv.set_attr("kappa", -1.0)
    with pytest.raises(ConfigError, match="kappa_measured"):
        venv.set_attr("kappa_measured", 0.0)
    with pytest.raises(ConfigError, match="multiple"):
        venv.set_attr("budget", 130)
    with pytest.raises(ConfigError, match="clip"):
        venv.set_attr("clip", "noise_aware")
    with pytest.raises(ConfigError, match="split"):
        venv.set_attr("split", "test")
    with pytest.raises(ConfigError, match="indices"):
        venv.set_attr("kappa", 1.0, indices=[0])
    # unchanged by the failed calls
    assert (venv.kappa, venv.kappa_measured, venv.budget) == (2.0, 0.707, 120)
    mixed = BatchedTorchVecEnv(2, family="mixed", **NET_SMALL)
    with pytest.raises(ConfigError, match="auto"):
        mixed.set_attr("clip", "measured")


def test_nmf_env_set_attr_validates_and_reaches_the_step():
    venv = BatchedNMFVecEnv(3, n_processes=1, **NMF_SMALL)
    venv.reset()
    with pytest.raises(ValueError, match="multiple"):
        venv.set_attr("budget", 130)
    with pytest.raises(ValueError, match="kappa"):
        venv.set_attr("kappa", 0.0)
    with pytest.raises(ValueError, match="divergence_factor"):
        venv.set_attr("divergence_factor", 5.0)
    venv.set_attr("kappa", 0.1)
    venv.set_attr("budget", 40)
    _, _, dones, first = venv.step(np.full(3, 2))
    assert not dones.any()
    _, _, dones, infos = venv.step(np.full(3, 2))
    assert dones.all()  # the new budget
    for before, info in zip(first, infos, strict=True):  # capped at 0.1 x the last 1/L
        cap = 0.1 * before["lr_bound"] / ANALYTIC_SCALE  # info holds the common-scale bound
        assert info["applied_lr"] == pytest.approx(min(info["lr"], cap), rel=1e-9)
        assert info["clipped"] == (info["lr"] > cap)


def _rollout(venv, steps=4):
    out = [venv.reset()]
    for _ in range(steps):
        obs, r, _, _ = venv.step(np.array([2, 1, 0, 2]))
        out += [obs, r[:, None]]
    return np.concatenate([o.reshape(-1).astype(np.float64) for o in out])


@pytest.mark.parametrize(("rng", "n_processes"), [("shared", 1), ("shared", 2), ("per_slot", 1)])
def test_nmf_env_reseeds_every_stream_on_seed(rng, n_processes):
    """After ``seed(s)`` the env rolls out as a new env built with seed ``s``."""
    kwargs = {"rng": rng, "n_processes": n_processes, **NMF_SMALL}
    fresh_env = BatchedNMFVecEnv(4, seed=5, **kwargs)
    venv = BatchedNMFVecEnv(4, seed=0, **kwargs)
    try:
        fresh = _rollout(fresh_env)
        _rollout(venv)
        venv.seed(5)
        np.testing.assert_array_equal(_rollout(venv), fresh)
        venv.seed(5)
        np.testing.assert_array_equal(_rollout(venv), fresh)
    finally:
        fresh_env.close()
        venv.close()
