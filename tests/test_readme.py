"""Every code block of the README runs as written (issue 12, item 2).

No block is exempt because of its fence language: a fenced block is either Python (run with
``exec`` in a fresh directory, its printed output compared with the ``# ...`` lines that end
the block, if any) or shell. Shell lines are ``metasched ...`` commands, run through
:func:`metasched.cli.main` in the block's directory with tiny sizes appended (argparse keeps
the last value of an option, so ``--instances 50 ... --instances 2`` runs 2), and ``make``
targets, which set up a virtualenv and install packages — for those the test checks that the
target exists and that its recipe's ``metasched`` command parses (``make -n``), rather than
installing anything. A block that reads ``policy.msched`` gets the one the README's own
``metasched train``/``export`` block wrote (run once per test process).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import threadpoolctl
import torch

from metasched import cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Options appended to each ``metasched`` subcommand so the README's commands run in seconds.
TINY: dict[str, list[str]] = {
    "train": ["--timesteps", "256", "--n-envs", "2", "--eval-episodes", "1", "--no-progress"],
    "train --resume": ["--no-progress"],
    "compare": [
        "--instances", "1", "--budget", "100", "--tune-instances", "1", "--grid", "0.5,2",
        "--jobs", "1", "--no-progress",
    ],
    "distill": ["--train-instances", "2", "--val-instances", "1", "--budget", "100"],
}  # fmt: skip

#: Size overrides of Python blocks (the README's sizes stay what a user runs).
PYTHON_SIZES: dict[str, str] = {"total_timesteps=2048": "total_timesteps=512"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    lang: str
    code: str
    line: int

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang}"

    @property
    def makes_policy(self) -> bool:
        return "metasched export" in self.code

    @property
    def reads_policy(self) -> bool:
        return "policy.msched" in self.code and not self.makes_policy


def _blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(m.group(1).strip(), m.group(2), line))
    return out


BLOCKS = _blocks()
PYTHON = ("python",)
SHELL = ("bash", "sh", "console", "shell")


def _shell_commands(code: str) -> list[list[str]]:
    """Split a shell block into commands (continuations joined, comments dropped)."""
    joined = code.replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


@contextlib.contextmanager
def _cli_process_state():
    """Undo what the CLI does to its own process (threads, environment) after a command."""
    threads = torch.get_num_threads()
    env = dict(os.environ)
    try:
        with threadpoolctl.threadpool_limits(limits=None):  # restores the BLAS pools on exit
            yield
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)


def _run_metasched(args: list[str], cwd: Path) -> None:
    sub = args[0] if args else ""
    key = "train --resume" if sub == "train" and "--resume" in args else sub
    argv = [*args, *TINY.get(key, [])]
    err = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with _cli_process_state(), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        os.chdir(old)
    assert code == 0, f"`metasched {' '.join(argv)}` exited {code}: {err.getvalue()}"


def _check_make(args: list[str]) -> None:
    """``make TARGET``: the target exists, and its metasched command line parses."""
    targets = [a for a in args[1:] if not a.startswith("-") and "=" not in a]
    assert targets, f"`{' '.join(args)}` names no target"
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for target in targets:
        res = subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert res.returncode == 0, f"make -n {target}: {res.stderr}"
        for line in res.stdout.splitlines():
            words = line.split()
            if words and words[0].endswith("/metasched"):
                cli.build_parser().parse_args(words[1:])  # exits (fails the test) if invalid


def _run_shell(code: str, cwd: Path) -> None:
    commands = _shell_commands(code)
    assert commands, "empty shell block"
    for argv in commands:
        if argv[0] == "metasched":
            _run_metasched(argv[1:], cwd)
        elif argv[0] == "make":
            _check_make(argv)
        else:
            pytest.fail(f"test_readme does not know how to run {argv[0]!r}: teach it")


def _expected_output(code: str) -> list[str] | None:
    """The ``# ...`` lines that close a Python block after a print: its expected output."""
    lines = code.rstrip("\n").splitlines()
    tail: list[str] = []
    while lines and lines[-1].startswith("# "):
        tail.insert(0, lines.pop()[2:])
    if tail and any("print(" in line for line in lines):
        return tail
    return None


def _run_python(code: str, cwd: Path) -> None:
    for old, new in PYTHON_SIZES.items():
        code = code.replace(old, new)
    out = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(old)
    expected = _expected_output(code)
    if expected is not None:
        assert out.getvalue().splitlines() == expected


@pytest.fixture(scope="module")
def readme_policy(tmp_path_factory) -> Path:
    """Run the README block that trains and exports a policy (tiny sizes); return its dir."""
    makers = [b for b in BLOCKS if b.makes_policy]
    assert len(makers) == 1, "expected exactly one README block that exports a policy"
    where = tmp_path_factory.mktemp("readme-train")
    _run_shell(makers[0].code, where)
    assert (where / "policy.msched").is_file()
    return where


def test_readme_has_examples():
    assert sum(b.lang in PYTHON for b in BLOCKS) >= 5
    assert sum(b.lang in SHELL for b in BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, tmp_path, request):
    assert block.lang in PYTHON + SHELL, (
        f"README block at line {block.line} has fence language {block.lang!r}: "
        "use python or bash so that it is run here"
    )
    if block.makes_policy:
        where = request.getfixturevalue("readme_policy")
        assert (where / "runs" / "ppo" / "config.yaml").is_file()
        return
    if block.reads_policy:
        shutil.copy(request.getfixturevalue("readme_policy") / "policy.msched", tmp_path)
    if block.lang in PYTHON:
        _run_python(block.code, tmp_path)
    else:
        _run_shell(block.code, tmp_path)


def test_shell_block_parsing():
    code = "metasched a --x 1 \\\n    --y 2   # note\n\nmake demo   # c\n"
    assert _shell_commands(code) == [["metasched", "a", "--x", "1", "--y", "2"], ["make", "demo"]]
    assert _expected_output("print(1)\n# 1\n") == ["1"]
    assert _expected_output("x = 1  # a\n") is None
