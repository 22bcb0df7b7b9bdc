"""Parameter packs on disk (docs/protocol.md §3): atomic export, validated import.

Publication protocol (SECURITY.md, "Packs are never torn"): a reader must
never pair one export's manifest with another export's values.

- A new pack directory is built under a staging name and renamed into place
  whole: ``manifest.json`` and ``values.f32le``, as the reference writes them.
- Re-exporting into an existing pack directory never writes into a file a
  manifest names.  The values go to a fresh file whose name is unique to the
  export, ``values-<pid>-<16 hex>.f32le``; then a new ``manifest.json`` naming
  it replaces the old one by rename; only then is the values file the old
  manifest named removed.  (Staging and renames go through :mod:`worker.files`.)
- A reader opens the directory once, reads the manifest and opens the values
  file it names relative to that directory.  Since a values name is never
  reused and a named file is never written after its manifest appears, the
  file is either the one published with that manifest or gone; gone means a
  newer export replaced the manifest, and the reader starts over (at most
  :data:`OPEN_ATTEMPTS` times).

Import validates everything before it touches a tensor: the manifest (size,
item count, JSON, format, fields; :mod:`worker.bounded_json`), that
``values_f32_le`` is a relative path to a regular file inside the pack (every
component opened with ``O_NOFOLLOW``, so links are refused, and
``O_NONBLOCK``, so a FIFO cannot hang the worker), its exact byte length, the
parameter count and the layout hash.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import bounded_json, files
from .errors import PackError, describe
from .layout import Layout, compute_layout, state_modules
from .protocol import NO_FILTER, StateFilter
from .tensor_io import preallocate, read_f32_into_tensor, write_tensor_as_f32

PACK_FORMAT = "burn-p2p-python-flattened-parameter-pack-v1"
MANIFEST_NAME = "manifest.json"
VALUES_NAME = "values.f32le"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""The manifest of a 10^5-key model listing every key once in the optional key
lists, names of 100 characters, pretty-printed as the reference writes it,
takes 10.8 MB (``tests/test_packs_hardening.py::test_the_manifest_limits_fit_a_10_5_key_model``)."""
MAX_MANIFEST_ITEMS = 1 << 17
"""JSON values a manifest may hold: that 10^5-key manifest holds 100,020."""
MAX_PARAMETER_COUNT = 1 << 40  # 4 TiB of float32: far beyond any model, far below overflow
OPEN_ATTEMPTS = 8
"""Times a reader starts over when a newer export replaced the manifest it read."""
_OUR_VALUES = re.compile(r"values(-[0-9]+-[0-9a-f]{16})?\.f32le")


# ---------------------------------------------------------------------------
# Export


def manifest_bytes(
    layout: Layout,
    model_schema_hash: str,
    state_filter: StateFilter = NO_FILTER,
    values_name: str = VALUES_NAME,
) -> bytes:
    """The manifest as the reference worker writes it (same keys, order, indent)."""
    manifest: dict[str, Any] = {
        "format": PACK_FORMAT,
        "model_schema_hash": str(model_schema_hash),
        "layout_hash": layout.hash,
        "parameter_count": layout.parameter_count,
        "values_f32_le": values_name,
    }
    if not state_filter.is_trivial:
        manifest["state_dict_filter"] = state_filter.to_json()
    return json.dumps(manifest, indent=2).encode("utf-8")


def export_pack(
    state: Any,
    path: str | os.PathLike[str],
    model_schema_hash: str,
    state_filter: StateFilter = NO_FILTER,
) -> Layout:
    """Export ``state``'s generic layout as a pack at ``path``.

    Raises :class:`~worker.errors.LayoutError` for unsupported states and
    :class:`PackError` when the pack cannot be written; in both cases no new
    manifest appears at ``path``.
    """
    layout = compute_layout(state, state_filter)
    write_pack(
        Path(path), layout, lambda values_name: manifest_bytes(
            layout, model_schema_hash, state_filter, values_name
        ),
    )  # fmt: skip
    return layout


ManifestFor = Callable[[str], bytes]
"""The manifest bytes of a pack whose values file has the given name."""


