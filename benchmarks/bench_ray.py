"""Ray backend overhead: one comparison grid on the local pool and on Ray; PPO with Ray workers.

Run: ``python benchmarks/bench_ray.py [--quick] [--no-grid] [--no-ppo] [--no-pbt]``.
Everything runs on a local Ray instance with 2 CPUs (``include_dashboard=False``), started
once before the timings (a cluster is up before a comparison starts, too).

1. Comparison grid: the same cells (NMF test instances x schedulers, no tuning phase, the
   family's env budget) run with ``run_cells(backend="local", jobs=2)`` and
   ``run_cells(backend="ray")`` into fresh directories, interleaved (local, ray, local, ray,
   ...) because the machine is shared; the first round of each warms its workers up and
   is reported apart. Reported: seconds per round, cells/s/core, overhead ratio
   ray / local (target <= 1.15x), and that the stored results are identical.
2. PPO env steps/s: PPO (shipped NMF hyperparameters, ``n_steps`` 64) learning for the same
   number of env steps on 4 envs in ``SubprocVecEnv`` and in 2 Ray actors (``RayVecEnv``),
   interleaved.
3. PBT: the in-process ``pbt`` scheduler and :func:`~metasched.distributed.tune_pbt.pbt_on_ray`
   on the same NMF problems (population 4, ready 2, budget 400, interval 50): final loss
   and wall time of each.

The load average (1 min) is printed before and after each part.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

from metasched.distill.compare import (  # noqa: E402
    Cell,
    CompareSpec,
    _run_args,
    parse_scheduler,
    run_cells,
)


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def grid_cells(n_instances: int) -> list[Cell]:
    spec = CompareSpec(n_instances=n_instances)
    scheds = [parse_scheduler(s) for s in ("constant", "cosine", "greedy", "probe")]
    return [
        Cell("nmf", 0, "test", i, 0, s.label, s.name, s.kwargs, None, *_run_args(spec, "nmf"))
        for i in range(n_instances)
        for s in scheds
    ]


def stored(root: Path) -> dict[str, object]:
    out = {}
    for p in sorted((root / "cells").rglob("*.json")):
        d = json.loads(p.read_text())
        cols = {k: v for k, v in d["trace"]["columns"].items() if k != "wall_time"}
        out[str(p.relative_to(root))] = (d["lr_ref"], cols)
    return out


def bench_grid(n_instances: int, rounds: int) -> dict[str, object]:
    cells = grid_cells(n_instances)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    print(f"grid: {len(cells)} cells (nmf test x constant,cosine,greedy,probe); load {load()}")
    same = True
    for r in range(rounds):
        for backend in ("local", "ray"):
            root = Path(tempfile.mkdtemp(prefix=f"bench-ray-{backend}-"))
            t0 = time.perf_counter()
            run_cells(cells, root, jobs=2, backend=backend)
            dt = time.perf_counter() - t0
            times[backend].append(dt)
            if backend == "local":
                ref = stored(root)
            else:
                same = same and stored(root) == ref
            shutil.rmtree(root)
            print(f"  round {r} {backend:5s}: {dt:6.2f} s  ({len(cells) / dt / 2:.2f} cells/s/core)"
                  f"  load {load()}")  # fmt: skip
    warm = {k: v[1:] if len(v) > 1 else v for k, v in times.items()}
    mean = {k: sum(v) / len(v) for k, v in warm.items()}
    ratio = mean["ray"] / mean["local"]
    print(f"  warm rounds: local {mean['local']:.2f} s, ray {mean['ray']:.2f} s, overhead "
          f"ray/local {ratio:.3f}x (target <= 1.15x); results identical: {same}")  # fmt: skip
    return {"cells": len(cells), "times": times, "ratio": ratio, "identical": same,
            "cells_per_s_per_core": {k: len(cells) / v / 2 for k, v in mean.items()}}  # fmt: skip


def bench_ppo(timesteps: int, rounds: int) -> dict[str, object]:
    from functools import partial

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from metasched.agents.train import _make_worker_env
    from metasched.distributed.vecenv import RayVecEnv

    fns = [partial(_make_worker_env, "metasched/NMF-v1", {}) for _ in range(4)]
    rates: dict[str, list[float]] = {"subproc": [], "ray": []}
    print(f"PPO on 4 NMF envs, {timesteps} env steps per run; load {load()}")
    for r in range(rounds):
        for kind in ("subproc", "ray"):
            venv = (SubprocVecEnv(fns, start_method="forkserver") if kind == "subproc"
                    else RayVecEnv(fns, num_workers=2))  # fmt: skip
            venv.seed(0)
            model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=10, seed=0,
                        device="cpu", verbose=0)  # fmt: skip
            t0 = time.perf_counter()
            model.learn(total_timesteps=timesteps)
            dt = time.perf_counter() - t0
            venv.close()
            rates[kind].append(model.num_timesteps / dt)
            print(f"  round {r} {kind:7s}: {model.num_timesteps / dt:7.1f} env steps/s  "
                  f"load {load()}")  # fmt: skip
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    print(f"  mean: subproc {mean['subproc']:.1f}, ray {mean['ray']:.1f} env steps/s "
          f"(ray/subproc {mean['ray'] / mean['subproc']:.3f})")  # fmt: skip
    return {"rates": rates}


def bench_pbt(instances: int) -> dict[str, object]:
    from metasched.distill.compare import _family, problem_rng
    from metasched.distributed.tune_pbt import pbt_on_ray
    from metasched.schedulers import PBTScheduler, run_schedule

    out = []
    print(f"PBT population 4, ready 2, budget 400, interval 50; load {load()}")
    for i in range(instances):
        task = _family("nmf", 0).make("test", i)
        t0 = time.perf_counter()
        tr = run_schedule(task, PBTScheduler(population=4, ready=2), budget=400, interval=50,
                          seed=problem_rng(0, "test", i, 0))  # fmt: skip
        local_t = time.perf_counter() - t0
        res = pbt_on_ray("nmf", index=i, budget=400, interval=50, population=4, ready=2)
        row = {"instance": i, "inprocess_final": tr.final_loss, "inprocess_s": local_t,
               "ray_final": res["final_loss"], "ray_s": res["wall_time"]}  # fmt: skip
        out.append(row)
        print(f"  test{i}: in-process final loss {tr.final_loss:.5g} ({local_t:.1f} s), "
              f"Ray Tune final loss {res['final_loss']:.5g} ({res['wall_time']:.1f} s)  "
              f"load {load()}")  # fmt: skip
    return {"pbt": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-pbt", action="store_true")
    ap.add_argument("--no-ppo", action="store_true")
    ap.add_argument("--no-grid", action="store_true")
    args = ap.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rounds = 2 if args.quick else 3
    res = {}
    if not args.no_grid:
        res["grid"] = bench_grid(6 if args.quick else 12, rounds)
    if not args.no_ppo:
        res["ppo"] = bench_ppo(1024 if args.quick else 2048, 2)
    if not args.no_pbt:
        res["pbt"] = bench_pbt(1 if args.quick else 2)
    ray.shutdown()
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
