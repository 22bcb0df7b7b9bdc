"""Publishing files and directories atomically: the worker's one way to write output.

Everything the worker writes (packs, artifacts, job results) is first built
under an unguessable temporary name in the target's own directory,
``.NAME.partial-<pid>-<16 hex digits>``, created exclusively
(``O_CREAT|O_EXCL|O_NOFOLLOW``: never through a planted file or link), then
renamed onto the target.  Readers see the old target or the complete new one,
never a half-written file.  The temporary entry is removed on every failure,
including a stop signal (:class:`~worker.errors.WorkerStop`) at any point: it
is created inside the ``try`` whose ``finally`` removes it.  A process killed
outright (SIGKILL, as at a call timeout) cannot remove it: the next write of
the same target removes the staging of every *dead* process (the pid in the
name), never a live one's (:func:`remove_stale_staging`).  Nothing is fsynced:
this protects against the worker dying, not against the machine losing power.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PARTIAL_MARKER = ".partial-"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_STAGING_NAME = re.compile(r"\.(?P<target>.+)\.partial-(?P<pid>[0-9]+)-[0-9a-f]{16}", re.DOTALL)


def temporary_name(target: Path) -> Path:
    """``.NAME.partial-<pid>-<random>`` beside ``target`` (a name only; nothing is created)."""
    return target.with_name(f".{target.name}{PARTIAL_MARKER}{os.getpid()}-{os.urandom(8).hex()}")


def process_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists (a zombie, another user's
    process or a recycled pid count as alive: staging is kept then)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_stale_staging(directory: Path, target_name: str | None = None) -> list[str]:
    """Remove the staging entries in ``directory`` (of ``target_name``, or of any
    target) whose creating process is dead; returns the names removed.

    Best effort: an entry that cannot be removed is left alone.  Links are
    removed, never followed, and a staging directory is emptied through its
    own descriptor, so a planted link cannot redirect the removal.
    """
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for name in entries:
        match = _STAGING_NAME.fullmatch(name)
        if match is None or (target_name is not None and match["target"] != target_name):
            continue
        if process_alive(int(match["pid"])):
            continue
        try:
            _remove_entry(directory / name)
        except OSError:
            continue
        removed.append(name)
    return removed


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
        """Close the file and rename it onto the target (replacing what is there).
        ``published`` is true exactly when the rename happened, even if a stop
        interrupts this call."""
        self.file.close()
        self.published = True
        try:
            os.replace(self.path, self.target)
        except BaseException:
            self.published = False
            raise


@contextmanager
def staged_file(target: Path) -> Iterator[StagedFile]:
    """Stage a new file for ``target``; the caller writes ``.file`` and calls ``.publish()``.

    Leaving the block without publishing (an exception, a stop) removes the
    temporary file.  Raises ``OSError`` when it cannot be created.
    """
    remove_stale_staging(target.parent, target.name)
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
    remove_stale_staging(target.parent, target.name)
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


def _remove_entry(path: Path) -> None:
    """Remove a file, a link, or a directory holding only plain files (never following links)."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        _remove(path)
    else:
        _remove_tree(path)


def _remove_tree(path: Path) -> None:
    """Remove a staging directory holding only plain files (never following links)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # a link planted in its place: remove the link itself
            raise
        _remove(path)
        return
    try:
        for name in os.listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    os.rmdir(path)
