"""Framing checks: the worker's byte stream, driven over a raw socket (docs/protocol.md §1)."""

from __future__ import annotations

from typing import Any

from fakecoord import spec, wire
from fakecoord.errors import DecodeError

from .errors import CheckFailed, NoAnswer, WorkerGone, describe, one_line
from .properties import for_examples
from .rawworker import RawWorker
from .session import Session

FRAMING = "the worker's framing (python -m worker or --worker-cmd), not a workload hook"
EXIT_PATH = (
    "the worker's exit path; a workload that starts a non-daemon thread or blocks in a "
    "hook keeps the process alive"
)


def _response(raw: RawWorker, timeout: float, expected: str, hook: str = FRAMING) -> spec.Response:
    """The next response on ``raw``, decoded as the Rust coordinator decodes the envelope;
    beyond that, ``ok: true`` must carry a result and ``ok: false`` a non-empty error."""
    try:
        response = raw.read_response(timeout)
    except WorkerGone as exc:
        status = raw.wait_exit(2.0)
        got = f"{exc} (exit status {status}); stderr: {one_line(raw.stderr_tail(), 200)}"
        raise CheckFailed(expected, got, hook) from None
    except NoAnswer as exc:
        raise CheckFailed(expected, f"no response: {exc}", hook) from None
    except DecodeError as exc:
        raise CheckFailed(expected, f"an invalid response frame: {exc}", hook) from None
    if response.ok and response.result is spec.MISSING:
        raise CheckFailed(expected, "an ok:true response without a result", hook)
    if not response.ok and not (isinstance(response.error, str) and response.error.strip()):
        error = None if response.error is spec.MISSING else response.error
        raise CheckFailed(expected, f"an ok:false response whose error is {describe(error)}", hook)
    return response


def _send(
    raw: RawWorker, data: bytes | list[bytes], expected: str, pause: float | None = None
) -> None:
    """Send ``data``, or each piece of a list with ``pause`` s between; a broken connection
    is a :class:`CheckFailed`."""
    try:
        if isinstance(data, bytes):
            raw.send(data)
        else:
            raw.send_pieces(data, pause or 0.0)
    except WorkerGone as exc:
        status = raw.wait_exit(2.0)
        got = f"{exc} (exit status {status}); stderr: {one_line(raw.stderr_tail(), 200)}"
        raise CheckFailed(expected, got, FRAMING) from None


def _ask(raw: RawWorker, message: dict, timeout: float, expected: str) -> spec.Response:
    _send(raw, wire.encode_frame(message), expected)
    return _response(raw, timeout, expected)


def _json_values() -> Any:
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )


def requests_roundtrip(s: Session) -> str:
    from hypothesis import strategies as st

    raw = s.raw()
    methods = st.sampled_from(["hello", "capability_probe", "release_model"]) | st.text(
        max_size=16
    ).map(lambda t: "conformance.no_such_method." + t)
    requests = st.fixed_dictionaries(
        {"id": st.integers(min_value=1, max_value=2**64 - 1), "method": methods},
        optional={"params": _json_values()},
    )
    explicit = [
        {"id": 2**64 - 1, "method": "hello", "params": None},
        {"id": 2**53 + 1, "method": "release_model", "params": {"model_id": "\u00e9\U0001f600"}},
        {"id": 7, "method": "conformance.no_such_method.\u2603", "params": [[[[{"a": -0.0}]]]]},
        {"id": 8, "method": "capability_probe", "params": None},
    ]

    def body(request: dict) -> None:
        expected = f"one well-formed response with id {request['id']} to a {request['method']!r}"
        response = _ask(raw, request, s.options.call_timeout, expected)
        if response.id != request["id"]:
            raise CheckFailed(expected, f"a response with id {response.id}", FRAMING)

    count = for_examples(requests, body, s.options.max_examples, explicit)
    return f"{count} requests (big ids, unicode, nested params) each answered with their own id"


def split_frames(s: Session) -> str:
    from hypothesis import strategies as st

    raw = s.raw()
    hello = {"id": 1, "method": "hello", "params": None}
    expected_result = _ask(raw, hello, s.options.call_timeout, "hello to be answered").result
    ids = iter(range(100, 10**9))
    length = len(wire.encode_request(100, "hello", None))
    cuts = st.lists(st.integers(min_value=1, max_value=length - 1), max_size=5, unique=True)

    def body(points: list[int]) -> None:
        request_id = next(ids)
        data = wire.encode_request(request_id, "hello", None)
        pieces = wire.split(data, points)
        expected = f"the same hello answer for a frame sent in {len(pieces)} pieces"
        _send(raw, pieces, expected, pause=0.002 if len(pieces) > 8 else 0.01)
        response = _response(raw, s.options.call_timeout, expected)
        if response.id != request_id or response.result != expected_result:
            got = f"id {response.id} with {one_line(describe(response.result))}"
            raise CheckFailed(expected, got, FRAMING)

    explicit = [[1], [4], [7], [8], [9], list(range(1, length))]
    count = for_examples(cuts, body, s.options.max_examples, explicit)
    # Two requests in one write: both answered, in order.
    first, second = next(ids), next(ids)
    expected = f"answers {first} then {second} to two requests sent in one write"
    pair = [wire.encode_request(i, "hello", None) for i in (first, second)]
    _send(raw, b"".join(pair), expected)
    got = [_response(raw, s.options.call_timeout, expected).id for _ in range(2)]
    if got != [first, second]:
        raise CheckFailed(expected, f"answers with ids {got}", FRAMING)
    return f"{count} split frames (down to one byte per write) and a pipelined pair answered"


