"""`metasched demo` end to end at a tiny size, and the CLI of compare / plot / distill."""

import csv
import functools

import pytest

from metasched.cli import main
from metasched.distill import demo
from metasched.distill.compare import CompareSpec


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(
        demo.DemoSettings, "make", classmethod(lambda cls, quick: cls(4096, 4096, 2, 1, 2, 2))
    )
    small = functools.partial(CompareSpec, budget=200, interval=50)
    monkeypatch.setattr(demo, "CompareSpec", small)
    monkeypatch.setattr(demo, "DEMO_GRID", (1.0, 2.0))
    monkeypatch.setattr(demo, "DEMO_JOINT_GRID", (1.0,))
    monkeypatch.setattr(demo, "OPTIONAL_SEARCH", ("hypergradient",))


def test_demo_pipeline_end_to_end_and_rerun(tiny, tmp_path, capsys):
    report = demo.run_demo(tmp_path, quick=True, jobs=1, log=lambda m: None)
    text = report.read_text()
    for needle in ("## Training", "Distilled rules", "Distilled GreedyLR", "## nmf",
                   "Equal compute", "Head to head", "learned", "rules", "greedy-distilled",
                   "hypergradient", "probe", "cosine@ref", "constant@ref",
                   "best mean `val` return", "Tuning-cost view"):  # fmt: skip
        assert needle in text, needle
    for f in ("policy.msched", "rules.json", "plots/training.png", "compare/results.csv",
              "compare/plots/nmf-win-rates.png", "compare/plots/nmf-schedules-0.svg",
              "compare/plots/nmf-tuning-curves.png", "compare/plots/nmf-tuning-cost.png",
              "compare/tuning.csv", "compare/tuning_cost.csv"):  # fmt: skip
        assert (tmp_path / f).is_file(), f
    # the shipped universal policy runs beside the demo's own, which stays the reference
    assert "| universal |" in text
    assert "the learned policy (`learned`) and the `@ref` rows need no tuning runs" in text
    # every image the report links exists
    import re

    for link in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (tmp_path / link).is_file(), link
    before = (tmp_path / "compare" / "results.csv").read_bytes()
    demo.run_demo(tmp_path, quick=True, jobs=1, log=lambda m: None)  # reuses everything
    assert (tmp_path / "compare" / "results.csv").read_bytes() == before


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    cases = [
        ["compare", "--out", str(tmp_path / "c"), "--schedulers", "cosin"],
        ["compare", "--out", str(tmp_path / "c"), "--tasks", "nmff"],
        ["compare", "--out", str(tmp_path / "c"), "--schedulers", "learned:nope.msched"],
        ["plot", str(tmp_path / "nothing-here")],
        ["distill", str(tmp_path / "missing.msched")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("metasched: error:") and "\n" not in err, err


def test_cli_compare_and_plot(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compare", "--out", str(out), "--instances", "2", "--budget", "100",
            "--interval", "50", "--tune-instances", "1", "--jobs", "1", "--no-progress",
            "--schedulers", "constant,greedy:patience=2,factor=0.5"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "report.md").is_file()
    (out / "report.md").unlink()
    assert main(["plot", str(out), "--instances", "1"]) == 0
    assert (out / "report.md").is_file() and (out / "plots" / "nmf-schedules-1.png").is_file()


def _tiny_spec():
    return CompareSpec(n_instances=2, tune_instances=2, budget=100, interval=50, grid=(1.0, 2.0),
                       joint_grid=(1.0,), tuning_cost=("cosine",))  # fmt: skip


def test_background_cells_equal_in_process_and_are_reused(tmp_path, monkeypatch):
    """The demo runs the agent-independent cells in a second process; compare reuses them."""
    from metasched.distill import compare as cmp

    spec = _tiny_spec()
    scheds = [cmp.parse_scheduler(x) for x in ("constant", "cosine", "cosine@ref", "greedy")]
    proc, _ = demo._start_background(spec, ["constant", "cosine"], scheds, tmp_path / "bg")
    proc.join(timeout=120)
    assert proc.exitcode == 0
    cmp.compare(spec, scheds, tmp_path / "fg", log=lambda m: None)

    def no_new_runs(cell):
        raise AssertionError(f"ran {cell} again")

    monkeypatch.setattr(cmp, "run_cell", no_new_runs)  # every cell was run in the background
    cmp.compare(spec, scheds, tmp_path / "bg", log=lambda m: None)
    for name in ("tuning.json", "tuning_cost.csv"):
        assert (tmp_path / "bg" / name).read_text() == (tmp_path / "fg" / name).read_text(), name

    def runs(root):  # the same runs, but for their wall time
        with open(root / "results.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]

    assert runs(tmp_path / "bg") == runs(tmp_path / "fg")


def test_stopped_background_keeps_finished_cells_and_compare_completes(tmp_path):
    from metasched.distill import compare as cmp

    spec = _tiny_spec()
    scheds = [cmp.parse_scheduler(x) for x in ("constant", "cosine")]
    proc, stop = demo._start_background(spec, ["constant", "cosine"], scheds, tmp_path)
    stop.set()  # as when training ends first: no new cell starts
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert not list(tmp_path.rglob(".tmp-*"))  # nothing torn
    cmp.compare(spec, scheds, tmp_path, log=lambda m: None)
    assert (tmp_path / "summary.csv").is_file()
