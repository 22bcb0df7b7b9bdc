"""Parameter packs (docs/protocol.md §3) against hostile and broken input, crashes
mid-export, and the staged tensor I/O path (dtypes, strides, chunking)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import worker.tensor_io as tensor_io
from tests.service.support import respond
from worker import packs
from worker.errors import PackError
from worker.layout import compute_layout
from worker.packs import MANIFEST_NAME, PACK_FORMAT, VALUES_NAME, export_pack, import_pack
from worker.protocol import StateFilter
from worker.service import Worker
from worker.tensor_io import read_f32_into_tensor, write_tensor_as_f32

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


def read_manifest(pack: Path) -> dict:
    return json.loads((pack / MANIFEST_NAME).read_text())


def write_manifest(pack: Path, **changes: Any) -> None:
    manifest = read_manifest(pack)
    for key, value in changes.items():
        if value is DELETE:
            del manifest[key]
        else:
            manifest[key] = value
    (pack / MANIFEST_NAME).write_text(json.dumps(manifest))


DELETE = object()


def run_bounded(fn: Callable[[], Any], pack: Path, timeout: float = 20.0) -> Any:
    """Run ``fn`` in a thread; fail (after releasing any FIFO reader) if it blocks."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for path in pack.rglob("*"):
            if path.is_fifo():
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
        thread.join(timeout)
        pytest.fail(f"pack import blocked for more than {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def source() -> nn.Module:
    model = make_model()
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(1.5)
    return model


@pytest.fixture
def pack(tmp_path, source) -> Path:
    path = tmp_path / "pack"
    export_pack(source, path, "schema")
    return path


# -- positive controls ---------------------------------------------------------------------


def test_a_valid_pack_imports_and_changes_the_target(pack, source):
    target = make_model()
    import_pack(pack, lambda: target)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value) or not value.is_floating_point(), key


def test_unknown_manifest_fields_are_ignored_and_rust_style_manifests_load(pack, source):
    manifest = read_manifest(pack)
    five = {k: manifest[k] for k in ("format", "model_schema_hash", "layout_hash", "parameter_count", "values_f32_le")}  # fmt: skip
    (pack / MANIFEST_NAME).write_text(json.dumps({**five, "future_field": [1]}, indent=2))
    target = make_model()
    import_pack(pack, lambda: target)
    assert torch.equal(target[0].weight, source[0].weight)


def test_values_in_a_subdirectory_of_the_pack_are_accepted(pack, source):
    (pack / "data").mkdir()
    os.rename(pack / VALUES_NAME, pack / "data" / "v.bin")
    write_manifest(pack, values_f32_le="data/v.bin")
    target = make_model()
    import_pack(pack, lambda: target)
    assert torch.equal(target[2].bias, source[2].bias)


def test_values_file_is_little_endian_float32_in_layout_order(pack, source):
    layout = compute_layout(source)
    expected = np.concatenate(
        [t.detach().reshape(-1).numpy().astype("<f4") for t in layout.tensors]
    )
    got = np.frombuffer((pack / VALUES_NAME).read_bytes(), dtype="<f4")
    assert np.array_equal(got, expected)
    manifest = read_manifest(pack)
    assert manifest["parameter_count"] == expected.size == layout.parameter_count
    assert manifest["format"] == PACK_FORMAT and manifest["layout_hash"] == layout.hash


# -- hostile packs: each refused, the target untouched --------------------------------------


def _manifest_text(text: bytes) -> Callable[[Path], None]:
    return lambda pack: (pack / MANIFEST_NAME).write_bytes(text)


def _fields(**changes: Any) -> Callable[[Path], None]:
    return lambda pack: write_manifest(pack, **changes)


def _values_elsewhere(where: str) -> Callable[[Path], None]:
    def mutate(pack: Path) -> None:
        outside = pack.parent / "outside.f32le"
        outside.write_bytes((pack / VALUES_NAME).read_bytes())
        write_manifest(pack, values_f32_le=str(outside) if where == "absolute" else where)

    return mutate


