"""The shared oracle: what every fuzzed input must satisfy, whatever its target.

- an answer is exactly one standard-JSON response frame, with a sane id, and
  never an "internal error" (an unexpected exception in the worker);
- an error text is at most :data:`~worker.errors.MAX_ERROR_CHARS` characters,
  carries no control character but newlines and tabs, and no line that could
  pass for the worker's own ``burn-p2p worker:`` log line (issue #9 item 5);
- a load is judged against an independent validity oracle: a valid input
  loads exactly, an invalid one is refused with the target unchanged;
- what a load allocates stays within a small multiple of the data it really
  holds plus a fixed allowance (:func:`check_allocation`, issue #9 item 2);
- no descriptor leaks, no ``.partial-`` entry remains, nothing hangs past
  :data:`HANG_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import tempfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.connection import Close, Connection, Reply
from worker.framing import HEADER
from worker.protocol import Request
from worker.service import Worker

from .values import U64_MAX

# The contract's limits (SECURITY.md), stated here rather than imported, so the
# oracle judges the worker instead of agreeing with it (tests/test_fuzz.py checks
# that the worker's constants are these).
MAX_ERROR_CHARS = 16 * 1024
MAX_SHOWN_VALUE_CHARS = 80
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_ITEMS = 1 << 17
MAX_HEADER_BYTES = 32 * 1024 * 1024
HEADER_FIXED_BYTES = 1024 * 1024
HEADER_FIXED_ITEMS = 4096

HANG_TIMEOUT = 20.0
"""Seconds one input may take before it counts as a hang (generous: the box is shared)."""
ALLOCATION_PER_DATA_BYTE = 10
"""Python bytes a load may allocate per byte of the text it parses (a manifest, a
header): the text, its decoded form and its strings (torch tensors, the values
themselves, are not traced)."""
ALLOCATION_ALLOWANCE = 8 << 20
"""Python bytes a load may allocate beyond that, whatever its input."""


def count_json_values(data: bytes) -> int:
    """The contract's upper bound on the values a JSON text holds (commas, colons,
    brackets and braces, plus one)."""
    return sum(data.count(c) for c in (b",", b":", b"[", b"{")) + 1


class FuzzFailure(AssertionError):
    """The worker broke a property on one input."""


# -- process figures ---------------------------------------------------------------------------


def fd_count() -> int | None:
    """Open descriptors of this process (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def rss_kib() -> tuple[int | None, int]:
    """(current RSS, peak RSS) in KiB."""
    current = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1])
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- answers, errors, hangs, leaks ------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise FuzzFailure(f"response carries the non-standard JSON constant {name}")


def exchange(worker: Worker, body: bytes) -> tuple[bytes, bool]:
    """(what the worker sends for one frame body, whether it then closes the
    connection), through the same Connection and Worker.handle as ``serve``."""
    connection = Connection()
    connection.receive_data(HEADER.pack(len(body)) + body)
    event = connection.next_event()
    if isinstance(event, Reply):
        return event.data, False
    if not isinstance(event, Request):
        raise FuzzFailure(f"one whole frame gave the event {event!r:.200}")
    frame = connection.send_answer(worker.handle(event))
    return frame, isinstance(connection.next_event(), Close)


def respond(worker: Worker, body: bytes) -> bytes:
    """What the worker sends for one frame body."""
    return exchange(worker, body)[0]


def reference_frames(stream: bytes, limit: int) -> tuple[list[bytes], str]:
    """An independent framing parser: (bodies, "boundary" | "partial" | "too_large")."""
    bodies: list[bytes] = []
    pos = 0
    while True:
        if pos == len(stream):
            return bodies, "boundary"
        if len(stream) - pos < 8:
            return bodies, "partial"
        length = int.from_bytes(stream[pos : pos + 8], "big")
        if length > limit:
            return bodies, "too_large"
        if len(stream) - pos - 8 < length:
            return bodies, "partial"
        bodies.append(stream[pos + 8 : pos + 8 + length])
        pos += 8 + length


def check_error_text(error: str) -> None:
    """An ``ok:false`` text: bounded, no control characters but newlines and tabs, and
    no line that could pass for the worker's own log line (issue #9 item 5)."""
    if len(error) > MAX_ERROR_CHARS:
        raise FuzzFailure(f"error text of {len(error)} characters: {error[:200]!r}")
    controls = {ch for ch in error if not ch.isprintable() and ch not in "\n\t"}
    if controls:
        raise FuzzFailure(
            f"error text carries control characters {sorted(controls)!r}: {error[:200]!r}"
        )
    forged = [line for line in error.splitlines()[1:] if line.startswith("burn-p2p worker:")]
    if forged:
        raise FuzzFailure(f"error text carries a forged log line: {forged[0][:200]!r}")


