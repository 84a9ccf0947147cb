"""Export of trained SB3 / sb3-contrib agents: the plain-torch policy acts exactly as SB3 does."""

import datetime
import json
import pickle
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import QRDQN, RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import metasched  # noqa: F401 - registers the envs
from metasched.agents.export import export_model, obs_norm_from_vecnormalize
from metasched.errors import ExportError
from metasched.features import FEATURE_NAMES, N_FEATURES
from metasched.policyfile import FORMAT_VERSION, load_policy

ENV_ID = "metasched/NMF-v1"
TINY_ENV = {"budget": 200, "steps_per_action": 50}
N_OBS = 1000
ON = {"n_steps": 32, "batch_size": 32, "n_epochs": 2}
OFF = {"learning_starts": 32, "buffer_size": 1000, "batch_size": 16}

# name -> (algorithm, action mode, VecNormalize?, algorithm kwargs)
CASES = {
    "ppo-discrete3": (PPO, "discrete3", True, {**ON, "policy_kwargs": {"net_arch": [16]}}),
    "ppo-continuous": (PPO, "continuous", True, {**ON, "policy_kwargs": {"net_arch": [16, 16]}}),
    "ppo-continuous-sde-custom": (
        PPO,
        "absolute",
        True,
        {
            **ON,
            "use_sde": True,
            "policy_kwargs": {
                "net_arch": {"pi": [16, 8], "vf": [8]},
                "activation_fn": torch.nn.ELU,
                "share_features_extractor": False,
            },
        },
    ),
    "a2c-discrete5": (
        A2C,
        "discrete5",
        True,
        {"n_steps": 8, "policy_kwargs": {"net_arch": [16], "activation_fn": torch.nn.ReLU}},
    ),
    "a2c-continuous-no-vecnormalize": (
        A2C,
        "continuous",
        False,
        {"n_steps": 8, "policy_kwargs": {"net_arch": [16]}},
    ),
    "dqn-discrete3": (DQN, "discrete3", True, {**OFF, "policy_kwargs": {"net_arch": [16, 16]}}),
    "sac-continuous": (SAC, "continuous", True, {**OFF, "policy_kwargs": {"net_arch": [16]}}),
    "sac-sde": (
        SAC,
        "continuous",
        True,
        {**OFF, "use_sde": True, "policy_kwargs": {"net_arch": [16], "clip_mean": 0.5}},
    ),
    "td3-continuous": (TD3, "continuous", True, {**OFF, "policy_kwargs": {"net_arch": [16]}}),
    "recurrentppo-discrete3": (
        RecurrentPPO,
        "discrete3",
        True,
        {**ON, "policy_kwargs": {"net_arch": [8], "lstm_hidden_size": 8}},
    ),
    "recurrentppo-shared-2layers": (
        RecurrentPPO,
        "discrete3",
        True,
        {
            **ON,
            "policy_kwargs": {
                "net_arch": [8],
                "lstm_hidden_size": 6,
                "n_lstm_layers": 2,
                "shared_lstm": True,
                "enable_critic_lstm": False,
            },
        },
    ),
}
RECURRENT = [c for c in CASES if CASES[c][0] is RecurrentPPO]
FEEDFORWARD = [c for c in CASES if c not in RECURRENT]


def _venv(action, normalize):
    env_kwargs = {**TINY_ENV, "action": action}
    venv = DummyVecEnv([lambda: gym.make(ENV_ID, **env_kwargs)] * 2)
    if normalize:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True)
    return venv, env_kwargs


