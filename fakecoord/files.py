"""Publishing files and directories atomically: fakecoord's one helper.

Everything the coordinator side publishes (packs, reports, checkpoints,
shards, job manifests) is first written under a temporary name in the
target's own directory, then renamed into place, so a reader sees the old
entry or the new one, never half of one.  Temporary names are
``.NAME.partial-RANDOM``: unguessable, created exclusively (``O_EXCL``, so a
planted symlink is never followed), and removed on every failure, including
``KeyboardInterrupt``.

Outputs the user names on the command line (``--json``, ``--junit-xml``,
``--report``) go through :func:`write_output`: ``/dev/stdout``, a terminal
or a FIFO is written in place (renaming over it would replace the link or
the FIFO), anything else is published by rename like every other file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_MARK = ".partial-"
"""Every temporary entry's name contains this (leak checks look for it)."""


def _prefix(target: Path) -> str:
    return f".{target.name}{PARTIAL_MARK}"


@contextmanager
def staged_file(target: str | os.PathLike, mode: int = 0o644) -> Iterator[Any]:
    """Yield a binary file object; on a clean exit it replaces ``target``.

    The parent directory is created if needed.  On any exception the
    temporary file is removed and ``target`` is left as it was.  Raises
    ``OSError`` from the file system.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), dir=path.parent)
    try:
        os.fchmod(fd, mode & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def write_bytes(target: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Atomically replace ``target`` with ``data`` (see :func:`staged_file`)."""
    with staged_file(target) as f:
        f.write(data)


def write_json(target: str | os.PathLike, value: Any, *, indent: int | None = 2) -> None:
    """Atomically replace ``target`` with ``value`` as standard JSON (no NaN).

    Raises ``ValueError``/``TypeError`` before anything is written when
    ``value`` is not standard JSON, ``OSError`` from the file system.
    """
    text = json.dumps(value, indent=indent, allow_nan=False)
    write_bytes(target, (text + "\n").encode("utf-8"))


def write_output(target: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write an output the user named: a stream in place, anything else atomically.

    A character device or a FIFO (``/dev/stdout``, ``/dev/null``, a
    terminal, a named pipe), at ``target`` or reached through symbolic links,
    is opened for writing without creating or truncating anything and
    written in place; a FIFO blocks until its reader opens it.  Anything
    else (a regular file, a missing one) is replaced by rename
    (:func:`write_bytes`): a link there is replaced, never followed.  Links
    are followed to a stream only when the link at ``target`` belongs to us
    or to root, and the stream itself too, so a link or FIFO another user
    planted in a shared directory never receives the output.  Raises
    ``OSError`` (a socket cannot be opened by name: ENXIO).
    """
    fd = _open_stream(target)
    if fd is None:
        write_bytes(target, data)
        return
    with os.fdopen(fd, "wb", buffering=0) as stream:
        view = memoryview(data).cast("B")
        while view:
            view = view[stream.write(view) or 0 :]


def _open_stream(target: str | os.PathLike) -> int | None:
    """A write descriptor of the stream at ``target`` (see :func:`write_output`), or None."""
    trusted = {os.geteuid(), 0}
    try:
        link = os.lstat(target)
        final = os.stat(target)
    except OSError:
        return None  # missing, a dangling link, a loop: published by rename
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
        return None
    if stat.S_ISSOCK(final.st_mode):
        raise OSError(errno.ENXIO, "a socket cannot be opened by its name", os.fspath(target))
    if not _is_stream(final) or final.st_uid not in trusted:
        return None
    fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    opened = os.fstat(fd)
    if not _is_stream(opened) or (opened.st_dev, opened.st_ino) != (final.st_dev, final.st_ino):
        os.close(fd)  # replaced between the check and the open: nothing was written
        return None
    return fd


def _is_stream(status: os.stat_result) -> bool:
    return stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode)


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty private directory; on a clean exit it is renamed to ``target``.

    ``target`` must not exist (``FileExistsError`` otherwise, also when it
    appears meanwhile).  On any exception the staging directory and its
    contents are removed.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        raise FileExistsError(f"{str(path)!r} already exists")
    staging = Path(tempfile.mkdtemp(prefix=_prefix(path), dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        try:
            os.rename(staging, path)
        except OSError as exc:
            if os.path.lexists(path):
                raise FileExistsError(f"{str(path)!r} appeared while it was being written") from exc
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads
    # creating files: read it once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


__all__ = [
    "PARTIAL_MARK",
    "staged_directory",
    "staged_file",
    "write_bytes",
    "write_json",
    "write_output",
]
