"""``summary.csv``, the plots and ``report.md`` of a comparison directory.

Two views, both over the same problems:

* **equal main-line steps**: every scheduler trains ``budget`` main-line inner steps; extra
  steps spent on probes or populations are free (reported in the ``compute`` column);
* **equal compute**: each run is read off where it had spent ``budget`` inner steps *in
  all*, probes and population members included — a scheduler that needs 1.5x compute is
  judged at two thirds of its main line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metasched.atomic import write_text
from metasched.distill.results import read_results, read_tuning_cost, write_csv
from metasched.distill.stats import (
    STRICT_MARGIN,
    aggregate,
    performance_profile,
    probability_of_improvement,
    win_rates,
)

__all__ = [
    "BASELINES",
    "add_runs_to_match",
    "summarise",
    "write_plots",
    "write_report",
]

#: The reference schedulers a new scheduler is held against, in report order.
BASELINES: tuple[str, ...] = ("constant", "cosine", "greedy", "greedy-tuned", "probe")

SUMMARY_COLUMNS = (
    "family", "scheduler", "n", "median_final", "median_final_lo", "median_final_hi",
    "iqm_final", "iqm_final_lo", "iqm_final_hi", "median_best", "median_auc_log_loss",
    "median_steps_to_target", "median_ratio_to_constant", "strict_win_vs_constant",
    "prob_improvement_vs_constant",
    "median_equal_compute", "iqm_equal_compute", "median_compute_x_budget",
    "median_wall_time", "diverged", "tuning_runs_to_match_learned",
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


def _instances(groups: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Return the instance of each problem of aligned ``groups`` (the same in every group)."""
    return [r["instance"] for r in next(iter(groups.values()))]


def summarise(rows: Sequence[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """One summary row per scheduler on ``family`` (see ``SUMMARY_COLUMNS``)."""
    groups = _aligned(_by(rows, family))
    budget = next(iter(groups.values()))[0]["budget"]
    finals = {k: _col(g, "final_loss") for k, g in groups.items()}
    _, strict = win_rates(finals) if "constant" in finals else ({}, {})
    poi = (
        probability_of_improvement(finals, _instances(groups), [(k, "constant") for k in finals])
        if "constant" in finals
        else {}
    )
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
                "prob_improvement_vs_constant": poi.get(k, {}).get("constant", math.nan),
                "median_equal_compute": eqc.median,
                "iqm_equal_compute": eqc.iqm,
                "median_compute_x_budget": float(np.median(_col(g, "compute"))) / budget,
                "median_wall_time": float(np.median(_col(g, "wall_time"))),
                "diverged": int(sum(bool(r["diverged"]) for r in g)),
                "tuning_runs_to_match_learned": math.nan,
            }
        )
    return out


