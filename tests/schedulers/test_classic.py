"""Behaviour tests of the classic open-loop schedules (metasched.schedulers.classic)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as tls

from metasched.schedulers.base import (
    SCHEDULERS,
    Scheduler,
    make_scheduler,
    scheduler_from_state,
)
from metasched.schedulers.classic import (
    WARMUP_START,
    ConstantSchedule,
    CosineSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    OneCycleSchedule,
    SGDRSchedule,
    StepSchedule,
)
from metasched.signal import TrainingSignal

CLASSES: dict[str, type[Scheduler]] = {
    c.name: c
    for c in (
        ConstantSchedule,
        StepSchedule,
        ExponentialSchedule,
        LinearSchedule,
        CosineSchedule,
        CyclicSchedule,
        SGDRSchedule,
        OneCycleSchedule,
    )
}
NAMES = sorted(CLASSES)
B = 0.3  # a base LR that is not 1, so that missing factors of b show up


def approx(x: float, rel: float = 1e-12, abs_: float = 1e-15) -> Any:
    return pytest.approx(x, rel=rel, abs=abs_)


def sig(t: int, budget: int, lr: float, n: int) -> TrainingSignal:
    return TrainingSignal(step=t, budget=budget, lr=lr, train_loss=1.0, interval_steps=n)


def stepwise(sched: Scheduler, b: float, budget: int, intervals: list[int]) -> list[float]:
    """Reset, then step through ``intervals``; return [lr after reset, lr after each step]."""
    lrs = [sched.reset(b)]
    t = 0
    for n in intervals:
        t += n
        lrs.append(sched.step(sig(t, budget, lrs[-1], n)))
    return lrs


def closed(sched: Scheduler, b: float, budget: int, intervals: list[int]) -> list[float]:
    ts = [0]
    for n in intervals:
        ts.append(ts[-1] + n)
    return [sched.lr_at(t, budget, b) for t in ts]


# -- registry, protocol basics -----------------------------------------------------------
def test_all_schedules_are_registered_open_loop_with_budget_flags() -> None:
    for name, cls in CLASSES.items():
        assert SCHEDULERS[name] is cls
        assert cls.open_loop
        assert cls().needs_budget == (name != "constant")  # the defaults are budget-relative
        assert cls.__doc__ and cls.__doc__.strip()
    assert (
        repr(make_scheduler("cosine", min_ratio=0.1)) == "CosineSchedule(warmup=0, min_ratio=0.1)"
    )
    assert repr(StepSchedule()) == "StepSchedule(milestones=[0.5, 0.75], gamma=0.1)"
    assert ExponentialSchedule().config == {"final_ratio": 0.01, "gamma": None}
    assert ExponentialSchedule(gamma=0.9).config == {"final_ratio": None, "gamma": 0.9}


@pytest.mark.parametrize(
    ("name", "kwargs", "needs"),
    [
        ("step", {"milestones": [10, 20]}, False),
        ("step", {"milestones": [10, 0.5]}, True),
        ("exponential", {"gamma": 0.9}, False),
        ("exponential", {"final_ratio": 0.1}, True),
        ("cyclic", {"half_cycle": 5}, False),
        ("cyclic", {"half_cycle": 0.1}, True),
        ("sgdr", {"first_cycle": 8}, False),
        ("sgdr", {"first_cycle": 0.1}, True),
        ("cosine", {"warmup": 5}, True),
    ],
)
def test_schedules_in_step_counts_need_no_budget(name, kwargs, needs) -> None:
    sched = make_scheduler(name, **kwargs)
    assert sched.needs_budget is needs
    sched.reset(1.0)
    if needs:
        with pytest.raises(ValueError, match=r"signal\.budget"):
            sched.step(sig(5, 0, 1.0, 5))
        return
    # Budget unknown (0): the stepwise form follows the closed form of any budget.
    lrs = [sched.step(sig(t, 0, 1.0, 5)) for t in range(5, 105, 5)]
    assert lrs == pytest.approx([sched.lr_at(t, 10_000) for t in range(5, 105, 5)], rel=1e-12)
    assert json.loads(json.dumps(sched.state_dict()))["state"]["budget"] == 0


RESET_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("constant", {}),
    ("step", {}),
    ("step", {"milestones": [3, 0.5]}),
    ("exponential", {}),
    ("exponential", {"gamma": 0.97}),
    ("linear", {}),
    ("linear", {"warmup": 0.2, "final_ratio": 0.1}),
    ("linear", {"warmup": 5}),
    ("cosine", {"min_ratio": 0.3}),
    ("cosine", {"warmup": 0.05}),
    ("cyclic", {}),
    ("cyclic", {"half_cycle": 4, "mode": "triangular2"}),
    ("sgdr", {}),
    ("sgdr", {"first_cycle": 3, "t_mult": 1, "min_ratio": 0.2, "decay": 0.5}),
    ("onecycle", {}),
    ("onecycle", {"anneal": "linear", "pct_start": 0.5}),
]


@pytest.mark.parametrize(("name", "config"), RESET_CONFIGS)
def test_reset_lr_is_lr_at_step_zero_for_every_budget(name: str, config: dict[str, Any]) -> None:
    sched = make_scheduler(name, **config)
    first = sched.reset(B)
    for budget in (7, 10, 101, 5000, 10**9):
        assert sched.lr_at(0, budget) == first
    lo, hi = sched.bounds(B)
    assert lo <= first <= hi


def test_lr_at_defaults_to_the_reset_base_lr_and_needs_one() -> None:
    sched = CosineSchedule()
    with pytest.raises(ValueError, match="base_lr"):
        sched.lr_at(10, 100)
    sched.reset([0.5, 1.0])
    assert sched.lr_at(50, 100) == sched.lr_at(50, 100, base_lr=0.5)
    assert sched.lr_at(50, 100, base_lr=2.0) == approx(1.0)


def test_other_parameter_groups_follow_in_proportion() -> None:
    sched = StepSchedule(milestones=[2], gamma=0.5)
    sched.reset([0.2, 0.6])
    sched.step(sig(2, 10, 0.2, 2))
    assert sched.lrs == [approx(0.1), approx(0.3)]


# -- closed form at characteristic points ------------------------------------------------
def test_constant() -> None:
    sched = ConstantSchedule()
    assert [sched.lr_at(t, 50, B) for t in (0, 25, 50, 500)] == [B] * 4
    assert sched.bounds(B) == (B, B)


def test_step_drops_exactly_at_the_milestones() -> None:
    sched = StepSchedule(milestones=(0.5, 0.75), gamma=0.1)
    lr = [sched.lr_at(t, 200, B) for t in (0, 99, 100, 149, 150, 199, 200, 10**6)]
    assert lr == [B, B, approx(B * 0.1), approx(B * 0.1)] + [approx(B * 0.01)] * 4
    ints = StepSchedule(milestones=[3, 7], gamma=0.5)
    assert [ints.lr_at(t, 5, 1.0) for t in range(9)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert StepSchedule(gamma=1.0).lr_at(190, 200, B) == B
    assert StepSchedule(milestones=[]).lr_at(190, 200, B) == B
    assert sched.bounds(B) == (approx(B * 0.01), B)


def test_exponential() -> None:
    sched = ExponentialSchedule(final_ratio=0.01)
    assert sched.lr_at(50, 100, B) == approx(B * 0.1)
    assert sched.lr_at(100, 100, B) == approx(B * 0.01)
    assert sched.lr_at(1000, 100, B) == approx(B * 0.01)  # flat past the budget
    per_step = ExponentialSchedule(gamma=0.9)
    assert per_step.lr_at(10, 5, B) == approx(B * 0.9**10)  # keeps decaying past the budget
    assert per_step.bounds(B) == (0.0, B)
    assert sched.bounds(B) == (approx(B * 0.01), B)


def test_linear_with_and_without_warmup() -> None:
    sched = LinearSchedule(warmup=10, final_ratio=0.2)
    assert sched.lr_at(0, 110, B) == approx(B * WARMUP_START)
    assert sched.lr_at(5, 110, B) == approx(B * (0.01 + 0.99 * 0.5))
    assert sched.lr_at(9, 110, B) < B
    assert sched.lr_at(10, 110, B) == approx(B)
    assert sched.lr_at(60, 110, B) == approx(B * 0.6)
    assert sched.lr_at(110, 110, B) == approx(B * 0.2)
    assert sched.lr_at(500, 110, B) == approx(B * 0.2)
    plain = LinearSchedule()
    assert [plain.lr_at(t, 4, 1.0) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    frac = LinearSchedule(warmup=0.1)  # 20 steps of a 200-step budget
    assert frac.lr_at(19, 200, B) < B
    assert frac.lr_at(20, 200, B) == approx(B)
    assert frac.lr_at(10, 200, B) == approx(B * (0.01 + 0.99 * 0.5))


def test_cosine_midpoint_end_and_warmup() -> None:
    sched = CosineSchedule(min_ratio=0.1)
    assert sched.lr_at(0, 100, B) == B
    assert sched.lr_at(50, 100, B) == approx(B * (1 + 0.1) / 2)
    assert sched.lr_at(25, 100, B) == approx(B * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))
    assert sched.lr_at(100, 100, B) == approx(B * 0.1)
    assert sched.lr_at(150, 100, B) == approx(B * 0.1)
    warm = CosineSchedule(warmup=20, min_ratio=0.0)
    assert warm.lr_at(0, 120, B) == approx(B * WARMUP_START)
    assert warm.lr_at(20, 120, B) == approx(B)
    assert warm.lr_at(70, 120, B) == approx(B / 2)
    assert warm.lr_at(120, 120, B) == 0.0
    assert warm.bounds(B) == (0.0, B)
    assert CosineSchedule(warmup=3, min_ratio=0.5).bounds(B) == (approx(B * WARMUP_START), B)


def test_cyclic_low_and_high_points_and_triangular2_halving() -> None:
    tri = CyclicSchedule(min_ratio=0.2, half_cycle=10)
    low, high = B * 0.2, B
    for t in (0, 20, 40, 1000):
        assert tri.lr_at(t, 100, B) == approx(low)
    for t in (10, 30, 1010):
        assert tri.lr_at(t, 100, B) == approx(high)
    assert tri.lr_at(5, 100, B) == approx((low + high) / 2)
    assert tri.lr_at(15, 100, B) == approx((low + high) / 2)
    tri2 = CyclicSchedule(min_ratio=0.2, half_cycle=10, mode="triangular2")
    amplitude = high - low
    assert tri2.lr_at(10, 100, B) == approx(high)
    assert tri2.lr_at(30, 100, B) == approx(low + amplitude / 2)
    assert tri2.lr_at(50, 100, B) == approx(low + amplitude / 4)
    assert tri2.lr_at(40, 100, B) == approx(low)
    frac = CyclicSchedule(min_ratio=0.2, half_cycle=0.125)  # h = 10 for a budget of 80
    assert [frac.lr_at(t, 80, B) for t in range(100)] == [tri.lr_at(t, 80, B) for t in range(100)]


def test_sgdr_restarts_at_the_cycle_boundaries() -> None:
    sched = SGDRSchedule(first_cycle=10, t_mult=2, min_ratio=0.1, decay=0.5)
    T = 1000
    assert sched.lr_at(0, T, B) == B
    assert sched.lr_at(5, T, B) == approx(B * (0.1 + 0.9 / 2))
    assert sched.lr_at(9, T, B) < B * 0.15
    assert sched.lr_at(10, T, B) == approx(B * 0.5)  # restart at T_0
    assert sched.lr_at(20, T, B) == approx(B * (0.1 + 0.4 / 2))  # middle of the 20-step cycle
    assert sched.lr_at(29, T, B) < B * 0.11
    assert sched.lr_at(30, T, B) == approx(B * 0.25)  # restart at T_0 + T_0 * t_mult
    assert sched.lr_at(70, T, B) == approx(B * 0.125)
    frac = SGDRSchedule(first_cycle=0.1, t_mult=1)  # T_0 = 10 of a budget of 100, periodic
    assert [frac.lr_at(t, 100, B) for t in (0, 10, 20, 150)] == [B, B, B, B]
    assert frac.lr_at(15, 100, B) == approx(B / 2)
    floor = SGDRSchedule(first_cycle=4, t_mult=1, min_ratio=0.05, decay=0.1)
    assert floor.lr_at(4, 50, B) == approx(B * 0.1)
    # from cycle 2 on the decayed peak (0.01 b) is below the floor: the LR stays at the floor
    assert [floor.lr_at(t, 50, B) for t in range(8, 30)] == [approx(B * 0.05)] * 22


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_start_peak_end(anneal: str) -> None:
    sched = OneCycleSchedule(pct_start=0.25, div_factor=25.0, final_div_factor=1e4, anneal=anneal)
    T = 100
    assert sched.lr_at(0, T, B) == approx(B / 25)
    assert sched.lr_at(25, T, B) == approx(B)
    assert sched.lr_at(24, T, B) < B and sched.lr_at(26, T, B) < B
    assert sched.lr_at(100, T, B) == approx(B / 25 / 1e4)
    assert sched.lr_at(300, T, B) == approx(B / 25 / 1e4)
    mid_up, mid_down = sched.lr_at(12, T, B), sched.lr_at(62, T, B)
    if anneal == "linear":
        assert sched.lr_at(10, T, B) == approx(B / 25 + (B - B / 25) * 0.4)
    assert B / 25 < mid_up < B and B / 25 / 1e4 < mid_down < B
    assert sched.bounds(B) == (approx(B / 2.5e5), B)


# -- cross-checks against torch.optim.lr_scheduler ---------------------------------------
def torch_lrs(make: Callable[[torch.optim.Optimizer], Any], b: float, n: int) -> list[float]:
    """LR of torch's scheduler after 0, 1, ..., n scheduler steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=b)
    sched = make(opt)
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        opt.step()  # no gradient: a no-op that keeps torch's call-order check quiet
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def ours_lrs(sched: Scheduler, b: float, budget: int, n: int) -> list[float]:
    return [sched.lr_at(t, budget, b) for t in range(n + 1)]


