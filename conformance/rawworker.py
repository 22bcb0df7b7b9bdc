"""A worker process on a raw socket, for the framing checks.

The fakecoord client only sends well-formed frames; these checks need to send
split, garbage, truncated and oversized ones and watch how the worker exits.
The process is started exactly as the coordinator starts it (PROTOCOL.md §1).
Every wait is bounded by a timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import wire
from .errors import ConformanceError, WireError

ACCEPT_POLL = 0.05


class RawWorkerError(ConformanceError):
    """The raw worker could not start, or its stream broke where an answer was due."""


class WorkerGone(RawWorkerError):
    """The connection closed (at a frame boundary when ``mid_frame`` is False)."""

    def __init__(self, message: str, mid_frame: bool) -> None:
        super().__init__(message)
        self.mid_frame = mid_frame


class NoAnswer(RawWorkerError):
    """Nothing (or only part of a frame) arrived before the timeout."""


def worker_root() -> str | None:
    """The directory holding the ``worker`` package, if it is importable here."""
    spec = importlib.util.find_spec("worker")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def worker_argv(worker_cmd: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The command prefix and the extra PYTHONPATH entries for it."""
    if worker_cmd:
        return list(worker_cmd), []
    root = worker_root()
    return [sys.executable, "-m", "worker"], [root] if root else []


def child_env(
    env: Mapping[str, str] | None, pythonpath: Iterable[str], extra: Iterable[str] = ()
) -> dict[str, str]:
    out = dict(os.environ if env is None else env)
    paths = [*map(os.fspath, pythonpath), *extra]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    if paths:
        out["PYTHONPATH"] = os.pathsep.join(paths)
    out["PYTHONUNBUFFERED"] = "1"
    return out


class RawWorker:
    """One worker process and its socket.  Use :meth:`spawn`; always :meth:`close`."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket, log_path: Path) -> None:
        self.process = process
        self.sock = sock
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
        prefix, extra = worker_argv(worker_cmd)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        process = None
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            argv = [*prefix, "--factory", factory, "--config-json", json.dumps(config or {})]
            argv += ["--connect-host", "127.0.0.1", "--connect-port", str(port)]
            with open(log_path, "ab") as log:
                try:
                    process = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        env=child_env(env, pythonpath, extra),
                        cwd=cwd,
                    )
                except OSError as exc:
                    raise RawWorkerError(f"cannot start the worker {argv[0]!r}: {exc}") from None
            deadline = time.monotonic() + accept_timeout
            while True:
                if process.poll() is not None:
                    raise RawWorkerError(
                        f"the worker exited (status {process.returncode}) before connecting: "
                        f"{log_tail(log_path)}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RawWorkerError(f"the worker did not connect within {accept_timeout:g} s")
                listener.settimeout(min(ACCEPT_POLL, remaining))
                try:
                    sock, _ = listener.accept()
                    break
                except TimeoutError:
                    continue
        except BaseException:
            if process is not None:
                _kill(process)
            raise
        finally:
            listener.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(process, sock, log_path)

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

    def read_message(self, timeout: float) -> Any:
        """The next frame, strictly decoded; raises :class:`WireError` for a bad body."""
        return wire.decode(self.read_body(timeout))

    def request(self, message: dict, timeout: float) -> Any:
        self.send(wire.encode(message))
        return self.read_message(timeout)

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
        """Close the socket, give the worker a moment to exit, then kill and reap it."""
        try:
            self.sock.close()
        finally:
            if self.wait_exit(2.0) is None:
                _kill(self.process)


def _kill(process: subprocess.Popen) -> None:
    try:
        process.kill()
    except OSError:
        pass
    try:
        process.wait(10.0)
    except subprocess.TimeoutExpired:
        pass


def log_tail(path: Path, limit: int = 2000) -> str:
    """The end of a worker's stderr log, on one line per original line."""
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


__all__ = ["NoAnswer", "RawWorker", "RawWorkerError", "WireError", "WorkerGone"]
