"""The learned LR policies metasched ships, and the one command that rebuilds them.

``universal`` is a PPO policy meta-trained on ``metasched/Mixed-v1`` (episodes drawn from the
``train`` splits of the ``nmf``, ``mlp`` and ``mnist1d`` families; ``fashion`` and ``charlm``
are never trained on). Its checkpoint is the best mean return on ``val`` episodes of the same
mixture. Load it with ``LearnedScheduler.pretrained()``, ``make_scheduler("learned")`` or, in
a plain torch loop, ``TorchLRScheduler(opt, "learned", total_steps=T, clip="auto",
loss_fn=loss_fn)``.

The shipped files, per policy ``NAME``:

* ``NAME.yml`` - the hyperparameters (the shipped ``ppo.yml`` overridden by this block);
* ``NAME.msched`` - the exported policy (a few tens of kB; loads with plain torch);
* ``NAME.json`` - provenance: the build command, seed, timesteps, the checkpoint chosen on
  ``val`` and :func:`policy_digest` of the file.

``metasched pretrained build --out DIR`` reruns the build (resumable with ``--resume``) and
reports whether the rebuilt policy's digest equals the shipped one's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from metasched.errors import ConfigError, ExportError, UnknownNameError, did_you_mean

__all__ = [
    "PRETRAINED",
    "BuildResult",
    "build",
    "config_path",
    "finish_build",
    "policy_digest",
    "pretrained_info",
    "pretrained_path",
]

#: Shipped policies: name -> (algorithm, env id it is trained on).
PRETRAINED: dict[str, tuple[str, str]] = {"universal": ("ppo", "metasched/Mixed-v1")}
#: The default policy of ``LearnedScheduler.pretrained()`` and ``make_scheduler("learned")``.
DEFAULT = "universal"


def _check_name(name: str) -> str:
    if name not in PRETRAINED:
        raise UnknownNameError(did_you_mean(str(name), PRETRAINED, "pretrained policy"))
    return name


def _package_file(name: str) -> Path:
    return Path(os.fspath(resources.files(__name__).joinpath(name)))


def pretrained_path(name: str = DEFAULT) -> Path:
    """Return the path of the shipped policy file ``name`` (``.msched``).

    Raises:
        UnknownNameError: for a name that is not shipped (with the closest one).
        ExportError: when the package was installed without the file.
    """
    path = _package_file(f"{_check_name(name)}.msched")
    if not path.is_file():
        raise ExportError(
            f"the pretrained policy {name!r} is missing from this installation ({path}); "
            f"reinstall metasched or rebuild it with 'metasched pretrained build'"
        )
    return path


def config_path(name: str = DEFAULT) -> Path:
    """Return the path of the hyperparameter file the policy ``name`` is built with."""
    return _package_file(f"{_check_name(name)}.yml")


def pretrained_info(name: str = DEFAULT) -> dict[str, Any]:
    """Return the provenance record of the shipped policy ``name`` (``NAME.json``)."""
    path = _package_file(f"{_check_name(name)}.json")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the provenance of {name!r} ({path}): {e}") from None


def policy_digest(path: str | os.PathLike[str]) -> str:
    """Return a sha256 digest of what a policy file computes, for reproducibility checks.

    It covers the network's tensors and every header field that changes the policy's
    actions (env settings, observation and action spec, network, normalisation) and leaves
    out the creation time, library versions and provenance notes, so two builds of the same
    policy on different days or machines have the same digest.
    """
    from safetensors import safe_open

    from metasched.policyfile import canonical_json, load_policy

    header = load_policy(path).header  # validates the file first
    digest = hashlib.sha256()
    keep = ("env_id", "env_kwargs", "decision_interval", "observation", "action", "network",
            "obs_norm")
    digest.update(canonical_json({k: header[k] for k in keep}))
    with safe_open(os.fspath(path), framework="pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key).contiguous()
            digest.update(key.encode())
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _eval_history(run_dir: Path) -> list[dict[str, float]]:
    """Return the run's evaluations on ``val`` (``eval.csv``, the history behind ``best/``)."""
    path = run_dir / "eval.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [
            {"timesteps": int(r["timesteps"]), "mean_return": float(r["mean_return"])}
            for r in csv.DictReader(fh)
        ]


