"""Generic model artifacts: safetensors files, interoperable with the
``safetensors`` package, validated before anything is written, never unpickled."""

from __future__ import annotations

import json
import os
import pickle
import struct
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import worker.artifacts as artifacts
from tests.service.support import respond
from tests.workloads import TinyWorkload
from worker.service import Worker


def call(worker: Worker, method: str, params: Any) -> dict:
    body = json.dumps({"id": 5, "method": method, "params": params}).encode()
    response = json.loads(respond(worker, body)[8:])
    assert response["id"] == 5
    return response


def materialize(worker: Worker, model_id: str, path: Path) -> dict:
    return call(
        worker, "materialize_model_artifact", {"model_id": model_id, "artifact_path": str(path)}
    )


def load(worker: Worker, model_id: str, path: Path) -> dict:
    return call(worker, "load_model_artifact", {"model_id": model_id, "artifact_path": str(path)})


def full_state(state: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in artifacts.state_tensors(state).items()}


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


class Zoo(nn.Module):
    """Every dtype the artifact format carries, plus a strided and an empty tensor."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(3, 2)
        self.f16 = nn.Parameter(torch.randn(5, generator=g).to(torch.float16))
        self.bf16 = nn.Parameter(torch.randn(4, generator=g).to(torch.bfloat16))
        self.f64 = nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.register_buffer("i64", torch.randint(-9, 9, (3,), generator=g))
        self.register_buffer("i32", torch.randint(-9, 9, (2,), generator=g).to(torch.int32))
        self.register_buffer("u8", torch.randint(0, 255, (3,), generator=g).to(torch.uint8))
        self.register_buffer("flag", torch.rand(4, generator=g) > 0.5)
        self.register_buffer("strided", torch.randn(3, 4, generator=g).t())
        self.register_buffer("empty", torch.empty(0, 3))
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(2, 3, generator=g))


class ZooWorkload(TinyWorkload):
    def __init__(self, config):
        super().__init__(config)
        self.seed = 0

    def init_model(self, device):
        self.seed += 1
        return Zoo(self.seed)


@pytest.fixture
def zoo() -> Worker:
    worker = Worker(ZooWorkload({}))
    for _ in range(2):
        assert call(worker, "init_model", {"device": "cpu"})["ok"]
    return worker


# -- interoperability ---------------------------------------------------------------------


def test_our_files_load_with_safetensors(zoo, tmp_path):
    path = tmp_path / "a" / "artifact.safetensors"
    assert materialize(zoo, "m1", path) == {"id": 5, "ok": True, "result": {"ok": True}}
    loaded = load_file(str(path))
    expected = full_state(zoo.models["m1"])
    assert_states_equal({k: v.contiguous() for k, v in expected.items()}, loaded)
    assert list(tmp_path.joinpath("a").iterdir()) == [path]  # no temporary files left


def test_safetensors_files_load_into_our_models(zoo, tmp_path):
    source = Zoo(seed=42)
    path = tmp_path / "theirs.safetensors"
    save_file(
        {k: v.contiguous() for k, v in full_state(source).items()},
        str(path),
        metadata={"format": "pt"},
    )
    assert load(zoo, "m1", path)["ok"]
    assert_states_equal(full_state(zoo.models["m1"]), full_state(source))
    assert not zoo.models["m1"].strided.is_contiguous()  # loaded in place


def test_round_trip_between_two_models(zoo, tmp_path):
    assert materialize(zoo, "m1", tmp_path / "a.safetensors")["ok"]
    assert load(zoo, "m2", tmp_path / "a.safetensors")["ok"]
    assert_states_equal(full_state(zoo.models["m2"]), full_state(zoo.models["m1"]))


def test_multi_module_states_use_prefixed_names(tmp_path):
    class Multi(TinyWorkload):
        def init_model(self, device):
            torch.manual_seed(len(str(device)))
            return {"modules": {"enc": nn.Linear(2, 2), "head": nn.Linear(2, 1)}}

    worker = Worker(Multi({}))
    call(worker, "init_model", {"device": "cpu"})
    assert materialize(worker, "m1", tmp_path / "m.safetensors")["ok"]
    assert sorted(load_file(str(tmp_path / "m.safetensors"))) == [
        "enc.bias", "enc.weight", "head.bias", "head.weight",
    ]  # fmt: skip


def test_materialize_overwrites_atomically(zoo, tmp_path):
    path = tmp_path / "a.safetensors"
    assert materialize(zoo, "m1", path)["ok"]
    assert materialize(zoo, "m2", path)["ok"]
    assert torch.equal(load_file(str(path))["f16"], zoo.models["m2"].f16.detach())


def test_crash_mid_materialize_keeps_the_old_file(zoo, tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    assert materialize(zoo, "m1", path)["ok"]
    old = path.read_bytes()
    calls = []
    real = artifacts.write_all

    def write_all(raw, view):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        real(raw, view)

    monkeypatch.setattr(artifacts, "write_all", write_all)
    response = materialize(zoo, "m2", path)
    assert response["ok"] is False and response["error"].startswith("materialize_model_artifact:")
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_unsupported_dtype_is_refused_without_writing(tmp_path):
    class Complex(TinyWorkload):
        def init_model(self, device):
            module = nn.Linear(1, 1)
            module.register_buffer("z", torch.zeros(2, dtype=torch.complex64))
            return module

    worker = Worker(Complex({}))
    call(worker, "init_model", {"device": "cpu"})
    response = materialize(worker, "m1", tmp_path / "c.safetensors")
    assert response["ok"] is False and "'z'" in response["error"]
    assert list(tmp_path.iterdir()) == []


def test_opaque_state_without_hooks_is_an_error(tmp_path):
    worker = Worker(TinyWorkload({}))
    worker.models["m1"] = {"weights": [1.0]}
    response = materialize(worker, "m1", tmp_path / "a.safetensors")
    assert response["ok"] is False and response["error"].startswith("materialize_model_artifact:")


# -- hostile artifacts: refused, model unchanged ---------------------------------------------


def _header_file(header: Any, data: bytes = b"", declared: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(encoded) if declared is None else declared
    return struct.pack("<Q", length) + encoded + data


def _valid_file(tmp_path: Path) -> tuple[dict, bytes]:
    """The header dict and data of a valid artifact for a Zoo model."""
    path = tmp_path / "valid.safetensors"
    save_file({k: v.contiguous() for k, v in full_state(Zoo(seed=9)).items()}, str(path))
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def _edit(name: str, **changes: Any):
    def build(header: dict, data: bytes) -> bytes:
        header = json.loads(json.dumps(header))
        header[name].update(changes)
        return _header_file(header, data)

    return build


class Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


HOSTILE = {
    "empty-file": (lambda h, d: b"", "too short"),
    "short-file": (lambda h, d: b"\x01\x02\x03", "too short"),
    "header-longer-than-file": (lambda h, d: _header_file(h, d, declared=10**6), "header length"),
    "header-length-huge": (lambda h, d: _header_file(h, d, declared=2**63), "header length"),
    "header-not-json": (lambda h, d: _header_file(b"{nope", d), "not valid UTF-8 JSON"),
    "header-not-utf8": (lambda h, d: _header_file(b'{"\xff": 1}', d), "not valid UTF-8 JSON"),
    "header-not-object": (lambda h, d: _header_file([1, 2], d), "JSON object"),
    "entry-not-object": (lambda h, d: _header_file({**h, "f16": [1]}, d), "malformed"),
    "unknown-dtype": (_edit("f16", dtype="F8_E4M3"), "malformed"),
    "negative-shape": (_edit("f16", shape=[-5]), "malformed"),
    "float-shape": (_edit("f16", shape=[5.0]), "malformed"),
    "offsets-three": (_edit("f16", data_offsets=[0, 2, 4]), "malformed"),
    "offsets-not-ints": (_edit("f16", data_offsets=["0", "10"]), "malformed"),
    "offsets-past-the-end": (_edit("f16", data_offsets=[10**9, 10**9 + 10]), "offsets"),
    "offsets-reversed": (_edit("f16", data_offsets=[10, 0]), "offsets"),
    "offsets-wrong-size": (_edit("f16", data_offsets=[0, 8]), "offsets"),
    "data-truncated": (lambda h, d: _header_file(h, d[:-4]), "offsets"),
    "wrong-shape": (_edit("f16", shape=[1, 5]), "in the file but"),
    "wrong-dtype": (_edit("i64", dtype="F64"), "in the file but"),
    "missing-key": (
        lambda h, d: _header_file({k: v for k, v in h.items() if k != "flag"}, d),
        "missing ['flag']",
    ),
    "extra-key": (
        lambda h, d: _header_file({**h, "extra": {**h["i64"]}}, d),
        "unexpected ['extra']",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_artifacts_are_refused_and_the_model_is_unchanged(zoo, tmp_path, case):
    build, fragment = HOSTILE[case]
    header, data = _valid_file(tmp_path)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(build(header, data))
    before = full_state(zoo.models["m1"])
    response = load(zoo, "m1", path)
    assert response["ok"] is False
    assert response["error"].startswith("load_model_artifact:") and fragment in response["error"]
    assert_states_equal(full_state(zoo.models["m1"]), before)


def test_the_valid_file_used_by_hostile_cases_loads(zoo, tmp_path):
    header, data = _valid_file(tmp_path)
    path = tmp_path / "good.safetensors"
    path.write_bytes(_header_file(header, data))
    assert load(zoo, "m1", path)["ok"]
    assert torch.equal(zoo.models["m1"].f16, Zoo(seed=9).f16)


def test_pickles_are_never_unpickled(zoo, tmp_path):
    marker = tmp_path / "unpickled"
    for name, blob in [
        ("raw.pkl", pickle.dumps(Boom(str(marker)))),
        ("torch.pt", None),
    ]:
        path = tmp_path / name
        if blob is None:
            torch.save({"boom": Boom(str(marker))}, path)
        else:
            path.write_bytes(blob)
        before = full_state(zoo.models["m1"])
        response = load(zoo, "m1", path)
        assert response["ok"] is False and response["error"].startswith("load_model_artifact:")
        assert_states_equal(full_state(zoo.models["m1"]), before)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing"])
def test_special_paths_are_refused_without_blocking(zoo, tmp_path, kind):
    path = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(r=load(zoo, "m1", path)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
        pytest.fail("load_model_artifact blocked on a special file")
    assert outcome["r"]["ok"] is False
    assert outcome["r"]["error"].startswith("load_model_artifact:")


# -- workload artifact hooks take precedence ---------------------------------------------------


def test_path_hooks_are_used_when_present(tmp_path):
    seen = []

    class PathHooks(TinyWorkload):
        def load_model_artifact_path(self, state, path):
            seen.append(("load", path))
            return {"replaced": True}

        def materialize_model_artifact_path(self, state, path):
            seen.append(("materialize", path))
            Path(path).write_text("custom")

    worker = Worker(PathHooks({}))
    call(worker, "init_model", {"device": "cpu"})
    path = tmp_path / "x.bin"
    assert materialize(worker, "m1", path)["ok"]
    assert path.read_text() == "custom"
    assert load(worker, "m1", path)["ok"]
    assert worker.models["m1"] == {"replaced": True}
    assert seen == [("materialize", str(path)), ("load", str(path))]


def test_bytes_hooks_get_and_return_bytes(tmp_path):
    class BytesHooks(TinyWorkload):
        def __init__(self, config):
            super().__init__(config)
            self.loaded = []

        def load_model_artifact(self, state, data):
            self.loaded.append(data)
            return None

        def materialize_model_artifact(self, state):
            return b"artifact-bytes"

    workload = BytesHooks({})
    worker = Worker(workload)
    call(worker, "init_model", {"device": "cpu"})
    state = worker.models["m1"]
    path = tmp_path / "sub" / "a.bin"
    assert materialize(worker, "m1", path)["ok"]
    assert path.read_bytes() == b"artifact-bytes"
    assert [p.name for p in path.parent.iterdir()] == ["a.bin"]
    assert load(worker, "m1", path)["ok"]
    assert workload.loaded == [b"artifact-bytes"] and worker.models["m1"] is state

    missing = load(worker, "m1", tmp_path / "missing.bin")
    assert missing["ok"] is False and "params.artifact_path" in missing["error"]


def test_bytes_hook_returning_text_is_an_error(tmp_path):
    class TextHook(TinyWorkload):
        def materialize_model_artifact(self, state):
            return "not bytes"

    worker = Worker(TextHook({}))
    call(worker, "init_model", {"device": "cpu"})
    response = materialize(worker, "m1", tmp_path / "a.bin")
    assert response["ok"] is False and "must return bytes" in response["error"]
    assert not (tmp_path / "a.bin").exists()


# -- issue #9 item 6: the bytes hook reads only regular files, size-capped --------------------


class BytesLoader(TinyWorkload):
    def __init__(self, config):
        super().__init__(config)
        self.loaded: list[int] = []

    def load_model_artifact(self, state, data):
        self.loaded.append(len(data))
        return None


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "over-limit"])
def test_the_bytes_hook_path_refuses_special_and_oversized_files(tmp_path, monkeypatch, kind):
    """A FIFO used to hang the worker and /dev/zero to read until MemoryError."""
    path = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        monkeypatch.setattr(artifacts, "max_bytes_in_memory", lambda: 1 << 20)
        with open(path, "wb") as f:
            f.truncate(1 << 40)  # sparse: 1 TiB that would be read whole
    workload = BytesLoader({})
    worker = Worker(workload)
    call(worker, "init_model", {"device": "cpu"})
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(r=load(worker, "m1", path)), daemon=True
    )
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
        pytest.fail("load_model_artifact blocked on a special file")
    response = outcome["r"]
    assert response["ok"] is False and workload.loaded == []
    assert response["error"].startswith("load_model_artifact: params.artifact_path: ")
    fragment = "more than the 1048576 bytes" if kind == "over-limit" else "not a regular file"
    assert fragment in response["error"], response["error"]


def test_the_bytes_hook_limit_is_half_the_memory():
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert artifacts.max_bytes_in_memory() == pages // 2


# -- issue #9 item 2: what a header can make the worker allocate ------------------------------


def test_the_header_limits_fit_a_10_5_tensor_model():
    """MAX_HEADER_BYTES, derived: 10^5 tensors, names of 100 characters, 4-dim
    shapes and 20-digit offsets, as safetensors writes it (compact)."""
    header = {
        f"{'model.layers.' + str(i) + '.':x<96}{i % 1000:04d}": {
            "dtype": "BF16", "shape": [4096, 4096, 16, 4],
            "data_offsets": [10**19 + i, 10**19 + i + 1],
        }
        for i in range(10**5)
    }  # fmt: skip
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    assert all(len(name) == 100 for name in header if name != "__metadata__")
    assert 20e6 < len(text) < 0.75 * artifacts.MAX_HEADER_BYTES
    fake = {name: torch.empty(1, 1, 1, 1, device="meta") for name in header if name[0] == "m"}
    max_bytes, max_items = artifacts.header_limits(fake)
    assert max_bytes == artifacts.MAX_HEADER_BYTES
    from worker.bounded_json import count_items

    assert count_items(text) < max_items


@pytest.mark.parametrize("shape", ["metadata", "empty-dicts", "dimensions"])
def test_a_header_amplifying_memory_is_refused_before_parsing(tmp_path, shape):
    """The issue's 99 MiB ``__metadata__`` took 2.8 GB and loaded; a 10^7-dimension
    shape was echoed as 30 MB.  Now a header is held to what the model needs."""
    model = nn.Linear(3, 2)
    path = tmp_path / "a.safetensors"
    save_file(model.state_dict(), str(path))
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    if shape == "metadata":
        header["__metadata__"] = {"x": "y" * (8 << 20)}
    elif shape == "empty-dicts":
        header["__metadata__"] = {"x": [{}] * 200_000}
    else:
        header["weight"]["shape"] = [1] * 10**6
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + length :])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tracemalloc.start()
    try:
        with pytest.raises(artifacts.PackError) as info:
            artifacts.load_state(model, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "limit" in message and len(message) < 1000
    assert peak < 2 * len(text) + (1 << 20), peak
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
