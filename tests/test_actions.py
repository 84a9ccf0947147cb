"""actions: the fixed anneal shape an env puts on top of the agent's LR."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasched.actions import ANNEAL_MODES, anneal_factor, check_anneal
from metasched.schedulers.classic import CosineSchedule, WSDSchedule


@pytest.mark.parametrize("anneal", ["wsd", "cosine"])
@given(budget=st.integers(1, 5000), data=st.data())
def test_anneal_is_the_schedule_of_that_name_at_base_lr_one(anneal, budget, data):
    steps = data.draw(st.lists(st.integers(0, budget + 10), min_size=1, max_size=20))
    schedule = WSDSchedule() if anneal == "wsd" else CosineSchedule()
    got = anneal_factor(anneal, np.array(steps), budget)
    assert got.tolist() == [schedule.lr_at(t, budget, base_lr=1.0) for t in steps]  # exactly
    assert float(anneal_factor(anneal, 0, budget)) == 1.0  # the first interval: the level
    # per-slot budgets (the batched envs pass one budget per slot) broadcast element-wise
    both = anneal_factor(anneal, np.array(steps), np.full(len(steps), budget))
    assert both.tolist() == got.tolist()


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=10), st.integers(0, 10**6))
def test_no_anneal_is_one_everywhere_even_without_a_budget(steps, budget):
    assert anneal_factor("none", np.array(steps), budget).tolist() == [1.0] * len(steps)


def test_bad_modes_and_missing_budget_are_clear_errors():
    assert ANNEAL_MODES == ("none", "wsd", "cosine") and check_anneal("cosine") == "cosine"
    with pytest.raises(ValueError, match="anneal must be one of none, wsd, cosine, got 'cos'"):
        anneal_factor("cos", 0, 100)
    with pytest.raises(ValueError, match="got None"):
        check_anneal(None)
    with pytest.raises(ValueError, match="needs the run's budget"):
        anneal_factor("wsd", 10, 0)
    with pytest.raises(ValueError, match="needs the run's budget"):
        anneal_factor("cosine", 10, 0)
