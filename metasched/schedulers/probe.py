"""The probe heuristic: fork training at L/2, L and 2L, keep what wins, move L on streaks.

The heuristic comes from a discussion of dynamic learning rates for AlphaZero-style training
(seed 000), where the trainer idles while self-play generates data, so spending extra
backward passes on LR exploration is nearly free. Here one *generation* is one decision
interval of the inner task.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metasched.inner_tasks.costs import eval_cost
from metasched.loop import Driver, IntervalInfo
from metasched.schedulers.base import (
    Scheduler,
    check_choice,
    check_int,
    check_positive,
    decode_float,
    encode_float,
    register,
)
from metasched.signal import TrainingSignal

__all__ = ["ARMS", "ProbeScheduler"]

#: The three arms of a probing generation and their LR multipliers, in tie-break order
#: (on equal validation loss the regular LR wins, then the smaller one).
ARMS: dict[str, float] = {"base": 1.0, "small": 0.5, "big": 2.0}


@register
class ProbeScheduler(Scheduler):
    """Probe L/2, L and 2L on forks of training; halve or double L after K straight wins.

    At a *probing generation* the run is forked three times from the same state (parameters,
    optimizer state and data RNG, so every fork sees the same minibatches) and each fork
    trains the interval at L/2, L or 2L. The fork with the lowest validation loss wins (the
    full-data loss on tasks without a held-out set; a diverged fork loses). When the same
    non-L arm wins ``k`` consecutive probing generations, L is halved (L/2 won) or doubled
    (2L won) for good and the streak restarts; a win of L clears the streak. Training then
    continues from the L fork (``continue_from="base"``, the original proposal: probes only
    inform the choice of L) or from the winning fork (``"winner"``). Other generations are a
    normal pass at L.

    Probing generations are drawn with probability ``p`` from an RNG seeded by ``seed`` (the
    draw for generation g depends only on ``(seed, g)``, so runs are reproducible and
    resumable), or are every ``every``-th generation when ``every`` is given.

    The two forks not continued are extra compute: :attr:`extra_steps` counts their inner
    steps plus the evaluations made to pick a winner (:attr:`extra_evals`: the full-data
    ``evaluate()`` of each fork on tasks whose driver does not measure a validation loss,
    else the validation losses of the two forks not continued), each charged the task's
    measured :func:`~metasched.inner_tasks.costs.eval_cost` in training steps.

    The source gives no values for p, N or K; the defaults (``p=0.25``, ``k=2``) probe about
    one generation in four and let two straight wins move L.

    Args:
        p: probability that a generation probes (ignored when ``every`` is given).
        every: probe every N-th generation instead (generations N-1, 2N-1, ... zero-based).
        k: consecutive wins of the same non-L arm that move L.
        continue_from: ``"base"`` or ``"winner"``.
        seed: seed of the probing draws.
        min_lr, max_lr: optional absolute limits on L.

    Example:
        >>> s = ProbeScheduler(every=2, k=1)
        >>> s.probing_generations(6)
        [1, 3, 5]
    """

    name = "probe"
    drives_training = True

    def __init__(
        self,
        *,
        p: float | None = None,
        every: int | None = None,
        k: int = 2,
        continue_from: str = "base",
        seed: int = 0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        super().__init__()
        if p is not None and every is not None:
            raise ValueError(f"give either p or every, not both (got p={p!r}, every={every!r})")
        if every is not None:
            every = check_int("every", every, minimum=1)
        else:
            p = 0.25 if p is None else p
            if not (isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1):
                raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
            p = float(p)
        k = check_int("k", k, minimum=1)
        continue_from = check_choice("continue_from", continue_from, ("base", "winner"))
        seed = check_int("seed", seed, minimum=0)
        if min_lr is not None:
            min_lr = check_positive("min_lr", min_lr)
        if max_lr is not None:
            max_lr = check_positive("max_lr", max_lr)
        if min_lr is not None and max_lr is not None and min_lr > max_lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed max_lr ({max_lr})")
        self.p, self.every, self.k = p, every, k
        self.continue_from, self.seed = continue_from, seed
        self.min_lr, self.max_lr = min_lr, max_lr
        self._set_config(
            p=p,
            every=every,
            k=k,
            continue_from=continue_from,
            seed=seed,
            min_lr=min_lr,
            max_lr=max_lr,
        )
        self._init_state()

    def _init_state(self) -> None:
        self.generation = 0
        self.streak_arm: str | None = None
        self.streak = 0
        self._extra_steps = 0
        self.extra_evals = 0
        #: Training-step equivalents of :attr:`extra_evals` (see ``eval_cost``).
        self.eval_steps = 0.0
        #: One record per probing generation: generation, L, per-arm loss, winner, new L.
        self.history: list[dict[str, Any]] = []

    # -- probing schedule ------------------------------------------------------------------
    def probes_at(self, generation: int) -> bool:
        """Whether ``generation`` (zero-based) is a probing generation."""
        if self.every is not None:
            return (generation + 1) % self.every == 0
        if self.p <= 0:
            return False
        u = np.random.default_rng([self.seed, int(generation)]).random()
        return bool(u < self.p)

    def probing_generations(self, n: int) -> list[int]:
        """Return the probing generations among the first ``n``."""
        return [g for g in range(n) if self.probes_at(g)]

    @property
    def extra_steps(self) -> int:
        """Inner steps of the forks not continued plus the winner-choosing evaluations."""
        return self._extra_steps + round(self.eval_steps)

    # -- protocol --------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        self._init_state()
        return base_lr

    def _step(self, signal: TrainingSignal) -> float:
        # Observing alone never probes: L moves only in advance(), which forks training.
        return self._lr

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one generation through ``driver``, probing the three arms if it is due."""
        if not self.base_lrs:
            raise RuntimeError("ProbeScheduler.advance() called before reset(base_lr)")
        g = self.generation
        self.generation += 1
        L = self._lr
        if not self.probes_at(g):
            return driver.advance(L)
        origin = driver.snapshot()
        results: dict[str, tuple[TrainingSignal, IntervalInfo, dict[str, Any], float]] = {}
        measured: set[str] = set()  # arms whose validation loss the driver measured anyway
        evals = 0
        for arm, mult in ARMS.items():
            driver.restore(origin)
            sig, info = driver.advance(L * mult)
            if driver.diverged:
                loss = math.inf
            elif sig.val_loss is not None:
                loss = sig.val_loss
                measured.add(arm)
            else:
                loss = driver.task.evaluate()
                evals += 1
            loss = float(loss) if math.isfinite(loss) else math.inf
            results[arm] = (sig, info, driver.snapshot(), loss)
        winner = min(ARMS, key=lambda a: results[a][3])  # ties: first in ARMS order
        keep = "base" if self.continue_from == "base" else winner
        driver.restore(results[keep][2])
        self._extra_steps += sum(r[1].inner_steps for a, r in results.items() if a != keep)
        evals += len(measured - {keep})  # the kept fork's is the main line's own measurement
        self.extra_evals += evals
        self.eval_steps += evals * eval_cost(driver.task)

        if winner == "base":
            self.streak_arm, self.streak = None, 0
        elif winner == self.streak_arm:
            self.streak += 1
        else:
            self.streak_arm, self.streak = winner, 1
        new_L = L
        if self.streak_arm is not None and self.streak >= self.k:
            new_L = L * ARMS[self.streak_arm]
            if self.min_lr is not None:
                new_L = max(new_L, self.min_lr)
            if self.max_lr is not None:
                new_L = min(new_L, self.max_lr)
            self.streak_arm, self.streak = None, 0
        self._lr = new_L
        self.history.append(
            {
                "generation": g,
                "lr": L,
                "loss": {a: encode_float(r[3]) for a, r in results.items()},
                "winner": winner,
                "new_lr": new_L,
            }
        )
        sig, info = results[keep][0], results[keep][1]
        return sig, info

    # -- state -----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "streak_arm": self.streak_arm,
            "streak": self.streak,
            "extra_steps": self._extra_steps,
            "extra_evals": self.extra_evals,
            "eval_steps": self.eval_steps,
            "history": [dict(h, loss=dict(h["loss"])) for h in self.history],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.streak_arm = state["streak_arm"]
        self.streak = int(state["streak"])
        self._extra_steps = int(state["extra_steps"])
        self.extra_evals = int(state["extra_evals"])
        self.eval_steps = float(state.get("eval_steps", 0.0))
        self.history = [dict(h, loss=dict(h["loss"])) for h in state["history"]]
        for h in self.history:  # validate the encoded losses early
            for v in h["loss"].values():
                decode_float(v)
