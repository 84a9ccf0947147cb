"""Export a trained Stable-Baselines3 / sb3-contrib agent to one ``.msched`` policy file.

:func:`export_model` reads the parameters of the agent's acting network, describes the
network as a JSON layer spec and writes both with :func:`metasched.policyfile.write_policy`
(format: :mod:`metasched.policyfile`). The file then loads with plain torch — no pickle, no
Stable-Baselines3 — and :meth:`~metasched.policyfile.PolicyFile.predict` reproduces
``model.predict(vec_normalize.normalize_obs(obs), deterministic=True)``.

Supported: PPO and A2C (``MlpPolicy``; Discrete or Box actions; any ``net_arch`` and
activation; gSDE), DQN (``q_net``), SAC (deterministic action ``tanh(mu)``, also with gSDE),
TD3 (the actor), and sb3-contrib's RecurrentPPO (``MlpLstmPolicy``; the actor's LSTM, shared
or not, with its state carried between calls). Feature extractors other than the plain
``FlattenExtractor`` (CNN, dict observations, custom ones) are refused with an
:class:`~metasched.errors.ExportError` naming them.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metasched.errors import ExportError
from metasched.features import FEATURE_HIGH, FEATURE_LOW, FEATURE_NAMES
from metasched.policyfile import FORMAT, FORMAT_VERSION, check_obs_norm, write_policy

__all__ = ["export_model", "obs_norm_from_vecnormalize"]

#: Env keywords a learned scheduler needs to replay the policy outside the env.
REQUIRED_ENV_KWARGS: tuple[str, ...] = (
    "action",
    "budget",
    "steps_per_action",
    "lr_range",
    "init_lr",
    "clip",
    "kappa",
)

_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.SELU: "selu",
    nn.ELU: "elu",
    nn.LeakyReLU: "leaky_relu",
    nn.GELU: "gelu",
    nn.Hardtanh: "hardtanh",
    nn.Softplus: "softplus",
}
#: Modules that do nothing at inference (SB3 predicts in eval mode).
_NO_OPS: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout)


def obs_norm_from_vecnormalize(vec_normalize: Any) -> dict[str, Any] | None:
    """Return the observation normalisation of an SB3 ``VecNormalize`` as a policy file stores it.

    ``None`` when the wrapper does not normalise observations.

    Raises:
        ExportError: for dict observation spaces (per-key statistics are not supported).
    """
    if not getattr(vec_normalize, "norm_obs", False):
        return None
    rms = vec_normalize.obs_rms
    if isinstance(rms, dict):
        raise ExportError("VecNormalize with dict observations cannot be exported")
    return {
        "mean": np.asarray(rms.mean, dtype=np.float64).reshape(-1).tolist(),
        "var": np.asarray(rms.var, dtype=np.float64).reshape(-1).tolist(),
        "epsilon": float(vec_normalize.epsilon),
        "clip_obs": float(vec_normalize.clip_obs),
    }


class _Spec:
    """Collects tensors and layer specs while walking a network."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.layers: list[dict[str, Any]] = []

    def _add_tensor(self, name: str, t: torch.Tensor) -> str:
        self.tensors[name] = t.detach().to("cpu", torch.float32).contiguous().clone()
        return name

    def linear(self, m: nn.Linear) -> None:
        i = len(self.layers)
        weight = self._add_tensor(f"layers.{i}.weight", m.weight)
        bias = None if m.bias is None else self._add_tensor(f"layers.{i}.bias", m.bias)
        self.layers.append({"type": "linear", "weight": weight, "bias": bias})

    def activation(self, m: nn.Module, where: str) -> None:
        kind = _ACTIVATIONS.get(type(m))
        if kind is None:
            raise ExportError(f"cannot export layer {type(m).__name__} in {where}")
        spec: dict[str, Any] = {"type": kind}
        if kind == "elu":
            spec["alpha"] = float(m.alpha)
        elif kind == "leaky_relu":
            spec["negative_slope"] = float(m.negative_slope)
        elif kind == "gelu":
            spec["approximate"] = str(m.approximate)
        elif kind == "hardtanh":
            spec["min_val"], spec["max_val"] = float(m.min_val), float(m.max_val)
        elif kind == "softplus":
            spec["beta"], spec["threshold"] = float(m.beta), float(m.threshold)
        self.layers.append(spec)

    def modules(self, modules: Iterable[nn.Module], where: str) -> None:
        for m in modules:
            if type(m) is nn.Sequential:
                self.modules(m, where)
            elif type(m) is nn.Linear:
                self.linear(m)
            elif type(m) in _NO_OPS:
                continue
            else:
                self.activation(m, where)

    def lstm(self, m: nn.Module, where: str) -> None:
        if type(m) is not nn.LSTM:
            raise ExportError(f"cannot export recurrent layer {type(m).__name__} in {where}")
        if m.batch_first or m.bidirectional or m.proj_size:
            raise ExportError(
                f"cannot export the LSTM in {where}: batch_first, bidirectional and proj_size "
                "are not supported"
            )
        params = {}
        for name, p in m.named_parameters():
            params[name] = self._add_tensor(f"lstm.{name}", p)
        self.layers.append(
            {
                "type": "lstm",
                "input_size": int(m.input_size),
                "hidden_size": int(m.hidden_size),
                "num_layers": int(m.num_layers),
                "bias": bool(m.bias),
                "params": params,
                "state": "carried between calls; zeroed at episode_start",
            }
        )


