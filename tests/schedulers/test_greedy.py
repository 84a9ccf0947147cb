import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasched.schedulers.base import SCHEDULERS, make_scheduler
from metasched.schedulers.greedy import GreedyLR
from metasched.signal import TrainingSignal

F = 0.95
NAN, INF = math.nan, math.inf


def sig(sched, x, i=0, val=None):
    return TrainingSignal(
        step=i, budget=1000, lr=sched.lr, train_loss=x, val_loss=val, interval_steps=1
    )


def run(sched, losses):
    """Feed ``losses`` one per step; return the LR after each step."""
    return [sched.step(sig(sched, x, i)) for i, x in enumerate(losses, start=1)]


def state(sched):
    return sched.state_dict()["state"]


# -- registration and basics -------------------------------------------------------------------


def test_registered_and_configurable():
    assert SCHEDULERS["greedy"] is GreedyLR
    assert GreedyLR.needs_loss and GreedyLR.name == "greedy"
    s = make_scheduler("greedy", patience=2, min_lr=[0.0, 0.1])
    assert isinstance(s, GreedyLR) and s.config["patience"] == 2
    assert s.reset([0.3, 0.2]) == 0.3 and s.lr == 0.3 and s.lrs == [0.3, 0.2]


def test_defaults():
    c = GreedyLR().config
    assert c == {
        "mode": "min",
        "factor": 0.95,
        "patience": 10,
        "threshold": 1e-6,
        "threshold_mode": "abs",
        "cooldown": 0,
        "warmup": 0,
        "min_lr": 1e-3,
        "max_lr": 1.0,
        "eps": 1e-8,
        "smooth": False,
        "window_size": 50,
        "reset_start": 500,
        "loss_source": "auto",
    }


def test_base_lr_not_clamped_and_bounds():
    s = GreedyLR(min_lr=0.01, max_lr=0.5)
    assert s.reset(2.0) == 2.0
    assert s.bounds(2.0) == (0.01, 2.0)
    assert s.bounds(1e-4) == (1e-4, 0.5)
    assert s.bounds(0.1) == (0.01, 0.5)
    # Above max_lr: an increase never moves the LR up, a decrease moves it down.
    assert run(s, [5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6]) == [2.0] * 12


# -- patience ----------------------------------------------------------------------------------


def test_decrease_after_more_than_patience_bad_steps():
    s = GreedyLR(patience=3)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 3.0, 4.0, 5.0]) == [0.1] * 4 + [0.1 * F]


def test_increase_after_more_than_patience_good_steps():
    s = GreedyLR(patience=3)
    s.reset(0.1)
    assert run(s, [1.0, 0.9, 0.8, 0.7]) == [0.1] * 3 + [0.1 / F]
    # The streak restarts from zero after the change.
    assert run(s, [0.6, 0.5, 0.4]) == [0.1 / F] * 3
    assert run(s, [0.3]) == [0.1 / F / F]


def test_exactly_patience_steps_change_nothing():
    s = GreedyLR(patience=3)
    s.reset(0.1)
    assert run(s, [1.0, 0.9, 0.8]) == [0.1] * 3  # three good
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 3.0, 4.0]) == [0.1] * 4  # one good, three bad
    assert state(s)["num_bad"] == 3 and state(s)["num_good"] == 0


def test_patience_zero_reacts_every_step():
    s = GreedyLR(patience=0, factor=0.5)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 0.5]) == [0.2, 0.1, 0.2]


def test_equal_metric_is_not_an_improvement():
    s = GreedyLR(patience=3, threshold=0.0)
    s.reset(0.1)
    assert run(s, [1.0, 1.0, 1.0, 1.0, 1.0]) == [0.1] * 4 + [0.1 * F]
    s = GreedyLR(patience=3, threshold=0.0, mode="max")
    s.reset(0.1)
    assert run(s, [1.0, 1.0, 1.0, 1.0, 1.0]) == [0.1] * 4 + [0.1 * F]


