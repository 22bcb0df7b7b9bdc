"""Shared machinery of the benchmarks: statistics, result rows, the table, child peers.

Every figure is a median over repeats interleaved with the limit it is
compared to (so both share the machine's noise), after a warm-up.  A target
is a maximum for the ratio ours / limit, both measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fakecoord import wire
from fakecoord.errors import FakecoordError, WorkerExited, WorkerTimeout
from fakecoord.spawn import child_environment, launch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = Path("/work/shared/reference/seed_worker.py")
PYTHON = sys.executable
HEADER = wire.HEADER
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """A benchmark could not measure what it set out to (a peer failed, a bad option)."""


# ---------------------------------------------------------------------------
# Statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``samples`` with linear interpolation."""
    if not samples:
        raise BenchError("percentile of no samples")
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements of one quantity."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 0.9)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 means +-2.5 %)."""
        median = self.median
        if median == 0:
            return 0.0
        return (percentile(self.samples, 0.75) - percentile(self.samples, 0.25)) / median


def interleaved(
    measures: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1
) -> dict[str, Stats]:
    """Run each measure ``warmup`` times, then ``repeats`` rounds of all of them.

    Each callable returns the seconds (or bytes) it measured, excluding its own
    setup and cleanup.  The order rotates every round so no measure is always
    first after a cleanup.
    """
    if repeats < 1:
        raise BenchError(f"repeats must be at least 1, got {repeats}")
    names = list(measures)
    for _ in range(warmup):
        for name in names:
            measures[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measures[name]())
    return {name: Stats(tuple(values)) for name, values in samples.items()}


# ---------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of the final table.

    ``target`` is the largest acceptable ``ours / limit`` (None: an
    informative row without a verdict).  ``unit`` is "s" for durations and
    "B" for bytes.
    """

    bench: str
    case: str
    ours: float
    limit: float | None
    limit_name: str
    target: float | None = None
    unit: str = "s"
    ours_spread: float | None = None
    limit_spread: float | None = None
    reference: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.limit is None or self.limit <= 0:
            return None
        return self.ours / self.limit

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio is None:
            return "info"
        return "PASS" if self.ratio <= self.target else "MISS"

    @property
    def speedup(self) -> float | None:
        if self.reference is None or self.ours <= 0:
            return None
        return self.reference / self.ours

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "case": self.case,
            "unit": self.unit,
            "ours": self.ours,
            "limit": self.limit,
            "limit_name": self.limit_name,
            "ratio": self.ratio,
            "target": self.target,
            "verdict": self.verdict,
            "ours_spread": self.ours_spread,
            "limit_spread": self.limit_spread,
            "reference": self.reference,
            "speedup_over_reference": self.speedup,
            "note": self.note,
        }


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value / 1e6:.1f} MB"
    if abs(value) < 1e-3:
        return f"{value * 1e6:.1f} us"
    if abs(value) < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"


def fmt_count(n: int) -> str:
    """``20000000`` -> ``2e7``; other numbers as plain integers."""
    text = f"{n:.0e}".replace("e+0", "e").replace("e+", "e")
    return text if float(text) == n else str(n)


def _fmt_spread(spread: float | None) -> str:
    return "-" if spread is None else f"{spread * 100:.0f}%"


TABLE_COLUMNS = (
    "benchmark", "case", "ours", "limit", "ratio", "target", "verdict",
    "spread o/l", "reference", "speed-up",
)  # fmt: skip


def table_lines(rows: Sequence[Row]) -> list[str]:
    """The rows as an aligned plain-text table (also pasted into README.md)."""
    body = []
    for row in rows:
        body.append(
            (
                row.bench,
                row.case,
                fmt_value(row.ours, row.unit),
                f"{fmt_value(row.limit, row.unit)} ({row.limit_name})",
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                "-" if row.target is None else f"<= {row.target:g}x",
                row.verdict,
                f"{_fmt_spread(row.ours_spread)}/{_fmt_spread(row.limit_spread)}",
                fmt_value(row.reference, row.unit),
                "-" if row.speedup is None else f"{row.speedup:.1f}x",
            )
        )
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(TABLE_COLUMNS)]
    line = "  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    notes = [f"  [{row.bench}, {row.case}] {row.note}" for row in rows if row.note]
    if notes:
        out += ["", "notes:", *notes]
    return out


def print_table(rows: Sequence[Row], title: str) -> None:
    info = environment()
    print(f"\n== {title} ==  (python {info['python']}, torch {info.get('torch', '?')}, "
          f"{info['cpus']} cpus, load average {info['load_average']})")  # fmt: skip
    print("\n".join(table_lines(rows)))
    print(
        "ratio = ours / limit measured in the same run; spread = interquartile range / median; "
        "speed-up = reference / ours",
        flush=True,
    )


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Other processes share the cores: figures from a loaded machine are noisier.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency of the worker
        pass
    return info


def write_json(path: str | os.PathLike, rows: Sequence[Row], **extra: Any) -> None:
    payload = {"environment": environment(), **extra, "rows": [row.to_json() for row in rows]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def report(rows: Sequence[Row], title: str, json_path: str | None, **extra: Any) -> None:
    print_table(rows, title)
    if json_path:
        write_json(json_path, rows, **extra)
        print(f"wrote {json_path}")


def run_and_report(name: str, title: str, args: argparse.Namespace, run: Any) -> int:
    """A benchmark script's main: ``run(args)`` then the table; 1 when it cannot measure."""
    try:
        rows = run(args)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    report(rows, title, args.json)
    return 0


