"""Hyperparameters of the meta-agents: rl-zoo-style YAML parsed into validated dataclasses.

The package ships one YAML file per algorithm (``metasched/agents/hyperparams/<algo>.yml``).
Each holds a ``default`` block and blocks keyed by env id that override it key by key
(``env_kwargs``, ``policy_kwargs`` and ``normalize`` are merged one level deep). A user file
(``--hyperparams FILE``) has the same layout — either ``{env_id: {...}}``/``{default: {...}}``
blocks or one flat block — and overrides the shipped values.

Meta keys are listed in :data:`META_KEYS`; every other key must be a keyword argument of the
algorithm's class, checked against its signature, so typos fail at once with a suggestion.
Numbers are read as written (``3e-4`` is a float, :mod:`metasched.yamlio`), and every value
whose default is a number must be one: a string where a number belongs is an error naming the
key and value before anything runs. A whole float such as ``1e5`` for an integer option
(``buffer_size``) becomes that integer.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metasched.errors import ConfigError, UnknownNameError, did_you_mean
from metasched.yamlio import load_yaml

__all__ = [
    "ACTION_MODES_FOR_ALGO",
    "ALGOS",
    "META_KEYS",
    "NormalizeConfig",
    "TrainConfig",
    "algo_class",
    "load_config",
]

#: Algorithm name -> (module, class name).
ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "dqn": ("stable_baselines3", "DQN"),
    "sac": ("stable_baselines3", "SAC"),
    "td3": ("stable_baselines3", "TD3"),
    "recurrentppo": ("sb3_contrib", "RecurrentPPO"),
}
_DISCRETE = ("discrete3", "discrete5")
_CONTINUOUS = ("continuous", "absolute")
#: Action modes each algorithm can act in.
ACTION_MODES_FOR_ALGO: dict[str, tuple[str, ...]] = {
    "ppo": _DISCRETE + _CONTINUOUS,
    "a2c": _DISCRETE + _CONTINUOUS,
    "recurrentppo": _DISCRETE + _CONTINUOUS,
    "dqn": _DISCRETE,
    "sac": _CONTINUOUS,
    "td3": _CONTINUOUS,
}
#: Keys of a hyperparameter block that are not algorithm keyword arguments.
META_KEYS: tuple[str, ...] = (
    "n_timesteps",
    "policy",
    "n_envs",
    "vec_env",
    "normalize",
    "policy_kwargs",
    "env_kwargs",
    "eval_freq",
    "n_eval_episodes",
    "checkpoint_freq",
    "num_workers",
)
VEC_ENVS: tuple[str, ...] = ("batched", "subproc", "dummy", "ray", "ray-batched")
_MERGED = ("env_kwargs", "policy_kwargs", "normalize")
_NORMALIZE_KEYS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon")
#: Algorithm arguments the trainer sets itself.
_RESERVED = ("env", "policy", "seed", "tensorboard_log", "verbose", "device", "_init_setup_model")
ACTIVATIONS: dict[str, str] = {
    "tanh": "Tanh",
    "relu": "ReLU",
    "elu": "ELU",
    "leaky_relu": "LeakyReLU",
    "gelu": "GELU",
    "silu": "SiLU",
}


@dataclass(frozen=True)
class NormalizeConfig:
    """``VecNormalize`` settings (``enabled=False``: no normalisation)."""

    enabled: bool = True
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    gamma: float = 0.99
    epsilon: float = 1e-8

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``VecNormalize``."""
        return {k: getattr(self, k) for k in _NORMALIZE_KEYS}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, resolved and validated (written to the run dir)."""

    algo: str
    env_id: str
    n_timesteps: int
    seed: int = 0
    policy: str = "MlpPolicy"
    n_envs: int = 8
    vec_env: str = "dummy"
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_freq: int = 20000
    n_eval_episodes: int = 20
    checkpoint_freq: int = 20000
    #: Ray actors holding the envs (``vec_env: ray`` / ``ray-batched`` only).
    num_workers: int = 2

    @property
    def action_mode(self) -> str:
        """Return the env's action mode (``discrete3`` unless ``env_kwargs`` says otherwise)."""
        return str(self.env_kwargs.get("action", "discrete3"))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML)."""
        d = {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__}
        d["normalize"] = {"enabled": self.normalize.enabled, **self.normalize.as_kwargs()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (validated again)."""
        d = dict(d)
        d["normalize"] = NormalizeConfig(**d.get("normalize", {}))
        cfg = cls(**d)
        validate(cfg)
        return cfg

    def resolved_policy_kwargs(self) -> dict[str, Any]:
        """``policy_kwargs`` with the activation name turned into the torch class."""
        import torch

        kw = dict(self.policy_kwargs)
        if "activation_fn" in kw:
            kw["activation_fn"] = getattr(torch.nn, ACTIVATIONS[kw["activation_fn"]])
        return kw


