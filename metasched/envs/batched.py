"""Native batched NMF vector env: B learning-rate-control episodes as one tensor computation.

:class:`BatchedNMFVecEnv` is a Stable-Baselines3 ``VecEnv`` whose B sub-environments follow
exactly the MDP of :class:`~metasched.envs.lr_control.LRControlEnv` on the NMF family (same
actions, observation features, rewards, clipping and termination), but whose inner training
runs in one :class:`~metasched.inner_tasks.nmf_batched.BatchedNMF`. Finished sub-envs reset
automatically, SB3-style (``infos[i]["terminal_observation"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvObs, VecEnvStepReturn

from metasched.envs.lr_control import action_space_for, action_to_lr, check_env_args
from metasched.features import FEATURE_HIGH, FEATURE_LOW, FeatureTracker
from metasched.inner_tasks import NMFFamily
from metasched.inner_tasks.nmf_batched import BatchedNMF

__all__ = ["BatchedNMFVecEnv"]


class BatchedNMFVecEnv(VecEnv):
    """``num_envs`` NMF LR-control episodes stepped as one batched computation.

    Args:
        num_envs: number of parallel episodes B.
        split: family split the episodes draw instances from.
        action, budget, steps_per_action, kappa, lr_range, init_lr, reward,
            divergence_penalty, divergence_factor, family_seed, family_kwargs: as for
            :class:`~metasched.envs.lr_control.LRControlEnv` (``budget`` must be a multiple of
            ``steps_per_action`` so that all sub-envs train the same number of steps per call).
        clip: ``"deterministic"`` or ``"none"`` (the noise-aware bound is single-env only).
        seed: seed of the sub-envs' instance and initialisation streams.
        dtype: ``torch.float32`` (fast, default) or ``torch.float64``.
    """

    def __init__(
        self,
        num_envs: int = 64,
        split: str = "train",
        action: str = "discrete3",
        budget: int = 2000,
        steps_per_action: int = 50,
        clip: str = "deterministic",
        kappa: float = 2.0,
        lr_range: tuple[float, float] = (1e-3, 64.0),
        init_lr: float = 1.0,
        reward: str = "log_improvement",
        divergence_penalty: float = 1.0,
        divergence_factor: float = 1e3,
        family_seed: int = 0,
        family_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        action_space = action_space_for(action)
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
            clip_modes=("deterministic", "none"),
        )
        if budget % steps_per_action:
            raise ValueError(
                f"budget must be a multiple of steps_per_action={steps_per_action}, got {budget!r}"
            )
        obs_space = spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        super().__init__(num_envs, obs_space, action_space)
        self.family = NMFFamily(family_seed, **(family_kwargs or {}))
        self.split = split
        self.action_mode = action
        self.budget = budget
        self.steps_per_action = steps_per_action
        self.clip = clip
        self.kappa = float(kappa)
        self.lr_range = (lo, hi)
        self.init_lr = float(init_lr)
        self.reward_mode = reward
        self.divergence_penalty = float(divergence_penalty)
        self.divergence_factor = float(divergence_factor)
        self.batch = BatchedNMF(
            num_envs, self.family.max_shape(split), dtype=dtype, divergence_factor=divergence_factor
        )
        self.tracker = FeatureTracker(num_envs)
        self._actions: np.ndarray | None = None
        self._lr = np.ones(num_envs)
        self._lr_min = np.ones(num_envs)
        self._lr_max = np.ones(num_envs)
        self._bound = np.full(num_envs, np.nan)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._names: list[str] = [""] * num_envs
        self._clips = np.zeros(num_envs, dtype=np.int64)
        self._seed = int(seed)
        self._slot_rngs = self._rngs_for(self._seed)

    def _rngs_for(self, seed: int) -> list[np.random.Generator]:
        return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(self.num_envs)]

    # -- episodes --------------------------------------------------------------------------
    def reset_slot(self, slot: int, index: int, generator: np.random.Generator) -> None:
        """Start sub-env ``slot`` on instance ``index``, initialised from ``generator``.

        ``generator`` is consumed exactly as :class:`LRControlEnv` consumes its task
        generator, so a slot and a single env given equal generators follow one trajectory.
        """
        self._load_slot(slot, index, generator)
        self._start_slots(np.arange(self.num_envs) == slot)

    def _load_slot(self, slot: int, index: int, generator: np.random.Generator) -> None:
        config = self.family.instance_config(self.split, index)
        self.batch.load(slot, self.family.make_task(config), generator)
        self._names[slot] = config.name
        self._steps[slot] = 0
        self._clips[slot] = 0

    def _load_slot_random(self, slot: int) -> None:
        rng = self._slot_rngs[slot]
        index = int(rng.integers(self.family.pool_sizes[self.split]))
        self._load_slot(slot, index, np.random.default_rng(rng.integers(2**63)))

    def _start_slots(self, mask: np.ndarray) -> None:
        """Set the LR range and the feature references of freshly loaded slots (one pass)."""
        bound = self.batch.lr_bound()
        ok = np.isfinite(bound) & (bound > 0)
        lr_ref = np.where(ok, 0.5 * np.where(ok, bound, 1.0), 1e-2)
        self._bound = np.where(mask, bound, self._bound)
        self._lr_min = np.where(mask, lr_ref * self.lr_range[0], self._lr_min)
        self._lr_max = np.where(mask, lr_ref * self.lr_range[1], self._lr_max)
        self._lr = np.where(mask, lr_ref * self.init_lr, self._lr)
        loss0 = self.batch.evaluate()
        self.tracker.start(lr=self._lr, loss=loss0, bound=self._bound, mask=mask)

    def reset(self) -> VecEnvObs:
        """Start a fresh episode in every sub-env and return the ``(B, 12)`` observations."""
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        if seed is not None:
            self._slot_rngs = self._rngs_for(int(seed))
        self._reset_seeds()
        for slot in range(self.num_envs):
            self._load_slot_random(slot)
        self._start_slots(np.ones(self.num_envs, dtype=bool))
        return self.tracker.observation

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next step."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Apply the stored actions: one decision interval of every sub-env."""
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        actions, self._actions = self._actions, None
        B = self.num_envs
        self._lr = action_to_lr(self.action_mode, actions, self._lr, self._lr_min, self._lr_max)
        applied = self._lr.copy()
        clipped = np.zeros(B, dtype=bool)
        if self.clip == "deterministic":
            cap = self.kappa * self._bound
            clipped = np.isfinite(cap) & (applied > cap)
            applied = np.where(clipped, cap, applied)
        self._clips += clipped
        prev = self.tracker.log_loss.copy()
        stats = self.batch.train(self.steps_per_action, applied)
        self._steps += self.steps_per_action
        diverged = stats.diverged.copy()
        n_done = np.maximum(stats.n_done, 1)
        with np.errstate(invalid="ignore"):
            mean_loss = np.where(diverged, np.inf, np.nansum(stats.losses, axis=1) / n_done)
            ups = np.nansum(np.diff(stats.losses, axis=1) > 0, axis=1)
        frac_up = np.where(stats.n_done > 1, ups / np.maximum(stats.n_done - 1, 1), 0.0)
        bound = self.batch.lr_bound()
        self._bound = np.where(diverged, self._bound, bound)
        obs = self.tracker.update(
            lr=self._lr,
            loss=mean_loss,
            frac_increasing=frac_up,
            grad_norm=stats.grad_norm,
            bound=self._bound,
            val_loss=np.nan,
            budget_used=np.minimum(self._steps / self.budget, 1.0),
        )
        log_loss = self.tracker.log_loss
        log0 = self.tracker.log_loss0
        done = diverged | (self._steps >= self.budget)
        if self.reward_mode == "log_improvement":
            rewards = np.where(diverged, prev - log0 - self.divergence_penalty, prev - log_loss)
        else:
            rewards = np.where(done, log0 - log_loss, 0.0)
            rewards = np.where(diverged, -self.divergence_penalty, rewards)
        final = self.batch.evaluate() if done.any() else None
        infos: list[dict[str, Any]] = []
        for i in range(B):
            info: dict[str, Any] = {
                "lr": float(self._lr[i]),
                "applied_lr": float(applied[i]),
                "train_loss": float(mean_loss[i]),
                "val_loss": None,
                "diverged": bool(diverged[i]),
                "clipped": bool(clipped[i]),
                "inner_steps": int(self._steps[i]),
                "lr_bound": float(self._bound[i]),
                "instance": self._names[i],
            }
            if done[i]:
                info["terminal_observation"] = obs[i].copy()
                info["final_loss"] = math.inf if diverged[i] else float(final[i])
                info["clip_count"] = int(self._clips[i])
                info["TimeLimit.truncated"] = False
                self._load_slot_random(i)
            infos.append(info)
        if done.any():
            self._start_slots(done)
        obs = self.tracker.observation
        return obs, rewards.astype(np.float32), done, infos

    # -- VecEnv plumbing -------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """Return an attribute of the (shared) env for each selected sub-env."""
        return [getattr(self, attr_name, None) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the shared env (sub-envs have no separate objects)."""
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
    ) -> list[Any]:
        """Call a method of the shared env once per selected sub-env."""
        return [getattr(self, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """Sub-envs are never wrapped."""
        return [False for _ in self._indices(indices)]

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)
