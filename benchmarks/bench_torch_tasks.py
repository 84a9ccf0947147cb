"""Inner steps per second of the neural-network tasks on one core (one torch thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_torch_tasks.py [--instances 4]

For each family, builds the first ``--instances`` ``train`` instances and times ``train``
(without the per-interval ``evaluate``), then times one ``evaluate``. Noisy: order of
magnitude only, and slower while other processes share the cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from metasched.inner_tasks import make_family

STEPS = {"mlp": 1000, "mnist1d": 500, "fashion": 100, "charlm": 40}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("families", nargs="*", default=list(STEPS))
    parser.add_argument("--instances", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| family | instance | steps/s | evaluate (ms) |")
    print("|---|---|---|---|")
    for name in args.families:
        family = make_family(name)
        rates = []
        for i in range(args.instances):
            task = family.make("train", i)
            task.reset(np.random.default_rng(0))
            task.train(5, family.reference_lr)  # warm-up
            n = STEPS.get(name, 200)
            t0 = time.perf_counter()
            task.train(n, family.reference_lr)
            rate = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            task._eval_cache = None
            task.evaluate()
            ev = 1e3 * (time.perf_counter() - t0)
            rates.append(rate)
            print(f"| {name} | {task.name} | {rate:.0f} | {ev:.1f} |")
        print(f"| **{name}** | median of {len(rates)} | **{np.median(rates):.0f}** | |")


if __name__ == "__main__":
    main()
