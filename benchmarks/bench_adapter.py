"""Per-step overhead of ``TorchLRScheduler`` against a bare PyTorch loop (issue 12, item 9).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_adapter.py [--interval 50]

The same small MLP (64-256-256-10, SGD with momentum, minibatch 64 from a fixed random
data set) is trained for ``--steps`` optimizer steps in four variants: a bare loop, the loop with
``TorchLRScheduler(opt, "greedy", interval=N)`` (reads the loss), and the loop with a learned
policy at ``interval=N`` (reads the loss *and* the gradient norm: the adapter's most
expensive case; also with ``grad_norm_every=5``, which measures the gradient norm on every
fifth step). Each repeat times the variants back to back, in a rotating order,
from the same initial weights and on the same minibatches, so that machine noise hits them
alike; the overhead of a variant is the median over repeats of its time divided by the bare
loop's time in the same repeat. Times are CPU times of this process (one torch thread), so
other processes competing for the cores do not count. The CPU time spent inside
``sched.step`` is also reported per step, relative to a bare step: the adapter's own cost
without the noise of two whole runs (it leaves out torch's small ``optimizer.step``
wrapper that every ``LRScheduler`` installs). Target: at most 5% at one decision per 50
steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metasched.features import FEATURE_NAMES
from metasched.policyfile import minimal_header, write_policy
from metasched.schedulers import TorchLRScheduler

#: The LR of every variant. Both schedulers keep it (GreedyLR is pinned by min_lr = max_lr,
#: the policy always keeps), so all variants do the same arithmetic on the same numbers.
LR = 0.05


def keep_policy(directory: Path, interval: int) -> Path:
    """Write a hand-built policy over the LR-control observations that keeps the LR."""
    n = len(FEATURE_NAMES)
    header = minimal_header(input_dim=n, action_mode="discrete3")
    header["observation"]["names"] = list(FEATURE_NAMES)
    header["env_kwargs"] = {"action": "discrete3", "lr_range": [1e-3, 64.0], "init_lr": 1.0}
    header["decision_interval"] = interval
    header["network"]["layers"] = [{"type": "linear", "weight": "w", "bias": "b"}]
    weights = {"w": torch.zeros(3, n), "b": torch.tensor([0.0, 1.0, 0.0])}
    return write_policy(directory / "keep.msched", weights, header)


def make_model(seed: int, width: int) -> torch.nn.Module:
    """Build the benchmark MLP with seeded weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )


def run(
    model: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    make_sched: Callable[[torch.optim.Optimizer], TorchLRScheduler] | None,
) -> tuple[float, float]:
    """Train ``model`` over the minibatch indices of ``data``.

    Returns the CPU time of the whole loop and the part spent inside ``sched.step``.
    """
    x, y, batches = data
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    sched = make_sched(opt) if make_sched else None
    inside = 0.0
    clock = time.process_time  # CPU time: robust to other processes sharing the cores
    t0 = clock()
    for idx in batches:
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            t1 = clock()
            sched.step(loss)
            inside += clock() - t1
    return clock() - t0, inside


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--interval", type=int, default=50, help="steps per decision")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # a script of ours: its own process

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g)
    y = torch.randint(0, 10, (4096,), generator=g)
    batches = torch.randint(0, 4096, (args.steps, args.batch), generator=g)
    data = (x, y, batches)
    start = make_model(0, args.width)

    with tempfile.TemporaryDirectory() as tmp:
        policy = str(keep_policy(Path(tmp), args.interval))
        variants: dict[str, Callable[[torch.optim.Optimizer], TorchLRScheduler] | None] = {
            "bare loop": None,
            f"greedy (loss), interval {args.interval}": lambda o: TorchLRScheduler(
                o, "greedy", interval=args.interval, min_lr=LR, max_lr=LR
            ),
            f"learned (loss + gradient norm), interval {args.interval}": lambda o: (
                TorchLRScheduler(
                    o, "learned", path=policy, total_steps=args.steps, interval=args.interval
                )
            ),
            f"learned, grad_norm_every=5, interval {args.interval}": lambda o: (
                TorchLRScheduler(
                    o,
                    "learned",
                    path=policy,
                    total_steps=args.steps,
                    interval=args.interval,
                    grad_norm_every=5,
                )
            ),
        }
        names = list(variants)
        for name in names:  # warm-up (allocator, lazy initialisation)
            run(copy.deepcopy(start), (x, y, batches[:50]), variants[name])
        times: dict[str, list[float]] = {name: [] for name in names}
        inside: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                total, in_step = run(copy.deepcopy(start), data, variants[name])
                times[name].append(total)
                inside[name].append(in_step)

    bare = times[names[0]]
    print(
        f"{args.steps} steps x {args.repeats} interleaved repeats, MLP 64-{args.width}-"
        f"{args.width}-10, batch {args.batch}, {torch.get_num_threads()} torch thread(s), "
        "CPU times\n"
    )
    print(
        "| variant | median time per step (µs) | of which in sched.step (µs) "
        "| median ratio to bare loop (quartiles) | in sched.step / bare step |"
    )
    print("|---|---|---|---|---|")
    bare_step = statistics.median(bare) / args.steps
    for name in names:
        per_step = statistics.median(times[name]) / args.steps
        in_step = statistics.median(inside[name]) / args.steps
        ratios = [t / b for t, b in zip(times[name], bare, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
        print(
            f"| {name} | {1e6 * per_step:.1f} | {1e6 * in_step:.1f} "
            f"| {statistics.median(ratios):.3f} ({q1:.3f}–{q3:.3f}) | {in_step / bare_step:.1%} |"
        )


if __name__ == "__main__":
    main()
