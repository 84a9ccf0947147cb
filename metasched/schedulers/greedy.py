"""GreedyLR: raise the LR while the loss keeps improving, lower it while it does not.

A reactive, loss-driven scheduler. It counts consecutive improving ("good") and
non-improving ("bad") decision intervals; once either streak is longer than ``patience`` the
LR of every parameter group is divided or multiplied by ``factor``, within per-group bounds.
Optional moving-average smoothing of the metric, hold-offs after each change and an
automatic restart when the LR has been stuck at its floor complete the rule set.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from metasched.schedulers.base import (
    Scheduler,
    check_choice,
    check_int,
    check_positive,
    decode_float,
    encode_float,
    register,
)
from metasched.signal import LossSource, TrainingSignal

__all__ = ["GreedyLR"]


def _check_bound(name: str, value: Any) -> float | list[float]:
    """Validate ``min_lr``/``max_lr``: one non-negative float, or a non-empty list of them."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{name} must be a number or a non-empty list, got {value!r}")
        return [check_positive(f"{name}[{i}]", v, allow_zero=True) for i, v in enumerate(value)]
    return check_positive(name, value, allow_zero=True)


def _per_group(name: str, value: float | list[float], n_groups: int) -> list[float]:
    """Expand a bound to one value per parameter group (lists must already match)."""
    if isinstance(value, list):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} has {len(value)} values but reset() was given {n_groups} "
                f"parameter group(s); give one value, or exactly one per group"
            )
        return list(value)
    return [value] * n_groups


def _check_order(min_lrs: Sequence[float], max_lrs: Sequence[float]) -> None:
    for i, (lo, hi) in enumerate(zip(min_lrs, max_lrs, strict=True)):
        if lo > hi:
            raise ValueError(f"min_lr must be <= max_lr for every group; group {i}: {lo} > {hi}")


