import itertools
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import metasched  # noqa: F401  (registers the envs)
from metasched.envs import ACTION_MODES, ENV_IDS

SMALL = {"budget": 200, "steps_per_action": 20}
INFO_KEYS = {"lr", "applied_lr", "train_loss", "val_loss", "diverged", "clipped", "inner_steps"}
# the evaluation envs train slow models: the checkers see short episodes of small instances
CHECK_KW = {
    "metasched/CNN-v1": {
        "budget": 20,
        "steps_per_action": 5,
        "family_kwargs": {"channels": [2], "train_sizes": [500], "val_size": 100},
    },
    "metasched/CharLM-v1": {
        "budget": 20,
        "steps_per_action": 5,
        "family_kwargs": {"contexts": [16], "batch_sizes": [4]},
    },
}


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("action", ACTION_MODES)
def test_env_passes_gymnasium_and_sb3_checkers(env_id, action):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning is a failure
        kw = CHECK_KW.get(env_id, SMALL)
        gym_check_env(gym.make(env_id, action=action, **kw).unwrapped, skip_render_check=True)
        sb3_check_env(gym.make(env_id, action=action, **kw).unwrapped, warn=True)


def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append(np.append(obs, [r, info["applied_lr"], info["train_loss"]]))
        if term or trunc:
            break
    return np.concatenate(out)


@pytest.mark.parametrize("action", ACTION_MODES)
def test_same_seed_same_rollout(action):
    space = gym.make("metasched/NMF-v1", action=action).action_space
    space.seed(3)
    actions = [space.sample() for _ in range(10)]
    a = rollout(gym.make("metasched/NMF-v1", action=action, **SMALL), 11, actions)
    b = rollout(gym.make("metasched/NMF-v1", action=action, **SMALL), 11, actions)
    c = rollout(gym.make("metasched/NMF-v1", action=action, **SMALL), 12, actions)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def action_sequences():
    discrete = st.lists(st.integers(0, 2), min_size=1, max_size=12)
    box = st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=12)
    return st.one_of(
        st.tuples(st.just("discrete3"), discrete),
        st.tuples(st.sampled_from(["continuous", "absolute"]), box),
        st.tuples(st.just("discrete3"), st.just([2] * 12)),  # always double
        st.tuples(st.just("discrete3"), st.just([0] * 12)),  # always halve
        st.tuples(st.just("absolute"), st.just([1.0] * 12)),  # always the maximum LR
        st.tuples(st.just("absolute"), st.just([-1.0] * 12)),  # always the minimum LR
    )


@settings(max_examples=30)
@given(
    seq=action_sequences(),
    clip=st.sampled_from(["none", "deterministic", "noise_aware"]),
    seed=st.integers(0, 99),
)
def test_fuzz_random_actions(seq, clip, seed):
    mode, actions = seq
    env = gym.make("metasched/NMF-v1", action=mode, clip=clip, split="train", **SMALL)
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    for a in actions:
        a = np.array([a], dtype=np.float32) if mode != "discrete3" else a
        obs, reward, term, trunc, info = env.step(a)
        assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
        assert math.isfinite(reward)
        assert not trunc
        assert INFO_KEYS <= info.keys()
        if info["diverged"]:
            assert term
        if term:
            break


def test_divergence_terminates_with_documented_penalty():
    env = gym.make(
        "metasched/NMF-v1", action="absolute", clip="none", divergence_penalty=3.0, **SMALL
    )
    env.reset(seed=0)
    total, term, info = 0.0, False, {}
    while not term:
        _, r, term, trunc, info = env.step(np.array([1.0], dtype=np.float32))
        total += r
        assert not trunc
    assert info["diverged"] and math.isinf(info["final_loss"])
    assert total == pytest.approx(-3.0)


def test_clipping_caps_the_applied_lr_at_kappa_times_bound():
    env = gym.make("metasched/NMF-v1", action="absolute", clip="deterministic", kappa=1.5, **SMALL)
    env.reset(seed=0)
    bound = env.unwrapped.task.lr_bound()
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["clipped"] and info["applied_lr"] == pytest.approx(1.5 * bound)
    assert info["lr"] > info["applied_lr"]