class Trained:
    def __init__(self, model, venv, env_kwargs, path):
        self.model, self.venv, self.env_kwargs, self.path = model, venv, env_kwargs, path

    def sb3_obs(self, obs):
        """What SB3's predict gets: the VecNormalize-normalised observation."""
        return self.venv.normalize_obs(obs) if isinstance(self.venv, VecNormalize) else obs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Lazily train (a few hundred timesteps) and export each case once per worker."""
    cache = {}
    out = tmp_path_factory.mktemp("policies")

    def get(name):
        if name not in cache:
            cls, action, normalize, kwargs = CASES[name]
            venv, env_kwargs = _venv(action, normalize)
            policy = "MlpLstmPolicy" if cls is RecurrentPPO else "MlpPolicy"
            model = cls(policy, venv, seed=0, device="cpu", **kwargs)
            model.learn(192)
            path = export_model(
                model,
                out / f"{name}.msched",
                env_id=ENV_ID,
                env_kwargs=env_kwargs,
                obs_norm=obs_norm_from_vecnormalize(venv) if normalize else None,
                extra={"case": name},
            )
            cache[name] = Trained(model, venv, env_kwargs, path)
        return cache[name]

    return get


def _random_obs(n=N_OBS, seed=0):
    space = gym.make(ENV_ID).observation_space
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, size=(n, N_FEATURES)).astype(np.float32)


@pytest.mark.parametrize("name", FEEDFORWARD)
def test_actions_equal_sb3_predict(trained, name):
    t = trained(name)
    pol = load_policy(t.path)
    obs = _random_obs()
    ours, state = pol.predict(obs)
    ref, _ = t.model.predict(t.sb3_obs(obs), deterministic=True)
    assert state is None
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)
    if ours.dtype == np.float32:  # continuous actions really vary and stay in the Box
        assert len(np.unique(ours)) > N_OBS // 10
        assert np.all(np.abs(ours) <= 1.0)
    for i in range(3):  # a single (F,) observation: SB3's unbatched shapes
        one, _ = pol.predict(obs[i])
        ref_one, _ = t.model.predict(t.sb3_obs(obs[i]), deterministic=True)
        assert one.shape == ref_one.shape and one.dtype == ref_one.dtype
        np.testing.assert_array_equal(one, ref_one)


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_actions_and_states_equal_sb3_over_sequences(trained, name):
    t = trained(name)
    pol = load_policy(t.path)
    n, steps = 4, N_OBS // 4 + 1
    obs = _random_obs(n * steps, seed=1).reshape(steps, n, N_FEATURES)
    starts = np.random.default_rng(2).random((steps, n)) < 0.1
    starts[0] = True
    ours = ref = None
    for k in range(steps):
        a, ours = pol.predict(obs[k], ours, starts[k])
        b, ref = t.model.predict(
            t.sb3_obs(obs[k]), state=ref, episode_start=starts[k], deterministic=True
        )
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        for x, y in zip(ours, ref, strict=True):
            assert x.shape == y.shape and x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    # episode_start=None and state=None mean zeros, as in SB3
    np.testing.assert_array_equal(
        pol.predict(obs[0])[0], t.model.predict(t.sb3_obs(obs[0]), deterministic=True)[0]
    )


def test_header_describes_the_run(trained):
    t = trained("ppo-discrete3")
    h = load_policy(t.path).header
    assert h["format"] == "metasched-policy" and h["format_version"] == FORMAT_VERSION
    assert h["algo"] == "ppo" and h["env_id"] == ENV_ID
    kw = h["env_kwargs"]
    for key in ("action", "budget", "steps_per_action", "lr_range", "init_lr", "clip", "kappa"):
        assert key in kw, key
    assert kw["action"] == "discrete3" and kw["budget"] == 200 and kw["family"] == "nmf"
    assert kw["lr_range"] == [1e-3, 64.0] and "split" not in kw
    assert h["decision_interval"] == 50
    assert h["observation"]["names"] == list(FEATURE_NAMES)
    assert h["action"] == {"mode": "discrete3", "space": "discrete", "n": 3}
    norm = h["obs_norm"]
    assert norm["mean"] == t.venv.obs_rms.mean.tolist()
    assert norm["var"] == t.venv.obs_rms.var.tolist()
    assert norm["epsilon"] == t.venv.epsilon and norm["clip_obs"] == t.venv.clip_obs
    assert {"metasched", "torch", "safetensors", "numpy", "python", "stable_baselines3"} <= set(
        h["versions"]
    )
    assert datetime.datetime.fromisoformat(h["created"]).tzinfo is not None
    assert h["extra"] == {"case": "ppo-discrete3"}
    layers = h["network"]["layers"]
    assert [x["type"] for x in layers] == ["linear", "tanh", "linear"]
    assert h["network"]["head"] == {"type": "argmax", "of": "probs"}
    assert load_policy(trained("dqn-discrete3").path).header["network"]["head"]["of"] == "q_values"
    rec = load_policy(trained("recurrentppo-discrete3").path).header
    assert rec["algo"] == "recurrentppo" and "sb3_contrib" in rec["versions"]
    assert rec["network"]["layers"][0]["type"] == "lstm"
    assert load_policy(trained("a2c-continuous-no-vecnormalize").path).header["obs_norm"] is None


def test_no_pickle_and_no_torch_load(trained, monkeypatch):
    names = ["recurrentppo-discrete3", "sac-continuous", "ppo-discrete3"]
    obs = _random_obs(50, seed=3)
    want = {
        n: trained(n).model.predict(trained(n).sb3_obs(obs), deterministic=True)[0] for n in names
    }

    def boom(*args, **kwargs):
        raise AssertionError("pickle/torch.load must not be used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    for n in names:
        np.testing.assert_array_equal(load_policy(trained(n).path).predict(obs)[0], want[n])
    from metasched.schedulers import LearnedScheduler

    sched = LearnedScheduler.load(trained("ppo-discrete3").path)
    assert sched.reset(0.1) == 0.1


LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("stable_baselines3", "sb3_contrib"):
                raise ImportError(f"{name} is blocked")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    from metasched.policyfile import load_policy
    from metasched.schedulers import make_scheduler
    from metasched.signal import TrainingSignal

    job = json.load(open(sys.argv[1]))
    obs = np.array(job["obs"], dtype=np.float32)
    out = {}
    for name, path in job["files"].items():
        out[name] = load_policy(path).predict(obs)[0].tolist()
        s = make_scheduler("learned", path=path)
        s.reset(0.1)
        s.step(TrainingSignal(step=50, budget=200, lr=0.1, train_loss=1.0, losses=(2.0, 1.0)))
    bad = sorted(m for m in sys.modules
                 if m.split(".")[0] in ("stable_baselines3", "sb3_contrib")
                 or m.startswith("metasched.agents") or m == "metasched.envs.batched")
    print(json.dumps({"actions": out, "bad_modules": bad}))
    """
)


