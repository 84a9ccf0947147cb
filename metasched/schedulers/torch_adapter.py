"""Any metasched scheduler as a drop-in ``torch.optim.lr_scheduler.LRScheduler``.

Example:
    >>> import torch
    >>> from metasched.schedulers import TorchLRScheduler
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> sched = TorchLRScheduler(opt, "greedy", patience=2)
    >>> for _ in range(4):
    ...     opt.zero_grad()
    ...     loss = model(torch.ones(2, 3)).pow(2).mean()
    ...     loss.backward()
    ...     opt.step()
    ...     sched.step(loss)
    >>> round(sched.get_last_lr()[0], 6)  # three straight improvements: 0.1 / 0.95
    0.105263
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from metasched.errors import ConfigError
from metasched.schedulers.base import (
    Scheduler,
    check_int,
    decode_float,
    encode_float,
    make_scheduler,
)
from metasched.schedulers.loop_bound import ClosureForkTest
from metasched.signal import TrainingSignal

__all__ = ["LOOP_CLIP_MODES", "TorchLRScheduler"]

#: Clip modes of a plain loop: no analytic bound exists there, so ``"auto"`` is ``"measured"``.
LOOP_CLIP_MODES: tuple[str, ...] = ("none", "measured", "auto")
#: Clip factor on the measured bound (as :data:`metasched.loop.DEFAULT_KAPPA_MEASURED`).
_KAPPA_MEASURED = 0.707
#: As :data:`metasched.loop.RECHECK_FRACTION`: an LR ramp above this fraction of the bound,
#: beyond every LR applied since the last measurement, is re-measured first.
RECHECK_FRACTION = 0.25


def _momentum_horizon(optimizer: Optimizer) -> int:
    """Return ``ceil(1 / (1 - beta))`` of the first group's momentum (1 without momentum)."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:  # not an optimizer: torch's constructor below says so
        return 1
    group = groups[0]
    beta = group.get("momentum", 0.0)
    if "betas" in group:
        beta = group["betas"][0]
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        return 1
    return math.ceil(1.0 / (1.0 - beta)) if 0.0 <= beta < 1.0 else 1


#: A loss as recorded between decisions: a Python float, or a detached 0-d tensor that is
#: read (one device-to-host copy for the whole interval) only when the scheduler decides.
_Scalar = float | torch.Tensor

#: Per-tensor gradient norms kept before they are folded into one device scalar (bounds the
#: memory of long intervals on models with many parameter tensors).
_FOLD_AT = 4096


