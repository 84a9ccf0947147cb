"""MLPs and small 1-D CNNs on MNIST-1D, generated locally by the ``mnist1d`` package.

MNIST-1D (Greydanus 2020, "Scaling down deep learning") turns ten hand-made 1-D digit
templates into 40-sample signals by random padding, scaling, translation, correlated and
i.i.d. noise and shear; the ``mnist1d`` package's ``make_dataset`` generates it offline (its
``get_dataset`` would download a pickle; metasched never calls it). Two data variants:

* ``standard``: the package's default arguments (5,000 signals, seed 42: the canonical
  4,000 / 1,000 split), used by ``train``, ``val`` and ``test``;
* ``noisy``: stronger correlated / i.i.d. noise and shear with another seed, used by
  ``shift`` ("other data").

Isolation: the generator re-seeds numpy's and Python's global RNGs and imports
matplotlib, so it runs once per variant in a **subprocess** (``MPLBACKEND=Agg``); the arrays
are cached as ``.npz`` under :func:`cache_dir` (``$METASCHED_CACHE``, default
``~/.cache/metasched``) next to a JSON record of the generator arguments and the SHA-256 of
the arrays, which is checked on every load (a mismatch regenerates). The caller's global RNG
state is never touched.

Each instance subsamples the 4,000 training signals (``train_size``), flips a fraction of
their labels (validation labels stay clean) and trains an MLP or a CNN with minibatch SGD
(:mod:`metasched.inner_tasks.torch_task`). :meth:`~MNIST1DTask.evaluate` is the validation
cross-entropy on the 1,000 held-out signals. This is the main DNN family for agent training.
Label noise (10-30 %) and small minibatches make the LR matter: with ``MNIST1D-v0``'s budget
of 1,000 steps the tuned cosine ends at a median validation loss of 1.46 against 1.60 for
the best tuned constant LR, lower on 75 % of 12 ``test`` instances
(``benchmarks/scheduling_matters_nn.py``; MLPs overfit MNIST-1D, hence the high losses).

Threads: the task uses the process's torch thread setting (the ``metasched`` command and
its worker processes set one thread); see :mod:`metasched.inner_tasks.torch_task`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metasched.atomic import atomic_path, write_text
from metasched.errors import MetaschedError, MissingDependencyError
from metasched.inner_tasks.base import NETWORK_LR_RANGE, TaskFamily, check_split
from metasched.inner_tasks.mlp import make_mlp
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
    "MNIST1D_VARIANTS",
    "MNIST1DConfig",
    "MNIST1DFamily",
    "MNIST1DTask",
    "cache_dir",
    "make_cnn1d",
    "mnist1d_data",
]

#: Generator arguments of each data variant, applied over ``mnist1d``'s defaults.
MNIST1D_VARIANTS: dict[str, dict[str, Any]] = {
    "standard": {},
    "noisy": {"corr_noise_scale": 0.5, "iid_noise_scale": 0.05, "shear_scale": 1.0, "seed": 43},
}
ARCHS = ("mlp", "cnn")
#: Reference LR of the family (the env's ``lr_ref``): a good constant LR across instances.
MNIST1D_REFERENCE_LR = 0.1

_GENERATOR = """
import json, sys
import numpy as np
from mnist1d.data import get_dataset_args, make_dataset
args = get_dataset_args()
args.__dict__.update(json.loads(sys.argv[1]))
d = make_dataset(args)
np.savez(sys.argv[2], x=d["x"].astype(np.float32), y=d["y"].astype(np.int64),
         x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64))