GARBAGE = [
    b"",
    b"{",
    b"\xff\xfe\xfd",
    b"null",
    b"[]",
    b'"hello"',
    b"{}",
    b'{"method": "hello"}',
    b'{"id": -1, "method": "hello", "params": null}',
    b'{"id": "7", "method": "hello", "params": null}',
    b'{"id": 1.5, "method": "hello", "params": null}',
    b'{"id": 7, "method": 42, "params": null}',
    b'{"id": 18446744073709551616, "method": "hello", "params": null}',
]


def _is_request(body: bytes) -> bool:
    try:
        value = wire.decode_value(body)
    except DecodeError:
        return False
    return isinstance(value, dict) and type(value.get("id")) is int and "method" in value


def garbage_refused(s: Session) -> str:
    from hypothesis import strategies as st

    raw = s.raw()

    def body(data: bytes) -> None:
        if _is_request(data):
            return
        expected = f"an ok:false answer to the non-request frame {data[:40]!r}"
        _send(raw, wire.frame(data), expected)
        response = _response(raw, s.options.exit_timeout, expected)
        if response.ok:
            raise CheckFailed(expected, f"ok:true with {describe(response.result)}", FRAMING)
        after = f"the worker to keep serving after the frame {data[:40]!r}"
        answer = _ask(raw, {"id": 424242, "method": "hello"}, s.options.exit_timeout, after)
        if answer.id != 424242 or not answer.ok:
            raise CheckFailed(
                f"hello to be answered after the frame {data[:40]!r}",
                f"id {answer.id}, ok {answer.ok}",
                FRAMING,
            )

    count = for_examples(st.binary(max_size=48), body, s.options.max_examples, GARBAGE)
    return f"{count} garbage frames (empty, not UTF-8, not JSON, no id) refused; still serving"


def shutdown_acks_and_exits(s: Session) -> str:
    raw = s.raw()
    try:
        expected = 'shutdown answered ok:true with an object result ({"ok": true})'
        shutdown = {"id": 9, "method": "shutdown", "params": None}
        response = _ask(raw, shutdown, s.options.exit_timeout, expected)
        if not response.ok:
            raise CheckFailed(expected, f"ok:false: {one_line(response.error)}", FRAMING)
        try:
            spec.decode_result("shutdown", response.result, validated=True)
        except DecodeError as exc:
            raise CheckFailed(expected, str(exc), FRAMING) from None
        expected = "the worker to exit with status 0 after answering shutdown"
        status = _exit_status(raw, s, expected, "after shutdown")
        if status != 0:
            raise CheckFailed(expected, f"exit status {status}", EXIT_PATH)
    finally:
        s.drop_raw()
    return "shutdown acknowledged with an object, then exit status 0"


def _exit_status(raw: RawWorker, s: Session, expected: str, after: str) -> int:
    """Wait for the worker to exit; a worker still running is a failure of ``expected``."""
    status = raw.wait_exit(s.options.exit_timeout)
    if status is None:
        raise CheckFailed(
            expected, f"still running {s.options.exit_timeout:g} s {after}", EXIT_PATH
        )
    return status


def eof_exits_zero(s: Session) -> str:
    raw = s.take_raw()
    try:
        _ask(raw, {"id": 1, "method": "hello"}, s.options.call_timeout, "hello to be answered")
        raw.close_write()
        expected = "exit status 0 when the coordinator closes the connection between frames"
        status = _exit_status(raw, s, expected, "after EOF")
        if status != 0:
            raise CheckFailed(expected, f"exit status {status}", EXIT_PATH)
    finally:
        raw.close()
    return "exit status 0 at EOF on a frame boundary"


def truncated_frame_exits_nonzero(s: Session) -> str:
    raw = s.take_raw()
    try:
        _send(raw, wire.HEADER.pack(100) + b'{"id": 1, "method": "he', "the frame to be sent")
        raw.close_write()
        expected = "a non-zero exit status when the stream ends inside a frame"
        status = _exit_status(raw, s, expected, "after EOF")
        if status == 0:
            raise CheckFailed(expected, "exit status 0 (success)", FRAMING)
    finally:
        raw.close()
    return f"exit status {status} after a frame cut short"


def oversized_frame_refused(s: Session) -> str:
    raw = s.take_raw()
    expected = (
        "a frame announcing 2**64-1 bytes refused at once (an ok:false answer and/or a "
        "closed connection), not waited for"
    )
    try:
        _send(raw, wire.HEADER.pack(2**64 - 1) + b'{"id": 1, "method": "hello"', expected)
        answers: list = []
        while True:
            try:
                answers.append(wire.decode_value(raw.read_body(s.options.exit_timeout)))
            except WorkerGone:
                raw.close_write()  # the worker drains until we close too
                break
            except NoAnswer:
                raise CheckFailed(
                    expected,
                    f"the connection still open after {s.options.exit_timeout:g} s"
                    + (f" (after answering {one_line(describe(answers[-1]))})" if answers else ""),
                    FRAMING,
                ) from None
            except DecodeError as exc:
                raise CheckFailed(expected, f"an invalid frame: {exc}", FRAMING) from None
            if len(answers) > 1 or not isinstance(answers[0], dict) or answers[0].get("ok"):
                raise CheckFailed(expected, f"the answer {one_line(describe(answers))}", FRAMING)
        if raw.wait_exit(s.options.exit_timeout) is None:
            raise CheckFailed(expected, "the worker still running after closing", EXIT_PATH)
    finally:
        raw.close()
    return "refused " + ("with an ok:false answer, then closed" if answers else "by closing")


__all__ = [
    "eof_exits_zero",
    "garbage_refused",
    "oversized_frame_refused",
    "requests_roundtrip",
    "shutdown_acks_and_exits",
    "split_frames",
    "truncated_frame_exits_nonzero",
]
