"""Parameter packs as the coordinator side sees them (docs/protocol.md §3).

The coordinator side's one copy of the on-disk format: fakecoord's
simulation and the conformance suite read and write packs here, with numpy
and without torch, and never through the ``worker`` package, so that a bug
in the worker's pack code cannot hide behind the same bug here.

- :func:`open_pack` validates a pack (manifest fields, a plain values file
  inside the pack opened without following links, its exact length) and maps
  its values read-only: a 5e7-parameter pack costs no memory until read.
- :func:`write_pack`, :func:`pack_writer` and :func:`pack_stream_writer`
  publish a pack atomically (a staging directory renamed into place) with
  the manifest the Rust coordinator writes.  Values are written with
  ``write`` calls, never through a memory map, so a full disk is a
  :class:`~fakecoord.errors.PackError` (and the staging is removed), not a
  SIGBUS.
- :func:`layout_hash` is the layout hash of a list of layout entries.

Every refusal raises :class:`~fakecoord.errors.PackError` naming the pack
and what is wrong with it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import wire
from .errors import DecodeError, PackError
from .files import staged_directory

PACK_FORMAT = "burn-p2p-python-flattened-parameter-pack-v1"
MANIFEST_NAME = "manifest.json"
VALUES_NAME = "values.f32le"
LAYOUT_HASH_PREFIX = "torch-layout-"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""Manifests larger than this are refused unread (the worker's limit too)."""
U64_MAX = 2**64 - 1
F32 = np.dtype("<f4")


def layout_hash(entries: Sequence[Mapping[str, Any]]) -> str:
    """``torch-layout-`` + sha256 of the entries as the reference worker encodes them.

    ``entries`` are ``{"name", "shape", "dtype", "numel"}`` dicts in layout order.
    """
    text = json.dumps(list(entries), sort_keys=True, separators=(",", ":"))
    return LAYOUT_HASH_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The five fields every pack manifest has; ``raw`` is the whole decoded object."""

    model_schema_hash: str
    layout_hash: str
    parameter_count: int
    values_f32_le: str = VALUES_NAME
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The manifest as the Rust coordinator writes it (these five keys, this order)."""
        return {
            "format": PACK_FORMAT,
            "model_schema_hash": self.model_schema_hash,
            "layout_hash": self.layout_hash,
            "parameter_count": self.parameter_count,
            "values_f32_le": self.values_f32_le,
        }


def check_values_name(name: str, where: str) -> None:
    """Refuse a ``values_f32_le`` that is not a relative path inside the pack."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        raise PackError(f"{where}: values_f32_le {name[:80]!r} must be a relative path in the pack")
    if any(part in ("", ".", "..") for part in parts):
        raise PackError(
            f"{where}: values_f32_le {name[:80]!r} must not contain '..', '.' or empty components"
        )


_FIELDS = ("format", "model_schema_hash", "layout_hash", "parameter_count", "values_f32_le")


def parse_manifest(data: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest bytes; raises :class:`PackError` naming the bad field.

    Read as the Rust coordinator reads it (``serde_json::from_slice`` into a
    derived struct): a duplicated field, NaN or a lone surrogate in a field
    is refused; fields it does not know are ignored.
    """
    try:
        raw = wire.parse_json(data)
    except DecodeError as exc:
        raise PackError(f"{where}: not a UTF-8 JSON object ({str(exc)[:200]})") from None
    if not isinstance(raw, dict):
        raise PackError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    duplicated = [key for key in _FIELDS if key in getattr(raw, "duplicates", ())]
    if duplicated:
        raise PackError(f"{where}: duplicate key {duplicated[0]!r}")
    if raw.get("format") != PACK_FORMAT:
        got = str(raw.get("format"))[:80]
        raise PackError(f"{where}: format is {got!r}, expected {PACK_FORMAT!r}")
    for key in ("model_schema_hash", "layout_hash", "values_f32_le"):
        if not isinstance(raw.get(key), str):
            raise PackError(f"{where}: {key} must be a string, got {str(raw.get(key))[:80]!r}")
        if wire.has_lone_surrogate(raw[key]):
            raise PackError(f"{where}: {key} holds a lone UTF-16 surrogate escape")
    count = raw.get("parameter_count")
    if type(count) is not int or not 0 <= count <= U64_MAX:
        raise PackError(
            f"{where}: parameter_count must be an integer in 0..=2^64-1, got {str(count)[:80]!r}"
        )
    check_values_name(raw["values_f32_le"], where)
    return Manifest(raw["model_schema_hash"], raw["layout_hash"], count, raw["values_f32_le"], raw)


