"""worker.bounded_json: untrusted JSON is parsed only when its cost is bounded
(issue #9 item 2), and the stated per-item and per-byte costs hold."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import bounded_json
from worker.bounded_json import BYTES_PER_ITEM, BYTES_PER_TEXT_BYTE, JSONRefused, count_items


def values_in(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(values_in(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + values_in(v) for v in value.values())
    return 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
)


@given(JSON, st.sampled_from([None, 2]))
def test_count_items_bounds_the_values_of_any_text(value, indent):
    text = json.dumps(value, indent=indent).encode()
    assert count_items(text) >= values_in(value)


HOSTILE = {
    "empty-dicts": b"[" + b"{}," * 200_000 + b"{}]",
    "empty-lists": b"[" + b"[]," * 200_000 + b"[]]",
    "one-key-dicts": b"[" + b'{"a":0},' * 100_000 + b"{}]",
    "unique-keys": b"{" + b"".join(b'"k%d":{},' % i for i in range(100_000)) + b'"z":1}',
    "short-strings": b"[" + b'"ab",' * 200_000 + b'"ab"]',
    "floats": b"[" + b"1.5," * 200_000 + b"1.5]",
    "big-ints": b"[" + b"123456789012345678901234567890," * 20_000 + b"1]",
    "one-long-string": b'["' + b"x" * (4 << 20) + b'"]',
    "astral-string": b'["' + "\U0001f600".encode() + b"x" * (4 << 20) + b'"]',
    "nested": b"[" * 900 + b"]" * 900,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_parsing_allocates_within_the_stated_bound(name):
    data = HOSTILE[name]
    items = count_items(data)
    tracemalloc.start()
    try:
        value = bounded_json.loads(data, max_bytes=len(data), max_items=items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value is not None
    assert peak <= BYTES_PER_TEXT_BYTE * len(data) + BYTES_PER_ITEM * items, (peak, items)


def test_over_a_limit_is_refused_before_parsing():
    data = HOSTILE["empty-dicts"]
    tracemalloc.start()
    try:
        with pytest.raises(JSONRefused, match="over the limit of 1000"):
            bounded_json.loads(data, max_bytes=len(data), max_items=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    with pytest.raises(JSONRefused, match=f"is {len(data)} bytes, over the limit of 10"):
        bounded_json.loads(data, max_bytes=10, max_items=10**9)
    with pytest.raises(JSONRefused, match="not valid UTF-8 JSON"):
        bounded_json.loads(b"\xff", max_bytes=10, max_items=10)
