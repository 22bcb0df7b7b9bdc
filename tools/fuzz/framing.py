"""Target "frames": the byte stream (issue #9's framing surface).

:class:`worker.framing.FrameDecoder` fed arbitrary streams in arbitrary chunks
(checked against the oracle's independent parser), and
:func:`worker.server.serve` on a socketpair (answers, exit code and the one
stderr line checked against a replay of the same frames).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
from typing import Any

from hypothesis import strategies as st

from worker.errors import FrameTooLarge
from worker.framing import FrameDecoder, encode_frame
from worker.server import serve
from worker.service import Worker

from .oracle import HANG_TIMEOUT, FuzzFailure, check_frame, exchange, reference_frames
from .values import U64_MAX
from .workloads import QuickWorkload


def _header(length: int) -> bytes:
    return struct.pack(">Q", length)


def frame_segments(limit: int) -> st.SearchStrategy[bytes]:
    small_json = st.recursive(
        st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
        max_leaves=5,
    )
    body = st.binary(max_size=40)
    return st.one_of(
        small_json.map(encode_frame),
        body.map(lambda b: _header(len(b)) + b),
        st.tuples(body, st.integers(1, 8)).map(lambda t: _header(len(t[0]) + t[1]) + t[0]),
        st.sampled_from([0, limit, limit + 1, 2**63, U64_MAX]).map(_header),
        st.binary(max_size=20),
    )


@st.composite
def decoder_inputs(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    limit = draw(st.sampled_from([0, 1, 8, 64, 1024]), label="limit")
    stream = b"".join(draw(st.lists(frame_segments(limit), max_size=6), label="segments"))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    return stream, cuts, limit


def check_decoder(case: tuple[bytes, list[int], int]) -> None:
    """Chunked feeding must give exactly the reference parser's frames and verdict."""
    stream, cuts, limit = case
    expected, verdict = reference_frames(stream, limit)
    decoder = FrameDecoder(limit)
    got: list[bytes] = []
    too_large = False
    bounds = [0, *cuts, len(stream)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        decoder.feed(stream[start:end])
        try:
            while (body := decoder.next_frame()) is not None:
                got.append(bytes(body))
        except FrameTooLarge:
            too_large = True
            break
        pending = decoder.pending_length
        if pending is not None and not 0 < pending <= limit:
            raise FuzzFailure(
                f"pending_length {pending} outside 1..={limit} while the decoder waits"
            )
    if got != expected:
        raise FuzzFailure(f"decoded {len(got)} frames, the reference {len(expected)}: {got!r:.200}")
    if too_large != (verdict == "too_large"):
        raise FuzzFailure(
            f"FrameTooLarge raised={too_large} but the reference verdict is {verdict}"
        )
    if not too_large and decoder.in_frame != (verdict == "partial"):
        raise FuzzFailure(f"in_frame={decoder.in_frame} but the reference verdict is {verdict}")
    whole = FrameDecoder(limit)  # the same stream in one piece
    whole.feed(stream)
    bodies: list[bytes] = []
    try:
        while (body := whole.next_frame()) is not None:
            bodies.append(bytes(body))
    except FrameTooLarge:
        whole_verdict = "too_large"
    else:
        whole_verdict = "partial" if whole.in_frame else "boundary"
    if bodies != expected:
        raise FuzzFailure("the decoder fed in one piece disagrees with the reference parser")
    if whole_verdict != verdict:
        raise FuzzFailure(f"one-piece verdict {whole_verdict}, the reference says {verdict}")


SERVE_METHODS = ["hello", "init_model", "shutdown", "capability_probe", "release_model", "nope"]


@st.composite
def serve_inputs(draw: st.DrawFn) -> tuple[bytes, int]:
    limit = draw(st.sampled_from([64, 1024, 1 << 16]), label="limit")
    request = st.builds(
        lambda i, m, p: encode_frame({"id": i, "method": m, "params": p}),
        st.integers(0, 2**64 - 1) | st.integers(1, 9),
        st.sampled_from(SERVE_METHODS),
        st.none() | st.just({"device": "cpu"}) | st.just({"model_id": "m1"}) | st.just([1]),
    )
    segment = request | request | frame_segments(limit)
    stream = b"".join(draw(st.lists(segment, max_size=6), label="segments"))
    return stream, limit


def check_serve(case: tuple[bytes, int]) -> None:
    """serve() on a socketpair: the replayed answers, the exit code, and one stderr line
    saying why it stopped (none after ``shutdown``)."""
    stream, limit = case
    bodies, verdict = reference_frames(stream, limit)
    replay = Worker(QuickWorkload())
    expected: list[tuple[int, bool]] = []
    code = 1 if verdict != "boundary" else 0
    shutdown = False
    for body in bodies:
        frame, shutdown = exchange(replay, body)
        response = check_frame(frame)
        expected.append((response["id"], response["ok"]))
        if shutdown:
            code = 0
            break
    else:
        if verdict == "too_large":
            expected.append((0, False))

    ours, theirs = socket.socketpair()
    ours.settimeout(HANG_TIMEOUT)
    outcome: dict[str, Any] = {}
    log = io.StringIO()

    def run_serve() -> None:
        try:
            outcome["code"] = serve(theirs, Worker(QuickWorkload()), limit)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            theirs.close()

    def send() -> None:
        with contextlib.suppress(OSError):
            ours.sendall(stream)
            ours.shutdown(socket.SHUT_WR)

    received = bytearray()
    with contextlib.redirect_stderr(log):
        server = threading.Thread(target=run_serve, name="fuzz-serve", daemon=True)
        sender = threading.Thread(target=send, name="fuzz-send", daemon=True)
        server.start()
        sender.start()
        try:
            while chunk := ours.recv(1 << 16):
                received += chunk
        except TimeoutError:
            pass
        except OSError:
            pass  # a reset after the worker closed with unread input: what came before counts
        server.join(HANG_TIMEOUT)
        ours.close()
        sender.join(HANG_TIMEOUT)
    if server.is_alive():
        raise FuzzFailure(f"serve() did not return within {HANG_TIMEOUT:g} s")
    if "error" in outcome:
        raise outcome["error"]
    sent, sent_verdict = reference_frames(bytes(received), U64_MAX)
    if sent_verdict != "boundary":
        raise FuzzFailure(f"serve() sent bytes that are not whole frames ({sent_verdict})")
    try:
        answers = [check_frame(encode_frame(json.loads(b))) for b in sent]
    except ValueError as exc:
        raise FuzzFailure(f"serve() sent a frame that is not JSON: {exc}") from None
    got = [(a["id"], a["ok"]) for a in answers]
    if got != expected:
        raise FuzzFailure(f"serve() answered {got}, the replay expects {expected}")
    if outcome["code"] != code:
        raise FuzzFailure(f"serve() exited {outcome['code']}, expected {code} (verdict {verdict})")
    lines = log.getvalue().splitlines()
    if shutdown:
        if lines:
            raise FuzzFailure(f"an exit after shutdown logged {lines!r:.400}")
    elif len(lines) != 1 or not lines[0].startswith("burn-p2p worker: "):
        raise FuzzFailure(f"serve() must log exactly one line when it stops, got {lines!r:.400}")