T0 = 120  # budget of the torch comparisons
W = 12
TORCH_CASES: list[tuple[str, Callable[..., Any], Scheduler, int, int]] = [
    (
        "MultiStepLR",
        lambda o: tls.MultiStepLR(o, milestones=[60, 90], gamma=0.1),
        StepSchedule(milestones=(0.5, 0.75), gamma=0.1),
        T0,
        200,
    ),
    (
        "StepLR",
        lambda o: tls.StepLR(o, step_size=25, gamma=0.5),
        StepSchedule(milestones=[25, 50, 75, 100, 125, 150, 175], gamma=0.5),
        T0,
        199,
    ),
    (
        "ExponentialLR-gamma",
        lambda o: tls.ExponentialLR(o, gamma=0.97),
        ExponentialSchedule(gamma=0.97),
        T0,
        300,
    ),
    (
        "ExponentialLR-final_ratio",  # torch's per-step gamma = final_ratio ** (1 / T)
        lambda o: tls.ExponentialLR(o, gamma=0.001 ** (1 / T0)),
        ExponentialSchedule(final_ratio=0.001),
        T0,
        T0,
    ),
    (
        "LinearLR",
        lambda o: tls.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=T0),
        LinearSchedule(final_ratio=0.05),
        T0,
        T0 + 30,
    ),
    (
        "LinearLR-warmup+LinearLR",
        lambda o: tls.SequentialLR(
            o,
            [
                tls.LinearLR(o, start_factor=WARMUP_START, end_factor=1.0, total_iters=W),
                tls.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=T0 - W),
            ],
            milestones=[W],
        ),
        LinearSchedule(warmup=0.1, final_ratio=0.1),
        T0,
        T0 + 30,
    ),
    (
        "CosineAnnealingLR",
        lambda o: tls.CosineAnnealingLR(o, T_max=T0, eta_min=B * 0.1),
        CosineSchedule(min_ratio=0.1),
        T0,
        T0,
    ),
    (
        "LinearLR-warmup+CosineAnnealingLR",
        lambda o: tls.SequentialLR(
            o,
            [
                tls.LinearLR(o, start_factor=WARMUP_START, end_factor=1.0, total_iters=W),
                tls.CosineAnnealingLR(o, T_max=T0 - W, eta_min=0.0),
            ],
            milestones=[W],
        ),
        CosineSchedule(warmup=W),
        T0,
        T0,
    ),
    (
        "CosineAnnealingWarmRestarts-mult2",
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=B * 0.05),
        SGDRSchedule(first_cycle=10, t_mult=2, min_ratio=0.05),
        T0,
        400,  # past the budget: the restarts go on
    ),
    (
        "CosineAnnealingWarmRestarts-mult1",
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=12, T_mult=1),
        SGDRSchedule(first_cycle=0.1, t_mult=1),
        T0,
        300,
    ),
    (
        "CyclicLR-triangular",
        lambda o: tls.CyclicLR(o, base_lr=B * 0.1, max_lr=B, step_size_up=15, cycle_momentum=False),
        CyclicSchedule(min_ratio=0.1, half_cycle=15),
        T0,
        300,
    ),
    (
        "CyclicLR-triangular2",
        lambda o: tls.CyclicLR(
            o,
            base_lr=B * 0.25,
            max_lr=B,
            step_size_up=15,
            mode="triangular2",
            cycle_momentum=False,
        ),
        CyclicSchedule(min_ratio=0.25, half_cycle=0.125, mode="triangular2"),  # 15 of 120
        T0,
        300,
    ),
]


