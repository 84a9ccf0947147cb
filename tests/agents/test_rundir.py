"""Run-directory primitives: atomic writes and clean-up after a kill."""

import os

from metasched.agents.rundir import atomic_write_text, remove_stale_temporaries


def test_a_write_killed_before_its_rename_leaves_only_removable_temporaries(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints"
    atomic_write_text(ck / "latest", "checkpoint_000000000512")

    def killed(src, dst):  # the process dies between writing the temporary and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    try:
        atomic_write_text(ck / "latest", "checkpoint_000000001024")
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
