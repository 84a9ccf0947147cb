"""Stochastic line search (SGD + Armijo), Vaswani et al. (2019), "Painless Stochastic Gradient".

Every inner step draws a minibatch ``i``, computes ``f_i(θ)`` and its gradient ``g``, and
backtracks on the *same* minibatch until the stochastic Armijo condition holds:

    f̃_i(θ⁺) <= f̃_i(θ) - c ⟨g, θ - θ⁺⟩,    θ⁺ = P(θ - η g),

shrinking ``η <- β_b η`` after each rejected trial. Without a projection ``θ - θ⁺ = η g`` and
this is the paper's ``f_i(θ - η g) <= f_i(θ) - c η ‖g‖²``; with NMF's ``max(0, .)`` it is the
standard projected (gradient-mapping) form of the same condition. Defaults are the paper's:
``c = 0.1``, ``β_b = 0.9``, growth ``γ = 2``.

The objective tested is the one the step descends. When the task adds gradient noise ``ξ``
(NMF: "only a noisy gradient is known"), ``g = ∇f_i(θ) + ξ`` is the exact gradient of
``f̃_i(θ') = f_i(θ') + ⟨ξ, θ' - θ⟩``, and the test is
``f_i(θ⁺) + ⟨ξ, θ⁺ - θ⟩ <= f_i(θ) - c ⟨g, θ - θ⁺⟩``. Testing the clean ``f_i`` against the
decrease ``⟨g, θ - θ⁺⟩`` predicted by the noisy ``g`` (which includes ``η ‖ξ‖²``) fails
whenever the noise dominates, and on the default NMF family drove the step size to ~1e-14
within the first interval. The noise comes from
:meth:`~metasched.inner_tasks.gradients.GradientTask.gradient_noise`; tasks without noise
give the paper's test unchanged. The minibatches and noise of an interval are those
``train`` would draw (:meth:`~metasched.inner_tasks.gradients.GradientTask.plan_steps`).

Before each step's search the trial step size is reset (``reset``, the paper's options):

* ``0``: ``η <- η_0`` (the base LR) every step;
* ``1`` (default): ``η <- η_{k-1} · γ^{b/n}`` — grow the last accepted step a little, by
  ``γ`` per epoch (``b/n`` = minibatch over training-set size, i.e. ``1 /
  batches_per_epoch`` of the task, or the ``batches_per_epoch`` option);
* ``2``: ``η <- η_{k-1}``.

The trial step never exceeds ``max_lr`` (if given) nor the driver's stability cap. If no
trial is accepted within ``max_backtracks`` the step is skipped (parameters unchanged) and
the search resumes from the shrunk step size next time.

Compute: every trial evaluates the minibatch loss once more than SGD would. The count is
:attr:`StochasticLineSearch.extra_evals`; :attr:`~StochasticLineSearch.extra_steps` charges
each evaluation ``eval_cost`` of an inner step (default 1/3: a forward pass against a
forward-plus-backward step; for NMF the loss needs one of the three matrix products of a
step).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.gradients import GradientTask, require_gradient_task
from metasched.loop import Driver, IntervalInfo
from metasched.schedulers.base import (
    Scheduler,
    check_int,
    check_positive,
    decode_float,
    encode_float,
    register,
)
from metasched.schedulers.stepwise import StepRecorder, lr_cap
from metasched.signal import TrainingSignal

__all__ = ["StochasticLineSearch", "armijo_holds"]


def armijo_holds(loss: float, new_loss: float, decrease: float, c: float) -> bool:
    """Whether ``new_loss <= loss - c * decrease`` (``decrease = ⟨g, θ - θ⁺⟩``)."""
    return bool(new_loss <= loss - c * decrease)


@register
class StochasticLineSearch(Scheduler):
    """SGD with a backtracking Armijo line search on each minibatch (SLS, reset option 1).

    The reported LR (:attr:`lr`, the trace's ``lr`` column) is the step size at the start of
    each decision interval, i.e. the last accepted one.

    Args:
        c: Armijo constant.
        backtrack: factor ``β_b`` in ``(0, 1)`` applied to a rejected step size.
        growth: ``γ >= 1`` of reset option 1.
        reset: ``0``, ``1`` or ``2`` (see the module docstring).
        max_backtracks: rejected trials after which a step is skipped.
        max_lr: optional cap on the step size (the driver's stability cap applies anyway).
        batches_per_epoch: ``n/b`` for reset option 1 (default: the task's
            ``batches_per_epoch()``; 1 if the task has no epochs).
        eval_cost: inner steps charged per extra loss evaluation.

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.nmf import NMFTask
        >>> from metasched.schedulers import run_schedule
        >>> task = NMFTask.from_matrix(np.ones((30, 20)), rank=2, batch_size=8)
        >>> s = StochasticLineSearch()
        >>> tr = run_schedule(task, s, budget=200, interval=50, clip="none")
        >>> bool(tr.final_loss < tr["train_loss"][0]), s.extra_evals >= 200
        (True, True)
    """

    name = "sls"
    drives_training = True

    def __init__(
        self,
        *,
        c: float = 0.1,
        backtrack: float = 0.9,
        growth: float = 2.0,
        reset: int = 1,
        max_backtracks: int = 100,
        max_lr: float | None = None,
        batches_per_epoch: float | None = None,
        eval_cost: float = 1.0 / 3.0,
    ) -> None:
        super().__init__()
        c = check_positive("c", c)
        if c >= 1:
            raise ValueError(f"c must lie in (0, 1), got {c!r}")
        backtrack = check_positive("backtrack", backtrack)
        if backtrack >= 1:
            raise ValueError(f"backtrack must lie in (0, 1), got {backtrack!r}")
        growth = check_positive("growth", growth)
        if growth < 1:
            raise ValueError(f"growth must be >= 1, got {growth!r}")
        if reset not in (0, 1, 2) or isinstance(reset, bool):
            raise ValueError(f"reset must be 0, 1 or 2, got {reset!r}")
        max_backtracks = check_int("max_backtracks", max_backtracks, minimum=0)
        if max_lr is not None:
            max_lr = check_positive("max_lr", max_lr)
        if batches_per_epoch is not None:
            batches_per_epoch = check_positive("batches_per_epoch", batches_per_epoch)
        eval_cost = check_positive("eval_cost", eval_cost, allow_zero=True)
        self.c, self.backtrack, self.growth, self.reset_option = c, backtrack, growth, reset
        self.max_backtracks, self.max_lr = max_backtracks, max_lr
        self.batches_per_epoch, self.eval_cost = batches_per_epoch, eval_cost
        self._set_config(
            c=c,
            backtrack=backtrack,
            growth=growth,
            reset=reset,
            max_backtracks=max_backtracks,
            max_lr=max_lr,
            batches_per_epoch=batches_per_epoch,
            eval_cost=eval_cost,
        )
        self._init_state(math.nan)

    def _init_state(self, base_lr: float) -> None:
        self.base = base_lr
        self.step_size = base_lr
        self.extra_evals = 0
        self.skipped = 0
        self.steps = 0
        #: Per inner step of the last interval: (loss, new loss, decrease, accepted step).
        self.last_checks: list[tuple[float, float, float, float]] = []

    @property
    def extra_steps(self) -> int:
        """Extra loss evaluations charged at ``eval_cost`` inner steps each (rounded)."""
        return round(self.extra_evals * self.eval_cost)

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """Return ``[0, max_lr]``: backtracking only shrinks the step; ``max_lr`` caps it."""
        return (0.0, math.inf if self.max_lr is None else self.max_lr)

    # -- protocol --------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        if self.max_lr is not None:
            base_lr = min(base_lr, self.max_lr)
        self._init_state(base_lr)
        return base_lr

    def _step(self, signal: TrainingSignal) -> float:
        return self._lr  # the step size moves inside advance()

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one interval, line-searching the step size of every inner step."""
        if not self.base_lrs:
            raise RuntimeError("StochasticLineSearch.advance() called before reset(base_lr)")
        task = require_gradient_task(driver.task, "sls")
        cap = lr_cap(driver)
        if self.max_lr is not None:
            cap = min(cap, self.max_lr)

        def train(n_steps: int, applied_lr: float) -> StepStats:
            return self._train(task, n_steps, cap)

        sig, info = driver.advance(self._lr, train=train)
        self._lr = self.step_size
        return sig, info

    def _growth_factor(self, task: GradientTask) -> float:
        if self.reset_option != 1:
            return 1.0
        n_b = self.batches_per_epoch
        if n_b is None:
            n_b = task.batches_per_epoch() or 1.0
        return float(self.growth ** (1.0 / n_b))

    def _train(self, task: GradientTask, n_steps: int, cap: float) -> StepStats:
        rec = StepRecorder(n_steps)
        grow = self._growth_factor(task)
        self.last_checks = []
        task.plan_steps(n_steps)  # the minibatches and noise train(n_steps) would draw
        for _ in range(n_steps):
            batch = task.sample_minibatch()
            loss, grads = task.minibatch_gradients(batch)
            noise = task.gradient_noise()
            rec.loss(loss)
            if task.is_diverged(loss):
                rec.diverged = True
                break
            if self.reset_option == 0:
                eta = self.base
            else:
                eta = self.step_size * grow
            eta = min(eta, cap)
            origin = task.get_parameters()
            g2 = sum(float(np.vdot(g, g)) for g in grads)
            accepted = None
            for _trial in range(self.max_backtracks + 1):
                res = task.apply_update(grads, [eta] * len(grads))
                new_loss = task.minibatch_loss(batch)
                if noise is not None:  # the linear noise term of the objective stepped on
                    new_loss += sum(
                        float(np.vdot(x, d)) for x, d in zip(noise, res.delta, strict=True)
                    )
                self.extra_evals += 1
                decrease = -sum(float(np.vdot(g, d)) for g, d in zip(grads, res.delta, strict=True))
                if armijo_holds(loss, new_loss, decrease, self.c):
                    accepted = res
                    self.last_checks.append((loss, new_loss, decrease, eta))
                    break
                task.set_parameters(origin)
                eta *= self.backtrack
            self.step_size = eta
            self.steps += 1
            if accepted is None:
                self.skipped += 1
                rec.update(g2, 0.0)
            else:
                rec.update(g2, accepted.update_sq, accepted.capped)
        if not rec.diverged and task.is_diverged():
            rec.diverged = True
        return rec.stats()

    # -- state -----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "base": encode_float(self.base),
            "step_size": encode_float(self.step_size),
            "extra_evals": self.extra_evals,
            "skipped": self.skipped,
            "steps": self.steps,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.base = decode_float(state["base"])
        self.step_size = decode_float(state["step_size"])
        self.extra_evals = int(state["extra_evals"])
        self.skipped = int(state["skipped"])
        self.steps = int(state["steps"])
