"""The coordinator's side of the fork server: start workers by forking a warm process.

A fresh ``python -m worker`` imports torch (hundreds of MB, about a second
of CPU) and pays torch's first-use initialisation again; with N peers on a
few cores that is most of a short run.  :class:`ForkServer` starts one
server process (:mod:`fakecoord.zygote`, a clean interpreter running on the
worker's side of the wire) that imports torch once, then asks it to fork one
child per worker.  Each child runs what ``python -m worker ARGS`` runs, with
its own argv, environment, working directory and stderr, and connects back
to its own listener like a spawned worker: nothing on the wire changes.

:meth:`ForkServer.fork` returns a :class:`ForkedProcess`, which has the
parts of :class:`subprocess.Popen` the spawner uses (``pid``, ``poll``,
``wait``, ``kill``, ``terminate``, ``send_signal``, ``returncode``): the
server reaps its children and reports their statuses; signals go through a
pidfd, so they never reach a recycled pid.  Linux only (pidfds,
``SCM_RIGHTS``, ``/proc/self/task``); :func:`unavailable` says why not.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import SpawnError
from .stderr import open_log

READY_TIMEOUT = 120.0
"""Seconds the server gets to import torch and warm up (the machine may be loaded)."""
PRELOAD = ("numpy", "worker.server")
"""Imported by the server after torch: what every ``python -m worker`` imports anyway."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MAX_PACKET = 1 << 22


class ForkRefused(SpawnError):
    """The fork server cannot start this worker (the message says why); spawn it instead."""


def unavailable() -> str | None:
    """Why this platform has no fork server (None: it has one)."""
    if not sys.platform.startswith("linux"):
        return f"the fork server needs Linux (this is {sys.platform})"
    for name in ("pidfd_open", "fork"):
        if not hasattr(os, name):
            return f"the fork server needs os.{name}"
    if not hasattr(socket, "send_fds") or not hasattr(signal, "pidfd_send_signal"):
        return "the fork server needs socket.send_fds and signal.pidfd_send_signal"
    return None


