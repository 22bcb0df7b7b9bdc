"""Target "artifacts": safetensors artifacts with mutated headers, data and file types,
judged against an independent validity oracle (the safetensors format as
docs/protocol.md uses it, and the header limits of SECURITY.md): a valid file must
load exactly, an invalid one must be refused with the model untouched, and the
load's allocations must stay within the oracle's bound for the header it
parses (a 99 MiB ``__metadata__`` took 2.8 GB: issue #9 item 2).
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from worker import artifacts
from worker.errors import PackError
from worker.service import Worker

from .oracle import (
    HEADER_FIXED_BYTES,
    HEADER_FIXED_ITEMS,
    MAX_HEADER_BYTES,
    FuzzFailure,
    bounded,
    check_frame,
    check_unchanged,
    count_json_values,
    judge_load,
    make_socket_file,
    respond,
    same_bits,
    snapshot,
    temporary_root,
)
from .values import AMPLIFYING, JUNK, LONG_TEXT, TEXT, U64_MAX, Raw, dumps_raw
from .workloads import TorchWorkload, make_model

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
             "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # fmt: skip


def _model_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def header_limits(tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The contract (SECURITY.md): per tensor 6 bytes per UTF-8 byte of its name, 256
    bytes and 24 per dimension, 16 JSON values and one per dimension; plus the
    fixed allowances; bytes capped at MAX_HEADER_BYTES."""
    size, items = HEADER_FIXED_BYTES, HEADER_FIXED_ITEMS
    for name, tensor in tensors.items():
        size += 6 * len(name.encode("utf-8", "surrogatepass")) + 256 + 24 * tensor.dim()
        items += 16 + tensor.dim()
    return min(size, MAX_HEADER_BYTES), items