@register
class GreedyLR(Scheduler):
    """Greedy adaptive LR: grow it on an improvement streak, shrink it on a stagnation streak.

    After every decision interval the metric (a loss of the :class:`TrainingSignal`, see
    ``loss_source``) is compared with the best value seen so far. A step is *good* when it
    beats the best by more than ``threshold`` and *bad* otherwise; non-finite metrics are
    always bad. When strictly more than ``patience`` consecutive steps are good, every group's
    LR is divided by ``factor`` (capped at its ``max_lr``) and evaluation pauses for ``warmup``
    steps; when strictly more than ``patience`` consecutive steps are bad, every group's LR is
    multiplied by ``factor`` (floored at its ``min_lr``) and evaluation pauses for
    ``cooldown`` steps. During a pause both streak counters are held at zero. Once every group
    sits at its ``min_lr``, each further decrease counts down a restart counter; when
    ``reset_start`` such decreases have happened without an increase in between, the whole
    state (LRs, best metric, counters, smoothing window) returns to its initial values; the
    decrease that triggered the restart still starts its ``cooldown`` pause afterwards.

    The rules, option names and defaults follow the semantics of the ``GreedyLR`` scheduler
    of Hugging Face transformers. Groups start at their base LRs, which are not clamped into
    ``[min_lr, max_lr]``; an LR outside its bounds only moves back towards them.

    References:
        A. Subramanian and S. Ganapathiraman, "Zeroth Order GreedyLR: An Adaptive Learning
        Rate Scheduler for Deep Neural Network Training", PRML 2023.

        "GreedyLR: A Novel Adaptive Learning Rate Scheduler", arXiv:2512.14527.

    Args:
        mode: ``"min"`` (default) when a lower metric is better, ``"max"`` when higher is.
        factor: multiplicative step of the LR, ``0 < factor < 1`` (default 0.95). A decrease
            multiplies by it, an increase divides by it.
        patience: a change happens after strictly more than this many consecutive good or
            bad steps (default 10).
        threshold: minimum improvement over the best metric that counts as good
            (default 1e-6).
        threshold_mode: ``"abs"`` (default) compares with ``best ∓ threshold``, ``"rel"``
            with ``best · (1 ∓ threshold)``.
        cooldown: steps without evaluation after a decrease (default 0).
        warmup: steps without evaluation after an increase (default 0).
        min_lr: lower LR bound, one float or one per parameter group (default 1e-3).
        max_lr: upper LR bound, one float or one per parameter group (default 1.0).
        eps: a group's LR changes only if it would move by more than this (default 1e-8).
        smooth: compare the mean of the last ``window_size`` metric values instead of the
            raw metric (default False).
        window_size: length of the smoothing window (default 50).
        reset_start: decreases at the floor before the automatic restart (default 500).
        loss_source: which loss of the signal is the metric: ``"auto"`` (default; the
            validation loss when present, else the training loss), ``"train"`` or ``"val"``.

    Raises:
        ValueError: for an invalid option, or (at :meth:`reset`) when a list-valued bound
            does not have one value per parameter group.

    Example:
        >>> from metasched.signal import TrainingSignal
        >>> sched = GreedyLR(patience=3)
        >>> sched.reset(0.1)
        0.1
        >>> for i, loss in enumerate([1.0, 0.9, 0.8, 0.7], start=1):
        ...     lr = sched.step(TrainingSignal(step=i, budget=100, lr=sched.lr, train_loss=loss))
        >>> lr == 0.1 / 0.95
        True
    """

    name = "greedy"
    needs_loss = True

    def __init__(
        self,
        *,
        mode: str = "min",
        factor: float = 0.95,
        patience: int = 10,
        threshold: float = 1e-6,
        threshold_mode: str = "abs",
        cooldown: int = 0,
        warmup: int = 0,
        min_lr: float | Sequence[float] = 1e-3,
        max_lr: float | Sequence[float] = 1.0,
        eps: float = 1e-8,
        smooth: bool = False,
        window_size: int = 50,
        reset_start: int = 500,
        loss_source: LossSource = "auto",
    ) -> None:
        mode = check_choice("mode", mode, ("min", "max"))
        factor = check_positive("factor", factor)
        if not factor < 1.0:
            raise ValueError(f"factor must satisfy 0 < factor < 1, got {factor!r}")
        patience = check_int("patience", patience, minimum=0)
        threshold = check_positive("threshold", threshold, allow_zero=True)
        threshold_mode = check_choice("threshold_mode", threshold_mode, ("abs", "rel"))
        cooldown = check_int("cooldown", cooldown, minimum=0)
        warmup = check_int("warmup", warmup, minimum=0)
        min_lr_v = _check_bound("min_lr", min_lr)
        max_lr_v = _check_bound("max_lr", max_lr)
        lo_list, hi_list = isinstance(min_lr_v, list), isinstance(max_lr_v, list)
        if lo_list and hi_list and len(min_lr_v) != len(max_lr_v):
            raise ValueError(
                f"min_lr and max_lr lists must have the same length, "
                f"got {len(min_lr_v)} and {len(max_lr_v)}"
            )
        n = len(min_lr_v) if lo_list else len(max_lr_v) if hi_list else 1
        _check_order(_per_group("min_lr", min_lr_v, n), _per_group("max_lr", max_lr_v, n))
        eps = check_positive("eps", eps, allow_zero=True)
        if not isinstance(smooth, bool):
            raise ValueError(f"smooth must be True or False, got {smooth!r}")
        window_size = check_int("window_size", window_size, minimum=1)
        reset_start = check_int("reset_start", reset_start, minimum=1)
        loss_source = check_choice("loss_source", loss_source, ("auto", "train", "val"))

        super().__init__()
        self._set_config(
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            threshold_mode=threshold_mode,
            cooldown=cooldown,
            warmup=warmup,
            min_lr=min_lr_v,
            max_lr=max_lr_v,
            eps=eps,
            smooth=smooth,
            window_size=window_size,
            reset_start=reset_start,
            loss_source=loss_source,
        )
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.warmup = warmup
        self.min_lr = min_lr_v
        self.max_lr = max_lr_v
        self.eps = eps
        self.smooth = smooth
        self.window_size = window_size
        self.reset_start = reset_start
        self.loss_source: LossSource = loss_source  # type: ignore[assignment]

        # Dynamic state (filled by reset / load_state_dict).
        self._min_lrs: list[float] = []
        self._max_lrs: list[float] = []
        self._lrs: list[float] = []
        self._initial_lrs: list[float] = []
        self._window: deque[float] = deque(maxlen=window_size)
        self._restart()

    # -- helpers -------------------------------------------------------------------------
    @property
    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def _restart(self) -> None:
        """Return best metric, counters and window to their initial values (not the LRs)."""
        self.best = self._worst
        self.num_good = 0
        self.num_bad = 0
        self.cooldown_counter = 0
        self.warmup_counter = 0
        self.reset_counter = self.reset_start
        self._window.clear()

    def _expand_bounds(self, n_groups: int) -> None:
        self._min_lrs = _per_group("min_lr", self.min_lr, n_groups)
        self._max_lrs = _per_group("max_lr", self.max_lr, n_groups)
        _check_order(self._min_lrs, self._max_lrs)

    def _is_better(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.mode == "min":
            if self.threshold_mode == "abs":
                return x < self.best - self.threshold
            return x < self.best * (1.0 - self.threshold)
        if self.threshold_mode == "abs":
            return x > self.best + self.threshold
        return x > self.best * (1.0 + self.threshold)

    def _increase(self) -> None:
        for i, old in enumerate(self._lrs):
            new = min(old / self.factor, self._max_lrs[i])
            if new - old > self.eps:
                self._lrs[i] = new

    def _decrease(self) -> None:
        for i, old in enumerate(self._lrs):
            new = max(old * self.factor, self._min_lrs[i])
            if old - new > self.eps:
                self._lrs[i] = new

    # -- the protocol --------------------------------------------------------------------
    @property
    def lrs(self) -> list[float]:
        """The current LR of every parameter group (kept per group by GreedyLR)."""
        return list(self._lrs) if self._lrs else super().lrs

    def _reset(self, base_lr: float) -> float:
        self._expand_bounds(len(self.base_lrs))
        self._lrs = list(self.base_lrs)
        self._initial_lrs = list(self.base_lrs)
        self._restart()
        return self._lrs[0]

    def _step(self, signal: TrainingSignal) -> float:
        x = signal.loss(self.loss_source)
        if self.smooth:
            self._window.append(x)  # the deque drops the oldest beyond window_size
            # Recomputed from the stored values, so a non-finite value stops mattering
            # as soon as it leaves the window.
            x = sum(self._window) / len(self._window)

        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_good = self.num_bad = 0
        elif self.warmup_counter > 0:
            self.warmup_counter -= 1
            self.num_good = self.num_bad = 0
        else:
            if self._is_better(x):
                self.best = x
                self.num_bad = 0
                self.num_good += 1
            else:
                self.num_bad += 1
                self.num_good = 0

            if self.num_good > self.patience:
                self._increase()
                self.warmup_counter = self.warmup
                self.num_good = 0
                self.reset_counter = self.reset_start
            elif self.num_bad > self.patience:
                self._decrease()
                at_floor = all(lr <= lo for lr, lo in zip(self._lrs, self._min_lrs, strict=True))
                if at_floor:
                    self.reset_counter -= 1
                    if self.reset_counter <= 0:
                        self._lrs = list(self._initial_lrs)
                        self._restart()
                # Set after a restart too, as in the reference: the restarted scheduler
                # holds for ``cooldown`` steps before it evaluates again.
                self.cooldown_counter = self.cooldown
                self.num_bad = 0
        return self._lrs[0]

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return the reference group's ``(min_lr, max_lr)``, widened to include ``base_lr``."""
        lo = self.min_lr[0] if isinstance(self.min_lr, list) else self.min_lr
        hi = self.max_lr[0] if isinstance(self.max_lr, list) else self.max_lr
        return (min(lo, base_lr), max(hi, base_lr))

    # -- state ---------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "best": encode_float(self.best),
            "num_good": self.num_good,
            "num_bad": self.num_bad,
            "cooldown_counter": self.cooldown_counter,
            "warmup_counter": self.warmup_counter,
            "reset_counter": self.reset_counter,
            "lrs": [encode_float(v) for v in self._lrs],
            "initial_lrs": [encode_float(v) for v in self._initial_lrs],
            "window": [encode_float(v) for v in self._window],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        if self.base_lrs:
            self._expand_bounds(len(self.base_lrs))
        self.best = decode_float(state["best"])
        self.num_good = int(state["num_good"])
        self.num_bad = int(state["num_bad"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.warmup_counter = int(state["warmup_counter"])
        self.reset_counter = int(state["reset_counter"])
        self._lrs = [decode_float(v) for v in state["lrs"]]
        self._initial_lrs = [decode_float(v) for v in state["initial_lrs"]]
        self._window = deque((decode_float(v) for v in state["window"]), maxlen=self.window_size)
