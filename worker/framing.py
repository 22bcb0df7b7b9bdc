"""Sans-IO framing: an 8-byte big-endian length, then that many bytes of JSON.

Pure functions and a push-style decoder; no sockets here (see ``server.py``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from .errors import FrameError, FrameTooLarge

HEADER = struct.Struct(">Q")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_frame(message: object) -> bytes:
    """Encode ``message`` as one frame (header and body in one buffer, so a
    single ``sendall`` sends it).  Raises ``ValueError`` for NaN/Infinity and
    ``TypeError`` for values JSON cannot carry."""
    body = _encoder.encode(message).encode("utf-8")
    return HEADER.pack(len(body)) + body


def decode_header(header: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> int:
    """Return the body length announced by an 8-byte header.

    Raises :class:`FrameTooLarge` above ``max_frame_bytes``.  A length of 0 is
    returned as is: the caller answers it as an empty (invalid) request.
    """
    if len(header) != HEADER_SIZE:
        raise FrameError(f"frame header must be {HEADER_SIZE} bytes, got {len(header)}")
    (length,) = HEADER.unpack(header)
    if length > max_frame_bytes:
        raise FrameTooLarge(length, max_frame_bytes)
    return length


@dataclass(frozen=True)
class Frame:
    """One complete frame body (undecoded bytes)."""

    body: bytes


class FrameDecoder:
    """Push bytes in with :meth:`feed`, take complete frames out with :meth:`next_frame`.

    ``pending_length`` tells an I/O layer how many body bytes the frame in
    progress still needs, so it can read large bodies straight into place.
    A header above the limit raises :class:`FrameTooLarge` before any of the
    body is buffered.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def in_frame(self) -> bool:
        """True when some bytes of an unfinished frame are buffered."""
        return bool(self._buffer) or self._length is not None

    @property
    def pending_length(self) -> int | None:
        """Body bytes still missing for the current frame, or None between headers."""
        if self._length is None:
            return None
        return self._length - len(self._buffer)

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed."""
        if self._length is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            self._length = decode_header(bytes(self._buffer[:HEADER_SIZE]), self.max_frame_bytes)
            del self._buffer[:HEADER_SIZE]
        if len(self._buffer) < self._length:
            return None
        body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._length = None
        return Frame(body)


def decode_frames(data: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[bytes]:
    """Decode a byte string holding only whole frames into their bodies.

    Raises :class:`FrameError` if ``data`` ends inside a frame.
    """
    decoder = FrameDecoder(max_frame_bytes)
    decoder.feed(data)
    bodies = []
    while (frame := decoder.next_frame()) is not None:
        bodies.append(frame.body)
    if decoder.in_frame:
        raise FrameError("data ends inside a frame")
    return bodies
