"""``metasched demo``: the whole pipeline on the embedded default (stochastic NMF).

1. train a PPO agent on ``metasched/NMF-v1`` (shipped hyperparameters, fewer timesteps),
   evaluating it on ``val`` instances; the best checkpoint is the one best on ``val``;
2. export that checkpoint to ``policy.msched``;
3. distil it into if/then rules (``rules.json``) and a GreedyLR setting (fitted on
   ``train`` rollouts, agreement reported on ``val``);
4. compare the learned policy, its rules, the distilled GreedyLR, GreedyLR (defaults, and
   tuned jointly in factor, patience and start LR), the probe heuristic, tuned cosine and
   tuned constant (and every other tuned baseline of the comparison's table), the untuned
   ``cosine@ref``/``constant@ref`` rows and every registered search scheduler on held-out
   ``test`` instances, with the tuning-cost view;
5. write ``report.md`` with the tables and plots.

Only step 4 touches ``test``, and only to measure settings chosen before it. The baselines
are tuned on ``DemoSettings.tune_instances`` ``train`` instances over :data:`DEMO_GRID`;
they and the untrained schedulers do not depend on the agent, so with ``jobs > 1`` their
tuning and test runs go on in a second process during steps 1-3 (training uses one core),
and step 4 reads those cached runs back and runs the rest on every core.

Every stage is cached in the output directory: a second call reuses what is there (an
interrupted training run is resumed), so nothing already produced is lost or recomputed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metasched.atomic import write_text
from metasched.distill.compare import (
    TUNED,
    CompareSpec,
    SchedulerSpec,
    compare,
    parse_scheduler,
)
from metasched.errors import ConfigError

__all__ = ["DemoSettings", "run_demo"]

#: Search schedulers shown in the demo when they are registered.
OPTIONAL_SEARCH: tuple[str, ...] = ("pbt", "autolrs", "hypergradient", "sls")

# The LR-free peers that run on NMF (projected), Prodigy and D-Adaptation, are left out for
# time (about 1 s a run, 7x a classic schedule; with them the demo takes ~10.5 min on two
# cores): ``metasched compare --schedulers prodigy,dadapt`` runs the same 50 problems, and the
# README reports them. Schedule-free SGD refuses NMF (its evaluated point is an extrapolation
# that the projection cannot keep non-negative), so its tuned row is dropped from the NMF demo.
#: Label of the shipped universal policy's row (:mod:`metasched.pretrained`).
SHIPPED_LABEL = "universal"

NOT_ON_NMF: frozenset[str] = frozenset({"schedulefree", "schedulefree-tuned"})

#: The demo's tuning grid: the half-octave multiples 1 .. 32 of the reference LR (11 of the 21
#: of ``DEFAULT_GRID``). The multiples below 1 are far from every NMF optimum (the tuned
#: constant, cosine and WSD pick 4x, 22.6x and 8x) and are left out to keep the demo within
#: its time budget; a tuned value at an edge is flagged.
DEMO_GRID: tuple[float, ...] = tuple(float(2.0 ** (k / 2)) for k in range(11))

#: Start multiples of the joint GreedyLR search. With (1, 4) the 40-instance search picked the
#: upper edge (start 4, factor 0.5, patience 0).
DEMO_JOINT_GRID: tuple[float, ...] = (1.0, 4.0, 16.0)

#: Factor and patience of the demo's joint GreedyLR search (3 × 3 × 3 starts = 27 points on 40
#: instances; the comparison's default grid adds factor 0.95 and patience 10, the passive
#: corner, 48 points). On NMF the full grid picks factor 0.5, patience 0 at start 4 — inside
#: this one, so the smaller grid picks the same and keeps the demo within 10 minutes.
DEMO_JOINT_AXES: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("factor", (0.5, 0.7, 0.9)),
    ("patience", (0, 1, 3)),
)

#: Tuned labels with the tuning-cost view in the demo (each costs every grid point on every
#: test instance, 13 × 50 runs for cosine; the others are left out for time:
#: ``metasched compare --tuning-cost`` draws them all).
DEMO_TUNING_COST: tuple[str, ...] = ("cosine",)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (``quick`` shrinks every stage)."""

    timesteps: int
    eval_freq: int
    n_instances: int
    tune_instances: int
    distill_train: int
    distill_val: int

    @classmethod
    def make(cls, quick: bool) -> DemoSettings:
        """Return the full settings (sized for under 10 min on 2 idle cores) or quick ones."""
        if quick:
            return cls(12_288, 6_144, 8, 4, 5, 5)
        return cls(160_000, 20_000, 50, 40, 20, 20)


