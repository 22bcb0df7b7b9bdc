"""fakecoord.spawn: the one way this side starts a worker and accepts its connection."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fakecoord import spawn
from fakecoord.errors import InvalidParams, SpawnError, WorkerExited, WorkerTimeout

pytestmark = pytest.mark.timeout(60)


def _listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener


def _reset_connection(port: int) -> None:
    """Connect, then close with an RST (SO_LINGER 0): a decoy the listener still queues."""
    decoy = socket.create_connection(("127.0.0.1", port))
    decoy.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    decoy.close()


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    spawn.kill(process)


@pytest.mark.skipif(not spawn.uid_check_available(), reason="needs /proc/net/tcp (Linux)")
def test_a_connection_reset_before_its_owner_is_known_is_refused(child, capsys) -> None:
    """Issue #9 item 3: a decoy connection reset before the uid lookup used to
    be accepted (its uid unknown), locking the worker out.  It must be refused
    and the accept go on to the worker's connection."""
    listener = _listener()
    port = listener.getsockname()[1]
    _reset_connection(port)
    worker_end = socket.create_connection(("127.0.0.1", port))
    try:
        accepted = spawn.accept_connection(listener, child, timeout=10)
        worker_end.sendall(b"ping")
        accepted.settimeout(10)
        assert accepted.recv(4) == b"ping"
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert "refused a connection" in capsys.readouterr().err
    finally:
        worker_end.close()
        listener.close()


@pytest.mark.skipif(not spawn.uid_check_available(), reason="needs /proc/net/tcp (Linux)")
def test_decoys_alone_end_in_a_timeout_not_an_accept(child) -> None:
    listener = _listener()
    _reset_connection(listener.getsockname()[1])
    with pytest.raises(WorkerTimeout, match="did not connect within 1 s"):
        spawn.accept_connection(listener, child, timeout=1.0)
    assert child.poll() is not None  # killed
    listener.close()


def test_peer_uid_is_ours_for_our_connection_and_none_once_reset() -> None:
    listener = _listener()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    expected = os.getuid() if spawn.uid_check_available() else None
    assert spawn.peer_uid(server) == expected
    assert spawn.refusal(server) is None
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    server.settimeout(5)
    with pytest.raises(ConnectionResetError):
        server.recv(1)
    assert spawn.peer_uid(server) is None
    server.close()
    listener.close()


def test_the_child_gets_the_coordinators_environment(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, os, socket, sys\n"
        "port = int(sys.argv[sys.argv.index('--connect-port') + 1])\n"
        "s = socket.create_connection(('127.0.0.1', port))\n"
        "info = {'argv': sys.argv[1:], 'path': os.environ.get('PYTHONPATH'),\n"
        "        'unbuffered': os.environ.get('PYTHONUNBUFFERED'), 'cwd': os.getcwd(),\n"
        "        'stdin': sys.stdin.read(), 'stdout': os.path.realpath('/proc/self/fd/1')}\n"
        "s.sendall(json.dumps(info).encode()); s.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": "/old"}
    worker = spawn.spawn_worker(
        "m:f", {"a": 1}, worker_cmd=[sys.executable, str(script)], env=env,
        pythonpath=["/first"], cwd=tmp_path, stderr=tmp_path / "err.log", extra_args=["--x"],
    )  # fmt: skip
    try:
        data = b""
        worker.sock.settimeout(10)
        while chunk := worker.sock.recv(65536):
            data += chunk
    finally:
        worker.close()
    import json

    info = json.loads(data)
    assert info["argv"] == [
        "--factory", "m:f", "--config-json", '{"a": 1}', "--connect-host", "127.0.0.1",
        "--connect-port", str(worker.port), "--x",
    ]  # fmt: skip
    # A custom command does not get the worker root; the default one does.
    assert info["path"] == os.pathsep.join(["/first", "/old"])
    assert info["unbuffered"] == "1" and info["cwd"] == str(tmp_path) and info["stdin"] == ""
    assert info["stdout"] == "/dev/null"
    assert worker.process.returncode == 0
    default = spawn.child_environment({}, ["/a"], worker_root=True)["PYTHONPATH"]
    assert default == os.pathsep.join(["/a", spawn.WORKER_ROOT])
    assert Path(spawn.WORKER_ROOT, "worker", "__main__.py").is_file()


def test_start_failures_say_whose_fault(tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match="config cannot be sent"):
        spawn.spawn_worker("m:f", {"x": float("nan")})
    with pytest.raises(InvalidParams, match="must name a program"):
        spawn.spawn_worker("m:f", worker_cmd=[])
    with pytest.raises(SpawnError, match="cannot start the worker"):
        spawn.spawn_worker("m:f", worker_cmd=[str(tmp_path / "missing")])
    with pytest.raises(SpawnError, match="cannot open stderr target"):
        spawn.spawn_worker("m:f", stderr=tmp_path / "no" / "dir" / "log")
    with pytest.raises(WorkerExited, match="status 3") as info:
        spawn.spawn_worker(
            "m:f", worker_cmd=[sys.executable, "-c", "import sys; print('bye', file=sys.stderr); sys.exit(3)"],
            stderr=tmp_path / "log",
        )  # fmt: skip
    assert "bye" in info.value.stderr_tail


def test_a_child_that_must_fail_before_connecting_can_be_watched(tmp_path: Path) -> None:
    started = spawn.launch(
        lambda port: [sys.executable, "-c", "raise SystemExit(2)"], stderr=tmp_path / "log"
    )
    try:
        assert started.wait_exit(30) == 2
        assert not started.connection_pending()
    finally:
        started.abort()
