"""Actions of the LR-control MDP: how an agent's action changes the learning rate.

Shared by the Gymnasium envs and the learned scheduler (which replays an exported policy
outside any env), so an action means the same LR change everywhere.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np

from metasched.errors import ConfigError

__all__ = [
    "ACTION_MODES",
    "ANNEAL_MODES",
    "DISCRETE_FACTORS",
    "ActionMode",
    "action_to_lr",
    "anneal_factor",
    "check_anneal",
]

ActionMode = Literal["discrete3", "discrete5", "continuous", "absolute"]
ACTION_MODES: tuple[str, ...] = ("discrete3", "discrete5", "continuous", "absolute")
#: Multiplicative LR changes of the discrete action modes (discrete3 = the probe's arms).
DISCRETE_FACTORS: dict[str, tuple[float, ...]] = {
    "discrete3": (0.5, 1.0, 2.0),
    "discrete5": (0.5, 0.8, 1.0, 1.25, 2.0),
}

#: Fixed shapes an agent's LR is multiplied by (``anneal`` of the envs): ``"none"`` applies the
#: agent's LR as it is; ``"wsd"`` and ``"cosine"`` multiply it by the registered schedule of
#: that name at base LR 1, with its defaults (``wsd``: 1 up to 80 % of the budget, then
#: ``1 - sqrt(u)`` over the last 20 %; ``cosine``: ``(1 + cos(pi t / T)) / 2``).
ANNEAL_MODES: tuple[str, ...] = ("none", "wsd", "cosine")


def check_anneal(anneal: Any) -> str:
    """Return ``anneal`` if it is one of :data:`ANNEAL_MODES`, else raise ``ConfigError``."""
    if not isinstance(anneal, str) or anneal not in ANNEAL_MODES:
        raise ConfigError(f"anneal must be one of {', '.join(ANNEAL_MODES)}, got {anneal!r}")
    return anneal


@functools.cache
def _anneal_schedule(anneal: str) -> Any:
    # imported here: the schedulers import this module (the learned scheduler replays actions)
    from metasched.schedulers import make_scheduler

    return make_scheduler(anneal)


def anneal_factor(anneal: str, step: Any, budget: Any) -> np.ndarray:
    """Return the multiplier of the agent's LR for an interval starting at inner step ``step``.

    With ``anneal="wsd"`` (or ``"cosine"``) the factor is that schedule's closed form
    ``lr_at(step, budget, base_lr=1)``, so an agent that never changes its LR ``b`` runs
    exactly that schedule at base LR ``b``. The agent keeps choosing the level ``b`` (instance
    by instance, as the run goes), the fixed shape anneals it. ``"none"``: 1 everywhere.
    Works on arrays of integer steps (and budgets), element-wise.

    Example:
        >>> [round(float(anneal_factor("wsd", t, 100)), 6) for t in (0, 80, 85, 95, 100)]
        [1.0, 1.0, 0.5, 0.133975, 0.0]
        >>> [round(float(anneal_factor("cosine", t, 100)), 6) for t in (0, 25, 50, 100)]
        [1.0, 0.853553, 0.5, 0.0]
    """
    t = np.asarray(step)
    if anneal == "none":
        return np.ones(t.shape)
    check_anneal(anneal)
    T = np.asarray(budget)
    if np.any(T < 1):
        raise ValueError(f"anneal={anneal!r} needs the run's budget (total steps), got {budget!r}")
    schedule = _anneal_schedule(anneal)
    t, T = np.broadcast_arrays(t, T)
    pairs = zip(t.flat, T.flat, strict=True)
    out = [schedule.lr_at(int(a), int(b), base_lr=1.0) for a, b in pairs]
    return np.array(out, dtype=np.float64).reshape(t.shape)


def action_to_lr(
    mode: str, action: Any, lr: np.ndarray, lr_min: np.ndarray, lr_max: np.ndarray
) -> np.ndarray:
    """Map actions (one per run) to new learning rates, clamped to ``[lr_min, lr_max]``.

    ``discrete*`` multiply the current LR by a factor; ``continuous`` multiplies it by
    ``2**a`` for ``a`` in [-1, 1]; ``absolute`` maps ``a`` log-linearly onto
    ``[lr_min, lr_max]``. Works on arrays so the batched env shares it.
    """
    if mode in DISCRETE_FACTORS and lr.size == 1 and isinstance(action, int | np.integer):
        factors = DISCRETE_FACTORS[mode]  # fast path of the single-instance env
        if not 0 <= action < len(factors):
            raise ValueError(
                f"invalid {mode} action {action!r}; expected integers in [0, {len(factors)})"
            )
        return np.minimum(np.maximum(lr * factors[action], lr_min), lr_max)
    a = np.asarray(action)
    if mode in DISCRETE_FACTORS:
        factors = np.asarray(DISCRETE_FACTORS[mode])
        idx = a.astype(np.int64).reshape(-1)
        if (
            idx.size != lr.size
            or np.any(idx != a.reshape(-1))
            or np.any(idx < 0)
            or np.any(idx >= factors.size)
        ):
            raise ValueError(
                f"invalid {mode} action {action!r}; expected integers in [0, {factors.size})"
            )
        new = lr * factors[idx]
    elif mode in ("continuous", "absolute"):
        x = np.asarray(a, dtype=np.float64).reshape(-1)
        if x.size != lr.size or not np.all(np.isfinite(x)):
            raise ValueError(f"invalid {mode} action {action!r}; expected finite values in [-1, 1]")
        x = np.clip(x, -1.0, 1.0)
        if mode == "continuous":
            new = lr * np.exp2(x)
        else:
            lo, hi = np.log(lr_min), np.log(lr_max)
            new = np.exp(lo + 0.5 * (x + 1.0) * (hi - lo))
    else:
        raise ValueError(f"action must be one of {', '.join(ACTION_MODES)}, got {mode!r}")
    return np.clip(new, lr_min, lr_max)
