"""Generic model artifacts: a safetensors file of the whole model state.

Used when the workload has no artifact hooks.  Written and read with the
standard library and torch only (the format is an 8-byte little-endian
header length, a JSON header, then raw little-endian tensor bytes), so the
worker needs no ``safetensors`` package; files are interchangeable with
``safetensors.torch.save_file``/``load_file``.  Nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from . import bounded_json, files
from .errors import PackError, describe
from .files import write_all
from .layout import state_modules
from .tensor_io import LITTLE_ENDIAN, memory_view, read_exact_into

SAVE_METHOD = "materialize_model_artifact"
LOAD_METHOD = "load_model_artifact"

MAX_HEADER_BYTES = 32 * 1024 * 1024
"""The header of a 10^5-tensor model, names of 100 characters, 4-dim shapes and
20-digit offsets, takes 22 MB (``tests/test_artifacts.py::test_the_header_limits_fit_a_10_5_tensor_model``);
every header is also held to what the target model needs (:func:`header_limits`)."""
HEADER_FIXED_BYTES = 1024 * 1024
"""Header bytes allowed beyond the model's entries: ``__metadata__`` and whitespace."""
HEADER_FIXED_ITEMS = 4096
"""JSON values allowed beyond the model's entries (``__metadata__``)."""
_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


def _dtype_codes() -> dict[Any, str]:
    import torch

    return {getattr(torch, name): code for code, name in _DTYPES.items()}


def state_tensors(state: Any) -> dict[str, Any]:
    """Every tensor of the state's ``state_dict()``s, by full layout name."""
    import torch

    out = {}
    for module_name, module in state_modules(state):
        prefix = f"{module_name}." if module_name else ""
        for key, value in module.state_dict().items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value.detach()
    return out


def save_state(state: Any, path: str | os.PathLike[str]) -> None:
    """Write the state as a safetensors file, atomically (see :mod:`worker.files`).

    Raises :class:`~worker.errors.LayoutError` or :class:`PackError`.
    """
    codes = _dtype_codes()
    tensors = state_tensors(state)
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "writer": "burn-p2p-python-worker"}}
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in codes:
            raise PackError(
                f"tensor {name!r} has unsupported dtype {tensor.dtype}", method=SAVE_METHOD
            )
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": codes[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with files.staged_file(target) as staged:
            write_all(staged.file, struct.pack("<Q", len(encoded)) + encoded)
            for name in sorted(tensors):
                tensor = tensors[name]
                if tensor.numel() == 0:
                    continue
                cpu = tensor.to("cpu").contiguous()
                if not LITTLE_ENDIAN and cpu.element_size() > 1:
                    raise PackError(
                        "artifacts on big-endian hosts are not supported", method=SAVE_METHOD
                    )
                write_all(staged.file, memory_view(cpu))
            staged.publish()
    except OSError as exc:
        raise PackError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}", method=SAVE_METHOD
        ) from exc


def header_limits(tensors: dict[str, Any]) -> tuple[int, int]:
    """(bytes, JSON values) a safetensors header for ``tensors`` may take: per
    tensor its name (6 bytes per UTF-8 byte, for escapes), 256 bytes and 24 per
    dimension, and 16 values and one per dimension; plus the fixed allowances;
    bytes capped at :data:`MAX_HEADER_BYTES`."""
    size, items = HEADER_FIXED_BYTES, HEADER_FIXED_ITEMS
    for name, tensor in tensors.items():
        size += 6 * len(name.encode("utf-8", "surrogatepass")) + 256 + 24 * tensor.dim()
        items += 16 + tensor.dim()
    return min(size, MAX_HEADER_BYTES), items


def read_header(
    raw: io.RawIOBase, size: int, where: str, limits: tuple[int, int]
) -> tuple[dict[str, Any], int]:
    """Parse and validate a safetensors header within ``limits`` (see
    :func:`header_limits`), refused before reading or parsing when over them;
    returns (entries, data start)."""
    max_bytes, max_items = limits
    if size < 8:
        raise PackError(f"{where}: {size} bytes is too short for a safetensors file")
    prefix = bytearray(8)
    read_exact_into(raw, memoryview(prefix))
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > max_bytes or 8 + header_len > size:
        raise PackError(
            f"{where}: header length {header_len} is larger than the file or the "
            f"{max_bytes}-byte limit for this model's tensors"
        )
    data = bytearray(header_len)
    read_exact_into(raw, memoryview(data))
    try:
        header = bounded_json.loads(data, max_bytes=max_bytes, max_items=max_items)
    except bounded_json.JSONRefused as exc:
        raise PackError(f"{where}: header {exc}") from None
    if not isinstance(header, dict):
        raise PackError(f"{where}: header must be a JSON object")
    header.pop("__metadata__", None)
    start = 8 + header_len
    data_len = size - start
    import torch

    for name, entry in header.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and entry["dtype"] in _DTYPES
            and isinstance(entry.get("shape"), list)
            and all(type(d) is int and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(type(o) is int for o in entry["data_offsets"])
        )
        if not ok:
            raise PackError(
                f"{where}: header entry {describe(name, typed=False)} is malformed: "
                f"{describe(entry)}"
            )
        begin, end = entry["data_offsets"]
        itemsize = getattr(torch, _DTYPES[entry["dtype"]]).itemsize
        if not 0 <= begin <= end <= data_len or end - begin != math.prod(entry["shape"]) * itemsize:
            raise PackError(
                f"{where}: tensor {describe(name, typed=False)} has offsets "
                f"{describe(entry['data_offsets'], typed=False)} that do not fit its shape or "
                "the file"
            )
    return header, start


