"""Chaos, end to end: the coordinator vanishing, signals, a killed / stopped /
slow worker under fakecoord, and a full disk while exporting.

The issue-5 contract: a worker that loses its coordinator or gets a signal
leaves promptly (every wait here is bounded) with one line on stderr that
says why and no traceback; it never leaves a half-written pack behind (no
``manifest.json`` without complete values, no ``.partial-`` leftovers), not
even when the disk is full; and a worker that dies, hangs or answers slowly
under fakecoord is detected within the call timeout and reported with its
exit status and the end of its stderr.

Covered elsewhere and not repeated here: SIGTERM while idle with its exit
status (``test_worker_process.py::test_sigterm_while_idle_exits_zero``; here
it is re-checked only for the one-line stderr), EOF after a half-close inside
a frame (``test_worker_process.py::test_eof_inside_a_frame_...``), a fake
worker that hangs (``test_client.py::test_hung_worker_times_out_and_is_killed``)
and a whole ``fakecoord run`` surviving crash, hang and error faults
(``test_sim.py::test_crash_hang_and_error_faults_are_survived_and_reported``;
``test_soak.py`` soaks the same faults over more rounds).
"""

from __future__ import annotations

import json
import linecache
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakecoord import ClientClosed, WorkerClient, WorkerExited, WorkerTimeout
from tools.chaos import write_old_pack
from worker.packs import MANIFEST_NAME, VALUES_NAME

from .conftest import IO_TIMEOUT

pytestmark = pytest.mark.timeout(120)

FACTORY = "chaos_workload:make_chaos"
SCHEMA = "chaos-schema"
POLL = 0.0005
"""Seconds between two looks at a directory while waiting for an export to start."""

CHAOS_WORKLOAD_SOURCE = textwrap.dedent(
    '''
    """A workload that misbehaves on request, for the chaos tests.

    Config keys (all optional): ``tensors`` / ``numel`` (init_model builds a
    torch module with that many float32 buffers of that many elements; without
    ``tensors`` the state is a plain dict and torch is never imported),
    ``trip_signal`` (a signal name: the first time the worker takes the raw
    memory of a marked buffer while writing a pack, the process sends itself
    that signal), ``marker`` (train_window creates this file first),
    ``say`` (train_window writes a line on stderr first), ``sleep`` (seconds
    train_window sleeps, at most MAX_SLEEP), ``metric_keys`` / ``metric_width``
    (the size of the metrics dict train_window returns).
    """
    import os
    import signal
    import sys
    import time

    MAX_SLEEP = 60.0


    def _tripwire(signal_name, numel):
        import torch

        class Tripwire(torch.Tensor):
            fired = False

            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if not Tripwire.fired and getattr(func, "__name__", "") == "data_ptr":
                    Tripwire.fired = True
                    os.kill(os.getpid(), getattr(signal, signal_name))
                return super().__torch_function__(func, types, args, kwargs or {})

        return torch.full((numel,), -1.0).as_subclass(Tripwire)


    class Chaos:
        workload_name = "chaos"

        def __init__(self, config):
            self.config = config or {}

        def runtime_device(self):
            return "python-cpu"

        def capability_probe(self):
            return {"preferred_backends": ["cpu"], "work_units_per_second": 1.0,
                    "target_window_seconds": 1}

        def init_model(self, device):
            tensors = self.config.get("tensors")
            if not tensors:
                return {"device": device}
            import torch

            numel = int(self.config.get("numel", 16))
            module = torch.nn.Module()
            for i in range(int(tensors)):
                module.register_buffer(f"t{i:04d}", torch.full((numel,), float(i)))
            if self.config.get("trip_signal"):
                # Sorts after t0001: two buffers are written before it trips.
                module.register_buffer("t0001x", _tripwire(self.config["trip_signal"], numel))
            return {"model": module}

        def train_window(self, state, batches):
            if self.config.get("say"):
                print("chaos: train_window started", file=sys.stderr, flush=True)
            if self.config.get("marker"):
                open(self.config["marker"], "w").close()
            time.sleep(min(float(self.config.get("sleep", 0)), MAX_SLEEP))
            width = int(self.config.get("metric_width", 1))
            keys = int(self.config.get("metric_keys", 1))
            return {f"k{i:08d}": "x" * width for i in range(keys)}

        def evaluate(self, state, split):
            return {"loss": 0.0}

        def merge_candidate_models(self, base, candidates, policy):
            return None

        def apply_single_root_ema(self, base, merged, policy):
            return None

        def reconcile_canonical_model(self, local, canonical, strategy):
            return None


    def make_chaos(config):
        return Chaos(config)
    '''
)