def check_frame(frame: bytes) -> dict:
    """``frame`` must be exactly one standard-JSON response frame; return the response."""
    bodies, verdict = reference_frames(frame, U64_MAX)
    if verdict != "boundary" or len(bodies) != 1:
        raise FuzzFailure(f"answer is not exactly one frame ({verdict}, {len(bodies)} bodies)")
    (body,) = bodies
    try:
        response = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FuzzFailure(f"answer is not UTF-8 JSON: {exc}") from None
    if not isinstance(response, dict) or type(response.get("id")) is not int:
        raise FuzzFailure(f"answer is not a response object: {response!r:.200}")
    if not 0 <= response["id"] <= U64_MAX or type(response.get("ok")) is not bool:
        raise FuzzFailure(f"answer has a bad id or ok: {response!r:.200}")
    expected = {"id", "ok", "result"} if response["ok"] else {"id", "ok", "error"}
    if set(response) != expected:
        raise FuzzFailure(f"answer has keys {sorted(response)}, expected {sorted(expected)}")
    if not response["ok"]:
        error = response["error"]
        if not isinstance(error, str) or not error.strip():
            raise FuzzFailure(f"ok:false without an error text: {response!r:.200}")
        check_error_text(error)
        if "internal error" in error.splitlines()[0]:
            raise FuzzFailure(
                f"internal error (an unexpected exception in the worker): {error[:600]}"
            )
    return response


def check_still_serving(worker: Worker) -> None:
    response = check_frame(respond(worker, b'{"id": 424242, "method": "hello", "params": null}'))
    if not (response["ok"] and response["id"] == 424242):
        raise FuzzFailure(f"the worker no longer answers hello: {response!r:.300}")


def release_fifos(root: Path) -> None:
    """Open every FIFO under ``root`` for writing, so a reader blocked on one returns."""
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_fifo():
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def bounded(fn: Callable[[], Any], what: str, fifo_root: Path | None = None) -> Any:
    """Run ``fn`` in a thread; a hang past :data:`HANG_TIMEOUT` is a failure."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="fuzz-bounded", daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT)
    if thread.is_alive():
        if fifo_root is not None:
            release_fifos(fifo_root)
        thread.join(HANG_TIMEOUT)
        raise FuzzFailure(f"{what} did not return within {HANG_TIMEOUT:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def check_fds(before: int | None, what: str) -> None:
    after = fd_count()
    if before is not None and after != before:
        raise FuzzFailure(f"{what}: open descriptors went from {before} to {after}")


def check_no_partials(root: Path) -> None:
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if ".partial-" in name:
                raise FuzzFailure(
                    f"a temporary file was left behind: {os.path.join(directory, name)}"
                )


@contextlib.contextmanager
def temporary_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="burn-p2p-fuzz-"))
    try:
        yield root
    finally:
        release_fifos(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def make_socket_file(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
    finally:
        sock.close()


# -- loads: validity, target untouched, allocation ---------------------------------------------


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)
    )


def check_unchanged(module: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    after = module.state_dict()
    for key, value in before.items():
        if not same_bits(after[key], value):
            raise FuzzFailure(f"{what}: a refused input changed {key!r}")


@contextlib.contextmanager
def traced_allocation() -> Iterator[list[int]]:
    """Measure the peak of Python allocations in the block (tracemalloc: JSON
    objects, bytes, strings; not torch's tensors); yields a list that holds the
    peak afterwards."""
    peak: list[int] = []
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] - base)
        if not was_tracing:
            tracemalloc.stop()


def check_allocation(peak: int, data_bytes: int, what: str) -> None:
    """``peak`` bytes allocated by a load whose inputs hold ``data_bytes``: at most
    :data:`ALLOCATION_PER_DATA_BYTE` per byte plus :data:`ALLOCATION_ALLOWANCE`."""
    bound = ALLOCATION_PER_DATA_BYTE * data_bytes + ALLOCATION_ALLOWANCE
    if peak > bound:
        raise FuzzFailure(
            f"{what} allocated {peak >> 20} MiB for {data_bytes >> 10} KiB of input "
            f"(bound {bound >> 20} MiB)"
        )


def judge_load(
    load: Callable[[], object],
    name: str,
    what: str,
    why: str | None,
    refusals: tuple[type[Exception], ...],
    root: Path,
    check_loaded: Callable[[], None],
    check_untouched: Callable[[], None],
    data_bytes: int | None = None,
) -> None:
    """The oracle for one load: a valid input (``why`` is None) must load
    exactly, an invalid one must be refused with the target unchanged, no
    descriptor may leak either way, and (given ``data_bytes``, the size of what
    the load parses) its allocations must stay within :func:`check_allocation`."""
    fds = fd_count()
    with traced_allocation() as peak:
        try:
            bounded(load, name, root)
            refused: Exception | None = None
        except refusals as exc:
            refused = exc
    check_fds(fds, name)
    if refused is not None:
        check_error_text(str(refused))
    if why is None and refused is not None:
        raise FuzzFailure(f"a valid {what} was refused: {str(refused)[:500]}")
    if why is not None and refused is None:
        raise FuzzFailure(f"an invalid {what} ({why}) was loaded")
    if data_bytes is not None:
        check_allocation(peak[0], data_bytes, name)
    if refused is None:
        check_loaded()
    else:
        check_untouched()
