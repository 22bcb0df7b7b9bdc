"""A coordinator-side client for one worker process, strict like the Rust one.

:meth:`WorkerClient.spawn` starts the worker as the real coordinator does
(:mod:`fakecoord.spawn`).  Then one request at a time: ids from 1, one
``sendall`` per frame, the response envelope decoded and its id checked,
the result decoded into the method's Rust type (:mod:`fakecoord.spec`).
The typed methods (``hello()``, ``init_model(device)``, ...) are made from
the spec's table, one per protocol method; :meth:`WorkerClient.call` sends
any method and returns the raw result.

Beyond the real coordinator: every call has a timeout (a hung worker is
killed and :class:`WorkerTimeout` raised), response frames above
``max_frame_bytes`` are refused before anything is allocated, and closing
(``close()`` or leaving the ``with`` block) sends ``shutdown`` with a short
timeout, then terminates, kills and reaps the process.  A client that is
garbage-collected or alive at interpreter exit kills and reaps its worker.
Where the worker's stderr goes: :mod:`fakecoord.stderr`.

A client is not thread-safe: use it from one thread at a time.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import spec, transport, wire
from .errors import (
    ClientClosed,
    DecodeError,
    FakecoordError,
    InvalidParams,
    ProtocolViolation,
    RemoteError,
    WorkerExited,
    WorkerTimeout,
)
from .forkserver import ForkServer
from .spawn import DEFAULT_ACCEPT_TIMEOUT, TAIL_DRAIN, Spawned, kill, reap, spawn_worker
from .stderr import StderrTarget

DEFAULT_CALL_TIMEOUT = 600.0
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_MAX_FRAME_BYTES = 1 << 30
EXIT_GRACE = 2.0
"""Seconds a worker gets to exit by itself (after ``shutdown`` or EOF) before the next step."""


def _finalize(worker: Spawned) -> None:
    worker.sock.close()
    kill(worker.process)
    worker.capture.close(wait=0.5)


class WorkerClient:
    """A connection to one worker process; build it with :meth:`spawn`.

    Besides the methods below it has one typed method per protocol method
    (see :data:`fakecoord.spec.METHODS`), e.g. ``init_model(device="cpu",
    *, timeout=None) -> str``.
    """

    def __init__(
        self,
        worker: Spawned,
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        exit_grace: float = EXIT_GRACE,
    ) -> None:
        self.process = worker.process
        self.argv = list(worker.argv)
        self.call_timeout = call_timeout
        self.shutdown_timeout = shutdown_timeout
        self.max_frame_bytes = max_frame_bytes
        self.exit_grace = exit_grace
        self._worker = worker
        self._sock = worker.sock
        self._next_id = 1
        self._closed = False
        self._shut_down = False
        self._broken: str | None = None
        self._finalizer = weakref.finalize(self, _finalize, worker)

    @classmethod
    def spawn(
        cls,
        factory: str,
        config: Any = None,
        *,
        worker_cmd: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        pythonpath: Iterable[str | os.PathLike] = (),
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
        stderr: StderrTarget = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        exit_grace: float = EXIT_GRACE,
        forkserver: ForkServer | None = None,
    ) -> WorkerClient:
        """Start a worker and accept its connection.

        ``worker_cmd`` replaces ``[sys.executable, "-m", "worker"]`` (the four
        flags are appended); the default command also gets the directory of
        this distribution's ``worker`` package on its PYTHONPATH.  ``env`` is
        the child's whole environment (default: a copy of ``os.environ``);
        ``pythonpath`` entries are prepended to its PYTHONPATH; ``config``
        (default ``{}``) is JSON-encoded.  ``exit_grace`` is how long a worker
        gets to exit by itself (after ``shutdown``, EOF or a crash) before the
        client moves on to SIGTERM, then SIGKILL.

        Raises :class:`InvalidParams` if ``config`` is not standard JSON,
        :class:`~fakecoord.errors.SpawnError` if the command cannot be started,
        :class:`WorkerExited` if the worker exits before connecting (with its
        status and stderr tail), :class:`WorkerTimeout` if it does not connect
        within ``accept_timeout`` s (it is then killed).  ``forkserver``: see
        :func:`~fakecoord.spawn.spawn_worker`.
        """
        worker = spawn_worker(
            factory,
            config,
            worker_cmd=worker_cmd,
            env=env,
            cwd=cwd,
            pythonpath=pythonpath,
            stderr=stderr,
            accept_timeout=accept_timeout,
            forkserver=forkserver,
        )
        return cls(
            worker,
            call_timeout=call_timeout,
            shutdown_timeout=shutdown_timeout,
            max_frame_bytes=max_frame_bytes,
            exit_grace=exit_grace,
        )

    # -- lifecycle -----------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The worker's exit status, or None while it runs."""
        return self.process.poll()

    @property
    def closed(self) -> bool:
        return self._closed

    def stderr_tail(self) -> str:
        """The end of what the worker wrote on stderr so far (see :mod:`fakecoord.stderr`)."""
        return self._worker.stderr_tail()

    if TYPE_CHECKING:
        # The typed protocol methods are made from fakecoord.spec at import
        # (see the bottom of this module); type checkers see them as this.
        def __getattr__(self, method: str) -> Callable[..., Any]: ...

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Send ``shutdown`` (``shutdown_timeout``), then terminate, kill and reap.

        Idempotent; never raises for a worker that misbehaves while closing.
        """
        if self._closed:
            return
        try:
            if not self._shut_down and self._broken is None and self.process.poll() is None:
                try:
                    self._call("shutdown", None, self.shutdown_timeout)
                except FakecoordError:
                    pass
        finally:
            self._closed = True
            # Closing the socket first lets a worker that missed shutdown exit at EOF.
            self._worker.close(self.exit_grace)
            self._finalizer.detach()

    def kill(self) -> None:
        """SIGKILL the worker now and reap it; later calls raise :class:`ClientClosed`."""
        self._break("the worker was killed by the client's kill()")
        try:
            self.process.kill()
        except OSError:
            pass
        reap(self.process, self.exit_grace)

    def shutdown(self, *, timeout: float | None = None) -> None:
        """Send ``shutdown`` and wait up to ``shutdown_timeout`` s for the worker to exit.

        ``timeout`` (default ``shutdown_timeout``) bounds the answer.  Later
        calls raise :class:`ClientClosed`; :meth:`close` still reaps the process.
        """
        self._invoke("shutdown", {}, self.shutdown_timeout if timeout is None else timeout)
        try:
            self.process.wait(self.shutdown_timeout)
        except subprocess.TimeoutExpired:
            pass

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason

    def _ensure_usable(self, method: str) -> None:
        if self._closed:
            raise ClientClosed(f"{method}: the client is closed", method)
        if self._broken is not None:
            raise ClientClosed(
                f"{method}: the client is unusable after an earlier error: {self._broken}", method
            )
        if self._shut_down:
            raise ClientClosed(f"{method}: the worker was already sent shutdown", method)
        returncode = self.process.poll()
        if returncode is not None:
            self._break(f"the worker exited with status {returncode}")
            raise WorkerExited(
                returncode, self._worker.stderr_tail(TAIL_DRAIN), method, when="before the call"
            )

    # -- calls -----------------------------------------------------------------

    def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Send one request and return its raw ``result`` (None when absent).

        Checks the frame, the envelope (as serde would: the result must be a
        valid ``serde_json::Value``), the response id and ``ok``, nothing
        else.  Raises :class:`RemoteError` for ``ok: false``;
        :class:`ProtocolViolation`, :class:`WorkerExited`, :class:`WorkerTimeout`
        (the worker is then killed) or :class:`ClientClosed` otherwise.
        ``timeout`` defaults to ``call_timeout``.
        """
        result = self._call(method, params, timeout)
        return None if result is spec.MISSING else result

    def _invoke(self, method: str, arguments: Mapping[str, Any], timeout: float | None) -> Any:
        """A typed call: params built from the spec, the result decoded and unwrapped."""
        result = self._call(method, spec.build_params(method, arguments), timeout)
        return spec.decode_result(method, result, validated=True)

    def _call(self, method: str, params: Any, timeout: float | None) -> Any:
        self._ensure_usable(method)
        request_id = self._next_id
        try:
            frame = wire.encode_request(request_id, method, params)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidParams(
                f"{method}: params cannot be sent as standard JSON ({exc})", method
            ) from None
        self._next_id += 1
        limit = self.call_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        in_flight = True
        try:
            try:
                transport.send_all(self._sock, frame, deadline)
                body = transport.receive_frame(self._sock, deadline, self.max_frame_bytes)
            except TimeoutError as exc:
                self._timed_out(method, limit, str(exc))
            except ConnectionError as exc:
                self._connection_lost(method, str(exc))
            in_flight = False
            if method == "shutdown":
                self._shut_down = True
            return spec.parse_response(method, body, request_id)
        except RemoteError:
            raise
        except DecodeError as exc:
            if exc.method is None:
                exc = exc.at(method=method)
            self._break(str(exc))
            raise exc from None
        except ProtocolViolation as exc:
            self._break(str(exc))
            raise
        except BaseException as exc:
            # A timeout, a dead worker, or an interrupt mid-call: the stream is
            # out of step, so no further request can be matched to its answer.
            if in_flight:
                self._break(f"{method} did not complete ({type(exc).__name__}: {exc})")
            raise

    def _timed_out(self, method: str, limit: float, where: str) -> NoReturn:
        self._break(f"{method} timed out")
        try:
            self.process.kill()
        except OSError:
            pass
        reap(self.process, self.exit_grace)
        tail = self._worker.stderr_tail(TAIL_DRAIN).rstrip()
        text = f"{method}: no response within {limit:g} s ({where}); the worker was killed"
        if tail:
            text += f"; the end of its stderr:\n{tail}"
        raise WorkerTimeout(text, method, limit)

    def _connection_lost(self, method: str, where: str) -> NoReturn:
        self._break(f"the connection closed during {method}")
        try:
            returncode = self.process.wait(self.exit_grace)
        except subprocess.TimeoutExpired:
            reap(self.process, 0.0)
            raise ProtocolViolation(
                f"{method}: the worker closed the connection {where} but did not exit; "
                "it was killed",
                method,
                "response",
            ) from None
        raise WorkerExited(
            returncode,
            self._worker.stderr_tail(TAIL_DRAIN),
            method,
            when=f"during the call: connection closed {where}",
        )


# ---------------------------------------------------------------------------
# The typed protocol methods, made from the spec


def _typed_method(m: spec.Method) -> Any:
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for arg in m.client_args:
        default = inspect.Parameter.empty if arg.default is spec.REQUIRED else arg.default
        parameters.append(
            inspect.Parameter(arg.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
        )
    parameters.append(inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, default=None))
    signature = inspect.Signature(parameters)

    def typed(self: WorkerClient, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        timeout = arguments.pop("timeout")
        return self._invoke(m.name, arguments, timeout)

    typed.__name__ = m.name
    typed.__qualname__ = f"WorkerClient.{m.name}"
    typed.__doc__ = m.doc
    typed.__signature__ = signature  # type: ignore[attr-defined]
    return typed


for _m in spec.METHODS.values():
    if _m.name not in WorkerClient.__dict__:
        setattr(WorkerClient, _m.name, _typed_method(_m))
del _m


__all__ = [
    "DEFAULT_ACCEPT_TIMEOUT",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "WorkerClient",
]
