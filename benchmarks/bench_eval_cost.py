"""Cost of one full-data evaluation in training steps, per task family (one core).

    .venv/bin/python benchmarks/bench_eval_cost.py [--instances 8] [FAMILY ...]

Search schedulers (probe, PBT, AutoLRS) call ``task.evaluate()`` — the full-data loss on
NMF, the held-out loss on the network tasks — to choose a winner. ``compute`` charges each
such call :func:`metasched.inner_tasks.costs.eval_cost` training steps; this script measures
that ratio: for each of the first ``--instances`` ``train`` instances it times ``--steps``
training steps at the family's reference LR and ``--evals`` evaluations (the torch tasks'
evaluation cache cleared before each), alternating the two three times and keeping the
fastest of each (the machine is shared). It prints the per-instance ratio and, per family,
the median with the range — the median is the constant in ``costs.py``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, before numpy loads (DESIGN §2.1)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metasched.errors import MetaschedError  # noqa: E402
from metasched.inner_tasks import make_family  # noqa: E402
from metasched.inner_tasks.costs import EVAL_COST  # noqa: E402

STEPS = {"nmf": 400, "mlp": 200, "mnist1d": 100, "fashion": 20, "charlm": 10}


def _time_train(task, n: int, lr: float) -> float:
    t0 = time.perf_counter()
    task.train(n, lr)
    return (time.perf_counter() - t0) / n


def _time_eval(task, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        if hasattr(task, "_eval_cache"):
            task._eval_cache = None
        task.evaluate()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("families", nargs="*", default=list(STEPS))
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--evals", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| family | instances | eval / train step: median | min | max | in costs.py |")
    print("|---|---|---|---|---|---|")
    for name in args.families:
        try:
            family = make_family(name)
        except MetaschedError as exc:
            print(f"| {name} | skipped: {exc} | | | | |")
            continue
        ratios = []
        for i in range(args.instances):
            try:
                task = family.make("train", i)
            except MetaschedError as exc:
                print(f"| {name} | skipped: {exc} | | | | |")
                break
            task.reset(np.random.default_rng(0))
            lr = float(task.default_lr())
            n = STEPS.get(name, 50)
            task.train(5, lr)  # warm-up
            step = min(_time_train(task, n, lr) for _ in range(3))
            ev = min(_time_eval(task, args.evals) for _ in range(3))
            ratios.append(ev / step)
        if ratios:
            r = np.array(ratios)
            print(
                f"| {name} | {len(r)} | {np.median(r):.2f} | {r.min():.2f} | {r.max():.2f} "
                f"| {EVAL_COST.get(name, float('nan')):.2f} |"
            )


if __name__ == "__main__":
    main()
