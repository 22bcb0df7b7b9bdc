"""Target "packs": parameter packs with mutated manifests, values files and directory
entries, judged against an independent validity oracle (docs/protocol.md §3 and the
limits of SECURITY.md): a valid pack must load exactly, an invalid one must be
refused with the target untouched, and what the import allocates must stay
within the oracle's bound for the manifest it parses (so a manifest of
``[{},{},...]`` that parses to 25 times its size is a failure: issue #9 item 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from worker import packs
from worker.errors import LayoutError, PackError
from worker.layout import compute_layout
from worker.service import Worker

from .oracle import (
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_ITEMS,
    FuzzFailure,
    bounded,
    check_frame,
    check_no_partials,
    check_unchanged,
    count_json_values,
    judge_load,
    make_socket_file,
    respond,
    same_bits,
    snapshot,
    temporary_root,
)
from .values import AMPLIFYING, JUNK, LONG_TEXT, TEXT, dumps_raw
from .workloads import TorchWorkload, make_model


def pack_oracle(path: Path, layout_hash: str, count: int) -> str | None:
    """None when a correct reader must accept the pack at ``path``, else why it must refuse.

    Written from docs/protocol.md §3 without the worker's code: the pack directory
    (links to it are the caller's choice), a plain ``manifest.json``, the
    manifest's fields, ``values_f32_le`` a relative path of plain directories
    to a plain file of exactly ``parameter_count * 4`` bytes, and the layout.
    """
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            return "pack path is not a directory"
        manifest = path / packs.MANIFEST_NAME
        info = os.lstat(manifest)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            return "manifest is not a plain file of allowed size"
        data = manifest.read_bytes()
        if count_json_values(data) > MAX_MANIFEST_ITEMS:
            return "manifest holds more JSON values than allowed"
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return "manifest is not UTF-8 JSON"
        if not isinstance(raw, dict) or raw.get("format") != packs.PACK_FORMAT:
            return "manifest is not an object with the format"
        if not all(isinstance(raw.get(k), str) for k in ("model_schema_hash", "layout_hash")):
            return "hash fields are not strings"
        parameter_count = raw.get("parameter_count")
        if (
            type(parameter_count) is not int
            or not 0 <= parameter_count <= packs.MAX_PARAMETER_COUNT
        ):
            return "parameter_count out of range"
        relative = raw.get("values_f32_le")
        if not isinstance(relative, str) or not relative or relative.startswith("/"):
            return "values_f32_le is not a relative path"
        parts = relative.split("/")
        if "\x00" in relative or any(p in ("", ".", "..") for p in parts):
            return "values_f32_le has forbidden components"
        current = path
        for part in parts[:-1]:
            current = current / part
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return "values_f32_le goes through a non-directory or a link"
        values = os.lstat(current / parts[-1])
        if not stat.S_ISREG(values.st_mode):
            return "values file is not a plain file"
        if values.st_size != parameter_count * 4:
            return "values file has the wrong size"
        if raw["layout_hash"] != layout_hash or parameter_count != count:
            return "layout does not match the target"
        return None
    except (OSError, ValueError) as exc:  # ValueError: a name the filesystem cannot encode
        return f"unreadable: {type(exc).__name__}"


def check_pack_values(module: nn.Module, path: Path) -> None:
    """The module's float tensors must hold the pack's values, in layout order."""
    raw = json.loads((path / packs.MANIFEST_NAME).read_bytes())
    data = (path / raw["values_f32_le"]).read_bytes()
    flat = torch.frombuffer(bytearray(data), dtype=torch.float32) if data else torch.empty(0)
    layout = compute_layout(module)
    offset = 0
    for entry, tensor in zip(layout.entries, layout.tensors, strict=True):
        n = entry["numel"]
        expected = flat[offset : offset + n].to(tensor.dtype).reshape(tensor.shape)
        offset += n
        if not same_bits(tensor, expected):
            raise FuzzFailure(f"imported {entry['name']!r} differs from the pack's values")


MANIFEST_KEYS = ["format", "model_schema_hash", "layout_hash", "parameter_count", "values_f32_le"]


def _manifest_values(key: str) -> st.SearchStrategy:
    fmt = packs.PACK_FORMAT
    edges: dict[str, list[Any]] = {
        "format": [fmt, fmt + " ", fmt.upper(), "", None, 1, [fmt], fmt.replace("v1", "v2")],
        "model_schema_hash": ["", "x" * 1000, 5, None, "\ud800"],
        "layout_hash": ["@correct", "@correct-upper", "@correct-newline", "torch-layout-", None, 0],
        "parameter_count": ["@count", "@count-1", "@count+1", 0, -1, packs.MAX_PARAMETER_COUNT,
                            packs.MAX_PARAMETER_COUNT + 1, 2**63, 2**64, -(2**63), True, False,
                            "@count-float", "@count-str", None, 10**30, float("nan"),
                            float("inf")],
        "values_f32_le": ["values.f32le", "./values.f32le", "sub/values.f32le",
                          "../pack/values.f32le",
                          "@absolute", "", "values.f32le/", "sub//values.f32le", "link-values",
                          "values.f32le\x00", "\ud800", "n" * 300, "sub/../values.f32le",
                          "linkdir/values.f32le", "manifest.json", "."],
    }  # fmt: skip
    return st.sampled_from(edges[key]) | JUNK


PACK_MUTATIONS = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(MANIFEST_KEYS)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.just(t[1]), _manifest_values(t[1]))
    ),
    st.tuples(st.just("delete"), st.sampled_from(MANIFEST_KEYS)),
    st.tuples(st.just("extra"), TEXT, JUNK),
    st.tuples(st.just("extra"), TEXT, AMPLIFYING),
    st.tuples(st.just("field"), st.sampled_from(MANIFEST_KEYS), LONG_TEXT),
    st.tuples(st.just("manifest-bytes"),
              st.sampled_from(["cut", "insert", "binary", "bom", "deep", "digits"]),
              st.integers(0, 400), st.binary(max_size=16)),
    st.tuples(st.just("resize"), st.sampled_from([-10**6, -5, -4, -1, 1, 3, 4, 1000])),
    st.tuples(st.just("values-as"), st.sampled_from(
        ["fifo", "directory", "symlink-inside", "symlink-outside", "hardlink-outside", "missing",
         "empty", "socket", "sparse-huge", "unreadable", "move-sub", "move-deep", "move-linkdir"])),
    st.tuples(st.just("manifest-as"), st.sampled_from(
        ["symlink", "fifo", "directory", "missing", "hardlink", "unreadable"])),
    st.tuples(st.just("flip"), st.integers(0, 10**4), st.integers(0, 255)),
)  # fmt: skip
PACK_PATHS = st.sampled_from(["pack", "pack", "pack", "link", "file", "missing", "fifo"])


@st.composite
def pack_inputs(draw: st.DrawFn) -> tuple[str, list[tuple]]:
    return draw(PACK_PATHS, label="pack path"), draw(
        st.lists(PACK_MUTATIONS, max_size=3), label="mutations"
    )


def _remove(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link, FIFO, socket or empty directory)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def _read_regular(path: Path) -> bytes:
    """Read ``path`` only if it is a regular file (after links): a FIFO must not block us."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a regular file")
    return path.read_bytes()


