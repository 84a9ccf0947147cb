"""Optional capabilities of inner tasks: per-step gradient access and tunable hyperparameters.

:class:`~metasched.inner_tasks.base.InnerTask` only trains whole intervals at one LR. Some
schedulers need more:

* **Hypergradient descent** (SGD-HD) changes the step size after every step from the dot
  product of consecutive gradients, possibly one step size per parameter block or entry.
* **Stochastic line search** (SLS) evaluates the loss of the *same* minibatch at trial points
  before it commits to a step.

Both take the optimizer steps themselves through :class:`GradientTask`, a small interface a
task implements in addition to ``InnerTask``. One step of training through it is::

    batch = task.sample_minibatch()                  # advances the task's data stream
    loss, grads = task.minibatch_gradients(batch)    # advances its gradient-noise stream
    result = task.apply_update(grads, step_sizes)    # p <- P(p - s * g), per block

Design rules (what an implementation must guarantee):

* **Parameters** are a list of *blocks* (``parameter_blocks()`` gives their names and shapes;
  NMF has two, ``W`` and ``H``; a torch model one per tensor). Blocks are exchanged as numpy
  arrays — CPU torch tensors convert without a copy (``Tensor.numpy()`` /
  ``torch.from_numpy``) — so schedulers need no framework code.
* **Step sizes** per block are a float (one rate for the block) or an array of the block's
  shape (one rate per entry); :meth:`GradientTask.apply_update` takes one per block.
* **Gradients are of the minibatch loss**: ``minibatch_gradients(batch)`` returns the
  gradient of ``minibatch_loss(batch)`` with respect to every block (plus weight decay and the
  task's additive gradient noise, if it has them) — so ``⟨g, Δθ⟩`` is the first-order change
  of that loss, which line search and hypergradients rely on.
* **The update is the task's plain projected SGD step**: ``p <- P(p - s * M g)`` where ``P``
  is the task's projection (``max(0, .)`` for NMF, the identity for unconstrained models),
  ``M`` a fixed diagonal preconditioner the task's ``train`` uses (the identity for most
  tasks; NMF steps its row-local ``W`` rows ``b`` times further, see :mod:`~.nmf`), and any
  per-entry update cap the task applies in ``train``. The task's own momentum is *not*
  applied (HD and SLS are defined on plain SGD).
* **Determinism**: ``sample_minibatch`` draws from the same data stream as ``train`` and
  ``minibatch_gradients`` from the same gradient-noise stream (both are part of
  ``snapshot()``); ``minibatch_loss``, ``get_parameters``, ``set_parameters`` and
  ``apply_update`` draw nothing. A step through this interface at one scalar step size
  should equal ``train(1, step)`` (NMF guarantees it bit for bit), so restoring a snapshot
  and stepping again replays the same minibatches.
* **Same randomness as** ``train``: a scheduler that takes ``n`` steps through this
  interface first calls :meth:`GradientTask.plan_steps` with ``n``; the task then draws the
  minibatches and gradient noise of those steps exactly as ``train(n, lr)`` would (NMF draws
  an interval's noise in one block), so every scheduler on a paired problem — HD, SLS, the
  LR-free peers and the interval-at-a-time ones — sees the same noise stream.
* **The objective stepped on**: :meth:`GradientTask.gradient_noise` returns the additive
  noise ``ξ`` inside the last gradient, so a line search can test the objective the noisy
  step descends, ``f_i(θ) + ⟨ξ, θ⟩`` (see :mod:`~metasched.schedulers.sls`).
* **Constraints**: :attr:`GradientTask.projected` says whether ``P`` is not the identity
  and :meth:`GradientTask.project` applies it to parameter blocks an outside optimizer
  produced (the LR-free peers, :mod:`~metasched.schedulers.peers`).
* **Divergence** is judged by :meth:`GradientTask.is_diverged` with the same rule ``train``
  uses (a non-finite or exploding minibatch loss; a collapsed or non-finite parameter state).

:class:`HyperparameterTask` is the second, independent capability: optimizer
hyperparameters beyond the LR (momentum, weight decay) that population-based training may
set between intervals. Tasks without it are searched over the LR only.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "GradientTask",
    "HyperparameterTask",
    "StepSize",
    "UpdateResult",
    "require_gradient_task",
    "supports_gradients",
    "supports_hyperparameters",
]

#: A step size for one parameter block: one float, or an array of the block's shape.
StepSize = float | np.ndarray


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What :meth:`GradientTask.apply_update` did.

    Attributes:
        delta: per block, the change ``p_new - p_old`` actually applied (after projection
            and capping).
        sensitivity: per block, the derivative of ``p_new`` with respect to the step size of
            each entry: ``-M g`` where neither the projection nor the cap is active, ``0``
            where one of them clamps the entry. Hypergradient descent differentiates the
            next loss through it (for unconstrained tasks it is simply ``-g``).
        capped: number of entries the task's per-entry update cap limited.
    """

    delta: list[np.ndarray]
    sensitivity: list[np.ndarray]
    capped: int = 0

    @property
    def update_sq(self) -> float:
        """Squared norm of the applied update over all blocks."""
        return float(sum(np.vdot(d, d) for d in self.delta))


