"""Issue 12, item 11: progress in a log is a line every few seconds, not carriage returns."""

import io

import pytest

from metasched.errors import ConfigError
from metasched.progress import Progress


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_log_gets_a_line_per_interval_and_a_last_one(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("metasched.progress.time.monotonic", clock)
    log = io.StringIO()
    p = Progress("tuning", total=1000, unit="run", stream=log, interval=5.0)
    for n in range(1, 1001):
        clock.t = n * 0.02  # 20 s in all: 4 interval lines (5, 10, 15 s) + the last one
        p.update_to(n)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("tuning: 250/1,000 run (25%), 5 s elapsed, ~15 s left")
    assert lines[-1] == "tuning: 1,000/1,000 run (100%) in 20 s"


def test_a_terminal_gets_a_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = Progress("compare", total=3, unit="run", stream=out)
    assert p.tty and p._bar is not None
    for n in range(1, 4):
        p.update_to(n)
    assert "\r" in out.getvalue()


def test_bad_interval_setting_is_a_config_error(monkeypatch):
    monkeypatch.setenv("METASCHED_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="METASCHED_PROGRESS_INTERVAL"):
        Progress("x", stream=io.StringIO())


def test_train_and_compare_write_lines_to_a_non_terminal(tmp_path, capsys, monkeypatch):
    from metasched.agents.config import load_config
    from metasched.agents.train import train
    from metasched.distill.compare import CompareSpec, compare, parse_scheduler

    monkeypatch.setenv("METASCHED_PROGRESS_INTERVAL", "1e-9")  # a line at every update
    cfg = load_config("a2c", "metasched/NMF-v1", overrides={
        "n_timesteps": 64, "n_envs": 2, "vec_env": "dummy", "eval_freq": 0,
        "checkpoint_freq": 0, "n_eval_episodes": 1, "n_steps": 8,
        "env_kwargs": {"budget": 100, "steps_per_action": 50}})  # fmt: skip
    train(cfg, tmp_path / "run", progress=True, log=lambda s: None)
    spec = CompareSpec(n_instances=2, tune_instances=1, grid=(1.0,), budget=100, interval=50)
    compare(spec, [parse_scheduler("constant")], tmp_path / "cmp", log=lambda m: None,
            progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "training: 64/64 timesteps (100%)" in err
    assert "tuning: 1/1 run (100%)" in err and "compare: 2/2 run (100%)" in err