def _edit_manifest(pack: Path, edit: Callable[[dict], None], layout: Any) -> None:
    path = pack / packs.MANIFEST_NAME
    try:
        raw = json.loads(_read_regular(path))
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(raw, dict):
        return
    edit(raw)
    for key, value in list(raw.items()):
        raw[key] = _placeholder(value, layout, pack)
    path.unlink()
    path.write_bytes(dumps_raw(raw))


def _placeholder(value: Any, layout: Any, pack: Path) -> Any:
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    count = layout.parameter_count
    return {
        "@correct": layout.hash, "@correct-upper": layout.hash.upper(),
        "@correct-newline": layout.hash + "\n", "@count": count, "@count-1": count - 1,
        "@count+1": count + 1, "@count-float": float(count), "@count-str": str(count),
        "@absolute": str(pack / packs.VALUES_NAME),
    }.get(value, value)  # fmt: skip


def _values_path(pack: Path) -> Path:
    try:
        name = json.loads(_read_regular(pack / packs.MANIFEST_NAME))["values_f32_le"]
        path = pack / name
        if isinstance(name, str) and ".." not in name:
            path.is_file()  # a name the filesystem refuses (too long, NUL) raises here
            return path
        return pack / packs.VALUES_NAME
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return pack / packs.VALUES_NAME


def apply_pack_mutation(pack: Path, mutation: tuple, layout: Any) -> None:
    """Apply one mutation; one that cannot apply (its file is gone) is a no-op."""
    kind = mutation[0]
    outside = pack.parent / "outside"
    outside.mkdir(exist_ok=True)
    manifest = pack / packs.MANIFEST_NAME
    if kind == "field":
        _edit_manifest(pack, lambda raw: raw.__setitem__(mutation[1], mutation[2]), layout)
    elif kind == "delete":
        _edit_manifest(pack, lambda raw: raw.pop(mutation[1], None), layout)
    elif kind == "extra":
        _edit_manifest(pack, lambda raw: raw.setdefault(mutation[1], mutation[2]), layout)
    elif kind == "manifest-bytes":
        _, how, at, blob = mutation
        try:
            data = _read_regular(manifest)
        except OSError:
            data = b"{}"
        data = {
            "cut": data[:at], "insert": data[:at] + blob + data[at:], "binary": blob,
            "bom": b"\xef\xbb\xbf" + data, "deep": b"[" * 100_000,
            "digits": data.replace(b'"parameter_count": ', b'"parameter_count": ' + b"9" * 5000),
        }[how]  # fmt: skip
        _remove(manifest)
        manifest.write_bytes(data)
    elif kind == "resize":
        values = _values_path(pack)
        if values.is_file() and not values.is_symlink():
            size = values.stat().st_size
            os.truncate(values, max(0, size + mutation[1]))
    elif kind == "flip":
        values = _values_path(pack)
        if values.is_file() and not values.is_symlink() and values.stat().st_size:
            with open(values, "r+b") as f:
                f.seek(mutation[1] % values.stat().st_size)
                f.write(bytes([mutation[2]]))
    elif kind == "values-as":
        _values_as(pack, mutation[1], layout)
    elif kind == "manifest-as":
        _manifest_as(pack, mutation[1])


