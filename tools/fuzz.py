"""Fuzz the worker's untrusted-input surfaces: frames, requests, packs and artifacts.

Usage (from the repository root)::

    python tools/fuzz.py --target frames|dispatch|packs|all --seconds N [--seed S] [--verbose]

``--seconds`` is the budget of the whole run, shared evenly by the selected
targets and, within a target, by its properties.  The run prints, per
property, the inputs tried and the distinct failures found, then the process
RSS (current and peak) and open descriptors at start and end.  Exit status:
0 when nothing failed, 1 otherwise, 2 for bad arguments.

Each property is a plain function over one generated input that raises
:class:`FuzzFailure` (or lets any unexpected exception escape) when the worker
misbehaves.  ``tests/test_fuzz.py`` runs the same properties under the
project's hypothesis profile with a CI-sized budget; this script runs them in
seeded batches until the time is up.

Targets:

- ``frames``: :class:`worker.framing.FrameDecoder` fed arbitrary streams in
  arbitrary chunks (checked against an independent reference parser) and
  :func:`worker.server.serve` on a socketpair (answers, exit code and the
  one stderr line checked against a replay of the same frames).
- ``dispatch``: :func:`respond` (a :class:`worker.connection.Connection` and
  :meth:`worker.service.Worker.handle`, as ``serve`` runs them) with arbitrary bytes,
  mutated requests and, for every method in ``METHODS``, params of the right
  shape with edge values (huge and negative numbers, non-standard JSON,
  nesting at the recursion limit, lone surrogates, paths to FIFOs, links,
  directories and files inside a per-input sandbox).
- ``packs``: parameter packs with mutated manifests, values files and
  directory entries, and safetensors artifacts with mutated headers, each
  judged against an independent validity oracle: a valid input must load
  exactly, an invalid one must be refused with the target untouched.

Every input must also leave the descriptor count unchanged, leave no
``.partial-`` file behind and finish within :data:`HANG_TIMEOUT` seconds.
Paths the worker may write are always inside the input's sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import resource
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from torch import nn

from worker import artifacts, packs
from worker.connection import Close, Connection, Reply
from worker.errors import FrameTooLarge, LayoutError, PackError
from worker.framing import HEADER, FrameDecoder, encode_frame
from worker.layout import compute_layout
from worker.protocol import Request
from worker.server import serve
from worker.service import METHODS, Worker

HANG_TIMEOUT = 20.0
"""Seconds one input may take before it counts as a hang (generous: the box is shared)."""
TARGETS = ("frames", "dispatch", "packs")
U64_MAX = 2**64 - 1


class FuzzFailure(AssertionError):
    """The worker broke a property on one input."""


# ---------------------------------------------------------------------------
# Process figures


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


# ---------------------------------------------------------------------------
# JSON with raw fragments: non-standard constants, nesting, huge numbers


@dataclass(frozen=True)
class Raw:
    """A JSON fragment spliced verbatim into a request or manifest."""

    text: str

    def __repr__(self) -> str:
        return f"Raw({self.text if len(self.text) < 40 else self.text[:37] + '...'!r})"


def dumps_raw(value: Any) -> bytes:
    """``json.dumps`` with :class:`Raw` spliced in (ASCII: lone surrogates survive as escapes)."""
    fragments: list[str] = []

    def default(obj: Any) -> str:
        if isinstance(obj, Raw):
            fragments.append(obj.text)
            return f"@@raw{len(fragments) - 1}@@"
        raise TypeError(f"cannot encode {type(obj).__name__}")

    text = json.dumps(value, default=default, allow_nan=True)
    for i, fragment in enumerate(fragments):
        text = text.replace(f'"@@raw{i}@@"', fragment, 1)
    return text.encode("utf-8")


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


RAW_LEAVES = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "-0.0", "18446744073709551616",
     '"\\ud800"', '"\\udc80x"', '{"a": 1, "a": 2}', "0.1e-400"]
).map(Raw) | st.just(4400).map(lambda n: Raw("1" + "0" * n)) | st.one_of(
    st.integers(960, 1040), st.sampled_from([1, 50, 500, 5000, 100_000])
).map(nested)  # fmt: skip

TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=8)
EDGE_TEXT = st.sampled_from(
    ["", " ", "NaN", "nan", "Infinity", "-inf", "null", "true", "\x00", "m1\x00", "\ud800",
     "\udc80", "é", "[", "*"]
) | st.just(10_000).map(lambda n: "x" * n)  # fmt: skip
EDGE_INTS = st.sampled_from(
    [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, U64_MAX, 2**64,
     -(2**63), 10**30]
)  # fmt: skip
NUMBERS = (
    st.integers()
    | EDGE_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 1e308, 5e-324])
)
JUNK = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT | EDGE_TEXT | RAW_LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


# ---------------------------------------------------------------------------
# Workloads


class QuickWorkload:
    """Torch-free and O(1) per call: for the framing and raw-bytes properties."""

    workload_name = "fuzz-quick"

    def runtime_device(self) -> str:
        return "python-cpu"

    def capability_probe(self) -> dict:
        return {"preferred_backends": [], "work_units_per_second": 1.0, "target_window_seconds": 1}

    def init_model(self, device: str) -> dict:
        return {"device": device}

    def train_window(self, state: Any, batches: list) -> dict:
        return {"batches": len(batches)}

    def evaluate(self, state: Any, split: Any) -> dict:
        return {"ok": True}

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> None:
        return None

    def apply_single_root_ema(self, base: Any, merged: Any, policy: Any) -> None:
        return None

    def reconcile_canonical_model(self, local: Any, canonical: Any, strategy: Any) -> None:
        return None


class FuzzNet(nn.Module):
    """Float32 parameters, float buffers, an int buffer (ignored by packs) and a bfloat16 buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.register_buffer("scale", torch.ones(3, dtype=torch.bfloat16))


def make_model(offset: float = 0.0) -> FuzzNet:
    """A FuzzNet with deterministic values (no global RNG): ``offset`` tells models apart."""
    model = FuzzNet()
    with torch.no_grad():
        for i, value in enumerate(model.state_dict().values()):
            if value.is_floating_point():
                ramp = torch.arange(value.numel(), dtype=torch.float32) * 0.25 + offset + i
                value.copy_(ramp.reshape(value.shape))
    return model


