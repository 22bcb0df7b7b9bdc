"""A spawned worker's stderr: where it goes, and its tail kept for error messages.

The Rust coordinator lets the worker inherit its stderr.  :class:`StderrCapture`
does the same by default and keeps the last 16 KiB so that
:class:`~fakecoord.errors.WorkerExited` can carry them:

- ``None``: the child writes into a pipe that a thread copies to this
  process's fd 2 (what "inherit" would show), keeping the tail;
- a path: the file is appended to, and its end read back; it is opened with
  ``O_NOFOLLOW`` (:func:`open_log`), so a link planted at a log's name is
  refused, never written through (pass ``sys.stderr`` or an fd, not the
  ``/dev/stderr`` link);
- a file object with a real descriptor (or an ``int`` fd): the descriptor
  is given to the child, and the end read back when it is a regular file;
- a file object without one (``io.StringIO``): the pipe's bytes are copied into it.
"""

from __future__ import annotations

import codecs
import errno
import io
import os
import stat
import threading
from typing import IO, Any

STDERR_TAIL_BYTES = 16 * 1024
TAIL_CHARS = 4000
EXIT_GRACE = 2.0
"""Seconds :meth:`StderrCapture.close` waits for the copier to reach EOF."""

StderrTarget = None | str | os.PathLike | int | IO[Any]


def open_log(path: str | os.PathLike, *, truncate: bool = False, regular: bool = True) -> IO[bytes]:
    """Open a log file for appending (or truncated), never through a link: ``O_NOFOLLOW``
    (a symlink planted at ``path`` raises ``OSError`` ELOOP), ``O_NONBLOCK`` while opening
    (a FIFO without a reader raises instead of blocking) and, with ``regular``, ``fstat``
    after (a FIFO or device is refused with ``OSError``); close-on-exec."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= os.O_TRUNC if truncate else os.O_APPEND
    fd = os.open(path, flags, 0o644)
    try:
        if regular and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb" if truncate else "ab")
    except BaseException:
        os.close(fd)
        raise


class StderrCapture:
    """Routes a child's stderr (see the module docstring) and keeps its tail.

    Build it before the child starts, pass :attr:`popen_arg` as its stderr,
    call :meth:`started` once it runs and :meth:`close` when it is gone.
    Raises ``OSError`` when a path target cannot be opened.
    """

    def __init__(self, target: StderrTarget) -> None:
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._read_fd: int | None = None
        self._write_fd: int | None = None
        self._tail_path: str | None = None
        self._tail_fd: int | None = None
        self._sink: Any = None
        self._sink_fd: int | None = None
        self._owned_file: IO[bytes] | None = None
        self.popen_arg: Any
        if target is None:
            self._sink_fd = 2
            self._make_pipe()
        elif isinstance(target, (str, os.PathLike)):
            self._tail_path = os.fspath(target)
            # Never through a link; a device path (/dev/null) stays usable as before.
            self._owned_file = open_log(self._tail_path, regular=False)  # closed later
            self.popen_arg = self._owned_file
        elif isinstance(target, int):
            self.popen_arg = target
            self._tail_fd = target if target >= 0 and _is_regular(target) else None
        else:
            fd = _fileno(target)
            if fd is None:
                self._sink = target
                self._make_pipe()
            else:
                target.flush()
                self.popen_arg = fd
                self._tail_fd = fd if _is_regular(fd) else None

    def _make_pipe(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self.popen_arg = self._write_fd

    def started(self) -> None:
        """Call once the child holds its stderr: drop our copies, start the copier."""
        pipe = self._write_fd is not None
        self._drop_parent_ends()
        if pipe:
            self._thread = threading.Thread(
                target=self._copy, name="fakecoord-worker-stderr", daemon=True
            )
            self._thread.start()

    def _copy(self) -> None:
        assert self._read_fd is not None
        decoder = None
        if self._sink is not None and isinstance(self._sink, io.TextIOBase):
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._tail += chunk
                del self._tail[:-STDERR_TAIL_BYTES]
            try:
                if self._sink_fd is not None:
                    _write_all(self._sink_fd, chunk)
                elif decoder is not None:
                    self._sink.write(decoder.decode(chunk))
                else:
                    self._sink.write(chunk)
            except (OSError, ValueError):
                # The sink went away (closed stream, EPIPE): keep the tail anyway.
                self._sink_fd = None
                self._sink = None
                decoder = None

    def tail(self, wait: float = 0.0) -> str:
        """The end of the child's stderr; waits up to ``wait`` s for a pipe to drain."""
        if self._thread is not None:
            self._thread.join(wait)
            with self._lock:
                data = bytes(self._tail)
        elif self._tail_path is not None:
            try:
                with open(self._tail_path, "rb") as f:
                    data = _read_end(f.fileno())
            except OSError:
                data = b""
        elif self._tail_fd is not None:
            try:
                data = _read_end(self._tail_fd)
            except OSError:
                data = b""
        else:
            data = b""
        text = data.decode("utf-8", errors="replace")
        if len(text) > TAIL_CHARS:
            text = text[-TAIL_CHARS:]
            text = text.partition("\n")[2] or text
        return text

    def _drop_parent_ends(self) -> None:
        """Close this process's copies of what the child writes to."""
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def close(self, wait: float = EXIT_GRACE) -> None:
        """Release our ends.  The copier stops at EOF (when every holder of the
        pipe's write end is gone); it is a daemon thread, so one kept alive by a
        grandchild does not block interpreter exit."""
        self._drop_parent_ends()
        if self._thread is not None:
            self._thread.join(wait)
            if not self._thread.is_alive() and self._read_fd is not None:
                os.close(self._read_fd)
                self._read_fd = None
        elif self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


def _fileno(target: Any) -> int | None:
    try:
        return target.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _read_end(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    start = max(0, size - STDERR_TAIL_BYTES)
    return os.pread(fd, size - start, start)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


__all__ = ["STDERR_TAIL_BYTES", "StderrCapture", "StderrTarget", "open_log"]
