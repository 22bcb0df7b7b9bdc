"""A fork server for the suite's own tests.

Every subject is a fresh worker process, and importing torch costs ~2 s of
CPU per process: on a shared 2-core machine, dozens of subjects would take
minutes.  ``--zygote-serve PATH`` imports torch, the worker and the example
workload once and forks one process per request; ``--via-zygote PATH ARGS``
is the worker command (or the layout probe's): it hands its stdio to the
zygote, which forks a child running ``main(ARGS)`` on them, and relays the
child's exit status (and the signals it receives).  The child is the real
worker (or probe) code in its own process on its own socket; only the
imports are shared.  Every loop is bounded.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NoReturn

ZYGOTE_LIFETIME = 900.0
"""Seconds the fork server lives at most; it also stops when its parent (the test run) dies."""


def zygote_serve(path: str) -> int:
    import importlib
    import socket

    # torch._dynamo: the first optimizer step imports it (~1 s); importing starts no thread.
    preload = (
        "torch",
        "torch._dynamo",
        "worker.__main__",
        "worker.server",
        "conformance.example_workload",
        "conformance.probe",
        "tests.broken",
        "tests.broken.__main__",
    )
    for name in preload:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the path appears once the zygote is ready
    listener.listen(64)
    zygote = os.getpid()
    try:
        _zygote_loop(listener, os.getppid(), time.monotonic() + ZYGOTE_LIFETIME)
    finally:
        if os.getpid() == zygote:  # a forked worker leaves through here too
            listener.close()
            os.unlink(path)
    return 0


def _zygote_loop(listener: Any, parent: int, deadline: float) -> None:
    import select
    import signal
    import socket

    children: dict[Any, int] = {}
    while time.monotonic() < deadline and os.getppid() == parent:
        readable, _, _ = select.select([listener, *children], [], [], 0.05)
        for sock in readable:
            if sock is listener:
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
                pid = os.fork()
                if pid == 0:
                    _zygote_child(json.loads(message), fds, [listener, conn, *children])
                for fd in fds:
                    os.close(fd)
                children[conn] = pid
            else:
                data = sock.recv(64)
                signals = [int(n) for n in data.split()] if data else [signal.SIGKILL]
                for signum in signals:
                    try:
                        os.kill(children[sock], signum)
                    except ProcessLookupError:
                        pass
                if not data:  # the client is gone: so is its worker
                    sock.close()
                    del children[sock]
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            for conn, child in list(children.items()):
                if child == pid:
                    try:
                        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                    except OSError:
                        pass
                    conn.close()
                    del children[conn]
    for pid in children.values():  # the run is over: no orphaned workers
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _zygote_child(argv: list[str], fds: list[int], inherited: list[Any]) -> NoReturn:
    """In the forked child: take over the client's stdio and run the worker.

    Ends by raising SystemExit through the zygote's frames, so the child exits
    the way a fresh interpreter does (atexit handlers run, non-daemon threads
    are waited for), not through os._exit.
    """
    import signal
    import traceback

    for sock in inherited:
        sock.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        from tests.broken.__main__ import main

        code = main(argv)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        code = 1
    raise SystemExit(code)


def via_zygote(path: str, argv: list[str]) -> int:
    import signal
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    socket.send_fds(conn, [json.dumps(argv).encode()], [0, 1, 2])

    def forward(signum: int, _frame: Any) -> None:
        conn.sendall(f"{signum}\n".encode())

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(64)
        if not chunk:
            return 1
        data += chunk
    code = int(data.split(b"\n")[0])
    if code < 0:  # killed by a signal: die the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code