@dataclass
class Pack:
    """A validated pack: its manifest and its float32 values (read-only)."""

    path: Path
    manifest: Manifest
    values: np.ndarray

    @property
    def layout_hash(self) -> str:
        return self.manifest.layout_hash

    @property
    def parameter_count(self) -> int:
        return self.manifest.parameter_count

    @property
    def bits(self) -> np.ndarray:
        """The values as uint32 bit patterns (compare these for bit-identity)."""
        return self.values.view("<u4")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _open_in(dir_fd: int, relative: str, where: str) -> int:
    """Open a regular file under ``dir_fd`` without following links; refuses FIFOs and devices."""
    opened: list[int] = []
    try:
        current = dir_fd
        parts = relative.split("/")
        for part in parts[:-1]:
            current = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=current)
            opened.append(current)
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PackError(f"{where}: {relative!r} is or goes through a link") from None
        raise PackError(f"{where}: cannot open {relative!r} ({exc.strerror})") from None
    finally:
        for extra in opened:
            os.close(extra)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PackError(f"{where}: {relative!r} is not a regular file ({stat.filemode(mode)})")
    os.set_blocking(fd, True)
    return fd


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The validated manifest of the pack at ``path`` (values not checked)."""
    return _open(path, load_values=None).manifest


def open_pack(path: str | os.PathLike, *, in_memory: bool = False) -> Pack:
    """Validate the pack at ``path`` and give its values as float32.

    By default the values are a read-only memory map of ``values.f32le``
    (no copy; valid while the file exists, even if replaced by a rename);
    ``in_memory=True`` reads them into a private array instead.  Raises
    :class:`PackError` for a missing or invalid pack.
    """
    return _open(path, load_values=in_memory)


def _open(path: str | os.PathLike, load_values: bool | None) -> Pack:
    root = Path(path)
    if load_values is None:
        manifest, dir_fd = _open_manifest(root)
        os.close(dir_fd)
        return Pack(root, manifest, np.empty(0, dtype=np.float32))
    manifest, fd = _open_values(root)
    where = f"parameter pack {str(root)!r}"
    with open(fd, "rb", buffering=0) as values_file:
        expected = manifest.parameter_count * 4
        if expected == 0:
            values = np.empty(0, dtype=np.float32)
        elif load_values:
            values = np.empty(manifest.parameter_count, dtype=np.float32)
            if values_file.readinto(values.data.cast("B")) != expected:
                raise PackError(f"{where}: {manifest.values_f32_le} changed while it was read")
        else:
            values = np.memmap(
                values_file, dtype=F32, mode="r", shape=(manifest.parameter_count,)
            ).view(np.ndarray)
    return Pack(root, manifest, values)


def _open_manifest(root: Path) -> tuple[Manifest, int]:
    """The validated manifest and an open descriptor of the pack directory (caller closes)."""
    where = f"parameter pack {str(root)!r}"
    try:
        dir_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise PackError(f"{where}: cannot open the directory ({exc.strerror})") from None
    try:
        fd = _open_in(dir_fd, MANIFEST_NAME, where)
        with open(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise PackError(
                    f"{where}: {MANIFEST_NAME} has {size} bytes, above the limit of "
                    f"{MAX_MANIFEST_BYTES}"
                )
            manifest = parse_manifest(f.read(MAX_MANIFEST_BYTES + 1), f"{where}: {MANIFEST_NAME}")
    except BaseException:
        os.close(dir_fd)
        raise
    return manifest, dir_fd


def _open_values(root: Path) -> tuple[Manifest, int]:
    """The validated manifest and a descriptor of a values file of exactly the right size."""
    where = f"parameter pack {str(root)!r}"
    manifest, dir_fd = _open_manifest(root)
    try:
        fd = _open_in(dir_fd, manifest.values_f32_le, where)
    finally:
        os.close(dir_fd)
    size = os.fstat(fd).st_size
    expected = manifest.parameter_count * 4
    if size != expected:
        os.close(fd)
        raise PackError(
            f"{where}: {manifest.values_f32_le} holds {size} bytes, but parameter_count "
            f"{manifest.parameter_count} needs exactly {expected}"
        )
    return manifest, fd


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Manifest text as the Rust coordinator writes it (pretty-printed JSON)."""
    return json.dumps(dict(manifest), indent=2, allow_nan=False).encode("utf-8")


WRITE_CHUNK_ELEMENTS = 1 << 20
"""Values converted to float32 at a time when the caller's are not float32 already."""


