"""Validate the measured stability bound against the empirical largest stable constant LR.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stability.py [--quick] [--csv PATH]
        [--families mlp mnist1d fashion charlm nmf]

For every family, checkpoints are taken on ``train`` instances (the task families have no
``val`` split; ``test`` and ``shift`` are never touched) at several points of a training run
at the family's reference LR (NMF: half its analytic bound). At each checkpoint:

* the **measured bound** of :class:`metasched.stability.StabilityEstimator` (one estimator
  per instance, so the warm start carries over as it would during an episode), under three
  momentum rules: ``ema`` (``2 (1 + mu) / ((1 - mu) lam)``, the quadratic theory for the
  tasks' EMA momentum), ``heavy_ball`` (``2 (1 + mu) / lam``) and ``none`` (``2 / lam``);
* the **empirical max stable LR**: the largest LR on a half-octave grid around the reference
  for which the next decision interval (the family env's ``steps_per_action``) of SGD from
  the snapshot stays finite and below 3x the start loss (the 5-step running mean of the
  minibatch losses against the mean loss of the same minibatches at the snapshot's
  parameters, and the held-out loss at the end against its value at the snapshot);
  the scan goes up until two consecutive grid points fail;
* for NMF also the analytic bound ``1/L``.

Reported per family and rule: quantiles of ``bound / max_stable``, the share with ratio <= 1
(target >= 95%) and >= 0.3 (target >= 90%), the same shares after the safety factor kappa,
and the estimator's overhead: Hessian-vector products per measurement times their measured
cost in SGD steps (timed interleaved with SGD steps at the same checkpoint, so machine load
cancels), over the training steps between measurements (``every`` decisions of
``steps_per_action`` steps). kappa is chosen here, on these ``train`` checkpoints:
the largest half-octave fraction (1, 0.707, 0.5, ...) that puts >= 95% of ratios at or
below 1.

Every family gets 20-24 checkpoints; the slow ones (``fashion``, ``charlm``) only early in
the run (``charlm``: its first 300 of 2000 steps). ``--quick`` runs 2 checkpoints of mlp
and nmf (a smoke test).
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from metasched.envs.registration import env_defaults
from metasched.inner_tasks import make_family
from metasched.stability import ForkTestEstimator, StabilityEstimator, momentum_factor

RULES = ("ema", "heavy_ball", "none")
#: fork tests by loss-rise threshold (the default ``rise`` of ForkTestEstimator is 2)
RISES = {"fork1.5": 1.5, "fork2": 2.0, "fork3": 3.0}
ESTIMATORS = (*RULES, *RISES)
#: (instances, points along the run as fractions of the budget, budget cap) per family
PLAN = {
    "mlp": (6, (0.0, 0.25, 0.5, 0.75), None),
    "mnist1d": (6, (0.0, 0.25, 0.5, 0.75), None),
    "nmf": (6, (0.0, 0.1, 0.3, 0.6), None),
    "fashion": (5, (0.0, 0.2, 0.4, 0.6), None),
    "charlm": (5, (0.0, 0.05, 0.1, 0.15), 2000),
}
QUICK = {"mlp": (1, (0.0, 0.5), 200), "nmf": (1, (0.0, 0.5), 400)}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
EVERY = 10  # decisions between measurements (the amortisation the overhead assumes)
GRID_LO, GRID_HI = -12, 16  # half-octave steps around the anchor LR


@dataclass
class Row:
    """One checkpoint."""

    family: str
    instance: str
    split: str
    step: int
    momentum: float
    max_stable: float
    sharpness: float
    bound_ema: float
    bound_heavy_ball: float
    bound_none: float
    bound_fork1_5: float
    bound_fork2: float
    bound_fork3: float
    steps_fork1_5: float
    steps_fork2: float
    steps_fork3: float
    analytic: float
    n_hvp: int
    hvp_cost: float
    interval: int


def _stable(task, snap, lr: float, steps: int, start: tuple[float, float]) -> bool:
    """Whether ``steps`` SGD steps at ``lr`` from ``snap`` stay finite and below 3x the start.

    ``start`` = (mean minibatch loss of the same batches at the snapshot's parameters, held-out
    loss at the snapshot); the 5-step running mean of the fork's minibatch losses and its
    final held-out loss must stay below 3x them.
    """
    task.restore(snap)
    stats = task.train(steps, lr)
    if stats.diverged or stats.n_done < steps or not np.all(np.isfinite(stats.losses)):
        return False
    losses = stats.losses
    k = min(5, len(losses))
    run = np.convolve(losses, np.ones(k) / k, mode="valid")
    end = task.evaluate()
    return bool(run.max() < 3 * start[0] and math.isfinite(end) and end < 3 * start[1])


def max_stable_lr(task, anchor: float, steps: int) -> float:
    """Largest half-octave-grid LR whose next ``steps`` SGD steps stay stable (0 if none)."""
    snap = task.snapshot()
    base = task.train(steps, 0.0).losses  # the interval's minibatches at the snapshot
    start_eval = (float(np.mean(base)), task.evaluate())
    best, fails = 0.0, 0
    k = 0
    if not _stable(task, snap, anchor, steps, start_eval):
        while k > GRID_LO:  # go down to the first stable LR
            k -= 1
            if _stable(task, snap, anchor * 2 ** (k / 2), steps, start_eval):
                best = anchor * 2 ** (k / 2)
                break
    else:
        best = anchor
        while k < GRID_HI and fails < 2:
            k += 1
            lr = anchor * 2 ** (k / 2)
            if _stable(task, snap, lr, steps, start_eval):
                best, fails = lr, 0
            else:
                fails += 1
    task.restore(snap)
    return best


def _time_steps(task, snap, min_seconds: float = 0.05) -> float:
    """Seconds per SGD step (timing rounds of growing length until ``min_seconds``)."""
    n = 10
    while True:
        task.restore(snap)
        t0 = time.perf_counter()
        task.train(n, 0.0)
        dt = time.perf_counter() - t0
        if dt >= min_seconds or n >= 5000:
            return dt / n
        n *= 4


def hvp_cost_ratio(task, est: StabilityEstimator) -> tuple[float, int]:
    """Measure the bound; time the measurement against SGD steps (min of 3 under load).

    Returns (one HVP in SGD steps, HVPs of the measurement). The timing repeats run on
    copies of the estimator, so its warm start advances exactly once.
    """
    snap = task.snapshot()
    times = []
    for _ in range(3):
        twin = copy.deepcopy(est)
        t0 = time.perf_counter()
        task.measured_lr_bound(twin)
        times.append(time.perf_counter() - t0)
    task.measured_lr_bound(est)
    t_step = min(_time_steps(task, snap) for _ in range(3))
    task.restore(snap)
    n = est.last.n_hvp
    return min(times) / max(n, 1) / t_step, n


def run_family(name: str, plan: tuple, seed: int) -> list[Row]:
    """All checkpoints of one family."""
    n_inst, points, cap = plan
    family = make_family(name, seed=seed)
    budget, interval, _ = env_defaults(name)
    if cap is not None:
        budget = min(budget, cap)
    rows = []
    warm = family.make("train", 0)  # warm up autograd / BLAS so the first timing is fair
    warm.reset(np.random.default_rng(0))
    warm.measured_lr_bound(StabilityEstimator(max_iter=2))
    warm.train(5, 0.0)
    for i in range(n_inst):
        split = "train"  # the families have no val split; test/shift are never used here
        task = family.make(split, i)
        task.reset(np.random.default_rng(1000 + i))
        ref = task.default_lr()
        est = StabilityEstimator(generator=np.random.default_rng(i), momentum_aware=False)
        forks = {k: ForkTestEstimator.for_interval(interval, rise=r) for k, r in RISES.items()}
        done = 0
        for frac in points:
            target = round(frac * budget / interval) * interval
            if target > done:
                stats = task.train(target - done, ref)
                done = target
                if stats.diverged:
                    break
            ratio, n_hvp = hvp_cost_ratio(task, est)
            m = est.last
            mu = float(getattr(task, "momentum", 0.0))
            analytic = task.lr_bound() if name == "nmf" else math.nan
            anchor = ref if name != "nmf" else 0.5 * task.lr_bound()
            fms = {k.replace(".", "_"): f.measure(task) for k, f in forks.items()}
            ms = max_stable_lr(task, anchor, interval)
            bounds = {r: m.bound * (momentum_factor(mu, r) if r != "none" else 1.0)
                      for r in RULES}
            rows.append(
                Row(
                    family=name, instance=task.name, split=split, step=done, momentum=mu,
                    max_stable=ms, sharpness=m.sharpness, bound_ema=bounds["ema"],
                    bound_heavy_ball=bounds["heavy_ball"], bound_none=bounds["none"],
                    **{f"bound_{k}": fm.bound for k, fm in fms.items()},
                    **{f"steps_{k}": fm.cost_steps for k, fm in fms.items()},
                    analytic=analytic, n_hvp=n_hvp, hvp_cost=ratio, interval=interval,
                )
            )
            print(
                f"  {name} {task.name} step {done}: max stable {ms:.3g}, bound(none) "
                f"{m.bound:.3g}, fork2 {fms['fork2'].bound:.3g}, mu {mu}, "
                f"{n_hvp} HVPs x {ratio:.2f} steps",
                flush=True,
            )
    return rows


def choose_kappa(ratios: np.ndarray) -> float:
    """Largest half-octave fraction kappa <= 1 with >= 95% of kappa * ratio <= 1."""
    k = 0
    while k > -12 and np.mean(2 ** (k / 2) * ratios <= 1) < 0.95:
        k -= 1
    return round(2 ** (k / 2), 3)


def summarise(rows: list[Row], rule: str, kappa: float | None = None) -> list[dict]:
    """One summary record per family for one momentum rule."""
    out = []
    for fam in dict.fromkeys(r.family for r in rows):
        rs = [r for r in rows if r.family == fam and r.max_stable > 0]
        col = f"bound_{rule.replace('.', '_')}"
        ratios = np.array([getattr(r, col) / r.max_stable for r in rs])
        k = choose_kappa(ratios) if kappa is None else kappa
        key = rule.replace(".", "_")
        if rule in RISES:
            per = np.array([getattr(r, f"steps_{key}") for r in rs])
        else:
            per = np.array([r.n_hvp * r.hvp_cost for r in rs])
        overhead = float(np.mean(per)) / (EVERY * rs[0].interval)
        rec = {
            "family": fam, "rule": rule, "n": len(rs),
            **{f"q{int(q * 100)}": float(np.quantile(ratios, q)) for q in QUANTILES},
            "le1": float(np.mean(ratios <= 1)), "ge03": float(np.mean(ratios >= 0.3)),
            "kappa": k, "k_le1": float(np.mean(k * ratios <= 1)),
            "k_ge03": float(np.mean(k * ratios >= 0.3)),
            "hvp_per_meas": float(np.mean([r.n_hvp for r in rs])) if rule not in RISES else 0.0,
            "hvp_cost": float(np.median([r.hvp_cost for r in rs])) if rule not in RISES else 0.0,
            "steps_per_meas": float(np.mean(per)),
            "overhead": overhead,
        }
        if fam == "nmf":
            an = np.array([r.analytic / r.max_stable for r in rs])
            rec["analytic_median"] = float(np.median(an))
            rec["analytic_le1"] = float(np.mean(an <= 1))
        out.append(rec)
    return out


#: the estimator each task measures with by default (torch tasks: the fork test with
#: ``ForkTestEstimator``'s default rise; NMF: its exact minibatch Hessian, no momentum)
DEFAULT = {"nmf": "none"}
DEFAULT_NN = "fork2"


def default_table(rows: list[Row]) -> tuple[float, list[dict]]:
    """Per family, the default estimator with one kappa chosen on all checkpoints pooled."""
    def col(r: Row) -> str:
        return "bound_" + DEFAULT.get(r.family, DEFAULT_NN).replace(".", "_")

    ok = [r for r in rows if r.max_stable > 0]
    kappa = choose_kappa(np.array([getattr(r, col(r)) / r.max_stable for r in ok]))
    recs = []
    for fam in dict.fromkeys(r.family for r in rows):
        rule = DEFAULT.get(fam, DEFAULT_NN)
        recs += summarise([r for r in rows if r.family == fam], rule, kappa)
    return kappa, recs


def markdown(recs: list[dict]) -> str:
    """The summary as a Markdown table."""
    head = (
        "| family | rule | n | q5 | q25 | median | q75 | q95 | <=1 | >=0.3 | kappa | "
        "kappa: <=1 | kappa: >=0.3 | HVPs/meas | HVP cost (steps) | steps/meas | overhead |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in recs:
        lines.append(
            f"| {r['family']} | {r['rule']} | {r['n']} | {r['q5']:.2f} | {r['q25']:.2f} | "
            f"{r['q50']:.2f} | {r['q75']:.2f} | {r['q95']:.2f} | {r['le1']:.0%} | "
            f"{r['ge03']:.0%} | {r['kappa']:g} | {r['k_le1']:.0%} | {r['k_ge03']:.0%} | "
            f"{r['hvp_per_meas']:.1f} | {r['hvp_cost']:.2f} | {r['steps_per_meas']:.0f} | "
            f"{r['overhead']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; print the tables, write the CSV; return the summary records."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 checkpoints each")
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--csv", type=Path, default=Path("bench_stability.csv"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plans = QUICK if args.quick else PLAN
    families = args.families or list(plans)
    for f in families:
        if f not in PLAN:
            raise SystemExit(f"unknown family {f!r}; choose from {sorted(PLAN)}")
    rows: list[Row] = []
    t0 = time.perf_counter()
    for f in families:
        plan = plans.get(f, PLAN[f])
        print(f"{f}: {plan[0]} instances x {len(plan[1])} points", flush=True)
        t1 = time.perf_counter()
        rows += run_family(f, plan, args.seed)
        print(f"{f}: {time.perf_counter() - t1:.0f} s", flush=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    recs = [rec for rule in ESTIMATORS for rec in summarise(rows, rule)]
    print("### every estimator (kappa chosen per family and estimator)\n")
    print(markdown(recs))
    kappa, default = default_table(rows)
    print(f"\n### default estimators, one kappa = {kappa:g} chosen on all the train checkpoints\n")
    print(markdown(default))
    for r in recs:
        if r["family"] == "nmf" and r["rule"] == "none":
            print(
                f"\nNMF analytic bound 1/L over max stable: median {r['analytic_median']:.2f}, "
                f"<= 1 at {r['analytic_le1']:.0%} of checkpoints"
            )
    print(f"\n{len(rows)} checkpoints in {time.perf_counter() - t0:.0f} s; rows in {args.csv}")
    return recs + default


if __name__ == "__main__":
    main()