class TorchWorkload(QuickWorkload):
    """Generic packs and artifacts (no custom I/O hooks); every hook is O(1) and total."""

    workload_name = "fuzz-torch"

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def init_model(self, device: str) -> dict:
        return {"model": make_model(), "optimizer": None}

    def evaluate(self, state: Any, split: Any) -> dict:
        return {"split": json.dumps(split)[:40]}

    def apply_patch(self, patch: dict) -> str:
        return "Applied"

    def run_inner_loop(self, state: Any, job: dict) -> dict:
        return {"steps_completed": job["num_inner_steps"], "metrics": {"ok": True}}

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> Any:
        return self.init_model("cpu") if candidates else None


# ---------------------------------------------------------------------------
# Shared checks


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


def _make_socket_file(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# Target "frames"


def reference_frames(stream: bytes, limit: int) -> tuple[list[bytes], str]:
    """An independent framing parser: (bodies, "boundary" | "partial" | "too_large")."""
    bodies: list[bytes] = []
    pos = 0
    while True:
        if pos == len(stream):
            return bodies, "boundary"
        if len(stream) - pos < 8:
            return bodies, "partial"
        (length,) = struct.unpack_from(">Q", stream, pos)
        if length > limit:
            return bodies, "too_large"
        if len(stream) - pos - 8 < length:
            return bodies, "partial"
        bodies.append(stream[pos + 8 : pos + 8 + length])
        pos += 8 + length


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


# ---------------------------------------------------------------------------
# Target "dispatch"


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= U64_MAX


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(sorted(METHODS)))
    body = bytearray(dumps_raw({"id": draw(st.integers(1, 99)), "method": method, "params": None}))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del body[at:]
        elif op == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif body:
            del body[at]
    return bytes(body)


def check_bytes(body: bytes) -> None:
    """Any body gets one valid answer; a parseable request's id is echoed; hello still works."""
    worker = Worker(QuickWorkload())
    response = check_frame(respond(worker, body))
    try:
        message = json.loads(body.decode("utf-8"), parse_constant=_raise_value_error)
    except (UnicodeDecodeError, ValueError, RecursionError):
        message = None
    if isinstance(message, dict) and _is_u64(message.get("id")):
        if response["id"] != message["id"]:
            raise FuzzFailure(f"valid id {message['id']} not echoed: {response!r:.300}")
    elif response["id"] != 0 or response["ok"]:
        raise FuzzFailure(
            f"a body without a valid id must get ok:false with id 0: {response!r:.300}"
        )
    check_still_serving(worker)


def _raise_value_error(name: str) -> Any:
    raise ValueError(name)


@dataclass(frozen=True)
class BoxPath:
    """A path relative to the input's sandbox, resolved when the sandbox exists."""

    rel: str


@dataclass(frozen=True)
class AbsPath:
    """A read-only absolute path outside the sandbox (never used for methods that write)."""

    path: str


READ_ONLY_ABSOLUTE = ["/", "/dev/null", "/dev/zero", "/proc/self/status", "/proc/self/fd",
                      "/nonexistent-burn-p2p-fuzz"]  # fmt: skip
_LONG = "n" * 300
_SUB = st.text(st.characters(exclude_categories=(), exclude_characters="/"), min_size=1, max_size=6)
_SUB = _SUB.filter(lambda s: s not in (".", ".."))
_EDGE_REL = st.sampled_from(
    ["file", "fifo", "dir", "empty", "sock", "dangling", "link-out/new", "file/below", _LONG,
     f"{_LONG}/x", "new/", "a//b", "dir/../pack", "x\ud800", "x\udc80", "new\nline", "-", " "]
)  # fmt: skip
_FRESH = st.builds(lambda a, b: f"out-{a}" + (f"/{b}" if b else ""), _SUB, st.none() | _SUB)
READ_ARTIFACT = st.one_of(
    st.sampled_from(["artifact.safetensors", "link-artifact"]).map(BoxPath),
    _EDGE_REL.map(BoxPath) | st.sampled_from(["pack", "missing"]).map(BoxPath),
    st.sampled_from(READ_ONLY_ABSOLUTE).map(AbsPath),
)
READ_PACK = st.one_of(
    st.sampled_from(["pack", "link-pack", "link-out/pack"]).map(BoxPath),
    _EDGE_REL.map(BoxPath) | st.sampled_from(["artifact.safetensors", "missing"]).map(BoxPath),
    st.sampled_from(READ_ONLY_ABSOLUTE).map(AbsPath),
)
WRITE_PATH = st.one_of(
    _FRESH.map(BoxPath),
    st.sampled_from(["pack", "dir", "link-pack", "artifact.safetensors"]).map(BoxPath),
    _EDGE_REL.map(BoxPath),
)
# Strings for path keys must never become paths outside the sandbox: no '/'.
PATH_JUNK = st.none() | st.booleans() | NUMBERS | _SUB | EDGE_TEXT | RAW_LEAVES

MODEL_ID = st.sampled_from(["m1", "m2"]) | st.sampled_from(
    ["m3", "m404", "", "M1", " m1", "m1\x00"]
)
DEVICE = st.sampled_from(["cpu", "cuda", "meta"]) | EDGE_TEXT
GLOBS = st.lists(st.sampled_from(["*", "body.*", "*.weight", "scale", "[", "[!a]", "*a*a*a*b"])
                 | EDGE_TEXT | TEXT, max_size=3)  # fmt: skip
FILTER = st.none() | st.fixed_dictionaries(
    {}, optional={"include_globs": GLOBS | JUNK, "exclude_globs": GLOBS | JUNK, "other": JUNK}
)
BATCH_REF = st.fixed_dictionaries(
    {"kind": st.sampled_from(["cached_microshard_group", "micro_epoch"]) | TEXT | JUNK},
    optional={"shard_paths": JUNK, "microshard_ids": JUNK, "ordinals": JUNK, "bytes_len": NUMBERS,
              "payload": JUNK},
)  # fmt: skip
BATCHES = st.lists(BATCH_REF | JUNK, max_size=4)
WEIGHT = st.floats(0, 2) | NUMBERS | RAW_LEAVES | EDGE_TEXT | st.none()
CANDIDATE = st.fixed_dictionaries(
    {"model_id": MODEL_ID, "sample_weight": WEIGHT, "quality_weight": WEIGHT},
    optional={"peer_id": TEXT | JUNK, "head_id": TEXT, "artifact_id": TEXT, "model": JUNK},
)
POLICY = st.sampled_from(["WeightedMean", "NormClippedWeightedMean", "TrimmedMean", "Ema",
                          "QualityWeightedEma", "Mean", "ema", ""]) | st.fixed_dictionaries(
    {"Custom": TEXT | JUNK}) | JUNK  # fmt: skip