# -- threshold and mode ------------------------------------------------------------------------


def test_threshold_abs_small_improvements_are_bad():
    s = GreedyLR(patience=3, threshold=0.1)
    s.reset(0.1)
    assert run(s, [1.0, 0.99, 0.98, 0.97, 0.96]) == [0.1] * 4 + [0.1 * F]
    assert state(s)["best"] == 1.0
    s = GreedyLR(patience=3, threshold=0.0)
    s.reset(0.1)
    assert run(s, [1.0, 0.99, 0.98, 0.97]) == [0.1] * 3 + [0.1 / F]


def test_threshold_rel_vs_abs():
    losses = [100.0, 99.0, 98.0, 97.0, 96.0]
    s = GreedyLR(patience=3, threshold=0.05, threshold_mode="abs")
    s.reset(0.1)
    assert run(s, losses)[3] == 0.1 / F  # improvements of 1 beat 0.05
    s = GreedyLR(patience=3, threshold=0.05, threshold_mode="rel")
    s.reset(0.1)
    # Each improvement is ~1%, less than 5% of the best: bad.
    assert run(s, losses) == [0.1] * 4 + [0.1 * F]
    assert run(s, [94.0]) == [0.1 * F]  # 94 < 100 * 0.95: good
    assert state(s)["best"] == 94.0


def test_mode_max():
    s = GreedyLR(patience=3, mode="max")
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 3.0, 4.0]) == [0.1] * 3 + [0.1 / F]
    s.reset(0.1)
    assert run(s, [4.0, 3.0, 2.0, 1.0, 0.0]) == [0.1] * 4 + [0.1 * F]
    assert state(s)["best"] == 4.0
    s = GreedyLR(patience=0, mode="max", threshold=0.1, threshold_mode="rel", factor=0.5)
    s.reset(0.1)
    assert run(s, [10.0, 10.5, 11.5]) == [0.2, 0.1, 0.2]  # 10.5 < 11, 11.5 > 11


def test_min_mode_decreasing_metric_lowers_nothing():
    s = GreedyLR(patience=3, mode="min")
    s.reset(0.1)
    assert min(run(s, [4.0, 3.0, 2.0, 1.0, 0.0])) >= 0.1


# -- eps ---------------------------------------------------------------------------------------


def test_eps_suppresses_small_changes():
    # 0.1 -> 0.095 or 0.10526: a change of ~0.005 < eps is not applied.
    s = GreedyLR(patience=0, eps=0.01)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 0.5, 3.0]) == [0.1] * 4
    s = GreedyLR(patience=0, eps=0.001)
    s.reset(0.1)
    assert run(s, [1.0, 2.0]) == [0.1 / F, 0.1 / F * F]


def test_eps_applies_to_the_clamped_change():
    # The step to min_lr is smaller than eps, so the LR stays just above the floor.
    s = GreedyLR(patience=0, factor=0.5, min_lr=0.0999, eps=1e-3, max_lr=0.1)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 2.0]) == [0.1, 0.1, 0.1]


# -- hold-offs ---------------------------------------------------------------------------------


def test_cooldown_after_decrease():
    s = GreedyLR(patience=1, factor=0.5, cooldown=2)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 2.0]) == [0.1, 0.1, 0.05]
    assert state(s)["cooldown_counter"] == 2
    # Two held-off steps: a bad trend is not counted, nor is an improvement taken as best.
    assert run(s, [3.0]) == [0.05]
    st1 = state(s)
    assert (st1["cooldown_counter"], st1["num_bad"], st1["num_good"]) == (1, 0, 0)
    assert run(s, [0.1]) == [0.05]
    st2 = state(s)
    assert (st2["cooldown_counter"], st2["num_bad"], st2["best"]) == (0, 0, 1.0)
    # Evaluation resumes from zero: one bad step is not enough (patience 1), two are.
    assert run(s, [3.0, 3.0]) == [0.05, 0.025]