BIG_RESPONSE = {"metric_keys": 16 * 1024, "metric_width": 1024}
"""train_window's answer is then a ~17 MB frame: far more than the socket buffers hold."""
SMALL_RCVBUF = 64 * 1024
"""The coordinator's receive buffer in mid-response tests, so the worker must block writing."""


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    root = tmp_path / "chaos_workload_root"
    root.mkdir()
    (root / "chaos_workload.py").write_text(CHAOS_WORKLOAD_SOURCE, encoding="utf-8")
    return root


@pytest.fixture
def spawn_chaos(worker_process, chaos_dir):
    def spawn(config=None, **kwargs):
        return worker_process(FACTORY, config, pythonpath=[chaos_dir], **kwargs)

    return spawn


# -- what every scenario asserts ------------------------------------------------


def assert_one_line_reason(stderr: str, *needles: str) -> str:
    """Exactly one non-empty stderr line, from the worker, with every needle; no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("burn-p2p worker: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)
    return lines[0]


def partial_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_pack_untouched(target: Path, before: dict[str, bytes] | None) -> None:
    """``target`` is exactly as it was: absent (``before`` None) or the same files."""
    if before is None:
        assert not target.exists(), sorted(p.name for p in target.iterdir())
    else:
        assert snapshot(target) == before


def assert_complete_pack(target: Path) -> None:
    manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    values = target / manifest["values_f32_le"]  # a re-export names its own values file
    assert values.stat().st_size == manifest["parameter_count"] * 4
    assert sorted(os.listdir(target)) == sorted([MANIFEST_NAME, values.name])


def same_pack(now: dict[str, bytes], whole: dict[str, bytes]) -> bool:
    """Two snapshots of pack directories hold the same pack: equal manifests but
    for the values file's name, and equal values."""
    ours, theirs = json.loads(now[MANIFEST_NAME]), json.loads(whole[MANIFEST_NAME])
    ours_name, theirs_name = ours.pop("values_f32_le"), theirs.pop("values_f32_le")
    return ours == theirs and now.get(ours_name) == whole[theirs_name]


def export_params(model: str, target: Path, **extra: object) -> dict:
    return {
        "model_id": model,
        "parameter_pack_path": str(target),
        "model_schema_hash": SCHEMA,
        **extra,
    }