def _check_flatten(extractor: Any, where: str) -> None:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if type(extractor) is not FlattenExtractor:
        raise ExportError(
            f"cannot export feature extractor {type(extractor).__name__} of {where}: only "
            "FlattenExtractor (MlpPolicy / MlpLstmPolicy) is supported"
        )


def _actor_critic(policy: Any, spec: _Spec, recurrent: bool) -> dict[str, Any]:
    """Layers and head of an (optionally recurrent) actor-critic policy (PPO, A2C, ...)."""
    from stable_baselines3.common.distributions import (
        CategoricalDistribution,
        DiagGaussianDistribution,
        StateDependentNoiseDistribution,
    )
    from stable_baselines3.common.torch_layers import MlpExtractor

    where = type(policy).__name__
    _check_flatten(policy.pi_features_extractor, where)
    if recurrent:
        spec.lstm(policy.lstm_actor, f"{where}.lstm_actor")
    if type(policy.mlp_extractor) is not MlpExtractor:
        raise ExportError(
            f"cannot export mlp_extractor {type(policy.mlp_extractor).__name__} of {where}"
        )
    spec.modules(policy.mlp_extractor.policy_net, f"{where}.mlp_extractor.policy_net")
    spec.modules([policy.action_net], f"{where}.action_net")
    dist = policy.action_dist
    if isinstance(dist, CategoricalDistribution):
        return {"type": "argmax", "of": "probs"}
    if isinstance(dist, DiagGaussianDistribution) and not policy.squash_output:
        return {"type": "gaussian_mean"}
    if isinstance(dist, StateDependentNoiseDistribution):
        squashed = dist.bijector is not None
        if squashed != bool(policy.squash_output):
            raise ExportError(f"inconsistent squash_output in {where}")
        return {"type": "tanh_rescale"} if squashed else {"type": "gaussian_mean"}
    raise ExportError(f"cannot export action distribution {type(dist).__name__} of {where}")


def _dqn(policy: Any, spec: _Spec) -> dict[str, Any]:
    q = policy.q_net
    _check_flatten(q.features_extractor, type(policy).__name__)
    spec.modules(q.q_net, f"{type(policy).__name__}.q_net")
    return {"type": "argmax", "of": "q_values"}


def _sac(policy: Any, spec: _Spec) -> dict[str, Any]:
    from stable_baselines3.common.distributions import (
        SquashedDiagGaussianDistribution,
        StateDependentNoiseDistribution,
    )

    actor = policy.actor
    where = f"{type(policy).__name__}.actor"
    _check_flatten(actor.features_extractor, where)
    dist = actor.action_dist
    squashed = isinstance(dist, SquashedDiagGaussianDistribution) or (
        isinstance(dist, StateDependentNoiseDistribution) and dist.bijector is not None
    )
    if not (squashed and policy.squash_output):
        raise ExportError(f"cannot export action distribution {type(dist).__name__} of {where}")
    spec.modules(actor.latent_pi, f"{where}.latent_pi")
    spec.modules([actor.mu], f"{where}.mu")
    return {"type": "tanh_rescale"}


