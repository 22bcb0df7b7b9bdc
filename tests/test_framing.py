"""Sans-IO framing: 8-byte big-endian length, then UTF-8 JSON (docs/protocol.md §1).

What the connection decides at EOF and over the limit is in ``test_connection.py``.
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import framing
from worker.errors import FrameError, FrameTooLarge, WorkerError
from worker.framing import (
    BODY_PREALLOCATION,
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    FrameDecoder,
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


def decode_all(data: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[bytes]:
    decoder = FrameDecoder(max_frame_bytes)
    decoder.feed(data)
    bodies = []
    while (body := decoder.next_frame()) is not None:
        bodies.append(bytes(body))
    assert not decoder.in_frame
    return bodies


def receive_in_place(decoder: FrameDecoder, data: bytes, chunk: int) -> list[bytes]:
    """Feed ``data`` the way the server does: recv_into ``buffer()`` in pieces of <= chunk."""
    bodies = []
    while data:
        while (body := decoder.next_frame()) is not None:
            bodies.append(bytes(body))
        view = decoder.buffer()
        assert len(view) > 0
        count = min(len(view), chunk, len(data))
        view[:count] = data[:count]
        del view
        decoder.filled(count)
        data = data[count:]
    while (body := decoder.next_frame()) is not None:
        bodies.append(bytes(body))
    return bodies


@given(requests)
def test_any_request_survives_encode_decode(request):
    (body,) = decode_all(encode_frame(request))
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
        while (body := decoder.next_frame()) is not None:
            bodies.append(body)
    assert [json.loads(b) for b in bodies] == messages
    assert not decoder.in_frame


@given(st.lists(requests, max_size=6), st.integers(1, 70_000), st.integers(0, 3))
def test_receiving_in_place_in_any_chunks_gives_the_same_frames(messages, chunk, big):
    messages = [*messages, *({"pad": "x" * 100_000, "i": i} for i in range(big))]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder(read_size=1024)
    bodies = receive_in_place(decoder, stream, chunk)
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
    assert decoder.progress() == (2, len(frame) - 8)
    decoder.feed(frame[10:])
    assert decoder.next_frame() == frame[8:]
    assert not decoder.in_frame and decoder.pending_length is None


def test_zero_length_frame_decodes_to_an_empty_body():
    assert decode_all(struct.pack(">Q", 0)) == [b""]


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
    assert decoder.next_frame() == b"null"


def test_default_limit():
    assert DEFAULT_MAX_FRAME_BYTES == 256 * 1024 * 1024
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">Q", DEFAULT_MAX_FRAME_BYTES))
    assert decoder.next_frame() is None and decoder.pending_length == DEFAULT_MAX_FRAME_BYTES
    for announced in (DEFAULT_MAX_FRAME_BYTES + 1, 2**64 - 1):
        decoder = FrameDecoder()
        decoder.feed(struct.pack(">Q", announced))
        with pytest.raises(FrameTooLarge):
            decoder.next_frame()


@pytest.mark.parametrize("stream", [b"\x00\x00", struct.pack(">Q", 5) + b"abc"])
def test_a_stream_ending_inside_a_frame_leaves_the_decoder_in_a_frame(stream):
    decoder = FrameDecoder()
    decoder.feed(stream)
    assert decoder.next_frame() is None and decoder.in_frame


def test_small_frames_are_assembled_in_the_shared_buffer_across_its_end():
    decoder = FrameDecoder(read_size=64)
    frames = [encode_frame({"i": i, "pad": "y" * (i % 7) * 5}) for i in range(40)]
    assert receive_in_place(decoder, b"".join(frames), 13) == [f[8:] for f in frames]


def test_a_large_body_is_received_into_its_own_buffer_without_copies():
    decoder = FrameDecoder(read_size=1024)
    body = b"z" * 5000
    decoder.feed(struct.pack(">Q", len(body)) + body[:100])
    assert decoder.next_frame() is None
    view = decoder.buffer()
    assert len(view) == len(body) - 100  # straight into the body, exactly what is missing
    view[:] = body[100:]
    del view
    decoder.filled(len(body) - 100)
    assert decoder.next_frame() == body


def test_a_huge_announced_body_allocates_only_as_its_bytes_arrive(monkeypatch):
    """Under a raised limit, a header announcing 2**61 bytes costs the preallocation
    cap, not 2**61 bytes (a MemoryError), and the buffer grows as data comes."""
    monkeypatch.setattr(framing, "BODY_PREALLOCATION", 1 << 16)
    decoder = FrameDecoder(max_frame_bytes=2**62, read_size=1024)
    tracemalloc.start()
    try:
        decoder.feed(struct.pack(">Q", 2**61) + b"x" * 10)
        assert decoder.next_frame() is None
        sent = 10
        for _ in range(4):
            view = decoder.buffer()
            count = len(view)
            view[:] = b"x" * count
            del view
            decoder.filled(count)
            sent += count
            assert decoder.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent == 8 * (1 << 16)  # 64 KiB, then doubled three times
    assert peak < 4 * sent
    assert decoder.pending_length == 2**61 - sent and decoder.progress() == (sent, 2**61)


def test_the_body_preallocation_is_capped():
    assert BODY_PREALLOCATION <= 64 << 20
