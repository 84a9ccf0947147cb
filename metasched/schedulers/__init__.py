"""Learning-rate schedulers sharing one protocol (see DESIGN §2.2 and §6).

Every scheduler is built by name from the registry, driven by
:class:`~metasched.signal.TrainingSignal` records, and serialises its state as JSON data::

    >>> from metasched.schedulers import SCHEDULERS, make_scheduler
    >>> sorted(SCHEDULERS)  # doctest: +NORMALIZE_WHITESPACE
    ['autolrs', 'constant', 'cosine', 'cyclic', 'dadapt', 'exponential', 'greedy',
     'hypergradient', 'learned', 'linear', 'onecycle', 'pbt', 'probe', 'prodigy', 'rules',
     'schedulefree', 'sgdr', 'sls', 'step', 'wsd']
    >>> make_scheduler("sgdr", t_mult=1)
    SGDRSchedule(first_cycle=0.1, t_mult=1, min_ratio=0.0, decay=1.0)

:func:`run_schedule` drives an inner task with any scheduler (search schedulers fork it),
and :class:`TorchLRScheduler` puts any observing scheduler into a plain PyTorch loop.
"""

from metasched.schedulers.autolrs import AutoLRSScheduler
from metasched.schedulers.base import (
    SCHEDULERS,
    Scheduler,
    make_scheduler,
    register,
    scheduler_from_state,
)
from metasched.schedulers.classic import (
    ConstantSchedule,
    CosineSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    OneCycleSchedule,
    SGDRSchedule,
    StepSchedule,
    WSDSchedule,
)
from metasched.schedulers.greedy import GreedyLR
from metasched.schedulers.hypergradient import HypergradientScheduler
from metasched.schedulers.learned import LearnedScheduler
from metasched.schedulers.pbt import PBTScheduler
from metasched.schedulers.peers import DAdaptSGDPeer, ProdigyPeer, ScheduleFreeSGDPeer
from metasched.schedulers.probe import ProbeScheduler
from metasched.schedulers.rules import RulesScheduler
from metasched.schedulers.runner import TRACE_COLUMNS, Run, Trace, run_schedule
from metasched.schedulers.sls import StochasticLineSearch
from metasched.schedulers.torch_adapter import TorchLRScheduler

__all__ = [
    "SCHEDULERS",
    "TRACE_COLUMNS",
    "AutoLRSScheduler",
    "ConstantSchedule",
    "CosineSchedule",
    "CyclicSchedule",
    "DAdaptSGDPeer",
    "ExponentialSchedule",
    "GreedyLR",
    "HypergradientScheduler",
    "LearnedScheduler",
    "LinearSchedule",
    "OneCycleSchedule",
    "PBTScheduler",
    "ProbeScheduler",
    "ProdigyPeer",
    "RulesScheduler",
    "Run",
    "SGDRSchedule",
    "ScheduleFreeSGDPeer",
    "Scheduler",
    "StepSchedule",
    "StochasticLineSearch",
    "TorchLRScheduler",
    "Trace",
    "WSDSchedule",
    "make_scheduler",
    "register",
    "run_schedule",
    "scheduler_from_state",
]
