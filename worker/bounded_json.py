"""JSON from untrusted files, parsed only when what parsing can allocate is bounded.

``json.loads`` turns every three bytes of ``[{},{},...]`` into a 64-byte
dict and a list slot: about 25 times the text's size (a 63 MiB manifest
took 1.7 GB).  So a text is refused *before* it is parsed unless

- it is at most ``max_bytes`` long (checked by the caller before reading,
  and again here), and
- it holds at most ``max_items`` values by :func:`count_items`, an upper bound
  computed with four C-speed ``bytes.count`` scans.

Parsing a text that passes allocates at most :data:`BYTES_PER_ITEM` per item
plus :data:`BYTES_PER_TEXT_BYTE` per byte of text (the decoded text and the
parsed strings, 4 bytes per character at worst),
``tests/test_bounded_json.py`` measures both on hostile shapes.
"""

from __future__ import annotations

import json
from typing import Any

BYTES_PER_ITEM = 160
"""Most bytes one counted item costs once parsed (an empty dict and its slot: 72)."""
BYTES_PER_TEXT_BYTE = 9
"""Most bytes one byte of text costs while parsed: itself, the decoded text and its strings."""


class JSONRefused(ValueError):
    """The text is over a limit or not valid JSON; the message says which."""


def count_items(data: bytes | bytearray) -> int:
    """An upper bound on the values (keys included) a JSON text holds.

    Every value but the first of an array follows a comma, every key of an
    object follows a brace or a comma and precedes a colon, and every
    container opens with a bracket; bytes inside strings only make the bound
    larger.
    """
    return data.count(b",") + data.count(b":") + data.count(b"[") + data.count(b"{") + 1


def parse_bound(text_bytes: int, items: int) -> int:
    """Most bytes parsing a text of ``text_bytes`` with ``items`` items allocates."""
    return BYTES_PER_TEXT_BYTE * text_bytes + BYTES_PER_ITEM * items


def loads(data: bytes | bytearray, *, max_bytes: int, max_items: int) -> Any:
    """Parse ``data`` (UTF-8 JSON, read as ``json.loads`` reads it) within the limits;
    raises :class:`JSONRefused` before parsing when a limit is exceeded, and
    for text that is not UTF-8 JSON."""
    if len(data) > max_bytes:
        raise JSONRefused(f"is {len(data)} bytes, over the limit of {max_bytes}")
    items = count_items(data)
    if items > max_items:
        raise JSONRefused(
            f"holds up to {items} JSON values, over the limit of {max_items} "
            "(refused before parsing)"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JSONRefused(f"is not valid UTF-8 JSON ({exc})") from None
