"""The comparison harness: task instances × seeds × schedulers, on equal main-line budgets.

:func:`compare` runs every scheduler on the same *problems* — (task family, split,
instance, seed) — through the shared runner (:func:`~metasched.schedulers.run_schedule`),
so each scheduler sees the same initialisation and, where it trains the same way, the same
minibatches (common random numbers: the comparisons are paired).

Splits: tuning runs only on ``train``; the evaluated split (``test`` or ``shift``) is only
ever run with settings already chosen. Nothing here reads ``val`` (that split is for the
selections made before a comparison: checkpoints, distillation).

Fair baselines (the table :data:`TUNED`, one entry per tuned label):

* ``constant``, ``cosine`` (and ``wsd`` / ``schedulefree-tuned`` when those schedulers are
  registered) have their (initial / peak) LR tuned by grid search on ``train``: each grid
  value is a multiple of the instance's reference LR (``task.default_lr()``, the LR every
  other scheduler, the learned one included, starts from);
* ``greedy-tuned`` tunes GreedyLR's ``factor``, ``patience`` and start LR jointly, over the
  coarser start grid ``CompareSpec.joint_grid``;
* the protocol (:mod:`metasched.distill.tuning`): every grid point on the same
  ``tune_instances`` ``train`` instances, the lowest mean log final loss wins (a diverged run
  scores ten times its initial loss), with bootstrap CIs and a flat-region flag; the tuning
  curves go to ``tuning.csv`` / ``tuning.json``, the chosen setting is used on the evaluated
  split;
* ``NAME@ref`` (e.g. ``cosine@ref``, ``constant@ref``) runs a scheduler at the reference LR
  with no tuning: the row a user gets for free;
* ``greedy`` is GreedyLR with its defaults, except that its absolute ``min_lr``/``max_lr``
  become the LR range the agent has: ``env lr_range × reference LR``.

With ``tuning_cost=("all",)`` (or a tuple of tuned labels) every grid point of those tuned
labels is also run on the evaluated split, which gives the tuning-cost view
(``tuning_cost.csv``): the evaluated median of the protocol's pick from random subsets of the
grid, against the tuning runs spent.

Budget and decision interval default to those of each family's registered env (so NMF,
MNIST-1D and the char-LM each run at their own scale); ``budget=``/``interval=`` override
them for every family.

Everything is cached in the output directory: one JSON file per finished run (written
atomically), so an interrupted comparison resumes where it stopped, and adding a scheduler
to a finished comparison runs only the new cells. ``compare.json`` records the settings;
a directory holding a comparison with other settings is refused rather than mixed.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metasched.atomic import write_text
from metasched.distill.report import write_report
from metasched.distill.results import final_loss, write_csv, write_tables
from metasched.distill.tuning import TuningCurve, cost_curve, log_score, tune_curve
from metasched.errors import ConfigError, MetaschedError, did_you_mean
from metasched.inner_tasks import make_family
from metasched.inner_tasks.base import TaskFamily, check_split
from metasched.loop import CLIP_MODES, DEFAULT_CLIP, DEFAULT_KAPPA
from metasched.schedulers import SCHEDULERS, make_scheduler, run_schedule
from metasched.schedulers.base import Scheduler

__all__ = [
    "BACKENDS",
    "DEFAULT_GRID",
    "DEFAULT_JOINT_GRID",
    "TUNED",
    "CompareSpec",
    "SchedulerSpec",
    "TunedBaseline",
    "compare",
    "evaluation_cells",
    "parse_scheduler",
    "split_schedulers",
]

#: Tuning grid: multiples of the instance's reference LR (half-octave steps, 1/32 .. 32).
DEFAULT_GRID: tuple[float, ...] = tuple(float(2.0**k) for k in np.arange(-5.0, 5.01, 0.5))

#: Start-LR multiples of the jointly tuned baselines (two octaves apart: a joint grid is a
#: product, so its LR axis is coarser than :data:`DEFAULT_GRID`).
DEFAULT_JOINT_GRID: tuple[float, ...] = (0.5, 2.0, 8.0, 32.0)


@dataclass(frozen=True)
class TunedBaseline:
    """How one tuned label is tuned: its scheduler and the grid it is tuned over.

    Attributes:
        name: registry name of the scheduler it runs.
        axes: other keyword arguments tuned jointly with the LR multiple, each with its values.
        joint: the LR axis is ``CompareSpec.joint_grid`` (coarse) instead of ``grid``.
    """

    name: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    joint: bool = False

    def points(self, spec: CompareSpec) -> list[tuple[float, dict[str, Any], tuple[int, ...]]]:
        """Every grid point: ``(LR multiple, tuned kwargs, index along each axis)``."""
        mults = spec.joint_grid if self.joint else spec.grid
        axes = self.axes
        if self.joint and spec.joint_axes is not None:  # the comparison's own values
            mine = dict(spec.joint_axes)
            axes = tuple((k, tuple(mine.get(k, v))) for k, v in axes)
        values = [v for _, v in axes]
        out = []
        for mi, m in enumerate(mults):
            for combo in itertools.product(*(range(len(v)) for v in values)):
                kw = {k: v[j] for (k, v), j in zip(axes, combo, strict=True)}
                out.append((float(m), kw, (mi, *combo)))
        return out


#: Tuned labels: label -> how it is tuned. A new tuned baseline is one entry here.
TUNED: dict[str, TunedBaseline] = {
    "constant": TunedBaseline("constant"),
    "cosine": TunedBaseline("cosine"),
    "greedy-tuned": TunedBaseline(
        "greedy", (("factor", (0.5, 0.7, 0.9, 0.95)), ("patience", (0, 1, 3, 10))), joint=True
    ),
}
# Schedulers that other modules may register: tuned like cosine when present.
for _label, _name in (("wsd", "wsd"), ("schedulefree-tuned", "schedulefree")):
    if _name in SCHEDULERS:
        TUNED[_label] = TunedBaseline(_name)

#: ``train`` instances per tuning grid point when ``CompareSpec.tune_instances`` is not given:
#: 40 where a run takes about a second or less (NMF, the digits MLP, MNIST-1D, mixed), 10 on
#: the slow evaluation families, where one run takes tens of seconds (Fashion-MNIST CNN,
#: char-LM transformer). The count used is stated per tuned label in the report.
DEFAULT_TUNE_INSTANCES = 40
SLOW_TUNE_INSTANCES: dict[str, int] = {"fashion": 10, "charlm": 10}

#: Suffix of an untuned row at the reference LR (``cosine@ref``).
AT_REF = "@ref"

_PATH_SCHEDULERS = ("learned", "rules")

#: Where the cells run: local processes (default) or one-CPU Ray tasks.
BACKENDS: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True)
class SchedulerSpec:
    """One scheduler of a comparison: a label, a registry name and its options."""

    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def tuned(self) -> bool:
        """Whether its LR (and maybe more) is tuned on the ``train`` split."""
        return self.label in TUNED

    @property
    def at_ref(self) -> bool:
        """Whether it runs untuned at the reference LR (``NAME@ref``, options allowed)."""
        return self.label.partition(":")[0].endswith(AT_REF)


def _parse_value(text: str) -> Any:
    """Parse an option value as YAML, numbers as written (``1e-4`` is a float)."""
    import yaml

    from metasched.yamlio import load_yaml

    try:
        return load_yaml(text)
    except yaml.YAMLError:
        raise ConfigError(f"cannot parse scheduler option value {text!r}") from None


def parse_scheduler(text: str) -> SchedulerSpec:
    """Parse ``NAME``, ``NAME:key=value,key=value``, ``learned:PATH`` or ``rules:PATH``.

    ``learned:universal`` (when no file of that name exists) is the policy shipped with
    metasched (:mod:`metasched.pretrained`).

    ``greedy-tuned`` is GreedyLR with tuned start LR, factor and patience; ``NAME@ref`` runs
    ``NAME`` at the reference LR. Unknown names and options raise with the closest valid
    choice.

    Example:
        >>> parse_scheduler("greedy:patience=3,factor=0.5")
        SchedulerSpec(label='greedy:patience=3,factor=0.5', name='greedy', kwargs={'patience': 3, 'factor': 0.5})
    """  # noqa: E501
    text = text.strip()
    name, sep, rest = text.partition(":")
    if not name:
        raise ConfigError(f"empty scheduler name in {text!r}")
    if name in _PATH_SCHEDULERS:
        if not rest:
            raise ConfigError(f"scheduler {name!r} needs a file: {name}:PATH")
        path = os.path.abspath(rest)
        if name == "learned" and not os.path.isfile(path):
            from metasched.pretrained import PRETRAINED, pretrained_path

            if rest in PRETRAINED:  # learned:universal, the policy shipped with metasched
                path = os.fspath(pretrained_path(rest))
        if not os.path.isfile(path):
            raise ConfigError(f"{name} file not found: {rest!r}")
        return SchedulerSpec(f"{name}:{Path(rest).stem}", name, {"path": path})
    kwargs: dict[str, Any] = {}
    if sep:
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ConfigError(f"expected key=value in scheduler {text!r}, got {item!r}")
            kwargs[key.strip()] = _parse_value(value)
    if name in TUNED:  # greedy-tuned runs greedy
        registry_name = TUNED[name].name
    elif name.endswith(AT_REF) and name != AT_REF:
        registry_name = name[: -len(AT_REF)]
    else:
        registry_name = name
    try:  # validates the options now, before anything runs
        make_scheduler(registry_name, **_with_bounds(registry_name, kwargs, 1.0))
    except MetaschedError:
        raise
    except ValueError as exc:  # the schedulers' own argument checks: user input
        raise ConfigError(f"scheduler {text!r}: {exc}") from None
    return SchedulerSpec(text, registry_name, kwargs)


def split_schedulers(text: str) -> list[str]:
    """Split a comma-separated scheduler list; ``key=value`` items join the one before.

    Example:
        >>> split_schedulers("constant,greedy:patience=3,factor=0.5,probe")
        ['constant', 'greedy:patience=3,factor=0.5', 'probe']
    """
    out: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if out and ":" in out[-1] and "=" in item and ":" not in item:
            out[-1] += "," + item
        else:
            out.append(item)
    if not out:
        raise ConfigError(f"no scheduler in {text!r}")
    return out


def _with_bounds(
    name: str,
    kwargs: dict[str, Any],
    lr_ref: float,
    lr_range: Sequence[float] = TaskFamily.lr_range,
) -> dict[str, Any]:
    """GreedyLR's absolute LR bounds default to the agent's range around ``lr_ref``.

    ``lr_range`` is the family's (:func:`~metasched.inner_tasks.family_lr_range`).
    """
    if name != "greedy":
        return dict(kwargs)
    out = dict(kwargs)
    out.setdefault("min_lr", lr_range[0] * lr_ref)
    out.setdefault("max_lr", lr_range[1] * lr_ref)
    return out


@dataclass(frozen=True)
class CompareSpec:
    """Settings of a comparison (everything but the scheduler list, which may grow).

    Args:
        families: task family names (see ``metasched list``).
        split: the evaluated split (``test`` or ``shift``; ``train`` is for tuning).
        n_instances: instances per family.
        seeds: seeds per instance (run seeds differ per instance and seed).
        budget: main-line inner steps per run (default: each family's env budget).
        interval: inner steps per decision (default: each family's env interval).
        family_seed: seed of the task families.
        tune_instances: ``train`` instances every grid point of a tuned baseline runs on
            (default: :data:`DEFAULT_TUNE_INSTANCES`, :data:`SLOW_TUNE_INSTANCES` on the slow
            families).
        grid: tuning grid, as multiples of the reference LR.
        joint_grid: start-LR multiples of jointly tuned baselines (``greedy-tuned``).
        joint_axes: values of their other jointly tuned settings, e.g.
            ``(("factor", (0.5, 0.9)), ("patience", (0, 3)))``, where not the label's own
            (``None``: :data:`TUNED`'s grids).
        clip, kappa: stability-bound clipping, as in the env.
        tuning_cost: tuned labels (``"all"``: every one) whose every grid point also runs on
            the evaluated split, for the tuning-cost view (``tuning_cost.csv``; costs grid
            points × problems runs per label). Empty: no tuning-cost view.
    """

    families: tuple[str, ...] = ("nmf",)
    split: str = "test"
    n_instances: int = 50
    seeds: int = 1
    budget: int | None = None
    interval: int | None = None
    family_seed: int = 0
    tune_instances: int | None = None
    grid: tuple[float, ...] = DEFAULT_GRID
    joint_grid: tuple[float, ...] = DEFAULT_JOINT_GRID
    joint_axes: tuple[tuple[str, tuple[Any, ...]], ...] | None = None
    clip: str = DEFAULT_CLIP
    kappa: float = DEFAULT_KAPPA
    tuning_cost: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.families:
            raise ConfigError("compare needs at least one task family")
        for fam in self.families:
            make_family(fam, self.family_seed)
        check_split(self.split)
        for label in self.tuning_cost:
            if label != "all" and label not in TUNED:
                raise ConfigError(
                    did_you_mean(label, [*TUNED, "all"], "tuned label for the tuning-cost view")
                )
        for name in ("n_instances", "seeds", "budget", "interval", "tune_instances"):
            value = getattr(self, name)
            if value is None and name in ("budget", "interval", "tune_instances"):
                continue
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for fam in self.families:
            budget, interval, _ = self.scale(fam)
            if interval > budget:
                raise ConfigError(f"interval {interval} exceeds the budget {budget} ({fam})")
        for name in ("grid", "joint_grid"):
            g = getattr(self, name)
            if not g or any(not (x > 0 and math.isfinite(x)) for x in g):
                raise ConfigError(f"{name} must hold positive LR multiples, got {g!r}")
        if self.clip not in CLIP_MODES:
            raise ConfigError(f"clip must be one of {CLIP_MODES}, got {self.clip!r}")
        known = {k for t in TUNED.values() if t.joint for k, _ in t.axes}
        for name, values in self.joint_axes or ():
            if name not in known:
                raise ConfigError(did_you_mean(str(name), sorted(known), "jointly tuned setting"))
            if not values:
                raise ConfigError(f"joint_axes[{name!r}] needs at least one value")

    def scale(self, family: str) -> tuple[int, int, tuple[float, float]]:
        """Return ``(budget, interval, agent LR range)`` of the runs on ``family``."""
        from metasched.envs.registration import env_defaults

        budget, interval, lr_range = env_defaults(family)
        if self.budget is not None:
            budget = self.budget
        if self.interval is not None:
            interval = self.interval
        return budget, interval, lr_range

    def n_tune(self, family: str) -> int:
        """Return the number of ``train`` instances each grid point runs on for ``family``."""
        if self.tune_instances is not None:
            return self.tune_instances
        return SLOW_TUNE_INSTANCES.get(family, DEFAULT_TUNE_INSTANCES)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        d = asdict(self)
        d["families"] = list(self.families)
        d["grid"] = list(self.grid)
        d["joint_grid"] = list(self.joint_grid)
        if self.joint_axes is None:
            del d["joint_axes"]  # comparisons written before the field existed still match
        else:
            d["joint_axes"] = [[k, list(v)] for k, v in self.joint_axes]
        d["tuning_cost"] = list(self.tuning_cost)
        return d


@dataclass(frozen=True)
class Cell:
    """One run: a scheduler on one problem at an LR multiple of the reference LR."""

    family: str
    family_seed: int
    split: str
    index: int
    seed: int
    label: str
    name: str
    kwargs: dict[str, Any]
    multiple: float | None  # None: the scheduler's own default start
    budget: int
    interval: int
    clip: str
    kappa: float
    lr_range: tuple[float, float] = TaskFamily.lr_range
    role: str = "run"  # "tune" (a grid point on train), "grid" (on the evaluated split), "run"

    def key(self) -> dict[str, Any]:
        """Return what identifies the run (stored with its result, checked on resume).

        A policy or rules file is identified by its content too (``file_sha256``): a
        re-exported file under the same path does not reuse the old file's runs.
        """
        out = asdict(self)
        if self.name in _PATH_SCHEDULERS and "path" in self.kwargs:
            out["file_sha256"] = _file_sha256(str(self.kwargs["path"]), self.name)
        return out

    def path(self, root: Path) -> Path:
        """Cache file of the run under ``root`` (grid points apart from evaluated runs)."""
        name = f"{self.family}-{self.split}{self.index}-s{self.seed}.json"
        if self.role in ("tune", "grid"):
            point = f"m{self.multiple:.6g}" + "".join(
                f"-{k}{self.kwargs[k]}" for k in sorted(self.kwargs)
            )
            return root / "cells" / self.role / _slug(self.label) / _slug(point) / name
        return root / "cells" / "runs" / _slug(self.label) / name


def _file_sha256(path: str, name: str) -> str:
    """Fingerprint of a policy or rules file, cached per (path, size, mtime).

    A policy file's is :func:`metasched.pretrained.policy_digest` and a rules file's hashes
    its tree and header: what changes the actions, not the export time, so re-exporting the
    same checkpoint keeps its cached runs. Anything else hashes its bytes; ``""`` when the
    file is unreadable.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return _sha256_cached(path, name, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, name: str, size: int, mtime_ns: int) -> str:
    if name == "learned":
        from metasched.pretrained import policy_digest

        try:
            return policy_digest(path)
        except MetaschedError:
            pass  # not a valid policy: its bytes identify it (loading it will fail anyway)
    elif name == "rules":  # the tree and what it reads, not the source policy's export time
        from metasched.policyfile import canonical_json

        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            return hashlib.sha256(
                canonical_json({"header": doc["header"], "tree": doc["tree"]})
            ).hexdigest()
        except (OSError, ValueError, TypeError, KeyError):
            pass
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")
    if len(s) > 60 or s != text:
        s = f"{s[:48]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return s


def problem_rng(family_seed: int, split: str, index: int, seed: int) -> np.random.Generator:
    """Return the run generator of a problem: every scheduler on it gets the same one."""
    ss = np.random.SeedSequence([family_seed, check_split(split), index, seed, 0x6D73])
    return np.random.default_rng(ss)


_FAMILIES: dict[tuple[str, int], TaskFamily] = {}
_PROTOTYPES: dict[str, Scheduler] = {}


def _family(name: str, seed: int) -> TaskFamily:
    key = (name, seed)
    if key not in _FAMILIES:
        _FAMILIES[key] = make_family(name, seed)
    return _FAMILIES[key]


def _scheduler(cell: Cell, lr_ref: float) -> Scheduler:
    kwargs = _with_bounds(cell.name, cell.kwargs, lr_ref, cell.lr_range)
    if cell.name in _PATH_SCHEDULERS:  # load each policy file once per process
        key = json.dumps([cell.name, kwargs, _file_sha256(str(kwargs.get("path")), cell.name)],
                         sort_keys=True)  # fmt: skip
        if key not in _PROTOTYPES:
            _PROTOTYPES[key] = make_scheduler(cell.name, **kwargs)
        import copy

        return copy.deepcopy(_PROTOTYPES[key])
    return make_scheduler(cell.name, **kwargs)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell; return its JSON-able result (the trace plus the reference LR).

    Thread settings are left alone here (a library call); worker processes of a parallel
    comparison get one torch thread from their initializer.
    """
    task = _family(cell.family, cell.family_seed).make(cell.split, cell.index)
    task.reset(problem_rng(cell.family_seed, cell.split, cell.index, cell.seed))
    lr_ref = float(task.default_lr())
    base = None if cell.multiple is None else cell.multiple * lr_ref
    trace = run_schedule(
        task,
        _scheduler(cell, lr_ref),
        budget=cell.budget,
        interval=cell.interval,
        seed=problem_rng(cell.family_seed, cell.split, cell.index, cell.seed),
        base_lr=base,
        clip=cell.clip,  # type: ignore[arg-type]
        kappa=cell.kappa,
        record_eval=True,
    )
    return {"cell": cell.key(), "lr_ref": lr_ref, "trace": trace.to_dict()}


def _load_cell(cell: Cell, root: Path) -> dict[str, Any] | None:
    path = cell.path(root)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a torn file from a crash outside the atomic write: rerun it
    want = json.loads(json.dumps(cell.key()))
    stored = data.get("cell")
    if isinstance(stored, dict) and "file_sha256" in want and stored.get(
        "file_sha256"
    ) != want["file_sha256"]:
        if {k: v for k, v in stored.items() if k != "file_sha256"} == {
            k: v for k, v in want.items() if k != "file_sha256"
        }:
            return None  # the policy file changed (or an older cache): run it again
    if stored != want:
        raise ConfigError(
            f"{path} holds a run with other settings; use another output directory"
        )
    return data


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_cells(
    cells: Sequence[Cell],
    root: Path,
    *,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    backend: str = "local",
    address: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Run the cells not yet cached under ``root``; return all.

    ``stop`` (serial runs only): checked before each cell; once it returns true no further
    cell starts and only the finished ones are returned.

    ``backend="local"`` runs them in ``jobs`` processes of this machine; ``"ray"`` runs each
    as a one-CPU Ray task (on the local instance, or the cluster at ``address`` /
    ``RAY_ADDRESS``), ``jobs`` then being unused. Either way each result is stored here
    as soon as it arrives, and a failure is raised after the runs in flight are stored.
    """
    check_backend(backend)
    results: list[dict[str, Any] | None] = [_load_cell(c, root) for c in cells]
    todo = [i for i, r in enumerate(results) if r is None]
    done = len(cells) - len(todo)
    if progress:
        progress(done, len(cells))

    def store(i: int, res: dict[str, Any]) -> None:
        nonlocal done
        write_text(cells[i].path(root), json.dumps(res), parents=True)
        results[i] = res
        done += 1
        if progress:
            progress(done, len(cells))

    failed: tuple[int, BaseException] | None = None
    if backend == "ray" and todo:
        from metasched.distributed.runtime import map_streaming

        lost = map_streaming(
            run_cell, [cells[i] for i in todo], lambda k, res: store(todo[k], res),
            address=address,
        )  # fmt: skip
        failed = None if lost is None else (todo[lost[0]], lost[1])
    elif jobs <= 1 or len(todo) <= 1:
        for i in todo:
            if stop is not None and stop():
                break
            try:
                res = run_cell(cells[i])
            except Exception as exc:
                failed = (i, exc)
                break
            store(i, res)
    else:
        import multiprocessing as mp

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=mp.get_context(method), initializer=_init_worker
        ) as pool:
            futures = {pool.submit(run_cell, cells[i]): i for i in todo}
            for fut in as_completed(futures):  # store each run as soon as it is done
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is None:
                    store(futures[fut], fut.result())
                elif failed is None:  # keep the runs in flight, start no new one
                    failed = (futures[fut], exc)
                    for other in futures:
                        other.cancel()
    if failed is not None:
        _raise_failed(cells[failed[0]], failed[1], done, len(cells), root)
    return [r for r in results if r is not None]


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is one of :data:`BACKENDS`, else raise naming it."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _raise_failed(cell: Cell, exc: BaseException, done: int, total: int, root: Path) -> None:
    """Report a failed run: which cell, its error, and that the finished runs are kept."""
    where = (
        f"run {cell.label!r} on {cell.family} {cell.split} instance {cell.index} seed "
        f"{cell.seed}" + ("" if cell.multiple is None else f" at LR multiple {cell.multiple:g}")
    )
    msg = (
        f"{where} failed: {type(exc).__name__}: {exc} ({done} of {total} runs finished and "
        f"stored in {os.fspath(root)}; run the same command again to resume)"
    )
    if isinstance(exc, MetaschedError):  # bad user input (e.g. a policy file): one line
        raise ConfigError(msg) from exc
    raise RuntimeError(msg) from exc  # a bug: the worker's traceback is chained below


def _run_args(spec: CompareSpec, family: str) -> tuple[Any, ...]:
    budget, interval, lr_range = spec.scale(family)
    return (budget, interval, spec.clip, spec.kappa, tuple(float(x) for x in lr_range))


def _score(res: dict[str, Any]) -> float:
    """Return the protocol's score of a finished run (see :func:`.tuning.log_score`)."""
    t = res["trace"]
    cols = t["columns"]
    first = next((x for x in cols["val_loss"] if x is not None), None)
    if first is None:
        first = next((x for x in cols["train_loss"] if x is not None), None)
    return log_score(t["final_loss"], first, bool(t["diverged"]))


def _grid_cells(
    spec: CompareSpec, fam: str, label: str, split: str, indices: Iterable[int], seeds: int
) -> list[Cell]:
    tb = TUNED[label]
    role = "tune" if split == "train" else "grid"
    return [
        Cell(
            fam, spec.family_seed, split, i, seed, label, tb.name, kw, m, *_run_args(spec, fam),
            role=role,
        )
        for m, kw, _ in tb.points(spec)
        for i in indices
        for seed in range(seeds)
    ]


def _point_key(multiple: float, kwargs: dict[str, Any]) -> str:
    return json.dumps([float(multiple), kwargs], sort_keys=True)


def tune(
    spec: CompareSpec,
    labels: Iterable[str],
    root: Path,
    *,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    backend: str = "local",
    address: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Tune each tuned label on ``train`` by the protocol; per ``family/label`` entry.

    Every grid point of :data:`TUNED` ``[label]`` runs on ``train`` instances
    ``0 .. spec.n_tune(family) - 1`` (seed 0); :func:`~metasched.distill.tuning.tune_curve` picks
    the point with the lowest mean log final loss. Each entry holds the choice
    (``multiple``, ``kwargs``), its score and CI, the flags ``in_flat_region`` and
    ``at_grid_edge``, and the whole curve (``points``, ``mean``, ``lo``, ``hi``,
    ``diverged``, ``ranking``).
    """
    labels = [lb for lb in labels if lb in TUNED]
    cells = [
        c
        for fam in spec.families
        for lb in labels
        for c in _grid_cells(spec, fam, lb, "train", range(spec.n_tune(fam)), 1)
    ]
    results = run_cells(
        cells, root, jobs=jobs, progress=progress, backend=backend, address=address
    )
    by_point: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for r in results:
        c = r["cell"]
        key = (c["family"], c["label"], _point_key(c["multiple"], c["kwargs"]))
        by_point.setdefault(key, {})[c["index"]] = r
    out: dict[str, dict[str, Any]] = {}
    for fam in spec.families:
        idx = range(spec.n_tune(fam))
        for lb in labels:
            pts = TUNED[lb].points(spec)
            runs = [by_point[(fam, lb, _point_key(m, kw))] for m, kw, _ in pts]
            scores = np.array([[_score(rs[i]) for i in idx] for rs in runs])
            div = np.array([[bool(rs[i]["trace"]["diverged"]) for i in idx] for rs in runs])
            curve = tune_curve(scores, [c for _, _, c in pts], diverged=div, seed=spec.family_seed)
            out[f"{fam}/{lb}"] = _tuning_entry(fam, lb, pts, runs, curve, idx)
    return out


def _tuning_entry(
    fam: str,
    label: str,
    pts: Sequence[tuple[float, dict[str, Any], tuple[int, ...]]],
    runs: Sequence[dict[int, dict[str, Any]]],
    curve: TuningCurve,
    idx: Iterable[int],
) -> dict[str, Any]:
    b = curve.best
    finals = [final_loss(runs[b][i]) for i in idx]

    def point(j: int) -> dict[str, Any]:
        return {"multiple": pts[j][0], **pts[j][1]}

    return {
        "family": fam,
        "label": label,
        "objective": "mean log final loss",
        "n_instances": curve.n_instances,
        "best": b,
        "multiple": pts[b][0],
        "kwargs": pts[b][1],
        "mean_log": curve.mean[b],
        "mean_log_lo": curve.lo[b],
        "mean_log_hi": curve.hi[b],
        "median_final": float(np.median(finals)),
        "in_flat_region": curve.in_flat_region,
        "flat": [point(j) for j in curve.flat],
        "at_grid_edge": curve.at_grid_edge,
        "points": [point(j) for j in range(len(pts))],
        "coords": [list(c) for _, _, c in pts],
        "mean": list(curve.mean),
        "lo": list(curve.lo),
        "hi": list(curve.hi),
        "diverged": list(curve.n_diverged),
        "ranking": curve.ranking,
    }


TUNING_COLUMNS = (
    "family", "scheduler", "point", "multiple", "kwargs", "mean_log_final", "ci_lo", "ci_hi",
    "n", "diverged", "chosen", "indistinguishable",
)  # fmt: skip

COST_COLUMNS = (
    "family", "scheduler", "grid_points", "tuning_runs", "expected_median", "q10", "q90",
    "p_best",
)  # fmt: skip


def write_tuning_csv(tuning: dict[str, dict[str, Any]], path: Path) -> None:
    """Write every tuning curve as ``tuning.csv`` (one row per label and grid point)."""
    rows = []
    for t in tuning.values():
        flat = [json.dumps(p, sort_keys=True) for p in t["flat"]]
        for j, p in enumerate(t["points"]):
            kw = {k: v for k, v in p.items() if k != "multiple"}
            text = json.dumps(p, sort_keys=True)
            rows.append(
                {
                    "family": t["family"],
                    "scheduler": t["label"],
                    "point": ",".join(f"{k}={v:g}" for k, v in p.items()),
                    "multiple": p["multiple"],
                    "kwargs": json.dumps(kw, sort_keys=True),
                    "mean_log_final": t["mean"][j],
                    "ci_lo": t["lo"][j],
                    "ci_hi": t["hi"][j],
                    "n": t["n_instances"],
                    "diverged": t["diverged"][j],
                    "chosen": j == t["best"],
                    "indistinguishable": text in flat,
                }
            )
    write_csv(path, TUNING_COLUMNS, rows)


def tuning_cost_cells(spec: CompareSpec, tuning: dict[str, dict[str, Any]]) -> list[Cell]:
    """Return the runs of every grid point of the ``tuning`` entries on the evaluated split."""
    return [
        c
        for t in tuning.values()
        for c in _grid_cells(
            spec, t["family"], t["label"], spec.split, range(spec.n_instances), spec.seeds
        )
    ]


def tuning_cost(
    tuning: dict[str, dict[str, Any]], results: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Return the tuning-cost curves' rows from the runs of :func:`tuning_cost_cells`.

    Each row (``COST_COLUMNS``): with ``grid_points`` random grid points tuned on all
    ``tune_instances`` ``train`` instances (``tuning_runs`` = their product), the median
    evaluated-split final loss of the protocol's pick, averaged over every such subset of the
    grid (``expected_median``), its 10th/90th percentiles over the subsets and the probability
    of picking the full grid's winner (:func:`~metasched.distill.tuning.cost_curve`).
    """
    finals: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        c = r["cell"]
        if c.get("role") != "grid":
            continue
        key = (c["family"], c["label"], _point_key(c["multiple"], c["kwargs"]))
        finals.setdefault(key, []).append(final_loss(r))
    rows = []
    for t in tuning.values():
        meds = []
        for p in t["points"]:
            kw = {k: v for k, v in p.items() if k != "multiple"}
            key = (t["family"], t["label"], _point_key(p["multiple"], kw))
            meds.append(float(np.median(finals[key])))
        for pt in cost_curve(t["ranking"], meds, t["n_instances"]):
            rows.append(
                {
                    "family": t["family"],
                    "scheduler": t["label"],
                    "grid_points": pt.k,
                    "tuning_runs": pt.tuning_runs,
                    "expected_median": pt.expected,
                    "q10": pt.q10,
                    "q90": pt.q90,
                    "p_best": pt.p_best,
                }
            )
    return rows


def evaluation_cells(
    spec: CompareSpec, schedulers: Sequence[SchedulerSpec], tuning: dict[str, dict[str, Any]]
) -> list[Cell]:
    """Return the runs on the evaluated split: every problem × scheduler, tuned ones at their pick.

    Tuned labels run at the setting :func:`tune` chose (``tuning``); ``NAME@ref`` rows at the
    reference LR; the rest at their own default start.
    """
    cells = []
    for fam in spec.families:
        for i in range(spec.n_instances):
            for seed in range(spec.seeds):
                for s in schedulers:
                    mult, kwargs = None, s.kwargs
                    if s.tuned:
                        t = tuning[f"{fam}/{s.label}"]
                        mult, kwargs = t["multiple"], {**s.kwargs, **t["kwargs"]}
                    elif s.at_ref:
                        mult = 1.0
                    cells.append(
                        Cell(
                            fam, spec.family_seed, spec.split, i, seed, s.label, s.name,
                            kwargs, mult, *_run_args(spec, fam),
                        )
                    )
    return cells


def compare(
    spec: CompareSpec,
    schedulers: Sequence[SchedulerSpec],
    out: str | os.PathLike[str],
    *,
    jobs: int = 1,
    log: Callable[[str], None] = print,
    progress: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> Path:
    """Run (or resume) a comparison into ``out``; write the tables; return ``out``.

    Writes ``compare.json`` (settings), ``tuning.json``, ``runs.csv`` (tidy: one row per
    scheduler, problem and decision), ``results.csv`` (one row per run with its metrics)
    and, via :mod:`metasched.distill.report`, ``summary.csv`` and ``report.md``.
    ``backend="ray"`` runs every cell as a one-CPU Ray task (:func:`run_cells`); results
    and cache are the same as with the local process pool.
    """
    if not schedulers:
        raise ConfigError("compare needs at least one scheduler")
    labels = [s.label for s in schedulers]
    dupes = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dupes:
        raise ConfigError(f"scheduler listed twice: {dupes[0]!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    check_backend(backend)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    settings = root / "compare.json"
    old: dict[str, Any] = {}
    if settings.exists():
        try:
            old = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}  # torn by a crash outside the atomic write: rewritten below
        if old and old.get("spec") != json.loads(json.dumps(spec.to_json())):
            raise ConfigError(
                f"{root} holds a comparison with other settings; use another --out"
            )
    known = dict(old.get("schedulers", {}))
    known.update({s.label: {"name": s.name, "kwargs": s.kwargs} for s in schedulers})
    write_text(settings, json.dumps({"spec": spec.to_json(), "schedulers": known}, indent=2))

    bar = _progress_bar(progress)
    log(f"tuning {', '.join(lb for lb in labels if lb in TUNED) or 'nothing'} on train ...")
    tuning = tune(
        spec, labels, root, jobs=jobs, progress=bar("tuning"), backend=backend, address=address
    )
    write_text(root / "tuning.json", json.dumps(tuning, indent=2))
    write_tuning_csv(tuning, root / "tuning.csv")
    for entry in tuning.values():
        extra = "".join(f", {k}={v:g}" for k, v in entry["kwargs"].items())
        log(
            f"  {entry['family']}: {entry['label']} tuned at {entry['multiple']:.3g} x "
            f"reference LR{extra} (mean log train final loss {entry['mean_log']:.4f}, "
            f"{entry['n_instances']} instances)"
            + ("  [flat: a neighbour is within noise]" if entry["in_flat_region"] else "")
            + ("  [at the edge of the grid: widen it]" if entry["at_grid_edge"] else "")
        )
    cells = evaluation_cells(spec, schedulers, tuning)
    log(
        f"running {len(cells)} runs: {len(spec.families)} famil(ies) x {spec.n_instances} "
        f"{spec.split} instances x {spec.seeds} seed(s) x {len(schedulers)} schedulers ..."
    )
    wanted = {
        k: t
        for k, t in tuning.items()
        if "all" in spec.tuning_cost or t["label"] in spec.tuning_cost
    }
    grid = tuning_cost_cells(spec, wanted)
    if grid:  # in the same pool as the evaluated runs
        names = ", ".join(sorted({t["label"] for t in wanted.values()}))
        log(f"  and the tuning-cost view: {len(grid)} runs, every grid point of {names}")
    everything = run_cells(
        cells + grid, root, jobs=jobs, progress=bar("compare"), backend=backend, address=address
    )
    results = [r for r in everything if r["cell"].get("role") != "grid"]
    cost_path = root / "tuning_cost.csv"
    if grid:
        write_csv(cost_path, COST_COLUMNS, tuning_cost(wanted, everything))
    else:
        cost_path.unlink(missing_ok=True)
    write_tables(results, root)
    write_report(root, log=log)
    return root


def _progress_bar(enabled: bool) -> Callable[[str], Callable[[int, int], None] | None]:
    """Progress per phase: a bar on a terminal, a line every few seconds in a log."""

    def make(desc: str) -> Callable[[int, int], None] | None:
        if not enabled:
            return None
        from metasched.progress import Progress

        return Progress(desc, unit="run").update_to

    return make