def _td3(policy: Any, spec: _Spec) -> dict[str, Any]:
    actor = policy.actor
    where = f"{type(policy).__name__}.actor"
    _check_flatten(actor.features_extractor, where)
    mods = list(actor.mu)
    if not mods or type(mods[-1]) is not nn.Tanh or not policy.squash_output:
        raise ExportError(f"cannot export {where}.mu: it does not end in a Tanh")
    spec.modules(mods[:-1], f"{where}.mu")
    return {"type": "tanh_rescale"}


def _convert(model: Any) -> tuple[str, _Spec, dict[str, Any]]:
    """Return (algo name, spec, head) of a model, or raise ExportError naming what is wrong."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    try:
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    except ImportError:  # pragma: no cover - sb3-contrib is a dependency
        RecurrentActorCriticPolicy = ()

    policy = getattr(model, "policy", None)
    if policy is None:
        raise ExportError(f"cannot export {type(model).__name__}: it has no .policy")
    algo = type(model).__name__.lower()
    spec = _Spec()
    if isinstance(policy, RecurrentActorCriticPolicy):
        head = _actor_critic(policy, spec, recurrent=True)
    elif isinstance(policy, ActorCriticPolicy):
        head = _actor_critic(policy, spec, recurrent=False)
    elif isinstance(policy, DQNPolicy):
        head = _dqn(policy, spec)
    elif isinstance(policy, SACPolicy):
        head = _sac(policy, spec)
    elif isinstance(policy, TD3Policy):
        head = _td3(policy, spec)
    else:
        raise ExportError(
            f"cannot export policy {type(policy).__name__} of {type(model).__name__}: supported "
            "are PPO/A2C/RecurrentPPO actor-critic, DQN, SAC and TD3 MLP policies"
        )
    return algo, spec, head


# -- header parts ----------------------------------------------------------------------------
def _json_value(value: Any, what: str) -> Any:
    """``value`` as strict JSON data (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExportError(f"{what} is not finite ({value!r}); policy headers are strict JSON")
        return value
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_value(v, f"{what}[{i}]") for i, v in enumerate(list(value))]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ExportError(f"{what} has a non-string key {k!r}")
            out[k] = _json_value(v, f"{what}[{k!r}]")
        return out
    raise ExportError(f"{what} is not JSON data ({type(value).__name__})")