def _values_as(pack: Path, how: str, layout: Any) -> None:
    values = pack / packs.VALUES_NAME
    outside = pack.parent / "outside"
    if not values.is_file() or values.is_symlink() or values.stat().st_size > 1 << 20:
        return
    data = values.read_bytes()
    if how.startswith("move-"):
        relative = {"move-sub": "sub/values.f32le", "move-deep": "a/b/c.bin",
                    "move-linkdir": "linkdir/values.f32le"}[how]  # fmt: skip
        if how == "move-linkdir":
            (outside / "real-dir").mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.symlink(outside / "real-dir", pack / "linkdir")
        target = pack / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(values, target)
        _edit_manifest(pack, lambda raw: raw.__setitem__("values_f32_le", relative), layout)
        return
    values.unlink()
    if how == "fifo":
        os.mkfifo(values)
    elif how == "directory":
        values.mkdir()
    elif how == "symlink-inside":
        (pack / "real.f32le").write_bytes(data)
        os.symlink("real.f32le", values)
    elif how in ("symlink-outside", "hardlink-outside"):
        (outside / "values.f32le").write_bytes(data)
        (os.symlink if how == "symlink-outside" else os.link)(outside / "values.f32le", values)
    elif how == "empty":
        values.write_bytes(b"")
    elif how == "socket":
        make_socket_file(values)
    elif how == "sparse-huge":
        values.write_bytes(b"")
        with contextlib.suppress(OSError):
            os.truncate(values, packs.MAX_PARAMETER_COUNT * 4)
    elif how == "unreadable":
        values.write_bytes(data)
        os.chmod(values, 0)


def _manifest_as(pack: Path, how: str) -> None:
    manifest = pack / packs.MANIFEST_NAME
    outside = pack.parent / "outside"
    if not manifest.is_file() or manifest.is_symlink():
        return
    data = manifest.read_bytes()
    manifest.unlink()
    if how in ("symlink", "hardlink"):
        (outside / "manifest.json").write_bytes(data)
        (os.symlink if how == "symlink" else os.link)(outside / "manifest.json", manifest)
    elif how == "fifo":
        os.mkfifo(manifest)
    elif how == "directory":
        manifest.mkdir()
    elif how == "unreadable":
        manifest.write_bytes(data)
        os.chmod(manifest, 0)


def _pack_path(root: Path, pack: Path, how: str) -> Path:
    path = root / f"path-{how}"
    if how == "pack":
        return pack
    if how == "link":
        os.symlink(pack, path)
    elif how == "file":
        path.write_bytes(b"{}")
    elif how == "fifo":
        os.mkfifo(path)
    return path


def _manifest_size(path: Path) -> int:
    with contextlib.suppress(OSError):
        info = os.stat(path / packs.MANIFEST_NAME)
        if stat.S_ISREG(info.st_mode):
            return info.st_size
    return 0


def check_pack(case: tuple[str, list[tuple]]) -> None:
    """A mutated pack: loaded exactly when the oracle says valid, else refused, target untouched."""
    how, mutations = case
    target_layout = compute_layout(make_model())
    with temporary_root() as root:
        pack = root / "pack"
        packs.export_pack(make_model(offset=100.0), pack, "schema")
        for mutation in mutations:
            apply_pack_mutation(pack, mutation, target_layout)
        path = _pack_path(root, pack, how)
        why = pack_oracle(path, target_layout.hash, target_layout.parameter_count)

        target = make_model()
        before = snapshot(target)
        judge_load(
            lambda: packs.import_pack(path, lambda: target), "import_pack", "pack", why,
            (PackError, LayoutError), root,
            lambda: check_pack_values(target, path),
            lambda: check_unchanged(target, before, "import_pack"),
            data_bytes=_manifest_size(path),
        )  # fmt: skip

        worker = Worker(TorchWorkload())
        body = dumps_raw(
            {"id": 9, "method": "import_parameter_pack",
             "params": {"device": "cpu", "parameter_pack_path": str(path)}}
        )  # fmt: skip
        response = check_frame(
            bounded(lambda: respond(worker, body), "import_parameter_pack", root)
        )
        if response["id"] != 9 or response["ok"] != (why is None):
            raise FuzzFailure(
                f"import_parameter_pack answered {response!r:.300} "
                f"for a pack the oracle calls {why or 'valid'}"
            )
        if response["ok"]:
            check_pack_values(worker.models[response["result"]["model_id"]]["model"], path)
        else:
            if not response["error"].startswith("import_parameter_pack:") or worker.models:
                raise FuzzFailure(f"refusal not named or a model was allocated: {response!r:.300}")
        check_no_partials(root)