SPLIT = st.sampled_from(["Train", "Validation", "Test", "train", "Custom"]) | st.fixed_dictionaries(
    {"Custom": TEXT | JUNK}, optional={"Other": JUNK}) | JUNK  # fmt: skip
STRATEGY = st.sampled_from(["Replace", "RootEma", "replace"]) | st.builds(
    lambda w: {"RootEma": {"canonical_weight": w}}, WEIGHT) | JUNK  # fmt: skip
UINT = st.integers(0, 3) | EDGE_INTS | st.sampled_from([1.0, True, "3"]) | RAW_LEAVES
PATCH_VALUE = st.booleans() | NUMBERS | TEXT | st.lists(TEXT, max_size=3) | JUNK

METHOD_PARAMS: dict[str, dict[str, st.SearchStrategy]] = {
    "hello": {}, "capability_probe": {}, "shutdown": {},
    "init_model": {"device": DEVICE},
    "parameter_pack_plan": {"device": DEVICE, "state_dict_filter": FILTER},
    "train_window": {"model_id": MODEL_ID, "batches": BATCHES},
    "evaluate": {"model_id": MODEL_ID, "split": SPLIT},
    "apply_patch": {
        "patch_id": TEXT, "class": st.sampled_from(["Hot", "Warm", "Cold", "hot"]) | JUNK,
        "summary": TEXT, "values": st.dictionaries(TEXT, PATCH_VALUE, max_size=3) | JUNK,
        "required_client_capabilities": st.lists(TEXT, max_size=2) | JUNK,
    },
    "load_model_artifact": {"model_id": MODEL_ID, "artifact_path": READ_ARTIFACT},
    "materialize_model_artifact": {"model_id": MODEL_ID, "artifact_path": WRITE_PATH},
    "export_parameter_pack": {
        "model_id": MODEL_ID, "parameter_pack_path": WRITE_PATH,
        "model_schema_hash": TEXT | EDGE_TEXT, "state_dict_filter": FILTER,
    },
    "import_parameter_pack": {
        "device": DEVICE, "parameter_pack_path": READ_PACK, "state_dict_filter": FILTER,
    },
    "run_inner_loop": {
        "model_id": MODEL_ID, "batches": BATCHES, "num_inner_steps": UINT,
        "inner_optimizer_state_path": st.none() | WRITE_PATH,
        "output_parameter_pack_path": WRITE_PATH,
        "model_schema_hash": TEXT | EDGE_TEXT, "require_exact_steps": st.booleans() | JUNK,
        "state_dict_filter": FILTER,
    },
    "merge_candidate_models": {
        "base_model_id": MODEL_ID, "candidates": st.lists(CANDIDATE | JUNK, max_size=3),
        "policy": POLICY,
    },
    "apply_single_root_ema": {
        "base_model_id": MODEL_ID, "merged_model_id": MODEL_ID, "policy": POLICY,
    },
    "reconcile_canonical_model": {
        "local_model_id": MODEL_ID, "canonical_model_id": MODEL_ID, "strategy": STRATEGY,
    },
    "release_model": {"model_id": MODEL_ID},
}  # fmt: skip
PATH_KEYS = {"artifact_path", "parameter_pack_path", "output_parameter_pack_path",
             "inner_optimizer_state_path"}  # fmt: skip
WRITE_KEYS = {
    "materialize_model_artifact": "artifact_path",
    "export_parameter_pack": "parameter_pack_path",
    "run_inner_loop": "output_parameter_pack_path",
}
REQUEST_IDS = st.integers(1, 2**64 - 1) | st.sampled_from(
    [0, U64_MAX, 2**64, -1, 1.0, "1", None, True, Raw("1e400"), Raw("NaN")]
)


def _junk_for(key: str) -> st.SearchStrategy:
    return PATH_JUNK if key in PATH_KEYS else JUNK


@st.composite
def method_inputs(draw: st.DrawFn) -> tuple[str, Any, Any]:
    method = draw(st.sampled_from(sorted(METHODS)), label="method")
    keys = METHOD_PARAMS[method]
    shape = draw(st.sampled_from(["plausible", "plausible", "one-bad", "partial", "junk"]))
    if not keys or shape == "junk":
        params = draw(st.none() | st.just({}) | JUNK, label="params")
    else:
        params = {k: draw(s, label=k) for k, s in keys.items()}
        if shape == "one-bad":
            key = draw(st.sampled_from(sorted(keys)))
            params[key] = draw(_junk_for(key), label=f"bad {key}")
        elif shape == "partial":
            params = {
                k: (v if draw(st.booleans()) else draw(_junk_for(k), label=f"bad {k}"))
                for k, v in params.items()
                if draw(st.booleans())
            }
        if draw(st.booleans()):
            params[draw(TEXT, label="extra key")] = draw(JUNK, label="extra value")
    return method, params, draw(REQUEST_IDS, label="id")


def build_sandbox(root: Path) -> Path:
    """The per-input file tree that path params point into; returns the box directory."""
    box, outside = root / "box", root / "outside"
    box.mkdir()
    outside.mkdir()
    source = make_model(offset=100.0)
    packs.export_pack(source, box / "pack", "schema")
    packs.export_pack(source, outside / "pack", "schema")
    artifacts.save_state(source, box / "artifact.safetensors")
    (box / "dir").mkdir()
    (box / "file").write_bytes(b"not a pack")
    (box / "empty").write_bytes(b"")
    os.mkfifo(box / "fifo")
    _make_socket_file(box / "sock")
    os.symlink("pack", box / "link-pack")
    os.symlink("artifact.safetensors", box / "link-artifact")
    os.symlink("../outside", box / "link-out")
    os.symlink("nowhere", box / "dangling")
    return box


