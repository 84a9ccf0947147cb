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
from metasched.signal import TrainingSignal

__all__ = ["TorchLRScheduler"]


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
            ``decision_interval``, e.g. the one a learned policy was trained with, else 1).
        grad_norm_every: for schedulers that read the gradient norm, measure it on every
            k-th optimizer step of each interval (its first step included) instead of on
            all of them (default 1: every step, as the envs do). The norm is one pass over
            all gradients; on small models whose steps take about a millisecond on a CPU it
            costs a few percent of a step, and ``grad_norm_every=5`` cuts that fivefold for
            an RMS estimated from every fifth step.
        **kwargs: hyperparameters when ``scheduler`` is a name.

    Schedulers that fork training themselves (``probe``) cannot run inside a plain loop;
    use :func:`metasched.schedulers.run_schedule` on an inner task.

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
        **kwargs: Any,
    ) -> None:
        if isinstance(scheduler, str):
            scheduler = make_scheduler(scheduler, **kwargs)
        elif kwargs:
            raise ConfigError(
                f"hyperparameters {sorted(kwargs)} are only accepted with a scheduler name"
            )
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a Scheduler or a name, got {scheduler!r}")
        if scheduler.drives_training:
            raise ConfigError(
                f"{scheduler.name!r} forks training and cannot run inside a plain loop; "
                "use metasched.schedulers.run_schedule on an inner task"
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
        self.scheduler = scheduler
        self.total_steps = total_steps
        if interval is None:
            interval = scheduler.decision_interval or 1
        self.interval = check_int("interval", interval, minimum=1)
        self.grad_norm_every = check_int("grad_norm_every", grad_norm_every, minimum=1)
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

    def step(self, loss: Any = None, *, val_loss: Any = None) -> None:  # type: ignore[override]
        """Record one optimizer step (with its loss); every ``interval`` steps update the LR."""
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
        )
        self._pending, self._pending_val = [], None
        self._grad_sq, self._grad_norms, self._grad_folded, self._grad_n = 0.0, [], 0.0, 0
        self.scheduler.step(signal)
        self._apply()

    def _apply(self) -> None:
        lrs = self.scheduler.lrs
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
        self._initialised = True
        self._apply()
