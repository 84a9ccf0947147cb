"""Batched envs for the network families and NMF's shared-RNG mode, side by side in one run.

Run: ``python benchmarks/bench_batched_torch.py [--quick] [--sections inner,ppo,nmf,bound]``.
Every ratio compares equal work measured in this one run, the two sides interleaved
(alternating rounds, summed times), so machine load hits both sides alike; the load
average is printed with the numbers.

* ``inner``: inner steps per second **per core** (one process, one torch thread, float32 on
  both sides) of B problems of the ``mlp`` / ``mnist1d`` train split, trained in decision
  intervals (40 / 50 steps) each followed by the held-out evaluation the env needs: one
  :class:`~metasched.inner_tasks.stacked.StackedNetworks` against the same B tasks trained
  one after another with their own ``train`` / ``evaluate``. B = 16, 32, 64.
* ``ppo``: env steps (transitions) per second of a whole PPO ``learn`` call (collection
  and updates) on ``MLP-v1`` / ``MNIST1D-v1``: ``SubprocVecEnv`` with one single env per
  core (2 processes) against ``BatchedTorchVecEnv`` with 32 envs in 1 and in 2 processes.
  Same PPO hyperparameters and the same rollout size (1,024 transitions) and total steps.
* ``bound``: the measured stability bound (``clip="measured"``). (a) Its wall time as a
  fraction of training time (decision intervals of SGD plus the held-out evaluation),
  through one ``MLP-v0`` / ``MNIST1D-v0``-length episode (20 decisions; the bound is asked
  for at the start and after every decision and re-measured every 10th time, as the env
  does) of 32 ``train`` problems: batched (``StackedNetworks.lr_bound``) against per-slot
  (each task's own ``ForkTestEstimator``, one after another), plus the fork steps as a
  fraction of the inner steps (the same on both sides). (b) Env steps per second of
  ``BatchedTorchVecEnv`` without the bound (``clip="deterministic"``: networks unclipped)
  and with it (``clip="measured"``), B = 16, 32, 64, random ``discrete3`` actions (no PPO),
  one whole episode (auto-resets included).
* ``nmf``: (a) B=64 problems in one batch against 64 single ``NMFTask`` in a loop, float64
  on both sides, update norms measured on both sides (the settings of
  ``bench_env.py``'s section 3), with the per-slot and the shared RNG; (b) PPO on
  ``NMF-v1``: ``DummyVecEnv`` of 8 single envs (float64) against the batched env in float64
  with one process, per-slot and shared RNG (equal dtype), and the default float32 env with
  the shared RNG (absolute rate).
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

from metasched.agents.config import algo_class, load_config  # noqa: E402
from metasched.agents.train import make_train_env  # noqa: E402
from metasched.envs.batched_torch import BatchedTorchVecEnv  # noqa: E402
from metasched.inner_tasks import make_family  # noqa: E402
from metasched.inner_tasks.nmf import NMFConfig, NMFTask  # noqa: E402
from metasched.inner_tasks.nmf_batched import BatchedNMF  # noqa: E402
from metasched.inner_tasks.stacked import StackedNetworks  # noqa: E402
from metasched.stability import ForkTestEstimator  # noqa: E402

INTERVAL = {"mlp": 40, "mnist1d": 50}
NMF_CFG = NMFConfig(m=200, n=100, rank=10, noise=0.1, grad_noise=1.0, batch_size=32, seed=1)


def interleaved(sides: dict[str, object], rounds: int) -> dict[str, float]:
    """Total seconds of each side's callable over ``rounds`` alternating rounds."""
    total = dict.fromkeys(sides, 0.0)
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            total[name] += time.perf_counter() - t0
    return total


def bench_inner(family: str, n: int, rounds: int) -> dict[str, float]:
    """Inner steps/s per core: stacked vs one by one, same tasks, same steps."""
    fam = make_family(family, 0)
    T = INTERVAL[family]
    tasks = [fam.make_task(fam.instance_config("train", i)) for i in range(n)]
    nets = StackedNetworks(n)
    for i, t in enumerate(tasks):
        nets.load(i, t, np.random.default_rng(i))
    singles = [fam.make_task(fam.instance_config("train", i)) for i in range(n)]
    for i, t in enumerate(singles):
        t.reset(np.random.default_rng(i))
    lr = np.array([0.5 * t.default_lr() for t in tasks])

    def batched() -> None:
        nets.train(T, lr)
        nets.evaluate()

    def single() -> None:
        for t, rate in zip(singles, lr, strict=True):
            t.train(T, float(rate))
            t.evaluate()

    secs = interleaved({"batched": batched, "single": single}, rounds)
    work = n * T * rounds
    out = {k + "_inner_steps_per_s": work / v for k, v in secs.items()}
    out["ratio"] = secs["single"] / secs["batched"]
    out["buckets"] = len(nets.buckets)
    return out