def load_state(state: Any, path: str | os.PathLike[str]) -> None:
    """Load a safetensors file into ``state``'s tensors in place.

    The file must hold exactly the state's tensors with the same shapes and
    dtypes; all of that is checked before any tensor is written.  Raises
    :class:`PackError` (its method is ``load_model_artifact``).
    """
    try:
        _load_state(state, path, repr(os.fspath(path)))
    except PackError as exc:
        exc.method = exc.method or LOAD_METHOD
        raise


def max_bytes_in_memory() -> int:
    """Largest artifact a bytes hook (``load_model_artifact(state, data)``) is
    handed: half the machine's physical memory (16 GiB where unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def open_regular(path: str | os.PathLike[str], where: str) -> tuple[io.FileIO, int]:
    """Open ``path`` for reading without blocking on a FIFO (``O_NONBLOCK``),
    refuse anything but a regular file (FIFO, device, socket, directory), and
    return the blocking raw file with its size.  Raises :class:`PackError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PackError(f"{where}: cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PackError(f"{where}: not a regular file (mode {stat.filemode(info.st_mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)  # before open(fd): FileIO refuses a directory without closing fd
        raise
    return open(fd, "rb", buffering=0), info.st_size


def read_whole(path: str | os.PathLike[str], where: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`), at most ``limit``
    (default :func:`max_bytes_in_memory`): a larger file is refused before any
    byte is read.  Raises :class:`PackError`."""
    limit = max_bytes_in_memory() if limit is None else limit
    raw, size = open_regular(path, where)
    with raw:
        if size > limit:
            raise PackError(
                f"{where}: {size} bytes is more than the {limit} bytes an artifact may take in memory"
            )
        parts = []
        try:
            while size:
                chunk = raw.read(size)  # one read for up to 2 GiB
                if not chunk:
                    raise PackError(f"{where}: file ended early (it shrank while being read)")
                parts.append(chunk)
                size -= len(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except MemoryError:
            raise PackError(f"{where}: not enough memory to read the file") from None
        except OSError as exc:
            raise PackError(f"{where}: cannot read: {exc.strerror or exc}") from None


def _load_state(state: Any, path: str | os.PathLike[str], where: str) -> None:
    import torch

    tensors = state_tensors(state)
    raw, size = open_regular(path, where)
    try:
        with raw:
            header, start = read_header(raw, size, where, header_limits(tensors))
            missing = sorted(set(tensors) - set(header))
            extra = sorted(set(header) - set(tensors))
            if missing or extra:
                shown_missing = ", ".join(describe(name, typed=False) for name in missing[:5])
                unexpected = ", ".join(describe(name, typed=False) for name in extra[:5])
                raise PackError(
                    f"{where}: keys do not match the model (missing [{shown_missing}], "
                    f"unexpected [{unexpected}])"
                )
            for name, tensor in tensors.items():
                entry = header[name]
                if entry["shape"] != list(tensor.shape) or _DTYPES[entry["dtype"]] != str(
                    tensor.dtype
                ).removeprefix("torch."):
                    raise PackError(
                        f"{where}: tensor {describe(name, typed=False)} is {entry['dtype']}"
                        f"{describe(entry['shape'], typed=False)} in the file but "
                        f"{tensor.dtype}{list(tensor.shape)} in the model"
                    )
            for name, tensor in tensors.items():
                begin, end = header[name]["data_offsets"]
                if begin == end:
                    continue
                raw.seek(start + begin)
                staged = torch.empty(tensor.shape, dtype=tensor.dtype)
                read_exact_into(raw, memory_view(staged))
                with torch.no_grad():
                    tensor.copy_(staged)
    except OSError as exc:
        raise PackError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except EOFError:
        raise PackError(f"{where}: file ended early") from None
