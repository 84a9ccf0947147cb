"""Batched vector env for the network families: B episodes as stacked computations.

:class:`BatchedTorchVecEnv` is a Stable-Baselines3 ``VecEnv`` whose B sub-environments follow
exactly the MDP of :class:`~metasched.envs.lr_control.LRControlEnv` on the ``mlp``,
``mnist1d`` or ``mixed`` family (same instance distribution, actions, observation features,
rewards, clipping and termination), while the inner training of all of them runs together:

* network problems go to :class:`~metasched.inner_tasks.stacked.StackedNetworks`: one
  stacked model per architecture (shape bucket: MLP layer widths, or MNIST-1D CNN width),
  per-slot data, minibatch stream, LR, momentum and divergence;
* NMF problems (the ``nmf`` member of ``mixed``) go to
  :class:`~metasched.inner_tasks.nmf_batched.BucketedNMF`.

Finished sub-envs reset automatically, SB3-style (``infos[i]["terminal_observation"]``).
Every sub-env keeps the single env's random streams (its own instance and initialisation
stream, the instance's own minibatches), and no result depends on which other problems share
a bucket or a process, so a given seed gives the same rollouts for any ``n_processes``.

Several processes (``n_processes``) split the sub-envs into contiguous shards, each stepped
by a worker process (this process steps the first shard) concurrently. The default is one
process: measured with PPO on ``MLP-v0`` (32 envs, ``benchmarks/bench_batched_torch.py``, on
2 cores shared with other jobs), 2 processes ran at 0.69x and 0.70x the speed of 1 in two
runs (e.g. 40 vs 56 env steps/s) and on ``MNIST1D-v0`` at 1.0x and 0.96x: halving the
shards doubles the number of small buckets per step, and the PPO update in the parent does
not overlap with the workers.

Clipping (``clip``): ``"deterministic"`` caps NMF slots at ``kappa`` times their analytic
bound (network slots have none); ``"measured"`` caps network slots at ``kappa_measured`` times the
bound :meth:`StackedNetworks.lr_bound <metasched.inner_tasks.stacked.StackedNetworks.lr_bound>`
measures (the fork test of :class:`~metasched.stability.ForkTestEstimator`, settings
``ForkTestEstimator.for_interval(steps_per_action)``, batched across the slots of a shape
bucket and re-measured every ``every`` decisions); ``"auto"`` is analytic on NMF slots and
measured on network slots; ``"none"`` never clips. The factors default per kind of bound
(:data:`BOUND_KAPPA`, the single env's). Unlike the single env's Driver, this env does not
re-measure before an LR ramps above the last measured bound (measured every ``every``
decisions only). The bound in use also feeds the observation's bound feature, and the
SGD steps spent measuring it are reported per decision (``info["bound_steps"]``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvObs, VecEnvStepReturn

from metasched.actions import anneal_factor, check_anneal
from metasched.envs.batched import WorkerProcess
from metasched.envs.lr_control import action_space_for, action_to_lr, check_env_args
from metasched.errors import ConfigError
from metasched.features import FEATURE_HIGH, FEATURE_LOW, FeatureTracker
from metasched.inner_tasks import family_lr_range, make_family
from metasched.inner_tasks.mixed import DEFAULT_MEMBERS, MixedConfig, MixedFamily
from metasched.inner_tasks.nmf_batched import BucketedNMF, shape_classes
from metasched.inner_tasks.stacked import StackedNetworks
from metasched.loop import ANALYTIC_SCALE, DEFAULT_CLIP, DEFAULT_KAPPA, DEFAULT_KAPPA_MEASURED
from metasched.stability import ForkTestEstimator

__all__ = ["BATCHED_CLIP_MODES", "BATCHED_FAMILIES", "BOUND_KAPPA", "BatchedTorchVecEnv"]

#: Families this env runs (``mixed`` with members among ``nmf``, ``mlp``, ``mnist1d``).
BATCHED_FAMILIES: tuple[str, ...] = ("mlp", "mnist1d", "mixed")
_MEMBERS = ("nmf", "mlp", "mnist1d")
#: Clipping modes of this env (see the module docstring).
BATCHED_CLIP_MODES: tuple[str, ...] = ("deterministic", "measured", "auto", "none")
#: The LR is clipped at a factor times the bound, by kind of bound (``kappa``, ``kappa_measured``):
#: NMF's analytic ``1/L`` is about half the true limit (the env's long-standing factor 2);
#: the fork test estimates the limit itself, and ``1/sqrt(2)`` of it stayed at or below the
#: empirical largest stable LR at 95-100% of checkpoints (``benchmarks/bench_stability.py``).
BOUND_KAPPA: dict[str, float] = {"analytic": DEFAULT_KAPPA, "measured": DEFAULT_KAPPA_MEASURED}
#: Settings :meth:`BatchedTorchVecEnv.set_attr` changes at run time (attribute: config key).
SETTINGS: dict[str, str] = {
    "budget": "budget",
    "steps_per_action": "steps_per_action",
    "clip": "clip",
    "kappa": "kappa",
    "kappa_measured": "kappa_measured",
    "lr_range": "lr_range",
    "init_lr": "init_lr",
    "reward_mode": "reward",
    "divergence_penalty": "divergence_penalty",
}
#: Constructor settings that cannot change once the env runs.
FROZEN = (
    "anneal",
    "num_envs",
    "family_name",
    "split",
    "action_mode",
    "divergence_factor",
    "family_seed",
    "family_kwargs",
    "dtype",
    "n_processes",
)


def _measures(clip: str) -> bool:
    """Whether clip mode ``clip`` measures the network slots' bounds."""
    return clip in ("measured", "auto")


