"""MLP classifiers on scikit-learn's bundled handwritten digits (``load_digits``, 1,797 x 64).

The data ship with scikit-learn (no download). Each instance splits the 1,797 images into
training and validation sets with its own seed, standardises the pixels with training
statistics, optionally flips a fraction of the *training* labels to uniformly random classes
(validation labels stay clean), and trains a ReLU MLP with minibatch SGD (EMA momentum
optional, see :mod:`metasched.inner_tasks.torch_task`). :meth:`~MLPTask.evaluate` is the
validation cross-entropy.

Digits is easy: at a good LR an MLP reaches 95 % validation accuracy in ~50 steps. The task
is therefore scored on loss, and the family makes the LR matter with label noise, small
minibatches, no weight decay and a budget at which a constant LR's noise floor shows: with
``MLP-v1``'s budget of 800 steps (LR set every 40), the tuned cosine ends at a median
validation loss of 0.328 against 0.373 for the best tuned constant LR, lower on 70 % of 20
``test`` instances (``benchmarks/scheduling_matters_nn.py``).

Threads: the task uses the process's torch thread setting (the ``metasched`` command and
its worker processes set one thread); see :mod:`metasched.inner_tasks.torch_task`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from metasched.inner_tasks.base import NETWORK_LR_RANGE, TaskFamily, check_split
from metasched.inner_tasks.torch_task import (
    ArrayClassificationTask,
    build_module,
    check_fraction,
    check_nonneg_float,
    check_positive_int,
    check_search_space,
    choice,
    flip_labels,
)

__all__ = ["MLPConfig", "MLPFamily", "MLPTask", "digits_data", "make_mlp"]

#: Reference LR of the family (the env's ``lr_ref``): a good constant LR across instances.
MLP_REFERENCE_LR = 0.2


@functools.cache
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as ``(x, y)``: float32 ``(1797, 64)`` in [0, 1], int64."""
    from sklearn.datasets import load_digits  # heavy import, only when a task needs it

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def make_mlp(n_in: int, width: int, depth: int, n_out: int) -> nn.Sequential:
    """Build a ReLU MLP with ``depth`` hidden layers of ``width`` units."""
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


@dataclass(frozen=True, slots=True)
class MLPConfig:
    """One MLP-on-digits instance.

    Attributes:
        width: hidden units per layer.
        depth: hidden layers.
        batch_size: examples per minibatch.
        init_scale: multiplier of the He-initialisation standard deviation.
        momentum: EMA momentum in ``[0, 1)``.
        label_noise: fraction of training labels replaced by random classes.
        input_noise: standard deviation of Gaussian noise added to the (standardised)
            training and validation inputs, drawn once per instance.
        weight_decay: L2 coefficient.
        val_fraction: fraction of the 1,797 images held out for validation.
        seed: seed of the instance's data split and label noise.
        split: the family split the instance came from (``custom`` for hand-made ones).
        index: index of the instance in its split.
    """

    width: int = 64
    depth: int = 2
    batch_size: int = 16
    init_scale: float = 1.0
    momentum: float = 0.0
    label_noise: float = 0.0
    input_noise: float = 0.0
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    split: str = "custom"
    index: int = 0

    def __post_init__(self) -> None:
        for f in ("width", "depth", "batch_size"):
            check_positive_int(f, getattr(self, f))
        check_nonneg_float("init_scale", self.init_scale)
        check_nonneg_float("input_noise", self.input_noise)
        check_nonneg_float("weight_decay", self.weight_decay)
        check_fraction("momentum", self.momentum)
        check_fraction("label_noise", self.label_noise, one_ok=True)
        v = check_fraction("val_fraction", self.val_fraction)
        if not 0 < v < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")

    @property
    def name(self) -> str:
        """Deterministic instance name, e.g. ``mlp-w64-d2-b16-i1.00-m0.00-n0.20-x0.00-test3``."""
        wd = f"-wd{self.weight_decay:g}" if self.weight_decay else ""
        return (
            f"mlp-w{self.width}-d{self.depth}-b{self.batch_size}-i{self.init_scale:.2f}"
            f"-m{self.momentum:.2f}-n{self.label_noise:.2f}-x{self.input_noise:.2f}{wd}"
            f"-{self.split}{self.index}"
        )


