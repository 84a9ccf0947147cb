import subprocess
import sys

import pytest

from metasched.cli import main


def test_help_and_list(capsys):
    assert main([]) == 0
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "metasched/NMF-v1" in out and "greedy " in out and "probe " in out


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


# -- issue 12, item 8: user errors are one line (exit 2); bugs keep their traceback ----------
def test_a_bug_shows_its_traceback_and_exits_1(capsys, monkeypatch):
    import metasched.distill.sanity as sanity

    def buggy(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(sanity, "constant_vs_cosine", buggy)
    assert main(["check", "--n-train", "2", "--n-val", "2", "--budget", "100"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "buggy" in err
    assert "ValueError: an internal invariant broke" in err and "bug in metasched" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--out", "{tmp}/c", "--grid", "1,x"], "--grid must be comma-separated"),
        (["compare", "--out", "{tmp}/c", "--schedulers", "greedy:min_lr=abc"],
         "min_lr must be a non-negative finite number, got 'abc'"),
        (["compare", "--out", "{tmp}/c", "--split", "bogus"], "unknown split 'bogus'"),
        (["train", "--out", "{tmp}/r", "--env-kwarg", "budget=-5", "--vec-env", "dummy"],
         "budget must be a positive integer, got -5"),
        (["train", "--out", "{tmp}/r", "--env-kwarg", "kappa=big"],
         "env kwarg kappa must be a number, got 'big'"),
        (["train", "--out", "{tmp}/r", "--resume", "--seed", "3"],
         "--seed cannot change a run that is resumed"),
    ],
)
def test_user_input_errors_raised_as_value_errors_stay_one_line(argv, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("metasched: error: ") and message in err
    assert not (tmp_path / "r").exists()


def test_thread_setting_error_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("METASCHED_THREADS", "many")
    assert main(["list"]) == 2
    assert "METASCHED_THREADS must be a positive integer" in capsys.readouterr().err


# -- issue 12, item 4: numbers on the command line as written ----------------------------------
def test_exponent_numbers_in_scheduler_options_and_env_kwargs():
    from metasched.cli import _key_value
    from metasched.distill.compare import parse_scheduler

    assert parse_scheduler("greedy:min_lr=1e-4,max_lr=2E1").kwargs == {"min_lr": 1e-4,
                                                                      "max_lr": 20.0}
    assert _key_value("kappa=1e0") == ("kappa", 1.0)
    assert _key_value("action=discrete5") == ("action", "discrete5")
