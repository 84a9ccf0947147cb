"""The ``metasched`` command line.

Errors in user input (:class:`~metasched.errors.MetaschedError`: a bad value, an unknown name,
a missing file or data set) end with a one-line message on stderr and exit code 2. Anything
else is a bug: its traceback is printed with a request to report it, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from metasched.errors import ConfigError, MetaschedError

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from metasched.envs.registration import ENV_IDS
    from metasched.inner_tasks import TASK_FAMILIES
    from metasched.schedulers import SCHEDULERS

    print("environments:")
    for env_id in ENV_IDS:
        print(f"  {env_id}")
    print("task families:")
    for name in sorted(TASK_FAMILIES):
        print(f"  {name}")
    print("schedulers:")
    for name in sorted(SCHEDULERS):
        summary = (SCHEDULERS[name].__doc__ or "").strip().splitlines()[0].replace("``", "")
        print(f"  {name:<14} {summary}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from metasched.distill.compare import DEFAULT_GRID
    from metasched.distill.sanity import constant_vs_cosine
    from metasched.envs.registration import env_defaults
    from metasched.inner_tasks import make_family

    make_family(args.family, args.family_seed)  # an unknown name fails here, before any run
    grid = DEFAULT_GRID if args.grid is None else _grid(args.grid)
    budget, interval, _ = env_defaults(args.family)
    print(
        f"tuning constant and cosine LRs ({len(grid)} multiples of the reference LR) on "
        f"{args.n_train} train instances of {args.family!r}, then running {args.n_val} val "
        f"instances (budget {args.budget or budget} inner steps, one decision every "
        f"{args.interval or interval}) ..."
    )
    result = constant_vs_cosine(
        args.family, family_seed=args.family_seed, n_train=args.n_train, n_val=args.n_val,
        budget=args.budget, interval=args.interval, grid=grid, jobs=args.jobs,
    )  # fmt: skip
    print(result.table())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from metasched.distill.demo import run_demo

    run_demo(args.out, quick=args.quick, jobs=args.jobs, seed=args.seed)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from metasched.distill.compare import (
        DEFAULT_GRID,
        DEFAULT_JOINT_GRID,
        CompareSpec,
        compare,
        parse_scheduler,
        split_schedulers,
    )

    spec = CompareSpec(
        families=tuple(x for x in args.tasks.split(",") if x),
        split=args.split,
        n_instances=args.instances,
        seeds=args.seeds,
        budget=args.budget,
        interval=args.interval,
        family_seed=args.family_seed,
        tune_instances=args.tune_instances,
        grid=DEFAULT_GRID if args.grid is None else _grid(args.grid),
        joint_grid=(
            DEFAULT_JOINT_GRID
            if args.joint_grid is None
            else _grid(args.joint_grid, "--joint-grid")
        ),
        tuning_cost=tuple(x for x in (args.tuning_cost or "").split(",") if x),
    )
    scheds = [parse_scheduler(x) for x in split_schedulers(args.schedulers)]
    compare(
        spec, scheds, args.out, jobs=args.jobs, progress=not args.no_progress,
        backend=args.backend, address=args.address,
    )  # fmt: skip
    return 0


def _grid(text: str, option: str = "--grid") -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option} must hold at least one number, got {text!r}")
    return values


def _cmd_plot(args: argparse.Namespace) -> int:
    from metasched.distill.report import write_report

    write_report(args.dir, instances=args.instances)
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from metasched.distill.rules import distill

    out = args.output or os.path.splitext(args.policy)[0] + ".rules.json"
    d = distill(
        args.policy,
        out,
        family=args.task,
        n_train=args.train_instances,
        n_val=args.val_instances,
        budget=args.budget,
        max_depth=args.max_depth,
    )
    print(d.summary())
    return 0


def _key_value(text: str) -> tuple[str, object]:
    import yaml

    from metasched.yamlio import load_yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, load_yaml(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot parse the value of {text!r}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from metasched.agents.config import load_config
    from metasched.agents.train import train

    if args.resume:
        unused = [
            flag
            for flag, val in (
                ("--hyperparams", args.hyperparams),
                ("--n-envs", args.n_envs),
                ("--num-workers", args.num_workers),
                ("--env-kwarg", args.env_kwarg),
                ("--seed", args.seed),
            )
            if val
        ]
        if unused:
            raise ConfigError(
                f"{unused[0]} cannot change a run that is resumed (it is in config)"
            )
        result = train(
            None,
            args.out,
            resume=True,
            total_timesteps=args.timesteps,
            progress=not args.no_progress,
        )
    else:
        overrides: dict[str, object] = {
            "n_timesteps": args.timesteps,
            "n_envs": args.n_envs,
            "eval_freq": args.eval_freq,
            "checkpoint_freq": args.checkpoint_freq,
            "n_eval_episodes": args.eval_episodes,
            "vec_env": args.vec_env,
            "num_workers": args.num_workers,
        }
        if args.env_kwarg:
            overrides["env_kwargs"] = dict(args.env_kwarg)
        cfg = load_config(
            args.algo,
            args.env,
            hyperparams=args.hyperparams,
            overrides=overrides,
            seed=args.seed or 0,
        )
        result = train(cfg, args.out, progress=not args.no_progress)
    last = result.eval_history[-1]
    keep = result.baselines["keep"]["mean_return"]
    rnd = result.baselines["random"]["mean_return"]
    print(
        f"done: {result.timesteps:,} timesteps in {result.wall_time:.0f} s; val mean return "
        f"{last['mean_return']:+.3f} (keep-the-LR {keep:+.3f}, random {rnd:+.3f}); "
        f"run directory {result.run_dir}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from metasched.agents.train import export_run

    path = export_run(args.run_dir, args.output, which=args.which)
    print(f"wrote {path}")
    return 0


def _cmd_pretrained(args: argparse.Namespace) -> int:
    from metasched import pretrained

    if args.action == "build":
        res = pretrained.build(
            args.out,
            name=args.name,
            timesteps=args.timesteps,
            seed=args.seed,
            resume=args.resume,
            progress=not args.no_progress,
        )
        same = {True: "equals", False: "differs from", None: "is not comparable with"}
        print(
            f"wrote {res.policy} (checkpoint at {res.info['best_checkpoint_timesteps']:,} "
            f"timesteps, val mean return {res.info['best_val_mean_return']:+.3f}); digest "
            f"{res.digest[:16]} {same[res.matches_shipped]} the shipped {args.name!r}"
        )
        return 0
    info = pretrained.pretrained_info(args.name)
    path = pretrained.pretrained_path(args.name)
    print(f"{args.name}: {path} ({path.stat().st_size:,} bytes)")
    for key in ("algo", "env_id", "seed", "n_timesteps", "best_checkpoint_timesteps",
                "best_val_mean_return", "digest", "command"):
        print(f"  {key}: {info.get(key)}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``metasched`` command."""
    parser = argparse.ArgumentParser(
        prog="metasched",
        description="Train RL agents that schedule learning rates, export them as PyTorch "
        "schedulers, and compare them honestly with the schedulers people use.",
    )
    from metasched import __version__

    parser.add_argument("--version", action="version", version=f"metasched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered environments, task families and schedulers")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "check", help="does scheduling matter? tuned constant vs tuned cosine on a task family"
    )
    p.add_argument("--family", default="nmf", help="task family (default: nmf)")
    p.add_argument("--family-seed", type=int, default=0)
    p.add_argument("--n-train", type=_positive_int, default=10)
    p.add_argument("--n-val", type=_positive_int, default=20, help="val instances compared")
    p.add_argument("--budget", type=_positive_int, help="inner steps per run (default: the env's)")
    p.add_argument(
        "--interval", type=_positive_int, help="inner steps per decision (default: the env's)"
    )
    p.add_argument(
        "--grid",
        help="tuning grid: comma-separated multiples of the reference LR (default: compare's, "
        "21 half-octaves from 1/32 to 32)",
    )
    p.add_argument("--jobs", type=_positive_int, default=1, help="processes (default: 1)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("train", help="train a meta-agent (SB3) on a metasched env")
    p.add_argument("--env", default="metasched/NMF-v1", help="env id (default: %(default)s)")
    p.add_argument(
        "--algo", default="ppo", help="ppo, a2c, dqn, sac, td3 or recurrentppo (default: ppo)"
    )
    p.add_argument("--timesteps", type=_positive_int, help="total env steps (default: config)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--hyperparams", help="YAML file overriding the shipped hyperparameters")
    p.add_argument("--seed", type=int, help="seed (default: 0)")
    p.add_argument("--n-envs", type=_positive_int, help="parallel envs (default: config)")
    p.add_argument(
        "--vec-env",
        choices=("batched", "subproc", "dummy", "ray", "ray-batched"),
        help="vector env kind (ray: env workers as Ray actors, cluster from RAY_ADDRESS)",
    )
    p.add_argument(
        "--num-workers", type=_positive_int, help="Ray actors of --vec-env ray (default: 2)"
    )
    p.add_argument(
        "--env-kwarg",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="env keyword argument, e.g. --env-kwarg action=discrete5 (repeatable)",
    )
    p.add_argument("--eval-freq", type=int, help="timesteps between evaluations (0: off)")
    p.add_argument("--eval-episodes", type=_positive_int, help="val episodes per evaluation")
    p.add_argument("--checkpoint-freq", type=int, help="timesteps between checkpoints (0: off)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="export a trained policy to one safe .msched file")
    p.add_argument("run_dir", help="run directory written by metasched train")
    p.add_argument("-o", "--output", required=True, help="output file (e.g. policy.msched)")
    p.add_argument(
        "--which",
        choices=("best", "final", "latest"),
        default="best",
        help="best evaluation, final model, or newest checkpoint (default: best)",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "demo",
        help="the main job: train PPO on NMF, export, distil, compare, write the report",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="the same pipeline in about 2 minutes")
    p.add_argument("--jobs", type=_positive_int, default=2, help="processes for the comparison")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "compare", help="run schedulers on held-out task instances; tables, plots, report"
    )
    p.add_argument("--tasks", default="nmf", help="task families, comma-separated (default: nmf)")
    p.add_argument("--split", default="test", help="evaluated split: test or shift")
    p.add_argument("--instances", type=_positive_int, default=50, help="instances per family")
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds per instance")
    p.add_argument(
        "--schedulers",
        default="constant,cosine,cosine@ref,constant@ref,greedy,greedy-tuned,probe",
        help="comma-separated: NAME, NAME:key=value,key=value, learned:FILE, "
        "learned:universal (the shipped policy), rules:FILE",
    )
    p.add_argument(
        "--budget", type=_positive_int, help="main-line inner steps (default: the family's env)"
    )
    p.add_argument(
        "--interval", type=_positive_int, help="inner steps per decision (default: the env's)"
    )
    p.add_argument("--family-seed", type=int, default=0)
    p.add_argument(
        "--tune-instances",
        type=_positive_int,
        help="train instances per tuning grid point (default: 40; 10 on fashion and charlm)",
    )
    p.add_argument(
        "--grid",
        help="tuning grid: comma-separated multiples of the reference LR "
        "(default: 21 half-octaves from 1/32 to 32)",
    )
    p.add_argument(
        "--joint-grid",
        help="start-LR multiples of jointly tuned baselines such as greedy-tuned "
        "(default: 0.5,2,8,32)",
    )
    p.add_argument(
        "--tuning-cost",
        nargs="?",
        const="all",
        metavar="LABELS",
        help="the tuning-cost view: also run every grid point of these tuned labels "
        "(comma-separated; no value: all) on the evaluated split",
    )
    p.add_argument("--jobs", type=_positive_int, default=2, help="processes (default: 2)")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local process pool (default) or one-CPU Ray tasks ('metasched[ray]' extra)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster to join with --backend ray (default: RAY_ADDRESS, else a local "
        "instance)",
    )
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "pretrained", help="the learned policies shipped with metasched: show or rebuild one"
    )
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = psub.add_parser("info", help="where the shipped policy is and how it was built")
    q.add_argument("--name", default="universal", help="shipped policy (default: %(default)s)")
    q = psub.add_parser(
        "build", help="train and export the shipped policy from its shipped config"
    )
    q.add_argument("--name", default="universal", help="shipped policy (default: %(default)s)")
    q.add_argument("--out", required=True, help="output directory (run/ and NAME.msched)")
    q.add_argument(
        "--timesteps", type=_positive_int, help="training timesteps (default: the config's)"
    )
    q.add_argument("--seed", type=int, default=0, help="seed (default: 0, as shipped)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted build")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrained)

    p = sub.add_parser("plot", help="(re)draw the plots and report of a comparison directory")
    p.add_argument("dir", help="output directory of metasched compare")
    p.add_argument(
        "--instances", type=int, nargs="+", default=[0, 1], help="instances to draw schedules of"
    )
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("distill", help="distil a learned policy into rules and a GreedyLR setting")
    p.add_argument("policy", help="exported .msched policy file")
    p.add_argument("-o", "--output", help="rules file to write (default: POLICY.rules.json)")
    p.add_argument("--task", default="nmf", help="task family to roll the policy out on")
    p.add_argument("--train-instances", type=_positive_int, default=20)
    p.add_argument(
        "--val-instances", type=_positive_int, default=20, help="val rollouts for the agreement"
    )
    p.add_argument(
        "--budget", type=_positive_int, help="inner steps per run (default: the task's env)"
    )
    p.add_argument("--max-depth", type=_positive_int, default=3)
    p.set_defaults(func=_cmd_distill)
    return parser


def _one_thread() -> None:
    """One BLAS and one torch thread in this process (parallelism is by processes).

    Tiny models are overhead-bound, and two thread pools (torch and OpenBLAS) beside other
    busy processes were seen to collapse throughput 10-100x. ``METASCHED_THREADS=N``
    overrides the limit.
    """
    text = os.environ.get("METASCHED_THREADS", "1")
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"METASCHED_THREADS must be a positive integer, got {text!r}")
    n = int(text)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))  # inherited by worker processes
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    import torch

    torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        _one_thread()
        return int(args.func(args))
    except MetaschedError as exc:  # bad user input: one line, no traceback
        print(f"metasched: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metasched: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: show where it happened
        traceback.print_exc()
        print(
            "metasched: internal error (traceback above): this is a bug in metasched, "
            "please report it with the command line and the traceback",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
