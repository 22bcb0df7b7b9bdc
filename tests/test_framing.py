"""Sans-IO framing: 8-byte big-endian length, then UTF-8 JSON (PROTOCOL.md §1)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import FrameError, FrameTooLarge, WorkerError
from worker.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    FrameDecoder,
    decode_frames,
    decode_header,
    encode_frame,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)
requests = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=1, max_value=2**64 - 1),
        "method": st.text(),
        "params": json_values,
    }
)


def test_header_is_eight_bytes_big_endian():
    frame = encode_frame({"a": 1})
    body = b'{"a":1}'
    assert frame == struct.pack(">Q", len(body)) + body
    assert HEADER_SIZE == 8 and frame[:8] == b"\x00" * 7 + bytes([len(body)])


def test_frames_are_standard_json_utf8():
    frame = encode_frame({"name": "zß€😀"})
    assert frame[8:].decode("utf-8") == '{"name":"zß€😀"}'


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused_on_encode(value):
    with pytest.raises(ValueError):
        encode_frame({"loss": value})


def test_unencodable_values_raise_type_error():
    with pytest.raises(TypeError):
        encode_frame({"x": object()})


@given(requests)
def test_any_request_survives_encode_decode(request):
    (body,) = decode_frames(encode_frame(request))
    assert json.loads(body) == request


@given(st.lists(requests, max_size=6), st.data())
def test_stream_split_at_any_boundaries_decodes_to_the_same_frames(messages, data):
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    bodies = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        while (frame := decoder.next_frame()) is not None:
            bodies.append(frame.body)
    assert [json.loads(b) for b in bodies] == messages
    assert not decoder.in_frame


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_frame_errors(data):
    decoder = FrameDecoder(max_frame_bytes=1024)
    decoder.feed(data)
    try:
        while decoder.next_frame() is not None:
            pass
    except FrameError:
        pass


def test_decoder_reports_progress_inside_a_frame():
    frame = encode_frame({"id": 1})
    decoder = FrameDecoder()
    assert not decoder.in_frame and decoder.pending_length is None
    decoder.feed(frame[:3])
    assert decoder.in_frame and decoder.next_frame() is None and decoder.pending_length is None
    decoder.feed(frame[3:10])
    assert decoder.next_frame() is None
    assert decoder.pending_length == len(frame) - 10
    decoder.feed(frame[10:])
    assert decoder.next_frame().body == frame[8:]
    assert not decoder.in_frame and decoder.pending_length is None


def test_zero_length_frame_decodes_to_an_empty_body():
    assert decode_frames(struct.pack(">Q", 0)) == [b""]


def test_oversize_header_raises_before_the_body_is_buffered():
    decoder = FrameDecoder(max_frame_bytes=16)
    decoder.feed(struct.pack(">Q", 17))
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.length == 17 and info.value.limit == 16
    assert "17" in str(info.value) and "16" in str(info.value)
    assert isinstance(info.value, FrameError) and isinstance(info.value, WorkerError)


def test_frame_at_the_limit_is_accepted():
    decoder = FrameDecoder(max_frame_bytes=4)
    decoder.feed(struct.pack(">Q", 4) + b"null")
    assert decoder.next_frame().body == b"null"


def test_decode_header_limits():
    assert decode_header(struct.pack(">Q", DEFAULT_MAX_FRAME_BYTES)) == DEFAULT_MAX_FRAME_BYTES
    assert DEFAULT_MAX_FRAME_BYTES == 256 * 1024 * 1024
    with pytest.raises(FrameTooLarge):
        decode_header(struct.pack(">Q", DEFAULT_MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameTooLarge):
        decode_header(b"\xff" * 8)
    with pytest.raises(FrameError, match="8 bytes"):
        decode_header(b"\x00" * 7)


@pytest.mark.parametrize(
    "data", [b"\x00\x00", struct.pack(">Q", 5) + b"abc"], ids=["in-header", "in-body"]
)
def test_decode_frames_refuses_data_ending_inside_a_frame(data):
    with pytest.raises(FrameError, match="inside a frame"):
        decode_frames(data)
