"""PPO training throughput on NMF-v1 with several vector envs, side by side in one run.

Run: ``python benchmarks/bench_train.py [--quick]``. A PPO agent with the shipped
hyperparameters (rollouts of ``n_steps`` per env, 10 epochs) trains for the same number of
environment steps on each vector env; reported: env steps (transitions) per second of the
whole ``learn`` call — collection *and* gradient updates.

Equal-work ratios compare one process with one process and the same env dtype:
``DummyVecEnv`` of 8 ``LRControlEnv`` (float64) against the batched NMF VecEnv in float64
with one process (the shipped number of envs). The batched env in float32 with one process
has no float32 single-env baseline (``LRControlEnv`` computes in float64), so it is reported
as an absolute rate. Multi-process figures are labelled as such: ``SubprocVecEnv`` (one
process per core, float64) and the batched env with its defaults (float32, processes
``auto``), shipped envs and 128 envs x 32 steps; their ratios to the single-process
``DummyVecEnv`` mix process counts (and dtypes). Targets: batched >= 4x DummyVecEnv and
>= 2,000 env steps/s.
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


def _batched_env(cfg, batched: dict[str, object]):
    """The batched training env of ``cfg`` with extra ``BatchedNMFVecEnv`` arguments."""
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from metasched.envs.batched import BatchedNMFVecEnv

    venv = BatchedNMFVecEnv(num_envs=cfg.n_envs, split="train", seed=0, **cfg.env_kwargs, **batched)
    venv = VecMonitor(venv)
    if cfg.normalize.enabled:
        venv = VecNormalize(venv, **cfg.normalize.as_kwargs())
    return venv


def bench(
    vec_env: str,
    n_envs: int,
    timesteps: int,
    batched: dict[str, object] | None = None,
    **extra: int,
) -> dict[str, float]:
    """Train PPO for ``timesteps`` env steps; return env steps per second."""
    cfg = load_config(
        "ppo",
        "metasched/NMF-v1",
        overrides={"vec_env": vec_env, "n_envs": n_envs, "n_timesteps": timesteps, **extra},
    )
    venv = _batched_env(cfg, batched) if batched else make_train_env(cfg, seed=0)
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
    """Run every configuration and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    parser.add_argument("--batched-envs", type=int, default=None, help="num_envs of batched")
    args = parser.parse_args()
    n = 8_192 if args.quick else 32_768
    batched_envs = args.batched_envs or load_config("ppo", "metasched/NMF-v1").n_envs
    f64_1 = {"dtype": torch.float64, "n_processes": 1}
    single = {
        "dummy_8_float64": bench("dummy", 8, n),
        f"batched_{batched_envs}_float64_1proc": bench("batched", batched_envs, n, f64_1),
        f"batched_{batched_envs}_float32_1proc_no_equal_work_baseline": bench(
            "batched", batched_envs, n, {"n_processes": 1}
        ),
    }
    base = single["dummy_8_float64"]["env_steps_per_s"]
    single["ratios_float64_to_dummy"] = {
        k: v["env_steps_per_s"] / base for k, v in single.items() if k.endswith("float64_1proc")
    }
    multi = {
        "subproc_float64": bench("subproc", os.cpu_count() or 2, n),
        f"batched_{batched_envs}_float32_default": bench("batched", batched_envs, n),
        # the same rollout size (4,096) spread over 4x the envs: larger batches
        "batched_128x32_float32_default": bench("batched", 128, n, n_steps=32),
    }
    multi["ratios_to_single_process_dummy_8_float64"] = {
        k: v["env_steps_per_s"] / base for k, v in multi.items()
    }
    report: dict[str, object] = {"single_process": single, "multi_process": multi}
    report["targets"] = {"batched_vs_dummy": ">= 4", "batched_env_steps_per_s": ">= 2000"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