class ForkedProcess(subprocess.Popen):
    """A child of the fork server, seen from the coordinator as a ``Popen``.

    ``Popen.__init__`` is never called (the server made the child): every
    method the spawner, the client and the simulation use is overridden;
    ``stdin``, ``stdout`` and ``stderr`` are None as for a spawned worker.
    """

    def __init__(  # noqa: PLW0231 - Popen.__init__ would start a process
        self, server: ForkServer, pid: int, pidfd: int, args: list[str]
    ) -> None:
        self.server = server
        self.pid = pid
        self.args = args
        self.returncode = None
        self.stdin = self.stdout = self.stderr = None
        self._pidfd: int | None = pidfd
        self._lock = threading.Lock()
        self._done = threading.Event()

    def _exited(self, returncode: int) -> None:
        with self._lock:
            self.returncode = returncode
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; raises :class:`subprocess.TimeoutExpired` after ``timeout`` s."""
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def _orphaned(self, grace: float = 10.0) -> None:
        """The server died: SIGKILL the child, wait (its pidfd) until it is gone, record -9."""
        with self._lock:
            pidfd = self._pidfd
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    select.select([pidfd], [], [], grace)  # readable once the child is gone
                except OSError:
                    pass
        self._exited(-signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One fork server process (see the module docstring); thread-safe.

    ``env`` is the server's environment (its thread variables are forced to
    1); ``log`` receives the server's stderr.  The server starts on the
    first :meth:`fork` (or :meth:`start`); :meth:`close` ends it and every
    child it still tracks.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log: str | os.PathLike,
        *,
        cwd: str | os.PathLike | None = None,
        preload: Sequence[str] = PRELOAD,
        warmup: bool = True,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.env = {**env, **{name: "1" for name in THREAD_VARIABLES}}
        self.log = Path(log)
        self.cwd = cwd
        self.preload = list(preload)
        self.warmup = warmup
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self.ready: dict[str, Any] | None = None
        self.broken: str | None = None
        """Why the server cannot fork (it failed to start, died or refused); None while usable."""
        self._control: socket.socket | None = None
        self._start_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state = threading.Lock()
        self._pending: dict[int, list[Any]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._next_id = 1
        self._reader: threading.Thread | None = None
        self.forked = 0
        """Workers forked so far."""
        self.spawned = 0
        """Workers spawned instead (the server refused; see :attr:`notes`)."""
        self.notes: list[str] = []

    # -- starting ---------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it is ready; raises :class:`ForkRefused`."""
        with self._start_lock:
            if self.broken is not None:
                raise ForkRefused(self.broken)
            if self.ready is not None:
                return
            try:
                self._start()
            except ForkRefused as exc:
                self._break(str(exc))
                raise

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "fakecoord.zygote", "--control-fd", str(theirs.fileno())]
        for name in self.preload:
            argv += ["--preload", name]
        if self.warmup:
            argv.append("--warmup")
        try:
            with open_log(self.log) as log:  # never through a planted link
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    env=self.env, cwd=self.cwd, pass_fds=(theirs.fileno(),),
                )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise ForkRefused(f"cannot start the fork server: {exc}") from None
        finally:
            theirs.close()
        self._control = ours
        deadline = time.monotonic() + self.ready_timeout
        while True:
            ours.settimeout(0.2)
            try:
                data = ours.recv(MAX_PACKET)
            except TimeoutError:
                if self.process.poll() is None and time.monotonic() < deadline:
                    continue
                data = b""
            if not data:
                status = self.process.poll()
                self._stop_process()
                raise ForkRefused(
                    "the fork server did not start "
                    + (f"(exit status {status})" if status is not None else "in time")
                    + f"; see {self.log}"
                )
            message = json.loads(data)
            if message.get("op") == "ready":
                break
        ours.settimeout(None)
        self.ready = message
        self._reader = threading.Thread(target=self._read, name="fakecoord-forkserver", daemon=True)
        self._reader.start()

    # -- forking -----------------------------------------------------------------

    def fork(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike | None,
        stderr_fd: int,
    ) -> ForkedProcess:
        """A child running ``python -m worker argv``; raises :class:`ForkRefused`.

        ``stderr_fd`` becomes the child's stderr (the server gets a copy;
        the caller keeps and closes its own).
        """
        self.start()
        with self._state:
            request_id = self._next_id
            self._next_id += 1
            slot: list[Any] = [threading.Event(), None, None]
            self._pending[request_id] = slot
        request = {
            "op": "fork", "id": request_id, "argv": list(argv), "env": dict(env),
            "cwd": None if cwd is None else os.fspath(cwd),
        }  # fmt: skip
        try:
            with self._send_lock:
                assert self._control is not None
                socket.send_fds(self._control, [json.dumps(request).encode()], [stderr_fd])
        except OSError as exc:
            with self._state:
                self._pending.pop(request_id, None)
            self._break(f"the fork server is gone ({exc})")
            raise ForkRefused(self.broken or "the fork server is gone") from None
        event, reply, pidfd = slot
        event.wait()
        reply = slot[1]
        pidfd = slot[2]
        if reply is None or reply.get("op") != "forked":
            why = "the fork server is gone" if reply is None else reply.get("reason", "refused")
            if reply is not None and reply.get("reason", "").startswith("the fork server has"):
                self._break(why)
            raise ForkRefused(why)
        full = [sys.executable, "-m", "worker", *argv]
        child = ForkedProcess(self, reply["pid"], pidfd, full)
        with self._state:
            self.forked += 1
            self._children[child.pid] = child
            early = self._early_exits.pop(child.pid, None)
        if early is not None:
            child._exited(early)
        return child

    def _read(self) -> None:
        control = self._control
        assert control is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(control, MAX_PACKET, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            message = json.loads(data)
            op = message.get("op")
            if op in ("forked", "refused"):
                with self._state:
                    slot = self._pending.pop(message.get("id"), None)
                if slot is None:
                    for fd in fds:
                        os.close(fd)
                    continue
                slot[1] = message
                slot[2] = fds[0] if fds else None
                slot[0].set()
            elif op == "exit":
                with self._state:
                    child = self._children.pop(message["pid"], None)
                    if child is None:
                        self._early_exits[message["pid"]] = message["returncode"]
                if child is not None:
                    child._exited(message["returncode"])
        self._server_gone()

    def _server_gone(self) -> None:
        """The server ended: fail pending forks; kill the children it can no longer report on."""
        self._break("the fork server exited")
        with self._state:
            pending = list(self._pending.values())
            self._pending.clear()
            children = list(self._children.values())
            self._children.clear()
        for slot in pending:
            slot[0].set()
        for child in children:
            child._orphaned()

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why

    def note(self, text: str) -> None:
        """Count a worker spawned instead of forked, and say why in the server's log."""
        with self._state:
            self.spawned += 1
            self.notes.append(text)
        try:
            with open_log(self.log) as log:
                log.write(f"fakecoord forkserver: {text}\n".encode())
        except OSError:
            pass

    # -- stopping ------------------------------------------------------------------

    def close(self, grace: float = 5.0) -> None:
        """End the server (it kills and reaps any child still running); idempotent."""
        self._break("the fork server was closed")
        if self._control is not None:
            try:
                self._control.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._stop_process(grace)
        if self._reader is not None:
            self._reader.join(grace)
        if self._control is not None:
            self._control.close()
            self._control = None

    def _stop_process(self, grace: float = 0.0) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


__all__ = ["ForkRefused", "ForkServer", "ForkedProcess", "PRELOAD", "unavailable"]