def _values_symlink(inside: bool) -> Callable[[Path], None]:
    def mutate(pack: Path) -> None:
        real = pack / "real.f32le" if inside else pack.parent / "outside.f32le"
        os.rename(pack / VALUES_NAME, real)
        os.symlink(real, pack / VALUES_NAME)

    return mutate


def _values_through_linked_dir(pack: Path) -> None:
    (pack.parent / "elsewhere").mkdir()
    os.rename(pack / VALUES_NAME, pack.parent / "elsewhere" / VALUES_NAME)
    os.symlink(pack.parent / "elsewhere", pack / "sub")
    write_manifest(pack, values_f32_le=f"sub/{VALUES_NAME}")


def _replace_values(kind: str) -> Callable[[Path], None]:
    def mutate(pack: Path) -> None:
        (pack / VALUES_NAME).unlink()
        if kind == "fifo":
            os.mkfifo(pack / VALUES_NAME)
        elif kind == "directory":
            (pack / VALUES_NAME).mkdir()

    return mutate


def _resize_values(delta: int) -> Callable[[Path], None]:
    def mutate(pack: Path) -> None:
        data = (pack / VALUES_NAME).read_bytes()
        (pack / VALUES_NAME).write_bytes(data[:delta] if delta < 0 else data + b"\x00" * delta)

    return mutate


def _replace_manifest(kind: str) -> Callable[[Path], None]:
    def mutate(pack: Path) -> None:
        real = pack.parent / "manifest-elsewhere.json"
        os.rename(pack / MANIFEST_NAME, real)
        if kind == "symlink":
            os.symlink(real, pack / MANIFEST_NAME)
        elif kind == "fifo":
            os.mkfifo(pack / MANIFEST_NAME)
        elif kind == "directory":
            (pack / MANIFEST_NAME).mkdir()

    return mutate


