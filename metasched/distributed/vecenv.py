"""SB3 ``VecEnv`` whose sub-envs live in Ray actors (``metasched train --vec-env ray``).

The learner stays in this process; the envs are spread over ``num_workers`` one-CPU Ray
actors, each holding a contiguous block of sub-envs: plain Gymnasium envs (stepped exactly
as SB3's ``SubprocVecEnv`` steps its workers — same seeding, same automatic reset, same
``terminal_observation`` / ``TimeLimit.truncated`` infos, so equal seeds give equal
observations and rewards) or one batched NMF env per actor
(:class:`~metasched.envs.batched.BatchedNMFVecEnv`, seeded ``seed + first sub-env index``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

__all__ = ["RayVecEnv"]


class _EnvWorker:
    """Body of one Ray actor: a block of plain envs, or one batched NMF env."""

    def __init__(self, env_fns: Sequence[Callable[[], Any]] | None, batched: dict | None) -> None:
        import torch

        torch.set_num_threads(1)
        self.envs: list[Any] = []
        self.venv: Any = None
        if batched is not None:
            from metasched.envs.batched import BatchedNMFVecEnv

            self.venv = BatchedNMFVecEnv(n_processes=1, **batched)
        else:
            self.envs = [fn() for fn in env_fns or ()]

    def spaces(self) -> tuple[Any, Any]:
        src = self.venv if self.venv is not None else self.envs[0]
        return src.observation_space, src.action_space

    def reset(self, seeds: list[int | None], options: list[dict]) -> tuple[list, list]:
        if self.venv is not None:
            if seeds[0] is not None:
                self.venv.seed(int(seeds[0]))
            self.venv.set_options(options)
            obs = self.venv.reset()
            return list(obs), list(self.venv.reset_infos)
        out = [
            env.reset(seed=s, **({"options": o} if o else {}))
            for env, s, o in zip(self.envs, seeds, options, strict=True)
        ]
        return [o for o, _ in out], [i for _, i in out]

    def step(self, actions: np.ndarray) -> list[tuple]:
        if self.venv is not None:
            obs, rews, dones, infos = self.venv.step(actions)
            resets = list(self.venv.reset_infos)
            return list(zip(obs, rews, dones, infos, resets, strict=True))
        out = []
        for env, action in zip(self.envs, actions, strict=True):
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            reset_info: dict[str, Any] = {}
            if done:
                info["terminal_observation"] = obs
                obs, reset_info = env.reset()
            out.append((obs, reward, done, info, reset_info))
        return out

    def get_attr(self, name: str, local: list[int]) -> list[Any]:
        if self.venv is not None:
            return self.venv.get_attr(name, local)
        return [self.envs[i].get_wrapper_attr(name) for i in local]

    def set_attr(self, name: str, value: Any, local: list[int]) -> None:
        if self.venv is not None:
            self.venv.set_attr(name, value, local)
            return
        for i in local:
            setattr(self.envs[i], name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict, local: list[int]) -> list[Any]:
        if self.venv is not None:
            return self.venv.env_method(name, *args, indices=local, **kwargs)
        return [self.envs[i].get_wrapper_attr(name)(*args, **kwargs) for i in local]

    def is_wrapped(self, wrapper: type, local: list[int]) -> list[bool]:
        if self.venv is not None:
            return self.venv.env_is_wrapped(wrapper, local)
        from stable_baselines3.common.env_util import is_wrapped

        return [is_wrapped(self.envs[i], wrapper) for i in local]

    def render(self) -> list[Any]:
        if self.venv is not None:
            return list(self.venv.get_images())
        return [env.render() for env in self.envs]

    def close(self) -> None:
        if self.venv is not None:
            self.venv.close()
        for env in self.envs:
            env.close()


class RayVecEnv(VecEnv):
    """Sub-envs in ``num_workers`` Ray actors behind SB3's ``VecEnv`` interface.

    Args:
        env_fns: one env factory per sub-env (pickled to the actors, as for
            ``SubprocVecEnv``).
        num_workers: Ray actors (at most one per sub-env); each reserves one CPU.
        address: Ray cluster to join (default: ``RAY_ADDRESS``, else a local instance).

    Use :meth:`batched` for batched NMF envs in the actors.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]] | None = None,
        num_workers: int = 2,
        *,
        address: str | None = None,
        _batched: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        from metasched.distributed.runtime import init_ray

        n = len(env_fns) if _batched is None else _batched[0]
        if n < 1:
            raise ValueError("RayVecEnv needs at least one env")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
        w = min(num_workers, n)
        sizes = [n // w + (k < n % w) for k in range(w)]
        self._starts = [int(x) for x in np.cumsum([0, *sizes])]
        self._ray = init_ray(address)
        actor = self._ray.remote(num_cpus=1)(_EnvWorker)
        self.actors = []
        for k in range(w):
            a, b = self._starts[k], self._starts[k + 1]
            if _batched is None:
                self.actors.append(actor.remote(list(env_fns[a:b]), None))  # type: ignore[index]
            else:
                kw = dict(_batched[1], num_envs=b - a, seed=int(_batched[1].get("seed", 0)) + a)
                self.actors.append(actor.remote(None, kw))
        self._pending: list[Any] | None = None
        self.closed = False
        obs_space, act_space = self._ray.get(self.actors[0].spaces.remote())
        super().__init__(n, obs_space, act_space)

    @classmethod
    def batched(
        cls, num_envs: int, num_workers: int = 2, *, address: str | None = None, **kwargs: Any
    ) -> RayVecEnv:
        """``num_envs`` sub-envs of batched NMF envs, one per actor (``kwargs``: its own)."""
        return cls(None, num_workers, address=address, _batched=(num_envs, kwargs))

    # -- helpers -------------------------------------------------------------------------
    def _blocks(self) -> Iterable[tuple[int, int, int]]:
        for k in range(len(self.actors)):
            yield k, self._starts[k], self._starts[k + 1]

    def _by_actor(self, indices: Any) -> list[tuple[int, list[int]]]:
        """Group global sub-env indices by actor (order of ``indices`` kept per actor)."""
        out: dict[int, list[int]] = {}
        for i in self._get_indices(indices):
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            out.setdefault(k, []).append(int(i) - self._starts[k])
        return list(out.items())

    def _stack(self, obs: Sequence[Any]) -> Any:
        if isinstance(obs[0], dict):
            return {key: np.stack([o[key] for o in obs]) for key in obs[0]}
        return np.stack(obs)

    # -- VecEnv --------------------------------------------------------------------------
    def reset(self) -> Any:
        """Reset every sub-env (with the seeds/options set since the last reset)."""
        refs = [
            self.actors[k].reset.remote(self._seeds[a:b], self._options[a:b])
            for k, a, b in self._blocks()
        ]
        obs: list[Any] = []
        infos: list[dict] = []
        for o, i in self._ray.get(refs):
            obs.extend(o)
            infos.extend(i)
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return self._stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Send each actor the actions of its sub-envs."""
        self._pending = [self.actors[k].step.remote(actions[a:b]) for k, a, b in self._blocks()]

    def step_wait(self) -> Any:
        """Collect the steps of every actor (in sub-env order)."""
        if self._pending is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        refs, self._pending = self._pending, None
        results = [r for block in self._ray.get(refs) for r in block]
        obs, rews, dones, infos, self.reset_infos = zip(*results, strict=True)
        self.reset_infos = list(self.reset_infos)
        return self._stack(obs), np.stack(rews), np.stack(dones), list(infos)

    def close(self) -> None:
        """Close the envs and end the actors."""
        if self.closed:
            return
        try:
            self._ray.get([a.close.remote() for a in self.actors])
        finally:
            for a in self.actors:
                self._ray.kill(a)
            self.closed = True

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """Attribute of the given sub-envs."""
        parts = self._by_actor(indices)
        got = self._ray.get([self.actors[k].get_attr.remote(attr_name, loc) for k, loc in parts])
        return [x for block in got for x in block]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the given sub-envs."""
        parts = self._by_actor(indices)
        self._ray.get([self.actors[k].set_attr.remote(attr_name, value, loc) for k, loc in parts])

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the given sub-envs."""
        parts = self._by_actor(indices)
        got = self._ray.get(
            [
                self.actors[k].env_method.remote(method_name, method_args, method_kwargs, loc)
                for k, loc in parts
            ]
        )
        return [x for block in got for x in block]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """Whether the given sub-envs are wrapped with ``wrapper_class``."""
        parts = self._by_actor(indices)
        got = self._ray.get(
            [self.actors[k].is_wrapped.remote(wrapper_class, loc) for k, loc in parts]
        )
        return [x for block in got for x in block]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Return the rendered frames of every sub-env."""
        return [x for block in self._ray.get([a.render.remote() for a in self.actors])
                for x in block]  # fmt: skip