@pytest.mark.parametrize(
    ("label", "make_torch", "ours", "budget", "n"), TORCH_CASES, ids=[c[0] for c in TORCH_CASES]
)
def test_matches_torch_scheduler(
    label: str, make_torch: Callable[..., Any], ours: Scheduler, budget: int, n: int
) -> None:
    # torch's chainable schedulers multiply the previous LR step by step, so they drift by
    # a few ulps per step: compare to 1e-9 relative rather than 1e-12.
    theirs = torch_lrs(make_torch, B, n)
    assert ours_lrs(ours, B, budget, n) == [approx(x, rel=1e-9, abs_=1e-14) for x in theirs]


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize(("budget", "pct"), [(100, 0.3), (57, 0.25), (10, 0.5)])
def test_onecycle_matches_torch_onecyclelr(anneal: str, budget: int, pct: float) -> None:
    # torch's OneCycleLR puts the peak at step pct_start * total_steps - 1 and the final LR
    # at total_steps - 1, one step earlier than ours (peak at pct * T, end at T). The two
    # coincide when torch gets total_steps = T + 1 and pct_start = (pct * T + 1) / (T + 1):
    # then its phase ends are pct * T and T (up to float rounding of the pct_start product).
    def make(o: torch.optim.Optimizer) -> Any:
        return tls.OneCycleLR(
            o,
            max_lr=B,
            total_steps=budget + 1,
            pct_start=(pct * budget + 1) / (budget + 1),
            div_factor=10.0,
            final_div_factor=100.0,
            anneal_strategy=anneal,
            three_phase=False,
            cycle_momentum=False,
        )

    ours = OneCycleSchedule(pct_start=pct, div_factor=10.0, final_div_factor=100.0, anneal=anneal)
    theirs = torch_lrs(make, B, budget)
    assert ours_lrs(ours, B, budget, budget) == [approx(x, rel=1e-9) for x in theirs]