def _write_values(fd: int, values: np.ndarray) -> None:
    """Append ``values`` (1-D) as little-endian float32 to ``fd`` with ``write`` calls.

    Contiguous float32 values are written from their own memory (no copy);
    others are converted :data:`WRITE_CHUNK_ELEMENTS` at a time.  Raises
    ``OSError`` from the file system (a full disk: ENOSPC, never SIGBUS).
    """
    if values.dtype == F32 and values.flags.c_contiguous:
        _write_all(fd, values.data.cast("B"))
        return
    for start in range(0, values.shape[0], WRITE_CHUNK_ELEMENTS):
        chunk = np.ascontiguousarray(values[start : start + WRITE_CHUNK_ELEMENTS], dtype=F32)
        _write_all(fd, chunk.data.cast("B"))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _cannot_write(path: str | os.PathLike, exc: OSError) -> PackError:
    reason = exc.strerror or str(exc)
    return PackError(f"cannot write parameter pack {os.fspath(path)!r}: {reason}")


@contextmanager
def _staged_pack(path: str | os.PathLike, manifest: Manifest) -> Iterator[tuple[Path, list[bool]]]:
    """A staging directory published as the pack at ``path`` on a clean exit.

    Yields the staging directory and a flag the caller sets when the body's
    own exception is passing through (then it propagates unchanged).  Any
    other ``OSError`` becomes :class:`PackError` naming ``path``; on every
    failure the staging is removed (:func:`~fakecoord.files.staged_directory`).
    """
    body_failed = [False]
    try:
        with staged_directory(path) as staging:
            yield staging, body_failed
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes(manifest.to_json()))
    except OSError as exc:
        if body_failed[0]:
            raise
        raise _cannot_write(path, exc) from None


def _open_values_for_writing(staging: Path, count: int) -> int:
    """Create the staging values file, its ``count * 4`` bytes reserved (:func:`_preallocate`)."""
    fd = os.open(staging / VALUES_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _preallocate(fd, count * 4)
    except BaseException:
        os.close(fd)
        raise
    return fd


_FALLOC_FL_KEEP_SIZE = 1
_fallocate: Any = None


def _preallocate(fd: int, nbytes: int) -> None:
    """Reserve ``nbytes`` for ``fd`` before writing, as numpy's ``tofile`` does.

    Large sequential writes into reserved blocks are faster on ext4, and a
    full disk fails here before any data is written (``OSError`` ENOSPC).
    Linux ``fallocate(2)`` with ``FALLOC_FL_KEEP_SIZE`` (the size is
    untouched); a no-op where it is unavailable or the file system cannot
    reserve.
    """
    global _fallocate
    if nbytes <= 0:
        return
    if _fallocate is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            _fallocate = fn
        except (OSError, AttributeError):
            _fallocate = False
    if _fallocate and _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, nbytes) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OSError(err, os.strerror(err))


@contextmanager
def pack_writer(
    path: str | os.PathLike, parameter_count: int, *, layout_hash: str, model_schema_hash: str
) -> Iterator[np.ndarray]:
    """Fill a pack's values in memory, then write and publish the pack atomically.

    ``with pack_writer(path, count, layout_hash=..., model_schema_hash=...) as values:``
    gives a writable, zero-filled float32 array of ``count`` values (in
    memory: for packs larger than memory use :func:`pack_stream_writer`); on
    a clean exit they are written with ``write`` calls, the manifest
    is written and the pack renamed into place at ``path``, which must not
    exist.  If the body raises, nothing appears at ``path`` and the exception
    propagates unchanged.  File-system failures (a full disk included)
    raise :class:`PackError` naming ``path``, and leave no staging behind.
    """
    manifest = Manifest(model_schema_hash, layout_hash, int(parameter_count))
    with _staged_pack(path, manifest) as (staging, body_failed):
        values = np.zeros(manifest.parameter_count, dtype=F32)
        try:
            yield values
        except BaseException:
            body_failed[0] = True
            raise
        fd = _open_values_for_writing(staging, manifest.parameter_count)
        try:
            _write_values(fd, values)
        finally:
            os.close(fd)


def write_pack(
    path: str | os.PathLike,
    values: np.ndarray,
    *,
    layout_hash: str,
    model_schema_hash: str,
) -> Path:
    """Write ``values`` (cast to float32) as a new pack at ``path``, atomically.

    Contiguous float32 values are written from their own memory, others
    converted a chunk at a time.  ``path`` must not exist.  Raises
    :class:`PackError` (a full disk included, naming ``path``; no staging is
    left behind).
    """
    flat = np.asarray(values)
    if flat.ndim != 1:
        raise PackError(f"write_pack {os.fspath(path)!r}: values must be 1-D, got {flat.shape}")
    manifest = Manifest(model_schema_hash, layout_hash, int(flat.shape[0]))
    with _staged_pack(path, manifest) as (staging, _):
        fd = _open_values_for_writing(staging, manifest.parameter_count)
        try:
            _write_values(fd, flat)
        finally:
            os.close(fd)
    return Path(path)


