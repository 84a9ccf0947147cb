"""The comparison harness end to end on a tiny grid: tables, statistics, resume, errors."""

import csv
import json
import math

import numpy as np
import pytest

from metasched.distill import compare as cmp
from metasched.distill.compare import (
    CompareSpec,
    compare,
    parse_scheduler,
    split_schedulers,
)
from metasched.distill.results import read_results
from metasched.errors import ConfigError, UnknownNameError

SPEC = CompareSpec(n_instances=3, tune_instances=2, grid=(0.5, 1.0, 2.0), joint_grid=(1.0, 2.0),
                   budget=200, interval=50, tuning_cost=("all",))  # fmt: skip
NAMES = ["constant", "cosine", "cosine@ref", "greedy", "greedy-tuned", "probe:every=2"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    compare(SPEC, [parse_scheduler(s) for s in NAMES], out, log=lambda m: None)
    return out


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_files_and_tidy_table(done):
    for name in ("compare.json", "tuning.json", "tuning.csv", "tuning_cost.csv", "runs.csv",
                 "results.csv", "summary.csv", "report.md", "plots/nmf-win-rates.png",
                 "plots/nmf-win-rates.svg", "plots/nmf-profile.png", "plots/nmf-schedules-0.png",
                 "plots/nmf-tuning-curves.png", "plots/nmf-tuning-cost.png"):  # fmt: skip
        assert (done / name).is_file(), name
    runs = _csv(done / "runs.csv")
    # one row per scheduler, problem and decision (row 0 = before training)
    assert len(runs) == len(NAMES) * 3 * (200 // 50 + 1)
    assert set(runs[0]) >= {"scheduler", "task", "seed", "step", "lr", "train_loss", "val_loss",
                            "inner_steps", "wall_time"}  # fmt: skip
    results = read_results(done)
    assert len(results) == len(NAMES) * 3
    probe = [r for r in results if r["scheduler"] == "probe:every=2"]
    assert all(r["compute"] > 200 for r in probe)  # probes are counted
    assert all(r["compute"] == 200 for r in results if r["scheduler"] == "constant")


def test_tuned_baselines_use_the_train_split(done):
    tuning = json.loads((done / "tuning.json").read_text())
    assert set(tuning) == {"nmf/constant", "nmf/cosine", "nmf/greedy-tuned"}
    for t in tuning.values():
        best = int(np.argmin(t["mean"]))
        assert {"multiple": t["multiple"], **t["kwargs"]} == t["points"][best]
        assert t["n_instances"] == SPEC.tune_instances
        assert t["lo"][best] <= t["mean"][best] <= t["hi"][best]
    assert [len(tuning[f"nmf/{k}"]["points"]) for k in ("cosine", "greedy-tuned")] == [3, 32]
    assert set(tuning["nmf/greedy-tuned"]["kwargs"]) == {"factor", "patience"}
    tune_cells = list((done / "cells" / "tune").rglob("*.json"))
    assert len(tune_cells) == (3 + 3 + 32) * 2
    assert all("-train" in p.name for p in tune_cells)
    results = read_results(done)
    for r in results:
        if r["scheduler"] == "constant":
            assert r["tuned_multiple"] == tuning["nmf/constant"]["multiple"]
        if r["scheduler"] == "cosine@ref":
            assert r["tuned_multiple"] == 1.0  # untuned, at the reference LR
        if r["scheduler"] == "greedy":
            assert math.isnan(r["tuned_multiple"])
    # the evaluated greedy-tuned runs use the tuned factor and patience too
    run = json.loads(next((done / "cells" / "runs" / "greedy-tuned").glob("*.json")).read_text())
    assert run["cell"]["kwargs"] == tuning["nmf/greedy-tuned"]["kwargs"]
    rows = _csv(done / "tuning.csv")
    assert len(rows) == 3 + 3 + 32
    assert sum(r["chosen"] == "True" for r in rows) == 3


def test_tuning_cost_view_and_summary_column(done):
    rows = _csv(done / "tuning_cost.csv")
    by = {}
    for r in rows:
        by.setdefault(r["scheduler"], []).append(r)
    assert {k: len(v) for k, v in by.items()} == {"constant": 3, "cosine": 3, "greedy-tuned": 32}
    results = read_results(done)
    summary = {s["scheduler"]: s for s in _csv(done / "summary.csv")}
    for label, curve in by.items():
        assert [int(r["tuning_runs"]) for r in curve] == [
            k * SPEC.tune_instances for k in range(1, len(curve) + 1)
        ]
        # fully tuned = the evaluated runs of the tuned setting (the same problems and seeds)
        fin = [r["final_loss"] for r in results if r["scheduler"] == label]
        assert float(curve[-1]["expected_median"]) == pytest.approx(np.median(fin))
    assert "tuning_runs_to_match_learned" in summary["cosine"]
    assert summary["cosine"]["tuning_runs_to_match_learned"] == "nan"  # no learned policy here
    assert "tuning-cost" in (done / "report.md").read_text()


def test_summary_matches_results_by_hand(done):
    results = read_results(done)
    summary = {s["scheduler"]: s for s in _csv(done / "summary.csv")}
    const = {r["instance"]: r["final_loss"] for r in results if r["scheduler"] == "constant"}
    for name in NAMES:
        fin = {r["instance"]: r["final_loss"] for r in results if r["scheduler"] == name}
        assert float(summary[name]["median_final"]) == pytest.approx(np.median(list(fin.values())))
        strict = np.mean([fin[i] < const[i] * 0.995 for i in fin])
        assert float(summary[name]["strict_win_vs_constant"]) == pytest.approx(strict)
        # one seed per instance: lower on an instance counts 1, a tie one half
        poi = np.mean([(fin[i] < const[i]) + 0.5 * (fin[i] == const[i]) for i in fin])
        assert float(summary[name]["prob_improvement_vs_constant"]) == pytest.approx(poi)
    assert "probability of improvement" in (done / "report.md").read_text()
    # steps to target: the tuned constant reaches its own final loss within the budget
    for r in results:
        if r["scheduler"] == "constant":
            assert r["steps_to_target"] <= 200


def test_same_seed_same_tables(done, tmp_path):
    compare(SPEC, [parse_scheduler(s) for s in NAMES], tmp_path, log=lambda m: None)
    drop = {"wall_time"}
    a = [{k: v for k, v in r.items() if k not in drop} for r in _csv(done / "results.csv")]
    b = [{k: v for k, v in r.items() if k not in drop} for r in _csv(tmp_path / "results.csv")]
    assert a == b


def test_resume_reruns_nothing_and_adding_a_scheduler_runs_only_it(done, monkeypatch):
    ran = []
    real = cmp.run_cell
    monkeypatch.setattr(cmp, "run_cell", lambda c: ran.append(c.label) or real(c))
    compare(SPEC, [parse_scheduler(s) for s in NAMES], done, log=lambda m: None)
    assert ran == []
    compare(SPEC, [parse_scheduler(s) for s in [*NAMES, "linear"]], done, log=lambda m: None)
    assert ran == ["linear"] * 3


def test_other_settings_in_the_same_directory_are_refused(done):
    other = CompareSpec(n_instances=3, tune_instances=2, grid=(0.5, 1.0), budget=200, interval=50)
    before = (done / "results.csv").read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        compare(other, [parse_scheduler("constant")], done, log=lambda m: None)
    assert (done / "results.csv").read_bytes() == before  # nothing lost


def test_parallel_equals_serial(tmp_path):
    spec = CompareSpec(n_instances=2, tune_instances=1, grid=(1.0,), budget=100, interval=50)
    scheds = [parse_scheduler(s) for s in ["constant", "greedy"]]
    compare(spec, scheds, tmp_path / "a", log=lambda m: None)
    compare(spec, scheds, tmp_path / "b", jobs=2, log=lambda m: None)
    key = ("scheduler", "instance", "final_loss", "compute")
    rows = [[tuple(r[k] for k in key) for r in _csv(tmp_path / d / "results.csv")] for d in "ab"]
    assert sorted(rows[0]) == sorted(rows[1])


def test_scheduler_specs():
    assert split_schedulers("constant,greedy:patience=3,factor=0.5,probe") == [
        "constant", "greedy:patience=3,factor=0.5", "probe",
    ]  # fmt: skip
    s = parse_scheduler("greedy:patience=3,factor=0.5")
    assert s.name == "greedy" and s.kwargs == {"patience": 3, "factor": 0.5}
    tuned = parse_scheduler("greedy-tuned")
    assert tuned.tuned and tuned.name == "greedy"
    with pytest.raises(UnknownNameError, match="did you mean 'cosine'"):
        parse_scheduler("cosin")
    with pytest.raises(ConfigError, match="patienc"):
        parse_scheduler("greedy:patienc=3")
    with pytest.raises(ValueError, match="factor"):
        parse_scheduler("greedy:factor=2")
    with pytest.raises(ConfigError, match="needs a file"):
        parse_scheduler("learned")
    with pytest.raises(ConfigError, match="not found"):
        parse_scheduler("learned:/nonexistent/policy.msched")


@pytest.mark.parametrize(
    "kw, match",
    [({"n_instances": 0}, "n_instances"), ({"split": "tset"}, "tset"),
     ({"families": ("nmff",)}, "nmf"), ({"interval": 500, "budget": 100}, "interval"),
     ({"grid": (0.0, 1.0)}, "grid")],
)  # fmt: skip
def test_bad_settings(kw, match):
    with pytest.raises((ValueError, KeyError), match=match):
        CompareSpec(**kw)


def test_joint_axes_narrow_the_joint_search_and_are_checked():
    from metasched.distill.compare import TUNED, CompareSpec

    default = CompareSpec(joint_grid=(1.0, 4.0))
    assert len(TUNED["greedy-tuned"].points(default)) == 2 * 4 * 4
    assert "joint_axes" not in default.to_json()  # older comparisons' settings still match
    spec = CompareSpec(joint_grid=(1.0, 4.0), joint_axes=(("factor", (0.5, 0.9)),))
    pts = TUNED["greedy-tuned"].points(spec)
    assert len(pts) == 2 * 2 * 4  # patience keeps its default values
    assert {p[1]["factor"] for p in pts} == {0.5, 0.9}
    assert spec.to_json()["joint_axes"] == [["factor", [0.5, 0.9]]]
    assert TUNED["cosine"].points(spec) == TUNED["cosine"].points(default)
    with pytest.raises(ConfigError, match="factr"):
        CompareSpec(joint_axes=(("factr", (0.5,)),))
    with pytest.raises(ConfigError, match="at least one"):
        CompareSpec(joint_axes=(("patience", ()),))


def test_a_reexported_policy_file_does_not_reuse_the_old_runs(tmp_path, fixed_action_policy):
    """Cached learned runs are tied to the policy file's content, not just its path."""
    import shutil

    from metasched.distill.compare import CompareSpec, compare, parse_scheduler
    from metasched.distill.results import read_results
    from metasched.pretrained import pretrained_path

    policy = tmp_path / "policy.msched"
    shutil.copy(pretrained_path(), policy)
    spec = CompareSpec(n_instances=2, budget=200, interval=50, tune_instances=1, grid=(1.0,))
    scheds = [parse_scheduler(f"learned:{policy}"), parse_scheduler("constant@ref")]
    out = tmp_path / "cmp"
    compare(spec, scheds, out, log=lambda m: None)
    first = {r["instance"]: r["final_loss"] for r in read_results(out)
             if r["scheduler"] == "learned:policy"}
    # the same file again: every run is reused
    compare(spec, scheds, out, log=lambda m: None)
    # another policy under the same path: its runs are run again, not read from the cache
    shutil.copy(fixed_action_policy(2, lr_range=(1e-3, 1e3)), policy)  # always double
    compare(spec, scheds, out, log=lambda m: None)
    again = {r["instance"]: r["final_loss"] for r in read_results(out)
             if r["scheduler"] == "learned:policy"}
    assert again.keys() == first.keys() and again != first