"""
_KEYS = ("x", "y", "x_test", "y_test")


def cache_dir() -> Path:
    """Directory for generated data: ``$METASCHED_CACHE`` or ``~/.cache/metasched``.

    Falls back to ``<tmp>/metasched-cache`` when the home directory is not writable.
    """
    root = os.environ.get("METASCHED_CACHE")
    if root:
        return Path(root)
    home = Path.home() / ".cache" / "metasched"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.gettempdir()) / "metasched-cache"
    return home if os.access(home, os.W_OK) else Path(tempfile.gettempdir()) / "metasched-cache"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in _KEYS:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _generate(overrides: dict[str, Any], path: Path) -> None:
    """Run the ``mnist1d`` generator in a subprocess and write its arrays to ``path``."""
    try:
        import mnist1d  # noqa: F401  (only checks that it is installed)
    except ImportError:
        raise MissingDependencyError(
            "the mnist1d task needs the 'mnist1d' package: pip install mnist1d "
            "(a dependency of metasched)"
        ) from None
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # atomic: concurrent workers never see a partial file
    with atomic_path(path, suffix=".npz", parents=True) as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", _GENERATOR, json.dumps(overrides), str(tmp)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise MetaschedError(f"generating MNIST-1D failed:\n{proc.stderr.strip()[-2000:]}")


@functools.cache
def mnist1d_data(variant: str = "standard") -> dict[str, Any]:
    """Return the arrays of an MNIST-1D variant, generating and caching them on first use.

    Returns:
        A dict with float32 ``x`` (4000, 40), int64 ``y``, ``x_test`` (1000, 40), ``y_test``
        (read-only), ``sha256`` (of the four arrays), ``args`` (the generator overrides) and
        ``path`` (the cache file).
    """
    if variant not in MNIST1D_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(MNIST1D_VARIANTS)}, got {variant!r}")
    overrides = MNIST1D_VARIANTS[variant]
    key = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{variant}-{key}.npz"
    meta_path = path.with_suffix(".json")
    for attempt in range(2):
        if not path.exists():
            _generate(overrides, path)
        with np.load(path) as f:
            arrays = {k: f[k] for k in _KEYS}
        digest = _digest(arrays)
        recorded = None
        if meta_path.exists():
            recorded = json.loads(meta_path.read_text()).get("sha256")
        if recorded is None:
            meta = {"variant": variant, "args": overrides, "sha256": digest}
            write_text(meta_path, json.dumps(meta))
            break
        if recorded == digest:
            break
        if attempt == 0:  # corrupt or stale cache: regenerate once
            path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            continue
        raise MetaschedError(f"MNIST-1D cache {path} does not match its recorded hash")
    for a in arrays.values():
        a.setflags(write=False)
    return {**arrays, "sha256": digest, "args": dict(overrides), "path": str(path)}


class StridedConv1d(nn.Module):
    """A 1-D convolution on channels-last ``(batch, length, channels)`` input.

    Computed as unfold + one matrix product, which is 1.5-2x faster than ``nn.Conv1d``'s
    forward and backward at MNIST-1D sizes on one CPU thread. ``weight`` has the layout
    ``(out, in * kernel)`` of a flattened ``Conv1d`` weight (fan-in ``in * kernel``).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.weight = nn.Parameter(torch.empty(c_out, c_in * kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, length, c_in)`` to ``(batch, length_out, c_out)``."""
        xp = F.pad(x, (0, 0, self.padding, self.padding))
        u = xp.unfold(1, self.kernel, self.stride)  # batch, length_out, c_in, kernel
        b, n = u.shape[0], u.shape[1]
        out = torch.addmm(self.bias, u.reshape(b * n, -1), self.weight.t())
        return out.view(b, n, -1)


class _CNN1D(nn.Module):
    def __init__(self, channels: int, length: int = 40, n_out: int = 10) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            StridedConv1d(1, c, 5, stride=2, padding=2),
            nn.ReLU(),
            StridedConv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            StridedConv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        out_len = length
        for _ in range(3):
            out_len = (out_len + 1) // 2
        self.head = nn.Linear(c * out_len, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, length)`` signals to ``(batch, n_out)`` logits."""
        return self.head(self.features(x.unsqueeze(-1)).flatten(1))


def make_cnn1d(channels: int, length: int = 40, n_out: int = 10) -> nn.Module:
    """Build three stride-2 ReLU convolutions (kernels 5, 3, 3) and a linear head."""
    return _CNN1D(channels, length, n_out)


@dataclass(frozen=True, slots=True)
class MNIST1DConfig:
    """One MNIST-1D instance.

    Attributes:
        arch: ``"mlp"`` (two hidden layers of ``width``) or ``"cnn"`` (``width`` channels).
        width: hidden units (MLP) or channels (CNN).
        batch_size: examples per minibatch.
        init_scale: multiplier of the He-initialisation standard deviation.
        momentum: EMA momentum in ``[0, 1)``.
        label_noise: fraction of training labels replaced by random classes.
        train_size: training signals used (a seeded subsample of the 4,000).
        variant: data variant (a key of :data:`MNIST1D_VARIANTS`).
        weight_decay: L2 coefficient.
        seed: seed of the subsample and the label noise.
        split: the family split the instance came from (``custom`` for hand-made ones).
        index: index of the instance in its split.
    """

    arch: str = "cnn"
    width: int = 32
    batch_size: int = 32
    init_scale: float = 1.0
    momentum: float = 0.0
    label_noise: float = 0.0
    train_size: int = 4000
    variant: str = "standard"
    weight_decay: float = 0.0
    seed: int = 0
    split: str = "custom"
    index: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.variant not in MNIST1D_VARIANTS:
            raise ValueError(
                f"variant must be one of {', '.join(MNIST1D_VARIANTS)}, got {self.variant!r}"
            )
        for f in ("width", "batch_size", "train_size"):
            check_positive_int(f, getattr(self, f))
        if self.train_size > 4000:
            raise ValueError(f"train_size must be <= 4000, got {self.train_size}")
        check_nonneg_float("init_scale", self.init_scale)
        check_nonneg_float("weight_decay", self.weight_decay)
        check_fraction("momentum", self.momentum)
        check_fraction("label_noise", self.label_noise, one_ok=True)

    @property
    def name(self) -> str:
        """Deterministic name, e.g. ``mnist1d-cnn-w32-b32-i1.00-m0.00-n0.10-t4000-std-test3``."""
        wd = f"-wd{self.weight_decay:g}" if self.weight_decay else ""
        return (
            f"mnist1d-{self.arch}-w{self.width}-b{self.batch_size}-i{self.init_scale:.2f}"
            f"-m{self.momentum:.2f}-n{self.label_noise:.2f}-t{self.train_size}"
            f"-{self.variant[:5]}{wd}-{self.split}{self.index}"
        )


class MNIST1DTask(ArrayClassificationTask):
    """An MLP or 1-D CNN on the MNIST-1D data of one :class:`MNIST1DConfig`.

    Example:
        >>> import numpy as np
        >>> task = MNIST1DTask(MNIST1DConfig(arch="mlp", width=64, train_size=1000))
        >>> task.reset(np.random.default_rng(0))
        >>> before = task.evaluate()
        >>> stats = task.train(200, lr=0.1)
        >>> stats.diverged, task.evaluate() < before
        (False, True)
    """

    def __init__(
        self,
        config: MNIST1DConfig,
        *,
        divergence_factor: float = 1e3,
        reference_lr: float = MNIST1D_REFERENCE_LR,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(config, MNIST1DConfig):
            raise ValueError(f"config must be an MNIST1DConfig, got {config!r}")
        data = mnist1d_data(config.variant)
        rng = np.random.default_rng(config.seed)
        n_all = len(data["x"])
        tr = np.sort(rng.permutation(n_all)[: config.train_size])
        y_tr = flip_labels(data["y"][tr], config.label_noise, 10, rng)
        if config.arch == "mlp":
            model = build_module(make_mlp, 40, config.width, 2, 10)
        else:
            model = build_module(make_cnn1d, config.width)
        super().__init__(
            model,
            data["x"][tr],
            y_tr,
            data["x_test"],
            data["y_test"],
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
        self.data_sha256: str = data["sha256"]


class MNIST1DFamily(TaskFamily):
    """MNIST-1D instances: architecture, width, batch size, init scale, noise, data size.

    ``train``, ``val`` and ``test`` share one distribution (disjoint seeds) on the ``standard``
    data; ``shift`` trains on the ``noisy`` data variant with smaller minibatches, fewer training
    signals and more label noise.

    Args:
        seed: family seed; instance ``i`` of a split is a pure function of (seed, split, i).
        archs: architecture choices.
        widths: choices of MLP width / CNN channels per architecture.
        batch_sizes: minibatch-size choices.
        init_scale, label_noise: ``(low, high)`` ranges.
        train_sizes: choices of training-set size.
        momenta: choices of EMA momentum.
        reference_lr: the LR every instance reports as its ``default_lr``.
    """

    lr_range = NETWORK_LR_RANGE

    name = "mnist1d"

    def __init__(
        self,
        seed: int = 0,
        *,
        archs: tuple[str, ...] = ARCHS,
        widths: dict[str, tuple[int, ...]] | None = None,
        batch_sizes: tuple[int, ...] = (8, 16, 32),
        init_scale: tuple[float, float] = (0.5, 1.5),
        label_noise: tuple[float, float] = (0.1, 0.3),
        train_sizes: tuple[int, ...] = (2000, 4000),
        momenta: tuple[float, ...] = (0.0, 0.5, 0.9),
        reference_lr: float = MNIST1D_REFERENCE_LR,
    ) -> None:
        super().__init__(seed)
        widths = widths or {"mlp": (64, 128, 256), "cnn": (16, 32)}
        if not archs or any(a not in ARCHS for a in archs):
            raise ValueError(f"archs must be a non-empty subset of {ARCHS}, got {archs!r}")
        for a in archs:
            if not widths.get(a):
                raise ValueError(f"widths must give choices for arch {a!r}, got {widths!r}")
        self.reference_lr = check_search_space(
            reference_lr=reference_lr,
            choices={"batch_sizes": batch_sizes, "train_sizes": train_sizes},
            momenta=momenta,
            ranges={"init_scale": init_scale, "label_noise": label_noise},
        )
        for t in train_sizes:
            if t > 4000:
                raise ValueError(f"train_sizes must be <= 4000, got {t}")
        base = {
            "archs": tuple(archs),
            "widths": {a: tuple(widths[a]) for a in archs},
            "batch_sizes": tuple(batch_sizes),
            "init_scale": tuple(init_scale),
            "label_noise": tuple(label_noise),
            "train_sizes": tuple(train_sizes),
            "momenta": tuple(momenta),
            "variant": "standard",
        }
        self.spaces = {"train": base, "val": base, "test": base}
        self.spaces["shift"] = {
            **base,
            "batch_sizes": tuple(sorted({max(1, b // 2) for b in batch_sizes})),
            "label_noise": (label_noise[1], min(1.0, 1.5 * label_noise[1] + 0.1)),
            "train_sizes": tuple(sorted({max(100, t // 2) for t in train_sizes})),
            "variant": "noisy",
        }

    def instance_config(self, split: str, index: int) -> MNIST1DConfig:
        """Return the config of instance ``index`` of ``split`` (pure in its arguments)."""
        check_split(split)
        rng = self.rng_for(split, index)
        s = self.spaces[split]
        arch = str(choice(rng, s["archs"]))
        return MNIST1DConfig(
            arch=arch,
            width=int(choice(rng, s["widths"][arch])),
            batch_size=int(choice(rng, s["batch_sizes"])),
            init_scale=round(float(rng.uniform(*s["init_scale"])), 2),
            momentum=float(choice(rng, s["momenta"])),
            label_noise=round(float(rng.uniform(*s["label_noise"])), 2),
            train_size=int(choice(rng, s["train_sizes"])),
            variant=s["variant"],
            seed=int(rng.integers(2**31)),
            split=split,
            index=int(index),
        )

    def make_task(self, config: MNIST1DConfig, **kwargs: Any) -> MNIST1DTask:
        """Build the task of ``config`` (``kwargs``: e.g. ``divergence_factor``)."""
        kwargs.setdefault("reference_lr", self.reference_lr)
        return MNIST1DTask(config, **kwargs)