class MLPTask(ArrayClassificationTask):
    """A ReLU MLP on the digits data of one :class:`MLPConfig`.

    Example:
        >>> import numpy as np
        >>> task = MLPTask(MLPConfig(width=32, depth=1, batch_size=32))
        >>> task.reset(np.random.default_rng(0))
        >>> before = task.evaluate()
        >>> stats = task.train(100, lr=0.1)
        >>> stats.diverged, task.evaluate() < 0.5 * before, task.accuracy() > 0.8
        (False, True, True)
    """

    def __init__(
        self,
        config: MLPConfig,
        *,
        divergence_factor: float = 1e3,
        reference_lr: float = MLP_REFERENCE_LR,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(config, MLPConfig):
            raise ValueError(f"config must be an MLPConfig, got {config!r}")
        x, y = digits_data()
        rng = np.random.default_rng(config.seed)
        perm = rng.permutation(len(x))
        n_val = max(1, round(config.val_fraction * len(x)))
        val, tr = perm[:n_val], perm[n_val:]
        mean, std = float(x[tr].mean()), float(x[tr].std())
        xs = (x - mean) / std
        if config.input_noise > 0:
            xs = xs + config.input_noise * rng.standard_normal(xs.shape).astype(np.float32)
        y_tr = flip_labels(y[tr], config.label_noise, 10, rng)
        model = build_module(make_mlp, 64, config.width, config.depth, 10)
        super().__init__(
            model,
            xs[tr],
            y_tr,
            xs[val],
            y[val],
            batch_size=config.batch_size,
            name=config.name,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            init_scale=config.init_scale,
            divergence_factor=divergence_factor,
            reference_lr=reference_lr,
            num_threads=num_threads,
        )
        self.config = config


class MLPFamily(TaskFamily):
    """MLPs on digits with sampled width, depth, batch size, init scale and label noise.

    ``train``, ``val`` and ``test`` share one distribution (disjoint seeds); ``shift`` uses deeper
    and wider nets, smaller minibatches, more label noise and noisy inputs.

    Args:
        seed: family seed; instance ``i`` of a split is a pure function of (seed, split, i).
        widths, depths, batch_sizes: choices for ``train``/``test``.
        init_scale, label_noise: ``(low, high)`` ranges for ``train``/``test``.
        momenta: choices of EMA momentum.
        reference_lr: the LR every instance reports as its ``default_lr``.
    """

    lr_range = NETWORK_LR_RANGE

    name = "mlp"

    def __init__(
        self,
        seed: int = 0,
        *,
        widths: tuple[int, ...] = (32, 64, 128),
        depths: tuple[int, ...] = (1, 2, 3),
        batch_sizes: tuple[int, ...] = (8, 16, 32),
        init_scale: tuple[float, float] = (0.5, 1.5),
        label_noise: tuple[float, float] = (0.1, 0.3),
        momenta: tuple[float, ...] = (0.0, 0.5, 0.9),
        reference_lr: float = MLP_REFERENCE_LR,
    ) -> None:
        super().__init__(seed)
        self.reference_lr = check_search_space(
            reference_lr=reference_lr,
            choices={"widths": widths, "depths": depths, "batch_sizes": batch_sizes},
            momenta=momenta,
            ranges={"init_scale": init_scale, "label_noise": label_noise},
        )
        base = {
            "widths": tuple(widths),
            "depths": tuple(depths),
            "batch_sizes": tuple(batch_sizes),
            "init_scale": tuple(init_scale),
            "label_noise": tuple(label_noise),
            "momenta": tuple(momenta),
            "input_noise": (0.0, 0.0),
        }
        self.spaces = {"train": base, "val": base, "test": base}
        self.spaces["shift"] = {
            "widths": tuple(sorted({2 * w for w in widths})),
            "depths": tuple(sorted({d + 1 for d in depths})),
            "batch_sizes": tuple(sorted({max(1, b // 2) for b in batch_sizes})),
            "init_scale": (init_scale[1], 1.5 * init_scale[1]),
            "label_noise": (label_noise[1], min(1.0, 1.5 * label_noise[1] + 0.05)),
            "momenta": tuple(momenta),
            "input_noise": (0.3, 0.6),
        }

    def instance_config(self, split: str, index: int) -> MLPConfig:
        """Return the config of instance ``index`` of ``split`` (pure in its arguments)."""
        check_split(split)
        rng = self.rng_for(split, index)
        s = self.spaces[split]
        return MLPConfig(
            width=int(choice(rng, s["widths"])),
            depth=int(choice(rng, s["depths"])),
            batch_size=int(choice(rng, s["batch_sizes"])),
            init_scale=round(float(rng.uniform(*s["init_scale"])), 2),
            momentum=float(choice(rng, s["momenta"])),
            label_noise=round(float(rng.uniform(*s["label_noise"])), 2),
            input_noise=round(float(rng.uniform(*s["input_noise"])), 2),
            seed=int(rng.integers(2**31)),
            split=split,
            index=int(index),
        )

    def make_task(self, config: MLPConfig, **kwargs: Any) -> MLPTask:
        """Build the task of ``config`` (``kwargs``: e.g. ``divergence_factor``)."""
        kwargs.setdefault("reference_lr", self.reference_lr)
        return MLPTask(config, **kwargs)
