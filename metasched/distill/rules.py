"""Distil a learned policy into interpretable schedulers.

Two distillations of an exported policy (``.msched``):

(a) **GreedyLR parameters**: the policy is rolled out on ``train`` instances; each candidate
    GreedyLR setting is fed the policy's own training signals (teacher forcing) and its LR
    *direction* (up, keep, down) is compared with the policy's at every decision. The
    candidates with the highest agreement are then run for real on the same instances,
    and the one with the lowest median final loss among them is kept — agreement first,
    outcome second.
(b) **A shallow decision tree** (scikit-learn's CART) over the raw observation features,
    fitted to the policy's actions, printed as if/then rules and saved as a rules file that
    :class:`~metasched.schedulers.rules.RulesScheduler` runs (``rules:FILE`` in compare).

Both are fitted on ``train`` rollouts; agreement is reported on ``val`` rollouts of the
policy (instances not fitted to). ``test`` and ``shift`` are never touched here: they are
for the reported numbers of :func:`~metasched.distill.compare.compare`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metasched.actions import DISCRETE_FACTORS
from metasched.distill.compare import problem_rng
from metasched.errors import ConfigError
from metasched.features import FEATURE_NAMES
from metasched.inner_tasks import TaskFamily, family_lr_range, make_family
from metasched.schedulers import GreedyLR, LearnedScheduler
from metasched.schedulers.rules import RulesScheduler, write_rules
from metasched.schedulers.runner import Run, run_schedule
from metasched.signal import TrainingSignal

__all__ = [
    "GREEDY_SEARCH",
    "Distilled",
    "Rollout",
    "distill",
    "fit_greedy",
    "fit_tree",
    "format_rules",
    "rollout",
]

#: The GreedyLR settings searched in (a).
GREEDY_SEARCH: dict[str, tuple[Any, ...]] = {
    "factor": (0.5, 0.7, 0.9),
    "patience": (0, 1, 2, 4, 10),
    "threshold": (0.0, 1e-3, 1e-2),
    "cooldown": (0, 2),
    "warmup": (0, 2),
    "smooth": (False, True),
}


@dataclass
class Rollout:
    """One run of the policy: its signals, observations, actions and LR directions."""

    task: str
    base_lr: float
    signals: list[TrainingSignal]  # signals[0] is the step-0 signal
    obs: np.ndarray  # (T, F): the observation before each decision
    actions: np.ndarray  # (T, ...) the policy's actions
    directions: np.ndarray  # (T,) int: -1 down, 0 keep, +1 up (the action's intent)
    final_loss: float
    lr_range: tuple[float, float] = TaskFamily.lr_range  # the family's (reference-LR multiples)


def _direction(mode: str, action: np.ndarray) -> int:
    if mode in DISCRETE_FACTORS:
        f = DISCRETE_FACTORS[mode][int(action)]
        return int(np.sign(f - 1.0))
    a = float(np.asarray(action).reshape(-1)[0])
    return 0 if abs(a) < 0.05 else int(np.sign(a))  # continuous: x 2^a


def rollout(
    policy_path: str | os.PathLike[str],
    family: str,
    split: str,
    indices: Sequence[int],
    *,
    budget: int,
    interval: int,
    family_seed: int = 0,
) -> list[Rollout]:
    """Run the policy on instances of ``family``/``split`` and record every decision."""
    fam = make_family(family, family_seed)
    out = []
    for i in indices:
        sched = LearnedScheduler(path=policy_path)
        if sched.action_mode == "absolute":
            raise ConfigError("distillation needs a relative action mode, not 'absolute'")
        sched.recorder = []
        task = fam.make(split, i)
        run = Run(task, sched, budget=budget, interval=interval)
        signals = [run.start(problem_rng(family_seed, split, i, 0))]
        base = float(task.default_lr())  # the reference LR, at initialisation
        while not run.done:
            signals.append(run.step())
        rec = sched.recorder[: len(signals) - 1]  # the last decision is never applied
        obs = np.array([o for o, _ in rec])
        acts = np.array([a for _, a in rec])
        dirs = np.array([_direction(sched.action_mode, a) for a in acts])
        out.append(Rollout(task.name, base, signals, obs, acts, dirs, run.trace.final_loss,
                           lr_range=family_lr_range(fam)))  # fmt: skip
    return out


def greedy_directions(params: dict[str, Any], ro: Rollout, lr_ref: float) -> np.ndarray:
    """GreedyLR's LR directions when fed the policy's signals (teacher forcing).

    GreedyLR's bounds are the rollout family's LR range around ``lr_ref``, as in ``compare``.
    """
    lo, hi = ro.lr_range
    g = GreedyLR(min_lr=lo * lr_ref, max_lr=hi * lr_ref, **_greedy(params))
    lr = g.reset(lr_ref, ro.signals[0])
    dirs = [0]
    for sig in ro.signals[1:-1]:
        new = g.step(sig)
        dirs.append(0 if abs(new - lr) <= 1e-12 * lr else int(np.sign(new - lr)))
        lr = new
    return np.array(dirs)


def _greedy(params: dict[str, Any]) -> dict[str, Any]:
    p = dict(params)
    smooth = bool(p.pop("smooth", False))
    p["threshold_mode"] = "rel"
    if smooth:
        p.update(smooth=True, window_size=3)
    return p


@dataclass
class GreedyFit:
    """Result of :func:`fit_greedy`."""

    params: dict[str, Any]
    agreement: float
    median_final: float
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def spec(self) -> str:
        """Return the ``metasched compare`` scheduler spec of the fitted GreedyLR."""
        p = _greedy(self.params)
        return "greedy:" + ",".join(f"{k}={v}" for k, v in p.items())


def agreement_of(params: dict[str, Any], rollouts: Sequence[Rollout], ref: Callable) -> float:
    """Fraction of decisions where GreedyLR's direction equals the policy's."""
    hits = total = 0
    for ro in rollouts:
        d = greedy_directions(params, ro, ref(ro))
        n = min(d.size, ro.directions.size)
        hits += int(np.sum(d[:n] == ro.directions[:n]))
        total += n
    return hits / total if total else math.nan


def fit_greedy(
    rollouts: Sequence[Rollout],
    policy: LearnedScheduler,
    *,
    family: str,
    indices: Sequence[int],
    budget: int,
    interval: int,
    family_seed: int = 0,
    top_k: int = 5,
) -> GreedyFit:
    """Search :data:`GREEDY_SEARCH` for the GreedyLR setting closest to the policy."""
    keys = list(GREEDY_SEARCH)
    scored = []
    for values in itertools.product(*(GREEDY_SEARCH[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        scored.append((agreement_of(params, rollouts, lambda r: r.base_lr), params))
    scored.sort(key=lambda t: -t[0])
    fam = make_family(family, family_seed)
    lo, hi = family_lr_range(fam)
    best: GreedyFit | None = None
    cands = []
    for agree, params in scored[:top_k]:
        finals = []
        for i in indices:
            task = fam.make("train", i)
            task.reset(problem_rng(family_seed, "train", i, 0))
            ref = float(task.default_lr())
            g = GreedyLR(min_lr=lo * ref, max_lr=hi * ref, **_greedy(params))
            tr = run_schedule(task, g, budget=budget, interval=interval,
                              seed=problem_rng(family_seed, "train", i, 0))  # fmt: skip
            finals.append(tr.final_loss)
        med = float(np.median(finals))
        cands.append({"params": params, "agreement": agree, "median_final": med})
        if best is None or med < best.median_final:
            best = GreedyFit(params, agree, med)
    assert best is not None
    best.candidates = cands
    return best


def fit_tree(
    rollouts: Sequence[Rollout], mode: str, *, max_depth: int = 3, min_leaf: int = 20
) -> dict[str, list[Any]]:
    """Fit a CART tree (observation -> action); return it in the rules-file layout."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    x = np.concatenate([r.obs for r in rollouts]).astype(np.float64)
    y = np.concatenate([r.actions for r in rollouts])
    leaf = max(1, min(min_leaf, len(x) // 10))
    discrete = mode in DISCRETE_FACTORS
    if discrete:
        model = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=leaf, random_state=0)
        model.fit(x, y.astype(np.int64).reshape(-1))
    else:
        model = DecisionTreeRegressor(max_depth=max_depth, min_samples_leaf=leaf, random_state=0)
        model.fit(x, y.reshape(len(y), -1))
    t = model.tree_
    actions: list[Any] = []
    for node in range(t.node_count):
        v = t.value[node]
        if discrete:
            actions.append(int(model.classes_[int(np.argmax(v[0]))]))
        else:
            actions.append([float(np.clip(a, -1.0, 1.0)) for a in v.reshape(-1)])
    tree = {
        "feature": [int(f) if f >= 0 else -1 for f in t.feature],
        "threshold": [
            float(th) if f >= 0 else 0.0 for f, th in zip(t.feature, t.threshold, strict=True)
        ],
        "left": [int(c) for c in t.children_left],
        "right": [int(c) for c in t.children_right],
        "action": actions,
    }
    _prune(tree, 0)
    return tree


def _prune(tree: dict[str, list[Any]], node: int) -> None:
    """Turn splits whose two sides act the same into leaves (same behaviour, fewer rules)."""
    left, right = tree["left"][node], tree["right"][node]
    if left < 0:
        return
    _prune(tree, left)
    _prune(tree, right)
    leaves = tree["left"][left] < 0 and tree["left"][right] < 0
    if leaves and tree["action"][left] == tree["action"][right]:
        tree["action"][node] = tree["action"][left]
        tree["left"][node] = tree["right"][node] = -1
        tree["feature"][node] = -1
        tree["threshold"][node] = 0.0


def _action_text(mode: str, action: Any) -> str:
    if mode in DISCRETE_FACTORS:
        f = DISCRETE_FACTORS[mode][int(action)]
        word = "keep the LR" if f == 1 else ("raise the LR" if f > 1 else "lower the LR")
        return f"{word} (x{f:g})"
    a = float(np.asarray(action).reshape(-1)[0])
    return f"multiply the LR by 2^{a:+.2f} (x{2**a:.3g})"


def format_rules(tree: dict[str, list[Any]], mode: str) -> str:
    """Return the tree as nested if/else rules over the feature names."""
    lines: list[str] = []

    def walk(node: int, depth: int) -> None:
        pad = "    " * depth
        if tree["left"][node] < 0:
            lines.append(f"{pad}{_action_text(mode, tree['action'][node])}")
            return
        name = FEATURE_NAMES[tree["feature"][node]]
        th = tree["threshold"][node]
        lines.append(f"{pad}if {name} <= {th:.4g}:")
        walk(tree["left"][node], depth + 1)
        lines.append(f"{pad}else:  # {name} > {th:.4g}")
        walk(tree["right"][node], depth + 1)

    walk(0, 0)
    return "\n".join(lines)


@dataclass
class Distilled:
    """What :func:`distill` produced."""

    rules_path: str
    rules_text: str
    tree_agreement_train: float
    tree_agreement_val: float
    greedy: GreedyFit
    greedy_agreement_val: float
    n_decisions_train: int

    def summary(self) -> str:
        """Human-readable summary (Markdown)."""
        return "\n".join(
            [
                "## Distilled rules (decision tree over the observation features)",
                "",
                "```",
                self.rules_text,
                "```",
                "",
                f"Agreement with the policy's actions: {self.tree_agreement_train:.1%} on the "
                f"{self.n_decisions_train} train decisions it was fitted to, "
                f"{self.tree_agreement_val:.1%} on held-out val rollouts. "
                f"Rules file: `{os.path.basename(self.rules_path)}` (`rules:FILE` in compare).",
                "",
                "## Distilled GreedyLR",
                "",
                f"`{self.greedy.spec()}` — LR-direction agreement with the policy "
                f"{self.greedy.agreement:.1%} on train rollouts, "
                f"{self.greedy_agreement_val:.1%} on held-out val rollouts; median final "
                f"train loss {self.greedy.median_final:.4g}.",
            ]
        )


def distill(
    policy_path: str | os.PathLike[str],
    out_rules: str | os.PathLike[str],
    *,
    family: str = "nmf",
    n_train: int = 20,
    n_val: int = 20,
    budget: int | None = None,
    interval: int | None = None,
    max_depth: int = 3,
    family_seed: int = 0,
    log: Callable[[str], None] = print,
) -> Distilled:
    """Distil the policy in ``policy_path`` (see the module docstring); write the rules file.

    ``budget`` defaults to the budget of ``family``'s registered env (the env-kwargs
    resolver, as in ``compare``); ``interval`` to the policy's decision interval.
    """
    from metasched.envs.registration import env_defaults

    policy = LearnedScheduler(path=policy_path)
    if budget is None:
        budget = env_defaults(family)[0]
    interval = int(interval or policy.decision_interval or 50)
    mode = policy.action_mode
    kw = {"budget": budget, "interval": interval, "family_seed": family_seed}
    log(f"rolling out the policy on {n_train} train and {n_val} val instances of {family} ...")
    train = rollout(policy_path, family, "train", range(n_train), **kw)
    val = rollout(policy_path, family, "val", range(n_val), **kw)
    tree = fit_tree(train, mode, max_depth=max_depth)
    doc_header = {
        k: policy.policy.header[k]
        for k in ("observation", "action", "env_kwargs", "decision_interval")
    }
    write_rules(
        out_rules,
        doc_header,
        tree,
        {"policy": os.path.basename(os.fspath(policy_path)), "checksum": policy.policy.checksum,
         "family": family, "n_train": n_train, "max_depth": max_depth},
    )  # fmt: skip
    rules = RulesScheduler(path=out_rules)

    def tree_agreement(ros: Sequence[Rollout]) -> float:
        hit = total = 0
        for r in ros:
            pred, _ = rules.policy.predict(r.obs)
            hit += int(np.sum(np.all(np.isclose(pred.reshape(len(pred), -1),
                                                r.actions.reshape(len(r.actions), -1),
                                                atol=0.1), axis=1)))  # fmt: skip
            total += len(r.obs)
        return hit / total if total else math.nan

    log("searching GreedyLR settings that act like the policy ...")
    g = fit_greedy(train, policy, family=family, indices=range(min(n_train, 10)), **kw)
    return Distilled(
        rules_path=os.fspath(out_rules),
        rules_text=format_rules(tree, mode),
        tree_agreement_train=tree_agreement(train),
        tree_agreement_val=tree_agreement(val),
        greedy=g,
        greedy_agreement_val=agreement_of(g.params, val, lambda r: r.base_lr),
        n_decisions_train=int(sum(len(r.obs) for r in train)),
    )
