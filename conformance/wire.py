"""Sans-IO framing and strict JSON for the suite's raw connections.

Written independently of ``worker.framing`` on purpose: the framing checks
judge the worker with code that does not share its bugs.  A frame is an
8-byte big-endian length N, then N bytes of UTF-8 JSON (PROTOCOL.md §1).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from .errors import WireError

HEADER = struct.Struct(">Q")
HEADER_SIZE = HEADER.size


def frame(body: bytes) -> bytes:
    """``body`` with its length header (any body, even an invalid one)."""
    return HEADER.pack(len(body)) + body


def encode(message: Any) -> bytes:
    """Encode ``message`` as standard JSON in one frame; ``ValueError`` for NaN/Infinity."""
    body = json.dumps(message, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return frame(body.encode("utf-8"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} overflows a 64-bit float")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)


def decode(body: bytes) -> Any:
    """Decode a frame body as the Rust side would; raises :class:`WireError`.

    Refused: invalid UTF-8, anything but one standard JSON value (NaN,
    Infinity, out-of-range floats), and strings holding lone surrogates.
    """
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"frame body is not UTF-8 ({exc})") from None
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"frame body is not standard JSON ({exc})") from None
    _reject_surrogates(value)
    return value


def _reject_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in item):
                raise WireError(f"string {item[:40]!r} holds a lone UTF-16 surrogate")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class FrameReader:
    """Push bytes in with :meth:`feed`; take complete bodies out with :meth:`next_body`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def in_frame(self) -> bool:
        """True when part of an unfinished frame is buffered."""
        return bool(self._buffer) or self._length is not None

    def next_body(self) -> bytes | None:
        """The next complete body, or None when more bytes are needed."""
        if self._length is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            (self._length,) = HEADER.unpack(self._buffer[:HEADER_SIZE])
            del self._buffer[:HEADER_SIZE]
        if len(self._buffer) < self._length:
            return None
        body = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._length = None
        return body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (out-of-range and repeated offsets ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


__all__ = ["HEADER_SIZE", "FrameReader", "decode", "encode", "frame", "split"]
