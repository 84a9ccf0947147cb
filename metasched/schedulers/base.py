"""The scheduler protocol, its base class, JSON-safe state helpers and the registry.

Every scheduler — fixed, reactive, search-based or learned — is driven the same way::

    lr = sched.reset(base_lr)          # LR for the first decision interval
    for each interval:
        signal = <train one interval at lr>
        lr = sched.step(signal)        # LR for the next interval

``base_lr`` may be one float or one per parameter group. Schedulers compute the LR of the
first (reference) group; other groups follow in proportion to their base LR unless the
scheduler keeps per-group state itself (GreedyLR does, for its per-group bounds).

State (:meth:`Scheduler.state_dict`) is plain JSON data — no ``inf``/``nan`` literals, no
pickles — and holds the hyperparameters too, so ``load_state_dict`` into a fresh instance
resumes the identical trajectory.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from metasched.errors import ConfigError, UnknownNameError, did_you_mean
from metasched.loop import Driver, IntervalInfo
from metasched.signal import TrainingSignal

__all__ = [
    "SCHEDULERS",
    "STATE_VERSION",
    "Scheduler",
    "decode_float",
    "encode_float",
    "make_scheduler",
    "register",
    "scheduler_from_state",
]

#: Version of the ``state_dict`` layout; bumped when it changes incompatibly.
STATE_VERSION = 1

#: Registry of scheduler classes by name (filled by :func:`register`).
SCHEDULERS: dict[str, type[Scheduler]] = {}

S = TypeVar("S", bound="type[Scheduler]")


def encode_float(x: float) -> float | str:
    """Return ``x`` as strict-JSON data (``inf``/``-inf``/``nan`` become strings)."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def decode_float(x: float | str) -> float:
    """Inverse of :func:`encode_float`."""
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"not an encoded float: {x!r}")
        return float(x)
    return float(x)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and positive (or zero), else raise."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
    if not ok or value < 0 or (value == 0 and not allow_zero):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {need} finite number, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming both."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def _as_lr_list(base_lr: float | Sequence[float]) -> list[float]:
    if isinstance(base_lr, numbers.Real):
        values: list[Any] = [base_lr]
    elif isinstance(base_lr, Sequence) and not isinstance(base_lr, str | bytes):
        values = list(base_lr)
    else:
        raise ValueError(f"base_lr must be a number or a sequence of numbers, got {base_lr!r}")
    if not values:
        raise ValueError("base_lr must be a number or a non-empty sequence of numbers")
    for v in values:
        check_positive("base_lr", v, allow_zero=True)
    return [float(v) for v in values]


