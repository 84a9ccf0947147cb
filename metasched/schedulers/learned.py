"""A learned policy (an exported ``.msched`` file) as a scheduler.

:class:`LearnedScheduler` replays an agent trained on an LR-control env outside the env: it
rebuilds the env's observations from :class:`~metasched.signal.TrainingSignal` records with
the same :class:`~metasched.features.FeatureTracker`, normalises them with the stored
``VecNormalize`` statistics, asks the plain-torch policy
(:class:`~metasched.policyfile.PolicyFile`) for an action and maps it to the next LR with
the env's own :func:`~metasched.actions.action_to_lr`. Run through
:func:`~metasched.schedulers.run_schedule` on the env's task and seed, it requests exactly
the LRs the agent requests in the env.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import numpy as np

from metasched.actions import ACTION_MODES, ANNEAL_MODES, action_to_lr, anneal_factor
from metasched.errors import ConfigError, ExportError
from metasched.features import FEATURE_NAMES, FeatureTracker
from metasched.policyfile import load_policy
from metasched.schedulers.base import Scheduler, decode_float, encode_float, register
from metasched.signal import TrainingSignal

__all__ = ["LearnedScheduler"]

#: Reference LR the env falls back to when a task reports none (as LRControlEnv.reset).
_FALLBACK_LR_REF = 1e-2


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _encode_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_encode_nested(v) for v in x]
    return encode_float(x)


def _decode_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_decode_nested(v) for v in x]
    return decode_float(x)


@register
class LearnedScheduler(Scheduler):
    """A learned LR policy exported from an RL agent (a ``.msched`` file).

    The scheduler behaves as the agent did in its env (``metasched/NMF-v1``): the LR starts
    at ``base_lr`` and stays in ``[lr_min, lr_max] = lr_range × lr_ref`` with
    ``lr_ref = base_lr / init_lr`` (``lr_range`` and ``init_lr`` from the file's header), and
    after every decision interval the policy maps the observation to an LR change. Its
    ``decision_interval`` is the env's ``steps_per_action``; TorchLRScheduler uses it. A policy
    trained with ``anneal="wsd"`` (or ``"cosine"``) sets the level of the LR and the returned
    LR carries the env's anneal shape on top of it
    (:func:`~metasched.actions.anneal_factor`), as in training.

    The first decision depends on what :meth:`reset` is given:

    * with the step-0 signal (the runner passes it): the tracker starts from the initial
      loss, stability bound and validation loss exactly as the env's ``reset`` does, the
      policy decides at once, and ``reset`` returns the first interval's LR — as the env's
      first ``step(action)`` applies it. Replaying the env's task and seed then reproduces
      the env's requested LRs exactly (when ``base_lr`` is ``init_lr`` times the env's
      reference LR; with the default ``init_lr = 1`` that is the runner's default).
    * without it (a plain torch loop): the first interval runs at ``base_lr``, and the tracker
      starts at the first :meth:`step` from ``signal.losses[0]`` (the loss before the first
      update; ``signal.train_loss`` if the losses are not given) with the first measured
      validation loss as its reference. This one extra interval at ``base_lr`` is the only
      difference from the env.

    Args:
        path: the ``.msched`` policy file (loaded in the constructor; no pickle, no SB3).
        pretrained: the name of a policy shipped with metasched instead
            (:mod:`metasched.pretrained`); with neither, the shipped ``universal`` one.

    Raises:
        ConfigError: when both ``path`` and ``pretrained`` are given.
        ExportError: when the file is missing, corrupt or not a policy over metasched's
            LR-control observations.
    """

    name = "learned"
    needs_loss: ClassVar[bool] = True
    needs_budget = True  # the observation holds the fraction of the run used
    needs_grad_norm: ClassVar[bool] = True

    def __init__(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if path is not None and pretrained is not None:
            raise ConfigError(f"scheduler {self.name!r} takes path= or pretrained=, not both")
        if path is None:
            if not self._has_pretrained:
                raise ConfigError(f"scheduler {self.name!r} needs path=<{self._file_kind}>")
            from metasched.pretrained import DEFAULT, pretrained_path

            pretrained = DEFAULT if pretrained is None else pretrained
            path = pretrained_path(pretrained)
        try:
            where = os.fspath(path)
        except TypeError:
            raise ConfigError(f"path must be a file path, got {path!r}") from None
        self.policy = self._load_policy(where)
        self._configure(self.policy.header, where)
        if pretrained is None:
            self._set_config(path=where)
        else:
            self._set_config(pretrained=pretrained)
        self._source = where if pretrained is None else f"the pretrained {pretrained!r}"
        self._clear()

    #: Whether ``path=None`` loads a policy shipped with the package (the universal one).
    _has_pretrained: ClassVar[bool] = True

    _file_kind: ClassVar[str] = "an exported .msched policy file"

    def _load_policy(self, where: str) -> Any:
        """Load the policy object (``header``, ``checksum``, ``predict``) from ``where``."""
        return load_policy(where)

    def _configure(self, header: dict[str, Any], where: str) -> None:
        """Take the observation/action spec and the env's LR range from a policy header."""
        names = header["observation"].get("names")
        if names != list(FEATURE_NAMES):
            raise ExportError(
                f"policy file {where!r} was not trained on metasched's LR-control "
                "observations (observation.names differ)"
            )
        kwargs = header["env_kwargs"]
        try:
            lo, hi = (float(x) for x in kwargs["lr_range"])
            init_lr = float(kwargs["init_lr"])
            mode = str(kwargs["action"])
        except (KeyError, TypeError, ValueError):
            raise ExportError(
                f"policy file {where!r}: env_kwargs need 'action', 'lr_range' and 'init_lr'"
            ) from None
        if not (0 < lo <= init_lr <= hi < math.inf) or mode not in ACTION_MODES:
            raise ExportError(f"policy file {where!r}: invalid action/lr_range/init_lr")
        if mode != header["action"]["mode"]:
            raise ExportError(f"policy file {where!r}: env_kwargs.action differs from action.mode")
        anneal = kwargs.get("anneal", "none")  # files from before anneal existed: none
        if anneal not in ANNEAL_MODES:
            raise ExportError(f"policy file {where!r}: unknown env_kwargs.anneal {anneal!r}")
        self.action_mode = mode
        #: the env's fixed shape on the policy's LR (:func:`~metasched.actions.anneal_factor`)
        self.anneal = str(anneal)
        self.lr_range = (lo, hi)
        self.init_lr = init_lr
        self.decision_interval: int | None = int(header["decision_interval"])
        #: the clip mode of the training env (``"none"`` when the header has none)
        self.trained_clip = str(kwargs.get("clip", "none"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LearnedScheduler:
        """Build the scheduler of the policy file ``path``."""
        return cls(path=path)

    @classmethod
    def pretrained(cls, name: str = "universal") -> LearnedScheduler:
        """Build the scheduler of a policy shipped with metasched (see :mod:`metasched.pretrained`).

        ``universal`` (the default) was meta-trained on the nmf, mlp and mnist1d families and
        is the one ``make_scheduler("learned")`` and ``TorchLRScheduler(opt, "learned")`` load.
        """
        return cls(pretrained=name)

    @property
    def decisions_per_run(self) -> int | None:
        """Decisions per episode of the env the policy was trained on (budget / interval).

        ``None`` when the file's header does not record the env's budget.
        """
        kwargs = self.policy.header["env_kwargs"]
        try:
            return max(1, int(kwargs["budget"]) // int(kwargs["steps_per_action"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    #: When a list, every decision appends ``(observation, action)`` to it (distillation).
    recorder: list[tuple[np.ndarray, np.ndarray]] | None = None

    def _clear(self) -> None:
        self._tracker = FeatureTracker(1)
        self._lr_arr = np.full(1, math.nan)
        self._lr_min = np.full(1, math.nan)
        self._lr_max = np.full(1, math.nan)
        self._started = False
        self._rnn: tuple[np.ndarray, np.ndarray] | None = None

    def _lr_ref(self, base_lr: float) -> tuple[float, float]:
        """Return (lr_ref, start LR) for ``base_lr``, with the env's fallback."""
        lr_ref = base_lr / self.init_lr
        if not (math.isfinite(lr_ref) and lr_ref > 0):
            lr_ref = _FALLBACK_LR_REF
            return lr_ref, lr_ref * self.init_lr
        return lr_ref, base_lr

    @property
    def lrs(self) -> list[float]:
        """The current LR of every parameter group; the first is exactly the policy's LR.

        (The generic ``lr * base / base`` of the other groups can be off by one ulp.)
        """
        out = super().lrs
        out[0] = self._lr
        return out

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return ``(lr_min, lr_max)`` of a run started at ``base_lr``."""
        lr_ref, _ = self._lr_ref(base_lr)
        return lr_ref * self.lr_range[0], lr_ref * self.lr_range[1]

    # -- the protocol ------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        self._clear()
        lr_ref, start = self._lr_ref(base_lr)
        self._lr_min = np.array([lr_ref * self.lr_range[0]])
        self._lr_max = np.array([lr_ref * self.lr_range[1]])
        self._lr_arr = np.array([start])
        sig = self.initial_signal
        if sig is None:
            return start
        obs = self._tracker.start(
            lr=self._lr_arr,
            loss=sig.train_loss,
            bound=_nan_if_none(sig.lr_bound),
            val_loss=_nan_if_none(sig.val_loss),
        )
        self._started = True
        return self._decide(obs, sig)

    def _step(self, signal: TrainingSignal) -> float:
        if not self._started:
            loss0 = signal.losses[0] if signal.losses else signal.train_loss
            self._tracker.start(
                lr=self._lr_arr,
                loss=loss0,
                bound=_nan_if_none(signal.lr_bound),
                val_loss=_nan_if_none(signal.val_loss),
            )
            self._started = True
        obs = self._tracker.update_from_signal(signal, lr=float(self._lr_arr[0]))
        return self._decide(obs, signal)

    def _decide(self, obs: np.ndarray, signal: TrainingSignal) -> float:
        actions, self._rnn = self.policy.predict(obs, self._rnn)
        if self.recorder is not None:
            self.recorder.append((obs[0].copy(), np.asarray(actions[0]).copy()))
        self._lr_arr = action_to_lr(
            self.action_mode, actions[0], self._lr_arr, self._lr_min, self._lr_max
        )
        if self.anneal == "none":
            return float(self._lr_arr[0])
        # the LR of the interval that starts now (the policy's level, annealed as in the env)
        return float(self._lr_arr[0] * anneal_factor(self.anneal, signal.step, signal.budget))

    # -- state -------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        rnn = None
        if self._rnn is not None:
            rnn = [_encode_nested(np.asarray(a, dtype=np.float64).tolist()) for a in self._rnn]
        return {
            "policy_checksum": self.policy.checksum,
            "lr": encode_float(self._lr_arr[0]),
            "lr_min": encode_float(self._lr_min[0]),
            "lr_max": encode_float(self._lr_max[0]),
            "started": self._started,
            "tracker": self._tracker.state_dict(),
            "rnn_state": rnn,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        if state.get("policy_checksum") != self.policy.checksum:
            raise ValueError(
                f"state_dict was saved with a different policy than {self._source} "
                "(checksums differ)"
            )
        self._lr_arr = np.array([decode_float(state["lr"])])
        self._lr_min = np.array([decode_float(state["lr_min"])])
        self._lr_max = np.array([decode_float(state["lr_max"])])
        self._started = bool(state["started"])
        self._tracker = FeatureTracker(1)
        self._tracker.load_state_dict(state["tracker"])
        rnn = state.get("rnn_state")
        self._rnn = (
            None
            if rnn is None
            else (
                np.array(_decode_nested(rnn[0]), dtype=np.float32),
                np.array(_decode_nested(rnn[1]), dtype=np.float32),
            )
        )
