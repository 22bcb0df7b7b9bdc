"""The worker as a real process: CLI errors, EOF, oversize frames, signals, shutdown.

Most of these use the torch-free ``quick_workload`` (see conftest) so a
process starts in milliseconds; the full-protocol session uses the torch
workload once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading

import pytest

from worker.server import serve
from worker.service import Worker

QUICK = "quick_workload:make_quick"


@pytest.fixture
def spawn_quick(worker_process, quick_workload_dir):
    def spawn(config=None, **kwargs):
        return worker_process(QUICK, config, pythonpath=[quick_workload_dir], **kwargs)

    return spawn


# -- startup errors: non-zero before connecting, one clear first line --------


def _first_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[0]


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("quick_workload.make_quick", "MODULE:ATTR"),
        (":make_quick", "MODULE:ATTR"),
        ("quick_workload:", "MODULE:ATTR"),
        ("quick_workload:no_such_factory", "no attribute 'no_such_factory'"),
        ("quick_workload:NOT_CALLABLE", "not callable"),
        ("quick_workload:make_raising", "factory raised RuntimeError: factory refuses to build"),
    ],
    ids=["no-colon", "empty-module", "empty-attr", "attr-missing", "not-callable", "raises"],
)
def test_bad_factory_exits_nonzero_before_connecting(
    worker_process, quick_workload_dir, factory, expected
):
    proc = worker_process(factory, {}, pythonpath=[quick_workload_dir], connect=False)
    assert proc.wait() != 0
    first = _first_line(proc.stderr)
    assert "--factory" in first and expected in first, proc.stderr
    if "raised" in expected:  # the factory's own traceback follows
        assert "Traceback" in proc.stderr and "RuntimeError" in proc.stderr
    else:
        assert proc.stderr.strip() == first, proc.stderr


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("broken_workload:make", "cannot import module 'broken_workload'"),
    ],
    ids=["not-found", "raises-at-import"],
)
def test_import_error_prints_one_line_then_the_traceback(
    worker_process, quick_workload_dir, factory, expected
):
    proc = worker_process(factory, {}, pythonpath=[quick_workload_dir], connect=False)
    assert proc.wait() != 0
    lines = proc.stderr.splitlines()
    assert expected in lines[0], proc.stderr
    assert any(line.startswith("Traceback") for line in lines[1:]), proc.stderr


@pytest.mark.parametrize("config_json", ["{not json", "", "[1,"], ids=["garbage", "empty", "cut"])
def test_invalid_config_json_exits_nonzero_before_connecting(
    worker_process, quick_workload_dir, config_json
):
    proc = worker_process(
        QUICK, pythonpath=[quick_workload_dir], config_json=config_json, connect=False
    )
    assert proc.wait() != 0
    first = _first_line(proc.stderr)
    assert "--config-json" in first and proc.stderr.strip() == first, proc.stderr


def test_config_reaches_the_factory(worker_process, quick_workload_dir):
    proc = worker_process(
        "quick_workload:make_raising", {"marker": 17}, pythonpath=[quick_workload_dir],
        connect=False,
    )  # fmt: skip
    assert proc.wait() != 0
    assert "{'marker': 17}" in _first_line(proc.stderr)


# -- serving and leaving -------------------------------------------------------


def test_shutdown_answers_an_ack_then_exits_zero(spawn_quick):
    proc = spawn_quick()
    hello = proc.conn.request("hello")
    assert hello["ok"] and hello["result"]["workload_name"] == "quick"
    assert proc.conn.request("shutdown") == {"id": 2, "ok": True, "result": {"ok": True}}
    assert proc.conn.at_eof()
    assert proc.wait() == 0


def test_eof_at_a_frame_boundary_exits_zero(spawn_quick):
    proc = spawn_quick()
    assert proc.conn.request("hello")["ok"]
    proc.conn.shutdown_write()
    assert proc.wait() == 0


@pytest.mark.parametrize(
    "partial",
    [b"\x00\x00\x00", struct.pack(">Q", 100) + b'{"id": 1'],
    ids=["inside-header", "inside-body"],
)
def test_eof_inside_a_frame_exits_nonzero_with_a_message(spawn_quick, partial):
    proc = spawn_quick()
    proc.conn.send_raw(partial)
    proc.conn.shutdown_write()
    assert proc.wait() != 0
    assert "inside a frame" in proc.stderr


def test_sigterm_while_idle_exits_zero(spawn_quick):
    proc = spawn_quick()
    assert proc.conn.request("hello")["ok"]  # handlers are installed and it is reading
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "SIGTERM" in proc.stderr


def test_oversize_frame_is_answered_then_closed_without_buffering_it(spawn_quick):
    baseline = spawn_quick()
    assert baseline.conn.request("hello")["ok"]
    assert baseline.conn.request("shutdown")["ok"]
    assert baseline.wait() == 0

    proc = spawn_quick(extra_args=["--max-frame-bytes", "1048576"])
    assert proc.conn.request("hello")["ok"]
    announced = 200 * 1024 * 1024
    proc.conn.send_raw(struct.pack(">Q", announced) + b"{" * 4096)
    answer = proc.conn.recv_frame()
    assert answer is not None and answer["ok"] is False and answer["id"] == 0, answer
    assert str(announced) in answer["error"] and "1048576" in answer["error"]
    # Keep sending part of the announced body: the worker may discard it or
    # close on us, but must never hold it in memory.
    sent = 0
    try:
        chunk = b"\x00" * (1 << 20)
        for _ in range(64):
            proc.conn.send_raw(chunk)
            sent += len(chunk)
        proc.conn.shutdown_write()
    except OSError:
        pass
    assert proc.conn.at_eof()
    assert proc.wait() != 0
    assert "exceeds the limit" in proc.stderr
    # ru_maxrss is the peak over the process's whole life.
    growth = (proc.max_rss_kib - baseline.max_rss_kib) * 1024
    assert growth < 16 * 1024 * 1024, (growth, sent)


def test_frame_limit_from_the_environment(spawn_quick):
    proc = spawn_quick(env={"BURN_P2P_WORKER_MAX_FRAME_BYTES": "64"})
    assert proc.conn.request("hello")["ok"]  # the request fits in 64 bytes
    proc.conn.send_frame({"id": 2, "method": "hello", "params": None, "pad": "x" * 100})
    answer = proc.conn.recv_frame()
    assert answer["ok"] is False and "64" in answer["error"]
    assert proc.conn.at_eof()


@pytest.mark.parametrize("limit", ["0", "-5", "lots"])
def test_bad_frame_limit_exits_nonzero_before_connecting(spawn_quick, limit):
    proc = spawn_quick(extra_args=["--max-frame-bytes", limit], connect=False)
    assert proc.wait() != 0
    assert "--max-frame-bytes" in proc.stderr


@pytest.mark.parametrize("mode", ["system_exit", "keyboard_interrupt"])
def test_hook_raising_base_exceptions_is_an_error_not_a_shutdown(spawn_quick, mode):
    proc = spawn_quick({"mode": mode})
    model = proc.conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    answer = proc.conn.request("train_window", {"model_id": model, "batches": []})
    assert answer["ok"] is False
    first = answer["error"].splitlines()[0]
    assert first.startswith("train_window:") and "train_window raised" in first
    assert "Traceback" in answer["error"]
    assert proc.conn.request("hello")["ok"]
    assert proc.proc.poll() is None


def test_bad_frames_are_answered_and_the_worker_keeps_serving(spawn_quick):
    proc = spawn_quick()
    conn = proc.conn
    bad_bodies = [b"", b"\xff\xfe", b"not json", b"[1, 2]", b'{"method": "hello"}', b"NaN"]
    for body in bad_bodies:
        conn.send_raw(struct.pack(">Q", len(body)) + body)
        answer = conn.recv_frame()
        assert answer is not None and answer["ok"] is False and answer["id"] == 0, (body, answer)
    conn.send_frame({"id": 41, "method": "no_such_method", "params": None})
    answer = conn.recv_frame()
    assert answer["id"] == 41 and "no_such_method" in answer["error"]
    assert conn.request("hello")["ok"]


def test_pipelined_requests_are_answered_in_order(spawn_quick):
    proc = spawn_quick()
    frames = b""
    for request_id in range(1, 6):
        body = f'{{"id": {request_id}, "method": "hello", "params": null}}'.encode()
        frames += struct.pack(">Q", len(body)) + body
    proc.conn.send_raw(frames)
    ids = [proc.conn.recv_frame()["id"] for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]


def test_full_session_with_the_torch_workload(worker_process, tmp_path):
    proc = worker_process("tests.workloads:make_tiny", {"hidden": 4})
    conn = proc.conn
    hello = conn.request("hello")["result"]
    assert hello["protocol_version"] == 2 and "diloco_checkpoint_job" in hello["capabilities"]
    model = conn.request("init_model", {"device": "cpu"})["result"]["model_id"]
    metrics = conn.request("train_window", {"model_id": model, "batches": [{"kind": "x"}]})
    assert metrics["ok"] and metrics["result"]["metrics"]["steps"] == 1
    pack = tmp_path / "pack"
    exported = conn.request(
        "export_parameter_pack",
        {"model_id": model, "parameter_pack_path": str(pack), "model_schema_hash": "s"},
    )
    assert exported["result"] == {"ok": True}
    imported = conn.request(
        "import_parameter_pack", {"device": "cpu", "parameter_pack_path": str(pack)}
    )
    assert imported["ok"] and imported["result"]["model_id"] != model
    assert conn.request("shutdown")["ok"]
    assert proc.wait() == 0


# -- the socket loop in-process: a thin layer over Worker.respond -------------------------


def _serve_in_thread(stream: bytes, max_frame_bytes: int = 1 << 20) -> tuple[int, list[dict]]:
    ours, theirs = socket.socketpair()
    outcome: dict = {}

    def target() -> None:
        outcome["code"] = serve(theirs, Worker(object()), max_frame_bytes)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ours.sendall(stream)
    ours.shutdown(socket.SHUT_WR)
    thread.join(30)
    assert not thread.is_alive(), "serve() did not return"
    theirs.close()  # serve() leaves closing the socket to its caller
    ours.settimeout(30)
    received = b""
    while chunk := ours.recv(1 << 16):
        received += chunk
    ours.close()
    responses = []
    while received:
        (length,) = struct.unpack(">Q", received[:8])
        responses.append(json.loads(received[8 : 8 + length]))
        received = received[8 + length :]
    return outcome["code"], responses


def _frame(request_id: int, method: str) -> bytes:
    body = f'{{"id": {request_id}, "method": "{method}", "params": null}}'.encode()
    return struct.pack(">Q", len(body)) + body


@pytest.mark.parametrize(
    ("stream", "code", "ids"),
    [
        (b"", 0, []),
        (_frame(1, "hello") + _frame(2, "hello"), 0, [1, 2]),
        (_frame(1, "hello") + _frame(2, "shutdown") + _frame(3, "hello"), 0, [1, 2]),
        (_frame(1, "hello") + b"\x00\x00", 1, [1]),
        (_frame(1, "hello") + struct.pack(">Q", 10) + b"{}", 1, [1]),
        (_frame(1, "hello") + struct.pack(">Q", 1 << 30), 1, [1, 0]),
    ],
    ids=["empty", "eof-at-boundary", "shutdown-stops", "eof-in-header", "eof-in-body", "oversize"],
)
def test_serve_exit_codes_and_answers(stream, code, ids):
    got_code, responses = _serve_in_thread(stream)
    assert got_code == code
    assert [r["id"] for r in responses] == ids
    assert all(r["ok"] is (r["id"] != 0) for r in responses), responses  # id 0: the refusal


# -- issue #9 items 4 and 16, checked against a worker process ------------------------------------

BYTES_HOOKS_SOURCE = """
from quick_workload import Quick


