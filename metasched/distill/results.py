"""The tables of a comparison directory, written from the cached runs and read back.

``results.csv`` (one row per run with its metrics, :data:`RESULT_COLUMNS`) and ``runs.csv``
(tidy: one row per run and decision) are written by :func:`write_tables` from the results of
:func:`metasched.distill.compare.run_cells`; :func:`read_results` and
:func:`read_tuning_cost` read them back for :mod:`metasched.distill.report`. Both the
harness and the report use this module, so neither imports the other's internals.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metasched.atomic import atomic_open
from metasched.distill.stats import run_metrics
from metasched.errors import ConfigError
from metasched.schedulers.runner import TRACE_COLUMNS

__all__ = [
    "RESULT_COLUMNS",
    "final_loss",
    "read_results",
    "read_tuning_cost",
    "write_csv",
    "write_tables",
]


def final_loss(res: dict[str, Any]) -> float:
    """Return the final loss of a cached run (``inf`` if it diverged or never finished)."""
    t = res["trace"]
    return math.inf if t["diverged"] or t["final_loss"] is None else float(t["final_loss"])


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts keyed by ``columns``) as a CSV file, atomically."""
    with atomic_open(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


RESULT_COLUMNS = (
    "family", "split", "task", "instance", "seed", "scheduler", "budget", "interval",
    "tuned_multiple", "lr_ref",
    "final_loss", "best_loss", "auc_log_loss", "steps_to_target", "equal_compute_loss",
    "compute", "wall_time", "diverged", "extra_steps", "clip_count",
)  # fmt: skip


def write_tables(results: Sequence[dict[str, Any]], root: Path) -> None:
    """Write ``runs.csv`` (tidy, per decision) and ``results.csv`` (per run, with metrics).

    The steps-to-target target of a problem is the tuned constant's final loss on it
    (when ``constant`` is in the comparison, else the tuned cosine's, else none).
    """
    def nan(x: Any) -> float:
        return math.nan if x is None else float(x)

    def curve(res: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cols = res["trace"]["columns"]
        return (
            np.array([nan(x) for x in cols["step"]]),
            np.array([nan(x) for x in cols["val_loss"]]),
            np.array([nan(x) for x in cols["inner_steps"]]),
        )

    def problem(res: dict[str, Any]) -> tuple[Any, ...]:
        c = res["cell"]
        return (c["family"], c["split"], c["index"], c["seed"])

    targets: dict[tuple[Any, ...], float] = {}
    for ref in ("cosine", "constant"):  # constant wins when both are present
        for r in results:
            if r["cell"]["label"] == ref:
                targets[problem(r)] = final_loss(r)
    rows = []
    with atomic_open(root / "runs.csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("family", "task", "instance", "seed", "scheduler", *TRACE_COLUMNS))
        for r in results:
            c, t = r["cell"], r["trace"]
            cols = t["columns"]
            for k in range(len(cols["step"])):
                values = ("" if cols[n][k] is None else cols[n][k] for n in TRACE_COLUMNS)
                w.writerow((c["family"], t["task"], c["index"], c["seed"], c["label"], *values))
            steps, val, comp = curve(r)
            m = run_metrics(
                steps,
                val,
                comp,
                budget=t["budget"],
                final_loss=final_loss(r),
                diverged=t["diverged"],
                wall_time=nan(cols["wall_time"][-1]),
                target=targets.get(problem(r), math.nan),
            )
            rows.append(
                {
                    "family": c["family"],
                    "split": c["split"],
                    "task": t["task"],
                    "instance": c["index"],
                    "seed": c["seed"],
                    "scheduler": c["label"],
                    "budget": t["budget"],
                    "interval": t["interval"],
                    "tuned_multiple": "" if c["multiple"] is None else c["multiple"],
                    "lr_ref": r["lr_ref"],
                    **m.to_dict(),
                    "extra_steps": t["extra_steps"],
                    "clip_count": t["clip_count"],
                }
            )
    write_csv(root / "results.csv", RESULT_COLUMNS, rows)


def read_results(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``results.csv`` back (numbers as floats, ``diverged`` as bool)."""
    path = Path(root) / "results.csv"
    if not path.exists():
        raise ConfigError(f"no comparison results in {os.fspath(root)!r} (results.csv missing)")
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [k for k in RESULT_COLUMNS if k not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(
                f"{os.fspath(path)!r} lacks the columns {missing} (written by another metasched "
                "version): run the same metasched compare again to rewrite it"
            )
        for row in reader:
            rec: dict[str, Any] = dict(row)
            for k in RESULT_COLUMNS:
                if k in ("family", "split", "task", "scheduler"):
                    continue
                if k == "diverged":
                    rec[k] = row[k] == "True"
                else:
                    rec[k] = float(row[k]) if row[k] != "" else math.nan
            out.append(rec)
    return out


def read_tuning_cost(root: Path) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Read ``tuning_cost.csv``: the curves per ``(family, scheduler)`` (none if absent)."""
    path = root / "tuning_cost.csv"
    out: dict[tuple[str, str], list[dict[str, float]]] = {}
    if not path.exists():
        return out
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = (row["family"], row["scheduler"])
            out.setdefault(key, []).append(
                {k: float(v) for k, v in row.items() if k not in ("family", "scheduler")}
            )
    for curve in out.values():
        curve.sort(key=lambda r: r["tuning_runs"])
    return out
