"""fakecoord.wire and fakecoord.schema: frames, and JSON decoded as serde_json decodes it.

Each serde behaviour is pinned with a test whose docstring names its source:
serde_json 1.0.149 (the version in the Rust coordinator's Cargo.lock, default
features) and serde 1.0.228, read from their sources and documented in the
issues cited.  The coordinator reads the envelope with
``serde_json::from_slice::<RpcResponse>`` (``result`` as a ``Value``), then
``serde_json::from_value::<R>(result)`` (crates/burn_p2p_python/src/worker.rs).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakecoord import schema, spec, wire
from fakecoord.errors import DecodeError
from fakecoord.schema import (
    F64,
    I64,
    STRING,
    U32,
    U64,
    Enum,
    Field,
    Map,
    Option,
    Struct,
    Variant,
    Vec,
)


def envelope(result_json: str, extra: str = "") -> bytes:
    return f'{{"id": 1, "ok": true, "result": {result_json}{extra}}}'.encode()


def refused(body: bytes, name: str = "hello") -> DecodeError:
    with pytest.raises(DecodeError) as info:
        spec.decode_result(name, spec.parse_response(name, body, 1), validated=True)
    return info.value


def accepted(body: bytes, name: str) -> Any:
    return spec.decode_result(name, spec.parse_response(name, body, 1), validated=True)


HELLO = '{"protocol_version": 2, "workload_name": "w", "capabilities": []}'

# ---------------------------------------------------------------------------
# Frames


def test_frames_are_a_big_endian_length_then_compact_utf8_json() -> None:
    frame = wire.encode_request(7, "évaluer", {"a": [1, 2.5]})
    body = '{"id":7,"method":"évaluer","params":{"a":[1,2.5]}}'.encode()
    assert frame == len(body).to_bytes(8, "big") + body
    with pytest.raises(ValueError):
        wire.encode_frame({"x": float("nan")})


def test_headers_of_length_zero_or_above_the_limit_are_refused() -> None:
    assert wire.decode_header((5).to_bytes(8, "big")) == 5
    for length, text in ((0, "length 0"), (1 << 40, str(1 << 40))):
        with pytest.raises(DecodeError, match=text) as info:
            wire.decode_header(length.to_bytes(8, "big"), max_frame_bytes=1 << 30)
        assert info.value.field == "response"
    with pytest.raises(ValueError):
        wire.decode_header(b"\x00" * 7)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(JSON, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_frames_survive_any_split_and_decode_to_what_was_sent(value: Any, cuts: list[int]) -> None:
    data = wire.encode_frame(value) + wire.encode_frame([value])
    reader = wire.FrameReader()
    bodies = []
    for piece in wire.split(data, cuts):
        reader.feed(piece)
        bodies += [wire.decode_value(body) for body in reader.bodies()]
    assert bodies == [value, [value]] and not reader.in_frame


# ---------------------------------------------------------------------------
# Syntax


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"NaN", ""),
        (b'{"x": [1, Infinity]}', "x[1]"),
        (b'{"x": -Infinity}', "x"),
        (b"\xff", ""),
        (b"{", ""),
        (b"", ""),
        (b'{"a": 1} {"b": 2}', ""),
        (b'"tab\there"', ""),
        (b'"\\x"', ""),
        (b"01", ""),
    ],
)
def test_what_is_not_json_is_refused_everywhere(body: bytes, field: str) -> None:
    """serde_json refuses NaN/Infinity (not JSON), invalid UTF-8, trailing
    characters, raw control characters in strings (also in ignored strings:
    ``SliceRead::ignore_str``), bad escapes and leading zeros."""
    with pytest.raises(DecodeError) as info:
        wire.parse_json(body)
    assert info.value.field == field


def test_nan_in_an_ignored_envelope_field_is_still_refused_and_located() -> None:
    """NaN is a syntax error, so serde_json's ``ignore_value`` refuses it too."""
    exc = refused(envelope(HELLO, ', "note": [NaN]'))
    assert exc.field == "response.note[0]" and "NaN" in str(exc)


# ---------------------------------------------------------------------------
# Numbers