def _kappas(cfg: dict[str, Any]) -> tuple[float, float]:
    """``(analytic, measured)`` clip factors of a config (as the single env's Driver)."""
    return cfg["kappa"], cfg["kappa_measured"]


class _Core:
    """The sub-envs of one process: their MDP state and their inner problems."""

    def __init__(self, cfg: dict[str, Any], offset: int, size: int) -> None:
        self.cfg = cfg
        self.offset, self.n = offset, size
        self.family = make_family(cfg["family"], cfg["family_seed"], **cfg["family_kwargs"])
        if isinstance(self.family, MixedFamily):
            bad = [f for f in self.family.families if f not in _MEMBERS]
            if bad:
                raise ConfigError(
                    f"the batched env mixes {', '.join(_MEMBERS)} only, got member {bad[0]!r}"
                )
        self.split = cfg["split"]
        self.nets = StackedNetworks(
            size, dtype=cfg["dtype"], divergence_factor=cfg["divergence_factor"]
        )
        self._set_stability()
        self.nmf: BucketedNMF | None = None
        members = getattr(self.family, "members", {})
        if "nmf" in members:
            self.nmf = BucketedNMF(
                size,
                shape_classes(members["nmf"], self.split),
                dtype=cfg["dtype"],
                divergence_factor=cfg["divergence_factor"],
            )
        self.is_nmf = np.zeros(size, dtype=bool)
        self.tracker = FeatureTracker(size)
        B = size
        self.lr = np.ones(B)
        self.lr_min = np.ones(B)
        self.lr_max = np.ones(B)
        self.bound = np.full(B, np.nan)
        self.steps = np.zeros(B, dtype=np.int64)
        self.clips = np.zeros(B, dtype=np.int64)
        self.bound_steps = np.zeros(B)  # bound measurement since the last report, per slot
        self.bound_total = np.zeros(B)  # ... and over the episode
        self.names = [""] * B
        self.rngs: list[np.random.Generator] = []
        self.seed(cfg["seed"])

    def _set_stability(self) -> None:
        """Measure the network slots' bounds exactly when the clip mode uses them."""
        cfg = self.cfg
        measure = _measures(cfg["clip"])
        est = ForkTestEstimator.for_interval(cfg["steps_per_action"]) if measure else None
        self.nets.stability = est

    def configure(self, key: str, value: Any) -> None:
        """Change one step setting (validated by the env) from the next decision on.

        Switching the clip mode to a measured one measures the live network slots' bounds
        now (so the next decision is clipped); switching away forgets them.
        """
        measured_before = _measures(self.cfg["clip"])
        self.cfg[key] = value
        if key not in ("clip", "steps_per_action"):
            return
        self._set_stability()
        net = ~self.is_nmf & self.nets.active
        if _measures(self.cfg["clip"]) and not measured_before:
            idx = np.flatnonzero(net)
            self.bound[idx] = self.nets.lr_bound(idx)
            spent = self.nets.bound_cost_last[idx]
            self.bound_steps[idx] += spent
            self.bound_total[idx] += spent
        elif not _measures(self.cfg["clip"]):
            self.bound[net] = np.nan

    def seed(self, seed: int) -> None:
        """Per-slot instance streams: slot i of the whole env gets stream i of ``seed``."""
        seqs = np.random.SeedSequence(int(seed)).spawn(self.offset + self.n)[self.offset :]
        self.rngs = [np.random.default_rng(s) for s in seqs]

    def draws(self, envs: np.ndarray) -> list[tuple[int, np.random.Generator]]:
        """Each sub-env's next instance index and initialisation generator (its own stream)."""
        pool = self.family.pool_sizes[self.split]
        out = []
        for env in envs:
            rng = self.rngs[env]
            index = int(rng.integers(pool))
            out.append((index, np.random.default_rng(rng.integers(2**63))))
        return out

    def restart(self, envs: np.ndarray, draws: list[tuple[int, np.random.Generator]]) -> None:
        """Start new episodes in ``envs`` (local slot indices)."""
        B = self.n
        loss0 = np.full(B, np.nan)
        lr_ref = np.full(B, np.nan)
        df = self.cfg["divergence_factor"]
        nmf_new = []
        for env, (index, generator) in zip(envs, draws, strict=True):
            config = self.family.instance_config(self.split, index)
            task = self.family.make_task(config, divergence_factor=df)
            self.names[env] = task.name
            member = config.family if isinstance(config, MixedConfig) else "net"
            if member == "nmf":
                assert self.nmf is not None
                self.nets.unload(int(env))
                self.nmf.load(int(env), task, generator)
                self.is_nmf[env] = True
                nmf_new.append(int(env))
            else:
                if self.nmf is not None:
                    self.nmf.unload(int(env))
                loss0[env] = self.nets.load(int(env), task, generator)
                lr_ref[env] = task.default_lr()
                self.is_nmf[env] = False
        mask = np.zeros(B, dtype=bool)
        mask[envs] = True
        bound = np.full(B, np.nan)
        net = mask & ~self.is_nmf
        bound[net] = self.nets.lr_bound(np.flatnonzero(net))
        spent = self.nets.bound_cost_last
        self.bound_total[envs] = 0.0
        self.bound_steps[envs] = 0.0
        self.bound_steps[net] += spent[net]
        self.bound_total[net] += spent[net]
        val0 = np.where(net, loss0, np.nan)
        if nmf_new:
            assert self.nmf is not None
            idx = np.array(nmf_new)
            bound[idx] = self.nmf.lr_bound(idx)
            loss0[idx] = self.nmf.evaluate(idx)
            b = bound[idx]
            lr_ref[idx] = 0.5 * b  # NMFTask.default_lr: half the deterministic-safe rate
        lr_ref = np.where(np.isfinite(lr_ref) & (lr_ref > 0), lr_ref, 1e-2)
        lo, hi = self.cfg["lr_range"]
        self.steps[envs] = 0
        self.clips[envs] = 0
        self.bound = np.where(mask, bound, self.bound)
        self.lr_min = np.where(mask, lr_ref * lo, self.lr_min)
        self.lr_max = np.where(mask, lr_ref * hi, self.lr_max)
        self.lr = np.where(mask, lr_ref * self.cfg["init_lr"], self.lr)
        common = self.common_bound()
        self.tracker.start(lr=self.lr, loss=loss0, bound=common, val_loss=val0, mask=mask)

    def common_bound(self) -> np.ndarray:
        """Return the bounds on metasched.loop's common scale (NMF's analytic 1/L doubled)."""
        return np.where(self.is_nmf, ANALYTIC_SCALE * self.bound, self.bound)

    def reset(self, seed: int | None) -> np.ndarray:
        """Fresh episodes everywhere (reseeding the streams first when ``seed`` is given)."""
        if seed is not None:
            self.seed(seed)
        envs = np.arange(self.n)
        self.restart(envs, self.draws(envs))
        return self.tracker.observation

    def reset_slot(self, slot: int, index: int, generator: np.random.Generator) -> np.ndarray:
        """Start local ``slot`` on instance ``index`` initialised from ``generator``."""
        self.restart(np.array([slot]), [(int(index), generator)])
        return self.tracker.observation

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """One decision interval of every sub-env (the MDP of ``LRControlEnv``)."""
        cfg = self.cfg
        B, T = self.n, cfg["steps_per_action"]
        self.lr = action_to_lr(cfg["action"], actions, self.lr, self.lr_min, self.lr_max)
        requested = self.lr * anneal_factor(cfg["anneal"], self.steps, cfg["budget"])
        applied = requested.copy()
        clipped = np.zeros(B, dtype=bool)
        if cfg["clip"] != "none":
            analytic, measured = _kappas(cfg)
            # NMF slots carry their analytic bound; network slots a measured one or NaN
            cap = np.where(self.is_nmf, analytic, measured) * self.bound
            clipped = np.isfinite(cap) & (applied > cap)
            applied = np.where(clipped, cap, applied)
        self.clips += clipped
        prev = self.tracker.log_loss.copy()
        st = self.nets.train(T, applied)
        losses, grad_norm = st.losses, st.grad_norm
        n_done, diverged = st.n_done, st.diverged
        if self.nmf is not None and self.is_nmf.any():
            sm = self.nmf.train(T, applied, track_updates=False)
            k = self.is_nmf
            losses[k], grad_norm[k] = sm.losses[k], sm.grad_norm[k]
            n_done[k], diverged[k] = sm.n_done[k], sm.diverged[k]
        self.steps += T
        with np.errstate(invalid="ignore"):
            mean_loss = np.where(
                diverged, np.inf, np.nansum(losses, axis=1) / np.maximum(n_done, 1)
            )
            ups = np.nansum(np.diff(losses, axis=1) > 0, axis=1)
        frac_up = np.where(n_done > 1, ups / np.maximum(n_done - 1, 1), 0.0)
        done = diverged | (self.steps >= cfg["budget"])
        net = ~self.is_nmf & ~diverged
        val = np.full(B, np.nan)
        val[net] = self.nets.evaluate(np.flatnonzero(net))
        bound = np.full(B, np.nan)
        bound[net] = self.nets.lr_bound(np.flatnonzero(net))
        spent = np.where(net, self.nets.bound_cost_last, 0.0)
        self.bound_steps += spent
        self.bound_total += spent
        final = val.copy()
        nmf_live = self.is_nmf & ~diverged
        if nmf_live.any():
            assert self.nmf is not None
            idx = np.flatnonzero(nmf_live)
            bound[idx] = self.nmf.lr_bound(idx)
            ending = np.flatnonzero(nmf_live & done)
            if ending.size:
                final[ending] = self.nmf.evaluate(ending)
        self.bound = np.where(diverged, self.bound, bound)
        obs = self.tracker.update(
            lr=self.lr,
            loss=mean_loss,
            frac_increasing=frac_up,
            grad_norm=grad_norm,
            bound=self.common_bound(),
            val_loss=val,
            budget_used=np.minimum(self.steps / cfg["budget"], 1.0),
        )
        log_loss, log0 = self.tracker.log_loss, self.tracker.log_loss0
        penalty = cfg["divergence_penalty"]
        if cfg["reward"] == "log_improvement":
            rewards = np.where(diverged, prev - log0 - penalty, prev - log_loss)
        else:
            rewards = np.where(done, log0 - log_loss, 0.0)
            rewards = np.where(diverged, -penalty, rewards)
        infos: list[dict[str, Any]] = []
        for i in range(B):
            info: dict[str, Any] = {
                "lr": float(requested[i]),
                "applied_lr": float(applied[i]),
                "train_loss": float(mean_loss[i]),
                "val_loss": None if math.isnan(val[i]) else float(val[i]),
                "diverged": bool(diverged[i]),
                "clipped": bool(clipped[i]),
                "inner_steps": int(self.steps[i]),
                "lr_bound": float(self.common_bound()[i]),
                "bound_steps": float(self.bound_steps[i]),
                "instance": self.names[i],
            }
            if done[i]:
                info["terminal_observation"] = obs[i].copy()
                info["final_loss"] = math.inf if diverged[i] else float(final[i])
                info["clip_count"] = int(self.clips[i])
                info["bound_steps_total"] = float(self.bound_total[i])
                info["TimeLimit.truncated"] = False
            infos.append(info)
        self.bound_steps[:] = 0.0
        ended = np.flatnonzero(done)
        if ended.size:
            self.restart(ended, self.draws(ended))
        return self.tracker.observation, rewards.astype(np.float32), done, infos


