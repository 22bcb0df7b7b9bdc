"""The worker's side of its one connection, sans-IO (in the style of h11).

Bytes go in through :meth:`Connection.receive_buffer` and
:meth:`Connection.received` (zero-copy, what ``server.py`` uses) or
:meth:`Connection.receive_data`; events come out of
:meth:`Connection.next_event`:

- a :class:`~worker.protocol.Request`: dispatch it (``Worker.handle``) and
  send what :meth:`Connection.send_answer` makes of the answer;
- :class:`Reply`: send these bytes now (the refusal of a frame that is not a
  request; the worker keeps serving);
- :class:`Close`: stop: log its line, send its last reply, drain if told to,
  and exit with its code;
- :data:`NEED_DATA`: receive more bytes.

Every decision about the connection is made here, without sockets: EOF at a
frame boundary (exit 0), EOF inside a header or a body (exit 1), a header
over the limit (an ``ok:false`` answer with id 0, then drain, exit 1), after
``shutdown`` (exit 0, silently), a stop signal (exit 0), a broken transport
(exit 1).  Answers are encoded here too, with the fallback for results that
are not standard JSON.  Decoding and encoding run with the garbage collector
paused: they create no reference cycles, and a 10k-ref request would
otherwise trigger several collections.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from .errors import BadRequest, FrameTooLarge, WorkloadError
from .framing import DEFAULT_MAX_FRAME_BYTES, HEADER_SIZE, FrameDecoder, encode_frame
from .protocol import NO_ID, Answer, Request, error_response, ok_response, parse_request


class NeedData:
    """The event "receive more bytes" (use the :data:`NEED_DATA` singleton)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True)
class Reply:
    """Bytes to send now: the answer to a frame that was not a request."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """Stop serving: log ``log`` (if any) on stderr, send ``reply`` (if any),
    then, if ``drain``, half-close and discard input for a while, and exit
    with ``exit_code``."""

    exit_code: int
    log: str | None
    reply: bytes = b""
    drain: bool = False


Event = Request | Reply | Close | NeedData


class Connection:
    """The protocol state of one worker connection (one coordinator, one worker)."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._frames = FrameDecoder(max_frame_bytes)
        self._eof = False
        self._close: Close | None = None
        self.requests_received = 0
        """Complete frames received so far (requests or not)."""

    # -- bytes in ------------------------------------------------------------

    def receive_buffer(self) -> memoryview:
        """Where to receive the next bytes (e.g. ``sock.recv_into``); report the
        count with :meth:`received`.  Call only after :data:`NEED_DATA`."""
        return self._frames.buffer()

    def received(self, count: int) -> None:
        """``count`` bytes landed in the last :meth:`receive_buffer`; 0 means EOF."""
        if count:
            self._frames.filled(count)
        else:
            self._eof = True

    def receive_data(self, data: bytes) -> None:
        """Take ``data`` (copied); ``b""`` means EOF."""
        if data:
            self._frames.feed(data)
        else:
            self._eof = True

    # -- events out ----------------------------------------------------------

    def next_event(self) -> Event:
        """The next thing to do (see the module docstring).  Once it is a
        :class:`Close`, it stays that :class:`Close`."""
        if self._close is not None:
            return self._close
        try:
            body = self._frames.next_frame()
        except FrameTooLarge as exc:
            refusal = error_response(NO_ID, str(BadRequest(str(exc))))
            return self._closing(Close(1, str(exc), encode_frame(refusal), drain=True))
        if body is None:
            if self._eof:
                return self._closing(self._eof_decision())
            return NEED_DATA
        self.requests_received += 1
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            return parse_request(body)
        except BadRequest as exc:
            return Reply(encode_frame(error_response(exc.request_id, str(exc))))
        finally:
            if gc_enabled:
                gc.enable()

    def _eof_decision(self) -> Close:
        received, length = self._frames.progress()
        if not self._frames.in_frame:
            return Close(
                0,
                f"the coordinator closed the connection after {self.requests_received} "
                "requests; exiting",
            )
        if length is None:
            return Close(
                1,
                f"connection closed inside a frame header ({received} of {HEADER_SIZE} bytes); "
                "exiting",
            )
        return Close(
            1, f"connection closed inside a frame ({received} of {length} body bytes); exiting"
        )

    def _closing(self, close: Close) -> Close:
        self._close = close
        return close

    # -- bytes out -----------------------------------------------------------

    def send_answer(self, answer: Answer) -> bytes:
        """The frame that carries ``answer``.  A result JSON cannot carry (NaN,
        an object) becomes an ``ok:false`` naming the method instead.  After an
        answer that ends the session, :meth:`next_event` is ``Close(0)``."""
        if answer.error is None:
            response = ok_response(answer.request_id, answer.result)
        else:
            response = error_response(answer.request_id, str(answer.error))
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            data = encode_frame(response)
        except (TypeError, ValueError, RecursionError) as exc:
            refusal = WorkloadError(
                f"the result cannot be encoded as standard JSON ({exc}); hooks must return "
                "JSON-serializable values without NaN or Infinity",
                method=answer.method,
            )
            data = encode_frame(error_response(answer.request_id, str(refusal)))
        finally:
            if gc_enabled:
                gc.enable()
        if answer.ends_session:
            self._closing(Close(0, None))
        return data

    # -- the transport's own endings -------------------------------------------

    def stopped(self, reason: str) -> Close:
        """The worker received a stop signal (``reason``, e.g. ``SIGTERM``)."""
        return self._closing(
            Close(0, f"received {reason}; stopped after {self.requests_received} requests")
        )

    def receive_failed(self, exc: OSError) -> Close:
        """Receiving from the coordinator failed."""
        return self._closing(Close(1, f"connection to the coordinator failed: {exc}"))

    def send_failed(self, exc: OSError) -> Close:
        """Sending an answer failed: the coordinator is gone."""
        return self._closing(
            Close(1, f"coordinator went away while the worker was answering ({exc}); exiting")
        )