def test_integers_are_u64_or_i64_and_anything_beyond_is_a_float() -> None:
    """serde_json parses an integer literal as u64 (non-negative) or i64
    (negative) when it fits, else as f64 (``parse_long_integer``; serde-rs/json#43:
    "Large integers are promoted to a f64 representation"), and ``-0`` as the
    float -0.0 (``parse_number``: "Convert into a float if we underflow, or on -0")."""
    doc = wire.parse_json(
        b"[18446744073709551615, 18446744073709551616, -9223372036854775808, "
        b"-9223372036854775809, -0, 0]"
    )
    assert doc[0] == 2**64 - 1 and type(doc[0]) is int
    assert isinstance(doc[1], wire.BigInteger) and doc[1] == float(2**64)
    assert doc[2] == -(2**63) and type(doc[2]) is int
    assert isinstance(doc[3], wire.BigInteger)
    assert type(doc[4]) is float and math.copysign(1.0, doc[4]) == -1.0
    assert doc[5] == 0 and type(doc[5]) is int


@pytest.mark.parametrize(
    ("t", "ok", "bad"),
    [
        (U32, [0, 2**32 - 1], ["4294967296", "-1", "2.0", "1e2", "-0", "true", '"2"']),
        (U64, [0, 2**64 - 1], ["18446744073709551616", "-1", "0.0"]),
        (I64, [-(2**63), 2**63 - 1], ["9223372036854775808", "-9223372036854775809", "1.5"]),
    ],
)
def test_integers_are_range_checked_as_their_rust_type_and_never_taken_from_floats(
    t: schema.Int, ok: list[int], bad: list[str]
) -> None:
    """serde's primitive visitors refuse an out-of-range integer ("invalid
    value") and any f64 ("invalid type: floating point"), including 2.0 and
    the big literals serde_json already turned into floats."""
    for value in ok:
        assert schema.decode_bytes(t, str(value).encode()) == value
    for text in bad:
        with pytest.raises(DecodeError):
            schema.decode_bytes(t, text.encode())


def test_numbers_beyond_f64_are_refused_where_parsed_and_never_raise_overflow() -> None:
    """serde_json refuses ``1e400`` and a 400-digit integer with "number out of
    range" when it parses them (``f64_from_parts``; dprint/jsonc-parser#86 quotes
    serde_json's error) and skips them unparsed in an ignored field
    (``ignore_integer``).  A 300-digit integer is a fine f64."""
    big, huge = "9" * 300, "9" * 400
    assert schema.decode_bytes(F64, big.encode()) == float(big)
    for text in (huge, "1e400", "-1e400", "1" * 5000):
        with pytest.raises(DecodeError, match="out of range"):
            schema.decode_bytes(F64, text.encode())
    # Python ints from code, not bytes: no OverflowError either.
    with pytest.raises(DecodeError):
        schema.decode(F64, 10**400)
    # Inside result (a Value): refused.  In an ignored envelope field: skipped.
    assert refused(envelope(f'{{"metrics": {{"x": {huge}}}}}'), "evaluate").field == (
        "result.metrics.x"
    )
    assert accepted(envelope(HELLO, f', "note": {huge}, "n2": 1e999'), "hello")["workload_name"]


def test_an_f64_takes_any_integer_and_a_metric_value_no_lossy_one() -> None:
    """f64 accepts u64/i64 (serde's f64 visitor casts).  MetricValue is
    ``#[serde(untagged)] Integer(i64) | Float(f64) | ...``: serde would take
    2**63 or a 25-digit integer as Float (serde.rs/enum-representations:
    untagged tries each variant in order); we refuse them on purpose."""
    assert schema.decode_bytes(F64, b"18446744073709551615") == 2**64 - 1
    assert accepted(
        envelope('{"metrics": {"a": 5.0, "b": -0, "c": 9223372036854775807}}'), "evaluate"
    )
    for literal in ("9223372036854775808", "1234567890123456789012345"):
        exc = refused(envelope(f'{{"metrics": {{"n": {literal}}}}}'), "evaluate")
        assert exc.field == "result.metrics.n" and "within i64" in str(exc)


# ---------------------------------------------------------------------------
# Strings


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud83d\\u0061", "\\ud83dx"])
def test_lone_surrogate_escapes_are_refused_in_every_parsed_string(escape: str) -> None:
    """serde_json refuses a lone surrogate escape in any string it parses into
    a ``String`` or ``Value``: "lone leading surrogate in hex escape"
    (``parse_unicode_escape``; serde-rs/json#495, dprint/jsonc-parser#8)."""
    exc = refused(envelope(f'{{"protocol_version": 2, "workload_name": "{escape}"}}'))
    assert exc.field == "result.workload_name"
    assert (
        refused(envelope(f'{{"metrics": {{"{escape}": 1}}}}'), "evaluate").field == "result.metrics"
    )
    with pytest.raises(DecodeError):
        wire.decode_value(f'["{escape}"]'.encode())