class Scheduler(abc.ABC):
    """Base class of every learning-rate scheduler (see the module docstring).

    Subclasses set :attr:`name`, store their validated hyperparameters with
    :meth:`_set_config`, and implement :meth:`_reset` and :meth:`_step` (scalar LR of the
    reference group). Dynamic state goes through :meth:`_get_state`/:meth:`_set_state`.
    """

    #: Registry name.
    name: ClassVar[str] = ""
    #: ``step`` reads the loss of the signal (GreedyLR, learned policies).
    needs_loss: ClassVar[bool] = False
    #: The schedule is placed relative to the run's length (``signal.budget``), so a plain
    #: training loop must say how long the run is (``TorchLRScheduler(total_steps=...)``).
    #: A schedule declares it as a class attribute; one whose need depends on its options
    #: (lengths as fractions of the run or as step counts) sets it per instance in
    #: ``__init__``. With it False, the scheduler also works when the budget is unknown
    #: (``signal.budget == 0``).
    needs_budget: bool = False
    #: How to configure the schedule so that it needs no run length (named in the error a
    #: plain loop without ``total_steps`` gets); empty when there is no such configuration.
    budget_free_hint: ClassVar[str] = ""
    #: The scheduler trains the inner task itself (forks it); run it with the runner.
    drives_training: ClassVar[bool] = False
    #: The LR is a fixed function of the step: :meth:`lr_at` gives it in closed form.
    open_loop: ClassVar[bool] = False
    #: ``step`` reads ``signal.grad_norm`` (the torch adapter then measures it).
    needs_grad_norm: ClassVar[bool] = False
    #: Inner steps per decision the scheduler was designed for (None: any).
    decision_interval: int | None = None

    def __init__(self) -> None:
        self._config: dict[str, Any] = {}
        self.base_lrs: list[float] = []
        self._lr: float = math.nan
        self.initial_signal: TrainingSignal | None = None

    # -- hyperparameters -----------------------------------------------------------------
    def _set_config(self, **config: Any) -> None:
        self._config = dict(config)

    @property
    def config(self) -> dict[str, Any]:
        """The hyperparameters this scheduler was built with (JSON data)."""
        return dict(self._config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    # -- the protocol --------------------------------------------------------------------
    def reset(
        self, base_lr: float | Sequence[float], signal: TrainingSignal | None = None
    ) -> float:
        """Start a new run from ``base_lr`` (one float, or one per parameter group).

        ``signal`` is the step-0 record (initial loss, stability bound) when the caller has
        one — the runner does; a plain training loop does not. Schedulers that choose the
        first LR from the state at initialisation (learned policies) read it.

        Returns the LR of the first decision interval (reference group).
        """
        if signal is not None and not isinstance(signal, TrainingSignal):
            raise TypeError(f"signal must be a TrainingSignal, got {type(signal).__name__}")
        self.initial_signal = signal
        self.base_lrs = _as_lr_list(base_lr)
        self._lr = float(self._reset(self.base_lrs[0]))
        return self._lr

    def step(self, signal: TrainingSignal) -> float:
        """Observe what happened in the last interval; return the LR for the next one."""
        if not self.base_lrs:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset(base_lr)")
        if not isinstance(signal, TrainingSignal):
            raise TypeError(f"step() takes a TrainingSignal, got {type(signal).__name__}")
        self._lr = float(self._step(signal))
        return self._lr

    @property
    def lr(self) -> float:
        """The current LR of the reference group (``nan`` before :meth:`reset`)."""
        return self._lr

    @property
    def lrs(self) -> list[float]:
        """The current LR of every parameter group."""
        ref = self.base_lrs[0] if self.base_lrs else 0.0
        if ref > 0:
            return [self._lr * b / ref for b in self.base_lrs]
        return [self._lr] * max(1, len(self.base_lrs))

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return the closed interval every LR of a run started at ``base_lr`` stays in."""
        return (0.0, math.inf)

    @property
    def extra_steps(self) -> int:
        """Inner steps spent off the main line so far (probes, forks); 0 for most."""
        return 0

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one decision interval through ``driver`` (schedulers that drive training).

        Schedulers that only observe never need this: the runner trains at :attr:`lr`.
        """
        if not self.drives_training:
            return driver.advance(self._lr)
        raise NotImplementedError(f"{type(self).__name__} drives training but has no advance()")

    @abc.abstractmethod
    def _reset(self, base_lr: float) -> float:
        """Reset dynamic state; return the first LR."""

    @abc.abstractmethod
    def _step(self, signal: TrainingSignal) -> float:
        """Update dynamic state from ``signal``; return the next LR."""

    # -- state ---------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        """Dynamic state beyond the LR and base LRs, as JSON data."""
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Inverse of :meth:`_get_state`."""

    def state_dict(self) -> dict[str, Any]:
        """Return the full state (hyperparameters included) as strict-JSON data."""
        return {
            "scheduler": self.name,
            "version": STATE_VERSION,
            "config": self.config,
            "base_lrs": list(self.base_lrs),
            "lr": encode_float(self._lr),
            "state": self._get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict` (of a scheduler of the same kind)."""
        if not isinstance(state, dict) or "scheduler" not in state:
            raise ValueError("not a scheduler state_dict (no 'scheduler' key)")
        if state["scheduler"] != self.name:
            raise ValueError(
                f"state_dict is for scheduler {state['scheduler']!r}, not {self.name!r}"
            )
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"state_dict version {state.get('version')!r} is not supported "
                f"(this metasched writes version {STATE_VERSION})"
            )
        type(self).__init__(self, **state["config"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._lr = decode_float(state["lr"])
        self._set_state(state["state"])


def register(cls: S) -> S:
    """Class decorator adding a scheduler class to :data:`SCHEDULERS` under its name."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    SCHEDULERS[cls.name] = cls
    return cls


def _options(cls: type[Scheduler]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is p.KEYWORD_ONLY]


def make_scheduler(name: str, **kwargs: Any) -> Scheduler:
    """Build the scheduler registered as ``name`` with hyperparameters ``kwargs``.

    Unknown names raise :class:`~metasched.errors.UnknownNameError` and unknown options
    :class:`~metasched.errors.ConfigError`, both with the closest valid choice.

    Example:
        >>> make_scheduler("cosine", min_ratio=0.1)
        CosineSchedule(warmup=0, min_ratio=0.1)
    """
    if name not in SCHEDULERS:
        raise UnknownNameError(did_you_mean(str(name), SCHEDULERS, "scheduler"))
    cls = SCHEDULERS[name]
    options = _options(cls)
    for key in kwargs:
        if key not in options:
            raise ConfigError(did_you_mean(key, options, f"option of scheduler {name!r}:"))
    return cls(**kwargs)


def scheduler_from_state(state: dict[str, Any]) -> Scheduler:
    """Rebuild a scheduler from its :meth:`~Scheduler.state_dict` alone."""
    if not isinstance(state, dict) or "scheduler" not in state:
        raise ValueError("not a scheduler state_dict (no 'scheduler' key)")
    sched = make_scheduler(state["scheduler"], **state.get("config", {}))
    sched.load_state_dict(state)
    return sched
