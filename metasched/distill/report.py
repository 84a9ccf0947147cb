"""``summary.csv``, the plots and ``report.md`` of a comparison directory.

Two views, both over the same problems:

* **equal main-line steps**: every scheduler trains ``budget`` main-line inner steps; extra
  steps spent on probes or populations are free (reported in the ``compute`` column);
* **equal compute**: each run is read off where it had spent ``budget`` inner steps *in
  all*, probes and population members included — a scheduler that needs 1.5x compute is
  judged at two thirds of its main line.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metasched.distill.compare import read_results
from metasched.distill.stats import STRICT_MARGIN, aggregate, performance_profile, win_rates

__all__ = ["BASELINES", "summarise", "write_plots", "write_report"]

#: The reference schedulers a new scheduler is held against, in report order.
BASELINES: tuple[str, ...] = ("constant", "cosine", "greedy", "greedy-tuned", "probe")

SUMMARY_COLUMNS = (
    "family", "scheduler", "n", "median_final", "median_final_lo", "median_final_hi",
    "iqm_final", "iqm_final_lo", "iqm_final_hi", "median_best", "median_auc_log_loss",
    "median_steps_to_target", "median_ratio_to_constant", "strict_win_vs_constant",
    "median_equal_compute", "iqm_equal_compute", "median_compute_x_budget",
    "median_wall_time", "diverged",
)  # fmt: skip

TAUS: tuple[float, ...] = tuple(float(x) for x in np.geomspace(1.0, 10.0, 61))


def _by(rows: Sequence[dict[str, Any]], family: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["instance"], r["seed"])):
        if r["family"] == family:
            out.setdefault(r["scheduler"], []).append(r)
    return out


def _col(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=float)


def _aligned(groups: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Keep the problems every scheduler has (a partial comparison stays paired)."""
    common = set.intersection(*({(r["instance"], r["seed"]) for r in g} for g in groups.values()))
    return {k: [r for r in g if (r["instance"], r["seed"]) in common] for k, g in groups.items()}


