"""Plots of a comparison (matplotlib, headless): schedules, win rates, profiles, tuning.

Schedules and loss curves, win-rate heatmaps, performance profiles, tuning curves and the
tuning-cost view. Every figure is written as PNG and SVG. Loss and LR axes are logarithmic.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "plot_eval_curve",
    "plot_profile",
    "plot_schedules",
    "plot_tuning_cost",
    "plot_tuning_curves",
    "plot_win_rates",
    "read_curves",
    "save",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path_stem: Path) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg``; close it; return the paths."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        p = path_stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=130, bbox_inches="tight")
        out.append(p)
    _plt().close(fig)
    return out


def read_curves(
    runs_csv: Path, family: str, instance: int, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Curves (step, applied LR, validation loss) per scheduler of one problem from runs.csv."""
    curves: dict[str, dict[str, list[float]]] = {}
    with open(runs_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if (row["family"], int(row["instance"]), int(row["seed"])) != (
                family,
                instance,
                seed,
            ):
                continue
            c = curves.setdefault(row["scheduler"], {"step": [], "lr": [], "loss": []})
            c["step"].append(float(row["step"]))
            c["lr"].append(float(row["applied_lr"]) if row["applied_lr"] else math.nan)
            c["loss"].append(float(row["val_loss"]) if row["val_loss"] else math.nan)
    return {k: {n: np.asarray(v) for n, v in c.items()} for k, c in curves.items()}


def _styles(names: Sequence[str]) -> dict[str, dict[str, object]]:
    """Distinct line styles: ten colours, then the same colours dashed, then dotted."""
    cmap = _plt().get_cmap("tab10")
    dashes = ("-", "--", ":")
    return {
        n: {"color": cmap(i % 10), "ls": dashes[(i // 10) % 3]} for i, n in enumerate(names)
    }


def plot_schedules(
    curves: Mapping[str, Mapping[str, np.ndarray]], title: str, path_stem: Path
) -> list[Path]:
    """LR schedule (left) and loss curve (right) of every scheduler on one problem."""
    plt = _plt()
    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    styles = _styles(list(curves))
    top = 0.0
    for name, c in curves.items():
        step, lr, loss = c["step"], c["lr"], c["loss"]
        # the LR applied during interval i is drawn over [step_{i-1}, step_i]
        if len(step) > 1:
            ax_lr.step(step[1:], lr[1:], where="pre", label=name, lw=1.5, **styles[name])
            top = max(top, float(np.nanmax(lr[1:])) if np.isfinite(lr[1:]).any() else 0.0)
        ok = np.isfinite(loss) & (loss > 0)
        ax_loss.plot(step[ok], loss[ok], label=name, lw=1.5, **styles[name])
    ax_lr.set(xlabel="inner step", ylabel="applied learning rate", yscale="log")
    if top > 0:  # keep six decades: a collapsed LR should not squash the others
        ax_lr.set_ylim(bottom=max(ax_lr.get_ylim()[0], top * 1e-6))
    ax_lr.set_title("learning-rate schedule")
    ax_loss.set(xlabel="inner step", ylabel="loss (validation / full data)", yscale="log")
    ax_loss.set_title("loss")
    for ax in (ax_lr, ax_loss):
        ax.grid(True, which="both", alpha=0.3)
    ax_loss.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path_stem)


def plot_win_rates(
    rates: Mapping[str, Mapping[str, float]], title: str, path_stem: Path
) -> list[Path]:
    """Heatmap: cell (row a, column b) = fraction of problems where a is equal or better."""
    plt = _plt()
    names = list(rates)
    mat = np.array([[rates[a][b] for b in names] for a in names])
    size = 1.0 + 0.75 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            v = mat[i, j]
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8,
                    color="black" if 0.25 < v < 0.85 else "white")  # fmt: skip
    ax.set_xlabel("... than this scheduler")
    ax.set_ylabel("this scheduler is equal or better ...")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of problems")
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path_stem)


def plot_profile(
    profile: Mapping[str, Sequence[float]], taus: Sequence[float], title: str, path_stem: Path
) -> list[Path]:
    """Plot the performance profile: fraction of problems within a factor tau of the best."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = _styles(list(profile))
    for name, frac in profile.items():
        ax.step(taus, frac, where="post", label=name, lw=1.6, **styles[name])
    ax.set(
        xlabel="tau: final loss within this factor of the best scheduler's",
        ylabel="fraction of problems",
        xscale="log",
        ylim=(-0.02, 1.02),
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path_stem)


def plot_eval_curve(
    timesteps: Sequence[float],
    returns: Sequence[float],
    references: Mapping[str, float],
    path_stem: Path,
) -> list[Path]:
    """Plot the agent's mean test return over training, with reference policies as lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(timesteps, returns, marker="o", lw=1.6, label="agent (val split)")
    styles = ("--", ":", "-.")
    for k, (name, value) in enumerate(references.items()):
        ax.axhline(value, ls=styles[k % 3], color="grey", lw=1.2, label=f"{name} policy")
    ax.set(xlabel="training timesteps", ylabel="mean episodic return = log(L0 / L_T)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("meta-training: evaluation on val instances (selects the best checkpoint)")
    fig.tight_layout()
    return save(fig, path_stem)


def plot_tuning_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]], title: str, path_stem: Path
) -> list[Path]:
    """Mean log final train loss vs the LR multiple, with 95% CIs, one line per tuned label.

    ``curves[label]`` holds ``multiple``, ``mean``, ``lo``, ``hi`` (one value per LR
    multiple; for a joint grid, the best point over the other axes at that multiple) and
    ``chosen`` (the tuned multiple).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    styles = _styles(list(curves))
    for name, c in curves.items():
        x = np.asarray(c["multiple"], dtype=float)
        ax.plot(x, c["mean"], marker="o", ms=3, lw=1.5, label=name, **styles[name])
        ax.fill_between(x, c["lo"], c["hi"], alpha=0.18, color=styles[name]["color"])
        k = int(np.argmin(np.abs(np.log(x) - math.log(float(c["chosen"][0])))))
        ax.plot([x[k]], [c["mean"][k]], marker="*", ms=13, color=styles[name]["color"],
                markeredgecolor="black", ls="none")  # fmt: skip
    ax.set(
        xscale="log",
        xlabel="LR multiple of the reference LR",
        ylabel="mean log final loss on train (95% CI)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path_stem)


def plot_tuning_cost(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    lines: Mapping[str, float],
    title: str,
    path_stem: Path,
) -> list[Path]:
    """Median evaluated loss of the tuned pick vs tuning runs spent; untuned rows as lines.

    ``curves[label]`` holds ``runs``, ``expected``, ``q10`` and ``q90``; ``lines`` maps the
    untuned schedulers (learned policy, ``@ref`` rows) to their median, drawn as horizontal
    lines starting at zero tuning runs.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    styles = _styles(list(curves) + list(lines))
    for name, c in curves.items():
        x = np.asarray(c["runs"], dtype=float)
        ax.plot(x, c["expected"], lw=1.6, label=name, **styles[name])
        ax.fill_between(x, c["q10"], c["q90"], alpha=0.12, color=styles[name]["color"])
    xmax = max((float(np.max(c["runs"])) for c in curves.values()), default=1.0)
    for name, v in lines.items():
        if math.isfinite(v):
            ax.hlines(v, 0.0, xmax, lw=1.4, linestyles="--", label=f"{name} (0 runs)",
                      color=styles[name]["color"])  # fmt: skip
            ax.plot([0.0], [v], marker="o", color=styles[name]["color"])
    ax.set(
        xscale="symlog",
        yscale="log",
        xlabel="tuning runs (grid points × train instances)",
        ylabel="median final loss of the pick",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, path_stem)
