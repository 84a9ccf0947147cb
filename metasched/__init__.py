"""metasched: reinforcement-learned learning-rate schedulers, exported and measured honestly.

Importing the package registers its Gymnasium environments (``metasched/NMF-v1``, ...).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from metasched.envs.registration import ENV_IDS, register_envs
from metasched.errors import ConfigError, MetaschedError, UnknownNameError
from metasched.features import FEATURE_NAMES, FeatureTracker
from metasched.inner_tasks import TASK_FAMILIES, NMFFamily, NMFTask, make_family
from metasched.loop import Driver
from metasched.schedulers import (
    SCHEDULERS,
    LearnedScheduler,
    Scheduler,
    TorchLRScheduler,
    make_scheduler,
    run_schedule,
)
from metasched.signal import TrainingSignal

try:
    __version__ = version("metasched")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

register_envs()

__all__ = [
    "ENV_IDS",
    "FEATURE_NAMES",
    "SCHEDULERS",
    "TASK_FAMILIES",
    "ConfigError",
    "Driver",
    "FeatureTracker",
    "LearnedScheduler",
    "MetaschedError",
    "NMFFamily",
    "NMFTask",
    "Scheduler",
    "TorchLRScheduler",
    "TrainingSignal",
    "UnknownNameError",
    "__version__",
    "make_family",
    "make_scheduler",
    "run_schedule",
]