def test_stepwise_matches_torch_onecycle_step_by_step() -> None:
    """The state machine, driven one step per interval, reproduces torch's trajectory too."""
    budget, pct = 40, 0.3

    def make(o: torch.optim.Optimizer) -> Any:
        return tls.OneCycleLR(
            o, max_lr=B, total_steps=budget + 1, pct_start=(pct * budget + 1) / (budget + 1)
        )

    ours = stepwise(OneCycleSchedule(pct_start=pct), B, budget, [1] * budget)
    assert ours == [approx(x, rel=1e-9) for x in torch_lrs(make, B, budget)]


# -- stepwise form == closed form --------------------------------------------------------
def _length(data: st.DataObject, max_steps: int) -> int | float:
    return data.draw(st.one_of(st.integers(1, max(1, max_steps)), st.floats(0.01, 0.99)))


def draw_config(data: st.DataObject, name: str, budget: int) -> dict[str, Any]:
    draw = data.draw
    if name == "constant":
        return {}
    if name == "step":
        if draw(st.booleans()):
            ms: list[int | float] = sorted(
                set(draw(st.lists(st.integers(1, 2 * budget), max_size=4)))
            )
        else:
            ms = sorted(set(draw(st.lists(st.floats(0.01, 0.99), max_size=4))))
        return {"milestones": ms, "gamma": draw(st.floats(0.01, 1.0))}
    if name == "exponential":
        if draw(st.booleans()):
            return {"gamma": draw(st.floats(0.5, 1.0))}
        return {"final_ratio": draw(st.floats(1e-6, 1.0))}
    if name in ("linear", "cosine"):
        warmup = draw(
            st.one_of(st.just(0), st.integers(1, max(1, budget - 1)), st.floats(0.01, 0.9))
        )
        ratio = draw(st.floats(0.0, 1.0))
        return {"warmup": warmup, ("final_ratio" if name == "linear" else "min_ratio"): ratio}
    if name == "cyclic":
        return {
            "min_ratio": draw(st.floats(0.01, 0.99)),
            "half_cycle": _length(data, 400),
            "mode": draw(st.sampled_from(["triangular", "triangular2"])),
        }
    if name == "sgdr":
        return {
            "first_cycle": _length(data, 400),
            "t_mult": draw(st.integers(1, 3)),
            "min_ratio": draw(st.floats(0.0, 1.0)),
            "decay": draw(st.floats(0.05, 1.0)),
        }
    assert name == "onecycle"
    return {
        "pct_start": draw(st.floats(0.01, 0.99)),
        "div_factor": draw(st.floats(1.0, 100.0)),
        "final_div_factor": draw(st.floats(1.0, 1e5)),
        "anneal": draw(st.sampled_from(["cos", "linear"])),
    }


