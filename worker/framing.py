"""Sans-IO framing: an 8-byte big-endian length, then that many bytes of JSON.

:func:`encode_frame` builds one outgoing frame; :class:`FrameDecoder`
reassembles incoming ones from whatever pieces the transport delivers.  No
sockets here (see ``server.py``), no request semantics (see ``connection.py``).
"""

from __future__ import annotations

import json
import struct

from .errors import FrameTooLarge

HEADER = struct.Struct(">Q")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024
READ_SIZE = 1 << 16
"""Frames up to this size (header included) are assembled in one reusable buffer."""
BODY_PREALLOCATION = 16 << 20
"""Most bytes a larger body's buffer gets before they arrive; it grows as they do."""

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_frame(message: object) -> bytes:
    """Encode ``message`` as one frame (header and body in one buffer, so a
    single ``sendall`` sends it).  Raises ``ValueError`` for NaN/Infinity and
    ``TypeError`` for values JSON cannot carry."""
    body = _encoder.encode(message).encode("utf-8")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incoming frames, reassembled: put bytes in, take complete bodies out.

    Two ways in: :meth:`feed` copies any amount of bytes; or, without a copy,
    receive straight into :meth:`buffer` and report the count with
    :meth:`filled` (a transport calls ``buffer`` only after :meth:`next_frame`
    returned None).  Small frames share one reusable buffer; a body larger
    than that is received into its own buffer, allocated as its bytes arrive
    (at most :data:`BODY_PREALLOCATION` ahead of them), never in one piece on
    the word of its header.  A header above ``max_frame_bytes`` raises
    :class:`~worker.errors.FrameTooLarge` from :meth:`next_frame`, before any
    of its body is buffered.
    """

    def __init__(
        self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, read_size: int = READ_SIZE
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._small = bytearray(max(read_size, HEADER_SIZE))
        self._small_view = memoryview(self._small)  # _small never changes size
        self._start = 0  # first unconsumed byte in _small
        self._end = 0  # end of the received bytes in _small
        self._length: int | None = None  # body length of the frame in progress
        self._body: bytearray | None = None  # a large body, filled in place
        self._filled = 0  # bytes of _body received
        self._backlog = bytearray()  # fed bytes that did not fit yet

    # -- input -------------------------------------------------------------

    def buffer(self) -> memoryview:
        """Writable space for the next received bytes (never empty)."""
        body = self._body
        if body is not None:
            if self._filled == len(body):
                assert self._length is not None
                body.extend(bytes(min(self._length, 2 * len(body)) - len(body)))
            return memoryview(body)[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._small):
            self._compact()
        return self._small_view[self._end :]

    def filled(self, count: int) -> None:
        """``count`` bytes were written at the start of the last :meth:`buffer`."""
        if self._body is not None:
            self._filled += count
        else:
            self._end += count

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (copied); :meth:`next_frame` takes it in as room allows."""
        self._backlog += data

    # -- output ------------------------------------------------------------

    def next_frame(self) -> bytes | bytearray | None:
        """The next complete frame body, or None if more bytes are needed.

        Raises :class:`~worker.errors.FrameTooLarge` for a header over the limit
        (the decoder is then unusable).
        """
        body = self._next_frame()
        while body is None and self._backlog:
            view = self.buffer()
            count = min(len(view), len(self._backlog))
            view[:count] = self._backlog[:count]
            del view
            del self._backlog[:count]
            self.filled(count)
            body = self._next_frame()
        return body

    def _next_frame(self) -> bytes | bytearray | None:
        if self._body is not None:
            if self._filled < len(self._body) or len(self._body) < (self._length or 0):
                return None  # (filled <= len(body) <= length: complete only when all equal)
            body, self._body, self._length = self._body, None, None
            return body
        if self._length is None:
            if self._end - self._start < HEADER_SIZE:
                return None
            (length,) = HEADER.unpack_from(self._small, self._start)
            if length > self.max_frame_bytes:
                raise FrameTooLarge(length, self.max_frame_bytes)
            self._start += HEADER_SIZE
            self._length = length
        length = self._length
        available = self._end - self._start
        if available >= length:
            frame = self._small[self._start : self._start + length]  # one copy
            self._start += length
            self._length = None
            return frame
        if length > len(self._small):
            # Too large for the shared buffer: give the body its own, seeded with
            # what has arrived, so the rest is received straight into place.
            body = bytearray(min(length, max(available, BODY_PREALLOCATION)))
            body[:available] = self._small_view[self._start : self._end]
            self._body, self._filled = body, available
            self._start = self._end = 0
        elif self._start + length > len(self._small):
            self._compact()
        return None

    def _compact(self) -> None:
        unread = self._end - self._start
        self._small[:unread] = self._small[self._start : self._end]
        self._start, self._end = 0, unread

    # -- state -------------------------------------------------------------

    @property
    def in_frame(self) -> bool:
        """True when some bytes of an unfinished frame have arrived."""
        return self._length is not None or self._end > self._start or bool(self._backlog)

    @property
    def pending_length(self) -> int | None:
        """Body bytes still missing for the current frame, or None between headers."""
        if self._length is None:
            return None
        if self._body is not None:
            return self._length - self._filled
        return self._length - (self._end - self._start) - len(self._backlog)

    def progress(self) -> tuple[int, int | None]:
        """(bytes of the unfinished frame received so far, its announced body length):
        header bytes while the length is unknown (None), body bytes after."""
        if self._length is None:
            return self._end - self._start + len(self._backlog), None
        return self._length - (self.pending_length or 0), self._length