def add_runs_to_match(
    summary: Sequence[dict[str, Any]],
    cost: dict[tuple[str, str], list[dict[str, float]]],
    learned: dict[str, str],
) -> None:
    """Fill ``tuning_runs_to_match_learned`` in place.

    Per family, the target is the median final loss of the learned policy (``learned[family]``
    names its row). A tuned baseline's value is the fewest tuning runs (one grid point on one
    ``train`` instance each) at which the expected median of its pick is at most the target
    (``inf``: not even the full grid gets there); an untuned ``@ref`` row gets 0 when its
    median already is at most the target, else ``inf``; every other row stays NaN (and all of
    them do when the comparison has no learned policy or no tuning-cost view).
    """
    by_key = {(s["family"], s["scheduler"]): s for s in summary}
    for s in summary:
        ref = by_key.get((s["family"], learned.get(s["family"], "")))
        target = math.nan if ref is None else float(ref["median_final"])
        if not math.isfinite(target):
            continue
        curve = cost.get((s["family"], s["scheduler"]))
        if curve:
            hit = [r["tuning_runs"] for r in curve if r["expected_median"] <= target]
            s["tuning_runs_to_match_learned"] = min(hit) if hit else math.inf
        elif s["scheduler"].endswith("@ref"):
            s["tuning_runs_to_match_learned"] = 0.0 if s["median_final"] <= target else math.inf


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
    names = {lb: v.get("name") for lb, v in settings.get("schedulers", {}).items()}
    learned = {}
    for s in summary:  # the first learned policy of each family is the reference
        if names.get(s["scheduler"]) == "learned":
            learned.setdefault(s["family"], s["scheduler"])
    cost = read_tuning_cost(root)
    add_runs_to_match(summary, cost, learned)
    scale = {r["family"]: (int(r["budget"]), int(r["interval"])) for r in rows}
    write_csv(root / "summary.csv", SUMMARY_COLUMNS, summary)
    figures = write_plots(root, rows, instances)
    tuning_figs = _tuning_plots(root, tuning, cost, summary, learned)

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
        "Tuned baselines: every grid point (an LR multiple of the instance's reference LR; "
        f"{len(spec['grid'])} half-octave multiples, or for jointly tuned baselines "
        f"{len(spec.get('joint_grid', []))} start multiples × their other settings) runs on "
        "the same `train` instances (count per row); the lowest **mean log final "
        "loss** wins (a diverged run scores log(10 × its initial loss)). CI: bootstrap 95% "
        "over instances. *Flat*: a grid neighbour of the pick is within noise of it (the "
        "paired bootstrap 95% CI of its mean log loss minus the pick's reaches 0), so the "
        "data cannot tell them apart. Nothing is tuned on the evaluated split. "
        "`NAME@ref` rows run at the reference LR, untuned.",
        "",
        "| family | scheduler | tuned setting | train instances | "
        "mean log train final loss (95% CI) | median train final loss | flat | grid edge |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tuning.values():
        setting = ", ".join(
            f"{k}={v:g}" for k, v in {"multiple": t["multiple"], **t.get("kwargs", {})}.items()
        )
        flat = (
            f"yes ({len(t.get('flat', []))} points within noise)"
            if t.get("in_flat_region")
            else "no"
        )
        lines.append(
            f"| {t['family']} | {t['label']} | {setting} | {t.get('n_instances', '–')} | "
            f"{_fmt(t.get('mean_log', math.nan))} "
            f"({_fmt(t.get('mean_log_lo', math.nan))}–{_fmt(t.get('mean_log_hi', math.nan))}) | "
            f"{_fmt(t['median_final'])} | {flat} | {'yes' if t.get('at_grid_edge') else 'no'} |"
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
        lines += _tuning_section(fam, tuning_figs.get(fam, []), summary, cost, learned)
        lines += ["", "### Plots", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures.get(fam, [])]
    path = root / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    log(f"wrote {path}, summary.csv, results.csv, runs.csv and plots/")
    return path


def _tuning_plots(
    root: Path,
    tuning: dict[str, dict[str, Any]],
    cost: dict[tuple[str, str], list[dict[str, float]]],
    summary: Sequence[dict[str, Any]],
    learned: dict[str, str],
) -> dict[str, list[str]]:
    """Tuning-curve and tuning-cost figures per family; return their PNG names."""
    from metasched.distill import plots

    out: dict[str, list[str]] = {}
    for fam in sorted({t["family"] for t in tuning.values()}):
        curves = {}
        for t in tuning.values():
            if t["family"] != fam or "mean" not in t:
                continue
            best: dict[float, int] = {}  # per LR multiple, the best point over other axes
            for j, pt in enumerate(t["points"]):
                m = float(pt["multiple"])
                if m not in best or t["mean"][j] < t["mean"][best[m]]:
                    best[m] = j
            ms = sorted(best)
            curves[t["label"]] = {
                "multiple": ms,
                "mean": [t["mean"][best[m]] for m in ms],
                "lo": [t["lo"][best[m]] for m in ms],
                "hi": [t["hi"][best[m]] for m in ms],
                "chosen": [t["multiple"]],
            }
        names = []
        if curves:
            stem = root / "plots" / f"{fam}-tuning-curves"
            plots.plot_tuning_curves(
                curves, f"{fam}: tuning curves on train (joint grids: best over other axes)", stem
            )
            names.append(f"plots/{stem.name}.png")
        fam_cost = {lb: c for (f, lb), c in cost.items() if f == fam}
        if fam_cost:
            lines = {
                s["scheduler"]: float(s["median_final"])
                for s in summary
                if s["family"] == fam
                and (s["scheduler"] == learned.get(fam) or s["scheduler"].endswith("@ref"))
            }
            series = {
                lb: {k: [r[src] for r in c] for k, src in (("runs", "tuning_runs"),
                     ("expected", "expected_median"), ("q10", "q10"), ("q90", "q90"))}
                for lb, c in fam_cost.items()
            }  # fmt: skip
            stem = root / "plots" / f"{fam}-tuning-cost"
            plots.plot_tuning_cost(
                series, lines, f"{fam}: median loss of the tuned pick vs tuning runs", stem
            )
            names.append(f"plots/{stem.name}.png")
        out[fam] = names
    return out


def _tuning_section(
    fam: str,
    figures: Sequence[str],
    summary: Sequence[dict[str, Any]],
    cost: dict[tuple[str, str], list[dict[str, float]]],
    learned: dict[str, str],
) -> list[str]:
    """Return the report's tuning section of one family: curves, the tuning-cost view."""
    if not figures:
        return []
    out = ["", "### Tuning", ""]
    out += [f"![{Path(f).stem}]({f})" for f in figures]
    fam_cost = {lb: c for (f, lb), c in cost.items() if f == fam}
    if not fam_cost:
        return out
    med = {s["scheduler"]: s for s in summary if s["family"] == fam}
    ref = learned.get(fam)
    lines_note = (
        f"; the learned policy (`{ref}`) and the `@ref` rows need no tuning runs."
        if ref
        else "; no learned policy in this comparison."
    )
    out += [
        "",
        "Tuning-cost view: a *tuning run* is one grid point trained on one `train` instance. "
        "With k random grid points tuned on all the tuning instances (k × instances runs), "
        "the curve is the median evaluated-split loss of the protocol's pick, averaged exactly "
        "over all subsets of size k (band: 10th–90th percentile over the subsets)" + lines_note,
        "",
        "| scheduler | median, 1 grid point | median, full grid | tuning runs (full grid) | "
        "tuning runs to match learned |",
        "|---|---|---|---|---|",
    ]
    for lb, c in fam_cost.items():
        s = med.get(lb, {})
        out.append(
            f"| {lb} | {_fmt(c[0]['expected_median'])} | {_fmt(c[-1]['expected_median'])} | "
            f"{int(c[-1]['tuning_runs'])} | "
            f"{_fmt(s.get('tuning_runs_to_match_learned', math.nan), '.0f')} |"
        )
    return out


def _head_to_head(rows: Sequence[dict[str, Any]], fam: str) -> list[str]:
    """Each scheduler against each present baseline: win rates, probability of improvement."""
    groups = _aligned(_by(rows, fam))
    finals = {k: _col(g, "final_loss") for k, g in groups.items()}
    eq, strict = win_rates(finals)
    bases = [b for b in BASELINES if b in finals]
    if not bases:
        return []
    pairs = [(k, b) for k in finals for b in bases if k != b]
    poi = probability_of_improvement(finals, _instances(groups), pairs)
    out = [
        "",
        "### Head to head (final loss)",
        "",
        "Cell: strict win rate / equal-or-better rate / probability of improvement of the row "
        "against the column. The probability of improvement (rliable) is the chance that the "
        "row ends lower than the column on an instance (over pairs of seeds, ties counting "
        "half), averaged over instances; 0.5 is a draw.",
        "",
        "| scheduler | " + " | ".join(f"vs {b}" for b in bases) + " |",
        "|---|" + "---|" * len(bases),
    ]
    for k in finals:
        cells = [
            "–" if k == b else f"{_pct(strict[k][b])} / {_pct(eq[k][b])} / {poi[k][b]:.2f}"
            for b in bases
        ]
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return out
