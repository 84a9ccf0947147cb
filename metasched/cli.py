"""The ``metasched`` command line.

Errors in user input end with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
        print(f"  {name:<12} {summary}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from metasched.distill.sanity import constant_vs_cosine
    from metasched.inner_tasks import make_family

    family = make_family(args.family, args.family_seed)
    print(
        f"tuning constant and cosine LRs on {args.n_train} train instances of {args.family!r}, "
        f"then running {args.n_test} test instances (budget {args.budget} inner steps) ..."
    )
    result = constant_vs_cosine(
        family, n_train=args.n_train, n_test=args.n_test, budget=args.budget, interval=args.interval
    )
    print(result.table())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    print(
        "metasched demo: the full demo (train PPO on NMF, export it, compare it with GreedyLR,\n"
        "probe, tuned cosine and constant, write plots and a report) arrives with the agent and\n"
        "comparison issues. Meanwhile, here is the check that scheduling matters on the default\n"
        "NMF family:\n"
    )
    ns = argparse.Namespace(
        family="nmf",
        family_seed=0,
        n_train=args.n_train,
        n_test=args.n_test,
        budget=2000,
        interval=50,
    )
    return _cmd_check(ns)


def _key_value(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
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
                ("--env-kwarg", args.env_kwarg),
                ("--seed", args.seed),
            )
            if val
        ]
        if unused:
            raise ValueError(f"{unused[0]} cannot change a run that is resumed (it is in config)")
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
        f"done: {result.timesteps:,} timesteps in {result.wall_time:.0f} s; test mean return "
        f"{last['mean_return']:+.3f} (keep-the-LR {keep:+.3f}, random {rnd:+.3f}); "
        f"run directory {result.run_dir}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from metasched.agents.train import export_run

    path = export_run(args.run_dir, args.output, which=args.which)
    print(f"wrote {path}")
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
    p.add_argument("--n-test", type=_positive_int, default=20)
    p.add_argument("--budget", type=_positive_int, default=2000, help="inner steps per run")
    p.add_argument("--interval", type=_positive_int, default=50, help="inner steps per decision")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("train", help="train a meta-agent (SB3) on a metasched env")
    p.add_argument("--env", default="metasched/NMF-v0", help="env id (default: %(default)s)")
    p.add_argument(
        "--algo", default="ppo", help="ppo, a2c, dqn, sac, td3 or recurrentppo (default: ppo)"
    )
    p.add_argument("--timesteps", type=_positive_int, help="total env steps (default: config)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--hyperparams", help="YAML file overriding the shipped hyperparameters")
    p.add_argument("--seed", type=int, help="seed (default: 0)")
    p.add_argument("--n-envs", type=_positive_int, help="parallel envs (default: config)")
    p.add_argument("--vec-env", choices=("batched", "subproc", "dummy"), help="vector env kind")
    p.add_argument(
        "--env-kwarg",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="env keyword argument, e.g. --env-kwarg action=discrete5 (repeatable)",
    )
    p.add_argument("--eval-freq", type=int, help="timesteps between evaluations (0: off)")
    p.add_argument("--eval-episodes", type=_positive_int, help="test episodes per evaluation")
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

    p = sub.add_parser("demo", help="the main job on the embedded default")
    p.add_argument("--n-train", type=_positive_int, default=10)
    p.add_argument("--n-test", type=_positive_int, default=20)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from metasched.errors import MetaschedError

    try:
        return int(args.func(args))
    except (MetaschedError, ValueError) as exc:
        print(f"metasched: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metasched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