def test_surrogate_pairs_are_one_character_and_ignored_fields_are_not_checked() -> None:
    """A valid pair decodes to one scalar value; ``ignore_escape`` does not
    validate the code point ("we don't care if the codepoint is valid")."""
    hello = accepted(
        envelope('{"protocol_version": 2, "workload_name": "\\ud83d\\ude00"}', ', "x": "\\ud800"'),
        "hello",
    )
    assert hello["workload_name"] == "\U0001f600"


def test_every_key_of_a_struct_is_parsed_so_a_lone_surrogate_key_is_refused() -> None:
    """serde_json reads each map key with ``parse_str`` (``MapKey``) to match it
    against the field names, so even an unknown key must be a valid string."""
    with pytest.raises(DecodeError, match="surrogate"):
        spec.decode_response(envelope(HELLO, ', "\\udc00": 1'))


# ---------------------------------------------------------------------------
# Duplicate keys


def test_a_derived_struct_refuses_a_duplicated_field() -> None:
    """serde_derive's visit_map returns ``duplicate_field`` for a field seen
    twice (serde-rs/serde#690: "Error (current behavior and sensible
    default)"; serde-rs/serde#1202)."""
    body = b'{"id": 1, "ok": true, "ok": true, "result": {}}'
    with pytest.raises(DecodeError, match="duplicate key 'ok'") as info:
        spec.decode_response(body)
    assert info.value.field == "response.ok"
    manifest = Struct("M", (Field("a", STRING),))
    with pytest.raises(DecodeError, match="duplicate"):
        schema.decode_bytes(manifest, b'{"a": "x", "a": "y"}')


def test_unknown_fields_may_repeat_and_maps_and_values_keep_the_last() -> None:
    """Unknown fields go to ``IgnoredAny`` (no duplicate check); serde's
    BTreeMap/HashMap impls and serde_json's ``Value`` insert, so the last value
    wins (serde-rs/serde#916, serde-rs/json#1112).  The coordinator decodes
    ``result`` as a ``Value`` first, so duplicates inside it never fail."""
    body = envelope('{"metrics": {"a": 1, "a": "two"}}', ', "x": 1, "x": 2')
    assert accepted(body, "evaluate") == {"a": "two"}
    assert accepted(envelope('{"model_id": "m1", "model_id": "m2"}'), "init_model") == "m2"
    outcome = Enum("E", (Variant("A", STRING),))
    assert schema.decode_bytes(Map(STRING), b'{"k": "1", "k": "2"}') == {"k": "2"}
    with pytest.raises(DecodeError):  # an enum object read from bytes takes one key
        schema.decode_bytes(outcome, b'{"A": "1", "A": "2"}')


def test_an_internally_tagged_enum_refuses_a_repeated_tag() -> None:
    """``TaggedContentVisitor::visit_map``: a second tag is ``duplicate_field``."""
    ref = b'{"kind": "micro_epoch", "kind": "micro_epoch", "lease_id": "l", "microshard_ids": [],'
    ref += b' "ordinals": [], "bytes_len": 0, "pipeline_kind": "custom", "payload": null}'
    with pytest.raises(DecodeError, match="duplicate key 'kind'"):
        schema.decode_bytes(spec.BATCH_REF, ref)


# ---------------------------------------------------------------------------
# Nesting


def test_nesting_is_limited_to_127_levels_where_serde_json_parses() -> None:
    """serde_json's ``remaining_depth`` starts at 128 and the 128th nested
    array/object fails with ``RecursionLimitExceeded`` (no ``unbounded_depth``;
    ruma/ruma#507 quotes the error).  The envelope is level 1; ``ignore_value``
    keeps its own stack and has no limit."""

    def nested(levels: int) -> str:
        return "[" * levels + "]" * levels

    assert accepted(envelope(f'{{"metrics": {{}}, "deep": {nested(125)}}}'), "evaluate") == {}
    exc = refused(envelope(f'{{"metrics": {{}}, "deep": {nested(126)}}}'), "evaluate")
    assert exc.field.startswith("result.deep") and "recursion limit" in str(exc)
    assert accepted(envelope(HELLO, f', "x": {nested(300)}'), "hello")
    assert len(wire.decode_value(nested(127).encode())) == 1
    with pytest.raises(DecodeError, match="recursion limit"):
        wire.decode_value(nested(128).encode())


