"""Environment benchmarks for stochastic NMF (run: ``python benchmarks/bench_env.py``).

Measures, side by side in one run, comparing equal work only: the same dtype on both sides
(float64 against float64, float32 against float32, reported separately), the same
bookkeeping (update norms measured on both sides or on neither) and one process against one
process; figures that use several processes are labelled ``multi-process`` and are not
equal-work ratios.

1. env overhead: ``env.step`` vs the task's own ``train`` for the same inner steps
   (float64 both, update norms both, one process; target <= 1.10x);
2. single-instance NMF throughput, m=200, n=100, r=10, minibatch 32 (float64; target >=
   20,000 inner steps/s);
3. batched NMF, B=64, vs 64 single instances stepped in a loop (target >= 8x), one process:
   ``float64``: 64 ``NMFTask`` (float64, update norms) against ``BatchedNMF`` in float64
   with update norms; ``float32``: 64 one-slot ``BatchedNMF`` in a loop against one 64-slot
   ``BatchedNMF``, update norms on neither side (as the vector env calls it);
4. vector envs, env only (no agent): transitions per second (``VecEnv.step`` calls x
   ``num_envs``) with random valid actions on ``metasched/NMF-v0`` (default env kwargs,
   split ``train``). Single process, float64 on both sides: an SB3 ``DummyVecEnv`` of 8
   ``LRControlEnv`` against ``BatchedNMFVecEnv`` in float64 with one process (bucketed and
   not). There is no float32 single env, so the float32 batched env has no
   equal-work baseline: its rows are absolute rates. Multi-process (labelled): SB3
   ``SubprocVecEnv`` with 2 and 4 envs (one process each) and ``BatchedNMFVecEnv`` with its
   defaults (bucketed, float32, 2 processes) at several ``num_envs``; their
   ratios to the single-process ``DummyVecEnv`` mix process counts (and dtypes) and say so.
   The timed window is a whole number of episodes (40 decisions each), so the episode
   resets are part of the measurement.

``--only-vecenv`` runs section 4 alone; ``--batched-envs`` picks its ``num_envs`` values.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

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


def bench_batched(n_slots: int, calls: int, repeats: int) -> dict[str, object]:
    """Problem-steps per second: one B-slot batch vs B single instances, equal work.

    Returns one block per dtype; each compares the batch with single instances (in float64,
    the single task's own arithmetic; in float32, one-slot batches) with the same
    bookkeeping on both sides, in one process.
    """
    from metasched.inner_tasks.nmf_batched import BatchedNMF

    def tasks() -> list[NMFTask]:
        out = [NMFTask.from_config(CFG) for _ in range(n_slots)]
        for i, t in enumerate(out):
            t.reset(np.random.default_rng(i))
        return out

    singles = tasks()
    lr = 0.3 * singles[0].lr_bound()
    lrs = np.full(n_slots, lr)
    work = n_slots * calls * 50

    def batch(dtype: torch.dtype) -> BatchedNMF:
        gens = [np.random.default_rng(i) for i in range(n_slots)]
        return BatchedNMF.from_tasks(tasks(), gens, dtype=dtype)

    def one_slot_batches(dtype: torch.dtype) -> list[BatchedNMF]:
        return [
            BatchedNMF.from_tasks([t], [np.random.default_rng(i)], dtype=dtype)
            for i, t in enumerate(tasks())
        ]

    def rate_loop_tasks() -> float:
        def run() -> None:
            for _ in range(calls):
                for t in singles:
                    t.train(50, lr)  # NMFTask always measures update norms

        return work / best_of(run, repeats)

    def rate_batch(b: BatchedNMF, track: bool) -> float:
        def run() -> None:
            for _ in range(calls):
                b.train(50, lrs, track_updates=track)

        return work / best_of(run, repeats)

    def rate_loop_batches(bs: list[BatchedNMF], track: bool) -> float:
        one = np.full(1, lr)

        def run() -> None:
            for _ in range(calls):
                for b in bs:
                    b.train(50, one, track_updates=track)

        return work / best_of(run, repeats)

    loop64 = rate_loop_tasks()
    batched64 = rate_batch(batch(torch.float64), True)
    loop32 = rate_loop_batches(one_slot_batches(torch.float32), False)
    batched32 = rate_batch(batch(torch.float32), False)
    return {
        "float64": {
            "loop_of_NMFTask_problem_steps_per_s": loop64,
            "batched_problem_steps_per_s": batched64,
            "speedup": batched64 / loop64,
            "bookkeeping": "update norms on both sides",
        },
        "float32": {
            "loop_of_1slot_problem_steps_per_s": loop32,
            "batched_problem_steps_per_s": batched32,
            "speedup": batched32 / loop32,
            "bookkeeping": "update norms on neither side",
        },
    }


def _make_single_env() -> object:
    import gymnasium as gym

    import metasched  # noqa: F401  (registers the env ids, also in worker processes)

    return gym.make("metasched/NMF-v0", split="train")


def time_vecenv(venv, warmup: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Transitions per second of ``steps`` random-action ``VecEnv.step`` calls.

    ``warmup`` untimed steps come first. With ``steps`` a multiple of the episode length
    (40 decisions at the defaults), every sub-env ends and restarts its episode inside
    the timed window, so the episode resets are part of the measurement.
    """
    n = venv.num_envs
    space = venv.action_space
    space.seed(seed)
    actions = np.array([[space.sample() for _ in range(n)] for _ in range(warmup + steps)])
    try:
        venv.seed(seed)
        venv.reset()
        for a in actions[:warmup]:
            venv.step(a)
        t0 = time.perf_counter()
        for a in actions[warmup:]:
            venv.step(a)
        dt = time.perf_counter() - t0
    finally:
        venv.close()
    return {"num_envs": n, "steps": steps, "seconds": dt, "transitions_per_s": steps * n / dt}


def bench_vecenvs(
    batched_envs: Sequence[int], warmup: int, steps: int, baseline: bool = True
) -> dict[str, object]:
    """Single-process float64 comparisons, then the labelled multi-process figures."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from metasched.envs.batched import BatchedNMFVecEnv

    single: dict[str, object] = {}
    single["dummy_8_float64"] = time_vecenv(DummyVecEnv([_make_single_env] * 8), warmup, steps)
    venv = BatchedNMFVecEnv(num_envs=64, split="train", seed=0, dtype=torch.float64, n_processes=1)
    single["batched_64_float64"] = time_vecenv(venv, warmup, steps)
    if baseline:
        # the pre-bucketing configuration: family-max padding, one process
        venv = BatchedNMFVecEnv(
            num_envs=64, seed=0, bucketing=False, n_processes=1, dtype=torch.float64
        )
        single["batched_64_unbucketed_float64"] = time_vecenv(venv, warmup, steps)
    venv = BatchedNMFVecEnv(num_envs=64, split="train", seed=0, n_processes=1)
    single["batched_64_float32_no_equal_work_baseline"] = time_vecenv(venv, warmup, steps)
    base = single["dummy_8_float64"]["transitions_per_s"]
    single["ratios_float64_to_dummy"] = {
        key: row["transitions_per_s"] / base
        for key, row in single.items()
        if isinstance(row, dict) and key.endswith("float64")
    }

    multi: dict[str, object] = {}
    for n in (2, 4):
        # one process per env: n=4 oversubscribes the 2 cores (as 4 SB3 workers would)
        venv = SubprocVecEnv([_make_single_env] * n, start_method="forkserver")
        multi[f"subproc_{n}_float64"] = time_vecenv(venv, warmup, steps)
    for n in batched_envs:
        venv = BatchedNMFVecEnv(num_envs=n, split="train", seed=0)
        row = time_vecenv(venv, warmup, steps)
        row["n_processes"] = venv.n_processes
        multi[f"batched_{n}_float32_default"] = row
    multi["ratios_to_single_process_dummy_8_float64"] = {
        key: row["transitions_per_s"] / base
        for key, row in multi.items()
        if isinstance(row, dict) and "transitions_per_s" in row
    }
    return {"single_process": single, "multi_process": multi}


def main() -> None:
    """Run the benchmarks and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument(
        "--only-vecenv", action="store_true", help="run only the vector-env section"
    )
    parser.add_argument(
        "--batched-envs",
        type=int,
        nargs="+",
        default=None,
        help="num_envs values of BatchedNMFVecEnv (default: 64 128 256, quick: 128 256)",
    )
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    report: dict[str, object] = {}
    if not args.only_vecenv:
        report["overhead"] = bench_overhead(2 if args.quick else 5, reps)
        report["single"] = bench_single(5000 if args.quick else 20000, reps)
        report["batched"] = bench_batched(64, 4 if args.quick else 20, reps)
    batched_envs = args.batched_envs or ([128, 256] if args.quick else [64, 128, 256])
    episode = 2000 // 50  # decisions per episode at the default budget
    report["vecenv"] = bench_vecenvs(
        batched_envs, warmup=2, steps=episode if args.quick else 2 * episode
    )
    report["targets"] = {
        "overhead_ratio": "<= 1.10",
        "steps_per_s": ">= 20000",
        "speedup": ">= 8",
        "vecenv_batched_transitions_per_s": ">= 4000",
        "vecenv_batched_vs_dummy": ">= 5",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
