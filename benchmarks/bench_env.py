"""Environment benchmarks for stochastic NMF (run: ``python benchmarks/bench_env.py``).

Measures, side by side in one run, on one core (one BLAS / torch thread):

1. env overhead: ``env.step`` vs the task's own ``train`` for the same inner steps
   (target <= 1.10x);
2. single-instance NMF throughput, m=200, n=100, r=10, minibatch 32 (target >= 20,000
   inner steps/s);
3. batched NMF, B=64, vs 64 single instances stepped in a loop (target >= 8x).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from metasched.envs.lr_control import LRControlEnv  # noqa: E402
from metasched.inner_tasks.nmf import NMFConfig, NMFTask  # noqa: E402

CFG = NMFConfig(m=200, n=100, rank=10, noise=0.1, grad_noise=1.0, batch_size=32, seed=1)


def best_of(fn, repeats: int) -> float:
    """Return the fastest of ``repeats`` timings of ``fn()`` in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_overhead(episodes: int, repeats: int) -> dict[str, float]:
    """Time full episodes through ``env.step`` and the same inner steps through ``task.train``."""
    env = LRControlEnv(split="test")  # defaults: budget 2000, 50 inner steps per action
    budget, interval = env.budget, env.steps_per_action
    env.reset(seed=0, options={"instance": 0})
    task = env.task  # the same instance object; both paths re-initialise it each episode
    lr = 0.5 * task.lr_bound()

    def run_env() -> None:
        for ep in range(episodes):
            env.reset(seed=ep, options={"instance": 0})
            done = False
            while not done:
                _, _, term, trunc, _ = env.step(1)
                done = term or trunc

    def run_task() -> None:
        for ep in range(episodes):
            task.reset(np.random.default_rng(ep))
            for _ in range(budget // interval):
                task.train(interval, lr)

    t_env = best_of(run_env, repeats)
    t_task = best_of(run_task, repeats)
    return {"env_s": t_env, "task_s": t_task, "overhead_ratio": t_env / t_task}


def bench_single(steps: int, repeats: int) -> dict[str, float]:
    """Inner steps per second of one NMF instance (calls of 50 steps, as the env makes)."""
    task = NMFTask.from_config(CFG)
    task.reset(np.random.default_rng(0))
    lr = 0.3 * task.lr_bound()

    def run() -> None:
        for _ in range(steps // 50):
            task.train(50, lr)

    return {"steps_per_s": steps / best_of(run, repeats)}


def bench_batched(n_slots: int, calls: int, repeats: int) -> dict[str, float]:
    """Problem-steps per second: batched B instances vs B single instances in a loop."""
    from metasched.inner_tasks.nmf_batched import BatchedNMF

    tasks = [NMFTask.from_config(CFG) for _ in range(n_slots)]
    gens = [np.random.default_rng(i) for i in range(n_slots)]
    for t, g in zip(tasks, gens, strict=True):
        t.reset(g)
    lr = 0.3 * tasks[0].lr_bound()
    batched = BatchedNMF.from_tasks(tasks, [np.random.default_rng(i) for i in range(n_slots)])
    lrs = np.full(n_slots, lr)

    def run_loop() -> None:
        for _ in range(calls):
            for t in tasks:
                t.train(50, lr)

    def run_batched() -> None:
        for _ in range(calls):
            batched.train(50, lrs)

    work = n_slots * calls * 50
    loop_rate = work / best_of(run_loop, repeats)
    batched_rate = work / best_of(run_batched, repeats)
    return {
        "loop_problem_steps_per_s": loop_rate,
        "batched_problem_steps_per_s": batched_rate,
        "speedup": batched_rate / loop_rate,
    }


def main() -> None:
    """Run the benchmarks and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    report = {
        "overhead": bench_overhead(2 if args.quick else 5, reps),
        "single": bench_single(5000 if args.quick else 20000, reps),
        "batched": bench_batched(64, 4 if args.quick else 20, reps),
        "targets": {"overhead_ratio": "<= 1.10", "steps_per_s": ">= 20000", "speedup": ">= 8"},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
