"""Classic open-loop learning-rate schedules: fixed functions of the step and the budget.

Notation: ``t`` is the number of inner optimizer steps done so far, ``T`` the budget (total
inner steps of the run) and ``b`` the base LR of the reference parameter group.

Every schedule is written once, as its closed form ``lr(t, T, b)`` (:meth:`_value`), and
used in two ways that therefore agree exactly:

* :meth:`~_OpenLoopSchedule.lr_at` — the closed form as a pure function;
* the stepwise form driven through the :class:`~metasched.schedulers.base.Scheduler`
  protocol, whose only state is a clock and the budget of the run. ``reset(b)`` returns the
  LR at ``t = 0`` (which never depends on the budget, since the budget is not known yet) and
  each ``step(signal)`` advances the clock by ``signal.interval_steps``, reads the budget from
  ``signal.budget`` and returns the closed form at the new clock position.

Configurations are budget-relative where that makes sense, so one configuration travels
between tasks of different LR scales and budgets. Options that are lengths or positions
(``warmup``, ``milestones``, ``half_cycle``, ``first_cycle``) accept either a float fraction
of the budget in (0, 1), rounded to the nearest step but at least 1, or an int number of
steps >= 1 (``warmup`` also accepts 0). Past the budget (``t > T``) budget-relative decays
keep their final value and periodic schedules (cyclic, sgdr) keep cycling.

A schedule configured only in step counts does not need the budget at all, like torch's
``StepLR``/``MultiStepLR``, ``ExponentialLR`` and ``CyclicLR``: ``constant``, ``step`` with
int ``milestones``, ``exponential`` with ``gamma``, ``cyclic`` with an int ``half_cycle`` and
``sgdr`` with an int ``first_cycle``. Their :attr:`~Scheduler.needs_budget` is False and
they accept ``signal.budget == 0`` (budget unknown: a plain torch loop without
``total_steps``). Every other configuration has ``needs_budget`` True.

Example:
    >>> from metasched.schedulers.classic import StepSchedule
    >>> sched = StepSchedule(milestones=(0.5, 0.75), gamma=0.1)
    >>> [round(sched.lr_at(t, 100, base_lr=1.0), 12) for t in (0, 49, 50, 74, 75)]
    [1.0, 1.0, 0.1, 0.1, 0.01]
"""

from __future__ import annotations

import abc
import math
import numbers
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

from metasched.schedulers.base import (
    Scheduler,
    check_choice,
    check_int,
    check_positive,
    register,
)
from metasched.signal import TrainingSignal

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "CyclicSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "OneCycleSchedule",
    "SGDRSchedule",
    "StepSchedule",
    "WSDSchedule",
]

#: Warmup starts at ``WARMUP_START * b`` at ``t = 0`` and rises linearly to ``b`` at
#: ``t = warmup``; a fixed factor keeps the first LR independent of the budget.
WARMUP_START = 0.01


# -- validation helpers --------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_index(name: str, value: Any, *, minimum: int) -> int:
    """Like :func:`check_int`, also accepting integer types such as numpy's."""
    return check_int(name, int(value) if _is_int(value) else value, minimum=minimum)


def _check_length(name: str, value: Any, *, allow_zero: bool = False) -> int | float:
    """Validate a length option: a fraction of the budget in (0, 1) or a step count >= 1."""
    if _is_int(value):
        if int(value) >= 1 or (allow_zero and int(value) == 0):
            return int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        x = float(value)
        if 0.0 < x < 1.0:
            return x
        if allow_zero and x == 0.0:
            return 0
    zero = "0, " if allow_zero else ""
    raise ValueError(
        f"{name} must be {zero}a fraction of the budget in (0, 1) or an int number of "
        f"steps >= 1, got {value!r}"
    )


def _resolve(value: int | float, budget: int) -> int:
    """Return the steps of a length option: ints as given, fractions rounded (>= 1)."""
    if isinstance(value, int):
        return value
    if budget < 1:  # a schedule with a fractional length that did not set needs_budget
        raise ValueError(f"a length of {value!r} (a fraction of the run) needs the budget")
    return max(1, math.floor(value * budget + 0.5))