def test_cooldown_zero_for_comparison():
    s = GreedyLR(patience=1, factor=0.5, cooldown=0)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 2.0, 3.0, 3.0]) == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_warmup_after_increase():
    s = GreedyLR(patience=1, factor=0.5, warmup=2)
    s.reset(0.1)
    assert run(s, [5.0, 4.0]) == [0.1, 0.2]
    assert state(s)["warmup_counter"] == 2
    # Improving during the hold-off: not evaluated, best stays 4, no streak builds.
    assert run(s, [3.0, 2.0]) == [0.2, 0.2]
    st1 = state(s)
    assert (st1["warmup_counter"], st1["num_good"], st1["best"]) == (0, 0, 4.0)
    assert run(s, [1.0, 0.5]) == [0.2, 0.4]
    # Without warmup the improving streak keeps raising the LR.
    s = GreedyLR(patience=1, factor=0.5, warmup=0)
    s.reset(0.1)
    assert run(s, [5.0, 4.0, 3.0, 2.0]) == [0.1, 0.2, 0.2, 0.4]


# -- smoothing ---------------------------------------------------------------------------------


def spiky_losses():
    losses = [5.0 - 0.1 * i for i in range(40)]
    losses[8] = 2.0  # a single downward outlier on a steadily improving curve
    return losses


def test_smoothing_absorbs_a_single_spike():
    kw = dict(patience=3, factor=0.5, max_lr=0.1)
    raw = GreedyLR(**kw)
    raw.reset(0.1)
    assert min(run(raw, spiky_losses())) < 0.1  # the outlier sets best; a bad streak follows
    smooth = GreedyLR(smooth=True, window_size=10, **kw)
    smooth.reset(0.1)
    assert run(smooth, spiky_losses()) == [0.1] * 40


def test_smoothing_window_uses_last_values():
    s = GreedyLR(smooth=True, window_size=2, patience=100)
    s.reset(0.1)
    run(s, [4.0])
    assert state(s)["best"] == 4.0
    run(s, [2.0])
    assert state(s)["best"] == 3.0  # mean(4, 2)
    run(s, [0.0])
    assert state(s)["best"] == 1.0  # mean(2, 0), not mean(4, 2, 0)
    assert state(s)["window"] == [2.0, 0.0]


def test_smoothing_nan_leaves_the_window():
    s = GreedyLR(smooth=True, window_size=2, patience=100)
    s.reset(0.1)
    run(s, [4.0, NAN])
    assert state(s)["best"] == 4.0  # mean is nan: bad
    run(s, [3.0])
    assert state(s)["best"] == 4.0  # nan still in the window
    run(s, [1.0])
    assert state(s)["best"] == 2.0  # nan gone: mean(3, 1)


def test_smoothing_window_fills_during_hold_off():
    s = GreedyLR(smooth=True, window_size=3, patience=0, cooldown=5, factor=0.5)
    s.reset(0.1)
    run(s, [1.0, 2.0, 7.0, 8.0])  # the second step decreases; then held off
    assert state(s)["cooldown_counter"] == 3
    assert state(s)["window"] == [2.0, 7.0, 8.0]


# -- per-group bounds --------------------------------------------------------------------------


def test_two_groups_clamp_independently():
    s = GreedyLR(patience=0, factor=0.5, min_lr=[0.05, 0.15], max_lr=[0.12, 1.0])
    assert s.reset([0.1, 0.2]) == 0.1
    assert s.lrs == [0.1, 0.2]
    run(s, [1.0])  # increase: group 0 capped at its max, group 1 free
    assert s.lrs == [0.12, 0.4]
    assert s.lr == 0.12
    run(s, [2.0])
    assert s.lrs == [0.06, 0.2]
    run(s, [2.0])  # group 0 floored at 0.05, group 1 at 0.15... not yet (0.2 * 0.5 = 0.1)
    assert s.lrs == [0.05, 0.15]
    assert state(s)["reset_counter"] == 499
    run(s, [2.0])
    assert s.lrs == [0.05, 0.15]
    assert state(s)["reset_counter"] == 498


