"""A worker process on a raw socket, for the framing checks.

The fakecoord client only sends well-formed frames; these checks need to send
split, garbage, truncated and oversized ones and watch how the worker exits.
The process is started and accepted by :mod:`fakecoord.spawn`, exactly as
the coordinator starts it (docs/protocol.md §1); frames are :mod:`fakecoord.wire`'s.
Every wait is bounded by a timeout.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fakecoord import spec, wire
from fakecoord.errors import FakecoordError
from fakecoord.spawn import Spawned, kill, spawn_worker

from .errors import NoAnswer, RawWorkerError, WorkerGone


class RawWorker:
    """One worker process and its socket.  Use :meth:`spawn`; always :meth:`close`."""

    def __init__(self, worker: Spawned, log_path: Path) -> None:
        self.worker = worker
        self.process: subprocess.Popen = worker.process
        self.sock = worker.sock
        self.log_path = log_path
        self.reader = wire.FrameReader()
        self._eof = False

    @classmethod
    def spawn(
        cls,
        factory: str,
        config: Any,
        *,
        log_path: Path,
        worker_cmd: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pythonpath: Iterable[str] = (),
        accept_timeout: float = 30.0,
    ) -> RawWorker:
        """Start the worker and accept its connection; raises :class:`RawWorkerError`."""
        try:
            worker = spawn_worker(
                factory,
                config or {},
                worker_cmd=worker_cmd,
                env=env,
                cwd=cwd,
                pythonpath=pythonpath,
                stderr=log_path,
                accept_timeout=accept_timeout,
            )
        except FakecoordError as exc:
            raise RawWorkerError(str(exc)) from None
        return cls(worker, log_path)

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send bytes; a closed connection raises :class:`WorkerGone`."""
        self.sock.settimeout(30.0)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise WorkerGone(f"the connection broke while sending ({exc})", False) from None

    def send_pieces(self, pieces: Iterable[bytes], pause: float) -> None:
        """Send each piece separately, pausing between them so they arrive apart."""
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(pause)
            self.send(piece)

    def close_write(self) -> None:
        """Half-close: the worker reads EOF, we can still read its answers."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- receiving -----------------------------------------------------------

    def read_body(self, timeout: float) -> bytes:
        """The next frame body; raises :class:`WorkerGone` at EOF, :class:`NoAnswer` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.reader.next_body()
            if body is not None:
                return body
            if self._eof:
                raise WorkerGone(
                    "the worker closed the connection"
                    + (" in the middle of a frame" if self.reader.in_frame else ""),
                    self.reader.in_frame,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                what = "part of a frame" if self.reader.in_frame else "nothing"
                raise NoAnswer(f"{what} arrived within {timeout:g} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                self.reader.feed(chunk)
            else:
                self._eof = True

    def read_response(self, timeout: float) -> spec.Response:
        """The next frame, decoded as the Rust coordinator decodes a response envelope.

        Raises :class:`~fakecoord.errors.DecodeError` for a body it would refuse.
        """
        return spec.decode_response(self.read_body(timeout))

    def request(self, message: dict, timeout: float) -> spec.Response:
        self.send(wire.encode_frame(message))
        return self.read_response(timeout)

    # -- the process ---------------------------------------------------------

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process ends, or None if it is still running."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_tail(self) -> str:
        return log_tail(self.log_path)

    def close(self) -> None:
        """Close the socket, give the worker 2 s to exit, then kill and reap it."""
        self.sock.close()
        if self.wait_exit(2.0) is None:
            kill(self.process)
        self.worker.capture.close(wait=0.5)


def log_tail(path: Path, limit: int = 2000) -> str:
    """The end of a worker's stderr log, on one line per original line."""
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


__all__ = ["NoAnswer", "RawWorker", "RawWorkerError", "WorkerGone", "log_tail"]