def resolve_paths(value: Any, box: Path) -> Any:
    if isinstance(value, BoxPath):
        return os.path.join(box, value.rel)
    if isinstance(value, AbsPath):
        return value.path
    if isinstance(value, dict):
        return {k: resolve_paths(v, box) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_paths(v, box) for v in value]
    return value


def _manifest_snapshot(path: Any) -> bytes | None:
    if not isinstance(path, str):
        return None
    with contextlib.suppress(OSError, ValueError):
        target = Path(path, packs.MANIFEST_NAME)
        if target.is_file():
            return target.read_bytes()
    return None


def check_method(case: tuple[str, Any, Any]) -> None:
    """One request with plausible-shaped params against a worker holding m1 and m2."""
    method, params, request_id = case
    with temporary_root() as root:
        box = build_sandbox(root)
        worker = Worker(TorchWorkload())
        for _ in range(2):
            check_frame(
                respond(worker, b'{"id": 1, "method": "init_model", "params": {"device": "cpu"}}')
            )
        resolved = resolve_paths(params, box)
        body = dumps_raw({"id": request_id, "method": method, "params": resolved})
        write_target = (
            resolved.get(WRITE_KEYS.get(method, "")) if isinstance(resolved, dict) else None
        )
        manifest_before = _manifest_snapshot(write_target)
        models_before = dict(worker.models)
        fds = fd_count()
        with working_directory(box):
            frame = bounded(lambda: respond(worker, body), method, root)
        check_fds(fds, method)
        response = check_frame(frame)
        error = "" if response["ok"] else response["error"]
        if error.startswith("request"):
            if response["id"] not in (0, request_id):
                raise FuzzFailure(f"frame-level refusal with a foreign id: {response!r:.300}")
        elif response["id"] != request_id:
            raise FuzzFailure(f"id {request_id!r} not echoed: {response!r:.300}")
        elif error and not error.startswith(f"{method}:"):
            raise FuzzFailure(f"error does not start with '{method}:': {error[:300]!r}")
        if not response["ok"]:
            if worker.models.keys() != models_before.keys():
                raise FuzzFailure(
                    f"a refused {method} changed the model table to {sorted(worker.models)}"
                )
            if write_target is not None and manifest_before is None:
                if _manifest_snapshot(write_target) is not None:
                    raise FuzzFailure(f"a failed {method} left a new manifest at {write_target!r}")
            elif write_target is not None and _manifest_snapshot(write_target) not in (
                None, manifest_before,
            ):  # fmt: skip
                raise FuzzFailure(f"a failed {method} changed the manifest at {write_target!r}")
        check_no_partials(root)
        check_still_serving(worker)


# ---------------------------------------------------------------------------
# Target "packs": parameter packs


def pack_oracle(path: Path, layout_hash: str, count: int) -> str | None:
    """None when a correct reader must accept the pack at ``path``, else why it must refuse.

    Written from PROTOCOL.md §3 without the worker's code: the pack directory
    (links to it are the caller's choice), a plain ``manifest.json``, the
    manifest's fields, ``values_f32_le`` a relative path of plain directories
    to a plain file of exactly ``parameter_count * 4`` bytes, and the layout.
    """
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            return "pack path is not a directory"
        manifest = path / packs.MANIFEST_NAME
        info = os.lstat(manifest)
        if not stat.S_ISREG(info.st_mode) or info.st_size > packs.MAX_MANIFEST_BYTES:
            return "manifest is not a plain file of allowed size"
        try:
            raw = json.loads(manifest.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return "manifest is not UTF-8 JSON"
        if not isinstance(raw, dict) or raw.get("format") != packs.PACK_FORMAT:
            return "manifest is not an object with the format"
        if not all(isinstance(raw.get(k), str) for k in ("model_schema_hash", "layout_hash")):
            return "hash fields are not strings"
        parameter_count = raw.get("parameter_count")
        if (
            type(parameter_count) is not int
            or not 0 <= parameter_count <= packs.MAX_PARAMETER_COUNT
        ):
            return "parameter_count out of range"
        relative = raw.get("values_f32_le")
        if not isinstance(relative, str) or not relative or relative.startswith("/"):
            return "values_f32_le is not a relative path"
        parts = relative.split("/")
        if "\x00" in relative or any(p in ("", ".", "..") for p in parts):
            return "values_f32_le has forbidden components"
        current = path
        for part in parts[:-1]:
            current = current / part
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return "values_f32_le goes through a non-directory or a link"
        values = os.lstat(current / parts[-1])
        if not stat.S_ISREG(values.st_mode):
            return "values file is not a plain file"
        if values.st_size != parameter_count * 4:
            return "values file has the wrong size"
        if raw["layout_hash"] != layout_hash or parameter_count != count:
            return "layout does not match the target"
        return None
    except (OSError, ValueError) as exc:  # ValueError: a name the filesystem cannot encode
        return f"unreadable: {type(exc).__name__}"


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)
    )