def artifact_oracle(path: Path, module: nn.Module) -> str | None:
    """None when a correct reader must load the file into ``module``, else why not.

    From the safetensors format (8-byte little-endian header length, a JSON
    object header, raw data) as docs/protocol.md uses it: every key of the model,
    nothing else, same dtype and shape, offsets inside the data that fit.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file"
        blob = path.read_bytes()
    except (OSError, ValueError) as exc:
        return f"unreadable: {type(exc).__name__}"
    if len(blob) < 8:
        return "too short"
    (length,) = struct.unpack("<Q", blob[:8])
    max_bytes, max_items = header_limits(_model_tensors(module))
    if length > max_bytes or 8 + length > len(blob):
        return "header length out of range"
    if count_json_values(blob[8 : 8 + length]) > max_items:
        return "header holds more JSON values than the model needs"
    try:
        header = json.loads(blob[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "header is not UTF-8 JSON"
    if not isinstance(header, dict):
        return "header is not an object"
    header.pop("__metadata__", None)
    data_len = len(blob) - 8 - length
    for entry in header.values():
        if not isinstance(entry, dict):
            return "entry is not an object"
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in ST_DTYPES:
            return "bad dtype"
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return "bad shape"
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            return "bad offsets"
        begin, end = offsets
        itemsize = torch.empty(0, dtype=ST_DTYPES[dtype]).element_size()
        if not 0 <= begin <= end <= data_len or end - begin != math.prod(shape) * itemsize:
            return "offsets do not fit"
    tensors = _model_tensors(module)
    if set(header) != set(tensors):
        return "keys differ from the model"
    for name, tensor in tensors.items():
        if (
            header[name]["shape"] != list(tensor.shape)
            or ST_DTYPES[header[name]["dtype"]] != tensor.dtype
        ):
            return "shape or dtype differs from the model"
    return None


def check_artifact_values(module: nn.Module, path: Path) -> None:
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    start = 8 + length
    for name, tensor in _model_tensors(module).items():
        begin, end = header[name]["data_offsets"]
        raw = bytearray(blob[start + begin : start + end])
        expected = (
            torch.frombuffer(raw, dtype=tensor.dtype).reshape(tensor.shape)
            if raw else torch.empty(tensor.shape, dtype=tensor.dtype)
        )  # fmt: skip
        if not same_bits(tensor, expected):
            raise FuzzFailure(f"loaded {name!r} differs from the artifact's bytes")


ENTRY_EDITS = {
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "F8_E4M3", "", "f32", None, 5]) | JUNK,
    "shape": st.sampled_from([[], [0], [-1], [2**63], [True], [4.0], [[4]], "4", None])
    | st.lists(st.integers(-2, 2**64), max_size=3)
    | JUNK,
    "data_offsets": st.lists(st.integers(-2, 2**64) | st.sampled_from([True, 1.0, "0"]), max_size=3)
    | JUNK,
}
ARTIFACT_MUTATIONS = st.one_of(
    st.tuples(st.just("entry"), st.integers(0, 50), st.sampled_from(sorted(ENTRY_EDITS))).flatmap(
        lambda t: st.tuples(*map(st.just, t), ENTRY_EDITS[t[2]])
    ),
    st.tuples(st.just("entry-shift"), st.integers(0, 50), st.integers(-8, 8)),
    st.tuples(st.just("delete-entry"), st.integers(0, 50)),
    st.tuples(st.just("add-entry"), TEXT, JUNK | st.just("@copy")),
    st.tuples(st.just("entry-junk"), st.integers(0, 50), JUNK),
    st.tuples(st.just("metadata"), JUNK),
    st.tuples(st.just("metadata"), AMPLIFYING | LONG_TEXT),
    st.tuples(st.just("add-entry"), LONG_TEXT, st.just("@copy")),
    st.tuples(st.just("entry"), st.integers(0, 50), st.just("shape"),
              st.sampled_from([10**5, 10**6]).map(lambda n: Raw("[" + ",".join(["1"] * n) + "]"))),
    st.tuples(st.just("header-json"), JUNK),
    st.tuples(st.just("header-bytes"), st.sampled_from(["cut", "insert", "binary", "deep", "bom"]),
              st.integers(0, 600), st.binary(max_size=12)),
    st.tuples(st.just("length"), st.sampled_from([0, 1, 7, -8, -1, 1, 8, 1 << 32,
                                                  MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1,
                                                  U64_MAX])),
    st.tuples(st.just("data"), st.integers(-64, 64)),
    st.tuples(st.just("file-as"), st.sampled_from(
        ["fifo", "directory", "symlink", "missing", "empty", "binary", "socket", "unreadable"]),
              st.binary(max_size=64)),
)  # fmt: skip


def _split_artifact(blob: bytes) -> tuple[Any, bytes, bytes]:
    """(header object or None, header bytes, data) of a possibly broken artifact."""
    if len(blob) < 8:
        return None, b"", blob
    (length,) = struct.unpack("<Q", blob[:8])
    header_bytes, data = blob[8 : 8 + length], blob[8 + length :]
    try:
        return json.loads(header_bytes), header_bytes, data
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None, header_bytes, data


def _join_artifact(header_bytes: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header_bytes) if length is None else length) + header_bytes + data


def apply_artifact_mutation(path: Path, mutation: tuple) -> None:
    kind = mutation[0]
    if kind == "file-as":
        _artifact_as(path, mutation[1], mutation[2])
        return
    if not path.is_file() or path.is_symlink():
        return
    blob = path.read_bytes()
    header, header_bytes, data = _split_artifact(blob)
    names = sorted(k for k in header if k != "__metadata__") if isinstance(header, dict) else []
    pick = (lambda i: names[i % len(names)]) if names else None
    if kind in ("entry", "entry-shift", "delete-entry", "entry-junk") and pick is not None:
        name = pick(mutation[1])
        if kind == "entry" and isinstance(header[name], dict):
            header[name][mutation[2]] = mutation[3]
        elif kind == "entry-shift" and isinstance(header[name], dict):
            offsets = header[name].get("data_offsets")
            if isinstance(offsets, list) and offsets and type(offsets[-1]) is int:
                offsets[-1] += mutation[2]
        elif kind == "delete-entry":
            del header[name]
        elif kind == "entry-junk":
            header[name] = mutation[2]
        header_bytes = dumps_raw(header)
    elif kind == "add-entry" and isinstance(header, dict):
        header[mutation[1]] = header[names[0]] if mutation[2] == "@copy" and names else mutation[2]
        header_bytes = dumps_raw(header)
    elif kind == "metadata" and isinstance(header, dict):
        header["__metadata__"] = mutation[1]
        header_bytes = dumps_raw(header)
    elif kind == "header-json":
        header_bytes = dumps_raw(mutation[1])
    elif kind == "header-bytes":
        _, how, at, blob_in = mutation
        header_bytes = {
            "cut": header_bytes[:at], "insert": header_bytes[:at] + blob_in + header_bytes[at:],
            "binary": blob_in, "deep": b"[" * 100_000, "bom": b"\xef\xbb\xbf" + header_bytes,
        }[how]  # fmt: skip
    elif kind == "length":
        value = mutation[1]
        length = len(header_bytes) + value if value in (-8, -1, 1, 8) else value
        path.write_bytes(_join_artifact(header_bytes, data, max(0, min(length, U64_MAX))))
        return
    elif kind == "data":
        delta = mutation[1]
        data = data[:delta] if delta < 0 else data + b"\x00" * delta
    path.write_bytes(_join_artifact(header_bytes, data))


def _artifact_as(path: Path, how: str, blob: bytes) -> None:
    if not path.is_file() or path.is_symlink():
        return
    data = path.read_bytes()
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "symlink":
        real = path.with_name("real.safetensors")
        real.write_bytes(data)
        os.symlink(real.name, path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "binary":
        path.write_bytes(blob)
    elif how == "socket":
        make_socket_file(path)
    elif how == "unreadable":
        path.write_bytes(data)
        os.chmod(path, 0)


def _header_size(path: Path) -> int:
    """The header length a regular file announces, if the file holds that much."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return 0
        with open(path, "rb") as f:
            prefix = f.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        return length if 8 + length <= os.stat(path).st_size else 0
    except OSError:
        return 0


