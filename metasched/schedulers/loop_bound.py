"""A measured stability bound for a plain torch training loop (the adapter's ``clip``).

:class:`ClosureForkTest` is :class:`~metasched.stability.ForkTestEstimator` (the validated
default estimator of :mod:`metasched.stability`) for a user's own model and optimizer: the
user passes a closure ``loss_fn(batch) -> loss tensor`` (as torch optimizers take a
``closure``), the adapter records the loop's recent minibatches, and a measurement

1. snapshots the parameters, their gradients, the optimizer's state, the model's buffers
   (when ``model`` is given) and torch's CPU random state;
2. computes each recorded batch's loss at the snapshot (the LR-0 reference, forward only);
3. from the snapshot, runs the user's optimizer itself (momentum, Adam moments, weight
   decay: whatever it does) over the batches at a candidate LR, on a half-octave grid
   warm-started at the previous result, and accepts the largest candidate whose 3-step running
   mean of losses stays below ``rise`` times the reference's, with every loss finite;
4. restores everything, so training continues exactly as if nothing had run (up to the
   random state of devices other than the CPU).

The bound is for the first parameter group's LR; the other groups keep their ratios to it
during the forks. Its cost (:attr:`ClosureForkTest.cost_steps`) counts one optimizer step
per fork step and one per reference forward pass.

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
    >>> batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    >>> fork = ClosureForkTest(opt, lambda b: (model(b[0]) - b[1]).pow(2).mean())
    >>> before = [p.detach().clone() for p in model.parameters()]
    >>> bound = fork.measure(batches)
    >>> 0.1 < bound < 10, all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    (True, True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer

from metasched.schedulers.base import check_int
from metasched.stability import search_half_octaves

__all__ = ["ClosureForkTest"]


class ClosureForkTest:
    """Fork-test stability bound of a user's model and optimizer (see the module doc).

    Args:
        optimizer: the training loop's optimizer.
        loss_fn: ``loss_fn(batch)`` returns the scalar loss tensor of a minibatch (with a
            graph to the parameters).
        model: the model, when it has buffers (batch-norm statistics) that the forks must not
            change; parameters are restored either way.
        rise: loss ratio (fork over LR-0 reference, 3-step running means) that counts as
            blowing up.
        max_up: grid steps climbed per warm-started measurement at most.
        max_up_cold: grid steps the first measurement may climb.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        loss_fn: Callable[[Any], torch.Tensor],
        *,
        model: torch.nn.Module | None = None,
        rise: float = 2.0,
        max_up: int = 3,
        max_up_cold: int = 12,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (batch -> loss tensor), got {loss_fn!r}")
        if not (isinstance(rise, int | float) and rise > 1 and math.isfinite(rise)):
            raise ValueError(f"rise must be a finite number > 1, got {rise!r}")
        self.optimizer, self.loss_fn, self.model = optimizer, loss_fn, model
        self.rise = float(rise)
        self.max_up = check_int("max_up", max_up, minimum=1)
        self.max_up_cold = check_int("max_up_cold", max_up_cold, minimum=1)
        self.anchor: float | None = None
        self.k: int | None = None
        self.cost_steps = 0.0
        self.n_measurements = 0

    def __repr__(self) -> str:
        return f"ClosureForkTest(rise={self.rise}, max_up={self.max_up})"

    # -- snapshot ---------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _snapshot(self) -> dict[str, Any]:
        params = self._params()
        return {
            "params": [p.detach().clone() for p in params],
            "grads": [None if p.grad is None else p.grad.detach().clone() for p in params],
            "opt": copy.deepcopy(self.optimizer.state_dict()),
            "lrs": [g["lr"] for g in self.optimizer.param_groups],
            "buffers": (
                None
                if self.model is None
                else [b.detach().clone() for b in self.model.buffers()]
            ),
            "rng": torch.get_rng_state(),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, s, g in zip(self._params(), snap["params"], snap["grads"], strict=True):
                p.copy_(s)
                p.grad = None if g is None else g.clone()
            if self.model is not None:
                for b, s in zip(self.model.buffers(), snap["buffers"], strict=True):
                    b.copy_(s)
        # load_state_dict may keep the given tensors: hand it a copy, keep the snapshot intact
        self.optimizer.load_state_dict(copy.deepcopy(snap["opt"]))
        for group, lr in zip(self.optimizer.param_groups, snap["lrs"], strict=True):
            group["lr"] = lr
        torch.set_rng_state(snap["rng"])

    # -- the test ---------------------------------------------------------------------------
    def _set_lr(self, lr: float, base: Sequence[float]) -> None:
        ref = float(base[0])
        for group, b in zip(self.optimizer.param_groups, base, strict=True):
            group["lr"] = lr * (float(b) / ref) if ref > 0 else lr

    def _reference(self, batches: Sequence[Any]) -> np.ndarray:
        with torch.no_grad():
            return np.array([float(self.loss_fn(b)) for b in batches], dtype=np.float64)

    def _passes(
        self, snap: dict[str, Any], lr: float, batches: Sequence[Any], base: np.ndarray
    ) -> tuple[bool, int]:
        self._restore(snap)
        self._set_lr(lr, snap["lrs"])
        losses = []
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(batch)
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                return False, len(losses)
            loss.backward()
            self.optimizer.step()
        k = min(3, len(batches))
        window = np.ones(k) / k
        fork = np.convolve(np.asarray(losses), window, mode="valid")
        ref = np.convolve(base, window, mode="valid")
        return bool(np.all(fork < self.rise * ref)), len(losses)

    def measure(self, batches: Sequence[Any]) -> float:
        """Return the bound on the first group's LR; the model and optimizer are left as found.

        Raises:
            ValueError: when ``batches`` is empty.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("the fork test needs at least one recorded minibatch")
        snap = self._snapshot()
        if self.anchor is None:
            lr0 = float(snap["lrs"][0])
            self.anchor = lr0 if math.isfinite(lr0) and lr0 > 0 else 1e-3
        anchor = self.anchor
        try:
            base = self._reference(batches)
            k, ok, spent = search_half_octaves(
                lambda lr: self._passes(snap, lr, batches, base),
                anchor, self.k, self.max_up, self.max_up_cold,
            )  # fmt: skip
            spent += len(batches)
        finally:
            self._restore(snap)
        self.k = k
        self.cost_steps += spent
        self.n_measurements += 1
        return anchor * 2 ** (k / 2) if ok else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Return the warm start and counters as JSON data."""
        return {
            "anchor": self.anchor,
            "k": self.k,
            "cost_steps": self.cost_steps,
            "n_measurements": self.n_measurements,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.anchor = None if state.get("anchor") is None else float(state["anchor"])
        self.k = None if state.get("k") is None else int(state["k"])
        self.cost_steps = float(state.get("cost_steps", 0.0))
        self.n_measurements = int(state.get("n_measurements", 0))