class BytesHooks(Quick):
    def materialize_model_artifact(self, state):
        return b"attacker-chosen? no: the workload's bytes"


def make(config):
    return BytesHooks(config)
"""


def test_a_link_planted_at_a_predictable_temporary_name_is_not_followed(
    worker_process, quick_workload_dir, tmp_path
):
    """Item 4: bytes-hook artifacts were written through ``.NAME.partial-PID`` opened
    with "wb", so a link planted there (in a shared directory) was followed."""
    (quick_workload_dir / "bytes_hooks.py").write_text(BYTES_HOOKS_SOURCE, encoding="utf-8")
    proc = worker_process("bytes_hooks:make", {}, pythonpath=[quick_workload_dir])
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.symlink(victim, shared / f".artifact.bin.partial-{proc.proc.pid}")
    assert proc.conn.request("init_model", {"device": "cpu"})["ok"]
    answer = proc.conn.request(
        "materialize_model_artifact",
        {"model_id": "m1", "artifact_path": str(shared / "artifact.bin")},
    )
    assert answer["ok"], answer
    assert victim.read_bytes() == b"precious"
    assert not (shared / "artifact.bin").is_symlink()
    assert (shared / "artifact.bin").read_bytes() == b"attacker-chosen? no: the workload's bytes"


def test_a_400_digit_sample_weight_names_the_parameter(spawn_quick):
    """Item 16: an integer beyond float range answered "internal error OverflowError"."""
    proc = spawn_quick()
    assert proc.conn.request("init_model", {"device": "cpu"})["ok"]
    candidate = {"model_id": "m1", "sample_weight": 10**400, "quality_weight": 1}
    answer = proc.conn.request(
        "merge_candidate_models",
        {"base_model_id": "m1", "candidates": [candidate], "policy": "Ema"},
    )
    assert answer["ok"] is False
    assert answer["error"].startswith(
        "merge_candidate_models: params.candidates[0].sample_weight: expected a finite number"
    ), answer["error"]
    assert proc.conn.request("hello")["ok"]
