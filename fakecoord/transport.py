"""Frames over a connected socket, each wait bounded by a deadline.

The thin I/O layer under :class:`~fakecoord.client.WorkerClient`: the frame
format and its checks are :mod:`fakecoord.wire`'s; what a timeout or a lost
connection means for the worker process is the client's business.  These
functions raise builtin ``TimeoutError`` / ``ConnectionError`` whose message
says where the stream was (``"before a response (0 of 8 bytes received)"``).
"""

from __future__ import annotations

import socket
import time

from . import wire


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), at least 1 ms."""
    return max(deadline - time.monotonic(), 1e-3)


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send ``data`` in one ``sendall``; raises ``TimeoutError`` / ``ConnectionError``."""
    sock.settimeout(remaining(deadline))
    try:
        sock.sendall(data)
    except TimeoutError:
        raise TimeoutError("while sending the request") from None
    except OSError as exc:
        raise ConnectionError(f"while the request was sent ({exc})") from None


def receive_exact(sock: socket.socket, size: int, deadline: float, where: str) -> bytearray:
    """Exactly ``size`` bytes, read into one preallocated buffer.

    Raises ``TimeoutError`` past ``deadline`` and ``ConnectionError`` at EOF
    or on a socket error, both naming ``where`` and how much arrived.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    filled = 0
    while filled < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{where} ({filled} of {size} bytes received)")
        sock.settimeout(left)
        try:
            got = sock.recv_into(view[filled:])
        except TimeoutError:
            raise TimeoutError(f"{where} ({filled} of {size} bytes received)") from None
        except OSError as exc:
            raise ConnectionError(f"{where} ({exc})") from None
        if not got:
            raise ConnectionError(f"{where} ({filled} of {size} bytes received)")
        filled += got
    return buf


def receive_frame(sock: socket.socket, deadline: float, max_frame_bytes: int) -> bytearray:
    """The next frame's body.

    Raises :class:`~fakecoord.errors.DecodeError` for an empty frame or one
    announcing more than ``max_frame_bytes`` (before anything is allocated),
    and ``TimeoutError`` / ``ConnectionError`` as :func:`receive_exact`.
    """
    header = receive_exact(sock, wire.HEADER_SIZE, deadline, "before a response")
    length = wire.decode_header(header, max_frame_bytes)
    return receive_exact(sock, length, deadline, f"inside a {length}-byte frame")


__all__ = ["receive_exact", "receive_frame", "remaining", "send_all"]