def write_pack(target: Path, layout: Layout, manifest: ManifestFor) -> None:
    """Write ``layout``'s values and ``manifest`` as a pack at ``target``, atomically.

    Raises :class:`PackError` (the target keeps its old manifest, or none).
    """
    try:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise PackError(f"pack path {str(target)!r} exists and is not a directory")
        if target.exists():
            _write_in_place(target, layout, manifest)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_fresh(target, layout, manifest)
    except PackError:
        raise
    except OSError as exc:
        raise PackError(
            f"cannot write parameter pack at {str(target)!r}: {os_reason(exc)}"
        ) from exc


def _write_fresh(target: Path, layout: Layout, manifest: ManifestFor) -> None:
    with files.staged_directory(target) as staging:
        with files.create_exclusive(staging.path / VALUES_NAME) as values:
            _write_values(values, layout)
        with files.create_exclusive(staging.path / MANIFEST_NAME) as new_manifest:
            files.write_all(new_manifest, manifest(VALUES_NAME))
        if not staging.publish():
            # Someone created the target meanwhile: fall back to the in-place protocol.
            _write_in_place(target, layout, manifest)


def _write_in_place(target: Path, layout: Layout, manifest: ManifestFor) -> None:
    """Re-export into an existing pack directory (the module docstring's protocol)."""
    files.remove_stale_staging(target)
    _remove_dead_orphans(target)
    superseded = _superseded_values(target)
    values_name = f"values-{os.getpid()}-{os.urandom(8).hex()}.f32le"
    values_path = target / values_name
    with (
        files.staged_file(values_path) as values,
        files.staged_file(target / MANIFEST_NAME) as new_manifest,
    ):
        _write_values(values.file, layout)
        files.write_all(new_manifest.file, manifest(values_name))
        # Settled in the body and again in the finally: a stop can cut one short,
        # never both (it raises once outside hooks: worker.stopping).
        try:
            values.publish()
            new_manifest.publish()
            _settle(target, values_name, new_manifest.published, superseded)
        finally:
            _settle(target, values_name, new_manifest.published, superseded)


def _settle(target: Path, values_name: str, published: bool, superseded: str | None) -> None:
    """After a re-export: remove the superseded values once the new manifest is
    published, else the new values (no manifest names them).  Idempotent."""
    if not published:
        _unlink_quietly(target / values_name)
    elif superseded is not None and superseded != values_name:
        _unlink_quietly(target / superseded)


def _values_named_by(target: Path) -> str:
    """The values file the current manifest names; raises ``OSError`` or
    :class:`PackError` when there is no readable manifest."""
    return _read_manifest_at(target).values_f32_le


def _superseded_values(target: Path) -> str | None:
    """The values file the current manifest names if this module wrote it
    (``values.f32le`` or ``values-<pid>-<hex>.f32le``), else None."""
    try:
        name = _values_named_by(target)
    except (OSError, PackError):
        return None
    return name if _OUR_VALUES.fullmatch(name) else None


def _remove_dead_orphans(target: Path) -> None:
    """Remove values files of exports whose process died between publishing its
    values and its manifest, or before removing the values it superseded, and a
    superseded ``values.f32le`` (never the current manifest's, never a live
    process's; nothing without a readable manifest)."""
    try:
        current = _values_named_by(target)
        names = os.listdir(target)
    except (OSError, PackError):
        return
    for name in names:
        match = _OUR_VALUES.fullmatch(name)
        if match is None or name == current:
            continue
        # values.f32le is only ever written inside a fresh export's staging directory.
        if match[1] is None or not files.process_alive(int(name.split("-")[1])):
            _unlink_quietly(target / name)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_values(raw: BinaryIO, layout: Layout) -> None:
    preallocate(raw.fileno(), layout.parameter_count * 4)
    for tensor in layout.tensors:
        write_tensor_as_f32(raw, tensor)