def draw_run(data: st.DataObject, name: str) -> tuple[Scheduler, float, int, list[int]]:
    """A valid scheduler, base LR, budget and interval lengths summing to about the budget."""
    intervals = data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=40), label="intervals")
    total = sum(intervals)
    budget = data.draw(st.integers(max(1, total * 3 // 4), total * 5 // 4 + 1), label="budget")
    config = draw_config(data, name, budget)
    sched = make_scheduler(name, **config)
    try:
        sched.lr_at(0, budget, 1.0)  # options that do not fit the budget are not of interest
    except ValueError:
        assume(False)
    b = data.draw(st.floats(1e-4, 10.0), label="base_lr")
    return sched, b, budget, intervals


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60)
@given(data=st.data())
def test_stepwise_equals_closed_form_and_stays_in_bounds(name: str, data: st.DataObject) -> None:
    sched, b, budget, intervals = draw_run(data, name)
    lo, hi = sched.bounds(b)
    lr = sched.reset(b)
    assert lr == sched.lr_at(0, budget)
    assert lo <= lr <= hi
    t = 0
    for n in intervals:
        t += n
        lr = sched.step(sig(t, budget, lr, n))
        assert lr == sched.lr_at(t, budget), f"t={t}"  # the stepwise form is the closed form
        assert lo <= lr <= hi
        assert sched.lr == lr


@pytest.mark.parametrize("name", NAMES)
def test_unit_intervals_over_a_long_run(name: str) -> None:
    budget = 3000
    sched = make_scheduler(name)
    intervals = [1] * (budget + 200)
    assert stepwise(sched, B, budget, intervals) == closed(sched, B, budget, intervals)


def test_exponential_stepwise_does_not_drift_over_many_short_intervals() -> None:
    budget = 20_000
    for sched in (ExponentialSchedule(final_ratio=1e-4), ExponentialSchedule(gamma=0.9999)):
        intervals = [1] * budget
        assert stepwise(sched, B, budget, intervals) == closed(sched, B, budget, intervals)


def test_zero_length_interval_keeps_the_lr() -> None:
    sched = CyclicSchedule(half_cycle=5)
    lr = sched.reset(B)
    lr = sched.step(sig(3, 100, lr, 3))
    assert sched.step(sig(3, 100, lr, 0)) == lr


# -- state round trip --------------------------------------------------------------------
def json_roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state, allow_nan=False))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25)
@given(data=st.data())
def test_state_dict_resumes_identically(name: str, data: st.DataObject) -> None:
    sched, b, budget, intervals = draw_run(data, name)
    cut = data.draw(st.integers(0, len(intervals)), label="cut")
    lr = sched.reset([b, 2 * b])
    t = 0
    for n in intervals[:cut]:
        t += n
        lr = sched.step(sig(t, budget, lr, n))
    state = json_roundtrip(sched.state_dict())
    fresh = type(sched)()
    fresh.load_state_dict(state)
    again = scheduler_from_state(json_roundtrip(sched.state_dict()))
    assert fresh.lr == again.lr == lr
    assert fresh.lrs == sched.lrs
    assert repr(fresh) == repr(sched)
    for n in intervals[cut:]:
        t += n
        expected = sched.step(sig(t, budget, lr, n))
        assert fresh.step(sig(t, budget, lr, n)) == expected
        assert again.step(sig(t, budget, lr, n)) == expected
        lr = expected
    assert fresh.state_dict() == sched.state_dict()