def bench_bound_overhead(family: str, n: int, decisions: int, rounds: int) -> dict[str, float]:
    """The bound's wall time over training time, batched vs per-slot single estimators."""
    fam = make_family(family, 0)
    T = INTERVAL[family]
    configs = [fam.instance_config("train", i) for i in range(n)]
    secs = dict.fromkeys(("batched_train", "batched_bound", "single_train", "single_bound"), 0.0)
    fork_steps = 0.0
    clock = time.perf_counter
    for _ in range(rounds):
        nets = StackedNetworks(n, stability=ForkTestEstimator.for_interval(T))
        singles = []
        for i, cfg in enumerate(configs):
            nets.load(i, fam.make_task(cfg), np.random.default_rng(i))
            task = fam.make_task(cfg)
            task.reset(np.random.default_rng(i))
            task.stability = ForkTestEstimator.for_interval(T)
            singles.append(task)
        lr = np.array([0.5 * t.default_lr() for t in singles])
        for d in range(decisions + 1):  # the bound at the start and after every decision
            if d:
                t0 = clock()
                nets.train(T, lr)
                nets.evaluate()
                secs["batched_train"] += clock() - t0
            t0 = clock()
            nets.lr_bound()
            secs["batched_bound"] += clock() - t0
            for task, rate in zip(singles, lr, strict=True):
                if d:
                    t0 = clock()
                    task.train(T, float(rate))
                    task.evaluate()
                    secs["single_train"] += clock() - t0
                t0 = clock()
                task.lr_bound()
                secs["single_bound"] += clock() - t0
        fork_steps += float(nets.bound_cost_steps.sum())
    return {
        "batched_bound_over_train": secs["batched_bound"] / secs["batched_train"],
        "single_bound_over_train": secs["single_bound"] / secs["single_train"],
        "bound_speedup_batched_vs_single": secs["single_bound"] / secs["batched_bound"],
        "train_speedup_batched_vs_single": secs["single_train"] / secs["batched_train"],
        "fork_steps_over_inner_steps": fork_steps / (rounds * n * T * decisions),
    }


def bench_env_bound(family: str, sizes: tuple[int, ...], rounds: int) -> dict[str, float]:
    """Env steps/s of the batched env with and without the measured bound, per B."""
    T = INTERVAL[family]
    decisions = 20
    out: dict[str, float] = {}
    for n in sizes:

        def episode(clip: str, n: int = n) -> None:
            venv = BatchedTorchVecEnv(
                n, family=family, clip=clip, budget=T * decisions, steps_per_action=T, seed=0
            )
            venv.reset()
            rng = np.random.default_rng(0)
            for _ in range(decisions):
                venv.step(rng.integers(0, 3, n))

        secs = interleaved(
            {"no_bound": lambda: episode("deterministic"), "bound": lambda: episode("measured")},
            rounds,
        )
        for side, sec in secs.items():
            out[f"B{n}_{side}_env_steps_per_s"] = rounds * n * decisions / sec
        out[f"B{n}_slowdown"] = secs["bound"] / secs["no_bound"]
    return out


def ppo_run(env_id: str, vec_env: str, n_envs: int, n_steps: int, total: int, **env) -> float:
    """Seconds of one PPO ``learn`` of ``total`` env steps."""
    cfg = load_config(
        "ppo",
        env_id,
        overrides={"vec_env": vec_env, "n_envs": n_envs, "n_timesteps": total, "n_steps": n_steps},
    )
    if env:
        from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

        if env_id == "metasched/NMF-v1":
            from metasched.envs.batched import BatchedNMFVecEnv as Cls
        else:
            from metasched.envs.batched_torch import BatchedTorchVecEnv as Cls
        from metasched.agents.train import resolved_env_kwargs

        kw = dict(cfg.env_kwargs)
        if Cls.__name__ == "BatchedTorchVecEnv":
            spec = resolved_env_kwargs(cfg)
            kw = {k: spec[k] for k in ("family", "budget", "steps_per_action", "action")}
        venv = VecNormalize(
            VecMonitor(Cls(num_envs=n_envs, split="train", seed=0, **kw, **env)),
            **cfg.normalize.as_kwargs(),
        )
    else:
        venv = make_train_env(cfg, seed=0)
    model = algo_class("ppo")(
        cfg.policy,
        venv,
        seed=0,
        device="cpu",
        verbose=0,
        policy_kwargs=cfg.resolved_policy_kwargs(),
        **cfg.algo_kwargs,
    )
    t0 = time.perf_counter()
    model.learn(total_timesteps=total)
    dt = time.perf_counter() - t0
    venv.close()
    return dt


def bench_ppo(env_id: str, total: int, rounds: int) -> dict[str, float]:
    """PPO env steps/s: SubprocVecEnv (2 processes) vs the batched env (1 and 2 processes)."""
    sides = {
        "subproc_2x1": lambda: ppo_run(env_id, "subproc", 2, 512, total),
        "batched_32_1proc": lambda: ppo_run(env_id, "batched", 32, 32, total, n_processes=1),
        "batched_32_2proc": lambda: ppo_run(env_id, "batched", 32, 32, total, n_processes=2),
    }
    secs = dict.fromkeys(sides, 0.0)
    for _ in range(rounds):
        for name, fn in sides.items():
            secs[name] += fn()
    out = {k + "_env_steps_per_s": total * rounds / v for k, v in secs.items()}
    base = secs["subproc_2x1"]
    out["ratio_batched_1proc_to_subproc"] = base / secs["batched_32_1proc"]
    out["ratio_batched_2proc_to_subproc"] = base / secs["batched_32_2proc"]
    return out


