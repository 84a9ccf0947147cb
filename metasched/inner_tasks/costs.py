"""What one full-data evaluation costs, in training steps, per task family.

Search schedulers (probe, PBT, AutoLRS) evaluate ``task.evaluate()`` to choose winners —
work every other scheduler does not do. ``compute`` counts it as forward passes charged
:func:`eval_cost` inner steps each. The constants are measured, not guessed: the median over
8 ``train`` instances of (time of one ``evaluate()``) / (time of one training step at the
reference LR), one core, by ``benchmarks/bench_eval_cost.py`` (which also prints the range
across instances). On NMF the ratio grows with the rows of V over the minibatch size
(``evaluate`` multiplies all ``m`` rows, a step ``b`` of them), so the per-instance value
spreads around the median.

Example:
    >>> from metasched.inner_tasks.nmf import NMFTask
    >>> import numpy as np
    >>> eval_cost(NMFTask.from_matrix(np.ones((4, 3)), rank=1)) == EVAL_COST["nmf"]
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["EVAL_COST", "eval_cost"]

#: Measured cost of one ``evaluate()`` in training steps, by family
#: (``benchmarks/bench_eval_cost.py``; see the module docstring).
#: Measured 2026-12-02 on the 2-core development VM with other jobs running (medians; the
#: range over the 8 instances in brackets): nmf 0.74 [0.42, 1.07], mlp 0.61 [0.40, 1.39],
#: mnist1d 3.37 [1.81, 12.2], fashion 5.25 [4.67, 26.0], charlm 1.40 [0.95, 1.73].
EVAL_COST: dict[str, float] = {
    "nmf": 0.74,
    "mlp": 0.61,
    "mnist1d": 3.37,
    "fashion": 5.25,
    "charlm": 1.40,
}

# task class -> family (the mixed family's tasks are those of the others)
_FAMILY_OF: dict[str, str] = {
    "NMFTask": "nmf",
    "MLPTask": "mlp",
    "MNIST1DTask": "mnist1d",
    "FashionTask": "fashion",
    "CharLMTask": "charlm",
}


def eval_cost(task: Any) -> float:
    """Return the training steps one ``task.evaluate()`` is charged.

    Tasks of the built-in families get their family's measured constant; other tasks
    declare an ``eval_cost`` attribute or are charged 1.0 (one evaluation as one step).
    """
    own = getattr(task, "eval_cost", None)
    if isinstance(own, int | float):
        return float(own)
    for cls in type(task).__mro__:
        if cls.__name__ in _FAMILY_OF:
            return EVAL_COST[_FAMILY_OF[cls.__name__]]
    return 1.0