def test_return_telescopes_to_log_improvement_and_budget_end_terminates():
    env = gym.make("metasched/NMF-v1", split="test", **SMALL)
    _, info0 = env.reset(seed=1)
    total, steps, term, trunc = 0.0, 0, False, False
    while not (term or trunc):
        _, r, term, trunc, info = env.step(1)
        total += r
        steps += 1
    assert steps == 10 and term and not trunc and not info["diverged"]
    assert info["inner_steps"] == 200
    assert total == pytest.approx(math.log(info0["train_loss"] / info["train_loss"]), rel=1e-9)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


@pytest.mark.parametrize("anneal", ["wsd", "cosine"])
@pytest.mark.parametrize("env_id", ["metasched/NMF-v1", "metasched/MLP-v1"])
def test_anneal_with_the_lr_kept_is_the_schedule_of_that_name(env_id, anneal):
    """anneal="wsd" (or "cosine"): an agent that keeps its LR runs exactly that schedule at
    the reference LR."""
    from gymnasium.utils import seeding

    from metasched.schedulers import make_scheduler, run_schedule

    env = gym.make(env_id, split="test", anneal=anneal, **SMALL)
    seed = 4
    _, info = env.reset(seed=seed, options={"instance": 1})
    lrs, applied, obs_lr, term = [], [], [], False
    while not term:
        obs, _, term, _, info = env.step(1)
        lrs.append(info["lr"])
        applied.append(info["applied_lr"])
        obs_lr.append(float(obs[0]))  # log(lr / lr0): the agent's own level, 0 throughout
    u = env.unwrapped
    np_random, _ = seeding.np_random(seed)
    task = u.family.make_task(u.family.instance_config("test", 1))
    trace = run_schedule(
        task,
        make_scheduler(anneal),
        budget=u.budget,
        interval=u.steps_per_action,
        seed=np.random.default_rng(np_random.integers(2**63)),
        clip=u.clip,
        kappa=u.kappa,
    )
    assert trace["lr"][1:].tolist() == lrs
    assert trace["applied_lr"][1:].tolist() == applied
    assert trace.final_loss == info["final_loss"]
    assert obs_lr == [0.0] * len(lrs)
    if anneal == "wsd":
        assert lrs[-1] < lrs[0] and lrs[:8] == [lrs[0]] * 8  # stable, then the cooldown
    else:
        assert all(b < a for a, b in itertools.pairwise(lrs))  # decays throughout


def test_final_reward_mode_pays_only_at_the_end():
    env = gym.make("metasched/NMF-v1", reward="final", **SMALL)
    _, info0 = env.reset(seed=2)
    rewards, term = [], False
    while not term:
        _, r, term, _, info = env.step(1)
        rewards.append(r)
    assert all(r == 0.0 for r in rewards[:-1])
    assert rewards[-1] == pytest.approx(math.log(info0["train_loss"] / info["train_loss"]))


def test_discrete_actions_multiply_the_lr():
    env = gym.make("metasched/NMF-v1", clip="none", **SMALL)
    _, info = env.reset(seed=0)
    lr0 = info["lr"]
    _, _, _, _, info = env.step(2)
    assert info["lr"] == pytest.approx(2 * lr0)
    _, _, _, _, info = env.step(0)
    _, _, _, _, info = env.step(0)
    assert info["lr"] == pytest.approx(0.5 * lr0)


def test_instance_option_and_splits():
    env = gym.make("metasched/NMF-v1", split="shift", **SMALL)
    _, info = env.reset(seed=0, options={"instance": 5})
    assert info["instance"].endswith("-shift5")
    with pytest.raises(ValueError, match="instance"):
        env.reset(options={"instance": 10**9})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"action": "discrete7"}, "action"),
        ({"split": "valid"}, "split"),
        ({"budget": 0}, "budget"),
        ({"clip": "hard"}, "clip"),
        ({"kappa": -1.0}, "kappa"),
        ({"lr_range": (1.0, 0.1)}, "lr_range"),
        ({"reward": "sparse"}, "reward"),
        ({"anneal": "cos"}, "anneal must be one of none, wsd, cosine, got 'cos'"),
        ({"family": "nmff"}, "did you mean"),
    ],
)
def test_bad_kwargs_give_clear_errors(kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        gym.make("metasched/NMF-v1", **kwargs)


def test_invalid_discrete_action_is_a_clear_error():
    env = gym.make("metasched/NMF-v1", **SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="invalid discrete3 action"):
        env.unwrapped.step(5)
