"""Registration of metasched's Gymnasium environments (runs when ``metasched`` is imported)."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__all__ = ["ENV_IDS", "register_envs"]

ENV_IDS: tuple[str, ...] = ("metasched/NMF-v0",)

_SPECS = [
    {
        "id": "metasched/NMF-v0",
        "entry_point": "metasched.envs.lr_control:LRControlEnv",
        "kwargs": {"family": "nmf"},
    },
]


def register_envs() -> None:
    """Register every metasched env id with Gymnasium (idempotent)."""
    for spec in _SPECS:
        if spec["id"] not in registry:
            register(**spec)