# ---------------------------------------------------------------------------
# Structs and enums


def test_fields_missing_unknown_null_and_defaulted_as_serde_derive_does() -> None:
    """Unknown fields are ignored (no ``deny_unknown_fields`` on these types;
    with it, serde_derive has no ignore arm and refuses them);
    a missing ``Option`` is None (``missing_field`` calls ``visit_none``); a
    missing ``#[serde(default)]`` field gets its default; ``null`` is not a
    Vec even when the field has a default."""
    t = Struct(
        "T",
        (Field("a", U32), Field("b", Option(STRING)), Field("c", Vec(STRING), default=[])),
    )
    assert schema.decode_bytes(t, b'{"a": 1, "zzz": [1]}') == {
        "a": 1,
        "b": None,
        "c": [],
        "zzz": [1],
    }
    for body in (b'{"b": "x"}', b'{"a": 1, "c": null}', b"null", b'"a"'):
        with pytest.raises(DecodeError):
            schema.decode_bytes(t, body)
    strict = Struct("S", t.fields, deny_unknown_fields=True)
    assert schema.decode_bytes(strict, b'{"a": 1}')["c"] == []
    with pytest.raises(DecodeError, match="unknown field 'zzz'"):
        schema.decode_bytes(strict, b'{"a": 1, "zzz": [1]}')
    assert accepted(envelope("{}"), "merge_candidate_models") is None
    assert accepted(envelope("{}"), "parameter_pack_plan")["parameter_count"] == 0


def test_a_struct_may_come_as_an_array_of_its_fields() -> None:
    """serde_json's ``deserialize_struct`` accepts a sequence and serde_derive's
    ``visit_seq`` fills fields in order; only ``#[serde(default)]`` fields may
    be left off the end (serde-rs/serde#2438, serde-rs/json#555)."""
    assert accepted(envelope('["m1"]'), "init_model") == "m1"
    assert accepted(envelope('[2, "w"]'), "hello")["capabilities"] == []
    assert spec.decode_response(b'[3, true, {"ok": true}]').id == 3
    for result in ('["m1", "extra"]', "[]"):
        refused(envelope(result), "init_model")
    refused(envelope("[2]"))


def test_enums_take_their_variants_and_nothing_else() -> None:
    """Externally tagged: ``"Unit"`` or ``{"Unit": null}`` (``unit_variant``
    deserializes ``()`` from the value), ``{"Newtype": value}``; an unknown
    variant, a newtype variant given as a bare string, or an object with
    several keys is refused (``Value::deserialize_enum``: "map with a single key")."""
    assert accepted(envelope('{"Applied": null}'), "apply_patch") == "Applied"
    assert accepted(envelope('{"Rejected": "no"}'), "apply_patch") == {"Rejected": "no"}
    for result in (
        '"Rejected"',
        '"Maybe"',
        '{"Applied": 1}',
        '{"Rejected": "a", "Applied": null}',
        "{}",
    ):
        refused(envelope(result), "apply_patch")


def test_a_struct_variant_is_an_object_in_a_value_and_may_be_an_array_in_bytes() -> None:
    """``Value``'s ``struct_variant`` takes only an object; serde_json's
    ``VariantAccess::struct_variant`` calls ``deserialize_struct``, which
    also takes an array."""
    strategy = spec.RECONCILE_STRATEGY
    assert schema.decode(strategy, {"RootEma": {"canonical_weight": 0.5}})
    with pytest.raises(DecodeError):
        schema.decode(strategy, {"RootEma": [0.5]})
    assert schema.decode_bytes(strategy, b'{"RootEma": [0.5]}') == {
        "RootEma": {"canonical_weight": 0.5}
    }


def test_decoding_keeps_the_json_form_and_returns_the_input_when_nothing_was_filled() -> None:
    probe = {
        "runtime_device": "cpu",
        "capability": {
            "preferred_backends": [],
            "work_units_per_second": 3,
            "target_window_seconds": 0,
        },
    }
    assert spec.decode_result("capability_probe", probe) is probe
    assert json.dumps(spec.decode_result("capability_probe", probe)) == json.dumps(probe)
