"""Actions of the LR-control MDP: how an agent's action changes the learning rate.

Shared by the Gymnasium envs and the learned scheduler (which replays an exported policy
outside any env), so an action means the same LR change everywhere.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["ACTION_MODES", "DISCRETE_FACTORS", "ActionMode", "action_to_lr"]

ActionMode = Literal["discrete3", "discrete5", "continuous", "absolute"]
ACTION_MODES: tuple[str, ...] = ("discrete3", "discrete5", "continuous", "absolute")
#: Multiplicative LR changes of the discrete action modes (discrete3 = the probe's arms).
DISCRETE_FACTORS: dict[str, tuple[float, ...]] = {
    "discrete3": (0.5, 1.0, 2.0),
    "discrete5": (0.5, 0.8, 1.0, 1.25, 2.0),
}


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