def _shrink_consistently(pack: Path) -> None:
    """Same layout hash, but a count (and a file) that do not fit the layout."""
    data = (pack / VALUES_NAME).read_bytes()
    (pack / VALUES_NAME).write_bytes(data[:-8])
    write_manifest(pack, parameter_count=len(data) // 4 - 2)


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest-not-json": (_manifest_text(b"{not json"), "not valid UTF-8 JSON"),
    "manifest-not-utf8": (_manifest_text(b'{"format": "\xff"}'), "not valid UTF-8 JSON"),
    "manifest-not-object": (_manifest_text(b"[1, 2]"), "expected a JSON object"),
    "manifest-empty": (_manifest_text(b""), "not valid UTF-8 JSON"),
    "manifest-missing": (lambda pack: (pack / MANIFEST_NAME).unlink(), "manifest.json"),
    "manifest-symlink": (_replace_manifest("symlink"), "link"),
    "manifest-fifo": (_replace_manifest("fifo"), "not a regular file"),
    "manifest-directory": (_replace_manifest("directory"), "not a regular file"),
    "format-wrong": (_fields(format="burn-p2p-python-flattened-parameter-pack-v2"), "format"),
    "format-missing": (_fields(format=DELETE), "format"),
    "schema-hash-not-string": (_fields(model_schema_hash=1), "model_schema_hash"),
    "layout-hash-missing": (_fields(layout_hash=DELETE), "layout_hash"),
    "values-name-not-string": (_fields(values_f32_le=["values.f32le"]), "values_f32_le"),
    "count-negative": (_fields(parameter_count=-1), "parameter_count"),
    "count-bool": (_fields(parameter_count=True), "parameter_count"),
    "count-float": (_fields(parameter_count=45.0), "parameter_count"),
    "count-string": (_fields(parameter_count="45"), "parameter_count"),
    "count-huge": (_fields(parameter_count=2**62), "parameter_count"),
    "count-missing": (_fields(parameter_count=DELETE), "parameter_count"),
    "values-absolute": (_values_elsewhere("absolute"), "relative path"),
    "values-dotdot": (_values_elsewhere("../outside.f32le"), ".."),
    "values-dotdot-inside": (_values_elsewhere(f"x/../{VALUES_NAME}"), ".."),
    "values-empty-name": (_fields(values_f32_le=""), "relative path"),
    "values-nul": (_fields(values_f32_le="values\x00.f32le"), "relative path"),
    "values-symlink-inside": (_values_symlink(inside=True), "symbolic link"),
    "values-symlink-outside": (_values_symlink(inside=False), "symbolic link"),
    "values-through-linked-dir": (_values_through_linked_dir, "link"),
    "values-fifo": (_replace_values("fifo"), "not a regular file"),
    "values-directory": (_replace_values("directory"), "not a regular file"),
    "values-missing": (_replace_values("missing"), "cannot open"),
    "values-short": (_resize_values(-4), "needs exactly"),
    "values-long": (_resize_values(4), "needs exactly"),
    "values-ragged": (_resize_values(1), "needs exactly"),
    "layout-hash-wrong": (_fields(layout_hash="torch-layout-" + "0" * 64), "does not match"),
    "count-lies-with-right-hash": (_shrink_consistently, "values"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pack_is_refused_and_the_target_is_unchanged(pack, case):
    mutate, fragment = HOSTILE[case]
    mutate(pack)
    target = make_model()
    before = snapshot(target)
    with pytest.raises(PackError) as info:
        run_bounded(lambda: import_pack(pack, lambda: target), pack)
    assert fragment in str(info.value)
    assert_unchanged(target, before)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pack_through_the_worker_is_ok_false_and_allocates_nothing(pack, case):
    class Workload:
        def init_model(self, device):
            return make_model()

    HOSTILE[case][0](pack)
    worker = Worker(Workload())
    body = json.dumps(
        {"id": 4, "method": "import_parameter_pack",
         "params": {"device": "cpu", "parameter_pack_path": str(pack)}}
    ).encode()  # fmt: skip
    frame = run_bounded(lambda: respond(worker, body), pack)
    response = json.loads(frame[8:])
    assert response["id"] == 4 and response["ok"] is False
    assert response["error"].startswith("import_parameter_pack:")
    assert HOSTILE[case][1] in response["error"]
    assert worker.models == {}


def test_manifest_over_the_size_limit_is_refused_unread(pack, monkeypatch):
    monkeypatch.setattr(packs, "MAX_MANIFEST_BYTES", 64)
    target = make_model()
    before = snapshot(target)
    with pytest.raises(PackError, match="exceeds the limit"):
        import_pack(pack, lambda: target)
    assert_unchanged(target, before)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_pack_path_that_is_not_a_directory(tmp_path, kind):
    path = tmp_path / "pack"
    if kind == "file":
        path.write_text("x")
    with pytest.raises(PackError, match="cannot open directory"):
        import_pack(path, make_model)


def test_filter_mismatch_is_a_layout_error_and_leaves_the_target(pack):
    target = make_model()
    before = snapshot(target)
    with pytest.raises(PackError, match="does not match"):
        import_pack(pack, lambda: target, StateFilter(("0.*",), ()))
    assert_unchanged(target, before)


def test_architecture_mismatch_is_refused(pack):
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    before = snapshot(target)
    with pytest.raises(PackError, match="different architecture"):
        import_pack(pack, lambda: target)
    assert_unchanged(target, before)


def test_dtype_mismatch_is_refused(pack):
    target = make_model().to(torch.float64)
    before = snapshot(target)
    with pytest.raises(PackError, match="does not match"):
        import_pack(pack, lambda: target)
    assert_unchanged(target, before)


# -- atomic export ---------------------------------------------------------------------------


def partials(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if ".partial-" in p.name]


class Crash(Exception):
    pass


def crash_after_first_write(monkeypatch) -> None:
    real = tensor_io.write_all
    calls = []

    def write_all(raw, view):
        calls.append(len(view))
        if len(calls) > 1:
            raise Crash("simulated crash mid-export")
        real(raw, view)

    monkeypatch.setattr(tensor_io, "write_all", write_all)


def test_crash_mid_export_into_a_fresh_target_leaves_no_pack(tmp_path, source, monkeypatch):
    crash_after_first_write(monkeypatch)
    with pytest.raises(Crash):
        export_pack(source, tmp_path / "fresh", "s")
    assert not (tmp_path / "fresh").exists()
    assert partials(tmp_path) == []


def test_crash_mid_export_into_an_existing_pack_keeps_the_old_pack(pack, source, monkeypatch):
    old = make_model(seed=3)
    export_pack(old, pack, "old")  # the pack now holds `old`'s values
    crash_after_first_write(monkeypatch)
    with pytest.raises(Crash):
        export_pack(source, pack, "new")
    monkeypatch.undo()
    assert partials(pack.parent) == []
    assert read_manifest(pack)["model_schema_hash"] == "old"
    target = make_model(seed=9)
    import_pack(pack, lambda: target)
    assert torch.equal(target[0].weight, old[0].weight)


def test_tensor_failing_mid_export_leaves_no_manifest(tmp_path):
    model = make_model()
    model.register_buffer("z_meta", torch.empty(3, device="meta"))  # sorted last: fails late
    with pytest.raises(NotImplementedError):
        export_pack(model, tmp_path / "fresh", "s")
    assert not (tmp_path / "fresh").exists()
    assert partials(tmp_path) == []


def test_failure_before_the_new_manifest_lands_keeps_the_old_pack_whole(pack, source, monkeypatch):
    """Re-export publishes new values under a fresh name and then the manifest:
    a failure in between leaves the old manifest with its own values (the new
    values file, named by no manifest, is removed)."""
    old = make_model(seed=3)
    export_pack(old, pack, "old")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == MANIFEST_NAME:
            raise Crash("crash before the new manifest lands")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        export_pack(make_model(seed=4), pack, "new")
    monkeypatch.undo()
    assert read_manifest(pack)["model_schema_hash"] == "old"
    assert sorted(os.listdir(pack)) == sorted([MANIFEST_NAME, read_manifest(pack)["values_f32_le"]])
    target = make_model(seed=9)
    import_pack(pack, lambda: target)
    assert torch.equal(target[0].weight, old[0].weight)
    assert partials(pack.parent) == []


def test_export_over_an_existing_pack_replaces_it(pack):
    other = make_model(seed=7)
    export_pack(other, pack, "second")
    assert read_manifest(pack)["model_schema_hash"] == "second"
    target = make_model()
    import_pack(pack, lambda: target)
    assert torch.equal(target[2].weight, other[2].weight)
    assert partials(pack.parent) == []


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_export_refuses_a_target_that_is_not_a_directory(tmp_path, source, kind):
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("keep me")
    else:
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
    with pytest.raises(PackError, match="not a directory"):
        export_pack(source, target, "s")
    if kind == "file":
        assert target.read_text() == "keep me"
    else:
        assert list((tmp_path / "real").iterdir()) == []


CRASH_SCRIPT = """
import os, sys
import torch
from torch import nn
import worker.tensor_io as tensor_io
from worker.packs import export_pack

torch.manual_seed(int(sys.argv[2]))
model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
if sys.argv[3] == "crash":
    calls = []
    real = tensor_io.write_all
    def write_all(raw, view):
        calls.append(1)
        if len(calls) > 2:
            os._exit(17)  # no finally blocks, no cleanup: a real crash
        real(raw, view)
    tensor_io.write_all = write_all
export_pack(model, sys.argv[1], "crash-" + sys.argv[3])
"""


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_killed_mid_export_never_leaves_a_manifest_without_its_values(tmp_path, existing):
    target = tmp_path / "pack"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def run(seed: int, mode: str) -> int:
        return subprocess.run(
            [sys.executable, "-c", CRASH_SCRIPT, str(target), str(seed), mode],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
        ).returncode  # fmt: skip

    if existing:
        export_pack(make_model(seed=1), target, "crash-ok")
    assert run(2, "crash") == 17
    if existing:
        # Either the old pack, complete and consistent, or no manifest at all.
        if (target / MANIFEST_NAME).exists():
            assert read_manifest(target)["model_schema_hash"] == "crash-ok"
            loaded = make_model()
            import_pack(target, lambda: loaded)  # complete: loads without error
            assert torch.equal(loaded[0].weight, make_model(seed=1)[0].weight)
    else:
        assert not (target / MANIFEST_NAME).exists()


# -- staged tensor I/O: dtypes, strides, chunks ------------------------------------------------


@pytest.fixture(params=[None, 7], ids=["default-chunks", "7-element-chunks"])
def chunking(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(tensor_io, "CHUNK_ELEMENTS", request.param)
    return request.param


def f32_bytes(tensor: torch.Tensor) -> bytes:
    return (
        tensor.detach().to(torch.float32).contiguous().reshape(-1).numpy().astype("<f4").tobytes()
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_write_any_float_dtype_as_f32(chunking, dtype):
    tensor = (torch.arange(50, dtype=torch.float64) / 3 - 7).to(dtype).reshape(5, 10)
    raw = io.BytesIO()
    assert write_tensor_as_f32(raw, tensor) == 50
    assert raw.getvalue() == f32_bytes(tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_read_f32_is_lossless_for_narrow_dtypes(chunking, dtype):
    values = (torch.arange(50, dtype=torch.float64) / 3 - 7).to(dtype)
    target = torch.zeros(5, 10, dtype=dtype)
    read_f32_into_tensor(io.BytesIO(f32_bytes(values)), target)
    assert torch.equal(target.reshape(-1), values)


def test_read_f32_into_float64_keeps_float32_precision(chunking):
    values = torch.arange(50, dtype=torch.float64) / 3
    target = torch.zeros(50, dtype=torch.float64)
    read_f32_into_tensor(io.BytesIO(f32_bytes(values)), target)
    assert torch.equal(target, values.to(torch.float32).to(torch.float64))
    assert not torch.equal(target, values)  # float64 loses precision, as documented


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_tensors_round_trip_in_logical_order(chunking, dtype):
    base = (torch.arange(60, dtype=torch.float32) - 30).to(dtype).reshape(6, 10)
    view = base.t()[2:9]  # non-contiguous 7x6 view
    assert not view.is_contiguous()
    raw = io.BytesIO()
    write_tensor_as_f32(raw, view)
    assert raw.getvalue() == f32_bytes(view)

    target_base = torch.zeros(6, 10, dtype=dtype)
    target = target_base.t()[2:9]
    read_f32_into_tensor(io.BytesIO(raw.getvalue()), target)
    assert torch.equal(target, view)
    assert torch.count_nonzero(target_base[:, :2]) == 0  # outside the view: untouched


class _NewStorage(TorchDispatchMode):
    """Records the largest storage (bytes) any torch op allocates while active: views and
    in-place ops (which reuse an input's storage) do not count."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def _strided_tensors() -> dict[str, torch.Tensor]:
    conv = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    return {
        "transposed": torch.arange(1200, dtype=torch.float32).reshape(40, 30).t(),
        "channels_last": conv.contiguous(memory_format=torch.channels_last),
        "strided-1d": torch.arange(1000, dtype=torch.float32)[::3],
        "permuted-3d": torch.arange(455, dtype=torch.float32).reshape(5, 7, 13).permute(2, 0, 1),
        "transposed-float64": torch.arange(600, dtype=torch.float64).reshape(20, 30).t() / 7,
        "transposed-bfloat16": torch.arange(600, dtype=torch.float32)
        .reshape(30, 20)
        .t()
        .bfloat16(),
        "contiguous-float16": torch.arange(700, dtype=torch.float16).reshape(7, 100),
    }


@pytest.mark.parametrize("limit", [16, 256])  # 256: 2-D pieces, copied in column blocks
@pytest.mark.parametrize("name", list(_strided_tensors()))
def test_non_contiguous_tensors_are_streamed_in_bounded_pieces(monkeypatch, name, limit):
    """Issue 16 item 18: a transposed weight or a channels_last convolution was staged whole
    (reshape(-1) on export, a numel-sized buffer on import): +64 MiB for a 64 MiB tensor."""
    monkeypatch.setattr(tensor_io, "CHUNK_ELEMENTS", limit)
    tensor = _strided_tensors()[name]
    assert tensor.numel() > limit
    raw = io.BytesIO()
    with _NewStorage() as written:
        write_tensor_as_f32(raw, tensor)
    assert raw.getvalue() == f32_bytes(tensor)  # logical row-major order, as before
    assert written.largest <= limit * 4

    target = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype).zero_()
    with _NewStorage() as read:
        read_f32_into_tensor(io.BytesIO(raw.getvalue()), target)
    assert torch.equal(target, tensor.to(torch.float32).to(tensor.dtype))
    assert target.stride() == tensor.stride()
    assert read.largest <= limit * 4


@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
    limit=st.integers(1, 40),
)
def test_pieces_cover_a_tensor_in_logical_order_within_the_limit(shape, order, limit):
    base = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    dims = list(range(len(shape)))
    order.shuffle(dims)
    tensor = base.permute(dims)
    parts = list(tensor_io.pieces(tensor, limit))
    assert all(0 < p.numel() <= limit for p in parts)
    assert all(p.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for p in parts)
    flat = [p.contiguous().reshape(-1) for p in parts]
    assert torch.equal(torch.cat(flat) if flat else torch.empty(0), tensor.reshape(-1))


def test_empty_tensors_write_and_read_nothing(chunking):
    raw = io.BytesIO()
    assert write_tensor_as_f32(raw, torch.empty(0, 3)) == 0
    assert raw.getvalue() == b""
    read_f32_into_tensor(io.BytesIO(b""), torch.empty(0))


def test_short_file_raises_eof(chunking):
    with pytest.raises(EOFError):
        read_f32_into_tensor(io.BytesIO(b"\x00" * 8), torch.zeros(3, dtype=torch.float16))


class MixedDtypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f16 = nn.Parameter(torch.linspace(-2, 2, 23).to(torch.float16))
        self.bf16 = nn.Parameter(torch.linspace(-3, 3, 17).to(torch.bfloat16))
        self.f64 = nn.Parameter(torch.linspace(-1, 1, 11, dtype=torch.float64))
        self.register_buffer("strided", torch.arange(40, dtype=torch.float32).reshape(5, 8).t())
        self.register_buffer("count", torch.tensor(3))


def test_mixed_dtype_and_strided_state_through_a_pack(tmp_path, chunking):
    source = MixedDtypes()
    export_pack(source, tmp_path / "pack", "s")
    target = MixedDtypes()
    with torch.no_grad():
        for value in target.state_dict().values():
            value.zero_()
    strided = target.strided
    import_pack(tmp_path / "pack", lambda: target)
    assert target.f16.dtype == torch.float16 and torch.equal(target.f16, source.f16)
    assert target.bf16.dtype == torch.bfloat16 and torch.equal(target.bf16, source.bf16)
    assert torch.equal(target.f64, source.f64.to(torch.float32).to(torch.float64))
    assert target.strided is strided and not target.strided.is_contiguous()
    assert torch.equal(target.strided, source.strided)
    assert int(target.count) == 0  # non-float: not transported
