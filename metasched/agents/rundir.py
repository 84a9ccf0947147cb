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
(even SIGKILL) mid-write never leaves a corrupt latest checkpoint. Replacing a directory that
exists (``best/``, ``final/``) takes two renames: the old copy is first moved aside to
``.old-NAME-PID`` and only deleted once the new one is in place, so a kill between the renames
leaves the old copy: :func:`recover_replaced_dirs` (run on resume) moves it back, and
:func:`readable_dir` (used by export, which must not move anything under a running trainer)
reads it where it is.

JSON files are strict JSON; non-finite floats (a diverged episode's ``inf`` final loss) are
encoded as the scheduler state codec does (:mod:`metasched.schedulers.state_codec`), so
:func:`write_json` and :func:`read_json` round-trip them.
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

from metasched.atomic import TMP_PREFIX, fsync_dir, write_text
from metasched.errors import ConfigError
from metasched.schedulers.state_codec import decode_tree, encode_tree
from metasched.yamlio import load_yaml

__all__ = [
    "CHECKPOINT_PREFIX",
    "checkpoint_dirs",
    "latest_checkpoint",
    "load_vecnormalize_stats",
    "read_config",
    "read_json",
    "readable_dir",
    "recover_replaced_dirs",
    "vecnormalize_stats",
    "write_dir_atomically",
    "write_json",
]

CHECKPOINT_PREFIX = "step_"


def write_dir_atomically(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create directory ``target`` by filling a temporary sibling and renaming it.

    An existing ``target`` is replaced only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f"{_old_prefix(target.name)}{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return target


def _old_prefix(name: str) -> str:
    return f".old-{name}-"


def _old_copies(parent: Path, name: str) -> list[Path]:
    """Old copies of ``parent/name`` left aside by a replacement, newest first."""
    if not parent.is_dir():
        return []
    prefix = _old_prefix(name)
    found = [
        p
        for p in parent.iterdir()
        if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def readable_dir(target: str | Path) -> Path:
    """Return ``target``, or the old copy a kill mid-replacement left aside (read-only)."""
    target = Path(target)
    if target.exists():
        return target
    olds = _old_copies(target.parent, target.name)
    return olds[0] if olds else target


def recover_replaced_dirs(parent: str | Path) -> list[Path]:
    """Move back old copies that a kill mid-replacement left aside; return the restored dirs.

    :func:`write_dir_atomically` renames an existing ``NAME`` to ``.old-NAME-PID`` before it
    renames the new ``NAME`` into place. Killed in between, ``NAME`` is missing and the old
    copy is the newest complete one: it is renamed back. Old copies whose ``NAME`` exists are
    left for :func:`remove_stale_temporaries`.
    """
    parent = Path(parent)
    restored: list[Path] = []
    if not parent.is_dir():
        return restored
    olds = sorted(
        (p for p in parent.iterdir() if p.is_dir() and p.name.startswith(".old-")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,  # newest first: if several were left, the newest is restored
    )
    for old in olds:
        name = old.name[len(".old-") :].rsplit("-", 1)[0]
        target = parent / name
        if name and not target.exists():
            os.replace(old, target)
            fsync_dir(parent)
            restored.append(target)
    return restored


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete half-written temporaries (files and directories) a killed run left behind.

    Old copies of replaced directories are first moved back where the replacement never
    landed (:func:`recover_replaced_dirs`), so no directory is lost.
    """
    for parent in (Path(run_dir), Path(run_dir) / "checkpoints"):
        recover_replaced_dirs(parent)
        if parent.is_dir():
            for p in parent.iterdir():
                if not p.name.startswith((TMP_PREFIX, ".old-")):
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
    data = load_yaml(path.read_text())
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
    """Atomically write ``data`` as strict JSON (non-finite floats encoded, see module doc)."""
    text = json.dumps(encode_tree(data), indent=1, allow_nan=False) + "\n"
    write_text(path, text, parents=True)


def read_json(path: str | Path) -> Any:
    """Read a file written by :func:`write_json` (non-finite floats decoded)."""
    return decode_tree(json.loads(Path(path).read_text()))