def test_scalar_bounds_broadcast_to_all_groups():
    s = GreedyLR(patience=0, factor=0.5, min_lr=0.04, max_lr=0.3)
    s.reset([0.1, 0.2, 0.05])
    run(s, [1.0])
    assert s.lrs == [0.2, 0.3, 0.1]
    run(s, [2.0, 2.0, 2.0])
    assert s.lrs == [0.04, 0.04, 0.04]


def test_reset_counter_not_decremented_until_every_group_is_at_min():
    s = GreedyLR(patience=0, factor=0.5, min_lr=[0.05, 0.01], max_lr=0.1, reset_start=2)
    s.reset([0.1, 0.1])
    run(s, [1.0, 2.0])  # [0.05, 0.05]: group 1 not at min
    assert s.lrs == [0.05, 0.05] and state(s)["reset_counter"] == 2
    run(s, [2.0, 2.0])
    assert s.lrs == [0.05, 0.0125] and state(s)["reset_counter"] == 2
    run(s, [2.0])
    assert s.lrs == [0.05, 0.01] and state(s)["reset_counter"] == 1


# -- automatic restart -------------------------------------------------------------------------


def test_auto_reset_restores_initial_state():
    s = GreedyLR(patience=0, factor=0.5, min_lr=0.05, max_lr=0.1, reset_start=2, cooldown=1)
    s.reset(0.1)
    assert run(s, [1.0]) == [0.1]  # good: increase is a no-op (at max), re-arms
    assert run(s, [2.0]) == [0.05]  # at min: counter 2 -> 1
    assert state(s)["reset_counter"] == 1 and state(s)["cooldown_counter"] == 1
    assert run(s, [2.0]) == [0.05]  # cooldown
    assert run(s, [2.0]) == [0.1]  # counter 1 -> 0: restart, then the decrease's cooldown
    st1 = state(s)
    assert st1 == {
        "best": "inf",
        "num_good": 0,
        "num_bad": 0,
        "cooldown_counter": 1,
        "warmup_counter": 0,
        "reset_counter": 2,
        "lrs": [0.1],
        "initial_lrs": [0.1],
        "window": [],
    }
    assert run(s, [0.5]) == [0.1]  # held by the cooldown: not evaluated
    assert state(s)["best"] == "inf"
    # best was reset: 1.5 (worse than the old best 1.0) is an improvement now.
    run(s, [1.5])
    assert state(s)["best"] == 1.5


def test_restart_keeps_the_cooldown_of_the_triggering_decrease():
    # Issue 12, item 13: with cooldown > 0 and patience 0 the reference (Hugging Face
    # transformers' GreedyLR) sets cooldown_counter = cooldown after the restart, so the
    # first step after it is held at the initial LR 0.1; evaluating at once would count
    # any finite loss as an improvement over best = inf and raise the LR to 0.2.
    s = GreedyLR(patience=0, factor=0.5, min_lr=0.05, max_lr=1.0, reset_start=1, cooldown=2)
    s.reset(0.1)
    assert run(s, [1.0]) == [0.2]  # improvement over inf: increase
    assert run(s, [2.0]) == [0.1]  # bad: decrease, cooldown 2
    assert run(s, [2.0, 2.0]) == [0.1, 0.1]  # cooldown
    assert run(s, [2.0]) == [0.1]  # bad: 0.05 is the floor -> restart to the initial 0.1
    assert state(s)["cooldown_counter"] == 2
    assert run(s, [1.0]) == [0.1]  # the reference holds 0.1 here (was 0.2)
    assert run(s, [1.0]) == [0.1]
    assert run(s, [1.0]) == [0.2]  # cooldown over: evaluated, improvement over inf