@dataclass(frozen=True)
class BuildResult:
    """Outcome of :func:`build`.

    Attributes:
        policy: the exported ``.msched`` file.
        run_dir: the training run (checkpoints, evaluation history).
        digest: :func:`policy_digest` of ``policy``.
        matches_shipped: whether ``digest`` equals the shipped policy's (``None`` when the
            build's settings differ from the shipped ones, so no match is expected).
        info: the provenance record written beside the policy.
    """

    policy: Path
    run_dir: Path
    digest: str
    matches_shipped: bool | None
    info: dict[str, Any]


def build(
    out: str | os.PathLike[str],
    *,
    name: str = DEFAULT,
    timesteps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> BuildResult:
    """Train the shipped policy ``name`` from its shipped config and export it.

    Writes the training run to ``out/run`` and the policy (best checkpoint on ``val``) to
    ``out/NAME.msched`` with its provenance in ``out/NAME.json``. With ``resume`` an
    interrupted build continues from its newest checkpoint. ``timesteps`` shortens or
    lengthens training (then the result is not expected to equal the shipped file).

    Raises:
        ConfigError: when ``out/run`` already holds a run and ``resume`` is not set, or when
            ``resume`` is set and there is nothing to resume.
    """
    from metasched.agents.config import load_config
    from metasched.agents.train import train

    algo, env_id = PRETRAINED[_check_name(name)]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    out = Path(out)
    run_dir = out / "run"
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"nothing to resume: {str(run_dir)!r} holds no run")
        train(
            None, run_dir, resume=True, total_timesteps=timesteps, progress=progress,
            command=command,
        )
    else:
        cfg = load_config(
            algo,
            env_id,
            hyperparams=config_path(name),
            overrides={"n_timesteps": timesteps},
            seed=seed,
        )
        train(cfg, run_dir, progress=progress, command=command)
    return finish_build(out, name=name, timesteps=timesteps)


def finish_build(
    out: str | os.PathLike[str], *, name: str = DEFAULT, timesteps: int | None = None
) -> BuildResult:
    """Export the best-on-``val`` checkpoint of the build run ``out/run``; record provenance.

    :func:`build` ends with it; it can also be called on a finished run trained with
    ``metasched train --env <env> --hyperparams <config_path(name)> --out OUT/run``.
    """
    from metasched.agents.rundir import read_config
    from metasched.agents.train import export_run

    algo, env_id = PRETRAINED[_check_name(name)]
    out = Path(out)
    run_dir = out / "run"
    history = _eval_history(run_dir)
    if not history:
        raise ConfigError(f"{str(run_dir)!r} holds no evaluation on val: nothing to choose")
    # the header names the model relative to the build directory: no path of this machine
    policy = export_run(run_dir, out / f"{name}.msched", which="best", source="run/best")
    digest = policy_digest(policy)
    ran = read_config(run_dir)
    try:
        shipped = pretrained_info(name)
    except ExportError:
        shipped = None
    same_settings = shipped is not None and all(
        ran.get(k) == shipped.get(k) for k in ("seed", "n_timesteps")
    )
    best = max(history, key=lambda r: r["mean_return"])  # the first best, as training keeps
    info = {
        "name": name,
        "algo": algo,
        "env_id": env_id,
        "seed": ran.get("seed"),
        "n_timesteps": ran.get("n_timesteps"),
        "command": f"metasched pretrained build --out DIR --seed {ran.get('seed')}"
        + ("" if timesteps is None else f" --timesteps {ran.get('n_timesteps')}"),
        "best_checkpoint_timesteps": int(best["timesteps"]),
        "best_val_mean_return": float(best["mean_return"]),
        "val_history": [
            {"timesteps": int(r["timesteps"]), "mean_return": float(r["mean_return"])}
            for r in history
        ],
        "digest": digest,
    }
    from metasched.atomic import write_text

    write_text(out / f"{name}.json", json.dumps(info, indent=1) + "\n")
    matches = (digest == shipped.get("digest")) if same_settings and shipped else None
    return BuildResult(policy, run_dir, digest, matches, info)
