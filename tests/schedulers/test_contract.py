"""Contract every registry entry must honour (observing, open-loop and search schedulers)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasched.schedulers import SCHEDULERS, Run, make_scheduler, scheduler_from_state
from metasched.signal import TrainingSignal

# Non-default configurations exercised besides the defaults of every entry.
EXTRA_CONFIGS = {
    "cosine": [{"warmup": 0.1, "min_ratio": 0.05}, {"warmup": 30}],
    "linear": [{"warmup": 0.2, "final_ratio": 0.1}],
    "step": [{"milestones": [0.3, 0.6, 0.9], "gamma": 0.5}, {"milestones": [50, 120]}],
    "exponential": [{"gamma": 0.99}],
    "cyclic": [{"mode": "triangular2", "half_cycle": 40}],
    "sgdr": [{"first_cycle": 25, "t_mult": 1, "decay": 0.7}],
    "onecycle": [{"anneal": "linear", "pct_start": 0.5}],
    "wsd": [
        {"warmup": 0.1, "cooldown": 0.3, "shape": "linear", "final_ratio": 0.1},
        {"warmup": 20, "cooldown": 50},
    ],
    "schedulefree": [{"lr_scale": 2.0, "warmup_steps": 30}],
    "prodigy": [{"d_coef": 0.5, "beta1": 0.0}],
    "dadapt": [{"momentum": 0.9, "growth_rate": 1.02}],
    "greedy": [
        {"patience": 1, "smooth": True, "window_size": 3, "cooldown": 2, "warmup": 1},
        {
            "mode": "max",
            "threshold_mode": "rel",
            "threshold": 0.01,
            "min_lr": 1e-4,
            "max_lr": 10.0,
            "reset_start": 2,
        },
    ],
    "probe": [{"every": 2, "k": 1, "continue_from": "winner"}, {"p": 1.0, "k": 3}],
    "hypergradient": [
        {"granularity": "group", "beta": 1.0},
        {"granularity": "param", "beta": 100.0, "max_ratio": 3.0},
    ],
    "sls": [{"reset": 2, "max_lr": 0.5}, {"reset": 0, "max_backtracks": 5}],
    "autolrs": [{"k": 3, "tau": 50, "tau_max": 100, "lr_range": [0.1, 4.0]}],
    "pbt": [
        {"population": 3, "ready": 1, "exploit": "ttest"},
        {"population": 4, "ready": 2, "exploit": "tournament", "resample_p": 1.0},
    ],
}

# Entries that cannot be built from options alone: "learned" needs an exported policy file
# (there is no default), so its contract is checked in test_learned.py with a trained policy.
NEEDS_FILE = {"learned", "rules"}  # rules: a distilled rules file (test_rules.py)

CASES = [
    pytest.param(name, cfg, id=f"{name}-{i}")
    for name in sorted(set(SCHEDULERS) - NEEDS_FILE)
    for i, cfg in enumerate([{}, *EXTRA_CONFIGS.get(name, [])])
]
OBSERVING = [c for c in CASES if not SCHEDULERS[c.values[0]].drives_training]
OPEN_LOOP = [c for c in CASES if SCHEDULERS[c.values[0]].open_loop]


def test_every_entry_is_covered():
    assert {c.values[0] for c in CASES} | NEEDS_FILE == set(SCHEDULERS)
    assert len(OPEN_LOOP) >= 8


losses = st.one_of(
    st.floats(1e-6, 1e3),
    st.sampled_from([math.inf, math.nan, 0.0]),
)
sequences = st.lists(
    st.tuples(st.integers(1, 120), losses, st.one_of(st.none(), st.floats(1e-6, 1e3))),
    min_size=1,
    max_size=40,
)


def _signals(seq, budget, lr=0.1):
    t = 0
    for n, loss, val in seq:
        t += n
        yield TrainingSignal(
            step=t,
            budget=budget,
            lr=lr,
            train_loss=loss,
            val_loss=val,
            interval_steps=n,
            grad_norm=1.0,
            frac_increasing=0.5,
            losses=(loss,) * min(n, 3),
        )


def _check(s, base):
    lo, hi = s.bounds(base)
    assert math.isfinite(s.lr), s
    assert lo * (1 - 1e-12) <= s.lr <= hi * (1 + 1e-12), (s.lr, lo, hi, s)
    assert all(math.isfinite(x) and x >= 0 for x in s.lrs)


@pytest.mark.parametrize(("name", "cfg"), OBSERVING)
@settings(max_examples=25)
@given(seq=sequences, base=st.floats(1e-4, 10.0), extra=st.integers(0, 500))
def test_lr_finite_and_within_bounds(name, cfg, seq, base, extra):
    s = make_scheduler(name, **cfg)
    budget = max(sum(n for n, _, _ in seq) + extra, 200)
    s.reset(base)
    _check(s, base)
    for sig in _signals(seq, budget):
        s.step(sig)
        _check(s, base)


@pytest.mark.parametrize(("name", "cfg"), OBSERVING)
@settings(max_examples=20)
@given(seq=sequences, base=st.floats(1e-4, 10.0), cut=st.integers(0, 40))
def test_state_round_trip_through_json_resumes_identically(name, cfg, seq, base, cut):
    budget = max(sum(n for n, _, _ in seq) + 1, 200)
    sigs = list(_signals(seq, budget))
    cut = min(cut, len(sigs))
    a = make_scheduler(name, **cfg)
    a.reset(base)
    for sig in sigs[:cut]:
        a.step(sig)
    blob = json.dumps(a.state_dict(), allow_nan=False)
    b = make_scheduler(name)  # a fresh instance with *default* options
    b.load_state_dict(json.loads(blob))
    c = scheduler_from_state(json.loads(blob))
    assert repr(b) == repr(a) == repr(c)
    for sig in sigs[cut:]:
        la, lb, lc = a.step(sig), b.step(sig), c.step(sig)
        assert la == lb == lc or (math.isnan(la) and math.isnan(lb))
        assert a.lrs == b.lrs == c.lrs


@pytest.mark.parametrize(("name", "cfg"), OPEN_LOOP)
@settings(max_examples=25)
@given(
    intervals=st.lists(st.integers(1, 150), min_size=1, max_size=30),
    base=st.floats(1e-4, 10.0),
    extra=st.integers(0, 300),
)
def test_closed_form_equals_stepwise(name, cfg, intervals, base, extra):
    s = make_scheduler(name, **cfg)
    budget = max(sum(intervals) + extra, 200)
    assert s.reset(base) == pytest.approx(s.lr_at(0, budget, base), rel=1e-12, abs=1e-15)
    t = 0
    for n in intervals:
        t += n
        got = s.step(
            TrainingSignal(step=t, budget=budget, lr=s.lr, train_loss=1.0, interval_steps=n)
        )
        assert got == pytest.approx(s.lr_at(t, budget, base), rel=1e-12, abs=1e-15)


# -- every entry, end to end on a real task, through the runner ------------------------------


def _trace_equal(a, b):
    for col in ("step", "lr", "applied_lr", "train_loss", "val_loss", "inner_steps"):
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    assert a.final_loss == b.final_loss and a.extra_steps == b.extra_steps


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_runner_resume_mid_run_from_json_state(name, cfg, nmf_task, tiny_mlp, resumed_run):
    """Swap in a fresh scheduler loaded from JSON mid-run: the run is unchanged."""

    def task():  # a tiny MLP for entries that do not run on projected tasks
        projected = getattr(SCHEDULERS[name], "runs_projected", True)
        return nmf_task(0, seed=3) if projected else tiny_mlp()

    budget, interval = 400, 25
    whole = Run(task(), make_scheduler(name, **cfg), budget=budget, interval=interval)
    whole.start(7)
    ref = whole.run()
    assert len(ref) == budget // interval + 1 and not ref.diverged
    assert np.all(np.isfinite(ref["lr"][1:])) and np.all(ref["lr"][1:] > 0)

    part = Run(task(), make_scheduler(name, **cfg), budget=budget, interval=interval)
    _trace_equal(resumed_run(part, seed=7, cut=7), ref)
