"""The quality bar of a universal LR policy: zero-shot on five families, against tuned baselines.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_universal.py --out DIR
        [--policy FILE ...] [--families nmf mlp mnist1d fashion charlm] [--jobs 2] [--quick]
        [--split test|val]

Every family is one ``metasched compare`` in ``DIR/<family>`` (resumable; adding a policy to a
finished family runs only the new cells) on its ``test`` split, with:

* ``constant``, ``cosine`` and ``wsd`` tuned on ``train`` instances by mean log final loss
  over an LR grid (multiples of each instance's reference LR), ``cosine@ref`` untuned;
* every ``--policy`` (default: the shipped ``universal``), zero-shot: it starts at the
  reference LR with no tuning, ``clip="auto"`` (analytic bound on NMF, measured on networks);
* cosine's tuning-cost view: every grid point also runs on ``test``, which gives the number of
  tuning runs tuned cosine needs before its expected median matches the policy's.

Per policy and family it prints (and writes to ``DIR/quality.md`` and ``quality.json``) the
bars of the universal-policy issue: divergences; median final loss against tuned constant;
strict win rate (better by more than 0.5%) against ``cosine@ref``; the median's gap to tuned
cosine and tuned WSD, with a paired bootstrap 95% CI over instances of
``median(policy) / median(baseline) - 1``; and the tuning runs cosine needs to match. Nothing
is chosen on ``test``: the grids, instance counts and the policy are fixed beforehand.

``--split val`` runs the same table on ``val`` instances instead, without the tuning-cost
view: that is the one to choose between training recipes or policies with (then report the
chosen one on ``test``).

Instance counts and grids per family (:data:`SETTINGS`) follow what one CPU core affords:
a run costs about 0.1 s on nmf, 0.4 s on mlp, 2 s on mnist1d, 5 s on fashion and 13 s on
charlm. ``--quick`` shrinks everything (a smoke test of the script, not a result).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from metasched.distill.compare import (
    DEFAULT_GRID,
    CompareSpec,
    compare,
    parse_scheduler,
)
from metasched.distill.results import read_results, read_tuning_cost

_OCTAVES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_HALF_OCTAVES = (0.125, 0.177, 0.25, 0.354, 0.5, 0.707, 1.0, 1.414, 2.0, 2.828, 4.0, 5.657, 8.0)
#: family -> (test instances, train instances per grid point, grid).
SETTINGS: dict[str, tuple[int, int, tuple[float, ...]]] = {
    "nmf": (50, 40, DEFAULT_GRID),
    "mlp": (30, 16, _HALF_OCTAVES),
    "mnist1d": (30, 8, _OCTAVES),
    "fashion": (12, 3, _OCTAVES),
    "charlm": (8, 3, (0.25, 0.5, 1.0, 2.0, 4.0)),
}
QUICK: dict[str, tuple[int, int, tuple[float, ...]]] = {
    f: (3, 2, (0.5, 1.0, 2.0)) for f in SETTINGS
}
BASELINES = ("constant", "cosine", "wsd", "cosine@ref")
#: strict win: better by more than this relative margin (as the comparison report)
STRICT = 0.005


def _paired(results: list[dict], a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Final losses of labels ``a`` and ``b`` on the problems both ran (diverged: inf)."""
    by = {}
    for r in results:
        loss = math.inf if r["diverged"] else float(r["final_loss"])
        by.setdefault(r["scheduler"], {})[(r["instance"], r["seed"])] = loss
    common = sorted(set(by.get(a, {})) & set(by.get(b, {})))
    return (
        np.array([by[a][k] for k in common], dtype=float),
        np.array([by[b][k] for k in common], dtype=float),
    )


