"""Error hierarchy of metasched.

Every error the package raises on purpose derives from :class:`MetaschedError`, so callers
can catch the whole family at once. Errors about bad user input also derive from
:class:`ValueError` (or :class:`KeyError`), so idiomatic ``except ValueError`` keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DivergenceError",
    "ExportError",
    "MetaschedError",
    "MissingDataError",
    "MissingDependencyError",
    "UnknownNameError",
    "did_you_mean",
]


class MetaschedError(Exception):
    """Base class of every error metasched raises on purpose."""


class ConfigError(MetaschedError, ValueError):
    """A configuration value is invalid (the message names the field and the value)."""


class UnknownNameError(MetaschedError, KeyError):
    """A name (task, scheduler, env, algorithm, ...) is not in its registry."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(MetaschedError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class MissingDataError(MetaschedError, FileNotFoundError):
    """A data set the task needs is not on this machine; the message says how to get it."""


class DivergenceError(MetaschedError, FloatingPointError):
    """Training diverged (non-finite or exploding loss) where the caller asked to fail."""


class ExportError(MetaschedError, ValueError):
    """An exported policy file is truncated, corrupt, or of an unsupported version."""


def did_you_mean(name: str, choices: Iterable[str], what: str = "name") -> str:
    """Return a one-line message for an unknown ``name`` with the closest valid choices.

    Example:
        >>> did_you_mean("cosin", ["cosine", "constant"], "scheduler")
        "unknown scheduler 'cosin'; did you mean 'cosine'? (choices: constant, cosine)"
    """
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (choices: {', '.join(choices)})"
