"""The sans-IO connection: every decision about the worker's connection, without sockets."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.connection import NEED_DATA, Close, Connection, NeedData, Reply
from worker.errors import ParamError
from worker.framing import encode_frame
from worker.protocol import Answer, Request


def frame(request_id: int, method: str, params: object = None) -> bytes:
    return encode_frame({"id": request_id, "method": method, "params": params})


def body_of(data: bytes) -> dict:
    (length,) = struct.unpack(">Q", data[:8])
    assert len(data) == 8 + length
    return json.loads(data[8:])


def events(connection: Connection) -> list:
    """Every event up to NEED_DATA or a Close (requests answered with an empty ack)."""
    out = []
    while True:
        event = connection.next_event()
        out.append(event)
        if isinstance(event, (NeedData, Close)):
            return out
        if isinstance(event, Request):
            connection.send_answer(Answer(event.id, event.method, {"ok": True}))


def test_a_request_is_an_event_and_its_answer_a_frame():
    connection = Connection()
    connection.receive_data(frame(3, "init_model", {"device": "cpu"}))
    request = connection.next_event()
    assert request == Request(3, "init_model", {"device": "cpu"})
    data = connection.send_answer(Answer(3, "init_model", {"model_id": "m1"}))
    assert data == encode_frame({"id": 3, "ok": True, "result": {"model_id": "m1"}})
    assert connection.next_event() is NEED_DATA
    assert connection.requests_received == 1


def test_bytes_received_in_place_make_the_same_events():
    stream = frame(1, "hello") + frame(2, "hello")
    connection = Connection()
    got = []
    for i in range(len(stream)):
        assert connection.next_event() is NEED_DATA
        view = connection.receive_buffer()
        view[0] = stream[i]
        del view
        connection.received(1)
        while isinstance(event := connection.next_event(), Request):
            got.append(event.id)
            connection.send_answer(Answer(event.id, event.method, None))
        assert event is NEED_DATA
    assert got == [1, 2]


def test_pipelined_requests_come_out_in_order():
    connection = Connection()
    connection.receive_data(b"".join(frame(i, "hello") for i in range(1, 6)))
    assert [e.id for e in events(connection)[:-1]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("body", "request_id", "fragment"),
    [(b"", 0, "request: empty frame"), (b"\xff", 0, "UTF-8"), (b"[1]", 0, "JSON object"),
     (b'{"id": 9}', 9, "request 9: missing 'method'")],
)  # fmt: skip
def test_a_frame_that_is_not_a_request_gets_a_reply_and_the_connection_goes_on(
    body, request_id, fragment
):
    connection = Connection()
    connection.receive_data(struct.pack(">Q", len(body)) + body + frame(2, "hello"))
    reply = connection.next_event()
    assert isinstance(reply, Reply)
    answer = body_of(reply.data)
    assert answer["id"] == request_id and answer["ok"] is False and fragment in answer["error"]
    assert connection.next_event() == Request(2, "hello", None)
    assert connection.requests_received == 2


def test_eof_at_a_frame_boundary_exits_zero():
    connection = Connection()
    connection.receive_data(frame(1, "hello"))
    connection.receive_data(b"")
    trail = events(connection)
    assert trail[-1] == Close(0, "the coordinator closed the connection after 1 requests; exiting")
    assert connection.next_event() is trail[-1]  # a decision to close is final


@pytest.mark.parametrize(
    ("partial", "log"),
    [(b"\x00\x00\x00", "connection closed inside a frame header (3 of 8 bytes); exiting"),
     (struct.pack(">Q", 100) + b'{"id": 1', "connection closed inside a frame (8 of 100 body "
      "bytes); exiting"),
     (struct.pack(">Q", 1 << 20) + b"x" * 70_000, "connection closed inside a frame (70000 of "
      "1048576 body bytes); exiting")],
    ids=["header", "body", "large-body"],
)  # fmt: skip
def test_eof_inside_a_frame_exits_one(partial, log):
    connection = Connection()
    connection.receive_data(frame(1, "hello") + partial)
    connection.received(0)
    assert events(connection)[-1] == Close(1, log)


def test_a_header_over_the_limit_is_refused_with_id_0_then_drained():
    connection = Connection(max_frame_bytes=64)
    connection.receive_data(frame(1, "hello") + struct.pack(">Q", 65) + b"{" * 10)
    trail = events(connection)
    close = trail[-1]
    assert isinstance(close, Close) and close.exit_code == 1 and close.drain
    assert "frame of 65 bytes exceeds the limit of 64 bytes" in close.log
    answer = body_of(close.reply)
    assert answer["id"] == 0 and answer["ok"] is False
    assert answer["error"].startswith("request: frame of 65 bytes exceeds the limit of 64")
    assert len(trail) == 2 and trail[0].id == 1  # the request before it was served


def test_a_huge_header_under_a_raised_limit_waits_without_allocating_it():
    connection = Connection(max_frame_bytes=2**62)
    connection.receive_data(struct.pack(">Q", 2**61) + b"[")
    assert connection.next_event() is NEED_DATA
    assert len(connection.receive_buffer()) < 2**30


def test_shutdown_ends_the_session_after_its_ack_and_ignores_what_follows():
    connection = Connection()
    connection.receive_data(frame(1, "shutdown") + frame(2, "hello"))
    request = connection.next_event()
    data = connection.send_answer(Answer(request.id, "shutdown", {"ok": True}, ends_session=True))
    assert body_of(data) == {"id": 1, "ok": True, "result": {"ok": True}}
    assert connection.next_event() == Close(0, None)
    assert connection.requests_received == 1


def test_a_refusal_is_rendered_from_the_error():
    connection = Connection()
    error = ParamError("device", "a string", 5, method="init_model")
    data = connection.send_answer(Answer(4, "init_model", error=error))
    assert body_of(data) == {
        "id": 4, "ok": False, "error": "init_model: params.device: expected a string, got 5 (int)",
    }  # fmt: skip


@pytest.mark.parametrize("result", [float("nan"), {"x": object()}, {"inf": float("inf")}])
def test_a_result_json_cannot_carry_becomes_an_error_naming_the_method(result):
    data = Connection().send_answer(Answer(5, "evaluate", result))
    answer = body_of(data)
    assert answer["id"] == 5 and answer["ok"] is False
    assert answer["error"].startswith("evaluate: the result cannot be encoded as standard JSON")


def test_error_text_with_lone_surrogates_is_still_sent():
    error = ParamError("x", "y", "\ud800", method="m")
    answer = body_of(Connection().send_answer(Answer(6, "m", error=error)))
    assert answer["ok"] is False and answer["error"].startswith("m: params.x")


def test_endings_the_transport_reports():
    connection = Connection()
    connection.receive_data(frame(1, "hello"))
    events(connection)
    assert connection.stopped("SIGTERM") == Close(0, "received SIGTERM; stopped after 1 requests")
    assert Connection().receive_failed(OSError(104, "reset")).exit_code == 1
    failed = Connection().send_failed(BrokenPipeError(32, "Broken pipe"))
    assert failed.exit_code == 1 and "coordinator went away" in failed.log


@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_byte_stream_ends_in_exactly_one_decision(stream, limit):
    connection = Connection(max_frame_bytes=limit)
    connection.receive_data(stream)
    connection.receive_data(b"")
    trail = events(connection)
    assert isinstance(trail[-1], Close)
    assert all(isinstance(e, (Request, Reply)) for e in trail[:-1])
    assert trail[-1].exit_code in (0, 1)