# ---------------------------------------------------------------------------
# Command line


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny sizes and few repeats: only checks that the benchmark runs",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--reference", metavar="PATH",
        help=f"the reference seed_worker.py to compare with (default: {DEFAULT_REFERENCE} "
        "if it exists; with --quick only when given explicitly)",
    )  # fmt: skip
    parser.add_argument("--no-reference", action="store_true", help="skip the reference worker")


def reference_path(args: argparse.Namespace) -> Path | None:
    """The reference worker to compare with, or None (with a note on stdout).

    Raises :class:`BenchError` when ``--reference`` names a missing file.
    """
    if args.no_reference:
        return None
    if args.reference:
        path = Path(args.reference)
        if not path.is_file():
            raise BenchError(f"--reference: {path} is not a file (expected seed_worker.py)")
        return path.resolve()
    if args.quick:
        return None
    if DEFAULT_REFERENCE.is_file():
        return DEFAULT_REFERENCE
    print(f"note: {DEFAULT_REFERENCE} not found; reference figures skipped (pass --reference)")
    return None


def parse_sizes(text: str) -> list[int]:
    """``"2e7,1e8"`` -> ``[20000000, 100000000]``; raises ``argparse.ArgumentTypeError``."""
    sizes = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected numbers like 2e7,1e8, got {part!r}"
            ) from None
        if value < 1 or value != int(value):
            raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {part!r}")
        sizes.append(int(value))
    return sizes


# ---------------------------------------------------------------------------
# Frames and child peers


def frame(message: Any) -> bytes:
    """One frame: 8-byte big-endian length, then compact JSON (fakecoord.wire's framing)."""
    return wire.encode_frame(message)


def request_frame(request_id: int, method: str, params: Any) -> bytes:
    return wire.encode_request(request_id, method, params)


def worker_env() -> dict[str, str]:
    """The environment the coordinator gives a worker, with this repo importable."""
    return child_environment(None, [REPO_ROOT])


def worker_argv(factory: str, config: Any, port: int, reference: Path | None = None) -> list[str]:
    """How the coordinator starts our worker (or, with ``reference``, the seed worker)."""
    program = [PYTHON, "-m", "worker"] if reference is None else [PYTHON, str(reference)]
    return program + [
        "--factory", factory, "--config-json", json.dumps(config),
        "--connect-host", LOOPBACK, "--connect-port", str(port),
    ]  # fmt: skip


