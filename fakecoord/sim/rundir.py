"""The run directory and the output paths: checked before a run starts, locked while it runs.

A run directory is code: its checkpoint names the worker command, the
factory and the job command the run will execute, so ``--resume`` refuses a
directory (or checkpoint) owned by another user.  :class:`RunLock` holds an
exclusive ``flock`` on ``DIR/run.lock`` for the whole run, so two runs of one
directory (two ``--resume``, or a ``--resume`` and an ``--out``) cannot
write it at once: the second exits 2 naming the lock.  Every check raises
:class:`~fakecoord.errors.SettingsError` (exit 2) before anything is created.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import SettingsError

LOCK_NAME = "run.lock"
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")
"""What the plot is saved as, by the file's extension (matplotlib's Agg canvas writes these)."""


def _writable_dir(path: Path) -> bool:
    return _probe(path, path.is_dir) and os.access(path, os.W_OK | os.X_OK)


def _probe(path: Path, test: Any) -> bool:
    """``test()`` (a ``Path`` predicate), with a path the system refuses (too long, a
    component that is a file) answering False instead of raising."""
    try:
        return bool(test())
    except (OSError, ValueError):
        return False


def is_stream(path: Path) -> bool:
    """A character device or a FIFO (links followed): what the atomic writer writes into
    directly instead of replacing it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _absolute(flag: str, target: str | os.PathLike) -> Path:
    text = os.fspath(target)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise SettingsError(f"{flag}: expected a non-empty path without NUL, got {text!r:.80}")
    return Path(os.path.abspath(text))


def check_output_file(flag: str, target: str | os.PathLike, *, beside: str = "") -> Path:
    """Refuse an output file that cannot be written: its directory must exist and be
    writable, and the path must not be a directory (``beside``: the suffix of a second file
    written next to it).  A writable character device or FIFO (``/dev/stdout``) is accepted
    as it is.  Returns the absolute path."""
    path = _absolute(flag, target)
    where = f"{flag} {str(target)!r:.200}"
    if _probe(path, path.is_dir):
        raise SettingsError(f"{where}: is a directory; name a file")
    if is_stream(path):  # /dev/stdout, a FIFO: written directly, never replaced
        if not os.access(path, os.W_OK):
            raise SettingsError(f"{where}: cannot write to it (permission denied)")
        return path
    if len(path.name.encode("utf-8", "surrogateescape")) > 200:
        raise SettingsError(f"{where}: the file name is longer than 200 bytes")
    if not _probe(path.parent, path.parent.is_dir):
        raise SettingsError(f"{where}: the directory {str(path.parent)!r} does not exist")
    if not _writable_dir(path.parent):
        raise SettingsError(f"{where}: cannot write into {str(path.parent)!r} (permission denied)")
    if beside and _probe(path, path.with_suffix(beside).is_dir):
        raise SettingsError(f"{where}: {str(path.with_suffix(beside))!r} is a directory")
    return path


def check_plot_file(target: str | os.PathLike) -> Path:
    """:func:`check_output_file` plus an extension the plot can be saved as."""
    suffix = Path(target).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise SettingsError(
            f"--plot {str(target)!r}: the extension decides the format; expected one of "
            f"{', '.join('.' + f for f in PLOT_FORMATS)}"
        )
    return check_output_file("--plot", target)


def check_out_dir(flag: str, target: str | os.PathLike) -> Path:
    """Refuse a run directory that cannot be created or written, or that another user owns."""
    path = _absolute(flag, target)
    where = f"{flag} {str(target)!r:.200}"
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in path.parts):
        raise SettingsError(f"{where}: a component is longer than 255 bytes")
    if os.path.lexists(path):
        if not _probe(path, path.is_dir):
            raise SettingsError(f"{where}: exists and is not a directory")
        check_owner(flag, path)
        if not _writable_dir(path):
            raise SettingsError(f"{where}: cannot write into it (permission denied)")
        return path
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not _writable_dir(ancestor):
        raise SettingsError(
            f"{where}: cannot create it: {str(ancestor)!r} is not a writable directory"
        )
    return path


def check_owner(flag: str, path: Path) -> None:
    """Refuse ``path`` (and its checkpoint) unless this user owns it: a run directory is code."""
    uid = os.geteuid()
    for entry in (path, path / "checkpoint.json"):
        try:
            owner = os.lstat(entry).st_uid
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SettingsError(f"{flag} {str(path)!r}: cannot inspect {entry} ({exc})") from None
        if owner != uid:
            raise SettingsError(
                f"{flag} {str(path)!r}: {str(entry)!r} belongs to uid {owner}, not to this user "
                f"(uid {uid}); a run directory names the commands a run executes, so only its "
                "owner's runs use it"
            )


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/run.lock`` (released on :meth:`release`
    or when the process ends; the descriptor is never inherited by workers)."""

    def __init__(self, directory: Path, flag: str) -> None:
        self.path = directory / LOCK_NAME
        self.flag = flag
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; raises :class:`SettingsError` when another run holds it."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise SettingsError(
                f"{self.flag}: cannot open the lock file {self.path} ({exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SettingsError(
                f"{self.flag} {str(self.path.parent)!r}: another fakecoord run is using this "
                f"directory (it holds {self.path}); wait for it to end"
            ) from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = [
    "LOCK_NAME",
    "PLOT_FORMATS",
    "RunLock",
    "check_out_dir",
    "check_output_file",
    "check_owner",
    "check_plot_file",
    "is_stream",
]