def recv_exact(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(IO_TIMEOUT)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return data


def wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + IO_TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, f"{what}: {path} did not appear in {IO_TIMEOUT} s"
        time.sleep(0.005)


# -- the coordinator vanishes ----------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close so the peer sees a reset, not an orderly end of stream."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("cut", ["header", "body"])
def test_coordinator_vanishes_mid_request(spawn_chaos, how, cut):
    proc = spawn_chaos()
    assert proc.conn.request("hello")["ok"]
    body = json.dumps({"id": 2, "method": "hello", "params": None}).encode()
    frame = struct.pack(">Q", len(body)) + body
    proc.conn.send_raw(frame[:5] if cut == "header" else frame[: 8 + len(body) // 2])
    time.sleep(0.05)  # let the worker read the half frame before a reset discards it
    if how == "reset":
        _reset(proc.conn.sock)
        needle = "connection to the coordinator failed"
    else:
        proc.conn.close()
        needle = "inside a frame"
    assert proc.wait() == 1
    assert_one_line_reason(proc.stderr, needle)


def test_coordinator_vanishes_mid_response(spawn_chaos):
    """The coordinator reads the start of a large answer, then resets the connection."""
    proc = spawn_chaos(BIG_RESPONSE)
    conn = proc.conn
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    model = conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    conn.send_frame(
        {"id": 2, "method": "train_window", "params": {"model_id": model, "batches": []}}
    )
    header = recv_exact(conn.sock, 8)  # the worker is writing its answer now
    (length,) = struct.unpack(">Q", header)
    assert length > 16 * 1024 * 1024
    _reset(conn.sock)
    assert proc.wait() == 1
    assert_one_line_reason(proc.stderr, "coordinator went away while the worker was answering")


@pytest.mark.parametrize("answer", ["small", "large"])
def test_coordinator_vanishes_right_after_a_request(spawn_chaos, tmp_path, answer):
    """The coordinator closes while the hook runs; the worker finds out when it answers."""
    marker = tmp_path / "in-hook"
    config = {"marker": str(marker), "sleep": 0.2}
    if answer == "large":
        config.update(BIG_RESPONSE)
    proc = spawn_chaos(config)
    model = proc.conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    proc.conn.send_frame(
        {"id": 2, "method": "train_window", "params": {"model_id": model, "batches": []}}
    )
    wait_for(marker, "train_window")
    proc.conn.close()
    code = proc.wait()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    if answer == "large":
        # More than the socket buffers hold: the write itself fails.
        assert code == 1
        assert_one_line_reason(proc.stderr, "coordinator went away")
    else:
        # The small answer fits in the kernel's buffer; the worker then sees
        # the end of the stream at a frame boundary (exit 0) or the reset our
        # unread answer provoked (exit 1): one line says which, either way.
        assert code in (0, 1), proc.stderr
        assert len(lines) == 1, proc.stderr
        expected = "closed the connection" if code == 0 else "coordinator went away"
        assert expected in lines[0], proc.stderr


# -- signals -------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_idle_stops_with_one_line(spawn_chaos, sig):
    proc = spawn_chaos()
    assert proc.conn.request("hello")["ok"]
    proc.proc.send_signal(sig)
    assert proc.wait() == 0
    assert_one_line_reason(proc.stderr, f"received {sig.name}", "after 1 requests")
    assert proc.conn.at_eof()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_inside_a_hook_stops_with_one_line(spawn_chaos, tmp_path, sig):
    marker = tmp_path / "in-hook"
    proc = spawn_chaos({"marker": str(marker), "sleep": 30})
    model = proc.conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    proc.conn.send_frame(
        {"id": 2, "method": "train_window", "params": {"model_id": model, "batches": []}}
    )
    wait_for(marker, "train_window")
    proc.proc.send_signal(sig)
    assert proc.wait() == 0
    assert_one_line_reason(proc.stderr, f"received {sig.name}")
    assert proc.conn.at_eof()  # no answer: the stop wins over the hook


def test_sigterm_while_blocked_writing_an_answer(spawn_chaos):
    """A coordinator that stops reading cannot keep the worker from stopping."""
    proc = spawn_chaos(BIG_RESPONSE)
    conn = proc.conn
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    model = conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    conn.send_frame(
        {"id": 2, "method": "train_window", "params": {"model_id": model, "batches": []}}
    )
    recv_exact(conn.sock, 8)  # it has started writing ~17 MB into a 64 KiB window
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert_one_line_reason(proc.stderr, "received SIGTERM")


EXPORT_CASES = [
    pytest.param(signal.SIGTERM, "fresh", id="SIGTERM-fresh-directory"),
    pytest.param(signal.SIGINT, "existing", id="SIGINT-existing-pack"),
]


@pytest.mark.parametrize(("sig", "where"), EXPORT_CASES)
def test_signal_mid_export_self_delivered_leaves_no_half_pack(spawn_chaos, tmp_path, sig, where):
    """The signal arrives deterministically after two of five tensors were written."""
    proc = spawn_chaos({"tensors": 4, "numel": 4096, "trip_signal": sig.name})
    model = proc.conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    target = tmp_path / "packs" / "pack"
    before = write_old_pack(target) if where == "existing" else None
    target.parent.mkdir(exist_ok=True)
    proc.conn.send_frame(
        {"id": 2, "method": "export_parameter_pack", "params": export_params(model, target)}
    )
    assert proc.conn.recv_frame() is None  # stopped without answering
    assert proc.wait() == 0
    assert_one_line_reason(proc.stderr, f"received {sig.name}", "after 2 requests")
    assert partial_leftovers(tmp_path / "packs") == []
    assert_pack_untouched(target, before)


def _values_being_written(parent: Path) -> list[Path]:
    """Temporary values files that already hold bytes (the export is mid-write)."""
    found = []
    for path in parent.rglob("*"):
        in_staging = ".partial-" in path.parent.name and path.name == VALUES_NAME
        if in_staging or (path.name.startswith(".values") and ".partial-" in path.name):
            try:
                if path.stat().st_size > 0:
                    found.append(path)
            except FileNotFoundError:
                pass
    return found


def _stop_mid_write(proc, parent: Path) -> dict | None:
    """Watch ``parent`` until the export is writing values, then SIGSTOP the
    worker and return what was on disk.  None if the export got past its
    values write first (it is then resumed and will answer)."""
    deadline = time.monotonic() + IO_TIMEOUT
    sock = proc.conn.sock
    while time.monotonic() < deadline:
        if _values_being_written(parent):
            os.kill(proc.proc.pid, signal.SIGSTOP)
            if not _values_being_written(parent):  # renamed into place meanwhile
                os.kill(proc.proc.pid, signal.SIGCONT)
                return None
            files = [p for p in parent.rglob("*") if p.is_file()]
            return {str(p.relative_to(parent)): p.stat().st_size for p in files}
        readable, _, _ = select.select([sock], [], [], POLL)
        if readable:
            return None
    pytest.fail(f"the export did not start within {IO_TIMEOUT} s; stderr:\n{proc.stderr}")


@pytest.mark.parametrize(
    ("sig", "where"),
    [
        pytest.param(signal.SIGINT, "fresh", id="SIGINT-fresh-directory"),
        pytest.param(signal.SIGTERM, "existing", id="SIGTERM-existing-pack"),
    ],
)
def test_signal_from_outside_mid_export_leaves_no_half_pack(spawn_chaos, tmp_path, sig, where):
    """A large export is caught writing values (SIGSTOP), signalled, then resumed.

    The moments right after a temporary name is created are a separate case:
    see ``test_a_stop_at_any_line_of_an_export_leaves_no_half_written_file``.
    """
    tensors, numel = 64, 256 * 1024  # 64 MiB of values
    proc = spawn_chaos({"tensors": tensors, "numel": numel})
    conn = proc.conn
    model = conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    seen = None
    for attempt in range(5):  # retried only if an export finishes before we look
        parent = tmp_path / f"packs-{attempt}"
        parent.mkdir()
        target = parent / "pack"
        before = write_old_pack(target) if where == "existing" else None
        request_id = attempt + 2
        conn.send_frame(
            {
                "id": request_id,
                "method": "export_parameter_pack",
                "params": export_params(model, target),
            }
        )
        seen = _stop_mid_write(proc, parent)
        if seen is not None:
            break
        answer = conn.recv_frame()
        assert answer == {"id": request_id, "ok": True, "result": {"ok": True}}
        assert_complete_pack(target)
    assert seen is not None, "every export finished before it could be caught"
    assert not (target / MANIFEST_NAME).exists() or before is not None
    proc.proc.send_signal(sig)
    os.kill(proc.proc.pid, signal.SIGCONT)
    assert conn.recv_frame() is None
    assert proc.wait() == 0
    assert_one_line_reason(proc.stderr, f"received {sig.name}")
    assert partial_leftovers(parent) == [], seen
    assert_pack_untouched(target, before)


_STOP_FILES = ("packs.py", "artifacts.py", "files.py", "tensor_io.py", "tempfile.py")
"""Where a sweep may raise: every line the worker runs in these files while writing."""


def _sweep_stops(write, reset, check) -> tuple[int, list[str]]:
    """Run ``write()`` once per stop point, raising ``WorkerStop`` there as the
    worker's signal handler would; ``reset()`` prepares each run and
    ``check()`` returns what is wrong on disk after it ("" when nothing).
    Returns (stop points tried, violations as "file:line: problem")."""
    from worker.errors import WorkerStop

    def eligible(frame) -> bool:
        # A ``try:`` line is a NOP: the interpreter never runs a signal handler
        # there, and an exception raised there by a tracer escapes the try.
        return frame.f_code.co_filename.endswith(_STOP_FILES) and not linecache.getline(
            frame.f_code.co_filename, frame.f_lineno
        ).lstrip().startswith("try:")

    count = 0

    def counter(frame, event, arg):
        nonlocal count
        if event == "line" and eligible(frame):
            count += 1
        return counter

    reset()
    sys.settrace(counter)
    try:
        write()
    finally:
        sys.settrace(None)
    violations = []
    for stop_at in range(count):
        seen = 0
        where = None

        def tracer(frame, event, arg, stop_at=stop_at):
            nonlocal seen, where
            if event == "line" and eligible(frame):
                if seen == stop_at:
                    where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
                    raise WorkerStop("SIGTERM")
                seen += 1
            return tracer

        reset()
        sys.settrace(tracer)
        try:
            write()
        except WorkerStop:
            pass
        finally:
            sys.settrace(None)
        problem = check()
        if problem:
            violations.append(f"{where}: {problem}")
    return count, violations


@pytest.mark.parametrize("where", ["fresh", "existing", "artifact"])
def test_a_stop_at_any_line_of_an_export_leaves_no_half_written_file(tmp_path, where):
    """A stop (the handler's ``WorkerStop``) is raised at every line the worker
    runs while writing a pack or an artifact, one run per line, in process.
    After each: no ``.partial-`` entry anywhere, and the target is either as it
    was or complete and new; a manifest always describes the values beside it.
    (The external-signal test above can aim only at the long values write; its
    watcher once hit the moment right after the staging directory appeared.)"""
    import torch

    from worker import artifacts, packs

    state = {"model": torch.nn.Linear(3, 2)}
    root = tmp_path / "out"
    reference = tmp_path / "reference"
    reference.mkdir()
    if where == "artifact":
        target = root / "model.safetensors"
        artifacts.save_state(state, reference / target.name)
        expected_new = {target.name: (reference / target.name).read_bytes()}

        def write():
            artifacts.save_state(state, target)

    else:
        target = root / "pack"
        packs.export_pack(state, reference / "pack", SCHEMA)
        expected_new = snapshot(reference / "pack")

        def write():
            packs.export_pack(state, target, SCHEMA)

    before: dict[str, bytes] | None = None

    def reset():
        nonlocal before
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        before = write_old_pack(target) if where == "existing" else None

    def check() -> str:
        leftovers = partial_leftovers(root)
        if leftovers:
            return f"left {[p.name for p in leftovers]}"
        if where == "artifact":
            now = snapshot(root)
            return "" if now in ({}, expected_new) else f"artifact is {sorted(now)}"
        if not target.exists():
            return "" if before is None else "the old pack directory vanished"
        now = snapshot(target)
        if MANIFEST_NAME not in now:
            return "no manifest: re-export never removes it"
        named = json.loads(now[MANIFEST_NAME])["values_f32_le"]
        if set(now) != {MANIFEST_NAME, named}:
            return f"files no manifest names: {sorted(set(now) - {MANIFEST_NAME, named})}"
        for whole in (before, expected_new):
            if whole and same_pack(now, whole):
                return ""
        return f"manifest/values mismatch or unknown manifest {now[MANIFEST_NAME][:60]!r}"

    tried, violations = _sweep_stops(write, reset, check)
    assert tried > 20  # the sweep really walked the writer
    assert violations == [], f"{len(violations)} of {tried} stop points:\n" + "\n".join(violations)


# -- a killed, stopped or slow worker under fakecoord -----------------------------------


def _client(chaos_dir: Path, tmp_path: Path, config: dict, **kwargs: object) -> WorkerClient:
    return WorkerClient.spawn(
        FACTORY,
        config,
        pythonpath=[chaos_dir],
        stderr=tmp_path / "worker.log",
        accept_timeout=60.0,
        **kwargs,
    )


def _signal_when(path: Path, pid: int, sig: signal.Signals) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + IO_TIMEOUT
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(pid, sig)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigkill_during_a_call_is_reported_with_status_and_stderr_tail(chaos_dir, tmp_path):
    marker = tmp_path / "in-hook"
    config = {"marker": str(marker), "sleep": 30, "say": True}
    with _client(chaos_dir, tmp_path, config, call_timeout=60.0) as client:
        model = client.init_model("cpu")
        killer = _signal_when(marker, client.pid, signal.SIGKILL)
        with pytest.raises(WorkerExited) as info:
            client.train_window(model, [])
        killer.join(IO_TIMEOUT)
        exc = info.value
        assert exc.returncode == -signal.SIGKILL and exc.method == "train_window"
        assert "killed by SIGKILL" in str(exc)
        assert "chaos: train_window started" in exc.stderr_tail
        assert client.returncode == -signal.SIGKILL  # reaped
        with pytest.raises(ClientClosed):
            client.hello()


def test_stopped_worker_is_detected_by_the_call_timeout_and_killed(chaos_dir, tmp_path):
    marker = tmp_path / "in-hook"
    config = {"marker": str(marker), "sleep": 30, "say": True}
    with _client(chaos_dir, tmp_path, config, call_timeout=60.0) as client:
        model = client.init_model("cpu")
        stopper = _signal_when(marker, client.pid, signal.SIGSTOP)
        with pytest.raises(WorkerTimeout) as info:
            client.train_window(model, [], timeout=1.0)
        stopper.join(IO_TIMEOUT)
        exc = info.value
        assert exc.method == "train_window" and exc.timeout == 1.0
        assert "no response within 1 s" in str(exc) and "the worker was killed" in str(exc)
        assert "chaos: train_window started" in str(exc)  # the stderr tail
        assert client.returncode == -signal.SIGKILL
        with pytest.raises(ClientClosed):
            client.hello()


def test_slow_answers_within_the_timeout_pass_and_slower_ones_are_cut(chaos_dir, tmp_path):
    with _client(chaos_dir, tmp_path, {"sleep": 0.3}, call_timeout=60.0) as client:
        model = client.init_model("cpu")
        assert client.train_window(model, []) == {"k00000000": "x"}
        assert client.hello()["workload_name"] == "chaos"  # still in step
        with pytest.raises(WorkerTimeout) as info:
            client.train_window(model, [], timeout=0.05)
        assert info.value.timeout == 0.05
        assert client.returncode == -signal.SIGKILL
    # The coordinator goes on with a new worker.
    with _client(chaos_dir, tmp_path, {}, call_timeout=60.0) as client:
        assert client.hello()["workload_name"] == "chaos"


# -- a full disk while exporting -----------------------------------------------------------

TMPFS_BYTES = 1024 * 1024
PACK_NUMEL = 65536  # one tensor: 256 KiB of values; eight of them: 2 MiB
FSIZE_LIMIT = 512 * 1024
FSIZE_LAUNCHER = textwrap.dedent(
    """
    import resource, signal, sys
    limit = int(sys.argv.pop(1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    # Ignored, so a write past the limit fails with EFBIG instead of killing us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from worker.__main__ import main
    sys.exit(main())
    """
)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path | None]:
    """A 1 MiB tmpfs, or None where mounting is refused (not root, no mount, a sandbox)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
            capture_output=True,
            timeout=IO_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        yield None
        return
    try:
        yield mount_point
    finally:
        umount = subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=60)
        if umount.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=60)


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def _full_disk_cases(proc, root: Path, reason: str) -> None:
    """Fresh directory, existing empty directory, existing pack: each export fails
    cleanly (ok:false naming the problem) and leaves the target as it was."""
    conn = proc.conn
    model = conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    (root / "empty").mkdir()
    old = write_old_pack(root / "old")
    for name, before in (("fresh", None), ("empty", {}), ("old", old)):
        target = root / name
        answer = conn.request("export_parameter_pack", export_params(model, target))
        assert answer["ok"] is False, (name, answer)
        first = answer["error"].splitlines()[0]
        assert first.startswith("export_parameter_pack: cannot write parameter pack"), first
        assert str(target) in first and reason in first, first
        assert "Traceback" not in answer["error"]
        assert partial_leftovers(root) == [], name
        assert_pack_untouched(target, before)
    assert conn.request("hello")["ok"]  # still serving


def test_full_disk_tmpfs_export_fails_cleanly(spawn_chaos, tiny_tmpfs, tmp_path):
    if tiny_tmpfs is None:
        pytest.skip("mounting a tmpfs is refused here; the RLIMIT_FSIZE test covers a full disk")
    proc = spawn_chaos({"tensors": 8, "numel": PACK_NUMEL})
    _full_disk_cases(proc, tiny_tmpfs, "no space left on device")
    shutil.rmtree(tiny_tmpfs / "old")
    # Space held by a deleted file that is still open would not come back.
    assert free_bytes(tiny_tmpfs) == TMPFS_BYTES
    # Exactly 1 MiB of values fills the tmpfs: then the manifest is what fails.
    model = proc.conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    exactly_full = {"include_globs": ["t0000", "t0001", "t0002", "t0003"], "exclude_globs": []}
    target = tiny_tmpfs / "manifest-does-not-fit"
    answer = proc.conn.request(
        "export_parameter_pack", export_params(model, target, state_dict_filter=exactly_full)
    )
    assert answer["ok"] is False and "no space left on device" in answer["error"], answer
    assert partial_leftovers(tiny_tmpfs) == [] and not target.exists()
    assert free_bytes(tiny_tmpfs) == TMPFS_BYTES
    # Elsewhere the same export works: nothing was left half-done in the worker.
    elsewhere = tmp_path / "disk" / "pack"
    assert proc.conn.request("export_parameter_pack", export_params(model, elsewhere))["ok"]
    assert_complete_pack(elsewhere)
    assert elsewhere.joinpath(VALUES_NAME).stat().st_size == 8 * PACK_NUMEL * 4


def test_full_disk_file_size_limit_export_fails_cleanly(spawn_chaos, tmp_path):
    launcher = [sys.executable, "-c", FSIZE_LAUNCHER, str(FSIZE_LIMIT)]
    proc = spawn_chaos({"tensors": 8, "numel": PACK_NUMEL}, command=launcher)
    root = tmp_path / "limited"
    root.mkdir()
    _full_disk_cases(proc, root, "File too large")