def test_auto_reset_empties_window_and_restores_all_groups():
    s = GreedyLR(
        patience=0, factor=0.5, min_lr=0.05, max_lr=1.0, reset_start=2, smooth=True, window_size=4
    )
    s.reset([0.1, 0.2])
    run(s, [NAN])  # the window mean stays nan: every step is bad
    assert s.lrs == [0.05, 0.1] and state(s)["reset_counter"] == 2  # group 1 above min
    run(s, [5.0])
    assert s.lrs == [0.05, 0.05] and state(s)["reset_counter"] == 1
    assert state(s)["window"] == ["nan", 5.0]
    run(s, [6.0])  # all at min, counter 1 -> 0
    assert s.lrs == [0.1, 0.2] and s.lr == 0.1
    assert state(s)["window"] == [] and state(s)["best"] == "inf"


def test_increase_rearms_reset_counter():
    kw = dict(patience=0, factor=0.5, min_lr=0.05, max_lr=0.2, reset_start=3)
    s = GreedyLR(**kw)
    s.reset(0.1)
    lrs = run(s, [1.0, 2.0, 2.0, 2.0])
    assert lrs == [0.2, 0.1, 0.05, 0.05]
    assert state(s)["reset_counter"] == 1
    assert run(s, [0.5]) == [0.1]  # increase re-arms to 3
    assert state(s)["reset_counter"] == 3
    assert run(s, [2.0, 2.0, 2.0]) == [0.05, 0.05, 0.1]  # three more decreases at min
    # Without the increase the restart comes at the very next decrease.
    s = GreedyLR(**kw)
    s.reset(0.1)
    assert run(s, [1.0, 2.0, 2.0, 2.0, 2.0]) == [0.2, 0.1, 0.05, 0.05, 0.1]


# -- loss source -------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [("auto", 3.0), ("val", 3.0), ("train", 5.0)])
def test_loss_source(source, expected):
    s = GreedyLR(loss_source=source)
    s.reset(0.1)
    s.step(sig(s, 5.0, 1, val=3.0))
    assert state(s)["best"] == expected


def test_loss_source_without_val_uses_train():
    for source in ("auto", "val", "train"):
        s = GreedyLR(loss_source=source)
        s.reset(0.1)
        s.step(sig(s, 5.0, 1))
        assert state(s)["best"] == 5.0


def test_loss_source_val_drives_lr():
    s = GreedyLR(patience=0, factor=0.5, loss_source="val")
    s.reset(0.1)
    s.step(sig(s, 1.0, 1, val=1.0))  # good
    assert s.step(sig(s, 0.1, 2, val=2.0)) == 0.1  # train improved, val did not


# -- non-finite metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_metric_is_a_bad_step(bad):
    s = GreedyLR(patience=3)
    s.reset(0.1)
    assert run(s, [1.0, bad, bad, bad, bad]) == [0.1] * 4 + [0.1 * F]
    assert state(s)["best"] == 1.0


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_metric_is_bad_in_max_mode(bad):
    s = GreedyLR(patience=3, mode="max")
    s.reset(0.1)
    assert run(s, [1.0, bad, bad, bad, bad]) == [0.1] * 4 + [0.1 * F]


def test_non_finite_first_metric_keeps_best_at_start():
    s = GreedyLR(patience=1)
    s.reset(0.1)
    run(s, [NAN])
    assert state(s)["best"] == "inf" and state(s)["num_bad"] == 1


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(factor=1.0),
        dict(factor=1.5),
        dict(factor=0.0),
        dict(factor=-0.5),
        dict(factor=NAN),
        dict(patience=-1),
        dict(patience=1.5),
        dict(cooldown=-1),
        dict(warmup=-1),
        dict(threshold=-1e-3),
        dict(min_lr=0.5, max_lr=0.1),
        dict(min_lr=[0.01, 0.5], max_lr=0.1),
        dict(min_lr=[0.01, 0.02], max_lr=[0.1, 0.2, 0.3]),
        dict(min_lr=[]),
        dict(min_lr=-0.1),
        dict(mode="minimize"),
        dict(threshold_mode="relative"),
        dict(eps=-1.0),
        dict(smooth=1),
        dict(window_size=0),
        dict(reset_start=0),
        dict(loss_source="test"),
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        GreedyLR(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "groups"),
    [
        (dict(min_lr=[0.001, 0.001]), 0.1),
        (dict(max_lr=[1.0, 1.0, 1.0]), [0.1, 0.1]),
        (dict(min_lr=[0.001], max_lr=[1.0]), [0.1, 0.1]),
    ],
)
def test_mismatched_group_count_at_reset(kwargs, groups):
    s = GreedyLR(**kwargs)
    n_bound = len(next(v for v in kwargs.values() if isinstance(v, list)))
    n_groups = len(groups) if isinstance(groups, list) else 1
    with pytest.raises(ValueError, match=rf"{n_bound} values.*{n_groups} parameter group"):
        s.reset(groups)


