"""The warmup-stable-decay schedule: closed form, shapes, options, stepwise agreement."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest import approx

from metasched.schedulers import SCHEDULERS, WSDSchedule, make_scheduler, scheduler_from_state
from metasched.schedulers.classic import WARMUP_START
from metasched.signal import TrainingSignal

B = 0.3


def test_registered_open_loop_with_defaults():
    assert SCHEDULERS["wsd"] is WSDSchedule
    assert WSDSchedule.open_loop and WSDSchedule.needs_budget
    assert repr(make_scheduler("wsd")) == (
        "WSDSchedule(warmup=0, cooldown=0.2, shape='1-sqrt', final_ratio=0.0)"
    )


def test_one_minus_sqrt_cooldown_values():
    s = WSDSchedule()  # cooldown over the last 20 % of the budget, 1-sqrt shape
    T = 1000
    assert s.lr_at(0, T, B) == B
    assert s.lr_at(500, T, B) == B
    assert s.lr_at(800, T, B) == B  # the cooldown starts at T - c
    for t in (850, 900, 950, 999):
        u = (t - 800) / 200
        assert s.lr_at(t, T, B) == approx(B * (1 - math.sqrt(u)), rel=1e-12)
    assert s.lr_at(1000, T, B) == 0.0
    assert s.lr_at(1200, T, B) == 0.0  # past the budget: the final value


def test_linear_shape_final_ratio_and_warmup():
    s = WSDSchedule(warmup=0.1, cooldown=0.5, shape="linear", final_ratio=0.2)
    T = 200
    assert s.lr_at(0, T, B) == approx(B * WARMUP_START)
    assert s.lr_at(10, T, B) == approx(B * (WARMUP_START + (1 - WARMUP_START) * 0.5))
    assert s.lr_at(20, T, B) == B
    assert s.lr_at(100, T, B) == B
    assert s.lr_at(150, T, B) == approx(B * (0.2 + 0.8 * 0.5))
    assert s.lr_at(200, T, B) == approx(B * 0.2)
    assert s.bounds(B) == (approx(B * min(0.2, WARMUP_START)), B)
    assert WSDSchedule(final_ratio=0.5).bounds(B) == (approx(B * 0.5), B)


def test_cooldown_in_steps():
    s = WSDSchedule(cooldown=40)
    assert s.lr_at(60, 100, B) == B
    assert s.lr_at(70, 100, B) == approx(B * (1 - math.sqrt(0.25)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cooldown": 0}, "cooldown"),
        ({"cooldown": 1.5}, "cooldown"),
        ({"shape": "cosine"}, "shape"),
        ({"final_ratio": 1.5}, "final_ratio"),
        ({"warmup": -1}, "warmup"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler("wsd", **kw)


def test_warmup_and_cooldown_must_fit_the_budget():
    s = WSDSchedule(warmup=0.5, cooldown=0.6)
    with pytest.raises(ValueError, match="more than the budget 100"):
        s.lr_at(0, 100, B)


@settings(max_examples=40, deadline=None)
@given(
    intervals=st.lists(st.integers(1, 90), min_size=1, max_size=25),
    warmup=st.sampled_from([0, 0.05, 7]),
    cooldown=st.sampled_from([0.2, 0.5, 30]),
    shape=st.sampled_from(["1-sqrt", "linear"]),
    final=st.sampled_from([0.0, 0.1]),
)
def test_stepwise_equals_closed_form_and_resumes(intervals, warmup, cooldown, shape, final):
    budget = max(sum(intervals), 100)
    kw = {"warmup": warmup, "cooldown": cooldown, "shape": shape, "final_ratio": final}
    s = WSDSchedule(**kw)
    assert s.reset(B) == approx(s.lr_at(0, budget, B), rel=1e-12)
    t = 0
    for i, n in enumerate(intervals):
        t += n
        sig = TrainingSignal(step=t, budget=budget, lr=s.lr, train_loss=1.0, interval_steps=n)
        got = s.step(sig)
        assert got == approx(s.lr_at(t, budget, B), rel=1e-12, abs=1e-15)
        if i == len(intervals) // 2:
            s = scheduler_from_state(json.loads(json.dumps(s.state_dict(), allow_nan=False)))
