"""Inner tasks: the problems whose training the schedulers control."""

from __future__ import annotations

from typing import Any

from metasched.errors import UnknownNameError, did_you_mean
from metasched.inner_tasks.base import SPLITS, InnerTask, StepStats, TaskFamily, check_split
from metasched.inner_tasks.charlm import CharLMConfig, CharLMFamily, CharLMTask
from metasched.inner_tasks.fashion import FashionConfig, FashionFamily, FashionTask
from metasched.inner_tasks.mixed import MixedConfig, MixedFamily
from metasched.inner_tasks.mlp import MLPConfig, MLPFamily, MLPTask
from metasched.inner_tasks.mnist1d import MNIST1DConfig, MNIST1DFamily, MNIST1DTask
from metasched.inner_tasks.nmf import NMFConfig, NMFFamily, NMFTask, planted_matrix

__all__ = [
    "SPLITS",
    "TASK_FAMILIES",
    "CharLMConfig",
    "CharLMFamily",
    "CharLMTask",
    "FashionConfig",
    "FashionFamily",
    "FashionTask",
    "InnerTask",
    "MLPConfig",
    "MLPFamily",
    "MLPTask",
    "MNIST1DConfig",
    "MNIST1DFamily",
    "MNIST1DTask",
    "MixedConfig",
    "MixedFamily",
    "NMFConfig",
    "NMFFamily",
    "NMFTask",
    "StepStats",
    "TaskFamily",
    "check_split",
    "family_lr_range",
    "make_family",
    "planted_matrix",
]

#: Registry of task families by name; extensions add entries on import.
TASK_FAMILIES: dict[str, type[TaskFamily]] = {
    "nmf": NMFFamily,
    "mlp": MLPFamily,
    "mnist1d": MNIST1DFamily,
    "fashion": FashionFamily,
    "charlm": CharLMFamily,
    "mixed": MixedFamily,
}


def make_family(name: str, seed: int = 0, **kwargs: Any) -> TaskFamily:
    """Build the task family registered as ``name`` (``UnknownNameError`` with a suggestion)."""
    try:
        cls = TASK_FAMILIES[name]
    except KeyError:
        raise UnknownNameError(did_you_mean(name, TASK_FAMILIES, "task family")) from None
    return cls(seed, **kwargs)


def family_lr_range(family: str | TaskFamily) -> tuple[float, float]:
    """Return the agent's LR range of a family (name or instance), as reference-LR multiples.

    Example:
        >>> family_lr_range("nmf"), family_lr_range("mlp")
        ((0.001, 64.0), (0.01, 20.0))
    """
    if isinstance(family, TaskFamily):
        lo, hi = family.lr_range
    else:
        try:
            lo, hi = TASK_FAMILIES[family].lr_range
        except KeyError:
            msg = did_you_mean(str(family), TASK_FAMILIES, "task family")
            raise UnknownNameError(msg) from None
    return float(lo), float(hi)