def median_gap(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Return ``median(x) / median(y) - 1`` and its paired bootstrap 95% CI over instances."""
    point = float(np.median(x) / np.median(y) - 1)
    if x.size < 3 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return point, math.nan, math.nan
    res = stats.bootstrap(
        (x, y),
        lambda a, b, axis=-1: np.median(a, axis=axis) / np.median(b, axis=axis) - 1,
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def runs_to_match(curve: list[dict[str, float]], target: float) -> float:
    """Fewest tuning runs at which the expected median of the pick is <= ``target``."""
    hit = [r["tuning_runs"] for r in curve if r["expected_median"] <= target]
    return min(hit) if hit else math.inf


def quality(root: Path, family: str, label: str) -> dict[str, float]:
    """The quality-bar numbers of policy ``label`` on one finished family comparison."""
    results = [r for r in read_results(root) if r["family"] == family]
    mine = [r for r in results if r["scheduler"] == label]
    out: dict[str, float] = {
        "n": len(mine),
        "diverged": sum(bool(r["diverged"]) for r in mine),
    }
    x, _ = _paired(results, label, label)
    out["median"] = float(np.median(x))
    for base in BASELINES:
        xa, yb = _paired(results, label, base)
        gap, lo, hi = median_gap(xa, yb)
        out[f"{base}_median"] = float(np.median(yb))
        out[f"gap_{base}"], out[f"gap_{base}_lo"], out[f"gap_{base}_hi"] = gap, lo, hi
        out[f"strict_win_{base}"] = float(np.mean(xa < yb * (1 - STRICT)))
    curve = read_tuning_cost(root).get((family, "cosine"), [])
    out["cosine_runs_to_match"] = runs_to_match(curve, out["median"]) if curve else math.nan
    return out


def verdicts(q: dict[str, float], family: str) -> dict[str, bool]:
    """Which bars of the issue the numbers meet."""
    v = {
        "no_divergence": q["diverged"] == 0,
        "<= tuned constant": q["gap_constant"] <= 0,
        ">=70% strict wins vs cosine@ref": q["strict_win_cosine@ref"] >= 0.7,
        "within 2% of tuned cosine": q["gap_cosine"] <= 0.02,
        "within 2% of tuned wsd": q["gap_wsd"] <= 0.02,
    }
    if family == "nmf":
        v["better than tuned cosine, CI excludes 0"] = q["gap_cosine_hi"] < 0
    return v


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """A Markdown table of the quality numbers, one row per (policy, family)."""
    head = (
        "| policy | family | n | diverged | median | vs tuned constant | strict wins vs "
        "cosine@ref | vs tuned cosine (95% CI) | vs tuned WSD (95% CI) | cosine tuning runs "
        "to match |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for label, fam, q in rows:
        runs = q["cosine_runs_to_match"]
        runs_s = "–" if math.isnan(runs) else ("∞" if math.isinf(runs) else f"{runs:.0f}")
        lines.append(
            f"| {label} | {fam} | {q['n']} | {q['diverged']} | {q['median']:.4g} | "
            f"{_pct(q['gap_constant'])} | {100 * q['strict_win_cosine@ref']:.0f}% | "
            f"{_pct(q['gap_cosine'])} ({_pct(q['gap_cosine_lo'])}, {_pct(q['gap_cosine_hi'])}) "
            f"| {_pct(q['gap_wsd'])} ({_pct(q['gap_wsd_lo'])}, {_pct(q['gap_wsd_hi'])}) | "
            f"{runs_s} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; print and write the quality table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--policy", action="append", help="policy file (default: the shipped one)")
    ap.add_argument("--families", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--split", default="test", choices=("test", "val"))
    args = ap.parse_args(argv)
    if not args.policy:
        from metasched.pretrained import pretrained_path

        args.policy = [str(pretrained_path())]
    policies = [parse_scheduler(f"learned:{p}") for p in args.policy]
    settings = QUICK if args.quick else SETTINGS
    rows = []
    for fam in args.families:
        n, tune_n, grid = settings[fam]
        spec = CompareSpec(
            families=(fam,),
            split=args.split,
            n_instances=n,
            tune_instances=tune_n,
            grid=tuple(float(g) for g in grid),
            tuning_cost=("cosine",) if args.split == "test" else (),
        )
        scheds = [parse_scheduler(b) for b in BASELINES] + policies
        root = args.out / fam
        compare(spec, scheds, root, jobs=args.jobs, log=lambda s: print(s, file=sys.stderr))
        rows += [(p.label, fam, quality(root, fam, p.label)) for p in policies]
    md = table(rows)
    verdict = {f"{lb}/{fam}": verdicts(q, fam) for lb, fam, q in rows}
    md += (
        "\nBars met (✓) or missed (✗):\n\n"
        + "\n".join(
            f"- {key}: " + ", ".join(f"{k} {'✓' if ok else '✗'}" for k, ok in v.items())
            for key, v in verdict.items()
        )
        + "\n"
    )
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text(md)
    payload = [
        {"policy": lb, "family": fam, **q, "bars": verdict[f"{lb}/{fam}"]} for lb, fam, q in rows
    ]
    (args.out / "quality.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