def test_loader_works_with_sb3_blocked_in_a_fresh_process(trained, tmp_path):
    names = ["recurrentppo-shared-2layers", "sac-sde", "ppo-continuous-sde-custom"]
    obs = _random_obs(100, seed=4)
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"obs": obs.tolist(), "files": {n: str(trained(n).path) for n in names}})
    )
    script = tmp_path / "loader.py"
    script.write_text(LOADER)
    done = subprocess.run(
        [sys.executable, str(script), str(job)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bad_modules"] == []
    for n in names:
        ref, _ = trained(n).model.predict(trained(n).sb3_obs(obs), deterministic=True)
        np.testing.assert_array_equal(np.asarray(result["actions"][n], dtype=ref.dtype), ref)


# -- what cannot be exported -----------------------------------------------------------------
class OddExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space):
        super().__init__(observation_space, 12)

    def forward(self, observations):
        return observations * 2


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda v: PPO("MlpPolicy", v, policy_kwargs={"features_extractor_class": OddExtractor}),
            "feature extractor OddExtractor",
        ),
        (
            lambda v: PPO("MlpPolicy", v, policy_kwargs={"activation_fn": torch.nn.LogSigmoid}),
            "layer LogSigmoid",
        ),
        (lambda v: QRDQN("MlpPolicy", v), "policy QRDQNPolicy of QRDQN"),
        (lambda v: object(), "object: it has no .policy"),
    ],
    ids=["extractor", "activation", "qrdqn", "not-a-model"],
)
def test_unsupported_models_are_named(tmp_path, make, match):
    venv, kw = _venv("discrete3", False)
    with pytest.raises(ExportError, match=match):
        export_model(make(venv), tmp_path / "x.msched", env_id=ENV_ID, env_kwargs=kw, obs_norm=None)
    assert not list(tmp_path.iterdir())


def test_bad_arguments(trained, tmp_path):
    t = trained("ppo-discrete3")
    kw = {"env_kwargs": t.env_kwargs, "obs_norm": None}
    with pytest.raises(ExportError, match="unknown env id 'nope/X-v1'"):
        export_model(t.model, tmp_path / "a.msched", env_id="nope/X-v1", **kw)
    with pytest.raises(ExportError, match=f"obs_norm\\['mean'\\] must have {N_FEATURES} values"):
        export_model(
            t.model,
            tmp_path / "b.msched",
            env_id=ENV_ID,
            env_kwargs=t.env_kwargs,
            obs_norm={"mean": [0.0], "var": [1.0], "epsilon": 1e-8, "clip_obs": 10.0},
        )
    with pytest.raises(ExportError, match="not JSON data"):
        export_model(t.model, tmp_path / "c.msched", env_id=ENV_ID, extra={"x": object()}, **kw)
    with pytest.raises(ExportError, match="does not act in a Discrete\\(3\\) space"):
        export_model(
            t.model,
            tmp_path / "d.msched",
            env_id=ENV_ID,
            env_kwargs={"action": "discrete5"},
            obs_norm=None,
        )
    assert not list(tmp_path.iterdir())


def test_obs_norm_helper_and_vecnormalize_argument(trained, tmp_path):
    t = trained("ppo-discrete3")
    venv, _ = _venv("discrete3", False)
    assert obs_norm_from_vecnormalize(VecNormalize(venv, norm_obs=False)) is None
    # passing the VecNormalize itself is the same as passing its statistics
    p = export_model(
        t.model, tmp_path / "v.msched", env_id=ENV_ID, env_kwargs=t.env_kwargs, obs_norm=t.venv
    )
    assert load_policy(p).header["obs_norm"] == load_policy(t.path).header["obs_norm"]
    # exporting over an existing file replaces it atomically, leaving no temporaries
    export_model(t.model, p, env_id=ENV_ID, env_kwargs=t.env_kwargs, obs_norm=None)
    assert load_policy(p).header["obs_norm"] is None
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v.msched"]
