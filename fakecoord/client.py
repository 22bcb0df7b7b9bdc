"""A coordinator-side client for one worker process, strict like the Rust one.

:meth:`WorkerClient.spawn` does what the real coordinator does: listen on
127.0.0.1 port 0, start the worker with ``--factory``, ``--config-json``,
``--connect-host`` and ``--connect-port`` (stdin and stdout on /dev/null,
``PYTHONUNBUFFERED=1``, extra import roots prepended to ``PYTHONPATH``),
accept its connection while polling the child, set TCP_NODELAY.  Then one
request at a time: ids from 1, one ``sendall`` per frame, the response id
checked, the result decoded by :mod:`fakecoord.results`.

Beyond the real coordinator: every call has a timeout (a hung worker is
killed and :class:`WorkerTimeout` raised), response frames above
``max_frame_bytes`` are refused before anything is allocated, and closing
(``close()`` or leaving the ``with`` block) sends ``shutdown`` with a short
timeout, then terminates, kills and reaps the process.  A client that is
garbage-collected or alive at interpreter exit kills and reaps its worker.

Worker stderr: with ``stderr=None`` the worker's stderr goes through a pipe
that a thread copies to this process's fd 2 (what "inherit" would show)
while keeping the last 16 KiB, so :class:`WorkerExited` can carry the tail.
With a path, the file is appended to and its end read back.  With a file
object that has a real file descriptor, the descriptor is given to the child
(the tail is read back when it is a regular file); with one that has none
(``io.StringIO``), the pipe's bytes are copied into it.

A client is not thread-safe: use it from one thread at a time.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from worker.framing import HEADER, HEADER_SIZE, encode_frame

from . import results
from .errors import (
    ClientClosed,
    FakecoordError,
    InvalidParams,
    ProtocolViolation,
    RemoteError,
    WorkerExited,
    WorkerTimeout,
)

DEFAULT_CALL_TIMEOUT = 600.0
DEFAULT_ACCEPT_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_MAX_FRAME_BYTES = 1 << 30
EXIT_GRACE = 2.0
"""Seconds a worker gets to exit by itself (after ``shutdown`` or EOF) before the next step."""
ACCEPT_POLL = 0.05
TAIL_DRAIN = 2.0
"""Seconds to let a dead worker's stderr pipe drain before its tail is reported (returns at EOF)."""
STDERR_TAIL_BYTES = 16 * 1024
TAIL_CHARS = 4000

_WORKER_ROOT = str(Path(__file__).resolve().parent.parent)
"""The directory holding the ``worker`` package: put on the default command's PYTHONPATH."""

StderrTarget = None | str | os.PathLike | int | IO[Any]


# ---------------------------------------------------------------------------
# The worker's stderr


