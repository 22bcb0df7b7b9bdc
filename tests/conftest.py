"""Shared test configuration: hypothesis profiles and real-worker-process fixtures.

Hypothesis profiles: ``dev`` (the default) and ``ci`` (selected when the
``CI`` environment variable is set, as the project's CI does); an explicit
``HYPOTHESIS_PROFILE`` wins over both.

Process fixtures spawn ``python -m worker`` (or any other command line) with
the four coordinator flags through :mod:`fakecoord.spawn`, the way the Rust
coordinator does, and hand back a small raw-frame connection.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from fakecoord import spawn
from fakecoord.errors import WorkerExited, WorkerTimeout

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCEPT_TIMEOUT = 60.0
"""Seconds to wait for a spawned worker to connect (torch imports slowly on a loaded box)."""
IO_TIMEOUT = 30.0
"""Seconds to wait for one response or for a process to exit."""

# Timing is never part of a test's verdict on this shared 2-core box, so no
# deadlines and no "too slow" health check in either profile.
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


QUICK_WORKLOAD_SOURCE = textwrap.dedent(
    '''
    """A torch-free workload for process tests: starts in milliseconds."""
    import os
    import time


    class Quick:
        workload_name = "quick"

        def __init__(self, config):
            self.config = config or {}

        def runtime_device(self):
            return "python-cpu"

        def capability_probe(self):
            return {"preferred_backends": ["cpu"], "work_units_per_second": 1.0,
                    "target_window_seconds": 1}

        def init_model(self, device):
            return {"device": device}

        def train_window(self, state, batches):
            mode = self.config.get("mode")
            if mode == "system_exit":
                raise SystemExit(3)
            if mode == "keyboard_interrupt":
                raise KeyboardInterrupt
            if mode == "exit_hard":
                os._exit(9)
            return {"batches": len(batches), "pid": os.getpid()}

        def evaluate(self, state, split):
            return {"split": str(split)}

        def merge_candidate_models(self, base, candidates, policy):
            return None

        def apply_single_root_ema(self, base, merged, policy):
            return None

        def reconcile_canonical_model(self, local, canonical, strategy):
            return None


    def make_quick(config):
        return Quick(config)


    def make_raising(config):
        raise RuntimeError("factory refuses to build: " + repr(config))


    NOT_CALLABLE = 42
    '''
)


CUSTOM_REF = {"kind": "micro_epoch", "lease_id": "l", "microshard_ids": [], "ordinals": [],
              "bytes_len": 0, "pipeline_kind": "custom", "payload": {}}  # fmt: skip
"""A BatchRef a toy workload ignores (the simulation needs refs to deal)."""


def importable_toy_workload(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    source: str,
    refs: int,
    pythonpath: Sequence[str | os.PathLike] = (),
) -> tuple[Path, Path]:
    """Write ``source`` as ``tmp_path/pkg/module.py``, importable here and by workers (also
    ``pythonpath`` for them), a batches file of ``refs`` :data:`CUSTOM_REF`, and temporary
    run directories under ``tmp_path``; returns (the package directory, the batches file)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(map(str, (package, *pythonpath))))
    batches = tmp_path / "refs.json"
    batches.write_text(json.dumps([CUSTOM_REF] * refs))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where temporary run dirs go
    return package, batches


@pytest.fixture
def quick_workload_dir(tmp_path: Path) -> Path:
    """A directory holding ``quick_workload.py`` (factories ``make_quick``,
    ``make_raising``; attribute ``NOT_CALLABLE``) and ``broken_workload.py``
    (raises at import).  Put it on PYTHONPATH via ``pythonpath=``."""
    root = tmp_path / "workloads"
    root.mkdir()
    (root / "quick_workload.py").write_text(QUICK_WORKLOAD_SOURCE, encoding="utf-8")
    (root / "broken_workload.py").write_text(
        "raise ImportError('broken_workload cannot be imported on purpose')\n", encoding="utf-8"
    )
    return root


