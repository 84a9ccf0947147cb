"""Gymnasium MDP in which the agent chooses the learning rate of an inner training run."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metasched.actions import (
    ACTION_MODES,
    DISCRETE_FACTORS,
    ActionMode,
    action_to_lr,
    anneal_factor,
    check_anneal,
)
from metasched.errors import ConfigError
from metasched.features import FEATURE_HIGH, FEATURE_LOW, FeatureTracker
from metasched.inner_tasks import check_split, family_lr_range, make_family
from metasched.inner_tasks.base import InnerTask, TaskFamily
from metasched.loop import (
    CLIP_MODES,
    DEFAULT_CLIP,
    DEFAULT_KAPPA,
    DEFAULT_KAPPA_MEASURED,
    ClipMode,
    Driver,
)

__all__ = ["ACTION_MODES", "DISCRETE_FACTORS", "ActionMode", "LRControlEnv", "action_to_lr"]

REWARD_MODES = ("log_improvement", "final")
TASK_CACHE_SIZE = 16


def action_space_for(mode: str) -> spaces.Space:
    """Return the Gymnasium action space of an action mode."""
    if mode in DISCRETE_FACTORS:
        return spaces.Discrete(len(DISCRETE_FACTORS[mode]))
    if mode in ("continuous", "absolute"):
        return spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    raise ConfigError(f"action must be one of {', '.join(ACTION_MODES)}, got {mode!r}")


def check_env_args(
    *,
    split: str,
    budget: Any,
    steps_per_action: Any,
    clip: str,
    kappa: float,
    lr_range: tuple[float, float],
    init_lr: float,
    reward: str,
    divergence_penalty: float,
    divergence_factor: float,
    clip_modes: tuple[str, ...] = CLIP_MODES,
    kappa_measured: float = DEFAULT_KAPPA_MEASURED,
    anneal: str = "none",
) -> tuple[float, float]:
    """Validate the arguments every LR-control env shares; return ``lr_range`` as floats.

    Raises:
        ConfigError: (a ``ValueError``) naming the first bad argument and its value.
    """
    check_split(split)
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget must be a positive integer, got {budget!r}")
    if not isinstance(steps_per_action, int) or steps_per_action < 1:
        raise ConfigError(f"steps_per_action must be a positive integer, got {steps_per_action!r}")
    if clip not in clip_modes:
        raise ConfigError(f"clip must be one of {', '.join(clip_modes)}, got {clip!r}")
    for name, value in (("kappa", kappa), ("kappa_measured", kappa_measured)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    try:
        lo, hi = (float(x) for x in lr_range)
    except (TypeError, ValueError):
        raise ConfigError(f"lr_range must be (low, high), got {lr_range!r}") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ConfigError(f"lr_range must be (low, high) with 0 < low < high, got {lr_range!r}")
    if not (lo <= init_lr <= hi):
        raise ConfigError(f"init_lr must lie in lr_range {lr_range!r}, got {init_lr!r}")
    if reward not in REWARD_MODES:
        raise ConfigError(f"reward must be one of {', '.join(REWARD_MODES)}, got {reward!r}")
    if not (math.isfinite(divergence_penalty) and divergence_penalty >= 0):
        raise ConfigError(f"divergence_penalty must be >= 0, got {divergence_penalty!r}")
    if not divergence_factor > 1:
        raise ConfigError(f"divergence_factor must be > 1, got {divergence_factor!r}")
    check_anneal(anneal)
    return lo, hi


class LRControlEnv(gym.Env):
    r"""Learning-rate control of inner training as an MDP.

    ## Description
    Each episode samples one instance from a task family split (for ``metasched/NMF-v1``,
    a planted stochastic-NMF problem) and trains it for ``budget`` inner steps. Every
    ``step(action)`` sets the learning rate and runs ``steps_per_action`` inner steps of the
    task's optimizer (projected SGD for NMF). The requested LR is clipped to a multiple of
    the task's stability bound (``clip="auto"``: ``kappa`` times NMF's analytic ``1/L``,
    ``kappa_measured`` times the bound measured on a network, see :mod:`metasched.loop`),
    and clip activations are reported.

    ## Action Space
    ``action="discrete3"`` (default): ``Discrete(3)``, multiply the LR by ½, 1 or 2 (the
    probe heuristic's arms). ``"discrete5"``: ``Discrete(5)``, factors 0.5, 0.8, 1, 1.25, 2.
    ``"continuous"``: ``Box(-1, 1, (1,))``, multiply by ``2**a``. ``"absolute"``:
    ``Box(-1, 1, (1,))`` mapped log-linearly onto ``[lr_min, lr_max]``. The LR always stays
    in ``[lr_min, lr_max] = lr_range × lr_ref`` where ``lr_ref`` is the task's reference LR
    at initialisation (half the deterministic-safe rate ``1/L`` for NMF).

    ## Observation Space
    ``Box(low, high, (11,), float32)``, scale-free features (:mod:`metasched.features`):

    | idx | feature           | min | max | meaning                                         |
    |-----|-------------------|-----|-----|-------------------------------------------------|
    | 0   | log_lr_rel        | -10 | 10  | log(lr / initial lr)                            |
    | 1   | log_loss_rel      | -20 | 5   | log(train loss / initial loss)                  |
    | 2   | dloss_last        | -5  | 5   | change of log train loss, last interval         |
    | 3   | dloss_prev        | -5  | 5   | the same, previous interval                     |
    | 4   | dloss_smooth      | -5  | 5   | moving average (0.7) of that change             |
    | 5   | frac_increasing   | 0   | 1   | fraction of minibatch losses that rose          |
    | 6   | log_grad_rel      | -20 | 10  | log(gradient norm / first interval's)           |
    | 7   | log_lr_over_bound | -10 | 10  | log(lr / estimated largest stable LR)           |
    | 8   | log_val_rel       | -20 | 5   | log(val loss / initial), 0 if not measured       |
    | 9   | val_known         | 0   | 1   | 1 when a validation loss is measured            |
    | 10  | budget_used       | 0   | 1   | fraction of the inner-step budget used          |

    ``log_lr_over_bound`` is on one scale for every task (2 x NMF's analytic ``1/L``, the
    measured bound of a network as it is) and is known on every task under the default
    ``clip="auto"`` (with ``"deterministic"``/``"noise_aware"`` a network has no bound: 0).

    ## Rewards
    ``reward="log_improvement"`` (default): the decrease of the log training loss over the
    interval, ``log L_{t-1} - log L_t`` (``L_0`` is the full loss at initialisation, ``L_t``
    the mean minibatch loss of interval t), so an episode's return telescopes to
    ``log(L_0 / L_T)`` and is comparable across tasks. ``reward="final"``: 0 until the last
    step, then ``log(L_0 / L_T)``. Divergence gives the reward that makes the episode's
    return exactly ``-divergence_penalty``.

    ## Starting State
    A fresh instance (drawn from the split with the env's seeded RNG, or chosen by
    ``reset(options={"instance": i})``), freshly initialised, at ``lr = init_lr × lr_ref``.

    ## Episode End
    ``terminated=True`` when the budget is spent (the agent observes ``budget_used``) or
    training diverged (non-finite loss, loss above ``divergence_factor`` × the initial loss,
    or collapse of the factors to zero). ``truncated`` is always False: only outside limits
    (e.g. a ``TimeLimit`` wrapper) truncate.

    ## Arguments
    ``family`` (registered task family, default ``"nmf"``), ``split`` (``train``/``val``/``test``/
    ``shift``), ``action``, ``budget`` (2000), ``steps_per_action`` (50), ``clip``
    (``"auto"``, ``"deterministic"``, ``"noise_aware"``, ``"measured"``, ``"none"``; see
    :class:`~metasched.loop.Driver`), ``kappa`` (2.0, on an analytic bound),
    ``kappa_measured`` (0.707, on a measured bound), ``lr_range``
    (default: the family's ``lr_range``, (1e-3, 64.0) for NMF, (0.01, 20.0) for networks),
    ``init_lr`` (1.0), ``reward``, ``divergence_penalty`` (1.0),
    ``divergence_factor`` (1e3), ``family_seed`` (0), ``family_kwargs`` (dict), ``anneal``
    (``"none"``; ``"wsd"``: the agent's LR is multiplied by the ``wsd`` schedule's cooldown,
    so the action sets the level of a warmup-free WSD run; ``"cosine"``: by the ``cosine``
    schedule's decay, likewise; see
    :func:`~metasched.actions.anneal_factor`; the observation's LR features stay the
    agent's level).
    ``info`` carries ``lr`` (the requested LR, after ``anneal``), ``applied_lr``,
    ``train_loss``, ``val_loss``, ``diverged``, ``clipped``, ``inner_steps``, ``instance``,
    ``lr_bound`` (on the common scale),
    ``bound_cost_steps`` (the measured bound's cost so far this episode, in SGD steps) and, at
    the end, ``final_loss``.

    ## Version History
    * v1: one bound feature on one scale for every task (``bound_known`` dropped, 11
      features), ``clip="auto"`` (measured bound on networks) by default.
    * v0: initial version.

    Example:
        >>> import gymnasium as gym
        >>> import metasched
        >>> env = gym.make("metasched/NMF-v1", split="test", budget=100, steps_per_action=25)
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, env.action_space
        ((11,), Discrete(3))
        >>> total, done = 0.0, False
        >>> while not done:
        ...     obs, reward, terminated, truncated, info = env.step(1)
        ...     total += reward
        ...     done = terminated or truncated
        >>> info["inner_steps"], total > 0, truncated
        (100, True, False)
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        family: str | TaskFamily = "nmf",
        split: str = "train",
        action: ActionMode = "discrete3",
        budget: int = 2000,
        steps_per_action: int = 50,
        clip: ClipMode = DEFAULT_CLIP,
        kappa: float = DEFAULT_KAPPA,
        lr_range: tuple[float, float] | None = None,
        init_lr: float = 1.0,
        reward: str = "log_improvement",
        divergence_penalty: float = 1.0,
        divergence_factor: float = 1e3,
        family_seed: int = 0,
        family_kwargs: dict[str, Any] | None = None,
        kappa_measured: float = DEFAULT_KAPPA_MEASURED,
        anneal: str = "none",
    ) -> None:
        super().__init__()
        self.action_space = action_space_for(action)
        if lr_range is None:  # the family's own range (one place: TaskFamily.lr_range)
            lr_range = family_lr_range(family)
        lo, hi = check_env_args(
            split=split,
            budget=budget,
            steps_per_action=steps_per_action,
            clip=clip,
            kappa=kappa,
            lr_range=lr_range,
            init_lr=init_lr,
            reward=reward,
            divergence_penalty=divergence_penalty,
            divergence_factor=divergence_factor,
            kappa_measured=kappa_measured,
            anneal=anneal,
        )
        self.family = (
            family
            if isinstance(family, TaskFamily)
            else make_family(family, family_seed, **(family_kwargs or {}))
        )
        self.split = split
        self.action_mode = action
        self.budget = budget
        self.steps_per_action = steps_per_action
        self.clip: ClipMode = clip
        self.kappa = float(kappa)
        self.kappa_measured = float(kappa_measured)
        self.lr_range = (lo, hi)
        self.init_lr = float(init_lr)
        self.reward_mode = reward
        self.divergence_penalty = float(divergence_penalty)
        self.divergence_factor = float(divergence_factor)
        self.anneal = anneal
        self.observation_space = spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        self._tracker = FeatureTracker(1)
        self._task_cache: OrderedDict[int, InnerTask] = OrderedDict()
        self._task: InnerTask | None = None
        self._driver: Driver | None = None
        self._lr = np.ones(1)
        self._lr_min = np.ones(1)
        self._lr_max = np.ones(1)

    @property
    def task(self) -> InnerTask | None:
        """The instance of the current episode."""
        return self._task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on a new instance; ``options={"instance": i}`` picks one."""
        super().reset(seed=seed)
        options = options or {}
        pool = self.family.pool_sizes[self.split]
        index = options.get("instance")
        if index is None:
            index = int(self.np_random.integers(pool))
        elif not (isinstance(index, int | np.integer) and 0 <= index < pool):
            raise ValueError(f"instance must be an integer in [0, {pool}), got {index!r}")
        self._task = self._make_task(int(index))
        self._driver = Driver(
            self._task,
            self.budget,
            self.steps_per_action,
            clip=self.clip,
            kappa=self.kappa,
            kappa_measured=self.kappa_measured,
        )
        task_gen = np.random.default_rng(self.np_random.integers(2**63))
        sig0 = self._driver.start(task_gen)
        lr_ref = self._task.default_lr()
        if not (math.isfinite(lr_ref) and lr_ref > 0):
            lr_ref = 1e-2
        self._lr_min = np.array([lr_ref * self.lr_range[0]])
        self._lr_max = np.array([lr_ref * self.lr_range[1]])
        self._lr = np.array([lr_ref * self.init_lr])
        obs = self._tracker.start(
            lr=self._lr,
            loss=sig0.train_loss,
            bound=np.nan if sig0.lr_bound is None else sig0.lr_bound,
            val_loss=np.nan if sig0.val_loss is None else sig0.val_loss,
        )
        info = {
            "instance": self._task.name,
            "instance_index": int(index),
            "lr": float(self._lr[0]),
            "lr_ref": lr_ref,
            "train_loss": sig0.train_loss,
            "val_loss": sig0.val_loss,
            "inner_steps": 0,
        }
        return obs[0], info

    def _make_task(self, index: int) -> InnerTask:
        """Build (or reuse: tasks are fully re-initialised on reset) instance ``index``."""
        task = self._task_cache.pop(index, None)
        if task is None:
            config = self.family.instance_config(self.split, index)
            task = self.family.make_task(config, divergence_factor=self.divergence_factor)
        self._task_cache[index] = task
        while len(self._task_cache) > TASK_CACHE_SIZE:
            self._task_cache.popitem(last=False)
        return task

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Set the LR from ``action`` and train one decision interval."""
        if self._driver is None or self._driver.done:
            raise RuntimeError("call reset() before step() (the episode is over or not started)")
        self._lr = action_to_lr(self.action_mode, action, self._lr, self._lr_min, self._lr_max)
        prev = float(self._tracker.log_loss[0])
        shape = anneal_factor(self.anneal, self._driver.step, self.budget)
        signal, ival = self._driver.advance(float(self._lr[0] * shape))
        obs = self._tracker.update_from_signal(signal, lr=float(self._lr[0]))
        log0 = float(self._tracker.log_loss0[0])
        terminated = self._driver.done
        if signal.diverged:
            reward = prev - log0 - self.divergence_penalty
            if self.reward_mode == "final":
                reward = -self.divergence_penalty
        elif self.reward_mode == "log_improvement":
            reward = prev - float(self._tracker.log_loss[0])
        else:
            reward = log0 - float(self._tracker.log_loss[0]) if terminated else 0.0
        info: dict[str, Any] = {
            "lr": ival.requested_lr,
            "applied_lr": ival.applied_lr,
            "train_loss": signal.train_loss,
            "val_loss": signal.val_loss,
            "diverged": signal.diverged,
            "clipped": ival.clipped,
            "inner_steps": signal.step,
            "lr_bound": signal.lr_bound,
            "bound_cost_steps": self._driver.extra_steps,
            "instance": self._task.name if self._task is not None else None,
        }
        if terminated:
            info["final_loss"] = math.inf if signal.diverged else float(self._task.evaluate())
            info["clip_count"] = self._driver.clip_count
        return obs[0], float(reward), bool(terminated), False, info
