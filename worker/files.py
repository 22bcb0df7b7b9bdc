"""Publishing files and directories atomically: the worker's one way to write output.

Everything the worker writes (packs, artifacts, job results) is first built
under an unguessable temporary name in the target's own directory,
``.NAME.partial-<16 hex digits>``, created exclusively (``O_CREAT|O_EXCL|O_NOFOLLOW``:
never through a planted file or link), then renamed onto the target.  Readers
see the old target or the complete new one, never a half-written file.  The
temporary entry is removed on every failure, including a stop signal
(:class:`~worker.errors.WorkerStop`) at any point: it is created inside the
``try`` whose ``finally`` removes it.  Nothing is fsynced: this protects
against the worker dying, not against the machine losing power.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PARTIAL_MARKER = ".partial-"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def temporary_name(target: Path) -> Path:
    """``.NAME.partial-<random>`` beside ``target`` (a name only; nothing is created)."""
    return target.with_name(f".{target.name}{PARTIAL_MARKER}{os.urandom(8).hex()}")


def create_exclusive(path: Path) -> BinaryIO:
    """Create ``path`` as a new, empty file open for unbuffered writing.

    Raises ``FileExistsError`` if anything (a file, a link) is already there.
    """
    fd = os.open(path, _CREATE_FLAGS, 0o666)
    return open(fd, "wb", buffering=0)


def write_all(raw: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to an unbuffered file (short writes are retried)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    while view:
        written = raw.write(view)
        if not written:
            raise OSError("write returned 0 bytes")
        view = view[written:]


class StagedFile:
    """A new file at a temporary name, published onto its target by :meth:`publish`."""

    def __init__(self, target: Path, path: Path, file: BinaryIO) -> None:
        self.target = target
        self.path = path
        self.file = file
        self.published = False

    def publish(self) -> None:
        """Close the file and rename it onto the target (replacing what is there)."""
        self.file.close()
        os.replace(self.path, self.target)
        self.published = True


@contextmanager
def staged_file(target: Path) -> Iterator[StagedFile]:
    """Stage a new file for ``target``; the caller writes ``.file`` and calls ``.publish()``.

    Leaving the block without publishing (an exception, a stop) removes the
    temporary file.  Raises ``OSError`` when it cannot be created.
    """
    path = temporary_name(target)
    staged: StagedFile | None = None
    try:
        staged = StagedFile(target, path, create_exclusive(path))
        yield staged
    finally:
        if staged is not None:
            staged.file.close()
        if staged is None or not staged.published:
            _remove(path)


def write_file_atomically(target: Path, data: bytes | bytearray | memoryview) -> None:
    """Replace ``target`` with a file holding ``data``, atomically; raises ``OSError``."""
    with staged_file(target) as staged:
        write_all(staged.file, data)
        staged.publish()


class StagedDirectory:
    """A new, empty directory at a temporary name, published by :meth:`publish`."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target = target
        self.path = path
        self.published = False

    def publish(self) -> bool:
        """Rename the directory onto the target.  Returns False, leaving the
        staged directory to be removed, when the target appeared meanwhile and
        is not empty (the caller decides what to do then)."""
        try:
            os.rename(self.path, self.target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        self.published = True
        return True


@contextmanager
def staged_directory(target: Path) -> Iterator[StagedDirectory]:
    """Stage a new directory for ``target``; the caller fills ``.path`` (with
    :func:`create_exclusive`) and calls ``.publish()``.  Leaving the block
    without publishing removes the directory and the plain files in it."""
    path = temporary_name(target)
    staged: StagedDirectory | None = None
    try:
        os.mkdir(path, 0o777)
        staged = StagedDirectory(target, path)
        yield staged
    finally:
        if staged is None or not staged.published:
            _remove_tree(path)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_tree(path: Path) -> None:
    """Remove a staging directory holding only plain files (never following links)."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        _remove(path / name)
    os.rmdir(path)