# States written before the stepwise forms became the closed form at the clock (issue 17): they
# also held per-schedule counters (milestones passed, a compensated log-sum, cycle, phase).
OLD_STATES = [
    {"scheduler": "step", "version": 1, "config": {"milestones": [3, 0.5], "gamma": 0.3},
     "base_lrs": [0.37], "lr": 0.033299999999999996,
     "state": {"t": 483, "budget": 931, "passed": 2}},
    {"scheduler": "exponential", "version": 1, "config": {"final_ratio": 0.01, "gamma": None},
     "base_lrs": [0.37], "lr": 0.02568031375180749,
     "state": {"t": 2071, "budget": 3575, "log_scale": -2.667778309141633,
               "log_comp": 1.7867651802561113e-16}},
    {"scheduler": "cyclic", "version": 1,
     "config": {"min_ratio": 0.1, "half_cycle": 0.125, "mode": "triangular"},
     "base_lrs": [0.37], "lr": 0.19514715719063544,
     "state": {"t": 1338, "budget": 2393, "cycle": 2, "pos": 142}},
    {"scheduler": "sgdr", "version": 1,
     "config": {"first_cycle": 7, "t_mult": 3, "min_ratio": 0.0, "decay": 0.8},
     "base_lrs": [0.37], "lr": 0.10993897734099733,
     "state": {"t": 1183, "budget": 1977, "cycle": 5, "pos": 336, "length": 1701}},
    {"scheduler": "onecycle", "version": 1,
     "config": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 10000.0,
                "anneal": "cos"},
     "base_lrs": [0.37], "lr": 0.25183410015596225,
     "state": {"t": 1649, "budget": 2905, "phase": 1}},
]  # fmt: skip