class BatchedTorchVecEnv(VecEnv):
    """``num_envs`` LR-control episodes of a network family stepped as stacked computations.

    Args:
        num_envs: number of parallel episodes B.
        family: ``"mlp"``, ``"mnist1d"`` or ``"mixed"`` (members among nmf, mlp, mnist1d).
        split: family split the episodes draw instances from.
        action, budget, steps_per_action, lr_range, init_lr, reward,
            divergence_penalty, divergence_factor, family_seed, family_kwargs: as for
            :class:`~metasched.envs.lr_control.LRControlEnv` (``lr_range`` defaults to the
            family's; ``budget`` must be a multiple of ``steps_per_action``).
        clip: ``"auto"`` (default: analytic on NMF slots, measured on network slots),
            ``"deterministic"`` (NMF slots at ``kappa`` x their analytic bound),
            ``"measured"`` (network slots at ``kappa_measured`` x their measured bound;
            families without NMF members) or ``"none"``; see the module docstring.
        kappa: the clip factor on NMF's analytic ``1/L`` (default 2, as in the single env).
        kappa_measured: the clip factor on a measured bound (default
            :data:`~metasched.loop.DEFAULT_KAPPA_MEASURED`, as in the single env).
        seed: seed of the sub-envs' instance and initialisation streams.
        dtype: ``torch.float32`` (default) or ``torch.float64`` for the stacked problems.
        n_processes: processes that step the sub-envs (contiguous shards, one torch thread
            per worker); 1 (default) keeps everything in this process. Results do not
            depend on it. Workers use ``start_method`` (default ``"forkserver"`` where
            available) and stop at :meth:`close`.
    """

    def __init__(
        self,
        num_envs: int = 32,
        family: str = "mlp",
        split: str = "train",
        action: str = "discrete3",
        budget: int = 800,
        steps_per_action: int = 40,
        clip: str = DEFAULT_CLIP,
        kappa: float = DEFAULT_KAPPA,
        kappa_measured: float = DEFAULT_KAPPA_MEASURED,
        lr_range: tuple[float, float] | None = None,
        init_lr: float = 1.0,
        reward: str = "log_improvement",
        divergence_penalty: float = 1.0,
        divergence_factor: float = 1e3,
        family_seed: int = 0,
        family_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        n_processes: int = 1,
        start_method: str | None = None,
        anneal: str = "none",
    ) -> None:
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
        if family not in BATCHED_FAMILIES:
            raise ConfigError(
                f"family must be one of {', '.join(BATCHED_FAMILIES)} for the batched torch "
                f"env, got {family!r}"
            )
        action_space = action_space_for(action)
        if lr_range is None:
            lr_range = family_lr_range(family)
        self.family_name = family
        self.family_kwargs = dict(family_kwargs or {})
        lo, hi = self._check_settings(
            split=split,
            budget=budget,
            steps_per_action=steps_per_action,
            clip=clip,
            kappa=kappa,
            kappa_measured=kappa_measured,
            lr_range=lr_range,
            init_lr=init_lr,
            reward=reward,
            divergence_penalty=divergence_penalty,
            divergence_factor=divergence_factor,
        )
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.anneal = check_anneal(anneal)
        if (
            not isinstance(n_processes, int | np.integer)
            or isinstance(n_processes, bool)
            or not 1 <= n_processes <= num_envs
        ):
            raise ConfigError(
                f"n_processes must be an integer in [1, num_envs={num_envs}], got {n_processes!r}"
            )
        super().__init__(
            num_envs, spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32), action_space
        )
        self.split = split
        self.action_mode = action
        self.budget = budget
        self.steps_per_action = steps_per_action
        self.clip = clip
        self.kappa = float(kappa)
        self.kappa_measured = float(kappa_measured)
        self.lr_range = (lo, hi)
        self.init_lr = float(init_lr)
        self.reward_mode = reward
        self.divergence_penalty = float(divergence_penalty)
        self.divergence_factor = float(divergence_factor)
        self.family_seed = family_seed
        self.dtype = dtype
        self.n_processes = int(n_processes)
        cfg = {
            "family": family,
            "family_seed": family_seed,
            "family_kwargs": dict(family_kwargs or {}),
            "split": split,
            "action": action,
            "budget": budget,
            "steps_per_action": steps_per_action,
            "clip": clip,
            "kappa": self.kappa,
            "kappa_measured": self.kappa_measured,
            "lr_range": (lo, hi),
            "init_lr": float(init_lr),
            "reward": reward,
            "divergence_penalty": float(divergence_penalty),
            "divergence_factor": float(divergence_factor),
            "seed": int(seed),
            "dtype": dtype,
            "anneal": anneal,
        }
        P = self.n_processes
        sizes = [num_envs // P + (k < num_envs % P) for k in range(P)]
        self._offsets = np.cumsum([0, *sizes])
        self._actions: np.ndarray | None = None
        self._remotes: list[WorkerProcess] = []
        self._core = _Core(cfg, 0, sizes[0])
        if P > 1:
            if start_method is None:
                methods = mp.get_all_start_methods()
                start_method = "forkserver" if "forkserver" in methods else "spawn"
            ctx = mp.get_context(start_method)
            try:
                for k in range(1, P):
                    args = (cfg, int(self._offsets[k]), sizes[k])
                    self._remotes.append(WorkerProcess(ctx, _Core, args, "BatchedTorchVecEnv"))
            except BaseException:
                self.close()
                raise

    def _check_settings(self, **settings: Any) -> tuple[float, float]:
        """Validate a full set of step settings; return ``lr_range`` as floats."""
        lo, hi = check_env_args(
            **settings,
            clip_modes=BATCHED_CLIP_MODES,
        )
        budget, interval = settings["budget"], settings["steps_per_action"]
        if budget % interval:
            raise ConfigError(
                f"budget must be a multiple of steps_per_action={interval}, got {budget!r}"
            )
        if settings["clip"] == "measured" and self._has_nmf():
            raise ConfigError(
                "clip='measured' measures network bounds only and this env has NMF slots; "
                "use clip='auto' (NMF's analytic bound, measured on networks)"
            )
        return lo, hi

    def _has_nmf(self) -> bool:
        if self.family_name != "mixed":
            return False
        return "nmf" in self.family_kwargs.get("families", DEFAULT_MEMBERS)

    @property
    def core(self) -> _Core:
        """The sub-envs stepped in this process (all of them with one process)."""
        return self._core

    def _all(self, cmd: str, args: Sequence[tuple]) -> list[Any]:
        """Run ``cmd`` on every shard with its arguments; workers run concurrently."""
        for remote, a in zip(self._remotes, args[1:], strict=True):
            remote.send(cmd, *a)
        out = [getattr(self._core, cmd)(*args[0])]
        out += [remote.recv() for remote in self._remotes]
        return out

    def _shard(self, slot: int) -> int:
        return int(np.searchsorted(self._offsets, slot, side="right") - 1)

    def reset(self) -> VecEnvObs:
        """Start a fresh episode in every sub-env and return the ``(B, 12)`` observations."""
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        self._reset_seeds()
        obs = self._all("reset", [(seed,)] * self.n_processes)
        return np.concatenate(obs)

    def reset_slot(self, slot: int, index: int, generator: np.random.Generator) -> None:
        """Start sub-env ``slot`` on instance ``index``, initialised from ``generator``.

        ``generator`` is consumed exactly as :class:`LRControlEnv` consumes its task
        generator, so a slot and a single env given equal generators follow one trajectory.
        """
        if not isinstance(slot, int | np.integer) or not 0 <= slot < self.num_envs:
            raise IndexError(f"slot must be in [0, {self.num_envs}), got {slot!r}")
        k = self._shard(int(slot))
        local = int(slot) - int(self._offsets[k])
        if k == 0:
            self._core.reset_slot(local, index, generator)
        else:
            self._remotes[k - 1].send("reset_slot", local, index, generator)
            self._remotes[k - 1].recv()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next step."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Apply the stored actions: one decision interval of every sub-env."""
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        actions, self._actions = self._actions, None
        parts = [
            (actions[self._offsets[k] : self._offsets[k + 1]],)
            for k in range(len(self._offsets) - 1)
        ]
        outs = self._all("step", parts)
        obs = np.concatenate([o[0] for o in outs])
        rewards = np.concatenate([o[1] for o in outs])
        dones = np.concatenate([o[2] for o in outs])
        infos = [i for o in outs for i in o[3]]
        return obs, rewards, dones, infos

    @property
    def observation(self) -> np.ndarray:
        """The current ``(B, 12)`` observations (for tests; one process only)."""
        return self._core.tracker.observation

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

        The step settings (:data:`SETTINGS`: ``budget``, ``steps_per_action``, ``clip``,
        ``kappa``, ``lr_range``, ``init_lr``, ``reward_mode``, ``divergence_penalty``) are
        validated and reach every sub-env (in every process) from the next decision on;
        ``lr_range`` and ``init_lr`` apply from each sub-env's next episode. They are shared,
        so ``indices`` must select every sub-env. Construction settings (:data:`FROZEN`)
        cannot change. Any other name is set on this object.
        """
        if attr_name in FROZEN:
            raise ConfigError(f"{attr_name} cannot change after construction; build a new env")
        if attr_name not in SETTINGS:
            setattr(self, attr_name, value)
            return
        if sorted(set(self._indices(indices))) != list(range(self.num_envs)):
            raise ConfigError(
                f"{attr_name} is shared by all sub-envs of a batched env; set it for all "
                f"(indices=None), got indices={indices!r}"
            )
        current = {
            "split": self.split,
            "budget": self.budget,
            "steps_per_action": self.steps_per_action,
            "clip": self.clip,
            "kappa": self.kappa,
            "kappa_measured": self.kappa_measured,
            "lr_range": self.lr_range,
            "init_lr": self.init_lr,
            "reward": self.reward_mode,
            "divergence_penalty": self.divergence_penalty,
            "divergence_factor": self.divergence_factor,
        }
        key = SETTINGS[attr_name]
        current[key] = value
        lo, hi = self._check_settings(**current)
        if key == "lr_range":
            value = (lo, hi)
        elif key in ("kappa", "kappa_measured", "init_lr", "divergence_penalty"):
            value = float(value)
        setattr(self, attr_name, value)
        self._all("configure", [(key, value)] * self.n_processes)

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
