"""Train a Stable-Baselines3 meta-agent on a metasched env; checkpoint, resume, evaluate.

:func:`train` runs (or resumes) a run described by a :class:`~metasched.agents.config.TrainConfig`
in a run directory (layout in :mod:`metasched.agents.rundir`). Training uses a batched vector
env (NMF's, or the stacked one of the MLP, MNIST-1D and Mixed envs), ``SubprocVecEnv``,
``DummyVecEnv`` or env workers in Ray actors (:class:`~metasched.distributed.vecenv.RayVecEnv`),
optionally wrapped in ``VecNormalize``; the
policy is evaluated deterministically on fixed instances of the ``val`` split (the same
instances and seeds every time, so the eval curve is not sampling noise), next to two
reference policies on the same instances: keep-the-LR and uniformly random actions. The
``best`` checkpoint is chosen on ``val``; ``test`` and ``shift`` are never touched here (they
are for the reported numbers of ``metasched compare``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from metasched.agents.config import TrainConfig, algo_class
from metasched.agents.rundir import (
    checkpoint_dirs,
    checkpoint_name,
    latest_checkpoint,
    load_vecnormalize_stats,
    obs_norm_from_stats,
    read_config,
    read_json,
    readable_dir,
    remove_stale_temporaries,
    vecnormalize_stats,
    write_dir_atomically,
    write_json,
)
from metasched.atomic import TMP_PREFIX, write_text
from metasched.errors import ConfigError

__all__ = [
    "EVAL_COLUMNS",
    "TrainResult",
    "evaluate_policy",
    "export_run",
    "keep_lr_action",
    "make_train_env",
    "resolved_env_kwargs",
    "train",
]

EVAL_COLUMNS = (
    "timesteps",
    "mean_return",
    "std_return",
    "median_final_loss",
    "diverged",
    "wall_time",
)
#: Seeds of the evaluation episodes: episode i runs val instance i with seed EVAL_SEED + i.
#: Evaluations (and so the best-checkpoint choice) use this split, never test/shift.
EVAL_SPLIT = "val"
EVAL_SEED = 10_000
OFF_POLICY = ("dqn", "sac", "td3")


def _versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3

    import metasched

    out = {
        "metasched": metasched.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "python": platform.python_version(),
    }
    try:
        import sb3_contrib

        out["sb3_contrib"] = sb3_contrib.__version__
    except ImportError:  # pragma: no cover - sb3-contrib is a dependency
        pass
    return out


def resolved_env_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Return every keyword of the env with its value in this run.

    The registered spec of ``cfg.env_id`` fills in what ``cfg.env_kwargs`` leaves out
    (:func:`~metasched.envs.registration.resolve_env_kwargs`, the one resolver that export,
    distillation and comparison use too).
    """
    from metasched.envs.registration import resolve_env_kwargs

    return resolve_env_kwargs(cfg.env_id, cfg.env_kwargs)


# -- environments ----------------------------------------------------------------------------
def make_train_env(cfg: TrainConfig, seed: int) -> Any:
    """Build the training VecEnv of a config (monitored; normalised if configured)."""
    from stable_baselines3.common.vec_env import (
        DummyVecEnv,
        SubprocVecEnv,
        VecMonitor,
        VecNormalize,
    )

    if cfg.vec_env == "batched":
        venv = _batched_env(cfg, seed)
    elif cfg.vec_env in ("ray", "ray-batched"):
        venv = _make_ray_env(cfg, seed)
    else:
        cls = SubprocVecEnv if cfg.vec_env == "subproc" else DummyVecEnv
        make = _make_worker_env if cls is SubprocVecEnv else _make_env
        fns = [partial(make, cfg.env_id, cfg.env_kwargs) for _ in range(cfg.n_envs)]
        venv = cls(fns, start_method="forkserver") if cls is SubprocVecEnv else cls(fns)
        venv.seed(seed)
    venv = VecMonitor(venv)
    if cfg.normalize.enabled:
        venv = VecNormalize(venv, **cfg.normalize.as_kwargs())
    return venv