def check_artifact(mutations: list[tuple]) -> None:
    """A mutated safetensors artifact: loaded exactly when the oracle says valid, else refused."""
    with temporary_root() as root:
        path = root / "artifact.safetensors"
        artifacts.save_state(make_model(offset=100.0), path)
        for mutation in mutations:
            apply_artifact_mutation(path, mutation)
        target = make_model()
        why = artifact_oracle(path, target)
        before = snapshot(target)
        judge_load(
            lambda: artifacts.load_state(target, path), "load_state", "artifact", why,
            (PackError,), root,
            lambda: check_artifact_values(target, path),
            lambda: check_unchanged(target, before, "load_state"),
            data_bytes=_header_size(path),
        )  # fmt: skip

        worker = Worker(TorchWorkload())
        check_frame(
            respond(worker, b'{"id": 1, "method": "init_model", "params": {"device": "cpu"}}')
        )
        before = snapshot(worker.models["m1"]["model"])
        body = dumps_raw(
            {"id": 5, "method": "load_model_artifact",
             "params": {"model_id": "m1", "artifact_path": str(path)}}
        )  # fmt: skip
        response = check_frame(bounded(lambda: respond(worker, body), "load_model_artifact", root))
        if response["id"] != 5 or response["ok"] != (why is None):
            raise FuzzFailure(
                f"load_model_artifact answered {response!r:.300} "
                f"for a file the oracle calls {why or 'valid'}"
            )
        if not response["ok"]:
            if not response["error"].startswith("load_model_artifact:"):
                raise FuzzFailure(f"refusal does not name the method: {response['error'][:300]!r}")
            check_unchanged(worker.models["m1"]["model"], before, "load_model_artifact")