class PackReader:
    """A validated pack whose values are read in chunks, never mapped nor read whole.

    ``read_into(start, out)`` fills ``out`` (a contiguous float32 array) with
    the values ``start .. start + out.size`` by one ``pread``: streaming a
    pack through a few chunk buffers keeps the reader's memory at the size of
    those buffers whatever the pack's size.  Use as a context manager, or
    call :meth:`close`.  Raises :class:`PackError` for an invalid pack, a
    range outside it, or a file that shrank.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest, self._fd = _open_values(self.path)

    @property
    def parameter_count(self) -> int:
        return self.manifest.parameter_count

    def read_into(self, start: int, out: np.ndarray) -> None:
        count = out.size
        if start < 0 or start + count > self.manifest.parameter_count:
            raise PackError(
                f"parameter pack {str(self.path)!r}: values {start}..{start + count} are outside "
                f"0..{self.manifest.parameter_count}"
            )
        if out.dtype != F32 or not out.flags.c_contiguous:
            raise PackError(
                "PackReader.read_into: out must be a contiguous little-endian float32 array"
            )
        view = out.data.cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], start * 4 + done)
            if got <= 0:
                raise PackError(
                    f"parameter pack {str(self.path)!r}: {self.manifest.values_f32_le} ended early "
                    "(it changed while it was read)"
                )
            done += got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class PackStreamWriter:
    """The sink :func:`pack_stream_writer` yields: ``write(chunk)`` appends values in order."""

    def __init__(self, fd: int, parameter_count: int, path: str | os.PathLike) -> None:
        self._fd = fd
        self._path = path
        self.parameter_count = parameter_count
        self.written = 0

    def write(self, values: np.ndarray) -> None:
        """Append ``values`` (float32, 1-D); raises :class:`PackError` past ``parameter_count``
        and for a file-system failure (a full disk included), naming the pack."""
        if values.dtype != F32 or values.ndim != 1:
            raise PackError("pack_stream_writer: write() takes 1-D little-endian float32 arrays")
        if self.written + values.size > self.parameter_count:
            raise PackError(
                f"pack_stream_writer: {self.written + values.size} values written, but the pack "
                f"holds {self.parameter_count}"
            )
        try:
            _write_values(self._fd, values)
        except OSError as exc:
            raise _cannot_write(self._path, exc) from None
        self.written += values.size


@contextmanager
def pack_stream_writer(
    path: str | os.PathLike, parameter_count: int, *, layout_hash: str, model_schema_hash: str
) -> Iterator[PackStreamWriter]:
    """Write a pack's values sequentially with ``write()``, then publish it atomically.

    The streaming counterpart of :func:`pack_writer`: each ``write`` goes
    straight to the file, so the writer's memory stays at its chunk size.
    Exactly ``parameter_count`` values must be written.  If the body raises,
    nothing appears at ``path`` (which must not exist) and the exception
    propagates unchanged; a short pack or a file-system failure (a full disk
    included, in ``write()`` too) raises :class:`PackError` naming ``path``,
    and no staging is left behind.
    """
    manifest = Manifest(model_schema_hash, layout_hash, int(parameter_count))
    with _staged_pack(path, manifest) as (staging, body_failed):
        fd = _open_values_for_writing(staging, manifest.parameter_count)
        try:
            writer = PackStreamWriter(fd, manifest.parameter_count, path)
            try:
                yield writer
            except BaseException:
                body_failed[0] = True
                raise
        finally:
            os.close(fd)
        if writer.written != manifest.parameter_count:
            raise PackError(
                f"pack_stream_writer {os.fspath(path)!r}: {writer.written} of "
                f"{manifest.parameter_count} values were written"
            )


def check_compatible(pack: Manifest, base: Manifest, where: str) -> None:
    """Raise :class:`PackError` unless ``pack`` has ``base``'s layout, count and schema."""
    for key in ("layout_hash", "parameter_count", "model_schema_hash"):
        got, want = getattr(pack, key), getattr(base, key)
        if got != want:
            raise PackError(f"{where}: {key} is {str(got)[:80]!r}, but the base pack has {want!r}")


__all__ = [
    "LAYOUT_HASH_PREFIX",
    "MANIFEST_NAME",
    "PACK_FORMAT",
    "VALUES_NAME",
    "Manifest",
    "Pack",
    "PackReader",
    "PackStreamWriter",
    "check_compatible",
    "layout_hash",
    "manifest_bytes",
    "open_pack",
    "pack_stream_writer",
    "pack_writer",
    "parse_manifest",
    "read_manifest",
    "write_pack",
]
