"""Fuzzing with a CI budget, regressions for what the fuzzer found, and the threat model's claims.

The properties live in the ``tools/fuzz`` package (``python -m tools.fuzz
--target all --seconds 120`` is the long run); here each runs under the project's
hypothesis profile.  The regression tests below each reproduce one failure
the fuzzer found, minimally.  The last section proves the claims of
``SECURITY.md`` that no other test file covers.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fakecoord.client import WorkerClient
from fakecoord.errors import WorkerTimeout
from tools import fuzz
from tools.fuzz import artifacts as fuzz_artifacts
from tools.fuzz import oracle
from tools.fuzz import requests as fuzz_requests
from tools.fuzz import sim as fuzz_sim
from worker import artifacts, packs
from worker.errors import PackError
from worker.framing import encode_frame
from worker.layout import compute_layout
from worker.service import Worker

REPO_ROOT = Path(__file__).resolve().parent.parent

# -- the fuzzed properties ------------------------------------------------------------------------


@pytest.mark.parametrize("prop", fuzz.PROPERTIES, ids=lambda p: f"{p.target}-{p.name}")
def test_fuzzed_property_holds(prop: fuzz.Property) -> None:
    @given(data=st.data())
    def holds(data: st.DataObject) -> None:
        prop.check(data.draw(prop.strategy, label=prop.name))

    if prop.ci_examples is not None:
        limit = min(prop.ci_examples, settings().max_examples)
        holds = settings(max_examples=limit)(holds)
    holds()


def test_every_target_has_properties_and_the_tool_runs() -> None:
    assert {p.target for p in fuzz.PROPERTIES} == set(fuzz.TARGETS)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tools.fuzz", "--target", "frames", "--seconds",
         "1", "--seed", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "decoder-chunks" in done.stdout and "serve-socketpair" in done.stdout
    assert "inputs tried:" in done.stdout and "RSS start" in done.stdout
    assert "frames" in done.stdout.split("inputs tried:")[1]


def test_the_oracles_are_not_vacuous(tmp_path: Path) -> None:
    """A property with an oracle that accepts everything would prove nothing."""
    pack = tmp_path / "pack"
    packs.export_pack(fuzz.make_model(offset=100.0), pack, "schema")
    layout = compute_layout(fuzz.make_model())
    assert fuzz.pack_oracle(pack, layout.hash, layout.parameter_count) is None
    assert fuzz.pack_oracle(pack, "torch-layout-other", layout.parameter_count) is not None
    (pack / packs.VALUES_NAME).write_bytes(b"\x00" * 4)
    assert fuzz.pack_oracle(pack, layout.hash, layout.parameter_count) is not None
    artifact = tmp_path / "a.safetensors"
    artifacts.save_state(fuzz.make_model(offset=100.0), artifact)
    assert fuzz.artifact_oracle(artifact, fuzz.make_model()) is None
    assert fuzz.artifact_oracle(artifact, torch.nn.Linear(2, 2)) is not None
    internal = {"id": 1, "ok": False, "error": "m: internal error KeyError: 'x'"}
    with pytest.raises(fuzz.FuzzFailure, match="internal error"):
        fuzz.check_frame(encode_frame(internal))
    for text, problem in [("m: a\x1bb", "control characters"), ("x" * 20000, "error text of"),
                          ("m: x\nburn-p2p worker: received SIGTERM", "forged log line")]:  # fmt: skip
        with pytest.raises(fuzz.FuzzFailure, match=problem):
            fuzz.check_frame(encode_frame({"id": 1, "ok": False, "error": text}))
    with pytest.raises(fuzz.FuzzFailure, match="allocated 40 MiB"):
        oracle.check_allocation(40 << 20, 1 << 20, "load")
    oracle.check_allocation(10 << 20, 1 << 20, "load")


def test_the_oracles_limits_are_the_workers() -> None:
    """The oracle states the contract's limits itself (so it judges the worker
    rather than agreeing with it); they must be the worker's."""
    from worker import bounded_json, errors

    assert oracle.MAX_ERROR_CHARS == errors.MAX_ERROR_CHARS
    assert oracle.MAX_SHOWN_VALUE_CHARS == errors.SHOWN_VALUE_CHARS
    assert (oracle.MAX_MANIFEST_BYTES, oracle.MAX_MANIFEST_ITEMS) == (
        packs.MAX_MANIFEST_BYTES, packs.MAX_MANIFEST_ITEMS,
    )  # fmt: skip
    assert (oracle.MAX_HEADER_BYTES, oracle.HEADER_FIXED_BYTES, oracle.HEADER_FIXED_ITEMS) == (
        artifacts.MAX_HEADER_BYTES, artifacts.HEADER_FIXED_BYTES, artifacts.HEADER_FIXED_ITEMS,
    )  # fmt: skip
    tensors = artifacts.state_tensors(fuzz.make_model())
    assert fuzz_artifacts.header_limits(tensors) == artifacts.header_limits(tensors)
    for text in (b"[]", b'{"a": [1, 2, {"b": ":,"}]}', b"[" * 50 + b"]" * 50):
        assert oracle.count_json_values(text) == bounded_json.count_items(text)


