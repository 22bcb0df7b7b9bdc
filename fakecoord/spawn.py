"""Spawning a worker and accepting its connection: the coordinator side's one way.

Every spawner on this side uses this module: fakecoord's client, the
conformance suite's raw worker, the test fixtures, the chaos tool and the
benchmarks.  It does what the Rust coordinator does (docs/protocol.md §1):

1. bind ``127.0.0.1`` port 0, backlog 1;
2. start the command (``python -m worker`` by default, then ``--factory``,
   ``--config-json``, ``--connect-host``, ``--connect-port``) with stdin and
   stdout on /dev/null, ``PYTHONUNBUFFERED=1``, extra import roots prepended
   to ``PYTHONPATH`` (and, for the default command, the directory holding
   the ``worker`` package), stderr routed by :class:`~fakecoord.stderr.StderrCapture`;
3. accept one connection while polling the child, until a timeout; then
   close the listener and set TCP_NODELAY.

Beyond the Rust coordinator, the accept refuses connections that do not
come from this user (see SECURITY.md): on Linux the peer's uid is looked up
in ``/proc/net/tcp``, and a connection whose uid cannot be determined (for
instance one reset before the lookup) is refused too, so nobody can take
the listener from the worker with a decoy.  A refused connection is closed
with one line on our stderr, and the accept keeps waiting for the worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidParams, SpawnError, WorkerExited, WorkerTimeout
from .forkserver import ForkRefused, ForkServer
from .stderr import StderrCapture, StderrTarget

LOOPBACK = "127.0.0.1"
DEFAULT_ACCEPT_TIMEOUT = 10.0
ACCEPT_POLL = 0.05
TAIL_DRAIN = 2.0
"""Seconds to let a dead worker's stderr pipe drain before its tail is reported."""
PROC_NET_TCP = "/proc/net/tcp"


def _worker_root() -> str | None:
    # The ``worker`` package of this distribution sits beside ``fakecoord``
    # (in a checkout and in site-packages alike).  Not importlib.util.find_spec:
    # that searches sys.path, where the current directory may hold another
    # ``worker`` first.
    root = Path(__file__).resolve().parent.parent
    return str(root) if (root / "worker" / "__main__.py").is_file() else None


WORKER_ROOT = _worker_root()
"""The directory holding this distribution's ``worker`` package (None if it is absent)."""


def default_command() -> list[str]:
    """``python -m worker`` with this interpreter."""
    return [sys.executable, "-m", "worker"]


