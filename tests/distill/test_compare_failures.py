"""Issue 12, item 7: a failing run keeps every finished run, names the cell, stays resumable."""

import pytest

from metasched.distill import compare as cmp
from metasched.distill.compare import CompareSpec, compare, parse_scheduler
from metasched.errors import ConfigError

SPEC = CompareSpec(n_instances=4, tune_instances=1, grid=(1.0,), budget=1000, interval=50)


def _stored(root, label):
    d = root / "cells" / "runs" / label
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def test_parallel_failure_keeps_finished_runs_and_resumes(tmp_path, monkeypatch):
    bad = tmp_path / "bad.msched"
    bad.write_bytes(b"this is not a policy file")
    out = tmp_path / "cmp"
    scheds = [parse_scheduler("greedy"), parse_scheduler(f"learned:{bad}")]
    with pytest.raises(ConfigError) as exc:
        compare(SPEC, scheds, out, jobs=2, log=lambda m: None)
    msg = str(exc.value)
    assert "run 'learned:bad' on nmf test instance 0 seed 0 failed" in msg
    assert "run the same command again to resume" in msg and "\n" not in msg
    kept = _stored(out, "greedy")
    assert kept  # the greedy run in flight when the policy failed is stored, not thrown away

    ran = []  # resume: only the runs that were not stored run again
    real = cmp.run_cell
    monkeypatch.setattr(cmp, "run_cell", lambda c: ran.append(c.index) or real(c))
    compare(SPEC, scheds[:1], out, log=lambda m: None)
    assert len(ran) == SPEC.n_instances - len(kept)
    assert len(_stored(out, "greedy")) == SPEC.n_instances


def test_serial_failure_names_the_cell_and_chains_the_bug(tmp_path, monkeypatch):
    real = cmp.run_cell

    def run_cell(cell):
        if cell.index == 2:
            raise ZeroDivisionError("a bug in a scheduler")
        return real(cell)

    monkeypatch.setattr(cmp, "run_cell", run_cell)
    out = tmp_path / "cmp"
    with pytest.raises(RuntimeError, match="run 'greedy' on nmf test instance 2 seed 0 failed: "
                       "ZeroDivisionError: a bug in a scheduler") as exc:  # fmt: skip
        compare(SPEC, [parse_scheduler("greedy")], out, log=lambda m: None)
    assert isinstance(exc.value.__cause__, ZeroDivisionError)  # the traceback is kept
    assert len(_stored(out, "greedy")) == 2  # instances 0 and 1 finished and are stored
