"""Run-directory primitives: atomic writes and clean-up after a kill."""

import json
import math
import multiprocessing as mp
import os
import signal

import pytest

from metasched.agents.rundir import (
    read_json,
    readable_dir,
    recover_replaced_dirs,
    remove_stale_temporaries,
    write_dir_atomically,
    write_json,
)
from metasched.atomic import write_text


def test_a_write_killed_before_its_rename_leaves_only_removable_temporaries(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints"
    write_text(ck / "latest", "checkpoint_000000000512", parents=True)

    def killed(src, dst):  # the process dies between writing the temporary and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    try:
        write_text(ck / "latest", "checkpoint_000000001024")
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert (ck / "latest").read_text() == "checkpoint_000000000512"  # never torn
    # a SIGKILL skips the clean-up: simulate the temporaries it would leave
    (ck / ".tmp-latest.abc123").write_text("checkpoint_0000")
    (ck / ".tmp-checkpoint_000000001024-xyz").mkdir()
    (ck / "keep-me").write_text("user file")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in ck.iterdir()) == ["keep-me", "latest"]


# -- issue 12, item 6: the best/ swap survives a kill at every point ---------------------------
def _fill(text):
    def fill(d):
        (d / "model.zip").write_text(text)
        (d / "eval.json").write_text("{}")

    return fill


def _kill_at(monkeypatch, n_call):
    """Make the ``n_call``-th ``os.replace`` die (as a kill would: no clean-up code runs)."""
    real = os.replace
    calls = []

    class Killed(BaseException):
        pass

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == n_call:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return Killed


@pytest.mark.parametrize("n_call", [1, 2])
def test_best_swap_interrupted_at_each_rename_keeps_a_complete_best(tmp_path, monkeypatch, n_call):
    write_dir_atomically(tmp_path / "best", _fill("old"))
    killed = _kill_at(monkeypatch, n_call)
    with pytest.raises(killed):
        write_dir_atomically(tmp_path / "best", _fill("new"))
    monkeypatch.undo()
    remove_stale_temporaries(tmp_path)  # what --resume does first
    assert (tmp_path / "best" / "model.zip").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _swap_and_die_at(path, where):  # runs in a forked child
    import shutil

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "rmtree":  # after both renames, before the old copy is deleted
        shutil.rmtree = die
    else:
        real, count = os.replace, [0]

        def replace(src, dst):
            count[0] += 1
            if count[0] == where:
                die()
            return real(src, dst)

        os.replace = replace
    write_dir_atomically(path, _fill("new"))
    os._exit(0)


@pytest.mark.parametrize("where", [1, 2, "rmtree"])
def test_best_swap_sigkilled_at_each_point(tmp_path, where):
    """A real SIGKILL before rename 1, between the renames, and before the old copy is gone."""
    write_dir_atomically(tmp_path / "best", _fill("old"))
    proc = mp.get_context("fork").Process(target=_swap_and_die_at,
                                          args=(tmp_path / "best", where))  # fmt: skip
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    src = readable_dir(tmp_path / "best")  # what export reads, moving nothing
    assert (src / "model.zip").read_text() == ("new" if where == "rmtree" else "old")
    recover_replaced_dirs(tmp_path)
    text = (tmp_path / "best" / "model.zip").read_text()
    assert text == ("new" if where == "rmtree" else "old")
    assert (tmp_path / "best" / "eval.json").is_file()
    remove_stale_temporaries(tmp_path)  # what --resume does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


# -- issue 12, item 15: strict JSON with non-finite floats ------------------------------------
def test_write_json_round_trips_non_finite_values(tmp_path):
    data = {"final_losses": [1.5, math.inf, -math.inf], "median": math.nan, "n": 2}
    write_json(tmp_path / "b.json", data)
    text = (tmp_path / "b.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))
    back = read_json(tmp_path / "b.json")
    assert back["final_losses"] == [1.5, math.inf, -math.inf] and back["n"] == 2
    assert math.isnan(back["median"])
