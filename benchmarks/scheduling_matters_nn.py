"""Does scheduling matter on the neural-network families? Tuned constant vs tuned cosine.

Runs :func:`metasched.distill.sanity.constant_vs_cosine` (LRs tuned on ``train``, compared on
``test``) on each family at the defaults its registered env uses, and prints the tables.

    .venv/bin/python benchmarks/scheduling_matters_nn.py mlp mnist1d fashion charlm
"""

from __future__ import annotations

import argparse
import json
import time

from metasched.distill.sanity import constant_vs_cosine

# (budget, interval, n_train, n_test); the LR grid is in multiples of the reference LR,
# tuned by the comparison's protocol (metasched.distill.compare.tune)
SETTINGS = {
    "mlp": (800, 40, 8, 20),
    "mnist1d": (1000, 50, 6, 12),
    "fashion": (400, 40, 4, 8),
    "charlm": (2000, 100, 3, 6),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("families", nargs="+")
    parser.add_argument("--budget", type=int)
    parser.add_argument("--interval", type=int)
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--n-test", type=int)
    parser.add_argument("--grid", type=str, default="0.25,0.5,1,2,4,8")
    parser.add_argument("--json", type=str)
    args = parser.parse_args()
    out = {}
    for name in args.families:
        budget, interval, n_train, n_test = SETTINGS.get(name, (400, 20, 6, 12))
        budget = args.budget or budget
        interval = args.interval or interval
        n_train = args.n_train or n_train
        n_test = args.n_test or n_test
        grid = tuple(float(g) for g in args.grid.split(","))  # multiples of the reference LR
        t0 = time.perf_counter()
        res = constant_vs_cosine(
            name, n_train=n_train, n_val=n_test, split="test", budget=budget,
            interval=interval, grid=grid,
        )  # a reported number: tuned on train, measured on test
        dt = time.perf_counter() - t0
        print(f"## {name}: budget {budget}, interval {interval}, {n_train} train / "
              f"{n_test} test instances, {dt:.0f} s")
        print("grid (x reference LR)", [round(g, 4) for g in grid])
        for k, v in res.train_mean_log.items():
            print(k, "train mean log loss", [round(x, 4) for x in v])
        print(res.table())
        print()
        out[name] = {
            "budget": budget,
            "interval": interval,
            "grid": list(grid),
            "tuned_multiple": res.tuned_multiple,
            "test_median": res.eval_median,
            "cosine_win_rate": res.cosine_win_rate,
            "train_mean_log": {k: list(v) for k, v in res.train_mean_log.items()},
            "seconds": dt,
        }
        out[name]["test_final"] = {k: [float(x) for x in v] for k, v in res.eval_final.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
