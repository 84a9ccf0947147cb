"""Atomic file writes: the one way metasched replaces a file.

A file is written to a temporary sibling in the same directory (``.tmp-NAME.<random>``),
flushed and fsynced, and renamed over the target with :func:`os.replace`; the directory is
then fsynced so the rename is durable too. A reader (or a process that resumes after a
crash, even after SIGKILL) therefore sees either the old content or the new, never a
partial file. An error while writing deletes the temporary; a kill leaves it behind under
the ``.tmp-`` prefix, which a run directory's resume removes
(:func:`metasched.agents.rundir.remove_stale_temporaries`) and every other reader ignores.

Three entry points:

* :func:`write_text` / :func:`write_bytes` for content already in memory;
* :func:`atomic_open`, a context manager yielding an open file (for ``csv`` writers,
  ``json.dump`` ...);
* :func:`atomic_path`, a context manager yielding the temporary's path, for writers that
  want a file name (``np.savez``, ``torch.save``, a subprocess).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_text(d / "a.txt", "hello")
    >>> with atomic_open(d / "a.txt") as fh:
    ...     _ = fh.write("world")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('world', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["TMP_PREFIX", "atomic_open", "atomic_path", "fsync_dir", "write_bytes", "write_text"]

#: Name prefix of every temporary; a run directory's resume deletes what a kill left behind.
TMP_PREFIX = ".tmp-"

PathLike = str | os.PathLike[str]


def fsync_dir(path: PathLike) -> None:
    """Fsync directory ``path`` so a rename inside it is durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse it
        pass
    finally:
        os.close(fd)


def _create_temporary(target: Path, suffix: str) -> Path:
    """Create an empty temporary next to ``target`` (mode from the umask, like ``open``)."""
    while True:
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{os.urandom(4).hex()}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - a 32-bit collision
            continue
        return tmp


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = "", parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    The temporary exists (empty) in ``path``'s directory. When the block ends normally the
    temporary is fsynced and renamed over ``path``; when it raises, the temporary is deleted
    and ``path`` is untouched.

    Args:
        path: the file to (re)place.
        suffix: ending of the temporary's name, for writers that add one when it is missing
            (``np.savez`` appends ``.npz``).
        parents: create missing parent directories (else a missing one raises, as ``open``).

    Yields:
        The temporary's path.
    """
    target = Path(path)
    if parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(target, suffix)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(
    path: PathLike,
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    parents: bool = False,
) -> Iterator[IO[Any]]:
    """Open a temporary for writing; on success it replaces ``path`` atomically.

    Args:
        path: the file to (re)place.
        mode: ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"``.
        encoding: text encoding (text mode only).
        newline: as for :func:`open` (``""`` for the ``csv`` module).
        parents: create missing parent directories.

    Yields:
        The open file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, parents=parents) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh


def write_text(
    path: PathLike, text: str, *, encoding: str = "utf-8", parents: bool = False
) -> None:
    """Write ``text`` to ``path`` atomically (``parents``: create missing directories)."""
    with atomic_open(path, "w", encoding=encoding, parents=parents) as fh:
        fh.write(text)


def write_bytes(path: PathLike, data: bytes, *, parents: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``parents``: create missing directories)."""
    with atomic_open(path, "wb", parents=parents) as fh:
        fh.write(data)