class GradientTask(abc.ABC):
    """Per-step access to minibatch losses, gradients and projected updates.

    A mixin for :class:`~metasched.inner_tasks.base.InnerTask` subclasses; see the module
    docstring for the guarantees an implementation gives.
    """

    #: Whether :meth:`apply_update` projects onto a constraint set (``P`` is not the identity).
    projected: ClassVar[bool] = False

    @abc.abstractmethod
    def parameter_blocks(self) -> list[tuple[str, tuple[int, ...]]]:
        """Return ``(name, shape)`` of every parameter block, in a fixed order."""

    @abc.abstractmethod
    def get_parameters(self) -> list[np.ndarray]:
        """Return a copy of every parameter block."""

    @abc.abstractmethod
    def set_parameters(self, params: Sequence[np.ndarray]) -> None:
        """Overwrite every parameter block (shapes as in :meth:`parameter_blocks`)."""

    @abc.abstractmethod
    def sample_minibatch(self) -> Any:
        """Draw the next training minibatch from the task's data stream (opaque object)."""

    @abc.abstractmethod
    def minibatch_loss(self, batch: Any) -> float:
        """Return the training loss of ``batch`` at the current parameters (draws nothing)."""

    @abc.abstractmethod
    def minibatch_gradients(self, batch: Any) -> tuple[float, list[np.ndarray]]:
        """Return the loss of ``batch`` and the stochastic gradient of every block.

        The gradient is of :meth:`minibatch_loss` (plus weight decay, if the task has it),
        with the task's gradient noise, drawn from its noise stream — the noise training
        would add.
        """

    @abc.abstractmethod
    def apply_update(
        self, grads: Sequence[np.ndarray], step_sizes: Sequence[StepSize]
    ) -> UpdateResult:
        """Apply ``p <- P(p - s * M g)`` to every block (``s`` a float or per-entry array)."""

    def plan_steps(self, n_steps: int) -> None:  # noqa: B027 - optional hook
        """Announce that the next ``n_steps`` steps go through this interface.

        A task whose ``train(n)`` draws the randomness of ``n`` steps in one block (NMF's
        gradient noise) draws it the same way here, so those steps see exactly the
        minibatches and noise ``train(n_steps, lr)`` would. The default does nothing (the
        task's per-step draws already match).
        """

    def gradient_noise(self) -> list[np.ndarray] | None:
        """Return the additive noise inside the last :meth:`minibatch_gradients` result.

        ``None`` (the default) when the task adds none. With noise ``ξ`` the gradient is that
        of the minibatch objective ``f_i(θ) + ⟨ξ, θ⟩``.
        """
        return None

    def project(self, params: list[np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Project parameter blocks onto the task's feasible set, in place (``P`` above).

        The identity by default; NMF clamps at zero.
        """

    def batches_per_epoch(self) -> float | None:
        """Return training-set size over minibatch size (``None`` if the task has no epochs).

        Line search's step-size reset multiplies the step by ``growth ** (1 / this)``.
        """
        return None

    @abc.abstractmethod
    def is_diverged(self, loss: float | None = None) -> bool:
        """Whether training has diverged by the task's rule.

        With ``loss`` (a minibatch loss), judges that loss (non-finite or exploding); without
        it, judges the parameter state (collapsed or non-finite parameters).
        """


class HyperparameterTask(abc.ABC):
    """Optimizer hyperparameters beyond the LR that a search scheduler may change.

    Values are not part of the task's snapshot: a scheduler that keeps several members on
    one task (PBT) sets each member's values before training it.
    """

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, float]:
        """Return the current value of every tunable hyperparameter (e.g. ``momentum``)."""

    @abc.abstractmethod
    def set_hyperparameters(self, **values: float) -> None:
        """Set some hyperparameters; unknown names or invalid values raise ``ValueError``."""


def supports_gradients(task: Any) -> bool:
    """Whether ``task`` implements :class:`GradientTask`."""
    return isinstance(task, GradientTask)


def supports_hyperparameters(task: Any) -> bool:
    """Whether ``task`` implements :class:`HyperparameterTask`."""
    return isinstance(task, HyperparameterTask)


def require_gradient_task(task: Any, who: str) -> GradientTask:
    """Return ``task`` if it implements :class:`GradientTask`, else raise ``ValueError``.

    Args:
        task: the inner task.
        who: the scheduler that needs it (named in the message).
    """
    if not isinstance(task, GradientTask):
        name = getattr(task, "name", type(task).__name__)
        raise ValueError(
            f"{who} needs per-step gradient access, but task {name!r} "
            f"({type(task).__name__}) does not implement "
            "metasched.inner_tasks.gradients.GradientTask"
        )
    return task
