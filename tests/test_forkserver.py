"""The fork server: workers forked from one warm process behave like spawned ones.

Fork safety is tested, not assumed: the server has one OS thread whenever it
is idle between forks; a server with a second thread (a Python one, or an
OS thread Python does not know about) refuses to fork and the worker is
spawned instead; a forked worker has the thread cap, environment, cwd,
argv, signal handlers, descriptors and seeded generators a spawned one has;
a demo run gives byte-identical packs either way; and the server and its
children never outlive the coordinator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fakecoord import forkserver, spawn
from fakecoord.client import WorkerClient
from fakecoord.sim import bootstrap
from tests.conftest import ACCEPT_TIMEOUT, QUICK_WORKLOAD_SOURCE, REPO_ROOT

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(forkserver.unavailable() is not None, reason="fork server: Linux only"),
]

PROBE_SOURCE = textwrap.dedent(
    """
    import json, os, random, signal, sys

    import torch
    from quick_workload import Quick

    SIGNALS = ("SIGINT", "SIGTERM", "SIGPIPE", "SIGCHLD", "SIGHUP", "SIGUSR1", "SIGXFSZ")


    def name(handler):
        return getattr(handler, "__qualname__", None) or repr(handler)


    def make_probe(config):
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        report = {
            "torch_threads": torch.get_num_threads(),
            "os_threads": len(os.listdir("/proc/self/task")),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PROBE_VAR", "PYTHONUNBUFFERED")},
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
            "argv0": os.path.basename(sys.argv[0]),
            "main": sys.modules["__main__"].__spec__.name,
            "path_head": sys.path[:3],
            "handlers": {s: name(signal.getsignal(getattr(signal, s))) for s in SIGNALS},
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "fds": [fd for fd in fds if fd > 2 and os.path.exists(f"/proc/self/fd/{fd}")],
            "random": random.random(),
            "torch_random": torch.rand(3).tolist(),
            "stdout": os.readlink("/proc/self/fd/1"),
        }
        print("probe on stderr", file=sys.stderr)
        with open(config["out"], "w") as f:
            json.dump(report, f)
        return Quick({})
    """
)

THREADED_PRELOAD = {
    "python_thread": "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
    # An OS thread the threading module does not count (as a native library would start).
    "os_thread": "import _thread, time\n_thread.start_new_thread(time.sleep, (3600,))\n",
}


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    root = tmp_path / "probe"
    root.mkdir()
    (root / "quick_workload.py").write_text(QUICK_WORKLOAD_SOURCE, encoding="utf-8")
    (root / "probe_workload.py").write_text(PROBE_SOURCE, encoding="utf-8")
    for name, source in THREADED_PRELOAD.items():
        (root / f"preload_{name}.py").write_text(source, encoding="utf-8")
    return root


def _env(threads: int, probe_dir: Path) -> dict[str, str]:
    env = dict(os.environ, PROBE_VAR="peer-value")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return spawn.child_environment(env, (probe_dir, REPO_ROOT), worker_root=True)


def _server(probe_dir: Path, tmp_path: Path, **options) -> forkserver.ForkServer:
    return forkserver.ForkServer(_env(1, probe_dir), tmp_path / "forkserver.log", **options)


def _probe(
    probe_dir: Path, out: Path, cwd: Path, server: forkserver.ForkServer | None
) -> tuple[dict, spawn.Spawned]:
    config = bootstrap.wrap("probe_workload:make_probe", {"out": str(out)}, threads=2, seed=7)
    worker = spawn.spawn_worker(
        bootstrap.FACTORY,
        config,
        env=_env(2, probe_dir),
        cwd=cwd,
        stderr=str(out) + ".log",
        accept_timeout=ACCEPT_TIMEOUT,
        forkserver=server,
    )
    return json.loads(out.read_text()), worker


def _flags(argv: list[str]) -> list[str]:
    """``argv`` without the values that differ between two workers (config path, port)."""
    return [a for i, a in enumerate(argv) if argv[i - 1] not in ("--config-json", "--connect-port")]


def _os_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_forked_worker_is_set_up_like_a_spawned_one(probe_dir: Path, tmp_path: Path) -> None:
    server = _server(probe_dir, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        spawned, a = _probe(probe_dir, tmp_path / "spawned.json", cwd, None)
        forked, b = _probe(probe_dir, tmp_path / "forked.json", cwd, server)
        assert isinstance(b.process, forkserver.ForkedProcess)
        assert not isinstance(a.process, forkserver.ForkedProcess)
        assert server.ready is not None and server.ready["threads"] == 1
        # The server's torch runs one thread; the worker gets the cap it was given.
        assert forked["torch_threads"] == 2 == spawned["torch_threads"]
        # Thread pools start in the worker, after the fork (a spawned one's OpenBLAS pool
        # starts at import; the server's stays at one thread, see docs/simulation.md).
        assert forked["os_threads"] == 1
        for key in ("env", "cwd", "argv0", "main", "handlers", "blocked", "fds"):
            assert forked[key] == spawned[key], key
        assert _flags(forked["argv"]) == _flags(spawned["argv"])
        assert forked["argv"][forked["argv"].index("--factory") + 1] == bootstrap.FACTORY
        assert forked["fds"] == []  # none of the server's descriptors leak into the worker
        assert forked["cwd"] == str(cwd)
        assert forked["path_head"][:3] == spawned["path_head"][:3]
        assert forked["stdout"] == spawned["stdout"] == "/dev/null"
        # Seeded by the bootstrap, not inherited from the server.
        assert forked["random"] == spawned["random"]
        assert forked["torch_random"] == spawned["torch_random"]
        assert "probe on stderr" in (tmp_path / "forked.json.log").read_text()
        assert _os_threads(server.process.pid) == 1  # type: ignore[union-attr]
        for worker in (a, b):
            worker.sock.close()
            assert worker.process.wait(30) == 0
    finally:
        server.close()
    assert server.process is not None and server.process.returncode == 0


def test_the_server_is_single_threaded_between_forks(probe_dir: Path, tmp_path: Path) -> None:
    server = _server(probe_dir, tmp_path)
    try:
        server.start()
        assert server.process is not None
        pid = server.process.pid
        assert _os_threads(pid) == 1
        clients = []
        for n in range(3):
            clients.append(
                WorkerClient.spawn(
                    "quick_workload:make_quick",
                    env=_env(1, probe_dir),
                    stderr=str(tmp_path / f"w{n}.log"),
                    accept_timeout=ACCEPT_TIMEOUT,
                    forkserver=server,
                )
            )
            assert _os_threads(pid) == 1
        assert all(isinstance(c.process, forkserver.ForkedProcess) for c in clients)
        assert server.forked == 3 and server.spawned == 0
        for client in clients:
            assert client.hello()["workload_name"] == "quick"
            client.close()
            assert client.returncode == 0
    finally:
        server.close()


@pytest.mark.parametrize("kind", sorted(THREADED_PRELOAD))
def test_a_server_with_a_second_thread_refuses_and_the_worker_is_spawned(
    probe_dir: Path, tmp_path: Path, kind: str
) -> None:
    server = _server(probe_dir, tmp_path, preload=[f"preload_{kind}"])
    try:
        client = WorkerClient.spawn(
            "quick_workload:make_quick",
            env=_env(1, probe_dir),
            stderr=str(tmp_path / "w.log"),
            accept_timeout=ACCEPT_TIMEOUT,
            forkserver=server,
        )
        assert not isinstance(client.process, forkserver.ForkedProcess)
        assert client.hello()["workload_name"] == "quick"
        client.close()
        assert server.forked == 0 and server.spawned == 1
        assert "OS threads" in server.notes[0]
        assert "spawning a fresh interpreter" in (tmp_path / "forkserver.log").read_text()
        assert server.broken is not None  # later workers are spawned without asking
    finally:
        server.close()


def test_exit_statuses_and_signals_reach_the_coordinator(probe_dir: Path, tmp_path: Path) -> None:
    server = _server(probe_dir, tmp_path)
    try:
        worker = spawn.spawn_worker(
            "quick_workload:make_quick",
            env=_env(1, probe_dir),
            stderr=str(tmp_path / "w.log"),
            accept_timeout=ACCEPT_TIMEOUT,
            forkserver=server,
        )
        process = worker.process
        assert process.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(0.1)
        os.kill(process.pid, signal.SIGSTOP)  # what --fault hang sends, by pid
        process.kill()
        assert process.wait(30) == -signal.SIGKILL
        process.kill()  # after the exit: a no-op, never a signal to a recycled pid
        worker.close()
        bad = spawn.launch(
            lambda port: [*spawn.default_command(), "--factory", "nope"],
            env=_env(1, probe_dir),
            stderr=str(tmp_path / "bad.log"),
            forkserver=server,
        )
        assert bad.wait_exit(30) == 2  # argparse's usage error, as a spawned worker
        bad.abort()
        assert "--config-json" in (tmp_path / "bad.log").read_text()
    finally:
        server.close()


COORDINATOR = textwrap.dedent(
    """
    import json, sys, time
    from fakecoord import forkserver, spawn
    env = json.loads(sys.argv[1])
    server = forkserver.ForkServer(env, sys.argv[2])
    worker = spawn.spawn_worker("quick_workload:make_quick", env=env, stderr=sys.argv[3],
                                accept_timeout=120, forkserver=server)
    print(json.dumps([server.process.pid, worker.process.pid]), flush=True)
    time.sleep(3600)
    """
)


def test_the_server_and_its_children_die_with_the_coordinator(
    probe_dir: Path, tmp_path: Path
) -> None:
    env = _env(1, probe_dir)
    coordinator = subprocess.Popen(
        [
            sys.executable, "-c", COORDINATOR, json.dumps(env),
            str(tmp_path / "fs.log"), str(tmp_path / "w.log"),
        ],
        stdout=subprocess.PIPE, cwd=REPO_ROOT, env=env, text=True,
    )  # fmt: skip
    try:
        assert coordinator.stdout is not None
        server_pid, worker_pid = json.loads(coordinator.stdout.readline())
        os.kill(worker_pid, signal.SIGSTOP)  # a stopped worker would never see its EOF
        coordinator.kill()
        coordinator.wait(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(p) for p in (server_pid, worker_pid)):
            time.sleep(0.1)
        assert not _alive(server_pid)
        assert not _alive(worker_pid)
    finally:
        coordinator.kill()
        coordinator.wait()


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _run(out: Path, method: str) -> str:
    done = subprocess.run(
        [
            sys.executable, "-m", "fakecoord", "run", "--peers", "2", "--rounds", "2",
            "--inner-steps", "4", "--out", str(out), "--start-method", method,
        ],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return " ".join(done.stderr.split())


def test_a_demo_run_gives_the_same_packs_forked_or_spawned(tmp_path: Path) -> None:
    header = _run(tmp_path / "forked", "fork-server")
    assert "workers forked from a fork server" in header
    assert "workers spawned (--start-method spawn)" in _run(tmp_path / "spawned", "spawn")
    files = sorted(
        p.relative_to(tmp_path / "forked")
        for p in (tmp_path / "forked" / "rounds").rglob("*")
        if p.is_file()
    )
    # Round 0's base is the initial model; round 1's local packs come after a training window.
    assert Path("rounds/0000/base/values.f32le") in files
    assert Path("rounds/0001/peer-1/local-parameters/values.f32le") in files
    for name in files:
        forked = (tmp_path / "forked" / name).read_bytes()
        assert forked == (tmp_path / "spawned" / name).read_bytes(), name


def test_a_dead_server_takes_its_children_and_later_workers_are_spawned(
    probe_dir: Path, tmp_path: Path
) -> None:
    server = _server(probe_dir, tmp_path)
    try:
        first = spawn.spawn_worker(
            "quick_workload:make_quick", env=_env(1, probe_dir), stderr=str(tmp_path / "a.log"),
            accept_timeout=ACCEPT_TIMEOUT, forkserver=server,
        )  # fmt: skip
        assert isinstance(first.process, forkserver.ForkedProcess)
        assert server.process is not None
        server.process.kill()  # the server dies under the coordinator
        assert first.process.wait(30) == -signal.SIGKILL
        assert not _alive(first.process.pid)
        second = spawn.spawn_worker(
            "quick_workload:make_quick", env=_env(1, probe_dir), stderr=str(tmp_path / "b.log"),
            accept_timeout=ACCEPT_TIMEOUT, forkserver=server,
        )  # fmt: skip
        assert not isinstance(second.process, forkserver.ForkedProcess)
        assert server.spawned == 1 and "the fork server exited" in server.notes[0]
        second.close()
        first.close()
    finally:
        server.close()
