"""Multi-copy training (``train_copies``, vmap) against sequential restore/train per copy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_multicopy.py [--copies 3 8 16]

Reports copy-steps per second (k copies x n steps / wall time) on one torch thread for
sequential restore/train, vmap, and (MLPs only) stacked weights with hand-written backprop.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from metasched.inner_tasks.charlm import CharLMConfig, CharLMTask
from metasched.inner_tasks.fashion import FashionConfig, FashionTask
from metasched.inner_tasks.mlp import MLPConfig, MLPTask
from metasched.inner_tasks.mnist1d import MNIST1DConfig, MNIST1DTask
from metasched.inner_tasks.multicopy import is_plain_mlp, train_copies

TASKS = {
    "mlp w64 d2 b16": (lambda: MLPTask(MLPConfig(width=64, depth=2, batch_size=16)), 200),
    "mnist1d mlp w128 b32": (
        lambda: MNIST1DTask(MNIST1DConfig(arch="mlp", width=128, batch_size=32)),
        200,
    ),
    "mnist1d cnn w16 b32": (
        lambda: MNIST1DTask(MNIST1DConfig(arch="cnn", width=16, batch_size=32)),
        100,
    ),
    "fashion c8 b32": (lambda: FashionTask(FashionConfig(channels=8, batch_size=32)), 20),
    "charlm c64 b16": (lambda: CharLMTask(CharLMConfig(context=64, batch_size=16)), 8),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, nargs="+", default=[3, 8, 16])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| task | copies | sequential | vmap | stacked | best speed-up |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks:
        make, n = TASKS[name]
        task = make()
        task.reset(np.random.default_rng(0))
        snap = task.snapshot()
        for k in args.copies:
            lrs = [0.05 * 1.1**i for i in range(k)]
            rates = {}
            methods = ["sequential", "vmap"] + (["stacked"] if is_plain_mlp(task) else [])
            for method in methods:
                train_copies(task, [snap] * k, lrs, 2, method=method)  # warm-up
                t0 = time.perf_counter()
                train_copies(task, [snap] * k, lrs, n, method=method)
                rates[method] = k * n / (time.perf_counter() - t0)
            s = rates["sequential"]
            st = f"{rates['stacked']:.0f}" if "stacked" in rates else "-"
            best = max(rates.values()) / s
            print(f"| {name} | {k} | {s:.0f} | {rates['vmap']:.0f} | {st} | {best:.2f}x |")


if __name__ == "__main__":
    main()