def _train(run_dir: Path, s: DemoSettings, seed: int, log: Callable[[str], None]) -> None:
    from metasched.agents.config import load_config
    from metasched.agents.train import train

    if (run_dir / "final" / "model.zip").is_file():
        log(f"[1/4] reusing the trained agent in {run_dir}")
        return
    if (run_dir / "config.yaml").is_file():
        log(f"[1/4] resuming the interrupted training run in {run_dir}")
        train(None, run_dir, resume=True, progress=True, log=log)
        return
    log(f"[1/4] training PPO on metasched/NMF-v1 for {s.timesteps:,} timesteps ...")
    cfg = load_config(
        "ppo",
        "metasched/NMF-v1",
        overrides={
            "n_timesteps": s.timesteps,
            "eval_freq": s.eval_freq,
            "checkpoint_freq": s.eval_freq,
        },
        seed=seed,
    )
    train(cfg, run_dir, progress=True, command=["metasched", "demo"], log=log)


def _background_worker(
    spec: CompareSpec, tuned: list[str], baselines: list[SchedulerSpec], root: Path, stop: Any
) -> None:
    """Run the agent-independent cells into ``root`` until ``stop`` is set (one core).

    First the tuning grid of ``tuned`` on ``train``, then the tuning-cost grid and the
    ``baselines``' runs on ``test`` (at the tuned settings). Each cell is cached atomically
    as it finishes, and ``stop`` is checked between cells, so stopping loses no finished run.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from metasched.distill import compare as cmp

    threadpool_limits(1)
    torch.set_num_threads(1)
    grid = [
        c
        for fam in spec.families
        for lb in tuned
        for c in cmp._grid_cells(spec, fam, lb, "train", range(spec.n_tune(fam)), 1)
    ]
    cmp.run_cells(grid, root, stop=stop.is_set)
    if stop.is_set():
        return
    tuning = cmp.tune(spec, tuned, root)  # every grid run is cached by now
    wanted = {k: t for k, t in tuning.items() if t["label"] in spec.tuning_cost}
    later = cmp.evaluation_cells(spec, baselines, tuning) + cmp.tuning_cost_cells(spec, wanted)
    cmp.run_cells(later, root, stop=stop.is_set)


def _start_background(
    spec: CompareSpec, tuned: list[str], baselines: list[SchedulerSpec], root: Path
) -> tuple[Any, Any]:
    """Start :func:`_background_worker` in a second process; return ``(process, stop event)``.

    The tuned baselines and the untrained schedulers do not depend on the learned policy, so
    the demo runs their cells on the second core while the agent trains on the first; the
    comparison afterwards reads them back and runs whatever the process did not reach.
    """
    import multiprocessing as mp

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    stop = ctx.Event()
    proc = ctx.Process(
        target=_background_worker,
        args=(spec, tuned, baselines, root, stop),
        name="metasched-demo-baselines",
        daemon=True,
    )
    proc.start()
    return proc, stop


def run_demo(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    jobs: int = 2,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the demo into ``out``; return the path of its ``report.md``."""
    from metasched.agents.train import export_run
    from metasched.distill.rules import distill
    from metasched.schedulers import SCHEDULERS

    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    s = DemoSettings.make(quick)
    t0 = time.perf_counter()
    run_dir = root / "run"
    spec = CompareSpec(
        n_instances=s.n_instances,
        tune_instances=s.tune_instances,
        grid=DEMO_GRID,
        joint_grid=DEMO_JOINT_GRID,
        joint_axes=DEMO_JOINT_AXES,
        tuning_cost=DEMO_TUNING_COST,
    )
    tuned = [lb for lb in TUNED if lb not in NOT_ON_NMF]
    specs = ["constant", "cosine", "cosine@ref", "constant@ref", "greedy", "greedy-tuned", "probe"]
    specs += [lb for lb in tuned if lb not in specs]  # e.g. wsd
    specs += [n for n in OPTIONAL_SEARCH if n in SCHEDULERS]
    baselines = [parse_scheduler(x) for x in specs]
    # the policy shipped with the package (meta-trained on nmf, mlp and mnist1d), zero-shot:
    # it does not depend on the demo's agent, so it runs with the baselines
    from metasched.pretrained import pretrained_path

    baselines.append(SchedulerSpec(SHIPPED_LABEL, "learned", {"path": str(pretrained_path())}))
    background = None
    if jobs > 1 and not (root / "compare" / "summary.csv").is_file():
        background = _start_background(spec, tuned, baselines, root / "compare")
        log("running the baselines' tuning and test runs in a second process while the agent "
            "trains")  # fmt: skip
    try:
        _train(run_dir, s, seed, log)

        policy = root / "policy.msched"
        log(f"[2/4] exporting the policy best on val to {policy}")
        export_run(run_dir, policy, which="best")

        rules = root / "rules.json"
        log("[3/4] distilling the policy into rules and a GreedyLR setting ...")
        d = distill(
            policy, rules, n_train=s.distill_train, n_val=s.distill_val,
            log=lambda m: log("  " + m),
        )  # fmt: skip
        write_text(root / "distill.md", d.summary() + "\n")
        log(d.rules_text)
    finally:
        if background is not None:  # stops between two cells: every finished run is kept
            proc, stop = background
            stop.set()
            proc.join()

    specs = [f"learned:{policy}", f"rules:{rules}", d.greedy.spec()]
    # readable labels in the tables and plots
    names = {f"learned:{policy.stem}": "learned", f"rules:{rules.stem}": "rules",
             d.greedy.spec(): "greedy-distilled"}  # fmt: skip
    ours = [
        SchedulerSpec(names.get(x.label, x.label), x.name, x.kwargs)
        for x in map(parse_scheduler, specs)
    ]
    # the shipped policy last: the report's reference policy (tuning-cost view) is the first
    # learned row, and that is the demo's own
    shipped = [b for b in baselines if b.label == SHIPPED_LABEL]
    scheds = [b for b in baselines if b.label != SHIPPED_LABEL] + ours + shipped
    log(f"[4/4] comparing {len(scheds)} schedulers on {s.n_instances} held-out NMF instances")
    cmp_dir = compare(spec, scheds, root / "compare", jobs=jobs, log=lambda m: log("  " + m),
                      progress=True)  # fmt: skip
    report = _write_report(root, cmp_dir, run_dir, time.perf_counter() - t0)
    log(f"done in {time.perf_counter() - t0:.0f} s: {report}")
    return report


