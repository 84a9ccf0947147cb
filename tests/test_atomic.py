"""The one atomic-write helper: old or new content, never partial, even under SIGKILL."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from metasched import atomic
from metasched.atomic import TMP_PREFIX, atomic_open, atomic_path, write_bytes, write_text


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with pytest.raises(FileNotFoundError):
        write_text(target, "x")  # like open: a missing directory is an error ...
    write_text(target, "α old", parents=True)  # ... unless asked to create it
    write_text(target, "β new")
    assert target.read_text(encoding="utf-8") == "β new"
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _names(target.parent) == ["f.txt"]


def test_a_new_file_gets_the_umask_mode_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a", "x")
        with open(tmp_path / "b", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "b").stat().st_mode
    )


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "f.csv"
    write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, newline="") as fh:
        fh.write("half of the new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["f.csv"]


def test_atomic_path_serves_writers_that_want_a_file_name(tmp_path):
    target = tmp_path / "a.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.name.startswith(TMP_PREFIX) and tmp.parent == tmp_path
        np.savez(tmp, x=np.arange(3))  # would append .npz to a name without it
    with np.load(target) as f:
        assert f["x"].tolist() == [0, 1, 2]
    assert _names(tmp_path) == ["a.npz"]


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'a'"), atomic_open(tmp_path / "x", "a"):
        pass


_WRITER = textwrap.dedent(
    """
    import importlib.util, sys, time
    # the module alone (it imports nothing of metasched): the child starts in milliseconds
    spec = importlib.util.spec_from_file_location("atomic", sys.argv[5])
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    atomic_open = atomic.atomic_open
    target, chunk, n, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print("start", flush=True)
    with atomic_open(target, "wb") as fh:
        for i in range(n):
            fh.write(bytes([65 + i % 26]) * chunk)
            fh.flush()
            if pause == "mid-write" and i == n // 2:
                print("paused", flush=True)  # half written: the parent kills us here
                time.sleep(60)
    print("paused", flush=True)
    time.sleep(60)
    """
)


def _new(chunk, n):
    return b"".join(bytes([65 + i % 26]) * chunk for i in range(n))


@pytest.mark.parametrize("when", ["mid-write", "after-replace", "while-running"])
def test_sigkill_leaves_the_old_or_the_new_content_never_a_partial_file(tmp_path, when):
    """A process SIGKILLed while writing a large file: the target is old or new, whole.

    ``mid-write``: killed with half of 64 MiB in the temporary; ``after-replace``: killed
    once the write returned; ``while-running``: killed at an arbitrary moment of the write.
    """
    target = tmp_path / "big.bin"
    old = b"old content\n" * 1000
    target.write_bytes(old)
    chunk, n = 1 << 20, 64
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), str(chunk), str(n), when, atomic.__file__],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for = "start" if when == "while-running" else "paused"
        line = proc.stdout.readline().strip()
        while line != wait_for:
            assert line, "the writer exited early"
            line = proc.stdout.readline().strip()
        if when == "mid-write":  # half is on disk, in the temporary only
            tmps = [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
            assert len(tmps) == 1 and tmps[0].stat().st_size == (n // 2 + 1) * chunk
        elif when == "while-running":
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    data = target.read_bytes()
    if when == "mid-write":
        assert data == old
    elif when == "after-replace":
        assert data == _new(chunk, n)
    else:
        assert data in (old, _new(chunk, n))
    # a torn temporary is left only under the prefix that resume clean-up removes
    assert all(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir() if p != target)
