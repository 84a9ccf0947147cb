"""A small CNN on Fashion-MNIST, read from the IDX files of Debian's ``dataset-fashion-mnist``.

Data: the four gzipped IDX files (``train-images-idx3-ubyte.gz`` and friends) that the Debian
package ``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist``
(``$METASCHED_FASHION_MNIST_DIR`` overrides the directory). ``make install`` installs the
package when apt-get is available; nothing is downloaded at run time. When the files are
absent, building a task raises :class:`~metasched.errors.MissingDataError` naming the package.

Each instance subsamples ``train_size`` of the 60,000 training images and ``val_size`` of
the 10,000 test images (seeded by the instance), optionally flips a fraction of the training
labels, and trains ``conv(3x3, c) - relu - maxpool - conv(3x3, 2c) - relu - maxpool - linear``
with minibatch SGD (:mod:`metasched.inner_tasks.torch_task`). :meth:`~FashionTask.evaluate`
is the cross-entropy on the validation subsample. An evaluation family (100-400 steps/s
on one core), not meant for agent training. With ``CNN-v1``'s budget of 400 steps the tuned
cosine ends at a median validation loss of 0.603 against 0.671 for the best tuned constant
LR, lower on 83 % of 12 ``test`` instances (``benchmarks/scheduling_matters_nn.py``).

Threads: the task uses the process's torch thread setting (the ``metasched`` command and
its worker processes set one thread); see :mod:`metasched.inner_tasks.torch_task`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metasched.errors import MetaschedError, MissingDataError
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

__all__ = [
    "FASHION_FILES",
    "FashionConfig",
    "FashionFamily",
    "FashionTask",
    "fashion_data",
    "fashion_dir",
    "make_fashion_cnn",
    "read_idx",
]

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "x": "train-images-idx3-ubyte.gz",
    "y": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
#: Pixel mean and standard deviation of the Fashion-MNIST training images (in [0, 1]).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530
#: Reference LR of the family (the env's ``lr_ref``): a good constant LR across instances.
FASHION_REFERENCE_LR = 0.1


def fashion_dir() -> Path:
    """Where the IDX files are: ``$METASCHED_FASHION_MNIST_DIR`` or the Debian location."""
    env = os.environ.get("METASCHED_FASHION_MNIST_DIR")
    return Path(env) if env else DEFAULT_DIR


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes into a numpy array.

    Raises:
        MetaschedError: the file is not a well-formed unsigned-byte IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise MetaschedError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(dims):
        raise MetaschedError(f"{path}: size {len(raw)} does not match IDX dims {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.cache
def fashion_data() -> dict[str, Any]:
    """Return Fashion-MNIST as uint8 arrays ``x`` (60000, 28, 28), ``y``, ``x_test``, ``y_test``.

    Also returns ``sha256`` (of the four arrays) and ``dir``.

    Raises:
        MissingDataError: the IDX files are not installed (the message names the package).
    """
    root = fashion_dir()
    missing = [name for name in FASHION_FILES.values() if not (root / name).is_file()]
    if missing:
        raise MissingDataError(
            f"Fashion-MNIST not found: {', '.join(missing)} missing in {root}. Install the "
            f"Debian package {DEBIAN_PACKAGE!r} (apt-get install {DEBIAN_PACKAGE}, which "
            f"`make install` does when apt-get is available) or point "
            f"METASCHED_FASHION_MNIST_DIR at a directory holding the IDX files."
        )
    out: dict[str, Any] = {k: read_idx(root / name) for k, name in FASHION_FILES.items()}
    for key in ("x", "x_test"):
        if out[key].ndim != 3 or out[key].shape[1:] != (28, 28):
            raise MetaschedError(f"{FASHION_FILES[key]}: expected 28x28 images")
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if len(out[xk]) != len(out[yk]) or out[yk].ndim != 1 or out[yk].max() > 9:
            raise MetaschedError(f"{FASHION_FILES[yk]}: labels do not match the images")
    h = hashlib.sha256()
    for key in FASHION_FILES:
        h.update(out[key].tobytes())
    out["sha256"] = h.hexdigest()
    out["dir"] = str(root)
    return out


class _FashionCNN(nn.Module):
    def __init__(self, channels: int, n_out: int = 10) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * c * 7 * 7, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, 28, 28)`` images to ``(batch, n_out)`` logits."""
        h = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        return self.head(self.features(h).flatten(1))


