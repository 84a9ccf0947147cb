"""The tuning protocol (mean log final loss, CIs, flat flag) and the tuning-cost curve."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasched.distill import compare as cmp
from metasched.distill.compare import CompareSpec, tune
from metasched.distill.report import add_runs_to_match
from metasched.distill.tuning import (
    DIVERGED_FACTOR,
    cost_curve,
    grid_neighbours,
    log_score,
    runs_to_match,
    tune_curve,
)
from metasched.schedulers.runner import TRACE_COLUMNS


def test_log_score_and_the_divergence_penalty():
    assert log_score(0.5, 2.0, False) == pytest.approx(math.log(0.5))
    assert log_score(math.inf, 2.0, True) == pytest.approx(math.log(DIVERGED_FACTOR * 2.0))
    assert log_score(None, 2.0, True) == pytest.approx(math.log(DIVERGED_FACTOR * 2.0))
    # a collapse is flagged diverged but finite: never scored better than where it ended
    assert log_score(50.0, 2.0, True) == pytest.approx(math.log(DIVERGED_FACTOR * 50.0))
    assert log_score(math.nan, None, True) == pytest.approx(math.log(DIVERGED_FACTOR))


def test_mean_log_loss_picks_what_a_median_would_not():
    # point 0: lowest median (0.010) but two instances at 0.1; point 1: 0.011 everywhere
    finals = np.array([[0.010, 0.010, 0.010, 0.10, 0.10], [0.011] * 5])
    assert int(np.argmin(np.median(finals, axis=1))) == 0
    curve = tune_curve(np.log(finals))
    assert curve.best == 1
    assert curve.mean[1] == pytest.approx(math.log(0.011))


def _fake_results(final_of):
    """A run_cell stand-in: final loss = final_of(multiple, kwargs, index); starts at 1."""

    def run(cell):
        final = final_of(cell.multiple, cell.kwargs, cell.index)
        div = not math.isfinite(final)
        cols = {c: [None, None] for c in TRACE_COLUMNS}
        cols["val_loss"] = [1.0, None if div else final]
        cols["step"] = [0, cell.budget]
        trace = {"task": f"t{cell.index}", "scheduler": cell.name, "budget": cell.budget,
                 "interval": cell.interval, "final_loss": None if div else final,
                 "diverged": div, "extra_steps": 0, "clip_count": 0, "columns": cols}  # fmt: skip
        return {"cell": cell.key(), "lr_ref": 1.0, "trace": trace}

    return run


def test_tune_picks_the_argmin_of_mean_log_loss_through_compare(tmp_path, monkeypatch):
    # multiple 1: best median, heavy tail; multiple 2: steady; multiple 4: diverges once
    table = {
        1.0: [0.010, 0.010, 0.010, 0.10, 0.10, 0.010],
        2.0: [0.011] * 6,
        4.0: [0.005, 0.005, 0.005, math.inf, 0.005, 0.005],
    }
    monkeypatch.setattr(cmp, "run_cell", _fake_results(lambda m, kw, i: table[m][i]))
    spec = CompareSpec(tune_instances=6, grid=(1.0, 2.0, 4.0), budget=100, interval=50)
    t = tune(spec, ["constant"], tmp_path)["nmf/constant"]
    means = [np.mean([log_score(x, 1.0, not math.isfinite(x)) for x in table[m]]) for m in table]
    assert t["mean"] == pytest.approx(means)
    # the median would pick 4 (0.005); one divergence in six (scored log(10 x 1.0)) outweighs
    # its halved loss elsewhere, and multiple 1's heavy tail loses to the steady multiple 2
    assert t["multiple"] == list(table)[int(np.argmin(means))] == 2.0
    assert t["diverged"] == [0, 0, 1]
    assert t["ranking"] == [1, 2, 0] and t["objective"] == "mean log final loss"


def test_joint_tuning_covers_factor_patience_and_start(tmp_path, monkeypatch):
    def final(m, kw, i):  # optimum at start 2, factor 0.7, patience 3
        dist = abs(math.log2(m) - 1) + abs(kw["factor"] - 0.7) + abs(kw["patience"] - 3)
        return 0.01 * (1 + dist)

    monkeypatch.setattr(cmp, "run_cell", _fake_results(final))
    spec = CompareSpec(tune_instances=2, joint_grid=(1.0, 2.0, 4.0), budget=100, interval=50)
    t = tune(spec, ["greedy-tuned"], tmp_path)["nmf/greedy-tuned"]
    assert len(t["points"]) == 3 * 4 * 4
    assert (t["multiple"], t["kwargs"]) == (2.0, {"factor": 0.7, "patience": 3})


def _scores(means, noise, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([m + noise * rng.standard_normal(n) for m in means])


def test_flat_region_flag():
    # clear optimum, tiny noise: nothing else inside its CI
    sharp = tune_curve(_scores([-1.0, -2.0, -1.0], 0.01))
    assert sharp.best == 1 and sharp.flat == (1,) and not sharp.in_flat_region
    # neighbours 0.01 apart under noise 0.5: indistinguishable
    flat = tune_curve(_scores([-1.99, -2.0, -1.98], 0.5))
    assert flat.in_flat_region and set(flat.flat) == {0, 1, 2}
    # instances differ far more than LRs do (overlapping marginal CIs), but every instance
    # ranks the LRs the same way: the paired comparison is not fooled
    rng = np.random.default_rng(2)
    shared = rng.normal(0.0, 1.0, 40)
    paired = np.array([shared + m + 0.01 * rng.standard_normal(40) for m in (-1.0, -1.1, -1.0)])
    c = tune_curve(paired)
    assert c.lo[0] < c.hi[1]  # the marginal CIs overlap ...
    assert c.best == 1 and c.flat == (1,) and not c.in_flat_region  # ... the paired ones do not
    # an equally good point that is *not* a neighbour does not make the region flat
    far = tune_curve(_scores([-2.0, -1.0, -2.0005, -1.0], 0.01, seed=1))
    assert far.best in (0, 2) and len(far.flat) == 2 and not far.in_flat_region
    # at the end of the LR axis
    assert tune_curve(_scores([-3.0, -2.0, -1.0], 0.01)).at_grid_edge


def test_grid_neighbours_on_a_joint_grid():
    coords = list(itertools.product(range(2), range(3)))
    nb = grid_neighbours(coords)
    assert nb[coords.index((0, 1))] == sorted(
        [coords.index((0, 0)), coords.index((0, 2)), coords.index((1, 1))]
    )


def _brute_force(scores, eval_medians, k):
    picks = []
    for sub in itertools.combinations(range(len(scores)), k):
        means = [(scores[i].mean(), i) for i in sub]
        picks.append(eval_medians[min(means)[1]])
    return float(np.mean(picks))


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(1, 6),
    n=st.integers(1, 5),
    seed=st.integers(0, 10_000),
)
def test_cost_curve_equals_tuning_on_every_subset(p, n, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(p, n)).round(1)  # rounding makes ties
    evals = rng.uniform(0.5, 2.0, size=p)
    curve = cost_curve(tune_curve(scores).ranking, evals, n)
    assert [c.k for c in curve] == list(range(1, p + 1))
    assert [c.tuning_runs for c in curve] == [k * n for k in range(1, p + 1)]
    for c in curve:
        assert c.expected == pytest.approx(_brute_force(scores, evals, c.k))
        assert c.p_best == pytest.approx(c.k / p)
        assert min(evals) <= c.q10 <= c.q90 <= max(evals)
    assert curve[0].expected == pytest.approx(np.mean(evals))  # one random point
    assert curve[-1].expected == pytest.approx(evals[tune_curve(scores).best])  # full tuning


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_cost_curve_falls_when_train_and_test_agree(p, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(p, 3))
    evals = np.exp(scores.mean(axis=1))  # the test median is a monotone image of the score
    curve = cost_curve(tune_curve(scores).ranking, evals, 3)
    values = [c.expected for c in curve]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(min(evals))
    target = float(np.median(evals))
    runs = runs_to_match(curve, target)
    assert runs == min(c.tuning_runs for c in curve if c.expected <= target)


def test_cost_curve_rejects_bad_input():
    with pytest.raises(ValueError, match="permutation"):
        cost_curve([0, 0], [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="same non-zero length"):
        cost_curve([0, 1], [1.0], 3)
    assert runs_to_match(cost_curve([0, 1], [1.0, math.inf], 2), 0.5) == math.inf
    assert cost_curve([1, 0], [1.0, math.inf], 2)[0].expected == math.inf


def test_runs_to_match_column():
    summary = [
        {"family": "nmf", "scheduler": s, "median_final": m,
         "tuning_runs_to_match_learned": math.nan}
        for s, m in (("learned", 1.0), ("cosine", 0.9), ("cosine@ref", 1.2), ("constant@ref", 0.8),
                     ("probe", 0.5), ("constant", 2.0))
    ]  # fmt: skip
    cost = {
        ("nmf", "cosine"): [
            {"tuning_runs": 40.0, "expected_median": 1.5},
            {"tuning_runs": 80.0, "expected_median": 1.0},
            {"tuning_runs": 120.0, "expected_median": 0.9},
        ],
        ("nmf", "constant"): [{"tuning_runs": 40.0, "expected_median": 2.0}],
    }
    add_runs_to_match(summary, cost, {"nmf": "learned"})
    got = {s["scheduler"]: s["tuning_runs_to_match_learned"] for s in summary}
    assert got["cosine"] == 80.0 and got["constant"] == math.inf
    assert got["cosine@ref"] == math.inf and got["constant@ref"] == 0.0
    assert math.isnan(got["probe"]) and math.isnan(got["learned"])
    add_runs_to_match(summary, cost, {})  # no learned policy: nothing changes


def test_tuning_counts_and_cost_labels_are_validated():
    from metasched.errors import ConfigError

    spec = CompareSpec()
    assert spec.n_tune("nmf") == spec.n_tune("mlp") == spec.n_tune("mnist1d") == 40
    assert spec.n_tune("fashion") == spec.n_tune("charlm") == 10
    assert CompareSpec(tune_instances=7).n_tune("fashion") == 7
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        CompareSpec(tuning_cost=("cosin",))
    with pytest.raises(ConfigError, match="tune_instances"):
        CompareSpec(tune_instances=0)


def test_at_ref_rows_parse():
    from metasched.distill.compare import parse_scheduler
    from metasched.errors import UnknownNameError

    ref = parse_scheduler("cosine@ref")
    assert (ref.label, ref.name, ref.at_ref, ref.tuned) == ("cosine@ref", "cosine", True, False)
    assert parse_scheduler("cosine@ref:warmup=10").at_ref
    assert not parse_scheduler("cosine").at_ref and parse_scheduler("cosine").tuned
    with pytest.raises(UnknownNameError, match="cosin"):
        parse_scheduler("cosin@ref")