def _check_fraction(name: str, value: Any, *, zero_ok: bool, one_ok: bool) -> float:
    """Validate a ratio in [0, 1] (ends included as requested)."""
    x = check_positive(name, value, allow_zero=zero_ok)
    if x > 1.0 or (x == 1.0 and not one_ok):
        raise ValueError(f"{name} must be {'<=' if one_ok else '<'} 1, got {value!r}")
    return x


def _check_factor(name: str, value: Any) -> float:
    """Validate a division factor >= 1."""
    x = check_positive(name, value)
    if x < 1.0:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return x


# -- shared machinery ----------------------------------------------------------------------
class _OpenLoopSchedule(Scheduler):
    """Common protocol plumbing of the classic schedules (not registered itself).

    Subclasses provide the closed form (:meth:`_value`), the budget checks
    (:meth:`_validate_budget`) and the lower bound as a fraction of ``b``
    (:meth:`_floor_ratio`). This class keeps the clock ``t`` and the budget of the run, the
    whole state of the stepwise form (states written by older versions, which also held
    per-schedule counters, load too: the extra keys are ignored).
    """

    open_loop = True

    def __init__(self) -> None:
        super().__init__()
        self._t = 0
        self._budget: int | None = None

    # -- public --------------------------------------------------------------------------
    def lr_at(self, step: int, budget: int, base_lr: float | None = None) -> float:
        """Return the LR after ``step`` inner steps of a run of ``budget`` steps.

        This is the closed form of the schedule: a pure function of its arguments, equal
        to what the stepwise form returns once its clock reaches ``step``.

        Args:
            step: inner steps done so far (``t >= 0``).
            budget: total inner steps of the run (``T >= 1``).
            base_lr: base LR ``b``; defaults to the reference base LR given to ``reset``.

        Raises:
            ValueError: bad arguments, no base LR known, or an option that does not fit
                ``budget`` (e.g. a warmup at least as long as the budget).
        """
        t = _check_index("step", step, minimum=0)
        T = _check_index("budget", budget, minimum=1)
        if base_lr is None:
            if not self.base_lrs:
                raise ValueError(
                    f"{type(self).__name__}.lr_at() needs base_lr: pass it or call "
                    "reset(base_lr) first"
                )
            b = self.base_lrs[0]
        else:
            b = check_positive("base_lr", base_lr, allow_zero=True)
        self._validate_budget(T)
        return self._clip(self._value(t, T, b), b)

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return the closed interval every LR of a run started at ``base_lr`` stays in."""
        b = float(base_lr)
        return (b * self._floor_ratio(), b)

    # -- protocol ------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        self._t = 0
        self._budget = None
        return self._clip(self._lr0(base_lr), base_lr)

    def _step(self, signal: TrainingSignal) -> float:
        if signal.budget == 0 and not self.needs_budget:
            # Budget unknown, and not needed: every length option is a step count, which
            # resolves without it (the value passed below is never read).
            T = 0
        else:
            T = _check_index("signal.budget", signal.budget, minimum=1)
        if self._budget is None:
            if T:
                self._validate_budget(T)
            self._budget = T
        elif T != self._budget:
            raise ValueError(
                f"signal.budget changed mid-run from {self._budget} to {T}; "
                "call reset() to start a new run"
            )
        dt = _check_index("signal.interval_steps", signal.interval_steps, minimum=0)
        b = self.base_lrs[0]
        self._t += dt
        return self._clip(self._value(self._t, T, b), b)

    def _get_state(self) -> dict[str, Any]:
        return {"t": self._t, "budget": self._budget}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._t = int(state["t"])
        self._budget = None if state["budget"] is None else int(state["budget"])

    def _clip(self, lr: float, b: float) -> float:
        lo, hi = self.bounds(b)
        return min(hi, max(lo, lr))

    # -- hooks ---------------------------------------------------------------------------
    def _validate_budget(self, budget: int) -> None:
        """Raise ValueError if the options do not fit ``budget``."""

    def _lr0(self, b: float) -> float:
        """LR at ``t = 0``, before the budget is known.

        The closed form at ``t = 0`` never depends on the budget; it is evaluated for a
        one-step run. Schedules whose options may not fit one step override this.
        """
        return self._value(0, 1, b)

    @abc.abstractmethod
    def _floor_ratio(self) -> float:
        """Lowest LR of the schedule, as a fraction of ``b``."""

    @abc.abstractmethod
    def _value(self, t: int, budget: int, b: float) -> float:
        """Return the closed form (before clipping to :meth:`bounds`).

        ``budget`` is 0 when the run length is unknown, which only schedules whose
        :attr:`needs_budget` is False see (their options then resolve without it).
        """


# -- the schedules -------------------------------------------------------------------------
@register
class ConstantSchedule(_OpenLoopSchedule):
    """The constant learning rate: ``lr = b`` at every step.

    The baseline every other schedule is measured against; it has no hyperparameters.
    """

    name = "constant"

    def __init__(self) -> None:
        super().__init__()
        self._set_config()

    def _floor_ratio(self) -> float:
        return 1.0

    def _value(self, t: int, budget: int, b: float) -> float:
        return b


@register
class StepSchedule(_OpenLoopSchedule):
    """Step decay: ``lr = b * gamma**k`` with ``k`` the number of milestones ``<= t``.

    The piecewise-constant schedule of classic image-classification training (e.g. He et
    al. 2016, "Deep Residual Learning for Image Recognition": divide by 10 at fixed points).

    Args:
        milestones: where the LR drops, each a fraction of the budget in (0, 1) or an int
            step count >= 1; strictly increasing once resolved against the budget.
            Default ``(0.5, 0.75)``. Stored in the config as a list.
        gamma: factor applied at each milestone, ``0 < gamma <= 1``. Default 0.1.
    """

    name = "step"
    budget_free_hint = "milestones as int step counts"

    def __init__(
        self, *, milestones: Iterable[int | float] = (0.5, 0.75), gamma: float = 0.1
    ) -> None:
        super().__init__()
        if isinstance(milestones, str | bytes | Mapping) or not isinstance(milestones, Iterable):
            raise ValueError(
                "milestones must be a sequence of budget fractions in (0, 1) or step "
                f"counts >= 1, got {milestones!r}"
            )
        given = list(milestones)
        ms = [_check_length(f"milestones[{i}]", m) for i, m in enumerate(given)]
        for kind in (int, float):
            same = [m for m in ms if isinstance(m, kind)]
            if any(a >= c for a, c in pairwise(same)):
                raise ValueError(f"milestones must be strictly increasing, got {given!r}")
        self._milestones = ms
        self._gamma = _check_fraction("gamma", gamma, zero_ok=False, one_ok=True)
        self.needs_budget = any(isinstance(m, float) for m in ms)
        self._set_config(milestones=list(ms), gamma=self._gamma)

    def _resolved(self, budget: int) -> list[int]:
        ms = [_resolve(m, budget) for m in self._milestones]
        if any(a >= c for a, c in pairwise(ms)):
            raise ValueError(
                f"milestones={self._milestones!r} resolve to steps {ms} for budget {budget}, "
                "which are not strictly increasing"
            )
        return ms

    def _validate_budget(self, budget: int) -> None:
        self._resolved(budget)

    def _floor_ratio(self) -> float:
        return self._gamma ** len(self._milestones)

    def _lr0(self, b: float) -> float:
        return b  # every milestone resolves to a step >= 1

    def _value(self, t: int, budget: int, b: float) -> float:
        return b * self._gamma ** bisect_right(self._resolved(budget), t)


@register
class ExponentialSchedule(_OpenLoopSchedule):
    """Exponential decay, budget-relative or per step.

    By default ``lr = b * final_ratio**(min(t, T) / T)``: the LR falls geometrically from
    ``b`` to ``b * final_ratio`` at the end of the budget and stays there. With ``gamma``
    given instead, ``lr = b * gamma**t`` (the per-step decay of torch's ``ExponentialLR``;
    it keeps decaying past the budget).

    Args:
        final_ratio: ``lr(T) / b``, ``0 < final_ratio <= 1``; 0.01 when ``gamma`` is not
            given. Give either ``final_ratio`` or ``gamma``, not both.
        gamma: per-inner-step decay factor, ``0 < gamma <= 1``. Default ``None``.
    """

    name = "exponential"
    budget_free_hint = "gamma=<decay per step> instead of final_ratio"

    def __init__(self, *, final_ratio: float | None = None, gamma: float | None = None) -> None:
        super().__init__()
        if final_ratio is not None and gamma is not None:
            raise ValueError(
                "give either final_ratio or gamma, not both: got "
                f"final_ratio={final_ratio!r} and gamma={gamma!r}"
            )
        self._final: float | None = None
        self._gamma: float | None = None
        if gamma is None:
            fr = 0.01 if final_ratio is None else final_ratio
            self._final = _check_fraction("final_ratio", fr, zero_ok=False, one_ok=True)
        else:
            self._gamma = _check_fraction("gamma", gamma, zero_ok=False, one_ok=True)
        self.needs_budget = self._gamma is None
        self._set_config(final_ratio=self._final, gamma=self._gamma)

    def _floor_ratio(self) -> float:
        return 0.0 if self._final is None else self._final

    def _value(self, t: int, budget: int, b: float) -> float:
        if self._final is None:
            assert self._gamma is not None
            return b * self._gamma**t
        return b * self._final ** (min(t, budget) / budget)


class _WarmupDecay(_OpenLoopSchedule):
    """Linear warmup from ``WARMUP_START * b`` to ``b``, then a decay to the end of the budget.

    For ``t < w`` (``w`` the resolved warmup), ``lr = b * (0.01 + 0.99 * t / w)``; from
    ``t = w`` to ``T`` the subclass's decay shape ``b * _decay(s)`` with
    ``s = (t - w) / (T - w)``, and ``b * _decay(1)`` after ``T``.
    """

    needs_budget = True

    def _init_warmup(self, warmup: Any) -> int | float:
        self._warmup = _check_length("warmup", warmup, allow_zero=True)
        return self._warmup

    def _warmup_steps(self, budget: int) -> int:
        w = 0 if self._warmup == 0 else _resolve(self._warmup, budget)
        if w >= budget:
            raise ValueError(
                f"warmup={self._warmup!r} resolves to {w} steps, which is not less than "
                f"the budget {budget}"
            )
        return w

    def _validate_budget(self, budget: int) -> None:
        self._warmup_steps(budget)

    @abc.abstractmethod
    def _decay(self, s: float) -> float:
        """Decay shape after warmup at progress ``s`` in [0, 1], as a fraction of ``b``."""

    @abc.abstractmethod
    def _end_ratio(self) -> float:
        """``_decay(1)``: the final LR as a fraction of ``b``."""

    def _floor_ratio(self) -> float:
        end = self._end_ratio()
        return min(end, WARMUP_START) if self._warmup else end

    def _lr0(self, b: float) -> float:
        if self._warmup:
            return b * WARMUP_START  # the warmup line at t = 0, whatever the budget
        return b * self._decay(0.0)

    def _value(self, t: int, budget: int, b: float) -> float:
        w = self._warmup_steps(budget)
        if t < w:
            return b * (WARMUP_START + (1.0 - WARMUP_START) * t / w)
        return b * self._decay(min(1.0, (t - w) / (budget - w)))


@register
class LinearSchedule(_WarmupDecay):
    """Optional linear warmup, then linear decay from ``b`` to ``b * final_ratio`` at ``T``.

    With ``w`` the resolved warmup: ``lr = b * (0.01 + 0.99 * t / w)`` for ``t < w``, then
    ``lr = b * (final_ratio + (1 - final_ratio) * (1 - (t - w) / (T - w)))`` up to ``T`` and
    ``b * final_ratio`` after it. Warmup as in Goyal et al. 2017 ("Accurate, Large Minibatch
    SGD"); the linear decay is the common "linear to zero" schedule of transformer training.

    Args:
        warmup: 0 (default), a fraction of the budget in (0, 1) or an int number of steps;
            must resolve to fewer steps than the budget.
        final_ratio: ``lr(T) / b``, ``0 <= final_ratio <= 1``. Default 0.0.
    """

    name = "linear"

    def __init__(self, *, warmup: int | float = 0, final_ratio: float = 0.0) -> None:
        super().__init__()
        self._init_warmup(warmup)
        self._final = _check_fraction("final_ratio", final_ratio, zero_ok=True, one_ok=True)
        self._set_config(warmup=self._warmup, final_ratio=self._final)

    def _end_ratio(self) -> float:
        return self._final

    def _decay(self, s: float) -> float:
        return self._final + (1.0 - self._final) * (1.0 - s)


@register
class CosineSchedule(_WarmupDecay):
    """Optional linear warmup, then cosine annealing from ``b`` to ``b * min_ratio`` at ``T``.

    With ``w`` the resolved warmup and ``b_min = b * min_ratio``:
    ``lr = b * (0.01 + 0.99 * t / w)`` for ``t < w``, then
    ``lr = b_min + (b - b_min) * (1 + cos(pi * (t - w) / (T - w))) / 2`` up to ``T`` and
    ``b_min`` after it. Cosine annealing without restarts from Loshchilov & Hutter 2017
    ("SGDR: Stochastic Gradient Descent with Warm Restarts").

    Args:
        warmup: 0 (default), a fraction of the budget in (0, 1) or an int number of steps;
            must resolve to fewer steps than the budget.
        min_ratio: ``b_min / b``, ``0 <= min_ratio <= 1``. Default 0.0.
    """

    name = "cosine"

    def __init__(self, *, warmup: int | float = 0, min_ratio: float = 0.0) -> None:
        super().__init__()
        self._init_warmup(warmup)
        self._min = _check_fraction("min_ratio", min_ratio, zero_ok=True, one_ok=True)
        self._set_config(warmup=self._warmup, min_ratio=self._min)

    def _end_ratio(self) -> float:
        return self._min

    def _decay(self, s: float) -> float:
        return self._min + (1.0 - self._min) * 0.5 * (1.0 + math.cos(math.pi * s))


@register
class WSDSchedule(_WarmupDecay):
    """Warmup-stable-decay: optional linear warmup, a constant stage, then a final cooldown.

    With ``w`` the resolved warmup, ``c`` the resolved cooldown and ``T`` the budget: the
    warmup line ``lr = b * (0.01 + 0.99 * t / w)`` for ``t < w``, ``lr = b`` up to
    ``T - c``, then the cooldown ``lr = b * (f + (1 - f) * shape(u))`` with
    ``u = (t - (T - c)) / c`` in [0, 1] and ``f = final_ratio``, and ``b * f`` after ``T``.
    Shapes: ``"1-sqrt"`` (default) ``shape(u) = 1 - sqrt(u)``; ``"linear"``
    ``shape(u) = 1 - u``. The schedule of Hu et al. 2024 ("MiniCPM") and Hägele et al. 2024
    ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"), whose
    cooldown of 20 % of the run with the ``1-sqrt`` shape matches or beats cosine; those are
    the defaults here. The warmup defaults to 0, as for ``cosine`` and ``linear``: the
    tasks of this project start stably at their reference LR, and a warmup is one more
    option to tune (pass e.g. ``warmup=0.05`` for the usual LLM setting).

    Args:
        warmup: 0 (default), a fraction of the budget in (0, 1) or an int number of steps.
        cooldown: ``c``, a fraction of the budget in (0, 1) or an int number of steps.
            Default 0.2. Warmup and cooldown together must leave fewer steps than the budget
            unused: ``w + c <= T``.
        shape: ``"1-sqrt"`` (default) or ``"linear"``.
        final_ratio: ``lr(T) / b``, ``0 <= final_ratio <= 1``. Default 0.0.

    Example:
        >>> s = WSDSchedule(cooldown=0.2, shape="1-sqrt")
        >>> [round(s.lr_at(t, 100, base_lr=1.0), 6) for t in (0, 79, 80, 85, 100)]
        [1.0, 1.0, 1.0, 0.5, 0.0]
    """

    name = "wsd"

    def __init__(
        self,
        *,
        warmup: int | float = 0,
        cooldown: int | float = 0.2,
        shape: str = "1-sqrt",
        final_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_warmup(warmup)
        self._cooldown = _check_length("cooldown", cooldown)
        self._shape = check_choice("shape", shape, ("1-sqrt", "linear"))
        self._final = _check_fraction("final_ratio", final_ratio, zero_ok=True, one_ok=True)
        self._set_config(
            warmup=self._warmup,
            cooldown=self._cooldown,
            shape=self._shape,
            final_ratio=self._final,
        )

    def _validate_budget(self, budget: int) -> None:
        w = self._warmup_steps(budget)
        c = _resolve(self._cooldown, budget)
        if w + c > budget:
            raise ValueError(
                f"warmup={self._warmup!r} and cooldown={self._cooldown!r} resolve to {w} + {c} "
                f"steps, more than the budget {budget}"
            )

    def _end_ratio(self) -> float:
        return self._final

    def _decay(self, s: float) -> float:  # only the t = 0 value is used (see _value)
        return 1.0

    def _value(self, t: int, budget: int, b: float) -> float:
        w = self._warmup_steps(budget)
        if t < w:
            return b * (WARMUP_START + (1.0 - WARMUP_START) * t / w)
        c = _resolve(self._cooldown, budget)
        start = budget - c
        if t <= start:
            return b
        u = min(1.0, (t - start) / c)
        drop = math.sqrt(u) if self._shape == "1-sqrt" else u
        return b * (self._final + (1.0 - self._final) * (1.0 - drop))


@register
class CyclicSchedule(_OpenLoopSchedule):
    """Triangular cyclical learning rate between ``b * min_ratio`` and ``b``.

    Smith 2017 ("Cyclical Learning Rates for Training Neural Networks"). Each cycle lasts
    ``2 h`` steps (``h`` the resolved ``half_cycle``): it starts at the low end
    ``b_lo = b * min_ratio``, rises linearly to the top at ``h`` and falls back by ``2 h``.
    With ``c`` the index of the cycle and ``p`` the position in it,
    ``lr = b_lo + A_c * (p / h if p <= h else (2 h - p) / h)`` where the amplitude
    ``A_c = b - b_lo`` ("triangular") or ``(b - b_lo) / 2**c`` ("triangular2", halved every
    full cycle). The schedule keeps cycling past the budget.

    Args:
        min_ratio: ``b_lo / b``, ``0 < min_ratio < 1``. Default 0.1.
        half_cycle: ``h``, a fraction of the budget in (0, 1) or an int number of steps.
            Default 0.125 (four full cycles per budget).
        mode: ``"triangular"`` (default) or ``"triangular2"``.
    """

    name = "cyclic"
    budget_free_hint = "half_cycle as an int step count"

    def __init__(
        self,
        *,
        min_ratio: float = 0.1,
        half_cycle: int | float = 0.125,
        mode: str = "triangular",
    ) -> None:
        super().__init__()
        self._min = _check_fraction("min_ratio", min_ratio, zero_ok=False, one_ok=False)
        self._half = _check_length("half_cycle", half_cycle)
        self._mode = check_choice("mode", mode, ("triangular", "triangular2"))
        self.needs_budget = isinstance(self._half, float)
        self._set_config(min_ratio=self._min, half_cycle=self._half, mode=self._mode)

    def _floor_ratio(self) -> float:
        return self._min

    def _value(self, t: int, budget: int, b: float) -> float:
        half = _resolve(self._half, budget)
        cycle, pos = divmod(t, 2 * half)
        rise = pos / half if pos <= half else (2 * half - pos) / half
        amplitude = 1.0 - self._min
        if self._mode == "triangular2":
            amplitude *= 0.5**cycle
        return b * (self._min + amplitude * rise)


@register
class SGDRSchedule(_OpenLoopSchedule):
    """Cosine annealing with warm restarts (SGDR).

    Loshchilov & Hutter 2017 ("SGDR: Stochastic Gradient Descent with Warm Restarts").
    Cycle ``i`` lasts ``T_i = T_0 * t_mult**i`` steps (``T_0`` the resolved
    ``first_cycle``) and starts at the peak ``b_i = b * max(decay**i, min_ratio)``; within
    it, at position ``p``, ``lr = b_min + (b_i - b_min) * (1 + cos(pi * p / T_i)) / 2`` with
    the floor ``b_min = b * min_ratio`` (not decayed; once the decayed peak would fall below
    it, the LR stays at the floor). The LR jumps back to the peak at the start of each
    cycle and the schedule keeps cycling past the budget.

    Args:
        first_cycle: ``T_0``, a fraction of the budget in (0, 1) or an int number of steps.
            Default 0.1.
        t_mult: integer growth factor of the cycle length, >= 1. Default 2.
        min_ratio: ``b_min / b``, ``0 <= min_ratio <= 1``. Default 0.0.
        decay: factor applied to the peak at each restart, ``0 < decay <= 1``. Default 1.0.
    """

    name = "sgdr"
    budget_free_hint = "first_cycle as an int step count"

    def __init__(
        self,
        *,
        first_cycle: int | float = 0.1,
        t_mult: int = 2,
        min_ratio: float = 0.0,
        decay: float = 1.0,
    ) -> None:
        super().__init__()
        self._first = _check_length("first_cycle", first_cycle)
        self._mult = _check_index("t_mult", t_mult, minimum=1)
        self._min = _check_fraction("min_ratio", min_ratio, zero_ok=True, one_ok=True)
        self._decay = _check_fraction("decay", decay, zero_ok=False, one_ok=True)
        self.needs_budget = isinstance(self._first, float)
        self._set_config(
            first_cycle=self._first, t_mult=self._mult, min_ratio=self._min, decay=self._decay
        )

    def _floor_ratio(self) -> float:
        return self._min

    def _locate(self, t: int, budget: int) -> tuple[int, int, int]:
        """Return ``(cycle, position in it, its length)`` at step ``t``."""
        first, k = _resolve(self._first, budget), self._mult
        if k == 1:
            cycle, pos = divmod(t, first)
            return cycle, pos, first

        def start(i: int) -> int:  # cycles 0..i-1 take first * (k**i - 1) / (k - 1) steps
            return first * (k**i - 1) // (k - 1)

        cycle = max(0, int(math.log(t * (k - 1) / first + 1.0, k)))  # guess; made exact below
        while cycle > 0 and start(cycle) > t:
            cycle -= 1
        while start(cycle + 1) <= t:
            cycle += 1
        return cycle, t - start(cycle), first * k**cycle

    def _value(self, t: int, budget: int, b: float) -> float:
        cycle, pos, length = self._locate(t, budget)
        top = max(self._decay**cycle, self._min)
        return b * (self._min + (top - self._min) * 0.5 * (1.0 + math.cos(math.pi * pos / length)))


@register
class OneCycleSchedule(_OpenLoopSchedule):
    """The two-phase one-cycle policy; ``b`` is the peak LR.

    Smith & Topin 2019 ("Super-Convergence: Very Fast Training of Neural Networks Using
    Large Learning Rates"), in the two-phase form popularised by fast.ai and torch's
    ``OneCycleLR``. The LR starts at ``b / div_factor``, anneals up to ``b`` at
    ``s = pct_start * T``, then anneals down to ``b / (div_factor * final_div_factor)`` at
    ``T`` and stays there. Both phases use the same annealing curve: cosine
    (``end + (start - end) * (1 + cos(pi * x)) / 2``) or linear, with ``x`` the progress
    through the phase. Unlike torch, whose phases end one step early
    (``pct_start * total_steps - 1`` and ``total_steps - 1``), the peak is at ``s`` and the
    end at ``T`` exactly.

    Args:
        pct_start: ``s / T``, ``0 < pct_start < 1``. Default 0.3.
        div_factor: ``b / lr(0)``, >= 1. Default 25.0.
        final_div_factor: ``lr(0) / lr(T)``, >= 1. Default 1e4.
        anneal: ``"cos"`` (default) or ``"linear"``.
    """

    name = "onecycle"
    needs_budget = True

    def __init__(
        self,
        *,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
    ) -> None:
        super().__init__()
        self._pct = _check_fraction("pct_start", pct_start, zero_ok=False, one_ok=False)
        self._div = _check_factor("div_factor", div_factor)
        self._final_div = _check_factor("final_div_factor", final_div_factor)
        self._anneal = check_choice("anneal", anneal, ("cos", "linear"))
        self._set_config(
            pct_start=self._pct,
            div_factor=self._div,
            final_div_factor=self._final_div,
            anneal=self._anneal,
        )

    def _floor_ratio(self) -> float:
        return 1.0 / (self._div * self._final_div)

    def _curve(self, start: float, end: float, x: float) -> float:
        if self._anneal == "cos":
            return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * x))
        return end + (start - end) * (1.0 - x)

    def _value(self, t: int, budget: int, b: float) -> float:
        s = self._pct * budget
        if t <= s:
            return self._curve(b / self._div, b, t / s)
        if t < budget:
            return self._curve(b, b / (self._div * self._final_div), (t - s) / (budget - s))
        return b / (self._div * self._final_div)
