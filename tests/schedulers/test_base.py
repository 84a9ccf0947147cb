import json
import math

import pytest

import metasched
from metasched.errors import ConfigError, UnknownNameError
from metasched.schedulers import SCHEDULERS, make_scheduler, scheduler_from_state
from metasched.schedulers.base import decode_float, encode_float
from metasched.signal import TrainingSignal


def test_registry_holds_every_scheduler_of_the_issue():
    expected = {
        "constant",
        "step",
        "exponential",
        "linear",
        "cosine",
        "cyclic",
        "sgdr",
        "onecycle",
        "greedy",
        "probe",
    }
    assert expected <= set(SCHEDULERS)
    assert metasched.make_scheduler is make_scheduler


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'cosine'"):
        make_scheduler("cosin")


def test_unknown_option_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'patience'"):
        make_scheduler("greedy", patiense=3)


@pytest.mark.parametrize("x", [1.5, 0.0, -2.0, math.inf, -math.inf])
def test_float_codec_round_trips(x):
    assert decode_float(json.loads(json.dumps(encode_float(x), allow_nan=False))) == x


def test_float_codec_nan_and_garbage():
    assert math.isnan(decode_float(encode_float(math.nan)))
    with pytest.raises(ValueError, match="not an encoded float"):
        decode_float("infinity-ish")


def test_step_before_reset_is_an_error():
    s = make_scheduler("constant")
    with pytest.raises(RuntimeError, match="before reset"):
        s.step(TrainingSignal(step=1, budget=10, lr=0.1, train_loss=1.0, interval_steps=1))


def test_step_rejects_non_signal():
    s = make_scheduler("constant")
    s.reset(0.1)
    with pytest.raises(TypeError, match="TrainingSignal"):
        s.step(1.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, [], "0.1", [0.1, -0.1]])
def test_reset_rejects_bad_base_lr(bad):
    with pytest.raises(ValueError, match="base_lr"):
        make_scheduler("constant").reset(bad)


def test_load_state_of_another_scheduler_is_refused():
    a = make_scheduler("cosine")
    a.reset(0.1)
    with pytest.raises(ValueError, match="'cosine', not 'constant'"):
        make_scheduler("constant").load_state_dict(a.state_dict())


def test_load_state_of_unknown_version_is_refused():
    a = make_scheduler("cosine")
    a.reset(0.1)
    st = a.state_dict()
    st["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        make_scheduler("cosine").load_state_dict(st)


def test_scheduler_from_state_rebuilds_config():
    a = make_scheduler("cosine", min_ratio=0.25)
    a.reset(0.2)
    b = scheduler_from_state(json.loads(json.dumps(a.state_dict(), allow_nan=False)))
    assert repr(b) == repr(a) and b.lr == a.lr and b.base_lrs == [0.2]


def test_multiple_groups_follow_the_reference_group_in_proportion():
    s = make_scheduler("constant")
    s.reset([0.1, 0.05, 0.0])
    assert s.lrs == pytest.approx([0.1, 0.05, 0.0])
