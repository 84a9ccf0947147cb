"""The run directory of a training run: layout, atomic writes, checkpoints, normaliser stats.

::

    RUN_DIR/
      config.yaml          resolved TrainConfig
      command.txt          command lines that ran in this directory (one per start/resume)
      version.json         package versions
      eval.csv             evaluation history on the val split (selects best/)
      baselines.json       keep-the-LR and random policies on the same val instances
      checkpoints/step_000000020000/{model.zip, vecnormalize.json, state.json[, replay_buffer.pkl]}
      checkpoints/latest   name of the newest complete checkpoint
      best/{model.zip, vecnormalize.json, eval.json}
      final/{model.zip, vecnormalize.json}
      tb/                  TensorBoard logs

Every file and checkpoint is written to a temporary name and renamed into place, so a crash
(even SIGKILL) mid-write never leaves a corrupt latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metasched.errors import ConfigError

__all__ = [
    "CHECKPOINT_PREFIX",
    "atomic_write_text",
    "checkpoint_dirs",
    "latest_checkpoint",
    "load_vecnormalize_stats",
    "read_config",
    "vecnormalize_stats",
    "write_dir_atomically",
]

CHECKPOINT_PREFIX = "step_"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_dir_atomically(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create directory ``target`` by filling a temporary sibling and renaming it.

    An existing ``target`` is replaced only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".old-{target.name}-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written temporaries (files and directories) a killed run left behind."""
    for parent in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if parent.is_dir():
            for p in parent.iterdir():
                if not p.name.startswith((".tmp-", ".old-")):
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Return the complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def checkpoint_name(timesteps: int) -> str:
    """Return the directory name of the checkpoint at ``timesteps``."""
    return f"{CHECKPOINT_PREFIX}{timesteps:012d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint (``latest`` pointer, else newest on disk)."""
    ckpts = checkpoint_dirs(run_dir)
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if pointer.is_file():
        named = Path(run_dir) / "checkpoints" / pointer.read_text().strip()
        if named in ckpts and named == ckpts[-1]:
            return named
    return ckpts[-1] if ckpts else None


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Return the resolved config of a run directory (``ConfigError`` if it is not one)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a metasched run directory (no config.yaml)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "algo" not in data:
        raise ConfigError(f"{str(path)!r} is not a metasched run config")
    return data


def vecnormalize_stats(venv: Any) -> dict[str, Any]:
    """Return the statistics and settings of an SB3 ``VecNormalize`` as JSON data."""
    return {
        "obs_mean": np.asarray(venv.obs_rms.mean, dtype=float).tolist(),
        "obs_var": np.asarray(venv.obs_rms.var, dtype=float).tolist(),
        "obs_count": float(venv.obs_rms.count),
        "ret_mean": float(np.asarray(venv.ret_rms.mean)),
        "ret_var": float(np.asarray(venv.ret_rms.var)),
        "ret_count": float(venv.ret_rms.count),
        "norm_obs": bool(venv.norm_obs),
        "norm_reward": bool(venv.norm_reward),
        "clip_obs": float(venv.clip_obs),
        "clip_reward": float(venv.clip_reward),
        "gamma": float(venv.gamma),
        "epsilon": float(venv.epsilon),
    }


def load_vecnormalize_stats(venv: Any, stats: dict[str, Any]) -> None:
    """Restore :func:`vecnormalize_stats` into a ``VecNormalize``."""
    venv.obs_rms.mean = np.asarray(stats["obs_mean"], dtype=np.float64)
    venv.obs_rms.var = np.asarray(stats["obs_var"], dtype=np.float64)
    venv.obs_rms.count = float(stats["obs_count"])
    venv.ret_rms.mean = np.float64(stats["ret_mean"])
    venv.ret_rms.var = np.float64(stats["ret_var"])
    venv.ret_rms.count = float(stats["ret_count"])


def obs_norm_from_stats(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the observation-normalisation part of the stats, as policy files store it."""
    if not stats or not stats.get("norm_obs", False):
        return None
    return {
        "mean": list(stats["obs_mean"]),
        "var": list(stats["obs_var"]),
        "epsilon": float(stats["epsilon"]),
        "clip_obs": float(stats["clip_obs"]),
    }


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write strict JSON."""
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