def _make_ray_env(cfg: TrainConfig, seed: int) -> Any:
    """Envs in ``cfg.num_workers`` Ray actors (cluster: ``RAY_ADDRESS``, else local Ray)."""
    from metasched.distributed.vecenv import RayVecEnv

    if cfg.vec_env == "ray-batched":
        if cfg.env_id != "metasched/NMF-v1":
            raise ConfigError(
                f"vec_env 'ray-batched' exists for metasched/NMF-v1 only, not {cfg.env_id}"
            )
        return RayVecEnv.batched(
            cfg.n_envs, cfg.num_workers, split="train", seed=seed, **cfg.env_kwargs
        )
    fns = [partial(_make_env, cfg.env_id, cfg.env_kwargs) for _ in range(cfg.n_envs)]
    venv = RayVecEnv(fns, cfg.num_workers)
    venv.seed(seed)
    return venv


def _batched_env(cfg: TrainConfig, seed: int) -> Any:
    """Build the batched VecEnv of ``cfg``: NMF's, or the stacked one of the network families."""
    import inspect

    from metasched.envs.batched import BatchedNMFVecEnv
    from metasched.envs.batched_torch import BATCHED_FAMILIES, BatchedTorchVecEnv

    family = resolved_env_kwargs(cfg).get("family")
    if cfg.env_id == "metasched/NMF-v1":
        cls: Any = BatchedNMFVecEnv
        kwargs = dict(cfg.env_kwargs)
    elif family in BATCHED_FAMILIES:
        cls = BatchedTorchVecEnv
        # the registered spec's settings (family, budget, interval, LR range) plus overrides
        kwargs = {k: v for k, v in resolved_env_kwargs(cfg).items() if k in _TORCH_ENV_KEYS}
    else:
        raise ConfigError(
            f"vec_env 'batched' exists for metasched/NMF-v1 and the {', '.join(BATCHED_FAMILIES)} "
            f"envs, not {cfg.env_id}; use vec_env: dummy or subproc"
        )
    allowed = set(inspect.signature(cls.__init__).parameters)
    bad = [k for k in cfg.env_kwargs if k not in allowed]
    if bad:
        raise ConfigError(
            f"env kwarg {bad[0]!r} is not supported by the batched vec env; "
            "use vec_env: dummy or subproc"
        )
    if "lr_range" in kwargs and kwargs["lr_range"] is not None:
        kwargs["lr_range"] = tuple(kwargs["lr_range"])
    return cls(num_envs=cfg.n_envs, split="train", seed=seed, **kwargs)


#: Keywords of a resolved network env spec that the stacked batched env takes.
_TORCH_ENV_KEYS = (
    "family",
    "action",
    "anneal",
    "budget",
    "steps_per_action",
    "clip",
    "kappa",
    "lr_range",
    "init_lr",
    "reward",
    "divergence_penalty",
    "divergence_factor",
    "family_seed",
    "family_kwargs",
)


def _make_env(env_id: str, env_kwargs: dict[str, Any]) -> Any:
    import gymnasium as gym

    import metasched  # noqa: F401  (registers the env ids in subprocesses)

    return gym.make(env_id, split="train", **env_kwargs)


def _make_worker_env(env_id: str, env_kwargs: dict[str, Any]) -> Any:
    """Build the env inside a ``SubprocVecEnv`` worker: a process of ours, one torch thread."""
    import torch

    torch.set_num_threads(1)
    return _make_env(env_id, env_kwargs)


def keep_lr_action(mode: str, env_kwargs: dict[str, Any]) -> Any:
    """Return the action that keeps the current LR (the 'do nothing' reference policy).

    ``env_kwargs`` needs ``lr_range`` (and ``init_lr``) for the ``absolute`` mode: pass the
    resolved kwargs (:func:`resolved_env_kwargs`) or the env's own values.
    """
    from metasched.actions import DISCRETE_FACTORS

    if mode in DISCRETE_FACTORS:
        return DISCRETE_FACTORS[mode].index(1.0)
    if mode == "continuous":
        return np.zeros(1, dtype=np.float32)
    lo, hi = (float(x) for x in env_kwargs["lr_range"])
    init = float(env_kwargs.get("init_lr", 1.0))
    a = 2.0 * (math.log(init) - math.log(lo)) / (math.log(hi) - math.log(lo)) - 1.0
    return np.array([a], dtype=np.float32)


