"""LR-free optimizers users pick instead of a schedule, run as step-taking schedulers.

Three published optimizers, from their own PyPI packages (the ``peers`` extra:
``pip install 'metasched[peers]'``), each with the package's defaults and documented LR
convention:

* ``schedulefree``: schedule-free SGD (Defazio et al. 2024, "The Road Less Scheduled";
  ``schedulefree.SGDScheduleFree``). It has an LR, and the package's README asks for one
  "10x-50x larger than classical rates": the optimizer's LR is ``lr_scale * base_lr``
  (``lr_scale`` 10 by default, the low end of that range), so with the task's reference LR
  as ``base_lr`` it is the documented starting point and tuning ``base_lr`` tunes it like
  any schedule's peak LR.
* ``prodigy``: Prodigy (Mishchenko & Defazio 2024; ``prodigyopt.Prodigy``), an Adam whose
  step size ``d`` is estimated online; ``lr = 1.0`` is a multiplier of that estimate, as the
  package recommends. ``base_lr`` is not used.
* ``dadapt``: D-Adaptation SGD (Defazio & Mishchenko 2023; ``dadaptation.DAdaptSGD``), SGD
  whose step size ``d`` is estimated online; ``lr = 1.0`` likewise. ``base_lr`` is not used.

How they run: through the task's
:class:`~metasched.inner_tasks.gradients.GradientTask` interface, like hypergradient descent
and line search. The scheduler keeps the parameters as torch tensors owned by the package's
optimizer; every inner step it draws the task's minibatch (and gradient noise: the same
stream ``train`` would draw, see ``plan_steps``), hands the task's gradient to the optimizer
as ``.grad``, calls ``optimizer.step()`` and writes the parameters back into the task. The
task's own momentum and weight decay are not applied by the optimizer (its gradient already
includes weight decay). The reported LR (trace column ``lr``) is the optimizer's effective
step size: ``d * lr`` for Prodigy and D-Adaptation, the LR for schedule-free SGD. The
driver's stability cap does not bind them (they choose their own steps); a decision whose
reported LR exceeds the cap still counts in ``clip_count``.

Evaluation point of schedule-free SGD: the optimizer computes gradients at ``y`` and
returns the averaged iterate ``x`` in ``optimizer.eval()`` mode. Between decision intervals
the optimizer is in eval mode and the task holds ``x``, so the task's ``evaluate()`` — the
signal's validation loss and the run's final loss — measures ``x``; each interval switches to
``train()`` (``y``) before stepping.

Projected tasks (NMF's ``max(0, .)``): Prodigy and D-Adaptation run, with the parameters
projected after each optimizer step (their step-size estimates read the iterate and the
initial point, so they see the projected iterate consistently). Schedule-free SGD does not:
it stores only ``y`` and ``z`` and evaluates at ``x = y + (1 - 1/β)(z - y)``, an
extrapolation, so projecting its iterates neither keeps ``x`` feasible nor leaves its
average intact; on such a task it raises ``ValueError``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, ClassVar

import numpy as np
import torch

from metasched.errors import ConfigError, MissingDependencyError
from metasched.inner_tasks.base import StepStats
from metasched.inner_tasks.gradients import GradientTask, require_gradient_task
from metasched.loop import Driver, IntervalInfo
from metasched.schedulers.base import Scheduler, check_int, check_positive, register
from metasched.schedulers.state_codec import decode_tree, encode_tree
from metasched.schedulers.stepwise import StepRecorder
from metasched.signal import TrainingSignal

__all__ = ["DAdaptSGDPeer", "ProdigyPeer", "ScheduleFreeSGDPeer", "load_optimizer_class"]


def load_optimizer_class(module: str, cls: str, scheduler: str) -> type[torch.optim.Optimizer]:
    """Import ``module.cls``; a missing package raises an error naming the ``peers`` extra."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"scheduler {scheduler!r} needs the {module!r} package: "
            "pip install 'metasched[peers]'"
        ) from None
    return getattr(mod, cls)