def os_reason(exc: OSError) -> str:
    """What went wrong, for a message (with a hint for a full disk)."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device (free some disk space or choose another directory)"
    return exc.strerror or str(exc)


# ---------------------------------------------------------------------------
# Import


@dataclass
class PackManifest:
    model_schema_hash: str
    layout_hash: str
    parameter_count: int
    values_f32_le: str
    raw: dict[str, Any]


def parse_manifest(data: bytes, where: str = "manifest.json") -> PackManifest:
    """Validate manifest bytes; raises :class:`PackError` naming the bad field.

    Refused before parsing when over :data:`MAX_MANIFEST_BYTES` or
    :data:`MAX_MANIFEST_ITEMS` (see :mod:`worker.bounded_json`).
    """
    try:
        raw = bounded_json.loads(data, max_bytes=MAX_MANIFEST_BYTES, max_items=MAX_MANIFEST_ITEMS)
    except bounded_json.JSONRefused as exc:
        raise PackError(f"{where} {exc}") from None
    if not isinstance(raw, dict):
        raise PackError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format") != PACK_FORMAT:
        raise PackError(
            f"{where}: unsupported format {describe(raw.get('format'))}; expected {PACK_FORMAT!r}"
        )
    for key in ("model_schema_hash", "layout_hash", "values_f32_le"):
        if not isinstance(raw.get(key), str):
            raise PackError(
                f"{where}: field {key!r} must be a string, got {describe(raw.get(key))}"
            )
    count = raw.get("parameter_count")
    if type(count) is not int or not 0 <= count <= MAX_PARAMETER_COUNT:
        raise PackError(
            f"{where}: parameter_count must be an integer in 0..={MAX_PARAMETER_COUNT}, got {describe(count)}"
        )
    return PackManifest(
        raw["model_schema_hash"], raw["layout_hash"], count, raw["values_f32_le"], raw
    )


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _open_regular(
    dir_fd: int, relative: str, what: str, *, missing_ok: bool = False
) -> tuple[int, os.stat_result] | None:
    """Open ``relative`` under ``dir_fd`` refusing links, FIFOs, devices and escapes;
    with ``missing_ok``, None when it does not exist."""
    shown = describe(relative, typed=False)
    if not relative or relative.startswith("/") or "\x00" in relative:
        raise PackError(f"{what}: {shown} must be a relative path inside the pack directory")
    try:
        os.fsencode(relative)
    except UnicodeEncodeError:
        raise PackError(f"{what}: {shown} is not a name the filesystem can represent") from None
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PackError(f"{what}: {shown} must not contain '..', '.' or empty components")
    fds = []
    try:
        current = dir_fd
        for part in parts[:-1]:
            current = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
            )
            fds.append(current)
        try:
            fd = os.open(parts[-1], _OPEN_FLAGS, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PackError(
                    f"{what}: {shown} is a symbolic link; packs must hold plain files"
                ) from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise PackError(
                f"{what}: {shown} is not a regular file (mode {stat.filemode(info.st_mode)})"
            )
        os.set_blocking(fd, True)
        return fd, info
    except PackError:
        raise
    except OSError as exc:
        if missing_ok and exc.errno == errno.ENOENT:
            return None
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PackError(f"{what}: {shown} goes through a link or a non-directory") from None
        raise PackError(f"{what}: cannot open {shown}: {exc.strerror or exc}") from None
    finally:
        for extra in fds:
            os.close(extra)


@contextmanager
def _manifest_held(dir_fd: int, where: str) -> Iterator[tuple[PackManifest, os.stat_result]]:
    """Read and validate the manifest of the pack directory ``dir_fd``, keeping
    it open for the block (so its inode cannot be reused meanwhile, and
    :func:`_manifest_replaced` can trust the comparison); a file over
    :data:`MAX_MANIFEST_BYTES` is refused unread.  Raises :class:`PackError`."""
    opened = _open_regular(dir_fd, MANIFEST_NAME, where)
    assert opened is not None
    fd, info = opened
    with open(fd, "rb") as f:
        if info.st_size > MAX_MANIFEST_BYTES:
            raise PackError(
                f"{MANIFEST_NAME}: {info.st_size} bytes exceeds the limit of {MAX_MANIFEST_BYTES}"
            )
        data = f.read(info.st_size + 1)  # (a file grown since fstat is still refused below)
        yield parse_manifest(data, f"{where}: {MANIFEST_NAME}"), info


def _read_manifest(dir_fd: int, where: str) -> PackManifest:
    with _manifest_held(dir_fd, where) as (manifest, _):
        return manifest


def _open_directory(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PackError(
            f"parameter pack {str(path)!r}: cannot open directory: {exc.strerror or exc}"
        ) from None


def _read_manifest_at(path: Path) -> PackManifest:
    dir_fd = _open_directory(path)
    try:
        return _read_manifest(dir_fd, f"parameter pack {str(path)!r}")
    finally:
        os.close(dir_fd)


def _manifest_replaced(dir_fd: int, read: os.stat_result) -> bool:
    """True when ``manifest.json`` is no longer the file that was read (which the
    caller still holds open, so its inode number is not reused)."""
    try:
        now = os.stat(MANIFEST_NAME, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (read.st_dev, read.st_ino)


class OpenPack:
    """A validated pack: its manifest and an open values file of the right length,
    both from one export (see the module docstring).

    Use as a context manager; raises :class:`PackError` on any invalid input.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        where = f"parameter pack {str(self.path)!r}"
        dir_fd = _open_directory(self.path)
        try:
            for _ in range(OPEN_ATTEMPTS):
                with _manifest_held(dir_fd, where) as (self.manifest, manifest_info):
                    values = self.manifest.values_f32_le
                    what = f"{MANIFEST_NAME}: values_f32_le"
                    opened = _open_regular(dir_fd, values, what, missing_ok=True)
                    if opened is not None:
                        break
                    if not _manifest_replaced(dir_fd, manifest_info):
                        raise PackError(
                            f"{what}: cannot open {describe(values, typed=False)}: "
                            "No such file or directory"
                        )
            else:
                raise PackError(
                    f"{where}: re-exported {OPEN_ATTEMPTS} times while being opened; retry later"
                )
            fd, info = opened
            expected = self.manifest.parameter_count * 4
            if info.st_size != expected:
                os.close(fd)
                raise PackError(
                    f"{self.path}: {describe(self.manifest.values_f32_le, typed=False)} holds "
                    f"{info.st_size} bytes, but parameter_count "
                    f"{self.manifest.parameter_count} needs exactly {expected}"
                )
            self.values = open(fd, "rb", buffering=0)
        finally:
            os.close(dir_fd)

    def __enter__(self) -> OpenPack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.values.close()

    def check_layout(self, layout: Layout) -> None:
        if self.manifest.layout_hash != layout.hash:
            raise PackError(
                f"parameter pack layout {describe(self.manifest.layout_hash, typed=False)} does "
                f"not match the model's layout {layout.hash!r} (the pack was exported from a "
                "different architecture, dtype or filter)"
            )
        if self.manifest.parameter_count != layout.parameter_count:
            raise PackError(
                f"parameter pack holds {self.manifest.parameter_count} values but its layout needs "
                f"{layout.parameter_count}"
            )
        for entry, tensor in zip(layout.entries, layout.tensors, strict=True):
            if _self_overlapping(tensor):
                raise PackError(
                    f"tensor {entry['name']!r} has elements that share memory (e.g. an expand()ed "
                    "buffer), so it cannot be loaded from a pack; make it a real tensor (.clone())"
                )

    def read_into(self, layout: Layout) -> None:
        """Fill ``layout``'s tensors from the values file (after :meth:`check_layout`)."""
        try:
            for tensor in layout.tensors:
                read_f32_into_tensor(self.values, tensor)
        except (OSError, EOFError, RuntimeError) as exc:
            raise PackError(
                f"parameter pack {str(self.path)!r}: reading values failed: {exc}"
            ) from None