def test_requests_are_drawn_for_every_method_of_both_sides() -> None:
    """The worker's METHODS is the subject; the params come from the coordinator's spec."""
    from fakecoord import spec
    from worker.methods import METHODS

    assert set(METHODS) == set(spec.METHODS)
    assert fuzz_requests.path_fields("run_inner_loop") == [
        "inner_optimizer_state_path", "output_parameter_pack_path",
    ]  # fmt: skip
    assert not hasattr(fuzz_requests, "METHOD_PARAMS")


# -- regressions: one per failure the fuzzer found ------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_loading_an_artifact_from_a_directory_leaks_no_descriptor(tmp_path: Path) -> None:
    """Found by artifact-load and method-params: ``open(fd)`` on a directory raised before
    the descriptor was owned by a file object, so every such request leaked one fd."""
    model = torch.nn.Linear(2, 2)
    before = _fds()
    for _ in range(10):
        with pytest.raises(PackError, match="load_model_artifact"):
            artifacts.load_state(model, tmp_path)
    assert _fds() == before


def test_an_artifact_entry_with_an_unhashable_dtype_is_refused_as_malformed(tmp_path: Path) -> None:
    """Found by artifact-load: ``entry.get("dtype") in _DTYPES`` raised TypeError for a list."""
    model = torch.nn.Linear(2, 2)
    header = json.dumps(
        {"weight": {"dtype": [], "shape": [2, 2], "data_offsets": [0, 16]},
         "bias": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    ).encode()  # fmt: skip
    path = tmp_path / "a.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 24)
    with pytest.raises(PackError, match="malformed"):
        artifacts.load_state(model, path)


def test_a_values_name_the_filesystem_cannot_encode_is_a_pack_error(tmp_path: Path) -> None:
    """Found by pack-import: a lone surrogate in ``values_f32_le`` escaped as UnicodeEncodeError."""
    pack = tmp_path / "pack"
    packs.export_pack(torch.nn.Linear(2, 2), pack, "schema")
    manifest = json.loads((pack / packs.MANIFEST_NAME).read_text())
    manifest["values_f32_le"] = "\ud800"
    (pack / packs.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="values_f32_le"):
        packs.import_pack(pack, lambda: torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("method", "param"),
    [("load_model_artifact", "artifact_path"), ("materialize_model_artifact", "artifact_path"),
     ("export_parameter_pack", "parameter_pack_path"),
     ("import_parameter_pack", "parameter_pack_path"),
     ("run_inner_loop", "output_parameter_pack_path")],
)  # fmt: skip
def test_a_path_the_filesystem_cannot_encode_is_a_param_error(
    tmp_path: Path, method: str, param: str
) -> None:
    """Found by method-params: a path with a lone surrogate became an 'internal error'
    (UnicodeEncodeError) instead of a refusal naming the parameter."""
    worker = Worker(fuzz.TorchWorkload())
    fuzz.respond(worker, b'{"id": 1, "method": "init_model", "params": {"device": "cpu"}}')
    params = {
        "model_id": "m1", "device": "cpu", "model_schema_hash": "", "batches": [],
        "num_inner_steps": 0, "require_exact_steps": False, param: str(tmp_path / "x\ud800"),
    }  # fmt: skip
    response = fuzz.check_frame(
        fuzz.respond(worker, fuzz.dumps_raw({"id": 2, "method": method, "params": params}))
    )
    assert response["ok"] is False
    assert response["error"].startswith(f"{method}: params.{param}: expected"), response["error"]
    assert list(tmp_path.iterdir()) == []


# -- limits ---------------------------------------------------------------------------------------


def _rss_kib() -> int:
    current, _ = fuzz.rss_kib()
    assert current is not None
    return current


def test_a_parameter_count_of_2_pow_40_is_refused_without_allocating(tmp_path: Path) -> None:
    """The largest count the manifest may claim, a matching layout hash and a (sparse) 4 TiB
    values file of exactly the claimed size: refused on the count, nothing allocated."""
    pack = tmp_path / "pack"
    packs.export_pack(fuzz.make_model(offset=100.0), pack, "schema")
    layout = compute_layout(fuzz.make_model())
    manifest = json.loads((pack / packs.MANIFEST_NAME).read_text())
    manifest.update(parameter_count=packs.MAX_PARAMETER_COUNT, layout_hash=layout.hash)
    (pack / packs.MANIFEST_NAME).write_text(json.dumps(manifest))
    os.truncate(pack / packs.VALUES_NAME, packs.MAX_PARAMETER_COUNT * 4)
    target = fuzz.make_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    rss = _rss_kib()
    with pytest.raises(PackError, match=f"holds {packs.MAX_PARAMETER_COUNT} values"):
        packs.import_pack(pack, lambda: target)
    assert _rss_kib() - rss < 64 * 1024
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_a_parameter_count_above_the_cap_is_refused_by_the_manifest_check(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    packs.export_pack(torch.nn.Linear(2, 2), pack, "schema")
    manifest = json.loads((pack / packs.MANIFEST_NAME).read_text())
    manifest["parameter_count"] = packs.MAX_PARAMETER_COUNT + 1
    (pack / packs.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(
        PackError, match=r"parameter_count must be an integer in 0\.\.=1099511627776"
    ):
        packs.OpenPack(pack)


def _hostile_corpus(root: Path) -> list:
    """One input per hostile kind, each refused; reused many times by the leak test."""
    pack = root / "pack"
    packs.export_pack(fuzz.make_model(offset=100.0), pack, "schema")
    hostile = []
    for name, mutation in [
        ("fifo", ("values-as", "fifo")), ("dir", ("values-as", "directory")),
        ("link", ("values-as", "symlink-outside")), ("short", ("resize", -4)),
        ("deep", ("manifest-bytes", "deep", 0, b"")), ("mdir", ("manifest-as", "directory")),
    ]:  # fmt: skip
        copy = root / f"pack-{name}"
        packs.export_pack(fuzz.make_model(offset=100.0), copy, "schema")
        fuzz.apply_pack_mutation(copy, mutation, compute_layout(fuzz.make_model()))
        hostile.append(
            ("import_parameter_pack", {"device": "cpu", "parameter_pack_path": str(copy)})
        )
    artifact = root / "a.safetensors"
    artifacts.save_state(fuzz.make_model(), artifact)
    for name, mutation in [
        ("fifo", ("file-as", "fifo", b"")), ("dir", ("file-as", "directory", b"")),
        ("length", ("length", fuzz.U64_MAX)), ("junk", ("header-json", [1, {"a": None}])),
    ]:  # fmt: skip
        copy = root / f"artifact-{name}"
        copy.write_bytes(artifact.read_bytes())
        fuzz.apply_artifact_mutation(copy, mutation)
        hostile.append(("load_model_artifact", {"model_id": "m1", "artifact_path": str(copy)}))
    return hostile


def test_hostile_inputs_repeated_keep_descriptors_and_rss_flat(tmp_path: Path) -> None:
    worker = Worker(fuzz.TorchWorkload())
    fuzz.respond(worker, b'{"id": 1, "method": "init_model", "params": {"device": "cpu"}}')
    bodies = [
        fuzz.dumps_raw({"id": 7, "method": method, "params": params})
        for method, params in _hostile_corpus(tmp_path)
    ] + [b"\xff", b'{"id": 1, "method": "hello", "params": ' + b"[" * 5000 + b"}"]

    def round_() -> None:
        for body in bodies:
            response = fuzz.check_frame(fuzz.respond(worker, body))
            assert response["ok"] is False, response

    for _ in range(20):
        round_()
    fds, rss = _fds(), _rss_kib()
    for _ in range(200):
        round_()
    assert _fds() == fds
    assert _rss_kib() - rss < 32 * 1024, f"RSS grew by {_rss_kib() - rss} KiB"
    assert list(worker.models) == ["m1"]


# -- threat-model claims (SECURITY.md) ------------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
                     "joblib", "copyreg", "yaml"}  # fmt: skip
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "torch.load", "torch.jit.load",
                   "torch.serialization.load", "numpy.load", "np.load",
                   "torch.package"}  # fmt: skip


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def dangerous_uses(source: str) -> list[str]:
    """Imports of deserializers and references to eval/exec/torch.load & co. in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in FORBIDDEN_NAMES]  # fmt: skip
        elif isinstance(node, (ast.Name, ast.Attribute)) and _dotted(node) in FORBIDDEN_NAMES:
            found.append(_dotted(node))
        elif (
            isinstance(node, ast.Call) and _dotted(node.func) == "getattr" and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant) and node.args[1].value in ("load", "loads")
        ):  # fmt: skip
            found.append(f"getattr(..., {node.args[1].value!r})")
    return found


@pytest.mark.parametrize(
    "snippet",
    ["import pickle", "from marshal import loads", "import torch\ntorch.load(p)", "f = torch.load",
     "eval(s)", "getattr(torch, 'load')(p)", "np.load(f, allow_pickle=True)",
     "from torch.serialization import load", "import yaml"],
)  # fmt: skip
def test_the_deserialization_scanner_catches_each_form(snippet: str) -> None:
    assert dangerous_uses(snippet)


def test_the_worker_never_unpickles_evals_or_torch_loads() -> None:
    sources = sorted((REPO_ROOT / "worker").rglob("*.py"))
    assert len(sources) >= 10
    assert (
        dangerous_uses(textwrap.dedent("import json\njson.loads(s)\nimportlib.import_module(m)"))
        == []
    )
    found = {str(p.relative_to(REPO_ROOT)): dangerous_uses(p.read_text()) for p in sources}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_worker_never_listens_it_only_connects_out() -> None:
    """No code path in worker/ can accept a connection: nothing to reach from the network."""
    accepting = {"bind", "listen", "accept", "create_server", "socketpair", "fromfd"}
    found = []
    for path in sorted((REPO_ROOT / "worker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in accepting:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert found == []
    assert "create_connection" in (REPO_ROOT / "worker" / "server.py").read_text()


def test_fakecoord_listens_on_loopback_and_takes_one_connection(
    quick_workload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound: list = []
    original_bind = socket.socket.bind

    def recording_bind(self: socket.socket, address: object) -> None:
        bound.append(address)
        original_bind(self, address)

    monkeypatch.setattr(socket.socket, "bind", recording_bind)
    with WorkerClient.spawn(
        "quick_workload:make_quick", pythonpath=[quick_workload_dir], accept_timeout=60,
        call_timeout=60,
    ) as client:  # fmt: skip
        monkeypatch.undo()
        port = int(client.argv[client.argv.index("--connect-port") + 1])
        assert bound == [("127.0.0.1", 0)]
        assert client.argv[client.argv.index("--connect-host") + 1] == "127.0.0.1"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        assert client.hello()["workload_name"] == "quick"


IMPOSTOR = textwrap.dedent(
    """
    import json, os, socket, struct, sys, time

    port = int(sys.argv[sys.argv.index("--connect-port") + 1])
    if os.fork() == 0:
        os.setsid()
        if os.fork():
            os._exit(0)
        import encodings.idna  # noqa: F401  (nobody cannot read the stdlib later)
        os.setgid(65534)  # another user: nobody
        os.setuid(65534)
        # Another user's process (not the spawned child) connects first and answers.
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(60)
        stream = sock.makefile("rb")
        while header := stream.read(8):
            request = json.loads(stream.read(struct.unpack(">Q", header)[0]))
            result = {"protocol_version": 2, "workload_name": "impostor", "capabilities": []}
            body = json.dumps({"id": request["id"], "ok": True,
                               "result": result if request["method"] == "hello" else {"ok": True}})
            sock.sendall(struct.pack(">Q", len(body)) + body.encode())
        os._exit(0)
    os.wait()
    time.sleep(60)  # the spawned child itself never connects
    """
)


def test_fakecoord_refuses_a_connection_that_is_not_from_its_child(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another user's process that connects first is dropped, not served: the
    spawn keeps waiting for its own worker (which here never comes)."""
    if os.getuid() != 0:
        pytest.skip("needs root to run the impostor as another user (CI runs as root)")
    script = tmp_path / "impostor.py"
    script.write_text(IMPOSTOR, encoding="utf-8")
    log = tmp_path / "stderr.log"
    with pytest.raises(WorkerTimeout):
        WorkerClient.spawn(
            "x:y", worker_cmd=[sys.executable, str(script)], accept_timeout=4, call_timeout=30,
            shutdown_timeout=2, exit_grace=1, stderr=log,
        )  # fmt: skip
    assert "refused a connection" in capsys.readouterr().err


def test_the_sim_targets_valid_checkpoint_resumes_and_renders() -> None:
    """The ``sim`` target mutates a checkpoint the resume accepts whole (so its oracle sees
    accepted checkpoints, not only refusals), and its judges accept the unmutated inputs."""
    assert fuzz_sim.check_checkpoint([])
    assert fuzz_sim.check_toml({})
    assert fuzz_sim.check_toml(
        {"peers": 2, "fault": ["slow@0=2"], "state-dict-filter": {"include_globs": ["a*"]}}
    )
    assert fuzz_sim.check_path(("--report", False, ["r.json"]))
    assert not fuzz_sim.check_path(("--plot", False, ["x.png2"]))