class _Peer(Scheduler):
    """A package optimizer taking every inner step of a task (not registered itself)."""

    drives_training = True
    #: The optimizer picks its own step sizes (the applied LR is ignored), so a bound
    #: measured on the task's SGD neither applies nor is paid for (see Run).
    own_step_size: ClassVar[bool] = True
    #: Whether the optimizer stays meaningful with a projection after each step.
    runs_projected: ClassVar[bool] = True
    #: ``(module, class)`` of the package optimizer.
    optimizer_path: ClassVar[tuple[str, str]]

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._opt_cls = load_optimizer_class(*self.optimizer_path, self.name)
        self._options = options
        self._set_config(**options)
        self._init_state(math.nan)

    def _init_state(self, base_lr: float) -> None:
        self.base = base_lr
        self.steps = 0
        self._params: list[torch.Tensor] | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None

    # -- hooks -------------------------------------------------------------------------------
    def _optimizer_kwargs(self, base_lr: float) -> dict[str, Any]:
        """Keyword arguments of the package optimizer."""
        return dict(self._options)

    def _effective_lr(self) -> float:
        """Return the optimizer's current step size (what the trace reports as the LR)."""
        group = self._opt.param_groups[0] if self._opt is not None else None
        if group is None:
            return self._initial_lr(self.base)
        return float(group["d"]) * float(group["lr"])

    def _initial_lr(self, base_lr: float) -> float:
        opts = self._optimizer_kwargs(base_lr)
        return float(opts.get("d0", 1e-6)) * float(opts.get("lr", 1.0))

    def _to_train_mode(self) -> None:
        """Put the optimizer's parameters at the point gradients are taken."""

    def _to_eval_mode(self) -> None:
        """Put the optimizer's parameters at the point the task is evaluated."""

    # -- protocol ----------------------------------------------------------------------------
    def bounds(self, base_lr: float) -> tuple[float, float]:
        """``[0, inf)``: the optimizers choose their own step sizes."""
        return (0.0, math.inf)

    def _reset(self, base_lr: float) -> float:
        self._init_state(base_lr)
        return self._initial_lr(base_lr)

    def _step(self, signal: TrainingSignal) -> float:
        return self._lr  # the optimizer moves inside advance()

    def advance(self, driver: Driver) -> tuple[TrainingSignal, IntervalInfo]:
        """Train one interval with the package optimizer taking every inner step."""
        if not self.base_lrs:
            raise RuntimeError(f"{type(self).__name__}.advance() called before reset(base_lr)")
        task = require_gradient_task(driver.task, self.name)
        if task.projected and not self.runs_projected:
            name = getattr(task, "name", type(task).__name__)
            raise ConfigError(
                f"scheduler {self.name!r} does not run on task {name!r}: its parameters are "
                "projected (e.g. NMF's non-negativity), which this optimizer's averaged "
                "iterate does not respect (see metasched.schedulers.peers)"
            )
        if self._opt is None:
            self._build(task)

        def train(n_steps: int, applied_lr: float) -> StepStats:
            return self._train(task, n_steps)

        sig, info = driver.advance(self._lr, train=train)
        self._lr = self._effective_lr()
        return sig, info

    def _build(self, task: GradientTask) -> None:
        if self._pending is not None:
            st = self._pending
            self._params = [t.clone().requires_grad_(True) for t in st["params"]]
        else:
            arrays = task.get_parameters()
            self._params = [torch.from_numpy(np.array(a)).requires_grad_(True) for a in arrays]
        self._opt = self._opt_cls(self._params, **self._optimizer_kwargs(self.base))
        if self._pending is not None:
            self._opt.load_state_dict(self._pending["opt"])
            self._pending = None
        self._to_eval_mode()

    def _write_back(self, task: GradientTask) -> None:
        assert self._params is not None
        task.set_parameters([p.detach().numpy() for p in self._params])

    def _train(self, task: GradientTask, n_steps: int) -> StepStats:
        assert self._params is not None and self._opt is not None
        params, opt = self._params, self._opt
        rec = StepRecorder(n_steps)
        self._to_train_mode()
        self._write_back(task)
        task.plan_steps(n_steps)  # the minibatches and noise train(n_steps) would draw
        for _ in range(n_steps):
            batch = task.sample_minibatch()
            loss, grads = task.minibatch_gradients(batch)
            rec.loss(loss)
            if task.is_diverged(loss):
                rec.diverged = True
                break
            before = [p.detach().clone() for p in params]
            for p, g in zip(params, grads, strict=True):
                p.grad = torch.from_numpy(np.array(g, dtype=p.detach().numpy().dtype))
            opt.step()
            with torch.no_grad():
                if task.projected:
                    task.project([p.detach().numpy() for p in params])
                u2 = sum(float((p - b).square().sum()) for p, b in zip(params, before, strict=True))
            self._write_back(task)
            self.steps += 1
            rec.update(sum(float(np.vdot(g, g)) for g in grads), u2)
        for p in params:
            p.grad = None
        self._to_eval_mode()
        self._write_back(task)
        if not rec.diverged and task.is_diverged():
            rec.diverged = True
        return rec.stats()

    # -- state -------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        if self._opt is not None:
            assert self._params is not None
            live: dict[str, Any] | None = {
                "params": [p.detach().clone() for p in self._params],
                "opt": self._opt.state_dict(),
            }
        else:
            live = self._pending
        return encode_tree({"base": self.base, "steps": self.steps, "live": live})

    def _set_state(self, state: dict[str, Any]) -> None:
        st = decode_tree(state)
        self._init_state(float(st["base"]))
        self.steps = int(st["steps"])
        self._pending = st["live"]


