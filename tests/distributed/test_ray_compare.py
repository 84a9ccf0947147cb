"""compare --backend ray: same results and cache as the local pool; failures; resume after kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metasched.distill.compare import (
    Cell,
    CompareSpec,
    compare,
    parse_scheduler,
    run_cells,
)
from metasched.distill.results import read_results
from metasched.errors import ConfigError

SPEC = CompareSpec(n_instances=2, tune_instances=1, grid=(0.5, 2.0), budget=100, interval=50)
NAMES = ["constant", "greedy", "cosine"]
KEY = ("scheduler", "instance", "seed", "tuned_multiple", "lr_ref", "final_loss", "best_loss",
       "auc_log_loss", "compute", "diverged", "extra_steps", "clip_count")  # fmt: skip


def quiet(msg):
    pass


def _rows(root):
    return sorted(tuple(r[k] for k in KEY) for r in read_results(root))


def _traces(root):
    """Every stored run's trace without its wall-clock column."""
    out = {}
    for p in sorted((root / "cells").rglob("*.json")):
        data = json.loads(p.read_text())
        cols = {k: v for k, v in data["trace"]["columns"].items() if k != "wall_time"}
        out[str(p.relative_to(root))] = (data["cell"], data["lr_ref"], cols)
    return out


def test_ray_backend_equals_local_pool(tmp_path, ray_local):
    scheds = [parse_scheduler(s) for s in NAMES]
    compare(SPEC, scheds, tmp_path / "local", log=quiet)  # deterministic: jobs do not matter
    compare(SPEC, scheds, tmp_path / "ray", backend="ray", log=quiet)
    assert _rows(tmp_path / "local") == _rows(tmp_path / "ray")
    local, ray_ = _traces(tmp_path / "local"), _traces(tmp_path / "ray")
    assert len(local) == 2 * 2 * 1 + 2 * 3  # tuning (constant, cosine) + compare
    assert local == ray_
    assert json.loads((tmp_path / "ray" / "tuning.json").read_text()) == json.loads(
        (tmp_path / "local" / "tuning.json").read_text()
    )


def _cells(n):
    return [
        Cell("nmf", 0, "test", i, 0, "constant", "constant", {}, None, 100, 50,
             "deterministic", 0.8)
        for i in range(n)
    ]


def test_failed_ray_task_names_the_cell_and_keeps_finished_runs(tmp_path, ray_local):
    good = _cells(3)
    # factor must be < 1: the scheduler raises ValueError inside the Ray task
    bad = Cell("nmf", 0, "test", 3, 0, "bad", "greedy", {"factor": 7.0}, None, 100, 50,
               "deterministic", 0.8)
    match = r"run 'bad' on nmf test instance 3 seed 0 failed: ValueError: factor must satisfy"
    with pytest.raises(RuntimeError, match=match) as e:
        run_cells([bad, *good], tmp_path, backend="ray")
    assert "run the same command again to resume" in str(e.value)
    for c in good:  # submitted before the failure was seen: all finished and stored
        assert c.path(tmp_path).is_file()
    assert not bad.path(tmp_path).exists()


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="backend must be one of local, ray, got 'spark'"):
        compare(SPEC, [parse_scheduler("constant")], tmp_path, backend="spark", log=quiet)


_DRIVER = """
import sys
from metasched.distill.compare import CompareSpec, compare, parse_scheduler
spec = CompareSpec(n_instances=40, tune_instances=1, grid=(1.0,), budget=400, interval=50)
compare(spec, [parse_scheduler("constant"), parse_scheduler("greedy")], sys.argv[1],
        backend="ray", address=sys.argv[2], log=lambda m: None)
"""


@pytest.mark.slow  # ~40 s on 2 loaded cores: a second driver process joins the instance
def test_killed_ray_comparison_resumes_without_rerunning_finished_cells(tmp_path, ray_local):
    out = tmp_path / "cmp"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), *sys.path]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(out), ray_local], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    runs = out / "cells" / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if runs.is_dir() and len(list(runs.rglob("*.json"))) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # a hard kill: no cleanup of any kind
    proc.wait(30)
    proc.stderr.close()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in runs.rglob("*.json")}
    assert 6 <= len(finished) < 80
    spec = CompareSpec(n_instances=40, tune_instances=1, grid=(1.0,), budget=400, interval=50)
    scheds = [parse_scheduler("constant"), parse_scheduler("greedy")]
    compare(spec, scheds, out, backend="ray", log=quiet)
    after = list(runs.rglob("*.json"))
    assert len(after) == 80
    for p, stamp in finished.items():  # every finished run kept as it was: not rerun
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    assert len(read_results(out)) == 80


def test_missing_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    from metasched.cli import main
    from metasched.distributed import require_ray
    from metasched.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'metasched\[ray\]'"):
        require_ray()
    argv = ["compare", "--backend", "ray", "--instances", "1", "--tune-instances", "1",
            "--grid", "1", "--budget", "100", "--schedulers", "constant",
            "--out", str(tmp_path / "c"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'metasched[ray]'" in err[0]