def evaluate_policy(
    act: Callable[[np.ndarray, bool], Any] | str,
    env_id: str,
    env_kwargs: dict[str, Any],
    *,
    n_episodes: int,
    split: str = EVAL_SPLIT,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """Run ``n_episodes`` on instances ``0..n-1`` of ``split`` with fixed seeds.

    ``act(obs, episode_start) -> action`` is the policy (observations as the env emits
    them); or ``"keep"`` / ``"random"`` for the reference policies. Returns per-episode
    returns and final losses plus their summary.
    """
    import gymnasium as gym

    env = gym.make(env_id, split=split, **env_kwargs).unwrapped
    mode = env.action_mode
    own = {"lr_range": env.lr_range, "init_lr": env.init_lr}  # what the env really runs with
    returns, finals, diverged = [], [], 0
    space = env.action_space
    space.seed(seed)
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i, options={"instance": i})
        start, total, done = True, 0.0, False
        info: dict[str, Any] = {}
        while not done:
            if act == "keep":
                a = keep_lr_action(mode, own)
            elif act == "random":
                a = space.sample()
            else:
                a = act(obs, start)
            obs, r, term, trunc, info = env.step(a)
            start, total, done = False, total + r, term or trunc
        returns.append(total)
        finals.append(info.get("final_loss", math.inf))
        diverged += int(bool(info.get("diverged", False)))
    env.close()
    return {
        "returns": returns,
        "final_losses": finals,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "median_final_loss": float(np.median(finals)),
        "diverged": diverged,
    }


def _policy_actor(model: Any, venv: Any, recurrent: bool) -> Callable[[np.ndarray, bool], Any]:
    """``act(obs, start)`` for one eval episode stream, normalising like training."""
    from stable_baselines3.common.vec_env import VecNormalize

    norm = venv if isinstance(venv, VecNormalize) else None
    state: list[Any] = [None]

    def act(obs: np.ndarray, start: bool) -> Any:
        o = obs[None, :]
        if norm is not None:
            o = norm.normalize_obs(o)
        if recurrent:
            a, state[0] = model.predict(
                o,
                state=None if start else state[0],
                episode_start=np.array([start]),
                deterministic=True,
            )
        else:
            a, _ = model.predict(o, deterministic=True)
        a = a[0]
        return int(a) if np.ndim(a) == 0 else a

    return act


