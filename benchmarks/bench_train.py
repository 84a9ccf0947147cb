"""PPO training throughput on NMF-v0 with three vector envs, side by side in one run.

Run: ``python benchmarks/bench_train.py [--quick]``. For each of ``DummyVecEnv``,
``SubprocVecEnv`` (one process per core) and the batched NMF VecEnv (the shipped 32 envs,
and 128 envs with rollouts of 32 steps), a PPO agent with the
shipped hyperparameters (rollouts of ``n_steps`` per env, 10 epochs) trains for the same
number of environment steps; reported: env steps (transitions) per second of the whole
``learn`` call — collection *and* gradient updates — and the ratios to ``DummyVecEnv``.
Targets: batched >= 4x DummyVecEnv and >= 2,000 env steps/s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

from metasched.agents.config import algo_class, load_config  # noqa: E402
from metasched.agents.train import make_train_env  # noqa: E402


def bench(vec_env: str, n_envs: int, timesteps: int, **extra: int) -> dict[str, float]:
    """Train PPO for ``timesteps`` env steps; return env steps per second."""
    cfg = load_config(
        "ppo",
        "metasched/NMF-v0",
        overrides={"vec_env": vec_env, "n_envs": n_envs, "n_timesteps": timesteps, **extra},
    )
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
    rollout = model.n_steps * n_envs
    steps = max(1, timesteps // rollout) * rollout
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    dt = time.perf_counter() - t0
    venv.close()
    return {"n_envs": n_envs, "env_steps": steps, "seconds": dt, "env_steps_per_s": steps / dt}


def main() -> None:
    """Run the three configurations and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    parser.add_argument("--batched-envs", type=int, default=None, help="num_envs of batched")
    args = parser.parse_args()
    n = 8_192 if args.quick else 32_768
    batched_envs = args.batched_envs or load_config("ppo", "metasched/NMF-v0").n_envs
    report = {
        "dummy": bench("dummy", 8, n),
        "subproc": bench("subproc", os.cpu_count() or 2, n),
        "batched": bench("batched", batched_envs, n),
        # the same rollout size (4,096) spread over 4x the envs: larger batches
        "batched_128x32": bench("batched", 128, n, n_steps=32),
    }
    base = report["dummy"]["env_steps_per_s"]
    report["ratios_to_dummy"] = {
        k: report[k]["env_steps_per_s"] / base
        for k in ("dummy", "subproc", "batched", "batched_128x32")
    }
    report["targets"] = {"batched_vs_dummy": ">= 4", "batched_env_steps_per_s": ">= 2000"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