def make_fashion_cnn(channels: int, n_out: int = 10) -> nn.Module:
    """Build two 3x3 conv + max-pool stages (``channels``, ``2 * channels``) and a linear head.

    Convolutions run in the channels-last memory format: max-pooling is ~4x and the whole
    step ~1.4x faster than in NCHW on one CPU thread.
    """
    return _FashionCNN(channels, n_out).to(memory_format=torch.channels_last)


@dataclass(frozen=True, slots=True)
class FashionConfig:
    """One Fashion-MNIST instance.

    Attributes:
        channels: channels of the first convolution (the second has twice as many).
        batch_size: images per minibatch.
        init_scale: multiplier of the He-initialisation standard deviation.
        momentum: EMA momentum in ``[0, 1)``.
        label_noise: fraction of training labels replaced by random classes.
        train_size: training images (a seeded subsample of the 60,000).
        val_size: validation images (a seeded subsample of the 10,000 test images).
        weight_decay: L2 coefficient.
        seed: seed of the subsamples and the label noise.
        split: the family split the instance came from (``custom`` for hand-made ones).
        index: index of the instance in its split.
    """

    channels: int = 8
    batch_size: int = 32
    init_scale: float = 1.0
    momentum: float = 0.0
    label_noise: float = 0.0
    train_size: int = 5000
    val_size: int = 500
    weight_decay: float = 0.0
    seed: int = 0
    split: str = "custom"
    index: int = 0

    def __post_init__(self) -> None:
        for f in ("channels", "batch_size", "train_size", "val_size"):
            check_positive_int(f, getattr(self, f))
        if self.train_size > 60000:
            raise ValueError(f"train_size must be <= 60000, got {self.train_size}")
        if self.val_size > 10000:
            raise ValueError(f"val_size must be <= 10000, got {self.val_size}")
        check_nonneg_float("init_scale", self.init_scale)
        check_nonneg_float("weight_decay", self.weight_decay)
        check_fraction("momentum", self.momentum)
        check_fraction("label_noise", self.label_noise, one_ok=True)

    @property
    def name(self) -> str:
        """Deterministic name, e.g. ``fashion-c8-b32-i1.00-m0.00-n0.10-t5000-v500-test3``."""
        wd = f"-wd{self.weight_decay:g}" if self.weight_decay else ""
        return (
            f"fashion-c{self.channels}-b{self.batch_size}-i{self.init_scale:.2f}"
            f"-m{self.momentum:.2f}-n{self.label_noise:.2f}-t{self.train_size}"
            f"-v{self.val_size}{wd}-{self.split}{self.index}"
        )