# -- RNG state ----------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))
    n = s["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]), n[4]))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# -- the run --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    run_dir: Path
    timesteps: int
    eval_history: list[dict[str, float]]
    baselines: dict[str, dict[str, Any]]
    resumed_from: int | None
    wall_time: float


def _rollout_chunk(model: Any, cfg: TrainConfig) -> int:
    if cfg.algo in OFF_POLICY:
        tf = model.train_freq
        freq = tf.frequency if str(getattr(tf.unit, "value", tf.unit)) == "step" else 1
        return max(1, int(freq)) * cfg.n_envs
    return int(model.n_steps) * cfg.n_envs


class _Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.log = log
        self.env_kwargs = resolved_env_kwargs(cfg)
        self.history: list[dict[str, float]] = []
        self.best = -math.inf
        self.t0 = time.perf_counter()
        self.elapsed0 = 0.0
        self.total = cfg.n_timesteps
        self.model: Any = None
        self.venv: Any = None

    @property
    def recurrent(self) -> bool:
        return self.cfg.algo == "recurrentppo"

    # checkpoints ---------------------------------------------------------------------------
    def _norm_stats(self) -> dict[str, Any] | None:
        from stable_baselines3.common.vec_env import VecNormalize

        return vecnormalize_stats(self.venv) if isinstance(self.venv, VecNormalize) else None

    def _fill_model(self, d: Path) -> None:
        self.model.save(d / "model.zip")
        stats = self._norm_stats()
        if stats is not None:
            write_json(d / "vecnormalize.json", stats)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def save_checkpoint(self) -> Path:
        n = int(self.model.num_timesteps)

        def fill(d: Path) -> None:
            self._fill_model(d)
            if self.cfg.algo in OFF_POLICY:
                self.model.save_replay_buffer(d / "replay_buffer.pkl")
            write_json(
                d / "state.json",
                {
                    "timesteps": n,
                    "target_timesteps": self.total,
                    "rng": _rng_state(),
                    "eval_history": self.history,
                    "best": self.best if math.isfinite(self.best) else None,
                    "elapsed": self.elapsed(),
                },
            )

        root = self.run_dir / "checkpoints"
        path = write_dir_atomically(root / checkpoint_name(n), fill)
        write_text(root / "latest", path.name + "\n")
        for old in checkpoint_dirs(self.run_dir)[:-1]:  # replay buffers: latest only
            (old / "replay_buffer.pkl").unlink(missing_ok=True)
        return path

    # evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        act = _policy_actor(self.model, self.venv, self.recurrent)
        res = evaluate_policy(
            act,
            self.cfg.env_id,
            self.cfg.env_kwargs,
            n_episodes=self.cfg.n_eval_episodes,
            split=EVAL_SPLIT,
        )
        row = {
            "timesteps": int(self.model.num_timesteps),
            "mean_return": res["mean_return"],
            "std_return": res["std_return"],
            "median_final_loss": res["median_final_loss"],
            "diverged": res["diverged"],
            "wall_time": round(self.elapsed(), 3),
        }
        self.history.append(row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EVAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.run_dir / "eval.csv", buf.getvalue())
        if row["mean_return"] > self.best:
            self.best = row["mean_return"]

            def fill(d: Path) -> None:
                self._fill_model(d)
                write_json(d / "eval.json", row)

            write_dir_atomically(self.run_dir / "best", fill)
        self.log(
            f"eval @ {row['timesteps']:>9,} steps: mean return {row['mean_return']:+.3f} "
            f"(± {row['std_return']:.3f}), median final loss {row['median_final_loss']:.4g}, "
            f"{row['diverged']} diverged"
        )
        return row


def _next_multiple(n: int, freq: int) -> int | None:
    return (n // freq + 1) * freq if freq else None


def _make_callback(tr: _Trainer) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    cfg = tr.cfg

    class RunCallback(BaseCallback):
        """Checkpoints and val-split evaluations at fixed timestep intervals."""

        def _on_training_start(self) -> None:
            n = self.model.num_timesteps
            self.next_ckpt = _next_multiple(n, cfg.checkpoint_freq)
            self.next_eval = _next_multiple(n, cfg.eval_freq)

        def _on_step(self) -> bool:
            n = self.model.num_timesteps
            if self.next_eval is not None and n >= self.next_eval:
                tr.evaluate()
                for k, v in tr.history[-1].items():
                    self.logger.record(f"eval/{k}", v)
                while self.next_eval <= n:
                    self.next_eval += cfg.eval_freq
            if self.next_ckpt is not None and n >= self.next_ckpt:
                tr.save_checkpoint()
                while self.next_ckpt <= n:
                    self.next_ckpt += cfg.checkpoint_freq
            return True

    return RunCallback()


def _progress_callback(total: int) -> Any:
    """SB3 callback that prints a progress line every few seconds (for non-terminals)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from metasched.progress import Progress

    class ProgressLines(BaseCallback):
        """Progress of ``learn`` as plain lines (:class:`~metasched.progress.Progress`)."""

        def _on_training_start(self) -> None:
            self.start = self.model.num_timesteps
            self.report = Progress("training", total=total - self.start, unit="timesteps",
                                   tty=False)  # fmt: skip

        def _on_step(self) -> bool:
            self.report.update_to(self.model.num_timesteps - self.start)
            return True

        def _on_training_end(self) -> None:
            self.report.close()

    return ProgressLines()


def _build(cfg: TrainConfig, tr: _Trainer, run_dir: Path) -> None:
    """Build the env and the model of a new run (nothing is written to disk)."""
    tr.venv = make_train_env(cfg, cfg.seed)
    try:
        tr.model = algo_class(cfg.algo)(
            cfg.policy,
            tr.venv,
            seed=cfg.seed,
            device="cpu",
            verbose=0,
            tensorboard_log=str(run_dir / "tb"),
            policy_kwargs=cfg.resolved_policy_kwargs() or None,
            **cfg.algo_kwargs,
        )
    except BaseException:
        tr.venv.close()
        raise


def _start(cfg: TrainConfig, tr: _Trainer, run_dir: Path, cmd: str) -> None:
    """Create the run directory of a new run, ending with a resumable checkpoint at step 0.

    Everything is written into a temporary sibling (``.tmp-NAME-*``) that is renamed to
    ``run_dir`` only when complete, so a start that fails, is interrupted or is killed leaves
    ``run_dir`` as it was (absent or empty) and the same command can simply be run again.
    """
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{run_dir.name}-", dir=run_dir.parent))
    tr.run_dir = tmp
    try:
        write_text(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json(tmp / "version.json", _versions())
        write_text(tmp / "command.txt", cmd + "\n")
        base = {}
        for name in ("keep", "random"):
            base[name] = evaluate_policy(
                name, cfg.env_id, cfg.env_kwargs, n_episodes=cfg.n_eval_episodes
            )
            tr.log(
                f"reference policy {name!r}: mean return {base[name]['mean_return']:+.3f}, "
                f"median final loss {base[name]['median_final_loss']:.4g}"
            )
        write_json(tmp / "baselines.json", base)
        tr.evaluate()
        if cfg.checkpoint_freq:
            tr.save_checkpoint()  # from here on, --resume can continue the run
        os.replace(tmp, run_dir)  # replaces an empty run_dir too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        tr.run_dir = run_dir


def train(
    cfg: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    total_timesteps: int | None = None,
    progress: bool = True,
    command: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``run_dir``; return its result.

    A new run needs ``cfg`` and an empty or absent ``run_dir`` (an existing run is never
    overwritten). The env and model are built before anything is written, and the new
    directory appears only once it holds a checkpoint at step 0: a start that fails, or
    is killed, leaves ``run_dir`` as it was. ``resume`` reloads
    the config from the directory and continues from its newest complete checkpoint —
    model, optimizer, normaliser statistics, timestep counter, RNG state and evaluation
    history — so a crash costs at most one checkpoint interval. ``total_timesteps``
    (resume only) changes the target. ``progress`` shows a bar on a terminal and a line
    every few seconds otherwise (:mod:`metasched.progress`).
    """
    from stable_baselines3.common.vec_env import VecNormalize

    run_dir = Path(run_dir)
    resumed_from: int | None = None
    cmd = " ".join(shlex.quote(a) for a in (command if command is not None else sys.argv))
    if resume:
        cfg = TrainConfig.from_dict(read_config(run_dir))
        if total_timesteps is not None:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "n_timesteps": int(total_timesteps)})
        remove_stale_temporaries(run_dir)
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError(f"{str(run_dir)!r} has no checkpoint to resume from")
        with open(run_dir / "command.txt", "a") as fh:
            fh.write(cmd + "\n")
    else:
        if cfg is None:
            raise ConfigError("a new run needs a config")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(
                f"run directory {str(run_dir)!r} is not empty; pass --resume to continue it "
                "or choose another --out"
            )
        ckpt = None
    assert cfg is not None

    tr = _Trainer(cfg, run_dir, log)
    if ckpt is None:
        _build(cfg, tr, run_dir)
    else:
        state = read_json(ckpt / "state.json")
        done = int(state["timesteps"])
        resumed_from = done
        tr.venv = make_train_env(cfg, cfg.seed + done)  # fresh, deterministic episode streams
        if isinstance(tr.venv, VecNormalize):
            load_vecnormalize_stats(tr.venv, read_json(ckpt / "vecnormalize.json"))
        tr.model = algo_class(cfg.algo).load(
            ckpt / "model.zip", env=tr.venv, device="cpu", tensorboard_log=str(run_dir / "tb")
        )
        if (ckpt / "replay_buffer.pkl").is_file():
            tr.model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        _set_rng_state(state["rng"])
        tr.history = list(state["eval_history"])
        tr.best = -math.inf if state["best"] is None else float(state["best"])
        tr.elapsed0 = float(state.get("elapsed", 0.0))
        log(f"resuming {run_dir} from checkpoint {ckpt.name} ({done:,} timesteps)")

    chunk = _rollout_chunk(tr.model, cfg)
    tr.total = -(-cfg.n_timesteps // chunk) * chunk
    if tr.total != cfg.n_timesteps and ckpt is None:
        log(
            f"training {tr.total:,} timesteps ({cfg.n_timesteps:,} rounded up to whole "
            f"rollouts of {chunk:,})"
        )
    try:
        if ckpt is None:
            _start(cfg, tr, run_dir, cmd)
        remaining = tr.total - int(tr.model.num_timesteps)
        if remaining > 0:
            tty = progress and sys.stderr.isatty()
            callbacks = [_make_callback(tr)]
            if progress and not tty:
                callbacks.append(_progress_callback(tr.total))
            tr.model.learn(
                total_timesteps=remaining,
                callback=callbacks,
                reset_num_timesteps=ckpt is None,
                progress_bar=tty,
                tb_log_name="run",
            )
        if not tr.history or tr.history[-1]["timesteps"] != tr.model.num_timesteps:
            tr.evaluate()
        write_dir_atomically(run_dir / "final", tr._fill_model)
        if cfg.checkpoint_freq:
            last = latest_checkpoint(run_dir)
            if last is None or read_json(last / "state.json")["timesteps"] != int(
                tr.model.num_timesteps
            ):
                tr.save_checkpoint()
    finally:
        tr.venv.close()
    baselines = read_json(run_dir / "baselines.json")
    return TrainResult(
        run_dir=run_dir,
        timesteps=int(tr.model.num_timesteps),
        eval_history=tr.history,
        baselines=baselines,
        resumed_from=resumed_from,
        wall_time=tr.elapsed(),
    )


def export_run(
    run_dir: str | Path, out: str | Path, *, which: str = "best", source: str | None = None
) -> Path:
    """Export the ``best``/``final``/``latest`` policy of a run to one ``.msched`` file.

    The header's ``extra.source`` records the model directory exported (``source`` replaces
    that path, e.g. with one relative to a build directory, for files that leave the machine).
    """
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict(read_config(run_dir))
    if which == "latest":
        src = latest_checkpoint(run_dir)
        if src is None:
            raise ConfigError(f"{str(run_dir)!r} has no checkpoint")
    elif which in ("best", "final"):
        src = readable_dir(run_dir / which)  # a kill mid-replacement left the old copy
        if not (src / "model.zip").is_file():
            raise ConfigError(f"{str(run_dir)!r} has no {which} model yet")
    else:
        raise ConfigError(f"which must be 'best', 'final' or 'latest', got {which!r}")
    from metasched.agents.export import export_model

    model = algo_class(cfg.algo).load(src / "model.zip", device="cpu")
    stats_path = src / "vecnormalize.json"
    stats = read_json(stats_path) if stats_path.is_file() else None
    return export_model(
        model,
        Path(out),
        env_id=cfg.env_id,
        env_kwargs=resolved_env_kwargs(cfg),
        obs_norm=obs_norm_from_stats(stats),
        extra={
            "algo": cfg.algo,
            "source": str(src) if source is None else source,
            "which": which,
            "timesteps": int(model.num_timesteps),
        },
    )
