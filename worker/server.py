"""The thin socket layer: connect out, read frames, answer them, exit.

Exit codes: 0 after ``shutdown``, at EOF on a frame boundary, or on
SIGTERM/SIGINT; 1 when the connection breaks inside a frame, a frame is
over the limit, or the coordinator cannot be reached.
"""

from __future__ import annotations

import gc
import signal
import socket
import sys
import time
from typing import Any

from .errors import FrameTooLarge
from .framing import DEFAULT_MAX_FRAME_BYTES, HEADER_SIZE, decode_header, encode_frame
from .protocol import NO_ID, error_response
from .service import Worker, WorkerStop

READ_BUFFER = 1 << 16


def log(message: str) -> None:
    """One line on stderr (the coordinator inherits it; stdout is /dev/null)."""
    print(f"burn-p2p worker: {message}", file=sys.stderr, flush=True)


def _raise_stop(signum: int, _frame: Any) -> None:
    # One stop is enough: a second Ctrl-C must not interrupt the cleanup
    # (temporary files being removed) that the first one started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise WorkerStop(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stop)


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    # One frame is one sendall, so Nagle would only add a delayed-ACK stall.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_exact(stream: Any, size: int) -> bytes | None:
    """Read exactly ``size`` bytes, or return what came before EOF (shorter)."""
    if size <= READ_BUFFER:
        return stream.read(size)
    buf = bytearray(size)
    view = memoryview(buf)
    filled = 0
    while filled < size:
        got = stream.readinto(view[filled:])
        if not got:
            return bytes(view[:filled])
        filled += got
    return buf


def serve(
    sock: socket.socket, worker: Worker, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> int:
    """Serve requests on ``sock`` until EOF, ``shutdown`` or a signal; return the exit code."""
    stream = sock.makefile("rb", buffering=READ_BUFFER)
    request_count = 0
    try:
        while True:
            header = stream.read(HEADER_SIZE)
            if not header:
                log(
                    f"the coordinator closed the connection after {request_count} requests; exiting"
                )
                return 0
            if len(header) < HEADER_SIZE:
                log(f"connection closed inside a frame header ({len(header)} of 8 bytes); exiting")
                return 1
            try:
                length = decode_header(header, max_frame_bytes)
            except FrameTooLarge as exc:
                log(str(exc))
                if _send(sock, encode_frame(error_response(NO_ID, f"request: {exc}"))):
                    _drain_and_close(sock)
                return 1
            body = _read_exact(stream, length)
            if len(body) < length:
                log(
                    f"connection closed inside a frame ({len(body)} of {length} body bytes); exiting"
                )
                return 1
            request_count += 1
            if not _send(sock, worker.respond(body)):
                return 1
            if worker.shutdown_requested:
                return 0
    except WorkerStop as stop:
        log(f"received {stop}; stopped after {request_count} requests")
        return 0
    except OSError as exc:
        log(f"connection to the coordinator failed: {exc}")
        return 1
    finally:
        stream.close()


def _send(sock: socket.socket, frame: bytes) -> bool:
    try:
        sock.sendall(frame)
        return True
    except OSError as exc:
        log(f"coordinator went away while the worker was answering ({exc}); exiting")
        return False


def _drain_and_close(sock: socket.socket, seconds: float = 2.0) -> None:
    """Half-close, then discard (never buffer) what the peer still sends for a
    while, so the kernel does not answer the unread bytes with a reset that
    would destroy our error answer before the peer reads it."""
    deadline = time.monotonic() + seconds
    scratch = bytearray(READ_BUFFER)
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv_into(scratch):
                break
    except OSError:
        pass


def run(workload: Any, host: str, port: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> int:
    """Connect to the coordinator and serve ``workload``; returns the exit code."""
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
    with sock:
        return serve(sock, worker, max_frame_bytes)