def algo_class(algo: str) -> type:
    """Return the SB3 / sb3-contrib class of ``algo``."""
    if algo not in ALGOS:
        raise UnknownNameError(did_you_mean(str(algo), ALGOS, "algorithm"))
    module, name = ALGOS[algo]
    return getattr(importlib.import_module(module), name)


def _algo_options(algo: str) -> list[str]:
    cls = algo_class(algo)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", *_RESERVED)]


def shipped_hyperparams(algo: str) -> dict[str, Any]:
    """Return the YAML shipped with the package for ``algo``."""
    if algo not in ALGOS:
        raise UnknownNameError(did_you_mean(str(algo), ALGOS, "algorithm"))
    text = resources.files("metasched.agents").joinpath(f"hyperparams/{algo}.yml").read_text()
    return load_yaml(text) or {}


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"hyperparameter file {str(p)!r} does not exist")
    try:
        data = load_yaml(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"hyperparameter file {str(p)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"hyperparameter file {str(p)!r} must hold a mapping")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in _MERGED and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **copy.deepcopy(v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _block(data: dict[str, Any], env_id: str, where: str) -> dict[str, Any]:
    """Merge the ``default`` and ``env_id`` blocks of one file (or take a flat block)."""
    if any("/" in k or k == "default" for k in data):
        for k in data:
            if k != "default" and "/" not in k:
                raise ConfigError(
                    f"{where}: top-level key {k!r} is neither 'default' nor an env id "
                    "(do not mix env blocks with flat keys)"
                )
        out = dict(data.get("default") or {})
        return _merge(out, data.get(env_id) or {})
    return data


def _check_int(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _numeric_default(default: Any) -> type | None:
    """``int``/``float`` when a parameter's default is that kind of number, else ``None``."""
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return None


def _coerce(kind: type | None, key: str, value: Any, where: str) -> Any:
    """Check (and for whole floats given to integers, convert) one value of a number option."""
    if kind is None or value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{where}{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{where}{key} must be an integer, got {value!r}")
        return int(value)
    return value


def _defaults(func: Any) -> dict[str, Any]:
    params = inspect.signature(func).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _numeric_annotation(param: inspect.Parameter) -> type | None:
    """``int``/``float`` when a parameter takes numbers only (besides None / a schedule)."""
    import collections.abc
    import typing

    ann = param.annotation
    if ann is inspect.Parameter.empty or isinstance(ann, str):
        return _numeric_default(param.default)
    members = typing.get_args(ann) if typing.get_args(ann) else (ann,)
    kinds = set()
    for m in members:
        if m is type(None) or typing.get_origin(m) is collections.abc.Callable:
            continue
        if m not in (int, float):
            return None  # e.g. train_freq: int | tuple[int, str]
        kinds.add(m)
    return float if float in kinds else (int if kinds else None)


def coerce_numbers(algo: str, algo_kwargs: dict[str, Any], env_kwargs: dict[str, Any]) -> None:
    """Check that number options hold numbers (in place: whole floats for integers -> int).

    An algorithm option is a number option when its annotation in the algorithm's signature
    takes only ``int``/``float`` (besides ``None`` or a schedule callable); an env option when
    its default is an ``int`` or ``float``. A callable in place of a float (SB3 accepts
    schedules for ``learning_rate``) is passed through.

    Raises:
        ConfigError: naming the key and the value, e.g. ``ppo hyperparameter learning_rate
            must be a number, got '3e-4x'``.
    """
    from metasched.envs.lr_control import LRControlEnv

    params = inspect.signature(algo_class(algo).__init__).parameters if algo in ALGOS else {}
    for key, value in list(algo_kwargs.items()):
        if key not in params or callable(value):
            continue
        kind = _numeric_annotation(params[key])
        algo_kwargs[key] = _coerce(kind, key, value, f"{algo} hyperparameter ")
    env_defaults = _defaults(LRControlEnv.__init__)
    for key, value in list(env_kwargs.items()):
        kind = _numeric_default(env_defaults.get(key))
        env_kwargs[key] = _coerce(kind, key, value, "env kwarg ")


def validate(cfg: TrainConfig) -> None:
    """Check a config; raise :class:`ConfigError` naming the first problem."""
    from metasched.envs.registration import ENV_IDS

    if cfg.algo not in ALGOS:
        raise UnknownNameError(did_you_mean(cfg.algo, ALGOS, "algorithm"))
    if cfg.env_id not in ENV_IDS:
        raise UnknownNameError(did_you_mean(cfg.env_id, ENV_IDS, "environment"))
    _check_int("n_timesteps", cfg.n_timesteps, 1)
    _check_int("n_envs", cfg.n_envs, 1)
    _check_int("seed", cfg.seed, 0)
    _check_int("eval_freq", cfg.eval_freq, 0)
    _check_int("n_eval_episodes", cfg.n_eval_episodes, 1)
    _check_int("checkpoint_freq", cfg.checkpoint_freq, 0)
    _check_int("num_workers", cfg.num_workers, 1)
    if cfg.vec_env not in VEC_ENVS:
        raise ConfigError(did_you_mean(str(cfg.vec_env), VEC_ENVS, "vec_env"))
    mode = cfg.action_mode
    allowed = ACTION_MODES_FOR_ALGO[cfg.algo]
    if mode not in allowed:
        raise ConfigError(
            f"{cfg.algo} cannot act in action mode {mode!r}; "
            f"set env_kwargs.action to one of {', '.join(allowed)}"
        )
    options = _algo_options(cfg.algo)
    for key in cfg.algo_kwargs:
        if key in _RESERVED:
            raise ConfigError(f"{key!r} is set by metasched train, not in the hyperparameters")
        if key not in options:
            raise ConfigError(
                did_you_mean(key, [*META_KEYS, *options], f"hyperparameter for {cfg.algo}:")
            )
    coerce_numbers(cfg.algo, dict(cfg.algo_kwargs), dict(cfg.env_kwargs))  # raises on bad types
    for key in ("clip_obs", "clip_reward", "gamma", "epsilon"):
        _coerce(float, key, getattr(cfg.normalize, key), "normalize option ")
    act = cfg.policy_kwargs.get("activation_fn")
    if act is not None and act not in ACTIVATIONS:
        raise ConfigError(did_you_mean(str(act), ACTIVATIONS, "activation_fn"))
    _check_env_kwargs(cfg.env_kwargs)


def _check_env_kwargs(env_kwargs: dict[str, Any]) -> None:
    from metasched.envs.lr_control import LRControlEnv

    params = [p for p in inspect.signature(LRControlEnv.__init__).parameters if p != "self"]
    for key in env_kwargs:
        if key not in params or key == "split":
            raise ConfigError(did_you_mean(key, [p for p in params if p != "split"], "env kwarg"))


def load_config(
    algo: str,
    env_id: str,
    *,
    hyperparams: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> TrainConfig:
    """Resolve the config of a run: shipped YAML, then a user file, then ``overrides``.

    ``overrides`` holds command-line values (``n_timesteps``, ``n_envs``, ``env_kwargs``...).
    """
    if algo not in ALGOS:
        raise UnknownNameError(did_you_mean(str(algo), ALGOS, "algorithm"))
    block = _block(shipped_hyperparams(algo), env_id, f"shipped {algo}.yml")
    if hyperparams is not None:
        user = _read_yaml(hyperparams)
        if algo in user and isinstance(user[algo], dict):  # {algo: {...}} is accepted too
            user = user[algo]
        block = _merge(block, _block(user, env_id, str(hyperparams)))
    if overrides:
        block = _merge(block, {k: v for k, v in overrides.items() if v is not None})
    meta = {k: block.pop(k) for k in list(block) if k in META_KEYS}
    norm = meta.pop("normalize", True)
    if isinstance(norm, bool):
        norm_cfg = NormalizeConfig(enabled=norm)
    elif isinstance(norm, dict):
        for k in norm:
            if k not in _NORMALIZE_KEYS:
                raise ConfigError(did_you_mean(k, _NORMALIZE_KEYS, "normalize option"))
        norm_cfg = NormalizeConfig(enabled=True, **norm)
    else:
        raise ConfigError(f"normalize must be true/false or a mapping, got {norm!r}")
    for k in ("policy_kwargs", "env_kwargs"):
        if k in meta and not isinstance(meta[k], dict):
            raise ConfigError(f"{k} must be a mapping, got {meta[k]!r}")
    if "n_timesteps" in meta and isinstance(meta["n_timesteps"], float):
        if not meta["n_timesteps"].is_integer():
            raise ConfigError(f"n_timesteps must be an integer, got {meta['n_timesteps']!r}")
        meta["n_timesteps"] = int(meta["n_timesteps"])
    algo_kwargs = dict(block)
    env_kwargs = dict(meta.pop("env_kwargs", {}))
    _check_env_kwargs(env_kwargs)  # unknown keys first, with a suggestion
    coerce_numbers(algo, algo_kwargs, env_kwargs)
    cfg = TrainConfig(
        algo=algo,
        env_id=env_id,
        seed=seed,
        env_kwargs=env_kwargs,
        normalize=norm_cfg,
        algo_kwargs=algo_kwargs,
        **meta,
    )
    validate(cfg)
    return cfg