def _self_overlapping(tensor: Any) -> bool:
    """True when two elements of ``tensor`` alias one memory location (a 0 stride)."""
    return any(
        size > 1 and stride == 0 for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )


def import_pack(
    path: str | os.PathLike[str],
    make_state: Callable[[], Any],
    state_filter: StateFilter = NO_FILTER,
) -> Any:
    """Validate the pack at ``path``, then build a state with ``make_state()``
    (e.g. the workload's ``init_model``) and load the pack into it.

    The pack is checked before ``make_state`` runs, so a bad pack costs no
    model construction.  Raises :class:`PackError` or ``LayoutError``.
    """
    with OpenPack(path) as pack:
        state = make_state()
        layout = compute_layout(state, state_filter)
        pack.check_layout(layout)
        pack.read_into(layout)
    sync_state_dicts(state, layout)
    return state


def sync_state_dicts(state: Any, layout: Layout) -> None:
    """Push values back through ``load_state_dict`` for modules whose
    ``state_dict()`` tensors do not alias their parameters (custom hooks)."""
    for (_, module), (_, state_dict) in zip(state_modules(state), layout.state_dicts, strict=True):
        own = {p.data_ptr() for p in module.parameters()} | {b.data_ptr() for b in module.buffers()}
        if any(
            t.numel() and t.data_ptr() not in own
            for t in state_dict.values()
            if hasattr(t, "data_ptr")
        ):
            module.load_state_dict(state_dict)