def check_unchanged(module: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    after = module.state_dict()
    for key, value in before.items():
        if not _same_bits(after[key], value):
            raise FuzzFailure(f"{what}: a refused input changed {key!r}")


def judge_load(
    load: Callable[[], object],
    name: str,
    what: str,
    why: str | None,
    refusals: tuple[type[Exception], ...],
    root: Path,
    check_loaded: Callable[[], None],
    check_untouched: Callable[[], None],
) -> None:
    """The oracle for one load: a valid input (``why`` is None) must load
    exactly, an invalid one must be refused with the target unchanged, and no
    descriptor may leak either way."""
    fds = fd_count()
    try:
        bounded(load, name, root)
        refused: Exception | None = None
    except refusals as exc:
        refused = exc
    check_fds(fds, name)
    if why is None and refused is not None:
        raise FuzzFailure(f"a valid {what} was refused: {refused}")
    if why is not None and refused is None:
        raise FuzzFailure(f"an invalid {what} ({why}) was loaded")
    if refused is None:
        check_loaded()
    else:
        check_untouched()


def check_pack_values(module: nn.Module, path: Path) -> None:
    """The module's float tensors must hold the pack's values, in layout order."""
    raw = json.loads((path / packs.MANIFEST_NAME).read_bytes())
    data = (path / raw["values_f32_le"]).read_bytes()
    flat = torch.frombuffer(bytearray(data), dtype=torch.float32) if data else torch.empty(0)
    layout = compute_layout(module)
    offset = 0
    for entry, tensor in zip(layout.entries, layout.tensors, strict=True):
        n = entry["numel"]
        expected = flat[offset : offset + n].to(tensor.dtype).reshape(tensor.shape)
        offset += n
        if not _same_bits(tensor, expected):
            raise FuzzFailure(f"imported {entry['name']!r} differs from the pack's values")


MANIFEST_KEYS = ["format", "model_schema_hash", "layout_hash", "parameter_count", "values_f32_le"]


def _manifest_values(key: str) -> st.SearchStrategy:
    fmt = packs.PACK_FORMAT
    edges: dict[str, list[Any]] = {
        "format": [fmt, fmt + " ", fmt.upper(), "", None, 1, [fmt], fmt.replace("v1", "v2")],
        "model_schema_hash": ["", "x" * 1000, 5, None, "\ud800"],
        "layout_hash": ["@correct", "@correct-upper", "@correct-newline", "torch-layout-", None, 0],
        "parameter_count": ["@count", "@count-1", "@count+1", 0, -1, packs.MAX_PARAMETER_COUNT,
                            packs.MAX_PARAMETER_COUNT + 1, 2**63, 2**64, -(2**63), True, False,
                            "@count-float", "@count-str", None, 10**30, float("nan"),
                            float("inf")],
        "values_f32_le": ["values.f32le", "./values.f32le", "sub/values.f32le",
                          "../pack/values.f32le",
                          "@absolute", "", "values.f32le/", "sub//values.f32le", "link-values",
                          "values.f32le\x00", "\ud800", "n" * 300, "sub/../values.f32le",
                          "linkdir/values.f32le", "manifest.json", "."],
    }  # fmt: skip
    return st.sampled_from(edges[key]) | JUNK


PACK_MUTATIONS = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(MANIFEST_KEYS)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.just(t[1]), _manifest_values(t[1]))
    ),
    st.tuples(st.just("delete"), st.sampled_from(MANIFEST_KEYS)),
    st.tuples(st.just("extra"), TEXT, JUNK),
    st.tuples(st.just("manifest-bytes"),
              st.sampled_from(["cut", "insert", "binary", "bom", "deep", "digits"]),
              st.integers(0, 400), st.binary(max_size=16)),
    st.tuples(st.just("resize"), st.sampled_from([-10**6, -5, -4, -1, 1, 3, 4, 1000])),
    st.tuples(st.just("values-as"), st.sampled_from(
        ["fifo", "directory", "symlink-inside", "symlink-outside", "hardlink-outside", "missing",
         "empty", "socket", "sparse-huge", "unreadable", "move-sub", "move-deep", "move-linkdir"])),
    st.tuples(st.just("manifest-as"), st.sampled_from(
        ["symlink", "fifo", "directory", "missing", "hardlink", "unreadable"])),
    st.tuples(st.just("flip"), st.integers(0, 10**4), st.integers(0, 255)),
)  # fmt: skip
PACK_PATHS = st.sampled_from(["pack", "pack", "pack", "link", "file", "missing", "fifo"])


@st.composite
def pack_inputs(draw: st.DrawFn) -> tuple[str, list[tuple]]:
    return draw(PACK_PATHS, label="pack path"), draw(
        st.lists(PACK_MUTATIONS, max_size=3), label="mutations"
    )