@pytest.mark.parametrize("state", OLD_STATES, ids=[s["scheduler"] for s in OLD_STATES])
def test_states_of_the_former_state_machines_still_load(state: dict[str, Any]) -> None:
    sched = scheduler_from_state(state)
    t, budget = state["state"]["t"], state["state"]["budget"]
    assert sched.lr == state["lr"] == approx(sched.lr_at(t, budget))
    for n in (1, 17, 250, 3000):
        t += n
        assert sched.step(sig(t, budget, sched.lr, n)) == sched.lr_at(t, budget)


# -- bad arguments -----------------------------------------------------------------------
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("step", {"milestones": [0.5, 1.5]}, "milestones"),
    ("step", {"milestones": [0.75, 0.5]}, "milestones"),
    ("step", {"milestones": [10, 10]}, "milestones"),
    ("step", {"milestones": [0]}, "milestones"),
    ("step", {"milestones": [True]}, "milestones"),
    ("step", {"milestones": 0.5}, "milestones"),
    ("step", {"milestones": "0.5"}, "milestones"),
    ("step", {"gamma": 0.0}, "gamma"),
    ("step", {"gamma": 1.5}, "gamma"),
    ("step", {"gamma": math.nan}, "gamma"),
    ("exponential", {"final_ratio": 0.0}, "final_ratio"),
    ("exponential", {"final_ratio": 2.0}, "final_ratio"),
    ("exponential", {"gamma": 1.01}, "gamma"),
    ("exponential", {"gamma": -0.5}, "gamma"),
    ("exponential", {"final_ratio": 0.01, "gamma": 0.9}, "final_ratio"),
    ("linear", {"warmup": -1}, "warmup"),
    ("linear", {"warmup": 1.0}, "warmup"),
    ("linear", {"warmup": 2.5}, "warmup"),
    ("linear", {"warmup": True}, "warmup"),
    ("linear", {"final_ratio": -0.1}, "final_ratio"),
    ("linear", {"final_ratio": 1.1}, "final_ratio"),
    ("cosine", {"warmup": "10"}, "warmup"),
    ("cosine", {"min_ratio": 1.5}, "min_ratio"),
    ("cosine", {"min_ratio": math.inf}, "min_ratio"),
    ("cyclic", {"min_ratio": 0.0}, "min_ratio"),
    ("cyclic", {"min_ratio": 1.0}, "min_ratio"),
    ("cyclic", {"half_cycle": 0}, "half_cycle"),
    ("cyclic", {"half_cycle": 1.0}, "half_cycle"),
    ("cyclic", {"mode": "exp_range"}, "mode"),
    ("sgdr", {"first_cycle": 0.0}, "first_cycle"),
    ("sgdr", {"first_cycle": False}, "first_cycle"),
    ("sgdr", {"t_mult": 0}, "t_mult"),
    ("sgdr", {"t_mult": 1.5}, "t_mult"),
    ("sgdr", {"min_ratio": -0.1}, "min_ratio"),
    ("sgdr", {"decay": 0.0}, "decay"),
    ("sgdr", {"decay": 1.2}, "decay"),
    ("onecycle", {"pct_start": 0.0}, "pct_start"),
    ("onecycle", {"pct_start": 1.0}, "pct_start"),
    ("onecycle", {"div_factor": 0.5}, "div_factor"),
    ("onecycle", {"final_div_factor": -1.0}, "final_div_factor"),
    ("onecycle", {"anneal": "cosine"}, "anneal"),
]