def _as_scalar(x: Any, what: str) -> _Scalar:
    """Return ``x`` as a float, or as a detached 0-d tensor without reading its value."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{what} must be a scalar, got a tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            return float(x.item())  # integer losses are unusual: no need to defer them
        t = x.detach()
        return t if t.dim() == 0 else t.reshape(())
    try:
        return float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number or a scalar tensor, got {x!r}") from None


def _to_floats(values: list[_Scalar]) -> list[float]:
    """Read recorded scalars as floats, with one host transfer for all the tensors."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [float(v) for v in values]
    try:
        stacked = torch.stack(tensors)  # one device (the usual case): one kernel
    except RuntimeError:  # tensors on several devices: gather them on the first one
        stacked = torch.stack([t.to(tensors[0].device) for t in tensors])
    read = iter(stacked.tolist())
    return [float(next(read)) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _gradient_norms(optimizer: Optimizer) -> list[torch.Tensor]:
    """Return the L2 norm of every gradient, as tensors on their devices (no host sync).

    One fused kernel (``torch._foreach_norm``) over all gradients instead of one
    ``.item()`` per parameter tensor; the global norm is formed from these at the decision.
    """
    grads = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is not None:
                grads.append(g.coalesce().values() if g.is_sparse else g)
    if not grads:
        return []
    with torch.no_grad():
        return list(torch._foreach_norm(grads))


def _sum_of_squares(norms: list[torch.Tensor]) -> torch.Tensor | float:
    """Return the sum of the squared norms, on the device of the first (no host read)."""
    if not norms:
        return 0.0
    with torch.no_grad():
        try:  # the usual case, one device: one kernel for the whole interval
            stacked = torch.stack(norms)
        except RuntimeError:  # gradients on several devices
            stacked = torch.stack([t.to(norms[0].device) for t in norms])
        return stacked.float().square().sum()


class TorchLRScheduler(LRScheduler):
    """Wrap a :class:`~metasched.schedulers.base.Scheduler` as a torch LR scheduler.

    Call :meth:`step` once per optimizer step, after ``optimizer.step()``, with the
    minibatch loss (``step(loss)``; loss-driven schedulers such as GreedyLR require it,
    open-loop schedules accept ``step()``). Every ``interval`` calls the wrapped scheduler
    sees one :class:`~metasched.signal.TrainingSignal` — mean loss over the interval, the
    per-step losses, the gradient norm when the scheduler reads it — and the new LR is
    written to every parameter group. Groups keep their ratios to the first group's base
    LR, except under schedulers with per-group state (GreedyLR's per-group bounds).

    Args:
        optimizer: any torch optimizer (several parameter groups are fine).
        scheduler: a Scheduler instance or a registry name (``"greedy"``, ``"cosine"``, ...).
        total_steps: length of the run in optimizer steps. Schedules placed relative to
            the run (cosine, linear, onecycle, step with fractional milestones, a learned
            policy, ...; those with ``needs_budget``) require it and say so here, at
            construction; schedules in step counts (constant, step with int milestones,
            exponential with ``gamma``, cyclic with an int ``half_cycle``) and reactive ones
            (greedy) run without it, like torch's ``StepLR`` or ``ExponentialLR``.
        interval: optimizer steps per scheduler decision (default: the scheduler's own
            ``decision_interval``, else 1; for a learned policy given ``total_steps``,
            ``total_steps`` divided by the decisions per episode of its training env, so
            it makes as many decisions per run as it was trained to).
        grad_norm_every: for schedulers that read the gradient norm, measure it on every
            k-th optimizer step of each interval (its first step included) instead of on
            all of them (default 1: every step, as the envs do). The norm is one pass over
            all gradients; on small models whose steps take about a millisecond on a CPU it
            costs a few percent of a step, and ``grad_norm_every=5`` cuts that fivefold for
            an RMS estimated from every fifth step.
        clip: ``"none"`` (default) or ``"measured"`` / ``"auto"`` (the same here: a plain loop
            has no analytic bound): every ``bound_every`` decisions, measure the stability
            bound of the user's model and optimizer by a fork test
            (:class:`~metasched.schedulers.loop_bound.ClosureForkTest`) on the loop's recent
            minibatches, cap the LR at ``kappa`` x that bound and pass the bound to the
            scheduler in its signal (a learned policy's ``log_lr_over_bound`` feature).
            Needs ``loss_fn`` and ``step(loss, batch=batch)``.
        loss_fn: ``loss_fn(batch) -> loss tensor`` of one minibatch (with a graph to the
            parameters), like a torch optimizer's ``closure``; required with ``clip``.
        model: the model, when it has buffers (batch-norm statistics) the fork test must
            restore; parameters and optimizer state are restored either way.
        kappa: clip factor on the measured bound (default 0.707, the validated one).
        bound_every: decisions between measurements (default 10; warm-started).
        fork_steps: optimizer steps per fork = minibatches recorded (default: a quarter of
            the decision interval, at least 5, as the validated estimator, and at least
            ``1 / (1 - beta)`` for momentum ``beta`` (SGD's ``momentum``, Adam's first
            beta): momentum makes instability grow slowly, and 5-step forks missed it at
            ``beta = 0.9`` on 2 of 12 linear-regression seeds, 10-step forks on none).
        **kwargs: hyperparameters when ``scheduler`` is a name.

    The bound's cost, in optimizer steps (forks plus reference forward passes), is
    :attr:`bound_cost_steps`; :attr:`clip_count` counts the decisions whose LR was capped.

    Example (an always-doubling schedule stays stable under ``clip="measured"``):
        >>> import torch
        >>> from metasched.schedulers import TorchLRScheduler
        >>> from metasched.schedulers.base import Scheduler
        >>> class Doubling(Scheduler):
        ...     name = "doubling-example"
        ...     def _reset(self, base_lr):
        ...         return base_lr
        ...     def _step(self, signal):
        ...         return 2 * self.lr
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(256, 8, generator=g), torch.randn(256, 1, generator=g)
        >>> model = torch.nn.Linear(8, 1)
        >>> with torch.no_grad():
        ...     model.weight.copy_(torch.randn(1, 8, generator=g))
        ...     model.bias.zero_()  # doctest: +ELLIPSIS
        Parameter containing:...
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> def loss_fn(batch):
        ...     return (model(batch[0]) - batch[1]).pow(2).mean()
        >>> sched = TorchLRScheduler(opt, Doubling(), interval=20, clip="measured",
        ...                          loss_fn=loss_fn)
        >>> for t in range(400):
        ...     i = (t * 16) % 256
        ...     batch = (x[i : i + 16], y[i : i + 16])
        ...     opt.zero_grad()
        ...     loss = loss_fn(batch)
        ...     loss.backward()
        ...     opt.step()
        ...     sched.step(loss, batch=batch)
        >>> bool(torch.isfinite(loss)) and float(loss.detach()) < 5, sched.clip_count > 0
        (True, True)
        >>> sched.bound_cost_steps > 0
        True

    Schedulers that drive training themselves (``probe``, ``pbt``, ``autolrs``, ``sls``,
    ``hypergradient``) cannot run inside a plain loop; use
    :func:`metasched.schedulers.run_schedule` on an inner task. The LR-free peers
    (``prodigy``, ``dadapt``, ``schedulefree``) are optimizers: use the package's optimizer.

    The gradient norm of the signal is, as in the envs' inner tasks, the root mean square
    over the interval's steps of the global L2 norm of all gradients (read after each
    ``optimizer.step()``).

    Cost per optimizer step: the loss is kept as given (a tensor is not read), and when the
    scheduler reads the gradient norm it is one fused reduction over all gradients
    (``torch._foreach_norm``) that stays on the device. Both are read with one
    device-to-host transfer per decision, so with ``interval=N`` the adapter adds no host
    synchronisation to N - 1 of N steps. It never changes torch's thread settings.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: Scheduler | str,
        *,
        total_steps: int | None = None,
        interval: int | None = None,
        grad_norm_every: int = 1,
        clip: str = "none",
        loss_fn: Callable[[Any], torch.Tensor] | None = None,
        model: torch.nn.Module | None = None,
        kappa: float = _KAPPA_MEASURED,
        bound_every: int = 10,
        fork_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        if clip not in LOOP_CLIP_MODES:
            hint = (
                " (a plain torch loop has no analytic bound: use 'measured' or 'auto')"
                if clip in ("deterministic", "noise_aware")
                else ""
            )
            raise ConfigError(
                f"clip must be one of {', '.join(LOOP_CLIP_MODES)}, got {clip!r}{hint}"
            )
        if clip != "none" and loss_fn is None:
            raise ConfigError(
                f"clip={clip!r} measures the stability bound with a fork test: pass "
                "loss_fn=<function of a minibatch returning its loss>"
            )
        if not (isinstance(kappa, int | float) and math.isfinite(kappa) and kappa > 0):
            raise ConfigError(f"kappa must be a positive finite number, got {kappa!r}")
        if isinstance(scheduler, str):
            scheduler = make_scheduler(scheduler, **kwargs)
        elif kwargs:
            raise ConfigError(
                f"hyperparameters {sorted(kwargs)} are only accepted with a scheduler name"
            )
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a Scheduler or a name, got {scheduler!r}")
        if scheduler.drives_training:
            optimizer_path = getattr(scheduler, "optimizer_path", None)
            if optimizer_path:  # an LR-free optimizer, not a schedule
                raise ConfigError(
                    f"{scheduler.name!r} is the optimizer {'.'.join(optimizer_path)}, not an "
                    "LR schedule: use that optimizer in your loop (or "
                    "metasched.schedulers.run_schedule on an inner task)"
                )
            raise ConfigError(
                f"{scheduler.name!r} drives training itself (forks, a population or its own "
                "update rule) and cannot run inside a plain loop; use "
                "metasched.schedulers.run_schedule on an inner task"
            )
        if total_steps is not None:
            total_steps = check_int("total_steps", total_steps, minimum=1)
        elif scheduler.needs_budget:
            hint = scheduler.budget_free_hint
            raise ConfigError(
                f"scheduler {scheduler.name!r} ({scheduler!r}) places its schedule over the "
                "length of the run: pass total_steps=<number of optimizer steps>"
                + (f", or give {hint}" if hint else "")
            )
        trained_clip = getattr(scheduler, "trained_clip", "none")
        if clip == "none" and trained_clip != "none":
            warnings.warn(
                f"{scheduler!r} was trained with its LR clipped at a stability bound "
                f"(clip={trained_clip!r}) and sees log(lr / bound) among its features; "
                "without clip='auto' (and loss_fn=...) it runs outside what it was trained on "
                "and can diverge",
                UserWarning,
                stacklevel=2,
            )
        self.scheduler = scheduler
        self.total_steps = total_steps
        if interval is None:
            interval = scheduler.decision_interval or 1
            per_run = getattr(scheduler, "decisions_per_run", None)
            if per_run and total_steps is not None:
                # a learned policy decides as often per run as in its env (every family's
                # env has 20 decisions per episode), whatever the run's length
                interval = max(1, round(total_steps / per_run))
        self.interval = check_int("interval", interval, minimum=1)
        self.grad_norm_every = check_int("grad_norm_every", grad_norm_every, minimum=1)
        self.clip = clip
        self.kappa = float(kappa)
        self.bound_every = check_int("bound_every", bound_every, minimum=1)
        if fork_steps is None:
            fork_steps = max(5, self.interval // 4, _momentum_horizon(optimizer))
        self.fork_steps = check_int("fork_steps", fork_steps, minimum=1)
        self._fork = (
            None if clip == "none" or loss_fn is None
            else ClosureForkTest(optimizer, loss_fn, model=model)
        )
        self._batches: deque[Any] = deque(maxlen=self.fork_steps)
        self._decisions = 0
        self._tested_lr = 0.0  # highest LR applied since the last measurement
        #: the latest measured bound on the first group's LR (None before the first)
        self.lr_bound: float | None = None
        self.clip_count = 0
        self.inner_steps = 0
        self._pending: list[_Scalar] = []
        self._pending_val: _Scalar | None = None
        self._grad_sq = 0.0  # sum of squared global gradient norms already read (resumed)
        self._grad_norms: list[torch.Tensor] = []  # per-tensor norms of the steps, unread
        self._grad_folded: _Scalar = 0.0  # sum of squares of earlier norms, on the device
        self._grad_n = 0
        self._initialised = False
        super().__init__(optimizer)

    # -- torch API -------------------------------------------------------------------------
    def get_lr(self) -> list[float]:
        """Return the current LR of every parameter group."""
        return list(self.scheduler.lrs)

    @property
    def bound_cost_steps(self) -> float:
        """Optimizer steps spent measuring the stability bound (0 without ``clip``)."""
        return 0.0 if self._fork is None else self._fork.cost_steps

    def step(  # type: ignore[override]
        self, loss: Any = None, *, val_loss: Any = None, batch: Any = None
    ) -> None:
        """Record one optimizer step (with its loss); every ``interval`` steps update the LR.

        With ``clip``, pass the step's minibatch as ``batch`` (the fork test reruns the
        recent ones through ``loss_fn``).
        """
        if not self._initialised:  # torch's constructor calls step() once
            self.scheduler.reset([float(b) for b in self.base_lrs])
            self._initialised = True
            self._apply()
            return
        if loss is None and val_loss is None and self.scheduler.needs_loss:
            raise ValueError(
                f"scheduler {self.scheduler.name!r} reads the loss: call step(loss) "
                "after each optimizer step"
            )
        if self._fork is not None:
            if batch is None:
                raise ValueError(
                    f"clip={self.clip!r} reruns recent minibatches: call step(loss, batch=batch)"
                )
            self._batches.append(batch)
        if loss is not None:
            self._pending.append(_as_scalar(loss, "loss"))
        if val_loss is not None:
            self._pending_val = _as_scalar(val_loss, "val_loss")
        if (
            self.scheduler.needs_grad_norm
            and (self.inner_steps % self.interval) % self.grad_norm_every == 0
        ):
            self._grad_norms.extend(_gradient_norms(self.optimizer))
            self._grad_n += 1
            if len(self._grad_norms) >= _FOLD_AT:
                self._grad_folded = self._grad_folded + _sum_of_squares(self._grad_norms)
                self._grad_norms = []
        self.inner_steps += 1
        self.last_epoch = self.inner_steps
        self._step_count += 1
        n_since = self.inner_steps % self.interval
        if n_since == 0:
            self._decide(self.interval)

    def _read_pending(self) -> tuple[list[float], float | None, float]:
        """Return the interval's losses, validation loss and sum of squared gradient norms."""
        extra = [] if self._pending_val is None else [self._pending_val]
        squares = self._grad_folded + _sum_of_squares(self._grad_norms)
        values = _to_floats([*self._pending, squares, *extra])  # the one host read
        n = len(self._pending)
        val = values[n + 1] if extra else None
        return values[:n], val, self._grad_sq + values[n]

    def _decide(self, n: int) -> None:
        pending, val, grad_sq = self._read_pending()  # the one host sync of the interval
        losses = tuple(pending)
        train = sum(losses) / len(losses) if losses else math.nan
        if not losses and val is not None:
            train = val
        ups = sum(b > a for a, b in itertools.pairwise(losses))
        if self._fork is not None and self._batches and math.isfinite(train):
            if self.lr_bound is None or self._decisions % self.bound_every == 0:
                self.lr_bound = self._fork.measure(self._batches)
                self._tested_lr = float(self.optimizer.param_groups[0]["lr"])
        self._decisions += 1
        signal = TrainingSignal(
            step=self.inner_steps,
            budget=self.total_steps or 0,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            train_loss=train,
            val_loss=val,
            grad_norm=math.sqrt(grad_sq / self._grad_n) if self._grad_n else None,
            frac_increasing=ups / (len(losses) - 1) if len(losses) > 1 else None,
            diverged=not math.isfinite(train) and bool(losses),
            interval_steps=n,
            losses=losses,
            lr_bound=self.lr_bound,
        )
        self._pending, self._pending_val = [], None
        self._grad_sq, self._grad_norms, self._grad_folded, self._grad_n = 0.0, [], 0.0, 0
        self.scheduler.step(signal)
        self._apply()

    def _apply(self) -> None:
        lrs = list(self.scheduler.lrs)
        bound = self.lr_bound
        if self._fork is not None and bound is not None and lrs and lrs[0] > 0:
            would = min(lrs[0], self.kappa * bound)
            if would > self._tested_lr and would >= RECHECK_FRACTION * bound and self._batches:
                # an LR ramp into untested territory meets a fresh bound (as the Driver does)
                bound = self.lr_bound = self._fork.measure(self._batches)
            cap = self.kappa * bound
            if lrs[0] > cap:  # scale every group alike: their ratios stay the scheduler's
                factor = cap / lrs[0]
                lrs = [lr * factor for lr in lrs]
                self.clip_count += 1
            self._tested_lr = max(self._tested_lr, lrs[0])
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = list(lrs)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON data: the wrapped scheduler's state plus the adapter's counters."""
        pending, val, grad_sq = self._read_pending()
        return {
            "scheduler": self.scheduler.state_dict(),
            "total_steps": self.total_steps,
            "interval": self.interval,
            "grad_norm_every": self.grad_norm_every,
            "inner_steps": self.inner_steps,
            "pending": [encode_float(x) for x in pending],
            "pending_val": None if val is None else encode_float(val),
            "grad_sq_sum": encode_float(grad_sq),
            "grad_n": self._grad_n,
            "base_lrs": [float(b) for b in self.base_lrs],
            "clip": self.clip,
            "lr_bound": None if self.lr_bound is None else encode_float(self.lr_bound),
            "decisions": self._decisions,
            "tested_lr": self._tested_lr,
            "clip_count": self.clip_count,
            "fork": None if self._fork is None else self._fork.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; writes the restored LRs into the optimizer."""
        if not isinstance(state_dict, dict) or "scheduler" not in state_dict:
            raise ValueError("not a TorchLRScheduler state_dict (no 'scheduler' key)")
        self.scheduler.load_state_dict(state_dict["scheduler"])
        if len(self.scheduler.base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state_dict has {len(self.scheduler.base_lrs)} parameter groups, "
                f"the optimizer has {len(self.optimizer.param_groups)}"
            )
        self.total_steps = state_dict["total_steps"]
        self.interval = state_dict["interval"]
        self.grad_norm_every = int(state_dict.get("grad_norm_every", 1))
        self.inner_steps = int(state_dict["inner_steps"])
        self.last_epoch = self.inner_steps
        self._pending = [decode_float(x) for x in state_dict["pending"]]
        pv = state_dict["pending_val"]
        self._pending_val = None if pv is None else decode_float(pv)
        self._grad_n = int(state_dict["grad_n"])
        if "grad_sq_sum" in state_dict:
            self._grad_sq = decode_float(state_dict["grad_sq_sum"])
        else:  # an older state summed the norms: the mean norm, squared, stands in
            mean = decode_float(state_dict["grad_sum"]) / max(self._grad_n, 1)
            self._grad_sq = mean * mean * self._grad_n
        self._grad_norms, self._grad_folded = [], 0.0
        self.base_lrs = list(state_dict["base_lrs"])
        bound = state_dict.get("lr_bound")
        self.lr_bound = None if bound is None else decode_float(bound)
        self._decisions = int(state_dict.get("decisions", 0))
        self._tested_lr = float(state_dict.get("tested_lr", 0.0))
        self.clip_count = int(state_dict.get("clip_count", 0))
        if self._fork is not None and state_dict.get("fork") is not None:
            self._fork.load_state_dict(state_dict["fork"])
        self._initialised = True
        self._apply()
