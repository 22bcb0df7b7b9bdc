"""The coordinator side's wire format: frames, requests, and JSON as serde_json reads it.

Pure functions over bytes; the sockets live in :mod:`fakecoord.transport`
and :mod:`conformance.rawworker`.

**Frames** (docs/protocol.md §1): an 8-byte unsigned big-endian length N, then N
bytes of UTF-8 JSON.  :func:`encode_frame` / :func:`encode_request` build
them (compact standard JSON, one buffer for one ``sendall``),
:func:`decode_header` reads a header, :class:`FrameReader` is a push-style
reader for code that receives arbitrary chunks.

**JSON.**  The Rust coordinator reads every response with serde_json
(``from_slice``, default features, see ``crates/burn_p2p_python/src/worker.rs``).
:func:`parse_json` reads a document at serde_json's *syntax* level and keeps
what typed decoding needs to be faithful:

- objects are :class:`JsonObject` (a ``dict``): for a key given more than once
  the last value wins, as in serde_json's ``Value`` and in serde's
  ``BTreeMap``/``HashMap`` impls, and ``duplicates`` names such keys, which a
  derived struct refuses (``duplicate field``) and :mod:`fakecoord.schema` checks;
- integer literals are ``int`` within ``-2**63..=2**64-1`` (serde_json's
  ``u64``/``i64``); beyond that they are floats (:class:`BigInteger`, a
  ``float`` that remembers it was written as an integer), and ``-0`` is the
  float ``-0.0``, exactly as serde_json's parser classifies numbers;
- a number beyond the f64 range (``1e400``, a 400-digit integer) becomes a
  :class:`NumberOutOfRange` marker instead of raising: serde_json refuses it
  where it parses the number and skips it where it ignores the field;
- strings keep lone surrogate escapes (``"\\ud800"``) as Python lone
  surrogates, for the same reason: serde_json refuses them in every string
  it parses and accepts them in ignored fields.

:func:`validate_value` then applies the rules of ``serde_json::Value``
(what the coordinator parses ``result`` into): no lone surrogates, numbers in
range, at most 127 nested arrays/objects.  :func:`decode_value` is the two
together: ``serde_json::from_slice::<Value>``.  Refused everywhere, as by
serde_json: invalid UTF-8, anything but one JSON value (trailing data), NaN
and Infinity (their path is named), control characters in strings, bad escapes.

Deliberate differences, all stricter and only in fields serde ignores:
invalid UTF-8 is refused anywhere in the frame (serde_json's ``from_slice``
validates only the strings it parses), and nesting beyond Python's
recursion limit (about 1000 levels) is refused even in an ignored field
(serde_json's ``ignore_value`` has no depth limit).  Floats are read with
correct rounding (serde_json without ``float_roundtrip`` may be 1 ulp off).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

from .errors import DecodeError

HEADER = struct.Struct(">Q")
HEADER_SIZE = HEADER.size
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
MAX_DEPTH = 127
"""Nested arrays/objects serde_json parses: it refuses the 128th (``RecursionLimitExceeded``)."""

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------------------
# Frames


def encode_body(message: Any) -> bytes:
    """``message`` as compact standard JSON in UTF-8.

    Raises ``ValueError`` for NaN/Infinity, ``TypeError`` for values JSON
    cannot carry, ``RecursionError`` for absurd nesting.
    """
    return _ENCODER.encode(message).encode("utf-8")


def frame(body: bytes | bytearray) -> bytes:
    """``body`` with its length header (any body, even an invalid one)."""
    return HEADER.pack(len(body)) + bytes(body)


def encode_frame(message: Any) -> bytes:
    """One frame holding ``message`` (header and body in one buffer); raises as :func:`encode_body`."""
    return frame(encode_body(message))


def encode_request(request_id: int, method: str, params: Any) -> bytes:
    """The frame of request ``{"id", "method", "params"}``; raises as :func:`encode_body`."""
    return encode_frame({"id": request_id, "method": method, "params": params})


def decode_header(header: bytes | bytearray, max_frame_bytes: int = U64_MAX) -> int:
    """The body length an 8-byte header announces.

    Raises :class:`DecodeError` (field ``response``) for a length of 0 (the
    Rust coordinator treats an empty frame as an error) or one above
    ``max_frame_bytes``, and ``ValueError`` for a header that is not 8 bytes.
    """
    if len(header) != HEADER_SIZE:
        raise ValueError(f"a frame header is {HEADER_SIZE} bytes, got {len(header)}")
    (length,) = HEADER.unpack(header)
    if length == 0:
        raise DecodeError("response", "a JSON object", got_text="a frame of length 0")
    if length > max_frame_bytes:
        raise DecodeError(
            "response",
            f"a frame of at most {max_frame_bytes} bytes (max_frame_bytes)",
            got_text=f"a header announcing {length} bytes, above the client's limit",
        )
    return length


class FrameReader:
    """Push bytes in with :meth:`feed`; take complete bodies out with :meth:`next_body`.

    Refuses nothing: an empty or huge frame is the caller's to judge
    (:attr:`announced` tells the length of the frame in progress).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    @property
    def in_frame(self) -> bool:
        """True when part of an unfinished frame is buffered."""
        return bool(self._buffer) or self._length is not None

    @property
    def announced(self) -> int | None:
        """The body length of the frame in progress, once its header is in."""
        if self._length is None and len(self._buffer) >= HEADER_SIZE:
            (self._length,) = HEADER.unpack(self._buffer[:HEADER_SIZE])
            del self._buffer[:HEADER_SIZE]
        return self._length

    def next_body(self) -> bytes | None:
        """The next complete body, or None when more bytes are needed."""
        length = self.announced
        if length is None or len(self._buffer) < length:
            return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._length = None
        return body

    def bodies(self) -> Iterator[bytes]:
        """Every complete body buffered so far."""
        while (body := self.next_body()) is not None:
            yield body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (out-of-range and repeated offsets ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# ---------------------------------------------------------------------------
# JSON at serde_json's syntax level


class JsonObject(dict):
    """A JSON object; ``duplicates`` holds the keys that appeared more than once
    (their value is the last one, as in ``serde_json::Value``)."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: Any = (), duplicates: frozenset[str] = frozenset()) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


class BigInteger(float):
    """An integer literal outside ``-2**63..=2**64-1``: serde_json reads it as an f64.

    ``repr`` shows the literal as written.
    """

    json_kind = "integer beyond 64 bits, read as a float"
    text: str

    def __new__(cls, text: str) -> BigInteger:
        value = super().__new__(cls, float(text))
        value.text = text
        return value

    def __repr__(self) -> str:
        return (
            self.text if len(self.text) <= 40 else f"{self.text[:20]}...({len(self.text)} digits)"
        )


class NumberOutOfRange:
    """A number literal beyond the f64 range (serde_json: "number out of range")."""

    __slots__ = ("text",)
    json_kind = "number out of f64 range"

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return (
            self.text if len(self.text) <= 40 else f"{self.text[:20]}...({len(self.text)} digits)"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberOutOfRange) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class _NonStandard:
    """NaN / Infinity / -Infinity while a document is read (always refused)."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


def _object(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        obj.duplicates = frozenset(key for key, n in counts.items() if n > 1)
    return obj


def _integer(text: str) -> Any:
    if len(text) <= 20:  # 2**64-1 has 20 digits: anything longer is out of range
        value = int(text)
        if I64_MIN <= value <= U64_MAX:
            return -0.0 if value == 0 and text.startswith("-") else value
    # float() of a string never raises OverflowError; it gives inf.
    return BigInteger(text) if math.isfinite(float(text)) else NumberOutOfRange(text)


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else NumberOutOfRange(text)


def _decoder(flags: list[str]) -> json.JSONDecoder:
    def constant(token: str) -> _NonStandard:
        flags.append(token)
        return _NonStandard(token)

    return json.JSONDecoder(
        object_pairs_hook=_object, parse_int=_integer, parse_float=_float, parse_constant=constant
    )


def join(path: str, key: str) -> str:
    """The dotted path of ``key`` under ``path`` (``""`` is the document itself)."""
    return f"{path}.{key}" if path else key


def parse_json(body: bytes | bytearray | memoryview, path: str = "") -> Any:
    """One JSON document at serde_json's syntax level (see the module docstring).

    Raises :class:`DecodeError` for invalid UTF-8 or syntax (field ``path``),
    and for NaN/Infinity with the dotted path of the first one.
    """
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            path, "UTF-8 JSON", got_text=f"bytes that are not UTF-8 ({exc})"
        ) from None
    flags: list[str] = []
    try:
        value = _decoder(flags).decode(text)
    except RecursionError:
        raise DecodeError(
            path, "standard JSON", got_text="a document nested too deeply to read"
        ) from None
    except ValueError as exc:
        raise DecodeError(
            path, "standard JSON", got_text=f"{text[:60]!r}, which is not standard JSON ({exc})"
        ) from None
    if flags:
        where, token = _locate_nonstandard(value, path)
        raise DecodeError(
            where,
            "standard JSON",
            got_text=f"{token} (the Rust decoder rejects NaN, Infinity and numbers out of "
            "float64 range)",
        )
    return value


def _locate_nonstandard(value: Any, path: str) -> tuple[str, str]:
    """The path and token of the first NaN/Infinity in document order."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, _NonStandard):
            return where, node.token
        if isinstance(node, dict):
            stack.extend((join(where, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    raise AssertionError("a NaN/Infinity token was read but is not in the document")


def has_lone_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone UTF-16 surrogate (from a ``\\uD800``-style escape)."""
    return _LONE_SURROGATE.search(text) is not None


def may_hold_escapes(body: bytes | bytearray | memoryview) -> bool:
    """False when ``body`` has no ``\\u`` escape, so no string in it can hold a surrogate."""
    return b"\\u" in body


# ---------------------------------------------------------------------------
# serde_json::Value


def check_string(value: str, path: str) -> str:
    """Refuse a string serde_json cannot hold (a lone surrogate escape)."""
    if _LONE_SURROGATE.search(value):
        raise DecodeError(
            path,
            "a string of Unicode scalar values",
            value,
            got_text=f"{value[:60]!r}, which holds a lone UTF-16 surrogate escape "
            "(serde_json: lone leading surrogate in hex escape)",
        )
    return value


def number_error(value: Any, path: str, expected: str) -> DecodeError:
    """The refusal of a number ``Value`` cannot hold, or of a non-JSON Python value."""
    if isinstance(value, NumberOutOfRange):
        return DecodeError(path, expected, value, got_text=f"{value!r} (number out of range)")
    if isinstance(value, float) and not math.isfinite(value):
        return DecodeError(path, "a finite number (JSON has no NaN/Infinity)", value)
    return DecodeError(path, expected, value)


def f64_of(value: Any) -> float | None:
    """``value`` as serde_json's f64, or None when it has no finite f64 value.

    Accepts what serde reads as a number (ints of any size, finite floats);
    never raises OverflowError.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def validate_value(
    value: Any,
    path: str = "",
    *,
    depth: int = 0,
    max_depth: int | None = MAX_DEPTH,
    strings: bool = True,
) -> Any:
    """Refuse what ``serde_json::Value`` cannot hold; return ``value`` unchanged.

    ``depth`` is the number of arrays/objects enclosing ``value`` in its
    document (serde_json counts from the document root); ``max_depth=None``
    drops the nesting limit (for values that were never bytes);
    ``strings=False`` skips the lone-surrogate check (see
    :func:`may_hold_escapes`).  Also refuses Python values JSON has no form
    for (sets, tuples, non-string keys).  Raises :class:`DecodeError` naming
    the dotted path.
    """
    stack: list[tuple[str, Any, int]] = [(path, value, depth)]
    while stack:
        where, node, level = stack.pop()
        if node is None or isinstance(node, (bool, str)):
            if strings and isinstance(node, str):
                check_string(node, where)
            continue
        if isinstance(node, (int, float)):
            if f64_of(node) is None:
                raise number_error(node, where, "a number within the f64 range")
            continue
        if isinstance(node, (dict, list)):
            level += 1
            if max_depth is not None and level > max_depth:
                raise DecodeError(
                    where,
                    f"at most {max_depth} nested arrays/objects",
                    got_text="deeper nesting (serde_json: recursion limit exceeded)",
                )
            if isinstance(node, list):
                stack.extend((f"{where}[{i}]", v, level) for i, v in enumerate(node))
                continue
            for key, item in node.items():
                if not isinstance(key, str):
                    raise DecodeError(where, "an object with string keys", got_text=repr(key))
                if strings:
                    check_string(key, where)
                stack.append((join(where, key), item, level))
            continue
        raise number_error(node, where, "a JSON value")
    return value


def decode_value(body: bytes | bytearray | memoryview, path: str = "") -> Any:
    """``serde_json::from_slice::<Value>``: one document, every part of it checked.

    Raises :class:`DecodeError` naming the dotted path of what is refused.
    """
    return validate_value(parse_json(body, path), path)


__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAX_DEPTH",
    "BigInteger",
    "FrameReader",
    "JsonObject",
    "NumberOutOfRange",
    "check_string",
    "decode_header",
    "decode_value",
    "encode_body",
    "encode_frame",
    "encode_request",
    "f64_of",
    "frame",
    "has_lone_surrogate",
    "join",
    "may_hold_escapes",
    "parse_json",
    "split",
    "validate_value",
]
