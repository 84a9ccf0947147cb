"""Registration of metasched's Gymnasium environments (runs when ``metasched`` is imported)."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__all__ = ["ENV_IDS", "env_defaults", "register_envs"]

_ENTRY = "metasched.envs.lr_control:LRControlEnv"
#: LR range of the neural-network envs, as multiples of the family's reference LR.
_NN_LR_RANGE = (0.01, 20.0)

_SPECS = [
    {
        "id": "metasched/NMF-v0",
        "entry_point": _ENTRY,
        "kwargs": {"family": "nmf"},
    },
    # neural-network families: budget and decision interval chosen so that a tuned cosine
    # beats the best tuned constant LR (benchmarks/scheduling_matters_nn.py)
    {
        "id": "metasched/MLP-v0",
        "entry_point": _ENTRY,
        "kwargs": {"family": "mlp", "budget": 800, "steps_per_action": 40},
    },
    {
        "id": "metasched/MNIST1D-v0",
        "entry_point": _ENTRY,
        "kwargs": {"family": "mnist1d", "budget": 1000, "steps_per_action": 50},
    },
    {
        "id": "metasched/CNN-v0",  # Fashion-MNIST (an evaluation env: ~100 inner steps/s)
        "entry_point": _ENTRY,
        "kwargs": {"family": "fashion", "budget": 400, "steps_per_action": 40},
    },
    {
        "id": "metasched/CharLM-v0",  # an evaluation env: tens of inner steps/s
        "entry_point": _ENTRY,
        "kwargs": {"family": "charlm", "budget": 2000, "steps_per_action": 100},
    },
    {
        "id": "metasched/Mixed-v0",  # episodes drawn from nmf, mlp and mnist1d
        "entry_point": _ENTRY,
        "kwargs": {"family": "mixed", "budget": 1000, "steps_per_action": 50},
    },
]
for _spec in _SPECS[1:]:
    _spec["kwargs"].setdefault("lr_range", _NN_LR_RANGE)

ENV_IDS: tuple[str, ...] = tuple(spec["id"] for spec in _SPECS)


def env_defaults(family: str) -> tuple[int, int, tuple[float, float]]:
    """Return ``(budget, decision interval, LR range)`` of the registered env of ``family``.

    Families without an env of their own get ``LRControlEnv``'s defaults.
    """
    budget, interval, lr_range = 2000, 50, (1e-3, 64.0)
    for spec in _SPECS:
        kw = spec["kwargs"]
        if kw["family"] == family:
            budget = int(kw.get("budget", budget))
            interval = int(kw.get("steps_per_action", interval))
            lo, hi = kw.get("lr_range", lr_range)
            lr_range = (float(lo), float(hi))
    return budget, interval, lr_range


def register_envs() -> None:
    """Register every metasched env id with Gymnasium (idempotent)."""
    for spec in _SPECS:
        if spec["id"] not in registry:
            register(**spec)