@pytest.mark.parametrize(("name", "kwargs", "option"), BAD)
def test_bad_hyperparameters_raise_value_error_naming_the_option(
    name: str, kwargs: dict[str, Any], option: str
) -> None:
    with pytest.raises(ValueError, match=option) as err:
        CLASSES[name](**kwargs)
    message = str(err.value)
    assert "\n" not in message
    shown = [repr(v) for v in kwargs.values()]
    shown += [repr(x) for v in kwargs.values() if isinstance(v, list) for x in v]
    assert any(r in message for r in shown), message


@pytest.mark.parametrize(
    ("sched", "budget", "option"),
    [
        (LinearSchedule(warmup=10), 10, "warmup=10"),
        (CosineSchedule(warmup=0.9), 2, "warmup=0.9"),
        (StepSchedule(milestones=[0.5, 0.52]), 10, "milestones"),
        (StepSchedule(milestones=[50, 0.25]), 100, "milestones"),
    ],
)
def test_options_that_do_not_fit_the_budget_fail_at_the_first_step(
    sched: Scheduler, budget: int, option: str
) -> None:
    with pytest.raises(ValueError, match=option) as err:
        sched.lr_at(0, budget, 1.0)
    assert str(budget) in str(err.value)
    lr = sched.reset(1.0)  # step 0 does not need the budget ...
    with pytest.raises(ValueError, match=option):  # ... the first step does
        sched.step(sig(1, budget, lr, 1))


def test_bad_call_arguments() -> None:
    sched = CosineSchedule()
    with pytest.raises(ValueError, match="step"):
        sched.lr_at(-1, 10, 1.0)
    with pytest.raises(ValueError, match="budget"):
        sched.lr_at(0, 0, 1.0)
    with pytest.raises(ValueError, match="base_lr"):
        sched.lr_at(0, 10, -1.0)
    with pytest.raises(RuntimeError, match="reset"):
        sched.step(sig(1, 10, 1.0, 1))
    lr = sched.reset(1.0)
    lr = sched.step(sig(5, 10, lr, 5))
    with pytest.raises(ValueError, match="budget changed"):
        sched.step(sig(6, 20, lr, 1))
    with pytest.raises(ValueError, match="interval_steps"):
        sched.step(sig(6, 10, lr, -1))
