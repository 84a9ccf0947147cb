"""Registration of metasched's Gymnasium environments (runs when ``metasched`` is imported).

:func:`resolve_env_kwargs` is the one place that turns an env id and the user's overrides into
every keyword the env runs with (the entry point's defaults, then the registered spec's kwargs,
then the overrides; the LR range defaults to the task family's ``lr_range``). Training, export,
distillation and comparison all use it, so an exported policy carries the settings of the env
it was trained on.
"""

from __future__ import annotations

import inspect
from typing import Any

from gymnasium.envs.registration import register, registry

from metasched.errors import UnknownNameError, did_you_mean
from metasched.inner_tasks import TASK_FAMILIES, TaskFamily, family_lr_range

__all__ = ["ENV_IDS", "env_defaults", "register_envs", "resolve_env_kwargs"]

_ENTRY = "metasched.envs.lr_control:LRControlEnv"
# No spec sets ``lr_range``: every env takes its family's (TaskFamily.lr_range), the one place
# where it is defined.

_SPECS = [
    {
        "id": "metasched/NMF-v1",
        "entry_point": _ENTRY,
        "kwargs": {"family": "nmf"},
    },
    # neural-network families: budget and decision interval chosen so that a tuned cosine
    # beats the best tuned constant LR (benchmarks/scheduling_matters_nn.py)
    {
        "id": "metasched/MLP-v1",
        "entry_point": _ENTRY,
        "kwargs": {"family": "mlp", "budget": 800, "steps_per_action": 40},
    },
    {
        "id": "metasched/MNIST1D-v1",
        "entry_point": _ENTRY,
        "kwargs": {"family": "mnist1d", "budget": 1000, "steps_per_action": 50},
    },
    {
        "id": "metasched/CNN-v1",  # Fashion-MNIST (an evaluation env: ~100 inner steps/s)
        "entry_point": _ENTRY,
        "kwargs": {"family": "fashion", "budget": 400, "steps_per_action": 40},
    },
    {
        "id": "metasched/CharLM-v1",  # an evaluation env: tens of inner steps/s
        "entry_point": _ENTRY,
        "kwargs": {"family": "charlm", "budget": 2000, "steps_per_action": 100},
    },
    {
        "id": "metasched/Mixed-v1",  # episodes drawn from nmf, mlp and mnist1d
        "entry_point": _ENTRY,
        "kwargs": {"family": "mixed", "budget": 1000, "steps_per_action": 50},
    },
]
ENV_IDS: tuple[str, ...] = tuple(spec["id"] for spec in _SPECS)


def _json_friendly(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_friendly(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_friendly(v) for k, v in value.items()}
    return value


def _entry_defaults(entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        from gymnasium.envs.registration import load_env_creator

        entry = load_env_creator(entry)
    try:
        params = inspect.signature(entry).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return {}
    return {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "split") and p.default is not inspect.Parameter.empty
    }


def _fill_lr_range(out: dict[str, Any]) -> dict[str, Any]:
    family = out.get("family")
    if out.get("lr_range") is None and isinstance(family, str | TaskFamily):
        out["lr_range"] = list(family_lr_range(family))
    return out


def resolve_env_kwargs(env_id: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return every keyword argument (but ``split``) the env ``env_id`` runs with.

    Precedence, lowest first: the entry point's signature defaults, the registered spec's
    ``kwargs``, then ``overrides``; an ``lr_range`` left unset is the family's
    (:attr:`~metasched.inner_tasks.base.TaskFamily.lr_range`). Tuples become lists, so the
    result is JSON data as a policy file stores it.

    Raises:
        UnknownNameError: ``env_id`` is not registered (with the closest metasched id).

    Example:
        >>> kw = resolve_env_kwargs("metasched/MLP-v1", {"action": "discrete5"})
        >>> kw["family"], kw["budget"], kw["steps_per_action"], kw["lr_range"], kw["action"]
        ('mlp', 800, 40, [0.01, 20.0], 'discrete5')
    """
    import metasched  # noqa: F401 - registers the metasched env ids

    spec = registry.get(env_id)
    if spec is None:
        raise UnknownNameError(did_you_mean(str(env_id), ENV_IDS, "environment"))
    out = _entry_defaults(spec.entry_point)
    out.update(spec.kwargs or {})
    out.update(overrides or {})
    return _json_friendly(_fill_lr_range(out))


def env_defaults(family: str) -> tuple[int, int, tuple[float, float]]:
    """Return ``(budget, decision interval, LR range)`` of the registered env of ``family``.

    Families without an env of their own get ``LRControlEnv``'s defaults and their own
    ``lr_range``.
    """
    ids = [s["id"] for s in _SPECS if s["kwargs"]["family"] == family]
    if ids:
        kw = resolve_env_kwargs(ids[0])
    else:
        if family not in TASK_FAMILIES:
            raise UnknownNameError(did_you_mean(str(family), TASK_FAMILIES, "task family"))
        kw = _fill_lr_range({**_entry_defaults(_ENTRY), "family": family})
    lo, hi = kw["lr_range"]
    return int(kw["budget"]), int(kw["steps_per_action"]), (float(lo), float(hi))


def register_envs() -> None:
    """Register every metasched env id with Gymnasium (idempotent)."""
    for spec in _SPECS:
        if spec["id"] not in registry:
            register(**spec)
