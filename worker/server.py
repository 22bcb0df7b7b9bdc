"""The socket shell: connect out, move bytes between the socket and the
:class:`~worker.connection.Connection`, handle signals, drain, exit.

Every decision (what to answer, when to stop, with which exit code and log
line) is the connection's; this module only does the I/O it asks for.
Exit codes: 0 after ``shutdown``, at EOF on a frame boundary, or on
SIGTERM/SIGINT; 1 when the connection breaks inside a frame, a frame is
over the limit, or the coordinator cannot be reached.
"""

from __future__ import annotations

import gc
import socket
import sys
import time

from . import stopping
from .connection import Close, Connection, NeedData, Reply
from .errors import WorkerStop
from .framing import DEFAULT_MAX_FRAME_BYTES, READ_SIZE
from .service import Worker

CONNECT_TIMEOUT = 10.0
DRAIN_SECONDS = 2.0


def log(message: str) -> None:
    """One line on stderr (the coordinator inherits it; stdout is /dev/null)."""
    print(f"burn-p2p worker: {message}", file=sys.stderr, flush=True)


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """Connect to the coordinator; raises ``OSError``."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    # One frame is one sendall, so Nagle would only add a delayed-ACK stall.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def serve(
    sock: socket.socket, worker: Worker, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> int:
    """Serve requests on ``sock`` until the connection decides to close; return
    its exit code.  Leaves closing ``sock`` to the caller."""
    connection = Connection(max_frame_bytes)
    try:
        close = _exchange(sock, worker, connection)
    except WorkerStop as stop:
        close = connection.stopped(str(stop))
    except OSError as exc:
        close = connection.receive_failed(exc)
    if close.log:
        log(close.log)
    if close.reply:
        try:
            sock.sendall(close.reply)
        except OSError:
            return close.exit_code
        if close.drain:
            _drain(sock)
    return close.exit_code


def _exchange(sock: socket.socket, worker: Worker, connection: Connection) -> Close:
    while True:
        stopping.raise_if_requested()  # a stop that a hook swallowed ends the session here
        event = connection.next_event()
        if isinstance(event, NeedData):
            connection.received(sock.recv_into(connection.receive_buffer()))
            continue
        if isinstance(event, Close):
            return event
        if isinstance(event, Reply):
            data = event.data
        else:
            data = connection.send_answer(worker.handle(event))
        try:
            sock.sendall(data)
        except OSError as exc:
            return connection.send_failed(exc)


def _drain(sock: socket.socket, seconds: float = DRAIN_SECONDS) -> None:
    """Half-close, then discard (never buffer) what the peer still sends for a
    while, so the kernel does not answer the unread bytes with a reset that
    would destroy our error answer before the peer reads it."""
    deadline = time.monotonic() + seconds
    scratch = bytearray(READ_SIZE)
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv_into(scratch):
                break
    except OSError:
        pass


def run(
    workload: object, host: str, port: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> int:
    """Connect to the coordinator and serve ``workload``; returns the exit code
    (0 for a stop signal at any point, connecting included)."""
    try:
        worker = Worker(workload)
        # Everything alive now (torch, the workload's imports) is long-lived:
        # keep it out of every future collection so big requests decode without
        # full-heap GC pauses.
        gc.collect(1)  # a full pass over a torch-sized heap costs ~75 ms and finds next to nothing
        gc.freeze()
        try:
            sock = connect(host, port)
        except OSError as exc:
            log(f"cannot connect to the coordinator at {host}:{port}: {exc}")
            return 1
    except WorkerStop as stop:
        log(f"received {stop} before the connection was made; exiting")
        return 0
    with sock:
        return serve(sock, worker, max_frame_bytes)