def _remove(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link, FIFO, socket or empty directory)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def _read_regular(path: Path) -> bytes:
    """Read ``path`` only if it is a regular file (after links): a FIFO must not block us."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a regular file")
    return path.read_bytes()


def _edit_manifest(pack: Path, edit: Callable[[dict], None], layout: Any) -> None:
    path = pack / packs.MANIFEST_NAME
    try:
        raw = json.loads(_read_regular(path))
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(raw, dict):
        return
    edit(raw)
    for key, value in list(raw.items()):
        raw[key] = _placeholder(value, layout, pack)
    path.unlink()
    path.write_bytes(dumps_raw(raw))


def _placeholder(value: Any, layout: Any, pack: Path) -> Any:
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    count = layout.parameter_count
    return {
        "@correct": layout.hash, "@correct-upper": layout.hash.upper(),
        "@correct-newline": layout.hash + "\n", "@count": count, "@count-1": count - 1,
        "@count+1": count + 1, "@count-float": float(count), "@count-str": str(count),
        "@absolute": str(pack / packs.VALUES_NAME),
    }.get(value, value)  # fmt: skip


def _values_path(pack: Path) -> Path:
    try:
        name = json.loads(_read_regular(pack / packs.MANIFEST_NAME))["values_f32_le"]
        path = pack / name
        return path if isinstance(name, str) and ".." not in name else pack / packs.VALUES_NAME
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return pack / packs.VALUES_NAME


def apply_pack_mutation(pack: Path, mutation: tuple, layout: Any) -> None:
    """Apply one mutation; one that cannot apply (its file is gone) is a no-op."""
    kind = mutation[0]
    outside = pack.parent / "outside"
    outside.mkdir(exist_ok=True)
    manifest = pack / packs.MANIFEST_NAME
    if kind == "field":
        _edit_manifest(pack, lambda raw: raw.__setitem__(mutation[1], mutation[2]), layout)
    elif kind == "delete":
        _edit_manifest(pack, lambda raw: raw.pop(mutation[1], None), layout)
    elif kind == "extra":
        _edit_manifest(pack, lambda raw: raw.setdefault(mutation[1], mutation[2]), layout)
    elif kind == "manifest-bytes":
        _, how, at, blob = mutation
        try:
            data = _read_regular(manifest)
        except OSError:
            data = b"{}"
        data = {
            "cut": data[:at], "insert": data[:at] + blob + data[at:], "binary": blob,
            "bom": b"\xef\xbb\xbf" + data, "deep": b"[" * 100_000,
            "digits": data.replace(b'"parameter_count": ', b'"parameter_count": ' + b"9" * 5000),
        }[how]  # fmt: skip
        _remove(manifest)
        manifest.write_bytes(data)
    elif kind == "resize":
        values = _values_path(pack)
        if values.is_file() and not values.is_symlink():
            size = values.stat().st_size
            os.truncate(values, max(0, size + mutation[1]))
    elif kind == "flip":
        values = _values_path(pack)
        if values.is_file() and not values.is_symlink() and values.stat().st_size:
            with open(values, "r+b") as f:
                f.seek(mutation[1] % values.stat().st_size)
                f.write(bytes([mutation[2]]))
    elif kind == "values-as":
        _values_as(pack, mutation[1], layout)
    elif kind == "manifest-as":
        _manifest_as(pack, mutation[1])


def _values_as(pack: Path, how: str, layout: Any) -> None:
    values = pack / packs.VALUES_NAME
    outside = pack.parent / "outside"
    if not values.is_file() or values.is_symlink() or values.stat().st_size > 1 << 20:
        return
    data = values.read_bytes()
    if how.startswith("move-"):
        relative = {"move-sub": "sub/values.f32le", "move-deep": "a/b/c.bin",
                    "move-linkdir": "linkdir/values.f32le"}[how]  # fmt: skip
        if how == "move-linkdir":
            (outside / "real-dir").mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.symlink(outside / "real-dir", pack / "linkdir")
        target = pack / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(values, target)
        _edit_manifest(pack, lambda raw: raw.__setitem__("values_f32_le", relative), layout)
        return
    values.unlink()
    if how == "fifo":
        os.mkfifo(values)
    elif how == "directory":
        values.mkdir()
    elif how == "symlink-inside":
        (pack / "real.f32le").write_bytes(data)
        os.symlink("real.f32le", values)
    elif how in ("symlink-outside", "hardlink-outside"):
        (outside / "values.f32le").write_bytes(data)
        (os.symlink if how == "symlink-outside" else os.link)(outside / "values.f32le", values)
    elif how == "empty":
        values.write_bytes(b"")
    elif how == "socket":
        _make_socket_file(values)
    elif how == "sparse-huge":
        values.write_bytes(b"")
        with contextlib.suppress(OSError):
            os.truncate(values, packs.MAX_PARAMETER_COUNT * 4)
    elif how == "unreadable":
        values.write_bytes(data)
        os.chmod(values, 0)


def _manifest_as(pack: Path, how: str) -> None:
    manifest = pack / packs.MANIFEST_NAME
    outside = pack.parent / "outside"
    if not manifest.is_file() or manifest.is_symlink():
        return
    data = manifest.read_bytes()
    manifest.unlink()
    if how in ("symlink", "hardlink"):
        (outside / "manifest.json").write_bytes(data)
        (os.symlink if how == "symlink" else os.link)(outside / "manifest.json", manifest)
    elif how == "fifo":
        os.mkfifo(manifest)
    elif how == "directory":
        manifest.mkdir()
    elif how == "unreadable":
        manifest.write_bytes(data)
        os.chmod(manifest, 0)


def _pack_path(root: Path, pack: Path, how: str) -> Path:
    path = root / f"path-{how}"
    if how == "pack":
        return pack
    if how == "link":
        os.symlink(pack, path)
    elif how == "file":
        path.write_bytes(b"{}")
    elif how == "fifo":
        os.mkfifo(path)
    return path


def check_pack(case: tuple[str, list[tuple]]) -> None:
    """A mutated pack: loaded exactly when the oracle says valid, else refused, target untouched."""
    how, mutations = case
    target_layout = compute_layout(make_model())
    with temporary_root() as root:
        pack = root / "pack"
        packs.export_pack(make_model(offset=100.0), pack, "schema")
        for mutation in mutations:
            apply_pack_mutation(pack, mutation, target_layout)
        path = _pack_path(root, pack, how)
        why = pack_oracle(path, target_layout.hash, target_layout.parameter_count)

        target = make_model()
        before = _snapshot(target)
        judge_load(
            lambda: packs.import_pack(path, lambda: target), "import_pack", "pack", why,
            (PackError, LayoutError), root,
            lambda: check_pack_values(target, path),
            lambda: check_unchanged(target, before, "import_pack"),
        )  # fmt: skip

        worker = Worker(TorchWorkload())
        body = dumps_raw(
            {"id": 9, "method": "import_parameter_pack",
             "params": {"device": "cpu", "parameter_pack_path": str(path)}}
        )  # fmt: skip
        response = check_frame(
            bounded(lambda: respond(worker, body), "import_parameter_pack", root)
        )
        if response["id"] != 9 or response["ok"] != (why is None):
            raise FuzzFailure(
                f"import_parameter_pack answered {response!r:.300} "
                f"for a pack the oracle calls {why or 'valid'}"
            )
        if response["ok"]:
            check_pack_values(worker.models[response["result"]["model_id"]]["model"], path)
        else:
            if not response["error"].startswith("import_parameter_pack:") or worker.models:
                raise FuzzFailure(f"refusal not named or a model was allocated: {response!r:.300}")
        check_no_partials(root)


# ---------------------------------------------------------------------------
# Target "packs": safetensors artifacts

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
             "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip


def _model_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def artifact_oracle(path: Path, module: nn.Module) -> str | None:
    """None when a correct reader must load the file into ``module``, else why not.

    From the safetensors format (8-byte little-endian header length, a JSON
    object header, raw data) as PROTOCOL.md uses it: every key of the model,
    nothing else, same dtype and shape, offsets inside the data that fit.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file"
        blob = path.read_bytes()
    except (OSError, ValueError) as exc:
        return f"unreadable: {type(exc).__name__}"
    if len(blob) < 8:
        return "too short"
    (length,) = struct.unpack("<Q", blob[:8])
    if length > artifacts.MAX_HEADER_BYTES or 8 + length > len(blob):
        return "header length out of range"
    try:
        header = json.loads(blob[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "header is not UTF-8 JSON"
    if not isinstance(header, dict):
        return "header is not an object"
    header.pop("__metadata__", None)
    data_len = len(blob) - 8 - length
    for entry in header.values():
        if not isinstance(entry, dict):
            return "entry is not an object"
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in ST_DTYPES:
            return "bad dtype"
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return "bad shape"
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            return "bad offsets"
        begin, end = offsets
        itemsize = torch.empty(0, dtype=ST_DTYPES[dtype]).element_size()
        if not 0 <= begin <= end <= data_len or end - begin != math.prod(shape) * itemsize:
            return "offsets do not fit"
    tensors = _model_tensors(module)
    if set(header) != set(tensors):
        return "keys differ from the model"
    for name, tensor in tensors.items():
        if (
            header[name]["shape"] != list(tensor.shape)
            or ST_DTYPES[header[name]["dtype"]] != tensor.dtype
        ):
            return "shape or dtype differs from the model"
    return None


def check_artifact_values(module: nn.Module, path: Path) -> None:
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    start = 8 + length
    for name, tensor in _model_tensors(module).items():
        begin, end = header[name]["data_offsets"]
        raw = bytearray(blob[start + begin : start + end])
        expected = (
            torch.frombuffer(raw, dtype=tensor.dtype).reshape(tensor.shape)
            if raw else torch.empty(tensor.shape, dtype=tensor.dtype)
        )  # fmt: skip
        if not _same_bits(tensor, expected):
            raise FuzzFailure(f"loaded {name!r} differs from the artifact's bytes")


ENTRY_EDITS = {
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "F8_E4M3", "", "f32", None, 5]) | JUNK,
    "shape": st.sampled_from([[], [0], [-1], [2**63], [True], [4.0], [[4]], "4", None])
    | st.lists(st.integers(-2, 2**64), max_size=3)
    | JUNK,
    "data_offsets": st.lists(st.integers(-2, 2**64) | st.sampled_from([True, 1.0, "0"]), max_size=3)
    | JUNK,
}
ARTIFACT_MUTATIONS = st.one_of(
    st.tuples(st.just("entry"), st.integers(0, 50), st.sampled_from(sorted(ENTRY_EDITS))).flatmap(
        lambda t: st.tuples(*map(st.just, t), ENTRY_EDITS[t[2]])
    ),
    st.tuples(st.just("entry-shift"), st.integers(0, 50), st.integers(-8, 8)),
    st.tuples(st.just("delete-entry"), st.integers(0, 50)),
    st.tuples(st.just("add-entry"), TEXT, JUNK | st.just("@copy")),
    st.tuples(st.just("entry-junk"), st.integers(0, 50), JUNK),
    st.tuples(st.just("metadata"), JUNK),
    st.tuples(st.just("header-json"), JUNK),
    st.tuples(st.just("header-bytes"), st.sampled_from(["cut", "insert", "binary", "deep", "bom"]),
              st.integers(0, 600), st.binary(max_size=12)),
    st.tuples(st.just("length"), st.sampled_from([0, 1, 7, -8, -1, 1, 8, 1 << 32,
                                                  artifacts.MAX_HEADER_BYTES,
                                                  artifacts.MAX_HEADER_BYTES + 1, U64_MAX])),
    st.tuples(st.just("data"), st.integers(-64, 64)),
    st.tuples(st.just("file-as"), st.sampled_from(
        ["fifo", "directory", "symlink", "missing", "empty", "binary", "socket", "unreadable"]),
              st.binary(max_size=64)),
)  # fmt: skip


