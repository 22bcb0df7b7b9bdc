"""The worker process from start to exit under stops, bad flags and huge headers
(issue #9 items 7, 9, 10, 11 and 14): every way out is an exit code and one line,
never a traceback, and a stop is never lost."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import IO_TIMEOUT, REPO_ROOT

QUICK = "quick_workload:make_quick"

STUBBORN_SOURCE = textwrap.dedent(
    '''
    """Hooks that swallow the worker's stop (a bare except), and a slow import."""
    import os, time

    MARKERS = os.environ["STUBBORN_MARKERS"]
    if os.environ.get("STUBBORN_SLOW_IMPORT"):
        open(os.path.join(MARKERS, "importing"), "w").close()
        time.sleep(120)


    def mark(name):
        open(os.path.join(MARKERS, name), "w").close()


    class Stubborn:
        def runtime_device(self):
            return "python-cpu"

        def capability_probe(self):
            return {"preferred_backends": [], "work_units_per_second": 1.0,
                    "target_window_seconds": 1}

        def init_model(self, device):
            return {}

        def train_window(self, state, batches):
            mark("in-hook")
            try:
                time.sleep(120)
            except:  # noqa: E722  (the point: it swallows the stop)
                mark("swallowed")
            if batches and batches[0].get("kind") == "sleep-again":
                time.sleep(120)
            return {"swallowed": 1}

        def evaluate(self, state, split):
            return {}

        def merge_candidate_models(self, base, candidates, policy):
            return None

        def apply_single_root_ema(self, base, merged, policy):
            return None

        def reconcile_canonical_model(self, local, canonical, strategy):
            return None


    def make(config):
        return Stubborn()
    '''
)


@pytest.fixture
def stubborn_dir(tmp_path: Path) -> Path:
    root = tmp_path / "stubborn"
    (root / "markers").mkdir(parents=True)
    (root / "stubborn_workload.py").write_text(STUBBORN_SOURCE, encoding="utf-8")
    return root


def wait_for(path: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + IO_TIMEOUT * 2
    while not path.exists():
        assert proc is None or proc.poll() is None, "the worker exited early"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def launch(
    tmp_path: Path, port: int, *, factory: str, pythonpath: Path, env: dict | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, Path]:  # fmt: skip
    stderr = tmp_path / f"stderr-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "PYTHONPATH": f"{pythonpath}{os.pathsep}{REPO_ROOT}", **(env or {})}
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--factory", factory, "--config-json", "{}",
             "--connect-host", "127.0.0.1", "--connect-port", str(port), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=full_env,
            cwd=tmp_path,
        )  # fmt: skip
    return proc, stderr


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=IO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the worker did not exit")


def assert_one_clean_line(stderr: Path, *fragments: str) -> None:
    text = stderr.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("burn-p2p worker: "), text
    for fragment in fragments:
        assert fragment in lines[0], text


# -- item 7: a swallowed stop is never lost ---------------------------------------------------


@pytest.mark.parametrize("kind", ["returns", "sleep-again"])
def test_a_stop_swallowed_by_a_hook_still_stops_the_worker(worker_process, stubborn_dir, kind):
    """The hook eats the first SIGTERM with a bare except.  When it returns, the
    worker stops; if it sleeps again instead, the next SIGTERM still reaches it
    (signals were once set to SIG_IGN, and later stops were ignored forever)."""
    markers = stubborn_dir / "markers"
    proc = worker_process(
        "stubborn_workload:make", {}, pythonpath=[stubborn_dir],
        env={"STUBBORN_MARKERS": str(markers)},
    )  # fmt: skip
    proc.conn.send_frame({"id": 1, "method": "train_window",
                          "params": {"model_id": "m0", "batches": [{"kind": kind}]}})  # fmt: skip
    # m0 does not exist: the request is refused before the hook; init first.
    assert proc.conn.recv_frame()["ok"] is False
    assert proc.conn.request("init_model", {"device": "cpu"})["ok"]
    proc.conn.send_frame({"id": 3, "method": "train_window",
                          "params": {"model_id": "m1", "batches": [{"kind": kind}]}})  # fmt: skip
    wait_for(markers / "in-hook", proc.proc)
    proc.proc.send_signal(signal.SIGTERM)
    wait_for(markers / "swallowed", proc.proc)
    if kind == "sleep-again":
        time.sleep(0.2)
        proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "received SIGTERM" in proc.stderr
    assert proc.conn.at_eof()


# -- item 10: stops while starting or connecting -----------------------------------------------


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp (Linux)")
def test_a_stop_while_connecting_exits_zero_with_one_line(tmp_path, quick_workload_dir):
    """A listener whose accept queue is full drops the worker's SYN, so the worker
    sits in connect(); SIGTERM there used to be a traceback and exit status 1."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
    try:
        time.sleep(0.5)
        before = _syn_count(port)
        proc, stderr = launch(tmp_path, port, factory=QUICK, pythonpath=quick_workload_dir)
        deadline = time.monotonic() + IO_TIMEOUT * 2
        while _syn_count(port) <= before:
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the worker never tried to connect"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert finish(proc) == 0
        assert_one_clean_line(stderr, "received SIGTERM before the connection was made")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _syn_count(port: int) -> int:
    """Sockets in SYN_SENT towards ``port`` on this machine."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        count += sum(
            1 for r in rows
            if r.split()[3] == "02" and int(r.split()[2].rsplit(":", 1)[1], 16) == port
        )  # fmt: skip
    return count


def test_ctrl_c_while_importing_the_factory_is_a_stop_not_an_import_error(tmp_path, stubborn_dir):
    listener = socket.create_server(("127.0.0.1", 0))
    markers = stubborn_dir / "markers"
    try:
        proc, stderr = launch(
            tmp_path, listener.getsockname()[1], factory="stubborn_workload:make",
            pythonpath=stubborn_dir,
            env={"STUBBORN_MARKERS": str(markers), "STUBBORN_SLOW_IMPORT": "1"},
        )  # fmt: skip
        wait_for(markers / "importing", proc)
        proc.send_signal(signal.SIGINT)
        assert finish(proc) == 0
        assert_one_clean_line(stderr, "received SIGINT while starting")
        assert "cannot import" not in stderr.read_text()
    finally:
        listener.close()


# -- item 9: the port is range-checked -----------------------------------------------------------


@pytest.mark.parametrize("offset", [65536, -65536, 0])
def test_a_port_outside_1_to_65535_is_refused_before_connecting(
    tmp_path, quick_workload_dir, offset
):
    """65536 + P used to connect to P (the kernel takes the port modulo 2^16)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1] + offset if offset else 0
    try:
        proc, stderr = launch(tmp_path, port, factory=QUICK, pythonpath=quick_workload_dir)
        assert finish(proc) == 2
        text = stderr.read_text()
        assert "--connect-port" in text and "1..65535" in text and "Traceback" not in text
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


# -- item 11: a deeply nested --config-json --------------------------------------------------------


def test_a_deeply_nested_config_is_a_startup_error_exit_2(worker_process, quick_workload_dir):
    deep = "[" * 50_000 + "]" * 50_000  # an argument may hold 128 KiB
    proc = worker_process(QUICK, pythonpath=[quick_workload_dir], connect=False, config_json=deep)
    assert proc.wait() == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("burn-p2p worker: --config-json"), proc.stderr


# -- item 14: a huge announced frame under a raised limit ----------------------------------------


def test_a_2_pow_61_byte_header_under_a_raised_limit_allocates_nothing(worker_process,
                                                                         quick_workload_dir):  # fmt: skip
    """Under --max-frame-bytes 2^62 a header announcing 2^61 bytes once meant a
    MemoryError traceback and exit 1; now the body buffer grows as bytes arrive
    and EOF inside the frame is the usual one-line exit 1."""
    baseline = worker_process(QUICK, pythonpath=[quick_workload_dir])
    assert baseline.conn.request("shutdown")["ok"] and baseline.wait() == 0
    proc = worker_process(
        QUICK, pythonpath=[quick_workload_dir], extra_args=["--max-frame-bytes", str(2**62)]
    )
    assert proc.conn.request("hello")["ok"]
    proc.conn.send_raw(struct.pack(">Q", 2**61) + b"{" * 1000)
    time.sleep(0.5)
    proc.conn.shutdown_write()
    assert proc.wait() == 1
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    assert "connection closed inside a frame (1000 of 2305843009213693952" in proc.stderr
    assert (proc.max_rss_kib - baseline.max_rss_kib) * 1024 < 64 << 20


# -- issue 16 item 17: threads the workload leaves behind never keep the worker alive ------

LINGERING_SOURCE = textwrap.dedent(
    '''
    """A workload whose factory starts a non-daemon thread that never ends."""
    import threading, time


    class Lingering:
        def runtime_device(self):
            return "python-cpu"

        def capability_probe(self):
            return {"preferred_backends": [], "work_units_per_second": 1.0,
                    "target_window_seconds": 1}

        def init_model(self, device):
            return {}


    def make(config):
        threading.Thread(target=time.sleep, args=(3600,), name="forever", daemon=False).start()
        return Lingering()
    '''
)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "shutdown"])
def test_a_non_daemon_workload_thread_does_not_keep_the_worker_alive(
    worker_process, tmp_path, stop
):
    """The worker used to log 'received SIGTERM; stopped' (or answer shutdown) and then
    wait forever for the workload's thread, ignoring every later signal."""
    root = tmp_path / "lingering"
    root.mkdir()
    (root / "lingering_workload.py").write_text(LINGERING_SOURCE, encoding="utf-8")
    proc = worker_process("lingering_workload:make", {}, pythonpath=[root])
    assert proc.conn.request("hello")["ok"]
    if stop == "shutdown":
        assert proc.conn.request("shutdown")["ok"]
    else:
        proc.proc.send_signal(getattr(signal, stop))
    assert proc.wait() == 0  # fails the test if it is still running after IO_TIMEOUT
    assert "Traceback" not in proc.stderr, proc.stderr
    if stop != "shutdown":
        assert f"received {stop}" in proc.stderr


EXIT_SOURCE = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from worker import stopping
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    if sys.argv[1] == "atexit":
        atexit.register(time.sleep, 3600)
    print("decided", flush=True)
    sys.stdout.write("flushed at the forced exit")
    stopping.exit_process(int(sys.argv[2]))
    """
)


@pytest.mark.parametrize("blocker", ["thread", "atexit"])
def test_exit_process_ends_within_its_grace_with_the_decided_status(tmp_path, blocker):
    """Neither a thread nor an atexit hook that never returns holds the exit; stdout is flushed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", EXIT_SOURCE, blocker, "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=IO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the process did not end")
    assert proc.returncode == 3, err
    assert out == b"decided\nflushed at the forced exit"


SIGNAL_DURING_EXIT_SOURCE = textwrap.dedent(
    """
    import sys, threading, time
    from worker import stopping

    def linger():
        while stopping._exit_status is None:
            time.sleep(0.01)
        print("ending", flush=True)
        time.sleep(3600)

    stopping.install_signal_handlers()
    stopping.request("SIGTERM")  # as after a first stop: later signals used to be ignored
    threading.Thread(target=linger, daemon=False).start()
    stopping.exit_process(5, grace=3600.0)
    """
)


def test_a_stop_signal_while_the_process_is_ending_ends_it_at_once(tmp_path):
    """With a grace far beyond the test's timeout, only the signal can end the process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_DURING_EXIT_SOURCE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ending\n"
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=IO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the process did not end at the signal")
    assert status == 5, proc.stderr.read() if proc.stderr else ""
    proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