class FashionTask(ArrayClassificationTask):
    """The small CNN on the Fashion-MNIST subsample of one :class:`FashionConfig`.

    Raises:
        MissingDataError: the Debian package's IDX files are not installed.
    """

    def __init__(
        self,
        config: FashionConfig,
        *,
        divergence_factor: float = 1e3,
        reference_lr: float = FASHION_REFERENCE_LR,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(config, FashionConfig):
            raise ValueError(f"config must be a FashionConfig, got {config!r}")
        data = fashion_data()
        rng = np.random.default_rng(config.seed)
        tr = np.sort(rng.choice(len(data["x"]), config.train_size, replace=False))
        val = np.sort(rng.choice(len(data["x_test"]), config.val_size, replace=False))
        y_tr = flip_labels(data["y"][tr].astype(np.int64), config.label_noise, 10, rng)
        model = build_module(make_fashion_cnn, config.channels)
        super().__init__(
            model,
            data["x"][tr],
            y_tr,
            data["x_test"][val],
            data["y_test"][val].astype(np.int64),
            batch_size=config.batch_size,
            eval_chunk=500,
            name=config.name,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            init_scale=config.init_scale,
            divergence_factor=divergence_factor,
            reference_lr=reference_lr,
            num_threads=num_threads,
        )
        self.config = config
        self.data_sha256: str = data["sha256"]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``uint8`` images (stored as bytes: 4x less memory per instance)."""
        return (x.to(torch.float32) * (1.0 / 255.0) - PIXEL_MEAN) * (1.0 / PIXEL_STD)


class FashionFamily(TaskFamily):
    """Fashion-MNIST CNN instances (an evaluation family: ~100 steps/s).

    ``train``, ``val`` and ``test`` share one distribution (disjoint seeds); ``shift`` uses smaller
    minibatches, fewer training images and more label noise.

    Args:
        seed: family seed; instance ``i`` of a split is a pure function of (seed, split, i).
        channels: choices of first-layer channels.
        batch_sizes: minibatch-size choices.
        init_scale, label_noise: ``(low, high)`` ranges.
        train_sizes: choices of training-subsample size.
        val_size: validation images per instance.
        momenta: choices of EMA momentum.
        reference_lr: the LR every instance reports as its ``default_lr``.
    """

    lr_range = NETWORK_LR_RANGE

    name = "fashion"
    pool_sizes = {"train": 2**31 - 1, "val": 50, "test": 50, "shift": 50}  # noqa: RUF012

    def __init__(
        self,
        seed: int = 0,
        *,
        channels: tuple[int, ...] = (4, 8),
        batch_sizes: tuple[int, ...] = (16, 32),
        init_scale: tuple[float, float] = (0.5, 1.5),
        label_noise: tuple[float, float] = (0.0, 0.2),
        train_sizes: tuple[int, ...] = (2000, 5000),
        val_size: int = 500,
        momenta: tuple[float, ...] = (0.0, 0.5, 0.9),
        reference_lr: float = FASHION_REFERENCE_LR,
    ) -> None:
        super().__init__(seed)
        self.reference_lr = check_search_space(
            reference_lr=reference_lr,
            choices={"channels": channels, "batch_sizes": batch_sizes, "train_sizes": train_sizes},
            momenta=momenta,
            ranges={"init_scale": init_scale, "label_noise": label_noise},
        )
        check_positive_int("val_size", val_size)
        self.val_size = int(val_size)
        base = {
            "channels": tuple(channels),
            "batch_sizes": tuple(batch_sizes),
            "init_scale": tuple(init_scale),
            "label_noise": tuple(label_noise),
            "train_sizes": tuple(train_sizes),
            "momenta": tuple(momenta),
        }
        self.spaces = {"train": base, "val": base, "test": base}
        self.spaces["shift"] = {
            **base,
            "batch_sizes": tuple(sorted({max(1, b // 2) for b in batch_sizes})),
            "label_noise": (label_noise[1], min(1.0, 1.5 * label_noise[1] + 0.1)),
            "train_sizes": tuple(sorted({max(100, t // 2) for t in train_sizes})),
        }

    def instance_config(self, split: str, index: int) -> FashionConfig:
        """Return the config of instance ``index`` of ``split`` (pure in its arguments)."""
        check_split(split)
        rng = self.rng_for(split, index)
        s = self.spaces[split]
        return FashionConfig(
            channels=int(choice(rng, s["channels"])),
            batch_size=int(choice(rng, s["batch_sizes"])),
            init_scale=round(float(rng.uniform(*s["init_scale"])), 2),
            momentum=float(choice(rng, s["momenta"])),
            label_noise=round(float(rng.uniform(*s["label_noise"])), 2),
            train_size=int(choice(rng, s["train_sizes"])),
            val_size=self.val_size,
            seed=int(rng.integers(2**31)),
            split=split,
            index=int(index),
        )

    def make_task(self, config: FashionConfig, **kwargs: Any) -> FashionTask:
        """Build the task of ``config`` (``kwargs``: e.g. ``divergence_factor``)."""
        kwargs.setdefault("reference_lr", self.reference_lr)
        return FashionTask(config, **kwargs)
