"""PBT on Ray Tune: settings checked like the in-process pbt; a small population runs."""

import math

import pytest

from metasched.distributed.tune_pbt import pbt_on_ray
from metasched.errors import ConfigError


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"exploit": "ttest"}, "exploit='truncation' on the LR only"),
        ({"momentum": [0.0, 0.9]}, "exploit='truncation' on the LR only"),
        ({"population": 1}, "population"),
    ],
)
def test_unsupported_or_bad_settings_are_refused_before_ray_starts(kw, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        pbt_on_ray("nmf", budget=100, interval=50, **kw)


@pytest.mark.slow  # ~2 min on 2 loaded cores: Tune restarts a member's actor at each exploit
def test_small_population_on_ray_tune_trains(ray_local):
    from metasched.distill.compare import Cell, run_cell

    res = pbt_on_ray("nmf", index=0, budget=200, interval=50, population=3, ready=2)
    assert res["trials"] == 3 and res["population"] == 3
    assert math.isfinite(res["final_loss"])
    const = run_cell(Cell("nmf", 0, "test", 0, 0, "constant", "constant", {}, None, 200, 50,
                          "deterministic", 0.8))  # fmt: skip
    start = const["trace"]["columns"]["train_loss"][0]
    assert res["final_loss"] < start  # the population trained the problem
