"""Edge values shared by the targets: raw JSON fragments, hostile text, huge numbers,
and JSON that is cheap to send and costly to parse.

``Raw`` fragments are spliced verbatim into a request, manifest or header by
:func:`dumps_raw`, so inputs can hold what ``json.dumps`` would never write:
NaN, 400-digit integers, nesting past the recursion limit, lone surrogates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Raw:
    """A JSON fragment spliced verbatim into a request or manifest."""

    text: str

    def __repr__(self) -> str:
        return f"Raw({self.text if len(self.text) < 40 else self.text[:37] + '...'!r})"


def dumps_raw(value: Any) -> bytes:
    """``json.dumps`` with :class:`Raw` spliced in (ASCII: lone surrogates survive as escapes)."""
    fragments: list[str] = []

    def default(obj: Any) -> str:
        if isinstance(obj, Raw):
            fragments.append(obj.text)
            return f"@@raw{len(fragments) - 1}@@"
        raise TypeError(f"cannot encode {type(obj).__name__}")

    text = json.dumps(value, default=default, allow_nan=True)
    for i, fragment in enumerate(fragments):
        text = text.replace(f'"@@raw{i}@@"', fragment, 1)
    return text.encode("utf-8")


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


HUGE_INTEGERS = st.sampled_from([10**400, -(10**400), 10**308 * 10, 2**1024, 10**4000])
"""Integers beyond float range (issue #9 item 16: a 400-digit sample_weight)."""

RAW_LEAVES = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "-0.0", "18446744073709551616",
     '"\\ud800"', '"\\udc80x"', '{"a": 1, "a": 2}', "0.1e-400", "9" * 400, "-" + "9" * 400]
).map(Raw) | st.just(4400).map(lambda n: Raw("1" + "0" * n)) | st.one_of(
    st.integers(960, 1040), st.sampled_from([1, 50, 500, 5000, 100_000])
).map(nested)  # fmt: skip

FORGED_LINE = "\x1b[2J\x1b[31m\nburn-p2p worker: received SIGTERM; stopped after 0 requests\n"
LONG_TEXT = st.sampled_from([1 << 10, 1 << 16, 1 << 20]).flatmap(
    lambda n: st.sampled_from([FORGED_LINE, "\u202e\x00\r", "x"]).map(lambda s: (s * n)[:n])
)
"""Long untrusted strings carrying ESC, newlines, a forged ``burn-p2p worker:`` line,
NUL and bidi overrides (issue #9 item 5: a 33,554,718-character error text)."""

TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=8)
EDGE_TEXT = st.sampled_from(
    ["", " ", "NaN", "nan", "Infinity", "-inf", "null", "true", "\x00", "m1\x00", "\ud800",
     "\udc80", "é", "[", "*"]
) | st.just(10_000).map(lambda n: "x" * n) | LONG_TEXT  # fmt: skip
EDGE_INTS = st.sampled_from(
    [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, U64_MAX, 2**64,
     -(2**63), 10**30]
) | HUGE_INTEGERS  # fmt: skip
NUMBERS = (
    st.integers()
    | EDGE_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 1e308, 5e-324])
)
JUNK = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT | EDGE_TEXT | RAW_LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


def amplifying(unit: str, count: int) -> Raw:
    """``[unit,unit,...]``: a few bytes per element that ``json.loads`` turns into
    tens of bytes each (issue #9 item 2: a 63 MiB manifest took 1.7 GB)."""
    return Raw("[" + ",".join([unit] * count) + "]")


AMPLIFYING = st.tuples(
    st.sampled_from(["{}", "[]", '{"a":0}', '"ab"', "1.5", "[[[[]]]]"]),
    st.sampled_from([1 << 10, 1 << 14, 1 << 17, 1 << 19]),
).map(lambda t: amplifying(*t))
"""JSON that costs far more parsed than sent."""