@register
class ScheduleFreeSGDPeer(_Peer):
    """Schedule-free SGD (``schedulefree.SGDScheduleFree``) at ``lr_scale * base_lr``.

    See the module docstring for the LR convention and the evaluation point. Does not run on
    projected tasks (NMF).

    Args:
        lr_scale: the optimizer's LR over ``base_lr`` (default 10, see the module docstring).
        momentum: the package's interpolation momentum β (default 0.9).
        warmup_steps: the package's linear warmup in steps (default 0).
        r: the package's polynomial averaging power (default 0.0).
        weight_lr_power: the package's averaging-weight power (default 2.0).
    """

    name = "schedulefree"
    runs_projected = False
    optimizer_path = ("schedulefree", "SGDScheduleFree")

    def __init__(
        self,
        *,
        lr_scale: float = 10.0,
        momentum: float = 0.9,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ) -> None:
        lr_scale = check_positive("lr_scale", lr_scale)
        momentum = check_positive("momentum", momentum)
        if momentum >= 1:
            raise ValueError(f"momentum must lie in (0, 1), got {momentum!r}")
        warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        r = check_positive("r", r, allow_zero=True)
        weight_lr_power = check_positive("weight_lr_power", weight_lr_power, allow_zero=True)
        super().__init__(
            lr_scale=lr_scale,
            momentum=momentum,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
        )

    def _optimizer_kwargs(self, base_lr: float) -> dict[str, Any]:
        opts = dict(self._options)
        return {"lr": opts.pop("lr_scale") * base_lr, "weight_decay": 0.0, **opts}

    def _initial_lr(self, base_lr: float) -> float:
        return self._options["lr_scale"] * base_lr

    def _effective_lr(self) -> float:
        if self._opt is None:
            return self._initial_lr(self.base)
        return float(self._opt.param_groups[0]["lr"])

    def _to_train_mode(self) -> None:
        if self._opt is not None:
            self._opt.train()

    def _to_eval_mode(self) -> None:
        if self._opt is not None:
            self._opt.eval()


@register
class ProdigyPeer(_Peer):
    """Prodigy (``prodigyopt.Prodigy``) with ``lr = 1.0`` as the multiplier of its estimate.

    Args:
        lr: multiplier of the estimated step size (default 1.0, the package's advice).
        beta1, beta2: Adam's moment coefficients (defaults 0.9, 0.999).
        d0: initial step-size estimate (default 1e-6).
        d_coef: coefficient of the estimate (default 1.0).
    """

    name = "prodigy"
    optimizer_path = ("prodigyopt", "Prodigy")

    def __init__(
        self,
        *,
        lr: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        d0: float = 1e-6,
        d_coef: float = 1.0,
    ) -> None:
        lr = check_positive("lr", lr)
        for key, beta in (("beta1", beta1), ("beta2", beta2)):
            if not (isinstance(beta, int | float) and 0.0 <= beta < 1.0):
                raise ValueError(f"{key} must lie in [0, 1), got {beta!r}")
        d0 = check_positive("d0", d0)
        d_coef = check_positive("d_coef", d_coef)
        super().__init__(lr=lr, beta1=float(beta1), beta2=float(beta2), d0=d0, d_coef=d_coef)

    def _optimizer_kwargs(self, base_lr: float) -> dict[str, Any]:
        o = self._options
        return {
            "lr": o["lr"],
            "betas": (o["beta1"], o["beta2"]),
            "d0": o["d0"],
            "d_coef": o["d_coef"],
            "weight_decay": 0.0,
        }


@register
class DAdaptSGDPeer(_Peer):
    """D-Adaptation SGD (``dadaptation.DAdaptSGD``) with ``lr = 1.0`` as the multiplier.

    Args:
        lr: multiplier of the estimated step size (default 1.0, the package's advice).
        momentum: the package's SGD momentum (default 0.0, the package's default).
        d0: initial step-size estimate (default 1e-6).
        growth_rate: cap on the estimate's growth factor per step (default ``None``:
            unbounded, the package's default).
    """

    name = "dadapt"
    optimizer_path = ("dadaptation", "DAdaptSGD")

    def __init__(
        self,
        *,
        lr: float = 1.0,
        momentum: float = 0.0,
        d0: float = 1e-6,
        growth_rate: float | None = None,
    ) -> None:
        lr = check_positive("lr", lr)
        if not (isinstance(momentum, int | float) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        d0 = check_positive("d0", d0)
        if growth_rate is not None:
            growth_rate = check_positive("growth_rate", growth_rate)
            if growth_rate <= 1.0:
                raise ValueError(f"growth_rate must be > 1, got {growth_rate!r}")
        super().__init__(lr=lr, momentum=float(momentum), d0=d0, growth_rate=growth_rate)

    def _optimizer_kwargs(self, base_lr: float) -> dict[str, Any]:
        o = self._options
        growth = math.inf if o["growth_rate"] is None else o["growth_rate"]
        return {**o, "growth_rate": growth, "weight_decay": 0.0}