def _split_artifact(blob: bytes) -> tuple[Any, bytes, bytes]:
    """(header object or None, header bytes, data) of a possibly broken artifact."""
    if len(blob) < 8:
        return None, b"", blob
    (length,) = struct.unpack("<Q", blob[:8])
    header_bytes, data = blob[8 : 8 + length], blob[8 + length :]
    try:
        return json.loads(header_bytes), header_bytes, data
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None, header_bytes, data


def _join_artifact(header_bytes: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header_bytes) if length is None else length) + header_bytes + data


def apply_artifact_mutation(path: Path, mutation: tuple) -> None:
    kind = mutation[0]
    if kind == "file-as":
        _artifact_as(path, mutation[1], mutation[2])
        return
    if not path.is_file() or path.is_symlink():
        return
    blob = path.read_bytes()
    header, header_bytes, data = _split_artifact(blob)
    names = sorted(k for k in header if k != "__metadata__") if isinstance(header, dict) else []
    pick = (lambda i: names[i % len(names)]) if names else None
    if kind in ("entry", "entry-shift", "delete-entry", "entry-junk") and pick is not None:
        name = pick(mutation[1])
        if kind == "entry" and isinstance(header[name], dict):
            header[name][mutation[2]] = mutation[3]
        elif kind == "entry-shift" and isinstance(header[name], dict):
            offsets = header[name].get("data_offsets")
            if isinstance(offsets, list) and offsets and type(offsets[-1]) is int:
                offsets[-1] += mutation[2]
        elif kind == "delete-entry":
            del header[name]
        elif kind == "entry-junk":
            header[name] = mutation[2]
        header_bytes = dumps_raw(header)
    elif kind == "add-entry" and isinstance(header, dict):
        header[mutation[1]] = header[names[0]] if mutation[2] == "@copy" and names else mutation[2]
        header_bytes = dumps_raw(header)
    elif kind == "metadata" and isinstance(header, dict):
        header["__metadata__"] = mutation[1]
        header_bytes = dumps_raw(header)
    elif kind == "header-json":
        header_bytes = dumps_raw(mutation[1])
    elif kind == "header-bytes":
        _, how, at, blob_in = mutation
        header_bytes = {
            "cut": header_bytes[:at], "insert": header_bytes[:at] + blob_in + header_bytes[at:],
            "binary": blob_in, "deep": b"[" * 100_000, "bom": b"\xef\xbb\xbf" + header_bytes,
        }[how]  # fmt: skip
    elif kind == "length":
        value = mutation[1]
        length = len(header_bytes) + value if value in (-8, -1, 1, 8) else value
        path.write_bytes(_join_artifact(header_bytes, data, max(0, min(length, U64_MAX))))
        return
    elif kind == "data":
        delta = mutation[1]
        data = data[:delta] if delta < 0 else data + b"\x00" * delta
    path.write_bytes(_join_artifact(header_bytes, data))