def bench_nmf_batch(n: int, calls: int, rounds: int) -> dict[str, float]:
    """B problems in one float64 batch vs B float64 ``NMFTask``, update norms on both sides."""

    def tasks() -> list[NMFTask]:
        out = [NMFTask.from_config(NMF_CFG) for _ in range(n)]
        for i, t in enumerate(out):
            t.reset(np.random.default_rng(i))
        return out

    singles = tasks()
    lr = 0.3 * singles[0].lr_bound()
    lrs = np.full(n, lr)
    gens = [np.random.default_rng(i) for i in range(n)]
    per_slot = BatchedNMF.from_tasks(tasks(), gens, dtype=torch.float64)
    gens = [np.random.default_rng(i) for i in range(n)]
    shared = BatchedNMF(n, per_slot.max_shape, dtype=torch.float64, rng="shared")
    for i, t in enumerate(tasks()):
        shared.load(i, t, gens[i])

    def loop() -> None:
        for _ in range(calls):
            for t in singles:
                t.train(50, lr)

    def run(b: BatchedNMF) -> None:
        for _ in range(calls):
            b.train(50, lrs, track_updates=True)

    secs = interleaved(
        {"singles": loop, "per_slot": lambda: run(per_slot), "shared": lambda: run(shared)},
        rounds,
    )
    work = n * calls * 50 * rounds
    out = {k + "_problem_steps_per_s": work / v for k, v in secs.items()}
    out["ratio_per_slot"] = secs["singles"] / secs["per_slot"]
    out["ratio_shared"] = secs["singles"] / secs["shared"]
    return out


def bench_nmf_ppo(total: int, rounds: int) -> dict[str, float]:
    """PPO on NMF-v1: DummyVecEnv(8) float64 vs batched float64 1 process; float32 shared."""
    f64 = {"dtype": torch.float64, "n_processes": 1}
    sides = {
        "dummy_8_float64": lambda: ppo_run("metasched/NMF-v1", "dummy", 8, 128, total),
        "batched_32_float64_1proc": lambda: ppo_run(
            "metasched/NMF-v1", "batched", 32, 128, total, **f64
        ),
        "batched_32_float64_1proc_shared": lambda: ppo_run(
            "metasched/NMF-v1", "batched", 32, 128, total, rng="shared", **f64
        ),
        "batched_32_float32_default_shared": lambda: ppo_run(
            "metasched/NMF-v1", "batched", 32, 128, total, rng="shared"
        ),
    }
    secs = dict.fromkeys(sides, 0.0)
    for _ in range(rounds):
        for name, fn in sides.items():
            secs[name] += fn()
    out = {k + "_env_steps_per_s": total * rounds / v for k, v in secs.items()}
    base = secs["dummy_8_float64"]
    for k in sides:
        if "float64" in k and k != "dummy_8_float64":
            out["ratio_" + k + "_to_dummy"] = base / secs[k]
    return out


def main() -> None:
    """Run the chosen sections and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--sections", default="inner,ppo,nmf,bound")
    args = parser.parse_args()
    sections = args.sections.split(",")
    rounds = 1 if args.quick else 3
    report: dict[str, object] = {"load_average_before": os.getloadavg()}
    if "inner" in sections:
        report["inner_per_core"] = {
            f"{fam}_B{n}": bench_inner(fam, n, rounds * 2)
            for fam in ("mlp", "mnist1d")
            for n in (16, 32, 64)
        }
    if "ppo" in sections:
        total = 1024 if args.quick else 2048
        report["ppo_networks"] = {
            env: bench_ppo(env, total, 1) for env in ("metasched/MLP-v1", "metasched/MNIST1D-v1")
        }
    if "bound" in sections:
        report["bound_overhead_B32"] = {
            fam: bench_bound_overhead(fam, 32, 20, rounds) for fam in ("mlp", "mnist1d")
        }
        report["env_steps_per_s_bound"] = {
            fam: bench_env_bound(fam, (16, 32, 64), rounds) for fam in ("mlp", "mnist1d")
        }
    if "nmf" in sections:
        report["nmf_batch_B64_float64"] = bench_nmf_batch(64, 4, rounds)
        report["ppo_nmf"] = bench_nmf_ppo(4096 if args.quick else 8192, 1)
    report["load_average_after"] = os.getloadavg()
    report["targets"] = {
        "ppo_networks_batched_vs_subproc": ">= 5",
        "ppo_mlp_env_steps_per_s": ">= 400",
        "ppo_nmf_env_steps_per_s": ">= 2000",
        "ppo_nmf_ratio_equal_dtype": ">= 4",
        "nmf_batch_B64_ratio_equal_dtype": ">= 5",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