def test_step_before_reset_raises():
    s = GreedyLR()
    with pytest.raises(RuntimeError):
        s.step(TrainingSignal(step=1, budget=10, lr=0.1, train_loss=1.0))


# -- state -------------------------------------------------------------------------------------


def roundtrip(sched):
    text = json.dumps(sched.state_dict(), allow_nan=False)
    fresh = GreedyLR()
    fresh.load_state_dict(json.loads(text))
    return fresh


def test_state_roundtrip_mid_cooldown_with_smoothing():
    kw = dict(
        patience=1,
        cooldown=3,
        warmup=1,
        factor=0.7,
        smooth=True,
        window_size=3,
        min_lr=[0.01, 0.02],
        max_lr=[0.5, 0.9],
        reset_start=2,
        threshold=0.01,
        threshold_mode="rel",
    )
    losses = [3.0, 2.5, 2.0, NAN, 2.2, 2.4, 2.6, 2.6, 1.0, 0.8, 0.7, INF, 0.9, 1.2, 1.5, 1.5]
    losses += [1.4, 1.3, 1.2, 1.1, 1.0, 0.9, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    losses *= 3
    ref = GreedyLR(**kw)
    ref.reset([0.1, 0.3])
    ref_lrs = []
    for i, x in enumerate(losses):
        ref.step(sig(ref, x, i))
        ref_lrs.append(ref.lrs)

    probe = GreedyLR(**kw)
    probe.reset([0.1, 0.3])
    cut = None
    for i, x in enumerate(losses):
        probe.step(sig(probe, x, i))
        st_ = state(probe)
        if st_["cooldown_counter"] > 0 and any(not isinstance(w, float) for w in st_["window"]):
            cut = i
            break
    assert cut is not None, "sequence never reached a cooldown with a non-finite window value"

    resumed = roundtrip(probe)
    assert resumed.config == probe.config
    assert resumed.state_dict() == probe.state_dict()
    assert resumed.lr == probe.lr and resumed.lrs == probe.lrs
    for i, x in enumerate(losses[cut + 1 :], start=cut + 1):
        resumed.step(sig(resumed, x, i))
        assert resumed.lrs == ref_lrs[i]
    assert len(set(map(tuple, ref_lrs))) > 3  # the run actually moved the LR


def test_state_before_reset_roundtrips():
    s = GreedyLR(patience=4, mode="max")
    fresh = roundtrip(s)
    assert fresh.config == s.config
    assert json.dumps(fresh.state_dict(), allow_nan=False)


# -- property tests ----------------------------------------------------------------------------

loss_values = st.one_of(
    st.integers(0, 6).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([NAN, INF, -INF]),
)


@settings(max_examples=150)
@given(
    losses=st.lists(loss_values, max_size=80),
    bases=st.lists(st.sampled_from([1e-4, 0.01, 0.1, 0.5, 3.0]), min_size=1, max_size=3),
    bounds=st.lists(
        st.tuples(st.sampled_from([0.0, 1e-3, 0.05]), st.sampled_from([0.05, 0.2, 1.0])),
        min_size=3,
        max_size=3,
    ),
    patience=st.integers(0, 3),
    cooldown=st.integers(0, 2),
    warmup=st.integers(0, 2),
    factor=st.sampled_from([0.1, 0.5, 0.95]),
    smooth=st.booleans(),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["abs", "rel"]),
    reset_start=st.integers(1, 4),
)
def test_lrs_stay_finite_and_in_bounds(
    losses,
    bases,
    bounds,
    patience,
    cooldown,
    warmup,
    factor,
    smooth,
    mode,
    threshold_mode,
    reset_start,
):
    n = len(bases)
    min_lrs = [b[0] for b in bounds[:n]]
    max_lrs = [b[1] for b in bounds[:n]]
    s = GreedyLR(
        patience=patience,
        cooldown=cooldown,
        warmup=warmup,
        factor=factor,
        smooth=smooth,
        window_size=3,
        mode=mode,
        threshold_mode=threshold_mode,
        reset_start=reset_start,
        min_lr=min_lrs,
        max_lr=max_lrs,
    )
    s.reset(bases)
    lo0, hi0 = s.bounds(bases[0])
    for i, x in enumerate(losses):
        lr = s.step(sig(s, x, i))
        assert lr == s.lrs[0] and lo0 <= lr <= hi0
        for g, v in enumerate(s.lrs):
            assert math.isfinite(v)
            assert min(min_lrs[g], bases[g]) <= v <= max(max_lrs[g], bases[g])
    json.dumps(s.state_dict(), allow_nan=False)