class RawConnection:
    """Frames over the coordinator's side of an accepted socket, with timeouts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(IO_TIMEOUT)
        self._next_id = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, message: Any) -> None:
        body = json.dumps(message).encode("utf-8")
        self.send_raw(struct.pack(">Q", len(body)) + body)

    def _recv_exact(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = self.sock.recv(min(size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def recv_frame(self) -> dict | None:
        """The next response object, or None at a clean EOF.  Fails the test
        on EOF inside a frame or when nothing comes within ``IO_TIMEOUT``."""
        header = self._recv_exact(8)
        if not header:
            return None
        assert len(header) == 8, f"EOF inside a response header ({header!r})"
        (length,) = struct.unpack(">Q", header)
        body = self._recv_exact(length)
        assert len(body) == length, f"EOF inside a response body ({len(body)} of {length})"
        return json.loads(body)

    def request(self, method: str, params: Any = None) -> dict:
        """Send one well-formed request and return its response (id checked)."""
        request_id = self._next_id
        self._next_id += 1
        self.send_frame({"id": request_id, "method": method, "params": params})
        response = self.recv_frame()
        assert response is not None, f"worker closed the connection instead of answering {method}"
        assert response["id"] == request_id, response
        return response

    def at_eof(self) -> bool:
        """True when the peer has closed or reset (waits at most ``IO_TIMEOUT``)."""
        try:
            return self._recv_exact(1) == b""
        except ConnectionResetError:
            return True

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class WorkerProcess:
    """A spawned worker: the process, its connection (if it connected) and its stderr."""

    def __init__(self, proc: subprocess.Popen, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.conn: RawConnection | None = None
        self.max_rss_kib: int | None = None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = IO_TIMEOUT) -> int:
        """Reap the process (recording its peak RSS) and return its exit status;
        fails the test if it is still running after ``timeout`` seconds."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.max_rss_kib = usage.ru_maxrss  # KiB on Linux
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode
            if time.monotonic() > deadline:
                pytest.fail(f"worker still running after {timeout} s; stderr:\n{self.stderr}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=IO_TIMEOUT)


SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[SpawnWorker]:
    """Spawn workers the way the coordinator does; every one is killed at teardown.

    ``spawn(factory, config=None, *, command=None, extra_args=(), pythonpath=(),
    env=None, connect=True, config_json=None)`` runs ``command`` (default
    ``python -m worker``) with ``--factory --config-json --connect-host
    --connect-port`` (``config_json``, when given, is passed verbatim instead
    of ``json.dumps(config)``), then ``extra_args``; stdin and stdout on
    /dev/null, ``PYTHONUNBUFFERED=1``, ``pythonpath`` then the repository
    first on ``PYTHONPATH``, working directory ``tmp_path``.  With
    ``connect=True`` it waits for the connection (failing the test with the
    worker's stderr if it exits first) and sets ``.conn``; with
    ``connect=False`` it waits for the process to exit and asserts that it
    never connected.  Spawning and accepting are fakecoord.spawn's.
    """
    spawned: list[WorkerProcess] = []
    launches: list[spawn.Launch] = []

    def spawn_one(
        factory: str,
        config: Any = None,
        *,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        pythonpath: Sequence[os.PathLike | str] = (),
        env: dict[str, str] | None = None,
        connect: bool = True,
        config_json: str | None = None,
    ) -> WorkerProcess:
        text = config_json if config_json is not None else json.dumps(config or {})
        prefix = list(command or spawn.default_command())
        base = {**os.environ, **(env or {}), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        stderr_path = tmp_path / f"worker-{len(spawned)}.stderr"
        with open(stderr_path, "wb") as stderr:
            started = spawn.launch(
                lambda port: spawn.worker_argv(prefix, factory, text, port, extra_args),
                env=spawn.child_environment(base, [*pythonpath, REPO_ROOT]),
                cwd=tmp_path,
                stderr=stderr,
            )
        launches.append(started)
        worker = WorkerProcess(started.process, stderr_path)
        spawned.append(worker)
        if connect:
            try:
                connected = started.accept(ACCEPT_TIMEOUT)
            except (WorkerExited, WorkerTimeout) as exc:
                pytest.fail(f"worker did not connect ({exc}); stderr:\n{worker.stderr}")
            worker.conn = RawConnection(connected.sock)
        else:
            worker.wait()
            assert not started.connection_pending(), (
                "the worker connected although it should have failed first"
            )
        return worker

    yield spawn_one

    for worker in spawned:
        worker.stop()
    for started in launches:
        started.listener.close()