def _resolved_env_kwargs(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return the env's keywords (:func:`~metasched.envs.registration.resolve_env_kwargs`)."""
    from metasched.envs.registration import resolve_env_kwargs
    from metasched.errors import UnknownNameError

    try:
        out = resolve_env_kwargs(env_id, env_kwargs)
    except UnknownNameError:
        raise ExportError(f"unknown env id {env_id!r}") from None
    return _json_value(out, "env_kwargs")


def _box_spec(space: Any, what: str) -> tuple[list[int], list[float], list[float]]:
    low = np.asarray(space.low, dtype=np.float64).reshape(-1)
    high = np.asarray(space.high, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ExportError(f"cannot export a policy with an unbounded {what} space {space}")
    return [int(s) for s in space.shape], low.tolist(), high.tolist()


def _observation_spec(space: Any) -> dict[str, Any]:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ExportError(f"cannot export a policy over observation space {space}: need a 1-D Box")
    shape, low, high = _box_spec(space, "observation")
    same = (
        shape == [len(FEATURE_NAMES)]
        and np.array_equal(space.low, FEATURE_LOW)
        and np.array_equal(space.high, FEATURE_HIGH)
    )
    return {
        "shape": shape,
        "names": list(FEATURE_NAMES) if same else None,
        "low": low,
        "high": high,
    }


def _action_spec(space: Any, mode: Any) -> dict[str, Any]:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ExportError(f"cannot export a Discrete action space starting at {space.start}")
        return {"mode": mode, "space": "discrete", "n": int(space.n)}
    if isinstance(space, spaces.Box):
        shape, low, high = _box_spec(space, "action")
        return {"mode": mode, "space": "box", "shape": shape, "low": low, "high": high}
    raise ExportError(f"cannot export a policy with action space {space}")


def _header_obs_norm(obs_norm: Any, n: int) -> dict[str, Any] | None:
    """Return the header's ``obs_norm`` from a VecNormalize or a dict, checked as on reading."""
    if obs_norm is None:
        return None
    if hasattr(obs_norm, "obs_rms"):  # a VecNormalize itself
        obs_norm = obs_norm_from_vecnormalize(obs_norm)
    if not isinstance(obs_norm, dict):
        raise ExportError(f"obs_norm must be None or a dict, got {type(obs_norm).__name__}")
    missing = [k for k in ("mean", "var", "epsilon", "clip_obs") if k not in obs_norm]
    if missing:
        raise ExportError(f"obs_norm lacks {', '.join(map(repr, missing))}")
    out = _json_value({k: obs_norm[k] for k in ("mean", "var", "epsilon", "clip_obs")}, "obs_norm")
    for k in ("mean", "var"):
        if not isinstance(out[k], list) or len(out[k]) != n:
            raise ExportError(f"obs_norm[{k!r}] must have {n} values (one per observation)")
        out[k] = [float(x) for x in out[k]]
    out["epsilon"], out["clip_obs"] = float(out["epsilon"]), float(out["clip_obs"])
    try:
        check_obs_norm(out, n)
    except ValueError as e:
        raise ExportError(f"obs_norm: {e}") from None
    return out


def _versions(algo_module: str) -> dict[str, str]:
    import gymnasium
    import safetensors
    import stable_baselines3

    import metasched

    out = {
        "metasched": metasched.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }
    if algo_module.startswith("sb3_contrib"):
        import sb3_contrib

        out["sb3_contrib"] = sb3_contrib.__version__
    return out


def export_model(
    model: Any,
    path: str | os.PathLike[str],
    *,
    env_id: str,
    env_kwargs: dict[str, Any],
    obs_norm: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a trained SB3 / sb3-contrib ``model`` to the ``.msched`` file ``path``.

    Args:
        model: a trained PPO, A2C, DQN, SAC, TD3 or RecurrentPPO model (MLP policies).
        path: output file; written atomically (temp file, fsync, rename).
        env_id: the Gymnasium id the agent was trained on.
        env_kwargs: the env's keyword arguments; registered defaults fill in the rest, and
            the result must contain ``action``, ``budget``, ``steps_per_action``,
            ``lr_range``, ``init_lr``, ``clip`` and ``kappa``.
        obs_norm: ``None`` or ``{"mean", "var", "epsilon", "clip_obs"}`` of the
            ``VecNormalize`` used in training (see :func:`obs_norm_from_vecnormalize`; a
            ``VecNormalize`` itself is accepted too).
        extra: optional JSON data stored under the header's ``extra`` key.

    Returns:
        The path written.

    Raises:
        ExportError: naming the unsupported policy, layer or feature extractor, or the bad
            argument.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ExportError(f"env_id must be a Gymnasium id, got {env_id!r}")
    if not isinstance(env_kwargs, dict):
        raise ExportError(f"env_kwargs must be a dict, got {type(env_kwargs).__name__}")
    algo, spec, head = _convert(model)
    observation = _observation_spec(model.observation_space)
    kwargs = _resolved_env_kwargs(env_id, env_kwargs)
    missing = [k for k in REQUIRED_ENV_KWARGS if k not in kwargs]
    if missing:
        raise ExportError(f"env_kwargs of {env_id!r} lack {', '.join(map(repr, missing))}")
    steps = kwargs["steps_per_action"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ExportError(f"env_kwargs['steps_per_action'] must be a positive int, got {steps!r}")
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": algo,
        "env_id": env_id,
        "env_kwargs": kwargs,
        "decision_interval": steps,
        "observation": observation,
        "action": _action_spec(model.action_space, kwargs["action"]),
        "network": {"input_dim": observation["shape"][0], "layers": spec.layers, "head": head},
        "obs_norm": _header_obs_norm(obs_norm, observation["shape"][0]),
        "versions": _versions(type(model).__module__),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "extra": _json_value(extra or {}, "extra"),
    }
    return write_policy(path, spec.tensors, header)
