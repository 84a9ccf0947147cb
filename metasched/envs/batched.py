"""Native batched NMF vector env: B learning-rate-control episodes as one tensor computation.

:class:`BatchedNMFVecEnv` is a Stable-Baselines3 ``VecEnv`` whose B sub-environments follow
exactly the MDP of :class:`~metasched.envs.lr_control.LRControlEnv` on the NMF family (same
instance distribution, actions, observation features, rewards, clipping and termination),
but whose inner training runs as batched torch computations. Finished sub-envs reset
automatically, SB3-style (``infos[i]["terminal_observation"]``).

Speed comes from three things (see :mod:`metasched.inner_tasks.nmf_batched`):

* **bucketing** (default): the inner problems are grouped by shape class (minibatch size x
  range of ``n``), each class padded only to its own box instead of the family's largest
  shape;
* the **step kernel**: the single task's projected-SGD step in few tensor operations, with
  divergence found after each call;
* **several processes** (``n_processes``): the MDP logic of all sub-envs stays in the
  calling process (vectorised over B), while the inner problems are spread over this
  process and ``n_processes - 1`` worker processes that train their share in parallel
  (Python threads cannot overlap these many small torch operations). Each episode's problem
  is placed, when the episode starts, on the process with the least modelled work,
  preferring a process that already holds problems of its shape class (fewer, larger
  batches). Workers run one torch thread each.

Every sub-env keeps the single env's random streams (instance choice, initialisation,
minibatches, gradient noise), and no result depends on which other problems share a batch
or a process, so a given seed gives bit-identical rollouts for any ``n_processes``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvObs, VecEnvStepReturn

from metasched.actions import anneal_factor, check_anneal
from metasched.envs.lr_control import action_space_for, action_to_lr, check_env_args
from metasched.features import FEATURE_HIGH, FEATURE_LOW, FeatureTracker
from metasched.inner_tasks import NMFFamily
from metasched.inner_tasks.nmf import NMFConfig
from metasched.inner_tasks.nmf_batched import (
    RNG_MODES,
    BatchedNMF,
    BucketedNMF,
    box_cost,
    shape_classes,
)
from metasched.loop import ANALYTIC_SCALE, DEFAULT_CLIP, DEFAULT_KAPPA

__all__ = ["BatchedNMFVecEnv"]

#: ``n_processes="auto"`` uses two processes from this many sub-envs on (fewer do not
#: amortise the inter-process messages).
AUTO_PROCESSES_MIN_ENVS = 32


#: Settings :meth:`BatchedNMFVecEnv.set_attr` may change while the env runs (attribute names).
STEP_SETTINGS = (
    "budget",
    "steps_per_action",
    "clip",
    "kappa",
    "lr_range",
    "init_lr",
    "reward_mode",
    "divergence_penalty",
)
#: Construction settings that cannot change once the env runs.
FROZEN_SETTINGS = (
    "anneal",
    "num_envs",
    "family",
    "split",
    "action_mode",
    "divergence_factor",
    "bucketing",
    "n_processes",
)


def _check_step_settings(
    settings: dict[str, Any], split: str, divergence_factor: float
) -> tuple[float, float]:
    """Validate the step settings of a batched NMF env; return ``lr_range`` as floats."""
    lo, hi = check_env_args(
        split=split,
        budget=settings["budget"],
        steps_per_action=settings["steps_per_action"],
        clip=settings["clip"],
        kappa=settings["kappa"],
        lr_range=settings["lr_range"],
        init_lr=settings["init_lr"],
        reward=settings["reward_mode"],
        divergence_penalty=settings["divergence_penalty"],
        divergence_factor=divergence_factor,
        clip_modes=("auto", "deterministic", "none"),
    )
    if settings["budget"] % settings["steps_per_action"]:
        raise ValueError(
            f"budget must be a multiple of steps_per_action={settings['steps_per_action']}, "
            f"got {settings['budget']!r}"
        )
    return lo, hi


class _Host:
    """The inner problems of the sub-envs one process holds.

    Slots are sub-env indices. With bucketing, any sub-env can be placed on any host; without
    it, a host holds the fixed block ``offset .. offset + size`` of sub-envs.
    """

    def __init__(self, cfg: dict[str, Any], offset: int, size: int, n_hosts: int) -> None:
        self.family = NMFFamily(cfg["family_seed"], **(cfg["family_kwargs"] or {}))
        self.split = cfg["split"]
        self.offset = offset
        self.cfg, self.size, self.n_hosts = dict(cfg), size, n_hosts
        self._build()

    def reseed(self, seed: int) -> None:
        """Empty this host and reseed its shared streams from the env seed ``seed``.

        The host is then as if built with that seed: with ``rng="shared"`` its problems draw
        what a fresh env seeded so would draw.
        """
        self.cfg["seed"] = int(seed)
        self._build()

    def _build(self) -> None:
        cfg, size, n_hosts = self.cfg, self.size, self.n_hosts
        engine = {
            "dtype": cfg["dtype"],
            "divergence_factor": float(cfg["divergence_factor"]),
            "rng": cfg["rng"],
            # the shared streams of each process: a fixed function of the env seed and the host
            "rng_seed": int(
                np.random.SeedSequence([cfg["seed"], cfg.get("host", 0)]).generate_state(1)[0]
            ),
        }
        if cfg["bucketing"]:
            classes = shape_classes(self.family, self.split)
            capacity = max(2, math.ceil(1.5 * size / (len(classes) * n_hosts)))
            self.batch: BatchedNMF | BucketedNMF = BucketedNMF(
                size, classes, capacity=capacity, **engine
            )
        else:
            self.batch = BatchedNMF(size, self.family.max_shape(self.split), **engine)

    def restart(
        self, unload: np.ndarray, items: list[tuple[int, NMFConfig, np.random.Generator]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Drop the problems of ``unload``; start ``items``; their bounds and initial losses."""
        for env in unload:
            self.batch.unload(int(env) - self.offset)
        slots = np.array([env for env, _, _ in items], dtype=np.int64) - self.offset
        for slot, (_, config, generator) in zip(slots, items, strict=True):
            self.batch.load(int(slot), self.family.make_task(config), generator)
        if not slots.size:
            return np.zeros(0), np.zeros(0)
        return self.batch.lr_bound(slots), self.batch.evaluate(slots)

    def train(
        self, envs: np.ndarray, lr: np.ndarray, n_steps: int, ending: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Train the problems of ``envs`` at ``lr``; also evaluate the ``ending`` ones."""
        slots = envs - self.offset
        rates = np.zeros(self.batch.n_slots)
        rates[slots] = lr
        # the features use losses and gradient norms only: skip the update norms
        stats = self.batch.train(n_steps, rates, track_updates=False)
        final = np.full(envs.size, np.nan)
        if ending.any():
            final[ending] = self.batch.evaluate(slots[ending])
        return (
            stats.losses[slots],
            stats.grad_norm[slots],
            stats.n_done[slots],
            stats.diverged[slots],
            self.batch.lr_bound(slots),
            final,
        )


def serve(conn: Any, factory: Any, *args: Any) -> None:
    """Worker-process loop: build ``factory(*args)`` and run the parent's commands on it.

    Each command is a ``(method name, args)`` pair answered with ``("ok", result)`` or
    ``("error", traceback)``; ``"close"`` ends the loop. Shared by the batched vector envs.
    """
    torch.set_num_threads(1)  # one of several processes sharing the cores
    try:
        target = factory(*args)
        conn.send(("ok", None))
        while True:
            try:
                cmd, cmd_args = conn.recv()
            except (EOFError, KeyboardInterrupt):
                break
            if cmd == "close":
                conn.send(("ok", None))
                break
            try:
                conn.send(("ok", getattr(target, cmd)(*cmd_args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class WorkerProcess:
    """Parent-side handle of a worker process that :func:`serve` s ``factory(*args)``.

    ``owner`` names the vector env in error messages.
    """

    def __init__(self, ctx: Any, factory: Any, args: tuple[Any, ...], owner: str) -> None:
        self.owner = owner
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, factory, *args), daemon=True)
        self.proc.start()
        child.close()
        self.recv()  # construction errors surface here

    def send(self, cmd: str, *args: Any) -> None:
        self.conn.send((cmd, args))

    def recv(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"a {self.owner} worker process died") from None
        if status == "error":
            raise RuntimeError(f"{self.owner} worker failed:\n{payload}")
        return payload

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.send("close")
                self.recv()
            except (RuntimeError, BrokenPipeError, OSError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()
        self.conn.close()


class BatchedNMFVecEnv(VecEnv):
    """``num_envs`` NMF LR-control episodes stepped as batched computations.

    Args:
        num_envs: number of parallel episodes B.
        split: family split the episodes draw instances from.
        action, budget, steps_per_action, kappa, lr_range, init_lr, reward,
            divergence_penalty, divergence_factor, family_seed, family_kwargs: as for
            :class:`~metasched.envs.lr_control.LRControlEnv` (``budget`` must be a multiple of
            ``steps_per_action`` so that all sub-envs train the same number of steps per call).
        clip: ``"auto"`` (default) and ``"deterministic"`` (the same on NMF: the analytic
            bound) or ``"none"`` (the noise-aware and measured bounds are single-env only).
        seed: seed of the sub-envs' instance and initialisation streams.
        dtype: ``torch.float32`` (fast, default) or ``torch.float64``.
        bucketing: group the inner problems by shape class (default) instead of padding all
            of them to the family's largest shape.
        n_processes: processes that train the inner problems: this one plus
            ``n_processes - 1`` worker processes (one torch thread each). ``"auto"``
            (default): 2 when ``num_envs >= 32`` and the machine has at least 2 CPUs, else 1.
            Results do not depend on it. Workers are started with ``start_method`` (as for
            SB3's ``SubprocVecEnv``, scripts that create the env need an
            ``if __name__ == "__main__":`` guard) and stopped by :meth:`close`.
        start_method: multiprocessing start method of the workers (default
            ``"forkserver"`` where available, else ``"spawn"``).
        rng: ``"per_slot"`` (default): every sub-env draws its minibatches and gradient noise
            from its own streams, exactly as the single env does; ``"shared"``: each batch
            draws once per call for all its problems (from streams seeded by ``seed``), which
            is faster but makes a problem's minibatches depend on where it sits (its shape
            class, position and process): rollouts stay deterministic for a given ``seed``,
            ``n_processes`` and ``num_envs``, but no longer equal the single env's.
    """

    def __init__(
        self,
        num_envs: int = 64,
        split: str = "train",
        action: str = "discrete3",
        budget: int = 2000,
        steps_per_action: int = 50,
        clip: str = DEFAULT_CLIP,
        kappa: float = DEFAULT_KAPPA,
        lr_range: tuple[float, float] = NMFFamily.lr_range,
        init_lr: float = 1.0,
        reward: str = "log_improvement",
        divergence_penalty: float = 1.0,
        divergence_factor: float = 1e3,
        family_seed: int = 0,
        family_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        bucketing: bool = True,
        n_processes: int | str = "auto",
        start_method: str | None = None,
        rng: str = "per_slot",
        anneal: str = "none",
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        action_space = action_space_for(action)
        step_settings = {
            "budget": budget,
            "steps_per_action": steps_per_action,
            "clip": clip,
            "kappa": kappa,
            "lr_range": lr_range,
            "init_lr": init_lr,
            "reward_mode": reward,
            "divergence_penalty": divergence_penalty,
        }
        lo, hi = _check_step_settings(step_settings, split, divergence_factor)
        check_anneal(anneal)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if rng not in RNG_MODES:
            raise ValueError(f"rng must be one of {', '.join(RNG_MODES)}, got {rng!r}")
        procs = self._resolve_processes(n_processes, num_envs)
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
        self.anneal = anneal
        self.bucketing = bool(bucketing)
        self.n_processes = procs
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

        # placement of the inner problems: per sub-env its host and modelled work
        self._classes = shape_classes(self.family, split) if self.bucketing else []
        self._host_of = np.full(num_envs, -1, dtype=np.int64)
        self._work = np.zeros(num_envs)
        self._class_of = np.full(num_envs, -1, dtype=np.int64)
        self._host_work = np.zeros(procs)
        self._host_classes = np.zeros((procs, max(1, len(self._classes))), dtype=np.int64)
        if self.bucketing:
            self._blocks = None
        else:  # fixed contiguous blocks of sub-envs, as even as possible
            sizes = [num_envs // procs + (k < num_envs % procs) for k in range(procs)]
            self._blocks = np.cumsum([0, *sizes])
        cfg = {
            "split": split,
            "divergence_factor": divergence_factor,
            "family_seed": family_seed,
            "family_kwargs": dict(family_kwargs or {}),
            "dtype": dtype,
            "bucketing": self.bucketing,
            "rng": rng,
            "seed": int(seed),
        }
        self._local = _Host({**cfg, "host": 0}, *self._host_block(0), procs)
        self._remotes: list[WorkerProcess] = []
        if procs > 1:
            if start_method is None:
                methods = mp.get_all_start_methods()
                start_method = "forkserver" if "forkserver" in methods else "spawn"
            ctx = mp.get_context(start_method)
            try:
                for k in range(1, procs):
                    self._remotes.append(
                        WorkerProcess(
                            ctx,
                            _Host,
                            ({**cfg, "host": k}, *self._host_block(k), procs),
                            "BatchedNMFVecEnv",
                        )
                    )
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _resolve_processes(n_processes: int | str, num_envs: int) -> int:
        if n_processes == "auto":
            many = num_envs >= AUTO_PROCESSES_MIN_ENVS and (os.cpu_count() or 1) >= 2
            return 2 if many else 1
        if (
            not isinstance(n_processes, int | np.integer)
            or isinstance(n_processes, bool)
            or not 1 <= n_processes <= num_envs
        ):
            raise ValueError(
                f"n_processes must be 'auto' or an integer in [1, num_envs={num_envs}], "
                f"got {n_processes!r}"
            )
        return int(n_processes)

    def _host_block(self, k: int) -> tuple[int, int]:
        """``(offset, size)`` of the slots host ``k`` keeps."""
        if self._blocks is None:
            return 0, self.num_envs
        return int(self._blocks[k]), int(self._blocks[k + 1] - self._blocks[k])

    def _rngs_for(self, seed: int) -> list[np.random.Generator]:
        return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(self.num_envs)]

    @property
    def batch(self) -> BatchedNMF | BucketedNMF:
        """Inner problems held by this process (all of them with one process)."""
        return self._local.batch

    # -- running commands on all hosts -----------------------------------------------------
    def _on_hosts(self, cmd: str, payloads: list[tuple | None]) -> list[Any]:
        """Run ``cmd`` with each host's payload (``None``: skip); workers run concurrently."""
        for remote, args in zip(self._remotes, payloads[1:], strict=True):
            if args is not None:
                remote.send(cmd, *args)
        out: list[Any] = [None] * len(payloads)
        if payloads[0] is not None:
            out[0] = getattr(self._local, cmd)(*payloads[0])
        for k, (remote, args) in enumerate(zip(self._remotes, payloads[1:], strict=True), 1):
            if args is not None:
                out[k] = remote.recv()
        return out

    # -- placement -------------------------------------------------------------------------
    def _place(self, envs: Sequence[int], configs: Sequence[NMFConfig]) -> np.ndarray:
        """Choose the host of each new problem (its sub-env's old problem is being dropped).

        Without bucketing, hosts keep fixed blocks of sub-envs. With bucketing, the problems
        are taken class by class (costliest class first) and each goes to the host holding
        the most problems of its class, as long as that host stays within half a problem of
        an even share of the modelled work; otherwise to the least loaded host. So the loads
        stay balanced and most classes live on one host (fewer, larger batches).
        """
        envs = np.asarray(envs, dtype=np.int64)
        if self._blocks is not None:
            return np.searchsorted(self._blocks, envs, side="right") - 1
        for env in envs:
            if self._host_of[env] >= 0:
                self._host_work[self._host_of[env]] -= self._work[env]
                self._host_classes[self._host_of[env], self._class_of[env]] -= 1
        classes = []
        for config in configs:
            shape = (config.m, config.n, config.rank, config.batch_size)
            classes.append(
                next(
                    g
                    for g, box in enumerate(self._classes)
                    if all(v <= cap for v, cap in zip(shape, box, strict=True))
                )
            )
        work = [box_cost(self._classes[g]) for g in classes]
        target = (self._host_work.sum() + sum(work)) / self.n_processes
        hosts = np.zeros(envs.size, dtype=np.int64)
        for j in sorted(range(envs.size), key=lambda j: (-classes[j], envs[j])):
            g, w = classes[j], work[j]
            load, count = self._host_work, self._host_classes[:, g]
            room = load + w <= target + 0.5 * w
            if (room & (count > 0)).any():  # the fullest host of the class that has room
                h = int(np.argmax(np.where(room & (count > 0), count, -1)))
            else:
                h = int(np.argmin(load))
            hosts[j] = h
            load[h] += w
            count[h] += 1
            self._work[envs[j]], self._class_of[envs[j]] = w, g
        return hosts

    # -- episodes --------------------------------------------------------------------------
    def _restart(self, envs: np.ndarray, draws: list[tuple[int, np.random.Generator]]) -> None:
        """Start new episodes in ``envs``: instance ``index`` initialised from ``generator``."""
        configs = [self.family.instance_config(self.split, index) for index, _ in draws]
        hosts = self._place(envs, configs)
        loads: list[list] = [[] for _ in range(self.n_processes)]
        unloads: list[list] = [[] for _ in range(self.n_processes)]
        for env, host, config, (_, generator) in zip(envs, hosts, configs, draws, strict=True):
            old = self._host_of[env]
            if old >= 0 and old != host:
                unloads[old].append(env)
            loads[host].append((int(env), config, generator))
            self._host_of[env] = host
            self._names[env] = config.name
        payloads = [
            (np.array(u, dtype=np.int64), items) if (u or items) else None
            for u, items in zip(unloads, loads, strict=True)
        ]
        bound = np.full(self.num_envs, np.nan)
        loss0 = np.zeros(self.num_envs)
        for items, out in zip(loads, self._on_hosts("restart", payloads), strict=True):
            if items:
                idx = np.array([env for env, _, _ in items])
                bound[idx], loss0[idx] = out
        self._steps[envs] = 0
        self._clips[envs] = 0
        # LR range and feature references of the fresh episodes
        ok = np.isfinite(bound) & (bound > 0)
        lr_ref = np.where(ok, 0.5 * np.where(ok, bound, 1.0), 1e-2)
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[envs] = True
        self._bound = np.where(mask, bound, self._bound)
        self._lr_min = np.where(mask, lr_ref * self.lr_range[0], self._lr_min)
        self._lr_max = np.where(mask, lr_ref * self.lr_range[1], self._lr_max)
        self._lr = np.where(mask, lr_ref * self.init_lr, self._lr)
        # the features see the common scale (metasched.loop): 2 x the analytic 1/L
        self.tracker.start(lr=self._lr, loss=loss0, bound=ANALYTIC_SCALE * self._bound, mask=mask)

    def _random_draws(self, envs: np.ndarray) -> list[tuple[int, np.random.Generator]]:
        """Each sub-env's next instance and initialisation generator, from its own stream."""
        draws = []
        pool = self.family.pool_sizes[self.split]
        for env in envs:
            rng = self._slot_rngs[env]
            index = int(rng.integers(pool))
            draws.append((index, np.random.default_rng(rng.integers(2**63))))
        return draws

    def reset_slot(self, slot: int, index: int, generator: np.random.Generator) -> None:
        """Start sub-env ``slot`` on instance ``index``, initialised from ``generator``.

        ``generator`` is consumed exactly as :class:`LRControlEnv` consumes its task
        generator, so a slot and a single env given equal generators follow one trajectory.
        """
        if not isinstance(slot, int | np.integer) or not 0 <= slot < self.num_envs:
            raise IndexError(f"slot must be in [0, {self.num_envs}), got {slot!r}")
        self._restart(np.array([slot]), [(int(index), generator)])

    def reset(self) -> VecEnvObs:
        """Start a fresh episode in every sub-env and return the ``(B, 12)`` observations.

        After :meth:`seed`, every random stream restarts from the new seed (the per-sub-env
        instance streams and, with ``rng="shared"``, each process's shared minibatch and
        noise streams), and the problems are placed afresh: the env then rolls out as a new
        env built with that seed.
        """
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        if seed is not None:
            self._seed = int(seed)
            self._slot_rngs = self._rngs_for(self._seed)
            self._on_hosts("reseed", [(self._seed,)] * self.n_processes)
            self._host_of[:] = -1
            self._work[:] = 0.0
            self._class_of[:] = -1
            self._host_work[:] = 0.0
            self._host_classes[:] = 0
        self._reset_seeds()
        envs = np.arange(self.num_envs)
        self._restart(envs, self._random_draws(envs))
        return self.tracker.observation

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next step."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Apply the stored actions: one decision interval of every sub-env."""
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        actions, self._actions = self._actions, None
        B, T = self.num_envs, self.steps_per_action
        self._lr = action_to_lr(self.action_mode, actions, self._lr, self._lr_min, self._lr_max)
        requested = self._lr * anneal_factor(self.anneal, self._steps, self.budget)
        applied = requested.copy()
        clipped = np.zeros(B, dtype=bool)
        if self.clip in ("auto", "deterministic"):
            cap = self.kappa * self._bound
            clipped = np.isfinite(cap) & (applied > cap)
            applied = np.where(clipped, cap, applied)
        self._clips += clipped
        prev = self.tracker.log_loss.copy()
        ending = self._steps + T >= self.budget  # evaluated right after training
        losses = np.full((B, T), np.nan)
        grad_norm = np.zeros(B)
        n_done = np.zeros(B, dtype=np.int64)
        diverged = np.zeros(B, dtype=bool)
        bound = np.full(B, np.nan)
        final = np.full(B, np.nan)
        envs = [np.flatnonzero(self._host_of == h) for h in range(self.n_processes)]
        payloads = [(e, applied[e], T, ending[e]) if e.size else None for e in envs]
        for e, out in zip(envs, self._on_hosts("train", payloads), strict=True):
            if e.size:
                losses[e], grad_norm[e], n_done[e], diverged[e], bound[e], final[e] = out
        self._steps += T
        done_steps = np.maximum(n_done, 1)
        with np.errstate(invalid="ignore"):
            mean_loss = np.where(diverged, np.inf, np.nansum(losses, axis=1) / done_steps)
            ups = np.nansum(np.diff(losses, axis=1) > 0, axis=1)
        frac_up = np.where(n_done > 1, ups / np.maximum(n_done - 1, 1), 0.0)
        self._bound = np.where(diverged, self._bound, bound)
        obs = self.tracker.update(
            lr=self._lr,
            loss=mean_loss,
            frac_increasing=frac_up,
            grad_norm=grad_norm,
            bound=ANALYTIC_SCALE * self._bound,
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
        infos: list[dict[str, Any]] = []
        for i in range(B):
            info: dict[str, Any] = {
                "lr": float(requested[i]),
                "applied_lr": float(applied[i]),
                "train_loss": float(mean_loss[i]),
                "val_loss": None,
                "diverged": bool(diverged[i]),
                "clipped": bool(clipped[i]),
                "inner_steps": int(self._steps[i]),
                "lr_bound": float(ANALYTIC_SCALE * self._bound[i]),
                "instance": self._names[i],
            }
            if done[i]:
                info["terminal_observation"] = obs[i].copy()
                info["final_loss"] = math.inf if diverged[i] else float(final[i])
                info["clip_count"] = int(self._clips[i])
                info["TimeLimit.truncated"] = False
            infos.append(info)
        ended = np.flatnonzero(done)
        if ended.size:
            self._restart(ended, self._random_draws(ended))
        return self.tracker.observation, rewards.astype(np.float32), done, infos

    # -- VecEnv plumbing -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker processes (if any)."""
        for remote in getattr(self, "_remotes", []):
            remote.close()
        self._remotes = []

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """Return an attribute of the (shared) env for each selected sub-env."""
        return [getattr(self, attr_name, None) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the shared env (sub-envs have no separate objects).

        The step settings (:data:`STEP_SETTINGS`) are validated as the constructor validates
        them and apply from the next decision on (``lr_range``, ``init_lr``: from each
        sub-env's next episode); they are shared, so ``indices`` must select every sub-env.
        Construction settings (:data:`FROZEN_SETTINGS`) cannot change. Any other name is set
        on this object.
        """
        if attr_name in FROZEN_SETTINGS:
            raise ValueError(f"{attr_name} cannot change after construction; build a new env")
        if attr_name not in STEP_SETTINGS:
            setattr(self, attr_name, value)
            return
        if sorted(set(self._indices(indices))) != list(range(self.num_envs)):
            raise ValueError(
                f"{attr_name} is shared by all sub-envs of a batched env; set it for all "
                f"(indices=None), got indices={indices!r}"
            )
        settings = {name: getattr(self, name) for name in STEP_SETTINGS}
        settings[attr_name] = value
        lo, hi = _check_step_settings(settings, self.split, self.divergence_factor)
        if attr_name == "lr_range":
            value = (lo, hi)
        elif attr_name in ("kappa", "init_lr", "divergence_penalty"):
            value = float(value)
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
