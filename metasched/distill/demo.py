"""``metasched demo``: the whole pipeline on the embedded default (stochastic NMF).

1. train a PPO agent on ``metasched/NMF-v0`` (shipped hyperparameters, fewer timesteps),
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
they do not depend on the agent, so with ``jobs > 1`` their tuning runs in a second process
during steps 1-3 (training uses one core), and step 4 reads the cached grid runs back.

Every stage is cached in the output directory: a second call reuses what is there (an
interrupted training run is resumed), so nothing already produced is lost or recomputed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from metasched.atomic import write_text
from metasched.distill.compare import TUNED, CompareSpec, compare, parse_scheduler, tune
from metasched.errors import ConfigError

__all__ = ["DemoSettings", "run_demo"]

#: Search schedulers shown in the demo when they are registered.
OPTIONAL_SEARCH: tuple[str, ...] = ("pbt", "autolrs", "hypergradient", "sls")

#: LR-free peers that run on NMF (projected), shown when their package is installed
#: (``pip install 'metasched[peers]'``), and the module each needs. Schedule-free SGD is
#: left out: it refuses NMF (its evaluated point is an extrapolation that the projection
#: cannot keep non-negative), so its tuned row is dropped from the NMF demo too.
NMF_PEERS: dict[str, str] = {"prodigy": "prodigyopt", "dadapt": "dadaptation"}
NOT_ON_NMF: frozenset[str] = frozenset({"schedulefree", "schedulefree-tuned"})

#: The demo's tuning grid: the half-octave multiples 1/2 .. 32 of the reference LR (13 of
#: the 21 of ``DEFAULT_GRID``; the multiples below 1/2 are far from every NMF optimum and are
#: left out to keep the demo within its time budget. Tuned values at an edge are flagged).
DEMO_GRID: tuple[float, ...] = tuple(float(2.0**k) for k in [x / 2 for x in range(-2, 11)])

#: Start multiples of the joint GreedyLR search (× 4 factors × 4 patiences = 48 points). With
#: (1, 4) the 40-instance search picked the upper edge (start 4, factor 0.5, patience 0).
DEMO_JOINT_GRID: tuple[float, ...] = (1.0, 4.0, 16.0)

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
        return cls(200_000, 20_000, 50, 40, 20, 20)


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
    log(f"[1/4] training PPO on metasched/NMF-v0 for {s.timesteps:,} timesteps ...")
    cfg = load_config(
        "ppo",
        "metasched/NMF-v0",
        overrides={
            "n_timesteps": s.timesteps,
            "eval_freq": s.eval_freq,
            "checkpoint_freq": s.eval_freq,
        },
        seed=seed,
    )
    train(cfg, run_dir, progress=True, command=["metasched", "demo"], log=log)


def _tune_worker(spec: CompareSpec, labels: list[str], root: Path) -> None:
    """Tune ``labels`` into ``root`` (in a second process, on one core, while training runs)."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)
    tune(spec, labels, root, jobs=1)


def _start_tuning(spec: CompareSpec, labels: list[str], root: Path) -> Any:
    """Start tuning the baselines in a background process; return it (or ``None`` if done).

    The tuned baselines do not depend on the learned policy, so the demo tunes them on the
    second core while the agent trains on the first. Every grid run is cached atomically, so
    the comparison afterwards reads them back (and runs any the process did not finish).
    """
    import multiprocessing as mp

    if (root / "tuning.json").is_file():
        return None
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    proc = mp.get_context(method).Process(
        target=_tune_worker, args=(spec, labels, root), name="metasched-demo-tuning", daemon=True
    )
    proc.start()
    return proc


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
        tuning_cost=DEMO_TUNING_COST,
    )
    tuned = [lb for lb in TUNED if lb not in NOT_ON_NMF]
    background = _start_tuning(spec, tuned, root / "compare") if jobs > 1 else None
    if background is not None:
        log(f"tuning {', '.join(tuned)} on train in a second process while the agent trains")
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
        if background is not None and background.is_alive():
            log("waiting for the baseline tuning to finish ...")
        if background is not None:
            background.join()  # a failed tuning process is rerun (and reported) by compare
    finally:
        if background is not None and background.is_alive():
            background.terminate()
            background.join()

    specs = ["constant", "cosine", "cosine@ref", "constant@ref", "greedy", "greedy-tuned", "probe"]
    specs += [lb for lb in tuned if lb not in specs]  # e.g. wsd
    specs += [n for n in OPTIONAL_SEARCH if n in SCHEDULERS]
    specs += [n for n, mod in NMF_PEERS.items() if n in SCHEDULERS and find_spec(mod)]
    specs += [f"learned:{policy}", f"rules:{rules}", d.greedy.spec()]
    scheds = [parse_scheduler(x) for x in specs]
    # readable labels in the tables and plots
    names = {f"learned:{policy.stem}": "learned", f"rules:{rules.stem}": "rules",
             d.greedy.spec(): "greedy-distilled"}  # fmt: skip
    scheds = [type(x)(names.get(x.label, x.label), x.name, x.kwargs) for x in scheds]
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
        f"PPO on `metasched/NMF-v0`, {int(float(last[0])):,} timesteps; mean episodic return "
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