def _artifact_as(path: Path, how: str, blob: bytes) -> None:
    if not path.is_file() or path.is_symlink():
        return
    data = path.read_bytes()
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "symlink":
        real = path.with_name("real.safetensors")
        real.write_bytes(data)
        os.symlink(real.name, path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "binary":
        path.write_bytes(blob)
    elif how == "socket":
        _make_socket_file(path)
    elif how == "unreadable":
        path.write_bytes(data)
        os.chmod(path, 0)


def check_artifact(mutations: list[tuple]) -> None:
    """A mutated safetensors artifact: loaded exactly when the oracle says valid, else refused."""
    with temporary_root() as root:
        path = root / "artifact.safetensors"
        artifacts.save_state(make_model(offset=100.0), path)
        for mutation in mutations:
            apply_artifact_mutation(path, mutation)
        target = make_model()
        why = artifact_oracle(path, target)
        before = _snapshot(target)
        judge_load(
            lambda: artifacts.load_state(target, path), "load_state", "artifact", why,
            (PackError,), root,
            lambda: check_artifact_values(target, path),
            lambda: check_unchanged(target, before, "load_state"),
        )  # fmt: skip

        worker = Worker(TorchWorkload())
        check_frame(
            respond(worker, b'{"id": 1, "method": "init_model", "params": {"device": "cpu"}}')
        )
        before = _snapshot(worker.models["m1"]["model"])
        body = dumps_raw(
            {"id": 5, "method": "load_model_artifact",
             "params": {"model_id": "m1", "artifact_path": str(path)}}
        )  # fmt: skip
        response = check_frame(bounded(lambda: respond(worker, body), "load_model_artifact", root))
        if response["id"] != 5 or response["ok"] != (why is None):
            raise FuzzFailure(
                f"load_model_artifact answered {response!r:.300} "
                f"for a file the oracle calls {why or 'valid'}"
            )
        if not response["ok"]:
            if not response["error"].startswith("load_model_artifact:"):
                raise FuzzFailure(f"refusal does not name the method: {response['error'][:300]!r}")
            check_unchanged(worker.models["m1"]["model"], before, "load_model_artifact")


# ---------------------------------------------------------------------------
# The registry and the time-boxed runner


@dataclass(frozen=True)
class Property:
    """One fuzzed property: ``check`` must hold for every value of ``strategy``."""

    name: str
    target: str
    strategy: st.SearchStrategy
    check: Callable[[Any], None]

    def __repr__(self) -> str:
        return f"Property({self.target}/{self.name})"


PROPERTIES: list[Property] = [
    Property("decoder-chunks", "frames", decoder_inputs(), check_decoder),
    Property("serve-socketpair", "frames", serve_inputs(), check_serve),
    Property("respond-bytes", "dispatch", st.binary(max_size=200) | mutated_bodies(), check_bytes),
    Property("method-params", "dispatch", method_inputs(), check_method),
    Property("pack-import", "packs", pack_inputs(), check_pack),
    Property("artifact-load", "packs", st.lists(ARTIFACT_MUTATIONS, max_size=3), check_artifact),
]


@dataclass
class Report:
    """What one property's run found."""

    name: str
    tried: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


def _failure_key(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    first = re.sub(r"/[^\s'\"]*burn-p2p-fuzz-[^\s'\"]*", "<tmp>", first)
    first = re.sub(r"\d+", "#", first)
    return f"{type(exc).__name__}: {first[:160]}"


def _leaves(exc: BaseException) -> list[BaseException]:
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup (Python 3.11+)
    if isinstance(group, tuple):
        return [leaf for sub in group for leaf in _leaves(sub)]
    return [exc]


def run_property(prop: Property, seconds: float, base_seed: int, batch: int = 100) -> Report:
    """Run ``prop`` in seeded hypothesis batches for ``seconds``; shrink and record failures."""
    report = Report(prop.name)
    start = time.monotonic()
    deadline = start + seconds
    batch_number = 0
    while time.monotonic() < deadline:
        batch_number += 1

        @settings(
            max_examples=batch, database=None, deadline=None, derandomize=False,
            suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
            report_multiple_bugs=True, print_blob=False,
        )  # fmt: skip
        @seed(base_seed * 1_000_003 + batch_number)
        @given(prop.strategy)
        def body(value: Any) -> None:
            if time.monotonic() > deadline:
                return  # out of time: let the batch (or a shrink) finish at once
            report.tried += 1
            prop.check(value)

        try:
            body()
        except Exception as exc:
            for leaf in _leaves(exc):
                key = _failure_key(leaf)
                if key not in report.failures:
                    notes = "\n".join(getattr(leaf, "__notes__", []))
                    report.failures[key] = f"{type(leaf).__name__}: {str(leaf)[:2000]}\n{notes}"
    report.seconds = time.monotonic() - start
    return report


def _kib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/fuzz.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="total budget, shared evenly by the targets (default 60)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument(
        "--verbose", action="store_true", help="print each failure's falsifying input"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    targets = TARGETS if args.target == "all" else (args.target,)
    chosen = [p for p in PROPERTIES if p.target in targets]
    rss_start, peak_start = rss_kib()
    fds_start = fd_count()
    print(f"fuzzing {', '.join(targets)} for {args.seconds:g} s (seed {args.seed})", flush=True)
    reports = []
    for prop in chosen:
        share = args.seconds / len(targets) / sum(p.target == prop.target for p in chosen)
        report = run_property(prop, share, args.seed)
        reports.append(report)
        print(
            f"  {prop.target:<9} {prop.name:<18} {report.tried:>7} inputs "
            f"in {report.seconds:6.1f} s"
            f"   {len(report.failures)} failure(s)",
            flush=True,
        )
        for key, detail in report.failures.items():
            print(f"      - {key}")
            if args.verbose:
                print("        " + detail.replace("\n", "\n        "))
    rss_end, peak_end = rss_kib()
    print(f"inputs tried: {sum(r.tried for r in reports)}; "
          f"distinct failures: {sum(len(r.failures) for r in reports)}")  # fmt: skip
    print(f"RSS start {_kib(rss_start)} (peak {_kib(peak_start)}), "
          f"end {_kib(rss_end)} (peak {_kib(peak_end)}); "
          f"open fds {fds_start} -> {fd_count()}")  # fmt: skip
    return 1 if any(r.failures for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