def _write_report(root: Path, cmp_dir: Path, run_dir: Path, seconds: float) -> Path:
    from metasched.distill.plots import plot_eval_curve

    hist = [
        line.split(",") for line in (run_dir / "eval.csv").read_text().splitlines()[1:] if line
    ]
    base = json.loads((run_dir / "baselines.json").read_text())
    plot_eval_curve(
        [float(h[0]) for h in hist],
        [float(h[1]) for h in hist],
        {k: v["mean_return"] for k, v in base.items()},
        root / "plots" / "training",
    )
    body = (cmp_dir / "report.md").read_text(encoding="utf-8").split("\n", 1)[1]
    body = body.replace("](plots/", "](compare/plots/")
    last = hist[-1]
    best = json.loads((run_dir / "best" / "eval.json").read_text())
    lines = [
        "# metasched demo",
        "",
        f"Trained, exported, distilled and compared in {seconds:.0f} s. Files: `run/` "
        "(training run), `policy.msched` (the learned scheduler), `rules.json` and "
        "`distill.md` (distilled rules), `compare/` (tidy tables `runs.csv`, `results.csv`, "
        "`summary.csv`, plots).",
        "",
        "## Training",
        "",
        f"PPO on `metasched/NMF-v1`, {int(float(last[0])):,} timesteps; mean episodic return "
        f"on the `val` split {float(last[1]):+.3f} (keep-the-LR policy "
        f"{base['keep']['mean_return']:+.3f}, random policy "
        f"{base['random']['mean_return']:+.3f}). The exported policy is the checkpoint with "
        f"the best mean `val` return ({best['mean_return']:+.3f}, at "
        f"{int(best['timesteps']):,} timesteps); `test` played no part in choosing it.",
        "",
        "![training](plots/training.png)",
        "",
        (root / "distill.md").read_text(encoding="utf-8").replace("## ", "## ", 1),
        "## Comparison",
        body,
    ]
    path = root / "report.md"
    write_text(path, "\n".join(lines))
    return path
