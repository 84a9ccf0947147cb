"""Population-based training (Jaderberg et al., 2017) as a learning-rate scheduler.

A population of ``population`` members trains side by side from the run's initial state,
each with its own LR (and momentum / weight decay where the task exposes them through
:class:`~metasched.inner_tasks.gradients.HyperparameterTask`), sampled from a prior. All
members advance one decision interval at a time in lockstep; every ``ready`` intervals each
member may *exploit* — replace its weights, optimizer state and hyperparameters with those
of a better member — and then *explore* — perturb the copied hyperparameters by ×0.8 or
×1.2, or with probability ``resample_p`` resample them from the prior. Exploit strategies
(``exploit``), as in the paper:

* ``truncation``: rank members by score; each of the bottom ``truncation`` fraction (20 %)
  copies a member drawn uniformly from the top fraction;
* ``ttest``: each member compares itself with a uniformly drawn other member on their
  recent minibatch losses and copies it if that member's mean is lower and Welch's t-test
  (``scipy.stats.ttest_ind(equal_var=False)``) rejects equality at ``ttest_alpha``;
* ``tournament``: binary tournament — each member copies a uniformly drawn other member if
  that member's score is better.

The score is the validation loss (the full-data loss ``task.evaluate()`` on tasks without a
held-out set); a diverged member scores
``inf``, stops training and is replaced at the next exploit round. Exploit decisions of one
round all read the population as it was before the round.

The *main line* is the best member: after every interval the driver is left in the best
member's state and the run's signal, LR and final loss are that member's. Compute is the
population's: :attr:`~PBTScheduler.extra_steps` counts the other members' inner steps, so
a run without divergence spends ``population × budget`` training steps in all, plus the
evaluations that score the members (:attr:`~PBTScheduler.extra_evals`: every explicit
``evaluate()``, and the validation losses the driver measured for members other than the
main line), each charged the task's measured
:func:`~metasched.inner_tasks.costs.eval_cost` in training steps.

Randomness comes only from generators seeded by ``(seed, round)``, so runs are reproducible
and resume identically from a JSON ``state_dict`` (which holds the population's snapshots).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats

from metasched.inner_tasks.costs import eval_cost
from metasched.inner_tasks.gradients import supports_hyperparameters
from metasched.loop import Driver, IntervalInfo
from metasched.schedulers.base import (
    Scheduler,
    check_choice,
    check_int,
    check_positive,
    register,
)
from metasched.schedulers.state_codec import decode_tree, encode_tree
from metasched.schedulers.stepwise import lr_cap
from metasched.signal import TrainingSignal

__all__ = ["EXPLOITS", "PBTScheduler"]

#: Exploit strategies.
EXPLOITS: tuple[str, ...] = ("truncation", "ttest", "tournament")
#: Most recent minibatch losses a member keeps for the t-test.
RECENT = 200


def _check_range(name: str, value: Any, *, positive: bool) -> tuple[float, float]:
    ok = isinstance(value, list | tuple) and len(value) == 2
    if ok:
        lo, hi = (check_positive(name, v, allow_zero=not positive) for v in value)
        ok = lo <= hi
    if not ok:
        raise ValueError(f"{name} must be a pair [low, high] with low <= high, got {value!r}")
    return lo, hi


@register
class PBTScheduler(Scheduler):
    """Population-based training of the LR (and optionally momentum / weight decay).

    Args:
        population: number of members N (>= 2).
        ready: decision intervals between exploit/explore rounds.
        exploit: ``"truncation"``, ``"ttest"`` or ``"tournament"``.
        truncation: fraction of the population in the bottom (and top) group.
        resample_p: probability that explore resamples a hyperparameter from the prior.
        perturb: the two explore factors, each chosen with probability 1/2.
        lr_range: prior of the LR, log-uniform on ``[lo, hi] × base_lr`` (the upper end is
            lowered to the driver's stability cap at the start of the run).
        momentum: optional uniform prior ``[lo, hi]`` of the task's momentum.
        weight_decay: optional log-uniform prior ``[lo, hi]`` of the task's weight decay.
        ttest_alpha: significance level of the ``ttest`` exploit.
        seed: seed of the prior draws, exploit partners and explore moves.

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.nmf import NMFTask
        >>> from metasched.schedulers import run_schedule
        >>> task = NMFTask.from_matrix(np.ones((30, 20)), rank=2, batch_size=8)
        >>> s = PBTScheduler(population=4, ready=2)
        >>> tr = run_schedule(task, s, budget=200, interval=25)
        >>> s.extra_evals, bool(tr.final_loss < tr["train_loss"][0])  # 4 members x 8 intervals
        (32, True)
        >>> tr.extra_steps  # 3 other members x 200 steps + 32 evaluations at 0.74 steps
        624
    """

    name = "pbt"
    drives_training = True

    def __init__(
        self,
        *,
        population: int = 8,
        ready: int = 4,
        exploit: str = "truncation",
        truncation: float = 0.2,
        resample_p: float = 0.25,
        perturb: list[float] | tuple[float, float] = (0.8, 1.2),
        lr_range: list[float] | tuple[float, float] = (0.1, 10.0),
        momentum: list[float] | tuple[float, float] | None = None,
        weight_decay: list[float] | tuple[float, float] | None = None,
        ttest_alpha: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        population = check_int("population", population, minimum=2)
        ready = check_int("ready", ready, minimum=1)
        exploit = check_choice("exploit", exploit, EXPLOITS)
        truncation = check_positive("truncation", truncation)
        if truncation > 0.5:
            raise ValueError(f"truncation must lie in (0, 0.5], got {truncation!r}")
        resample_p = check_positive("resample_p", resample_p, allow_zero=True)
        if resample_p > 1:
            raise ValueError(f"resample_p must be a probability in [0, 1], got {resample_p!r}")
        perturb_t = _check_range("perturb", perturb, positive=True)
        lr_t = _check_range("lr_range", lr_range, positive=True)
        mom_t = None if momentum is None else _check_range("momentum", momentum, positive=False)
        if mom_t is not None and mom_t[1] >= 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        wd_t = (
            None
            if weight_decay is None
            else _check_range("weight_decay", weight_decay, positive=True)
        )
        ttest_alpha = check_positive("ttest_alpha", ttest_alpha)
        if ttest_alpha >= 1:
            raise ValueError(f"ttest_alpha must lie in (0, 1), got {ttest_alpha!r}")
        seed = check_int("seed", seed, minimum=0)
        self.population, self.ready, self.exploit = population, ready, exploit
        self.truncation, self.resample_p, self.perturb = truncation, resample_p, perturb_t
        self.lr_range, self.momentum, self.weight_decay = lr_t, mom_t, wd_t
        self.ttest_alpha, self.seed = ttest_alpha, seed
        self._set_config(
            population=population,
            ready=ready,
            exploit=exploit,
            truncation=truncation,
            resample_p=resample_p,
            perturb=list(perturb_t),
            lr_range=list(lr_t),
            momentum=None if mom_t is None else list(mom_t),
            weight_decay=None if wd_t is None else list(wd_t),
            ttest_alpha=ttest_alpha,
            seed=seed,
        )
        self._init_state()

    def _init_state(self) -> None:
        self.generation = 0
        #: One dict per member: ``hp`` (lr and extras), ``snap``, ``score``, ``recent``.
        self.members: list[dict[str, Any]] = []
        #: Prior ranges per hyperparameter name, fixed at the first interval.
        self.priors: dict[str, list[float]] = {}
        self.best = 0
        self.trained = 0
        self.extra_evals = 0
        #: Training-step equivalents of :attr:`extra_evals` (see ``eval_cost``).
        self.eval_steps = 0.0
        #: One record per exploit: generation, member, source, hyperparameters before/after.
        self.history: list[dict[str, Any]] = []

    @property
    def extra_steps(self) -> int:
        """Inner steps of every member but the main line, plus the scoring evaluations."""
        if not self.members:
            return 0
        main = self.members[self.best]["snap"]["step"]
        return max(self.trained - main, 0) + round(self.eval_steps)

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return the LR prior ``lr_range × base_lr`` (explore clips into it)."""
        return (self.lr_range[0] * base_lr, self.lr_range[1] * base_lr)

    # -- protocol --------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        self._init_state()
        return base_lr

    def _step(self, signal: TrainingSignal) -> float:
        return self._lr  # the population moves in advance()

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.generation, *key])

    def _sample(self, name: str, rng: np.random.Generator) -> float:
        lo, hi = self.priors[name]
        if name == "momentum":
            return float(rng.uniform(lo, hi))
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def _start(self, driver: Driver) -> None:
        base = self.base_lrs[0]
        lo, hi = self.bounds(base)
        hi = max(min(hi, lr_cap(driver)), lo)
        self.priors = {"lr": [lo, hi]}
        task = driver.task
        for name, prior in (("momentum", self.momentum), ("weight_decay", self.weight_decay)):
            if prior is None:
                continue
            if supports_hyperparameters(task) and name in task.hyperparameters():
                self.priors[name] = list(prior)
            else:
                warnings.warn(
                    f"task {task.name!r} has no tunable {name}; PBT searches the LR "
                    f"{'and the other hyperparameters ' if len(self.priors) > 1 else ''}only",
                    stacklevel=3,
                )
        rng = self._rng(0)
        origin = driver.snapshot()
        for _ in range(self.population):
            hp = {name: self._sample(name, rng) for name in self.priors}
            self.members.append({"hp": hp, "snap": origin, "score": math.inf, "recent": []})

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train every member one interval, exploit/explore when ready, follow the best."""
        if not self.base_lrs:
            raise RuntimeError("PBTScheduler.advance() called before reset(base_lr)")
        if not self.members:
            self._start(driver)
        results: dict[int, tuple[TrainingSignal, IntervalInfo]] = {}
        evals_before = self.extra_evals
        for i, mem in enumerate(self.members):
            driver.restore(mem["snap"])
            if driver.done:
                continue  # diverged member: waits to be replaced
            extras = {k: v for k, v in mem["hp"].items() if k != "lr"}
            if extras:
                driver.task.set_hyperparameters(**extras)
            sig, info = driver.advance(mem["hp"]["lr"])
            self.trained += info.inner_steps
            results[i] = (sig, info)
            mem["snap"] = driver.snapshot()
            mem["score"] = self._score(driver, sig)
            mem["recent"] = (mem["recent"] + [float(x) for x in sig.losses])[-RECENT:]
        # validation losses the driver measured for every member but the main line
        self.extra_evals += max(sum(r[0].val_loss is not None for r in results.values()) - 1, 0)
        self.eval_steps += (self.extra_evals - evals_before) * eval_cost(driver.task)
        self.generation += 1
        self.best = self._best()
        if self.generation % self.ready == 0 and not self._finished(driver):
            self._exploit_explore()
            self.best = self._best()
        best = self.members[self.best]
        driver.restore(best["snap"])
        self._lr = best["hp"]["lr"]
        if self.best in results:
            return results[self.best]
        # every member had diverged before this interval: report the first that ran, if any
        return next(iter(results.values())) if results else self._dead_interval(driver)

    def _dead_interval(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        lr = self.members[self.best]["hp"]["lr"]
        sig = TrainingSignal(driver.step, driver.budget, lr, math.inf, diverged=True)
        return sig, IntervalInfo(lr, lr, False, 0, 0, 0.0)

    def _score(self, driver: Driver, sig: TrainingSignal) -> float:
        if driver.diverged:
            return math.inf
        if sig.val_loss is not None:
            loss = float(sig.val_loss)
        else:
            loss = float(driver.task.evaluate())
            self.extra_evals += 1
        return loss if math.isfinite(loss) else math.inf

    def _best(self) -> int:
        return min(range(len(self.members)), key=lambda i: (self.members[i]["score"], i))

    def _finished(self, driver: Driver) -> bool:
        return self.members[self.best]["snap"]["step"] >= driver.budget

    # -- exploit / explore -----------------------------------------------------------------
    def _exploit_explore(self) -> None:
        rng = self._rng(1)
        old = [dict(m, hp=dict(m["hp"])) for m in self.members]
        n = len(old)
        copies: list[tuple[int, int]] = []
        if self.exploit == "truncation":
            order = sorted(range(n), key=lambda i: (old[i]["score"], i))
            k = min(max(1, math.ceil(self.truncation * n - 1e-9)), n // 2)
            top, bottom = order[:k], order[n - k :]
            copies = [(i, top[int(rng.integers(k))]) for i in bottom]
        else:
            for i in range(n):
                j = int(rng.integers(n - 1))
                j += j >= i  # uniform over the others
                if self._beats(old[j], old[i]):
                    copies.append((i, j))
        for i, j in copies:
            before = dict(self.members[i]["hp"])
            self.members[i] = dict(old[j], hp=dict(old[j]["hp"]), recent=list(old[j]["recent"]))
            self.members[i]["hp"] = self._explore(old[j]["hp"], rng)
            self.history.append(
                {
                    "generation": self.generation,
                    "member": i,
                    "source": j,
                    "before": before,
                    "copied": dict(old[j]["hp"]),
                    "after": dict(self.members[i]["hp"]),
                }
            )

    def _beats(self, other: dict[str, Any], me: dict[str, Any]) -> bool:
        if not math.isfinite(other["score"]):
            return False
        if not math.isfinite(me["score"]):
            return True
        if self.exploit == "tournament":
            return bool(other["score"] < me["score"])
        a, b = np.asarray(other["recent"]), np.asarray(me["recent"])
        if len(a) < 2 or len(b) < 2 or not a.mean() < b.mean():
            return False
        with np.errstate(all="ignore"):
            p = stats.ttest_ind(a, b, equal_var=False).pvalue
        return bool(p < self.ttest_alpha)

    def _explore(self, hp: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
        out = {}
        for name, value in hp.items():
            if rng.random() < self.resample_p:
                out[name] = self._sample(name, rng)
            else:
                factor = self.perturb[int(rng.integers(2))]
                lo, hi = self.priors[name]
                out[name] = float(min(max(value * factor, lo), hi))
        return out

    # -- state -----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return encode_tree(
            {
                "generation": self.generation,
                "members": self.members,
                "priors": self.priors,
                "best": self.best,
                "trained": self.trained,
                "extra_evals": self.extra_evals,
                "eval_steps": self.eval_steps,
                "history": self.history,
            }
        )

    def _set_state(self, state: dict[str, Any]) -> None:
        st = decode_tree(state)
        self.eval_steps = float(st.get("eval_steps", 0.0))
        self.generation = int(st["generation"])
        self.members = st["members"]
        self.priors = st["priors"]
        self.best = int(st["best"])
        self.trained = int(st["trained"])
        self.extra_evals = int(st["extra_evals"])
        self.history = st["history"]
