import subprocess
import sys

import pytest

from metasched.cli import main


def test_help_and_list(capsys):
    assert main([]) == 0
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "metasched/NMF-v0" in out and "greedy " in out and "probe " in out


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "metasched.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "demo" in out.stdout


def test_unknown_family_is_one_line_exit_2(capsys):
    assert main(["check", "--family", "nmff"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'nmf'" in err


def test_bad_number_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["check", "--budget", "-5"])
    assert exc.value.code == 2


def test_check_runs_on_a_tiny_budget(capsys):
    assert (
        main(["check", "--n-train", "2", "--n-val", "2", "--budget", "100", "--interval", "25"])
        == 0
    )
    assert "median final val loss" in capsys.readouterr().out
