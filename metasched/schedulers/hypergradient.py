"""Hypergradient descent (SGD-HD): adapt the step size online by gradient descent on itself.

Baydin et al. (2018), "Online Learning Rate Adaptation with Hypergradient Descent". With the
update ``θ_t = θ_{t-1} - α_t g_t`` the derivative of the next loss with respect to the step
size is ``∂f(θ_t)/∂α_{t-1} = g_t · ∂θ_t/∂α_{t-1} = -g_t · g_{t-1}``, so gradient descent on
the step size gives

    α_t = α_{t-1} + β g_t · g_{t-1},    then    θ_t = θ_{t-1} - α_t g_t.

The seed (001) compares three granularities, all provided here:

* ``global``: one α for all parameters (the paper's SGD-HD);
* ``group``: one α per parameter block (NMF: ``W`` and ``H``), the dot product taken within
  the block;
* ``param``: one α per parameter entry, the elementwise product ``g_t ⊙ g_{t-1}``.

Projected tasks (NMF's ``max(0, .)``): the derivative of a projected step with respect to the
step size is ``-g`` where the projection (or the task's update cap) is inactive and ``0``
where it clamps, so ``g_{t-1}`` above is replaced by the task's reported sensitivity
(:class:`~metasched.inner_tasks.gradients.UpdateResult`); for unconstrained tasks this is
exactly the paper's rule.

The hypergradient LR β is *not* scale-free: ``g·g'`` has the units of a squared gradient, so
the right β depends on the task's loss and parameter scales. The paper (and its PyTorch code)
uses ``β = 0.001`` for SGD-HD on MNIST-scale logistic regression and MLPs with ``α_0 = 0.001``.
On the default NMF family (losses ~0.1-1, ``‖g‖² ~ 0.05-1`` at the start, step sizes ~1),
``β = 0.001`` changes α by well under 0.1 % per step — HD then behaves like a constant LR over
a 2,000-step run, which is what the paper's "recovers plain SGD as β → 0" predicts. The
default keeps the paper's value; pass a larger β (``0.1``-``1`` moves α on NMF within a few
hundred steps) to see adaptation. The step size is kept within ``[min_ratio, max_ratio]`` ×
the base LR and under the driver's stability cap.

Per-step gradient access comes from :class:`~metasched.inner_tasks.gradients.GradientTask`;
a task without it raises ``ValueError`` naming the task. HD costs one dot product per step:
:attr:`~HypergradientScheduler.extra_steps` is 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.gradients import GradientTask, require_gradient_task
from metasched.loop import Driver, IntervalInfo
from metasched.schedulers.base import Scheduler, check_choice, check_positive, register
from metasched.schedulers.state_codec import decode_tree, encode_tree
from metasched.schedulers.stepwise import StepRecorder, lr_cap
from metasched.signal import TrainingSignal

__all__ = ["GRANULARITIES", "HypergradientScheduler"]

#: Step-size granularities: one α, one per parameter block, one per parameter entry.
GRANULARITIES: tuple[str, ...] = ("global", "group", "param")


@register
class HypergradientScheduler(Scheduler):
    """SGD-HD: ``α_t = α_{t-1} + β g_t·g_{t-1}`` per step, globally, per block or per entry.

    The reported LR (:attr:`lr`, the trace's ``lr`` column) is the mean step size over all
    parameter entries at the start of each decision interval (for ``global`` simply α).

    Args:
        beta: hypergradient learning rate β (see the module docstring on its scale).
        granularity: ``"global"``, ``"group"`` or ``"param"``.
        min_ratio: step sizes never fall below ``min_ratio * base_lr`` (keeps them positive).
        max_ratio: optional ceiling ``max_ratio * base_lr`` (the driver's stability cap
            applies in any case).

    Example:
        >>> import numpy as np
        >>> from metasched.inner_tasks.nmf import NMFTask
        >>> from metasched.schedulers import run_schedule
        >>> task = NMFTask.from_matrix(np.ones((30, 20)), rank=2, batch_size=8)
        >>> s = HypergradientScheduler(beta=0.1, granularity="group")
        >>> tr = run_schedule(task, s, budget=200, interval=50)
        >>> len(s.alpha), bool(tr.final_loss < tr["train_loss"][0]), tr.extra_steps
        (2, True, 0)
    """

    name = "hypergradient"
    drives_training = True

    def __init__(
        self,
        *,
        beta: float = 0.001,
        granularity: str = "global",
        min_ratio: float = 1e-3,
        max_ratio: float | None = None,
    ) -> None:
        super().__init__()
        beta = check_positive("beta", beta, allow_zero=True)
        granularity = check_choice("granularity", granularity, GRANULARITIES)
        min_ratio = check_positive("min_ratio", min_ratio)
        if max_ratio is not None:
            max_ratio = check_positive("max_ratio", max_ratio)
            if max_ratio < min_ratio:
                raise ValueError(f"max_ratio ({max_ratio}) must not be below min_ratio")
        self.beta, self.granularity = beta, granularity
        self.min_ratio, self.max_ratio = min_ratio, max_ratio
        self._set_config(
            beta=beta, granularity=granularity, min_ratio=min_ratio, max_ratio=max_ratio
        )
        self._init_state(math.nan)

    def _init_state(self, base_lr: float) -> None:
        self.base = base_lr
        #: float (global), list of floats (group) or list of arrays (param); None until the
        #: first step, when the task's blocks are known.
        self.alpha: Any = None
        #: ∂θ/∂α of the previous step per block (None before the first step).
        self.prev_sens: list[np.ndarray] | None = None
        self.steps = 0
        self._sizes: list[int] = []

    def bounds(self, base_lr: float) -> tuple[float, float]:
        """``[min_ratio, max_ratio] * base_lr`` (the stability cap may be lower still)."""
        hi = math.inf if self.max_ratio is None else self.max_ratio * base_lr
        return (self.min_ratio * base_lr, hi)

    # -- protocol --------------------------------------------------------------------------
    def _reset(self, base_lr: float) -> float:
        self._init_state(base_lr)
        return base_lr

    def _step(self, signal: TrainingSignal) -> float:
        return self._lr  # α moves inside advance(), one inner step at a time

    def mean_alpha(self) -> float:
        """Mean step size over all parameter entries (α itself for ``global``)."""
        if self.alpha is None:
            return self._lr
        if self.granularity == "global":
            return float(self.alpha)
        if self.granularity == "group":
            sizes = [float(s) for s in self._sizes]
            return float(np.dot(self.alpha, sizes) / sum(sizes))
        total = sum(float(a.sum()) for a in self.alpha)
        return total / sum(a.size for a in self.alpha)

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one interval, updating the step size(s) before every inner step."""
        if not self.base_lrs:
            raise RuntimeError("HypergradientScheduler.advance() called before reset(base_lr)")
        task = require_gradient_task(driver.task, "hypergradient")
        if self.alpha is None:
            self._init_alpha(task, self._lr)
        cap = lr_cap(driver)

        def train(n_steps: int, applied_lr: float) -> StepStats:
            return self._train(task, n_steps, cap)

        sig, info = driver.advance(self._lr, train=train)
        self._lr = self.mean_alpha()
        return sig, info

    def _init_alpha(self, task: GradientTask, lr: float) -> None:
        shapes = [shape for _, shape in task.parameter_blocks()]
        self._sizes = [int(np.prod(s)) for s in shapes]
        if self.granularity == "global":
            self.alpha = float(lr)
        elif self.granularity == "group":
            self.alpha = [float(lr)] * len(shapes)
        else:
            self.alpha = [np.full(s, float(lr)) for s in shapes]

    def _clamp(self, cap: float) -> None:
        hi = cap if self.max_ratio is None else min(cap, self.max_ratio * self.base)
        lo = min(self.min_ratio * self.base, hi)
        if self.granularity == "global":
            self.alpha = min(max(self.alpha, lo), hi)
        elif self.granularity == "group":
            self.alpha = [min(max(a, lo), hi) for a in self.alpha]
        else:
            for a in self.alpha:
                np.clip(a, lo, hi, out=a)

    def _hyper_step(self, grads: list[np.ndarray]) -> None:
        """``α <- α - β ∂f_t/∂α`` with ``∂f_t/∂α = g_t · sens_{t-1}`` at the granularity."""
        sens, beta = self.prev_sens, self.beta
        if sens is None or beta == 0:
            return
        if self.granularity == "global":
            h = sum(float(np.vdot(g, s)) for g, s in zip(grads, sens, strict=True))
            self.alpha = self.alpha - beta * h
        elif self.granularity == "group":
            self.alpha = [
                a - beta * float(np.vdot(g, s))
                for a, g, s in zip(self.alpha, grads, sens, strict=True)
            ]
        else:
            for a, g, s in zip(self.alpha, grads, sens, strict=True):
                a -= beta * (g * s)

    def _train(self, task: GradientTask, n_steps: int, cap: float) -> StepStats:
        rec = StepRecorder(n_steps)
        self._clamp(cap)
        n_blocks = len(self._sizes)
        task.plan_steps(n_steps)  # the minibatches and noise train(n_steps) would draw
        for _ in range(n_steps):
            batch = task.sample_minibatch()
            loss, grads = task.minibatch_gradients(batch)
            rec.loss(loss)
            if task.is_diverged(loss):
                rec.diverged = True
                break
            self._hyper_step(grads)
            self._clamp(cap)
            if self.granularity == "global":
                steps = [self.alpha] * n_blocks
            else:
                steps = list(self.alpha)
            res = task.apply_update(grads, steps)
            self.prev_sens = res.sensitivity
            self.steps += 1
            g2 = sum(float(np.vdot(g, g)) for g in grads)
            rec.update(g2, res.update_sq, res.capped)
        if not rec.diverged and task.is_diverged():
            rec.diverged = True
        return rec.stats()

    # -- state -----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return encode_tree(
            {
                "base": self.base,
                "alpha": self.alpha,
                "prev_sens": self.prev_sens,
                "steps": self.steps,
                "sizes": self._sizes,
            }
        )

    def _set_state(self, state: dict[str, Any]) -> None:
        st = decode_tree(state)
        self.base = float(st["base"])
        self.alpha = st["alpha"]
        self.prev_sens = st["prev_sens"]
        self.steps = int(st["steps"])
        self._sizes = [int(x) for x in st["sizes"]]