def summarise(rows: Sequence[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """One summary row per scheduler on ``family`` (see ``SUMMARY_COLUMNS``)."""
    groups = _aligned(_by(rows, family))
    budget = next(iter(groups.values()))[0]["budget"]
    finals = {k: _col(g, "final_loss") for k, g in groups.items()}
    _, strict = win_rates(finals) if "constant" in finals else ({}, {})
    out = []
    for k, g in groups.items():
        fin = finals[k]
        agg = aggregate(fin, seed=0)
        eqc = aggregate(_col(g, "equal_compute_loss"), seed=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = fin / finals["constant"] if "constant" in finals else np.full(fin.size, np.nan)
        out.append(
            {
                "family": family,
                "scheduler": k,
                "n": agg.n,
                "median_final": agg.median,
                "median_final_lo": agg.median_ci[0],
                "median_final_hi": agg.median_ci[1],
                "iqm_final": agg.iqm,
                "iqm_final_lo": agg.iqm_ci[0],
                "iqm_final_hi": agg.iqm_ci[1],
                "median_best": float(np.median(_col(g, "best_loss"))),
                "median_auc_log_loss": float(np.median(_col(g, "auc_log_loss"))),
                "median_steps_to_target": _nanmedian(_col(g, "steps_to_target")),
                "median_ratio_to_constant": _nanmedian(ratio),
                "strict_win_vs_constant": strict.get(k, {}).get("constant", math.nan),
                "median_equal_compute": eqc.median,
                "iqm_equal_compute": eqc.iqm,
                "median_compute_x_budget": float(np.median(_col(g, "compute"))) / budget,
                "median_wall_time": float(np.median(_col(g, "wall_time"))),
                "diverged": int(sum(bool(r["diverged"]) for r in g)),
            }
        )
    return out


def _nanmedian(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else math.nan


def _fmt(x: float, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return format(x, spec)


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.0%}"


#: Search-based schedulers, drawn apart when there are many schedulers.
SEARCH: tuple[str, ...] = ("pbt", "autolrs", "hypergradient", "sls")


def _schedule_groups(names: list[str]) -> list[tuple[str, list[str]]]:
    """Split a crowded schedules plot: the search schedulers get one of their own."""
    if len(names) <= 8:
        return [("", names)]
    search = [n for n in names if n.split(":")[0] in SEARCH]
    rest = [n for n in names if n not in search]
    if not search:
        return [("", names)]
    refs = [n for n in ("constant", "cosine") if n in names]
    return [("", rest), ("-search", refs + search)]


def write_plots(
    root: Path, rows: Sequence[dict[str, Any]], instances: Sequence[int] = (0, 1)
) -> dict[str, list[str]]:
    """Write the figures of each family under ``root/plots``; return their PNG names."""
    from metasched.distill import plots

    out: dict[str, list[str]] = {}
    for fam in sorted({r["family"] for r in rows}):
        groups = _aligned(_by(rows, fam))
        finals = {k: _col(g, "final_loss") for k, g in groups.items()}
        eq, _ = win_rates(finals)
        names = []
        stem = root / "plots" / f"{fam}-win-rates"
        plots.plot_win_rates(eq, f"{fam}: equal or better final loss (±0.5%)", stem)
        names.append(f"plots/{stem.name}.png")
        stem = root / "plots" / f"{fam}-profile"
        prof = performance_profile(finals, TAUS)
        plots.plot_profile(prof, TAUS, f"{fam}: performance profile (final loss)", stem)
        names.append(f"plots/{stem.name}.png")
        eqc = {k: _col(g, "equal_compute_loss") for k, g in groups.items()}
        stem = root / "plots" / f"{fam}-profile-equal-compute"
        prof = performance_profile(eqc, TAUS)
        plots.plot_profile(prof, TAUS, f"{fam}: performance profile at equal compute", stem)
        names.append(f"plots/{stem.name}.png")
        first = next(iter(groups.values()))
        tasks = {(r["instance"], r["seed"]): r["task"] for r in first}
        for inst in instances:
            key = (inst, 0)
            if key not in tasks:
                continue
            curves = plots.read_curves(root / "runs.csv", fam, inst, 0)
            for suffix, group in _schedule_groups(list(curves)):
                stem = root / "plots" / f"{fam}-schedules{suffix}-{inst}"
                sub = {k: curves[k] for k in group}
                plots.plot_schedules(sub, f"{tasks[key]} (seed 0)", stem)
                names.append(f"plots/{stem.name}.png")
        out[fam] = names
    return out


def write_report(
    root: str | os.PathLike[str],
    *,
    instances: Sequence[int] = (0, 1),
    log: Callable[[str], None] = print,
) -> Path:
    """Write ``summary.csv``, the plots and ``report.md`` for the comparison in ``root``."""
    root = Path(root)
    rows = read_results(root)
    settings = json.loads((root / "compare.json").read_text(encoding="utf-8"))
    spec = settings["spec"]
    tuning = json.loads((root / "tuning.json").read_text(encoding="utf-8"))
    families = sorted({r["family"] for r in rows})
    summary = [s for fam in families for s in summarise(rows, fam)]
    scale = {r["family"]: (int(r["budget"]), int(r["interval"])) for r in rows}
    with open(root / ".summary.csv.tmp", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(summary)
    os.replace(root / ".summary.csv.tmp", root / "summary.csv")
    figures = write_plots(root, rows, instances)

    lines = [
        "# metasched comparison",
        "",
        f"Split `{spec['split']}`, {spec['n_instances']} instance(s) per family × "
        f"{spec['seeds']} seed(s); every run on a family trains the same main-line "
        f"inner-step budget (below), clipping `{spec['clip']}` at κ = {spec['kappa']:g}. "
        "Losses are the validation loss (full-data loss on tasks without a held-out set) at "
        "the end of the run; diverged runs count as ∞. "
        f"CIs are percentile-bootstrap 95%. A *strict* win is better by more than "
        f"{STRICT_MARGIN:.1%} relative.",
        "",
        "Tuned baselines (grid search over "
        f"{len(spec['grid'])} LR multiples of the instance's reference LR on "
        f"{spec['tune_instances']} `train` instances):",
        "",
        "| family | scheduler | tuned multiple | median train final loss |",
        "|---|---|---|---|",
    ]
    for t in tuning.values():
        lines.append(
            f"| {t['family']} | {t['label']} | {t['multiple']:.3g}"
            f"{' (grid edge!)' if t.get('at_grid_edge') else ''} | {_fmt(t['median_final'])} |"
        )
    for fam in families:
        fam_rows = [s for s in summary if s["family"] == fam]
        lines += [
            "",
            f"## {fam}",
            "",
            f"{scale[fam][0]} main-line inner steps per run, one LR decision every "
            f"{scale[fam][1]} steps.",
            "",
            "### Equal main-line steps",
            "",
            "| scheduler | median final (95% CI) | IQM final (95% CI) | median best | "
            "median AUC log-loss | median steps to target | median ratio to constant | "
            "strict wins vs constant | compute ×budget | wall s | diverged |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in fam_rows:
            lines.append(
                f"| {s['scheduler']} | {_fmt(s['median_final'])} "
                f"({_fmt(s['median_final_lo'])}–{_fmt(s['median_final_hi'])}) | "
                f"{_fmt(s['iqm_final'])} ({_fmt(s['iqm_final_lo'])}–{_fmt(s['iqm_final_hi'])}) | "
                f"{_fmt(s['median_best'])} | {_fmt(s['median_auc_log_loss'], '.3f')} | "
                f"{_fmt(s['median_steps_to_target'], '.0f')} | "
                f"{_fmt(s['median_ratio_to_constant'], '.3f')} | "
                f"{_pct(s['strict_win_vs_constant'])} | "
                f"{_fmt(s['median_compute_x_budget'], '.2f')} | "
                f"{_fmt(s['median_wall_time'], '.2f')} | {s['diverged']} |"
            )
        lines += [
            "",
            "Steps to target: main-line steps until the loss first reaches the tuned "
            "constant's final loss on the same problem (∞: never; decision resolution).",
            "",
            "### Equal compute",
            "",
            "| scheduler | median loss at equal compute | IQM | compute ×budget |",
            "|---|---|---|---|",
        ]
        for s in fam_rows:
            lines.append(
                f"| {s['scheduler']} | {_fmt(s['median_equal_compute'])} | "
                f"{_fmt(s['iqm_equal_compute'])} | {_fmt(s['median_compute_x_budget'], '.2f')} |"
            )
        lines += _head_to_head(rows, fam)
        lines += ["", "### Plots", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures.get(fam, [])]
    path = root / "report.md"
    tmp = root / ".report.md.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log(f"wrote {path}, summary.csv, results.csv, runs.csv and plots/")
    return path


def _head_to_head(rows: Sequence[dict[str, Any]], fam: str) -> list[str]:
    """Each scheduler against each present baseline: strict / equal-or-better win rates."""
    groups = _aligned(_by(rows, fam))
    finals = {k: _col(g, "final_loss") for k, g in groups.items()}
    eq, strict = win_rates(finals)
    bases = [b for b in BASELINES if b in finals]
    if not bases:
        return []
    out = [
        "",
        "### Head to head (final loss)",
        "",
        "Cell: strict win rate / equal-or-better rate of the row against the column.",
        "",
        "| scheduler | " + " | ".join(f"vs {b}" for b in bases) + " |",
        "|---|" + "---|" * len(bases),
    ]
    for k in finals:
        cells = [
            "–" if k == b else f"{_pct(strict[k][b])} / {_pct(eq[k][b])}" for b in bases
        ]
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return out