def config_json(config: Any) -> str:
    """``config`` (None: ``{}``) as standard JSON; raises :class:`InvalidParams`."""
    try:
        return json.dumps({} if config is None else config, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidParams(
            f"spawn: config cannot be sent as standard JSON ({exc})", "spawn", "config"
        ) from None


def worker_argv(
    command: Sequence[str],
    factory: str,
    config: str,
    port: int,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``command`` with the four coordinator flags (``config`` already JSON), then ``extra_args``."""
    return [
        *command,
        "--factory", factory,
        "--config-json", config,
        "--connect-host", LOOPBACK,
        "--connect-port", str(port),
        *extra_args,
    ]  # fmt: skip


def child_environment(
    env: Mapping[str, str] | None = None,
    pythonpath: Iterable[str | os.PathLike] = (),
    *,
    worker_root: bool = False,
) -> dict[str, str]:
    """The child's environment: ``env`` (default: ours), ``pythonpath`` entries
    (then :data:`WORKER_ROOT` when ``worker_root``) before its ``PYTHONPATH``,
    and ``PYTHONUNBUFFERED=1``."""
    out = dict(os.environ if env is None else env)
    paths = [os.fspath(p) for p in pythonpath]
    if worker_root and WORKER_ROOT is not None:
        paths.append(WORKER_ROOT)
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    if paths:
        out["PYTHONPATH"] = os.pathsep.join(paths)
    out["PYTHONUNBUFFERED"] = "1"
    return out


# ---------------------------------------------------------------------------
# Who is on the other end


def _proc_net_address(host: str, port: int) -> str:
    """/proc/net/tcp's spelling of an IPv4 address: host-order hex, then the port."""
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"


def uid_check_available() -> bool:
    """True where connections' owners can be looked up (Linux: ``/proc/net/tcp``)."""
    return os.path.exists(PROC_NET_TCP)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the other end of loopback TCP connection ``sock``.

    Linux only (the peer's row in ``/proc/net/tcp``).  None when it cannot be
    determined: the connection is already reset (``getpeername`` fails), its
    row is gone, or the table cannot be read.
    """
    try:
        peer = _proc_net_address(*sock.getpeername()[:2])
        ours = _proc_net_address(*sock.getsockname()[:2])
        with open(PROC_NET_TCP) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1] == peer and fields[2] == ours:
                    return int(fields[7])
    except (OSError, ValueError, IndexError):
        return None
    return None


def refusal(sock: socket.socket, uid: int | None = None) -> str | None:
    """Why the accepted ``sock`` must be dropped, or None when it is ours to serve.

    A process of our own uid could ptrace the worker anyway, so the uid is
    the boundary worth checking; an unknown uid fails closed.
    """
    uid = os.getuid() if uid is None else uid
    if not uid_check_available():
        return None
    peer = peer_uid(sock)
    if peer is None:
        return "whose owner cannot be determined (reset, or gone from /proc/net/tcp)"
    if peer != uid:
        return f"from uid {peer}; the worker runs as uid {uid}"
    return None


# ---------------------------------------------------------------------------
# Processes


def reap(process: subprocess.Popen, grace: float) -> None:
    """Wait ``grace`` s for the process to exit, then SIGTERM, then SIGKILL; always reap."""
    for stop in (None, process.terminate, process.kill):
        if process.poll() is not None:
            return
        if stop is not None:
            try:
                stop()
            except OSError:
                pass
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    try:
        process.wait(10.0)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state); Popen reaps it later


def kill(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGKILL the process (if it runs) and reap it within ``grace`` s."""
    if process.poll() is None:
        try:
            process.kill()
        except OSError:
            pass
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass


def accept_connection(
    listener: socket.socket,
    process: subprocess.Popen,
    timeout: float,
    stderr_tail: Callable[[float], str] = lambda wait: "",
) -> socket.socket:
    """Accept the spawned ``process``'s connection on ``listener`` within ``timeout`` s.

    Connections :func:`refusal` rejects are closed (one line on our stderr)
    and the wait goes on.  Returns a blocking socket with TCP_NODELAY.
    Raises :class:`WorkerExited` if the child exits first, and
    :class:`WorkerTimeout` (after killing it) if nothing acceptable connects
    in time; both carry ``stderr_tail(wait)``.
    """
    deadline = time.monotonic() + timeout
    port = listener.getsockname()[1]
    while True:
        returncode = process.poll()
        if returncode is not None:
            raise WorkerExited(returncode, stderr_tail(TAIL_DRAIN), when="before connecting")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reap(process, 0.0)
            text = f"the worker did not connect within {timeout:g} s; it was killed"
            tail = stderr_tail(TAIL_DRAIN).rstrip()
            if tail:
                text += f"; the end of its stderr:\n{tail}"
            raise WorkerTimeout(text, None, timeout)
        listener.settimeout(min(ACCEPT_POLL, remaining))
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        why = refusal(sock)
        if why is not None:
            # Anyone local can read the port from the child's argv and race it here.
            print(f"fakecoord: refused a connection on port {port} {why}", file=sys.stderr)
            sock.close()
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class Launch:
    """A started child and the listener it is to connect to (see :func:`launch`).

    Call :meth:`accept` for a :class:`Spawned` worker, or, for a child that
    must fail before connecting, :meth:`wait_exit` and :meth:`connection_pending`.
    """

    def __init__(
        self,
        process: subprocess.Popen,
        listener: socket.socket,
        capture: StderrCapture,
        argv: list[str],
    ) -> None:
        self.process = process
        self.listener = listener
        self.capture = capture
        self.argv = argv
        self.port: int = listener.getsockname()[1]

    def accept(self, timeout: float = DEFAULT_ACCEPT_TIMEOUT) -> Spawned:
        """Accept the child's connection (:func:`accept_connection`); on any
        failure the child is killed and reaped and everything released."""
        try:
            sock = accept_connection(self.listener, self.process, timeout, self.capture.tail)
        except BaseException:
            self.abort()
            raise
        finally:
            self.listener.close()
        return Spawned(self.process, sock, self.capture, self.argv, self.port)

    def connection_pending(self) -> bool:
        """True when a connection waits on the listener (without accepting it)."""
        self.listener.settimeout(0.0)
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, TimeoutError):
            return False
        sock.close()
        return True

    def wait_exit(self, timeout: float) -> int | None:
        """The child's exit status, or None if it still runs after ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def abort(self) -> None:
        """Kill and reap the child; release the listener and the capture."""
        reap(self.process, 0.0)
        self.listener.close()
        self.capture.close(wait=0.5)


def _fork(
    forkserver: ForkServer,
    argv: list[str],
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike | None,
    capture: StderrCapture,
) -> subprocess.Popen | None:
    """``argv`` (``python -m worker ...``) forked by ``forkserver``; None (with a note
    in the server's log) when it refuses: the caller spawns instead."""
    target = capture.popen_arg
    fd = target if isinstance(target, int) else getattr(target, "fileno", lambda: -1)()
    try:
        if argv[:3] != default_command():
            raise ForkRefused("only 'python -m worker' is forked; other commands are spawned")
        if fd < 0:
            raise ForkRefused(f"stderr target {target!r} has no descriptor to hand over")
        return forkserver.fork(
            argv[3:], env=dict(os.environ) if env is None else env, cwd=cwd, stderr_fd=fd
        )
    except ForkRefused as exc:
        forkserver.note(f"spawning a fresh interpreter instead of forking: {exc}")
        return None


def launch(
    argv_for_port: Callable[[int], Sequence[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    stderr: StderrTarget = None,
    forkserver: ForkServer | None = None,
) -> Launch:
    """Bind the listener, then start ``argv_for_port(port)``.

    ``env`` is the child's whole environment (use :func:`child_environment`);
    stdin and stdout are /dev/null.  With ``forkserver``, a ``python -m
    worker`` command is forked from it instead (same argv, environment, cwd
    and stderr); when it refuses, the command is spawned.  Raises
    :class:`SpawnError` when the stderr target cannot be opened or the
    program cannot be started.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    capture: StderrCapture | None = None
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        argv = list(argv_for_port(listener.getsockname()[1]))
        if not argv:
            raise InvalidParams(
                "spawn: worker_cmd must name a program, got an empty list", "spawn", "worker_cmd"
            )
        try:
            capture = StderrCapture(stderr)
        except OSError as exc:
            raise SpawnError(f"spawn: cannot open stderr target {stderr!r}: {exc}") from exc
        forked = None if forkserver is None else _fork(forkserver, argv, env, cwd, capture)
        try:
            process = forked or subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=capture.popen_arg,
                env=dict(os.environ) if env is None else dict(env),
                cwd=cwd,
            )
        except OSError as exc:
            raise SpawnError(f"spawn: cannot start the worker {argv[0]!r}: {exc}") from exc
    except BaseException:
        listener.close()
        if capture is not None:
            capture.close(wait=0.0)
        raise
    capture.started()
    return Launch(process, listener, capture, argv)


class Spawned:
    """A worker process connected to us: ``process``, ``sock``, ``argv``, ``port``."""

    def __init__(
        self,
        process: subprocess.Popen,
        sock: socket.socket,
        capture: StderrCapture,
        argv: list[str],
        port: int,
    ) -> None:
        self.process = process
        self.sock = sock
        self.capture = capture
        self.argv = argv
        self.port = port

    def stderr_tail(self, wait: float = 0.0) -> str:
        """The end of what the worker wrote on stderr (see :mod:`fakecoord.stderr`)."""
        return self.capture.tail(wait)

    def reap(self, grace: float) -> None:
        """:func:`reap` the process."""
        reap(self.process, grace)

    def close(self, grace: float = 2.0) -> None:
        """Close the socket (a worker exits at EOF), give it ``grace`` s, then
        SIGTERM and SIGKILL; reap it and release the stderr capture.  Idempotent."""
        self.sock.close()
        reap(self.process, grace)
        self.capture.close(grace)


def spawn_worker(
    factory: str,
    config: Any = None,
    *,
    worker_cmd: Sequence[str] | None = None,
    config_text: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    pythonpath: Iterable[str | os.PathLike] = (),
    stderr: StderrTarget = None,
    accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
    forkserver: ForkServer | None = None,
) -> Spawned:
    """Start a worker and accept its connection, as the Rust coordinator does.

    ``worker_cmd`` replaces ``python -m worker`` (the four flags are
    appended, then ``extra_args``); only the default command gets
    :data:`WORKER_ROOT` on its PYTHONPATH.  ``config`` (default ``{}``) is
    JSON-encoded, or ``config_text`` is passed verbatim.  ``env``,
    ``pythonpath``: see :func:`child_environment`.

    Raises :class:`InvalidParams` for a config that is not standard JSON or
    an empty command, :class:`SpawnError` when the command cannot be
    started, :class:`WorkerExited` if the worker exits before connecting
    (with its status and stderr tail), :class:`WorkerTimeout` if it does not
    connect within ``accept_timeout`` s (it is then killed).

    ``forkserver`` (:mod:`fakecoord.forkserver`): fork the default command
    from this warm process instead of spawning it; ``worker_cmd`` is always
    spawned.
    """
    text = config_json(config) if config_text is None else config_text
    command = default_command() if worker_cmd is None else list(worker_cmd)
    started = launch(
        lambda port: worker_argv(command, factory, text, port, extra_args) if command else [],
        env=child_environment(env, pythonpath, worker_root=worker_cmd is None),
        cwd=cwd,
        stderr=stderr,
        forkserver=forkserver if worker_cmd is None else None,
    )
    return started.accept(accept_timeout)


__all__ = [
    "DEFAULT_ACCEPT_TIMEOUT",
    "LOOPBACK",
    "WORKER_ROOT",
    "Launch",
    "Spawned",
    "accept_connection",
    "child_environment",
    "config_json",
    "default_command",
    "kill",
    "launch",
    "peer_uid",
    "reap",
    "refusal",
    "spawn_worker",
    "uid_check_available",
    "worker_argv",
]