class _StderrCapture:
    """Routes the child's stderr (see the module docstring) and keeps its tail."""

    def __init__(self, target: StderrTarget) -> None:
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._read_fd: int | None = None
        self._write_fd: int | None = None
        self._tail_path: str | None = None
        self._tail_fd: int | None = None
        self._sink: Any = None
        self._sink_fd: int | None = None
        self._owned_file: IO[bytes] | None = None
        self.popen_arg: Any
        if target is None:
            self._sink_fd = 2
            self._make_pipe()
        elif isinstance(target, (str, os.PathLike)):
            self._tail_path = os.fspath(target)
            self._owned_file = open(self._tail_path, "ab")  # closed in started() or close()
            self.popen_arg = self._owned_file
        elif isinstance(target, int):
            self.popen_arg = target
            self._tail_fd = target if target >= 0 and _is_regular(target) else None
        else:
            fd = _fileno(target)
            if fd is None:
                self._sink = target
                self._make_pipe()
            else:
                target.flush()
                self.popen_arg = fd
                self._tail_fd = fd if _is_regular(fd) else None

    def _make_pipe(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self.popen_arg = self._write_fd

    def started(self) -> None:
        """Call once the child holds its stderr: drop our copies, start the copier."""
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
            self._thread = threading.Thread(
                target=self._copy, name="fakecoord-worker-stderr", daemon=True
            )
            self._thread.start()

    def _copy(self) -> None:
        assert self._read_fd is not None
        decoder = None
        if self._sink is not None and isinstance(self._sink, io.TextIOBase):
            import codecs

            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._tail += chunk
                del self._tail[:-STDERR_TAIL_BYTES]
            try:
                if self._sink_fd is not None:
                    _write_all(self._sink_fd, chunk)
                elif decoder is not None:
                    self._sink.write(decoder.decode(chunk))
                else:
                    self._sink.write(chunk)
            except (OSError, ValueError):
                # The sink went away (closed stream, EPIPE): keep the tail anyway.
                self._sink_fd = None
                self._sink = None
                decoder = None

    def tail(self, wait: float = 0.0) -> str:
        """The end of the child's stderr; waits up to ``wait`` s for a pipe to drain."""
        if self._thread is not None:
            self._thread.join(wait)
            with self._lock:
                data = bytes(self._tail)
        elif self._tail_path is not None:
            try:
                with open(self._tail_path, "rb") as f:
                    data = _read_end(f.fileno())
            except OSError:
                data = b""
        elif self._tail_fd is not None:
            try:
                data = _read_end(self._tail_fd)
            except OSError:
                data = b""
        else:
            data = b""
        text = data.decode("utf-8", errors="replace")
        if len(text) > TAIL_CHARS:
            text = text[-TAIL_CHARS:]
            text = text.partition("\n")[2] or text
        return text

    def close(self, wait: float = EXIT_GRACE) -> None:
        """Release our ends.  The copier stops at EOF (when every holder of the
        pipe's write end is gone); it is a daemon thread, so one kept alive by a
        grandchild does not block interpreter exit."""
        if self._owned_file is not None:
            self._owned_file.close()
            self._owned_file = None
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        if self._thread is not None:
            self._thread.join(wait)
            if not self._thread.is_alive() and self._read_fd is not None:
                os.close(self._read_fd)
                self._read_fd = None
        elif self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None


def _fileno(target: Any) -> int | None:
    try:
        return target.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _read_end(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    start = max(0, size - STDERR_TAIL_BYTES)
    return os.pread(fd, size - start, start)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------------------
# Process cleanup shared by close() and the finalizer


def _reap(process: subprocess.Popen, grace: float) -> None:
    """Wait ``grace`` s for the process to exit, then SIGTERM, then SIGKILL; always reap."""
    for stop in (None, process.terminate, process.kill):
        if process.poll() is not None:
            return
        if stop is not None:
            try:
                stop()
            except OSError:
                pass
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    try:
        process.wait(10.0)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state); Popen reaps it later


def _finalize(process: subprocess.Popen, sock: socket.socket, capture: _StderrCapture) -> None:
    sock.close()
    if process.poll() is None:
        try:
            process.kill()
        except OSError:
            pass
    try:
        process.wait(10.0)
    except subprocess.TimeoutExpired:
        pass
    capture.close(wait=0.5)


# ---------------------------------------------------------------------------
# The client


class WorkerClient:
    """A connection to one worker process; build it with :meth:`spawn`."""

    def __init__(
        self,
        process: subprocess.Popen,
        sock: socket.socket,
        capture: _StderrCapture,
        argv: Sequence[str],
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        exit_grace: float = EXIT_GRACE,
    ) -> None:
        self.process = process
        self.argv = list(argv)
        self.call_timeout = call_timeout
        self.shutdown_timeout = shutdown_timeout
        self.max_frame_bytes = max_frame_bytes
        self.exit_grace = exit_grace
        self._sock = sock
        self._capture = capture
        self._next_id = 1
        self._closed = False
        self._shut_down = False
        self._broken: str | None = None
        self._finalizer = weakref.finalize(self, _finalize, process, sock, capture)

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
    ) -> WorkerClient:
        """Start a worker and accept its connection.

        ``worker_cmd`` replaces ``[sys.executable, "-m", "worker"]`` (the four
        flags are appended); the default command also gets the directory of
        this checkout's ``worker`` package on its PYTHONPATH.  ``env`` is the
        child's whole environment (default: a copy of ``os.environ``);
        ``pythonpath`` entries are prepended to its PYTHONPATH; ``config``
        (default ``{}``) is JSON-encoded.  ``exit_grace`` is how long a worker
        gets to exit by itself (after ``shutdown``, EOF or a crash) before the
        client moves on to SIGTERM, then SIGKILL.

        Raises :class:`InvalidParams` if ``config`` is not standard JSON,
        :class:`FakecoordError` if the command cannot be started,
        :class:`WorkerExited` if the worker exits before connecting (with its
        status and stderr tail), :class:`WorkerTimeout` if it does not connect
        within ``accept_timeout`` s (it is then killed).
        """
        try:
            config_json = json.dumps({} if config is None else config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParams(f"spawn: config cannot be sent as standard JSON ({exc})") from None
        argv = list(worker_cmd) if worker_cmd is not None else [sys.executable, "-m", "worker"]
        if not argv:
            raise InvalidParams("spawn: worker_cmd must name a program, got an empty list")
        child_env = dict(os.environ if env is None else env)
        paths = [os.fspath(p) for p in pythonpath]
        if worker_cmd is None:
            paths.append(_WORKER_ROOT)
        if child_env.get("PYTHONPATH"):
            paths.append(child_env["PYTHONPATH"])
        if paths:
            child_env["PYTHONPATH"] = os.pathsep.join(paths)
        child_env["PYTHONUNBUFFERED"] = "1"

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        capture: _StderrCapture | None = None
        process: subprocess.Popen | None = None
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            argv += ["--factory", factory, "--config-json", config_json]
            argv += ["--connect-host", "127.0.0.1", "--connect-port", str(port)]
            try:
                capture = _StderrCapture(stderr)
            except OSError as exc:
                raise FakecoordError(f"spawn: cannot open stderr target {stderr!r}: {exc}") from exc
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=capture.popen_arg,
                    env=child_env,
                    cwd=cwd,
                )
            except OSError as exc:
                raise FakecoordError(f"spawn: cannot start the worker {argv[0]!r}: {exc}") from exc
            capture.started()
            sock = _accept(listener, process, capture, accept_timeout)
        except BaseException:
            if process is not None:
                _reap(process, 0.0)
            if capture is not None:
                capture.close(wait=0.5)
            raise
        finally:
            listener.close()
        return cls(
            process,
            sock,
            capture,
            argv,
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
        """The end of what the worker wrote on stderr so far (see the module docstring)."""
        return self._capture.tail()

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
            self._sock.close()
            _reap(self.process, self.exit_grace)
            self._capture.close(self.exit_grace)
            self._finalizer.detach()

    def kill(self) -> None:
        """SIGKILL the worker now and reap it; later calls raise :class:`ClientClosed`."""
        self._break("the worker was killed by the client's kill()")
        try:
            self.process.kill()
        except OSError:
            pass
        _reap(self.process, self.exit_grace)

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason

    def _ensure_usable(self, method: str) -> None:
        if self._closed:
            raise ClientClosed(f"{method}: the client is closed")
        if self._broken is not None:
            raise ClientClosed(
                f"{method}: the client is unusable after an earlier error: {self._broken}"
            )
        if self._shut_down:
            raise ClientClosed(f"{method}: the worker was already sent shutdown")
        returncode = self.process.poll()
        if returncode is not None:
            self._break(f"the worker exited with status {returncode}")
            raise WorkerExited(
                returncode, self._capture.tail(TAIL_DRAIN), method, when="before the call"
            )

    # -- transport -----------------------------------------------------------

    def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Send one request and return its raw ``result`` (None when absent).

        Checks the frame, the response id and ``ok``, nothing else.  Raises
        :class:`RemoteError` for ``ok: false``; :class:`ProtocolViolation`,
        :class:`WorkerExited`, :class:`WorkerTimeout` (the worker is then killed)
        or :class:`ClientClosed` otherwise.  ``timeout`` defaults to ``call_timeout``.
        """
        result = self._call(method, params, timeout)
        return None if result is results.MISSING else result

    def _call_decoded(self, method: str, params: Any, timeout: float | None) -> Any:
        result = self._call(method, params, timeout)
        return results.decode_result(method, result)

    def _call(self, method: str, params: Any, timeout: float | None) -> Any:
        self._ensure_usable(method)
        request_id = self._next_id
        try:
            frame = encode_frame({"id": request_id, "method": method, "params": params})
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidParams(
                f"{method}: params cannot be sent as standard JSON ({exc})"
            ) from None
        self._next_id += 1
        limit = self.call_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        in_flight = True
        try:
            self._send(method, frame, deadline, limit)
            body = self._receive(method, deadline, limit)
            in_flight = False
            if method == "shutdown":
                self._shut_down = True
            return results.parse_response(method, body, request_id)
        except RemoteError:
            raise
        except ProtocolViolation as exc:
            self._break(str(exc))
            raise
        except BaseException as exc:
            # A timeout, a dead worker, or an interrupt mid-call: the stream is
            # out of step, so no further request can be matched to its answer.
            if in_flight:
                self._break(f"{method} did not complete ({type(exc).__name__}: {exc})")
            raise

    def _send(self, method: str, frame: bytes, deadline: float, limit: float) -> None:
        self._sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            self._sock.sendall(frame)
        except TimeoutError:
            self._timed_out(method, limit, "while sending the request")
        except OSError as exc:
            self._connection_lost(method, f"while the request was sent ({exc})")

    def _receive(self, method: str, deadline: float, limit: float) -> bytearray:
        header = self._recv_exact(method, HEADER_SIZE, deadline, limit, "before a response")
        (length,) = HEADER.unpack(header)
        if length == 0:
            raise ProtocolViolation(
                f"{method}: the response frame has length 0; expected a JSON object",
                method,
                "response",
            )
        if length > self.max_frame_bytes:
            raise ProtocolViolation(
                f"{method}: the response frame announces {length} bytes, above the client's "
                f"limit of {self.max_frame_bytes} bytes (max_frame_bytes)",
                method,
                "response",
            )
        return self._recv_exact(method, length, deadline, limit, f"inside a {length}-byte frame")

    def _recv_exact(
        self, method: str, size: int, deadline: float, limit: float, where: str
    ) -> bytearray:
        buf = bytearray(size)
        view = memoryview(buf)
        filled = 0
        while filled < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out(method, limit, f"{where} ({filled} of {size} bytes received)")
            self._sock.settimeout(remaining)
            try:
                got = self._sock.recv_into(view[filled:])
            except TimeoutError:
                self._timed_out(method, limit, f"{where} ({filled} of {size} bytes received)")
            except OSError as exc:
                self._connection_lost(method, f"{where} ({exc})")
            if not got:
                self._connection_lost(method, f"{where} ({filled} of {size} bytes received)")
            filled += got
        return buf

    def _timed_out(self, method: str, limit: float, where: str) -> NoReturn:
        self._break(f"{method} timed out")
        try:
            self.process.kill()
        except OSError:
            pass
        _reap(self.process, self.exit_grace)
        tail = self._capture.tail(TAIL_DRAIN).rstrip()
        text = f"{method}: no response within {limit:g} s ({where}); the worker was killed"
        if tail:
            text += f"; the end of its stderr:\n{tail}"
        raise WorkerTimeout(text, method, limit)

    def _connection_lost(self, method: str, where: str) -> NoReturn:
        self._break(f"the connection closed during {method}")
        try:
            returncode = self.process.wait(self.exit_grace)
        except subprocess.TimeoutExpired:
            _reap(self.process, 0.0)
            raise ProtocolViolation(
                f"{method}: the worker closed the connection {where} but did not exit; "
                "it was killed",
                method,
                "response",
            ) from None
        raise WorkerExited(
            returncode,
            self._capture.tail(TAIL_DRAIN),
            method,
            when=f"during the call: connection closed {where}",
        )

    # -- typed protocol methods (PROTOCOL.md §2) -----------------------------

    def hello(self, *, timeout: float | None = None) -> dict:
        """``{"protocol_version": 1|2, "workload_name": str, "capabilities": [str]}``."""
        return self._call_decoded("hello", None, timeout)

    def capability_probe(self, *, timeout: float | None = None) -> dict:
        """``{"runtime_device": str, "capability": CapabilityEstimate}``."""
        return self._call_decoded("capability_probe", None, timeout)

    def init_model(self, device: str = "cpu", *, timeout: float | None = None) -> str:
        """A new model handle."""
        return self._call_decoded("init_model", {"device": device}, timeout)

    def parameter_pack_plan(
        self,
        device: str,
        state_dict_filter: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict:
        """The Plan for ``device`` (an empty filter is sent when None)."""
        params = {"device": device, "state_dict_filter": _filter(state_dict_filter)}
        return self._call_decoded("parameter_pack_plan", params, timeout)

    def train_window(
        self, model_id: str, batches: Sequence[Any], *, timeout: float | None = None
    ) -> dict:
        """The workload's metrics, strictly decoded (no coordinator additions: see ``handling``)."""
        params = {"model_id": model_id, "batches": list(batches)}
        return self._call_decoded("train_window", params, timeout)

    def evaluate(self, model_id: str, split: Any, *, timeout: float | None = None) -> dict:
        """Metrics; ``split`` is "Train", "Validation", "Test" or ``{"Custom": str}``."""
        return self._call_decoded("evaluate", {"model_id": model_id, "split": split}, timeout)

    def apply_patch(self, patch: Mapping[str, Any], *, timeout: float | None = None) -> str | dict:
        """A PatchOutcome: "Applied", "RequiresRestart" or ``{"Rejected": str}``."""
        return self._call_decoded("apply_patch", dict(patch), timeout)

    def load_model_artifact(
        self, model_id: str, artifact_path: str | os.PathLike, *, timeout: float | None = None
    ) -> None:
        params = {"model_id": model_id, "artifact_path": os.fspath(artifact_path)}
        self._call_decoded("load_model_artifact", params, timeout)

    def materialize_model_artifact(
        self, model_id: str, artifact_path: str | os.PathLike, *, timeout: float | None = None
    ) -> None:
        params = {"model_id": model_id, "artifact_path": os.fspath(artifact_path)}
        self._call_decoded("materialize_model_artifact", params, timeout)

    def export_parameter_pack(
        self,
        model_id: str,
        parameter_pack_path: str | os.PathLike,
        model_schema_hash: str,
        state_dict_filter: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Export a pack (``state_dict_filter`` is omitted from the request when None)."""
        params: dict[str, Any] = {
            "model_id": model_id,
            "parameter_pack_path": os.fspath(parameter_pack_path),
            "model_schema_hash": model_schema_hash,
        }
        if state_dict_filter is not None:
            params["state_dict_filter"] = _filter(state_dict_filter)
        self._call_decoded("export_parameter_pack", params, timeout)

    def import_parameter_pack(
        self,
        device: str,
        parameter_pack_path: str | os.PathLike,
        state_dict_filter: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """A new model handle holding the pack's values."""
        params: dict[str, Any] = {
            "device": device,
            "parameter_pack_path": os.fspath(parameter_pack_path),
        }
        if state_dict_filter is not None:
            params["state_dict_filter"] = _filter(state_dict_filter)
        return self._call_decoded("import_parameter_pack", params, timeout)

    def run_inner_loop(self, job: Mapping[str, Any], *, timeout: float | None = None) -> dict:
        """An InnerLoopResult (``inner_optimizer_state_*`` filled in as None when absent)."""
        return self._call_decoded("run_inner_loop", dict(job), timeout)

    def merge_candidate_models(
        self,
        base_model_id: str,
        candidates: Sequence[Mapping[str, Any]],
        policy: Any,
        *,
        timeout: float | None = None,
    ) -> str | None:
        """A new model handle, or None when the workload declined to merge."""
        params = {
            "base_model_id": base_model_id,
            "candidates": [dict(c) for c in candidates],
            "policy": policy,
        }
        return self._call_decoded("merge_candidate_models", params, timeout)

    def apply_single_root_ema(
        self, base_model_id: str, merged_model_id: str, policy: Any, *, timeout: float | None = None
    ) -> str:
        params = {
            "base_model_id": base_model_id,
            "merged_model_id": merged_model_id,
            "policy": policy,
        }
        return self._call_decoded("apply_single_root_ema", params, timeout)

    def reconcile_canonical_model(
        self,
        local_model_id: str,
        canonical_model_id: str,
        strategy: Any,
        *,
        timeout: float | None = None,
    ) -> str:
        params = {
            "local_model_id": local_model_id,
            "canonical_model_id": canonical_model_id,
            "strategy": strategy,
        }
        return self._call_decoded("reconcile_canonical_model", params, timeout)

    def release_model(self, model_id: str, *, timeout: float | None = None) -> None:
        """Strict: a refusal raises :class:`RemoteError` (the real coordinator ignores it)."""
        self._call_decoded("release_model", {"model_id": model_id}, timeout)

    def shutdown(self, *, timeout: float | None = None) -> None:
        """Send ``shutdown`` and wait up to ``shutdown_timeout`` s for the worker to exit.

        ``timeout`` (default ``shutdown_timeout``) bounds the answer.  Later
        calls raise :class:`ClientClosed`; :meth:`close` still reaps the process.
        """
        self._call_decoded("shutdown", None, self.shutdown_timeout if timeout is None else timeout)
        try:
            self.process.wait(self.shutdown_timeout)
        except subprocess.TimeoutExpired:
            pass


def _filter(state_dict_filter: Mapping[str, Any] | None) -> dict:
    if state_dict_filter is None:
        return {"include_globs": [], "exclude_globs": []}
    return dict(state_dict_filter)


def _accept(
    listener: socket.socket,
    process: subprocess.Popen,
    capture: _StderrCapture,
    timeout: float,
) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        returncode = process.poll()
        if returncode is not None:
            raise WorkerExited(returncode, capture.tail(TAIL_DRAIN), when="before connecting")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _reap(process, 0.0)
            text = f"the worker did not connect within {timeout:g} s; it was killed"
            tail = capture.tail(TAIL_DRAIN).rstrip()
            if tail:
                text += f"; the end of its stderr:\n{tail}"
            raise WorkerTimeout(text, None, timeout)
        listener.settimeout(min(ACCEPT_POLL, remaining))
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        uid = peer_uid(sock)
        if uid is not None and uid != os.getuid():
            # Another user's process raced the worker to our port (it is in
            # the worker's argv): drop it and keep waiting for the worker.
            print(
                f"fakecoord: refused a connection on port {listener.getsockname()[1]} from "
                f"uid {uid}; the worker runs as uid {os.getuid()}",
                file=sys.stderr,
            )
            sock.close()
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _proc_net_address(host: str, port: int) -> str:
    """/proc/net/tcp's spelling of an IPv4 address: host-order hex, then the port."""
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the other end of loopback TCP connection ``sock``.

    Linux only (the peer's row in ``/proc/net/tcp``); None where that cannot
    be determined.  A process of our own uid could ptrace the worker anyway,
    so the uid is the boundary worth checking.
    """
    try:
        peer = _proc_net_address(*sock.getpeername()[:2])
        ours = _proc_net_address(*sock.getsockname()[:2])
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1] == peer and fields[2] == ours:
                    return int(fields[7])
    except (OSError, ValueError, IndexError):
        return None
    return None


__all__ = [
    "DEFAULT_ACCEPT_TIMEOUT",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "WorkerClient",
]