def _set_io_timeout(sock: socket.socket, seconds: float) -> None:
    # Kernel-side timeouts keep the socket blocking: a Python-level timeout
    # would add a poll() before every recv and blur microsecond figures.
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class Peer:
    """A child process that connects back to a listener of ours, as a worker does.

    ``argv_for_port(port)`` builds the command line.  The constructor returns
    once the child connected (raises :class:`BenchError` if it exits first or
    takes longer than ``connect_timeout``).  Every read or write gives up
    after ``io_timeout`` seconds, and a watchdog kills the child after
    ``lifetime`` seconds, so no benchmark can hang.
    """

    def __init__(
        self,
        name: str,
        argv_for_port: Callable[[int], list[str]],
        *,
        connect_timeout: float = 120.0,
        io_timeout: float = 300.0,
        lifetime: float = 3600.0,
    ) -> None:
        self.name = name
        self.next_id = 1
        self._stderr = tempfile.TemporaryFile()
        try:
            started = launch(argv_for_port, env=worker_env(), cwd=REPO_ROOT, stderr=self._stderr)
        except FakecoordError as exc:
            self._stderr.close()
            raise BenchError(f"{name} cannot start: {exc}") from None
        self.proc = started.process
        self._watchdog = threading.Timer(lifetime, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            sock = started.accept(connect_timeout).sock
        except WorkerExited:
            self._fail(f"exited with status {self.proc.returncode} before connecting")
        except WorkerTimeout:
            self._fail(f"did not connect within {connect_timeout:.0f} s")
        _set_io_timeout(sock, io_timeout)
        self.sock = sock
        self.reader = sock.makefile("rb", buffering=1 << 16)

    # -- raw frames --------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        """Read one frame body; raises :class:`BenchError` on EOF or timeout."""
        header = self.reader.read(8)
        if not header or len(header) < 8:
            self._fail("closed the connection (or timed out) instead of answering")
        (length,) = wire.HEADER.unpack(header)
        body = self.reader.read(length)
        if body is None or len(body) < length:
            self._fail(f"sent {0 if body is None else len(body)} of {length} body bytes")
        return body

    def request(self, method: str, params: Any = None) -> bytes:
        """The next request frame (ids count up from 1 like the coordinator's)."""
        data = request_frame(self.next_id, method, params)
        self.next_id += 1
        return data

    def call(self, method: str, params: Any = None) -> Any:
        """Send one request and return its result; raises :class:`BenchError` on ok: false."""
        request_id = self.next_id
        self.send(self.request(method, params))
        response = json.loads(self.recv())
        if response.get("id") != request_id or response.get("ok") is not True:
            self._fail(f"{method} failed: {str(response.get('error', response))[:2000]}")
        return response["result"]

    # -- lifetime ------------------------------------------------------------

    def stderr_tail(self, limit: int = 4000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-limit:]

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def _fail(self, what: str) -> NoReturn:
        self._kill()
        self.proc.wait(timeout=30)
        self._watchdog.cancel()
        tail = self.stderr_tail()
        raise BenchError(f"{self.name} {what}" + (f"; its stderr:\n{tail}" if tail else ""))

    def close(self) -> None:
        """Close the connection (a worker exits at EOF) and reap the child."""
        for closeable in ("reader", "sock"):
            if hasattr(self, closeable):
                getattr(self, closeable).close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill()
            self.proc.wait(timeout=30)
        self._watchdog.cancel()
        self._stderr.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_worker(
    factory: str, config: Any, reference: Path | None = None, **peer_options: Any
) -> Peer:
    """Start our worker (or the reference seed worker) with ``factory(config)``."""
    name = "our worker" if reference is None else f"reference worker {reference.name}"
    return Peer(name, lambda port: worker_argv(factory, config, port, reference), **peer_options)


# ---------------------------------------------------------------------------
# Memory (Linux): peak resident set of this process


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/self/status has no {field} (Linux only)")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS and return that (bytes)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (bytes)."""
    return _status_bytes("VmHWM")


def run_json_child(argv: list[str], timeout: float = 900.0) -> dict[str, Any]:
    """Run a child that prints one JSON object as its last stdout line."""
    done = subprocess.run(
        argv, capture_output=True, text=True, env=worker_env(), cwd=REPO_ROOT, timeout=timeout
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(
            f"child {' '.join(argv[1:])} failed with status {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