def reference_lrs(losses, base, *, factor, patience, cooldown, warmup, threshold, reset_start):
    """Single group, min mode, absolute threshold, no smoothing; min_lr 0.02, max_lr 0.5."""
    min_lr, max_lr, eps = 0.02, 0.5, 1e-8
    lr, best = base, INF
    good = bad = hold_cd = hold_wu = 0
    countdown = reset_start
    out = []
    for x in losses:
        if hold_cd:
            hold_cd -= 1
            good = bad = 0
        elif hold_wu:
            hold_wu -= 1
            good = bad = 0
        else:
            improved = x == x and abs(x) != INF and x < best - threshold
            if improved:
                best, good, bad = x, good + 1, 0
            else:
                good, bad = 0, bad + 1
            if good > patience:
                up = min(lr / factor, max_lr)
                lr = up if up - lr > eps else lr
                hold_wu, good, countdown = warmup, 0, reset_start
            elif bad > patience:
                down = max(lr * factor, min_lr)
                lr = down if lr - down > eps else lr
                hold_cd, bad = cooldown, 0
                if lr <= min_lr:
                    countdown -= 1
                    if countdown <= 0:
                        lr, best = base, INF
                        good = bad = hold_wu = 0
                        hold_cd = cooldown  # the triggering decrease still cools down
                        countdown = reset_start
        out.append(lr)
    return out


@settings(max_examples=300)
@given(
    losses=st.lists(
        st.one_of(st.integers(0, 8).map(float), st.sampled_from([NAN, INF, -INF])), max_size=100
    ),
    base=st.sampled_from([0.005, 0.02, 0.1, 0.5, 0.9]),
    factor=st.sampled_from([0.3, 0.5, 0.8, 0.95]),
    patience=st.integers(0, 4),
    cooldown=st.integers(0, 3),
    warmup=st.integers(0, 3),
    threshold=st.sampled_from([0.0, 0.5, 1.5]),
    reset_start=st.integers(1, 4),
)
def test_matches_reference_restatement(
    losses, base, factor, patience, cooldown, warmup, threshold, reset_start
):
    kw = dict(
        factor=factor,
        patience=patience,
        cooldown=cooldown,
        warmup=warmup,
        threshold=threshold,
        reset_start=reset_start,
    )
    s = GreedyLR(min_lr=0.02, max_lr=0.5, **kw)
    s.reset(base)
    assert run(s, losses) == reference_lrs(losses, base, **kw)
