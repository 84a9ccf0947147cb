"""Progress reporting that suits both a terminal and a log file.

On a terminal (``stream.isatty()``) :class:`Progress` draws a tqdm bar. Written to anything
else (``metasched demo > log``, a CI log, a pipe), a bar's carriage-return redraws become
thousands of lines, so it prints one plain line instead every ``interval`` seconds (default
:data:`LOG_INTERVAL`; ``METASCHED_PROGRESS_INTERVAL`` overrides it) and a last one when the
work is done.

Example:
    >>> import io
    >>> log = io.StringIO()
    >>> p = Progress("compare", total=4, unit="run", stream=log, interval=3600)
    >>> for n in range(1, 5):
    ...     p.update_to(n)
    >>> p.close()
    >>> print(log.getvalue().strip())
    compare: 4/4 run (100%) in 0 s
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from metasched.errors import ConfigError

__all__ = ["LOG_INTERVAL", "Progress"]

#: Seconds between two progress lines when the output is not a terminal.
LOG_INTERVAL = 10.0


def _interval_from_env() -> float:
    text = os.environ.get("METASCHED_PROGRESS_INTERVAL")
    if text is None:
        return LOG_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(
            f"METASCHED_PROGRESS_INTERVAL must be a positive number of seconds, got {text!r}"
        )
    return value


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


class Progress:
    """A progress report: a tqdm bar on a terminal, else a plain line every few seconds.

    Args:
        desc: what is being counted (the line's prefix).
        total: the number of units when known (may be set later through :meth:`update_to`).
        unit: the unit's name.
        stream: where to write (default ``sys.stderr``, like tqdm).
        interval: seconds between lines on a non-terminal (default: see the module doc).
        tty: force the terminal (``True``) or log (``False``) behaviour; default: detect.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
        tty: bool | None = None,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = _interval_from_env() if interval is None else float(interval)
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.n = 0
        self._last_n = 0
        self.t0 = self._last = time.monotonic()
        self._closed = False
        self._bar: Any = None
        if self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=desc, total=total, unit=unit, leave=False, file=self.stream)

    def update_to(self, n: int, total: int | None = None) -> None:
        """Record that ``n`` units are done (of ``total``, when given)."""
        if self._closed:
            return
        self.n = int(n)
        if total is not None:
            self.total = int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.n = self.n
            self._bar.refresh()
        else:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._line(now)
        if self.total is not None and self.n >= self.total:
            self.close()

    def _line(self, now: float) -> None:
        self._last, self._last_n = now, self.n
        elapsed = now - self.t0
        if self.total:
            frac = self.n / self.total
            text = f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({100 * frac:.0f}%)"
            if self.n < self.total and frac > 0:
                text += f", {elapsed:.0f} s elapsed, ~{elapsed * (1 - frac) / frac:.0f} s left"
            else:
                text += f" in {elapsed:.0f} s"
        else:
            text = f"{self.desc}: {self.n:,} {self.unit}, {elapsed:.0f} s elapsed"
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the report (the bar is removed; a log gets its last line)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.n != self._last_n:  # the last state, unless just printed
            self._line(time.monotonic())
