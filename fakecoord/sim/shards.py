"""The demo's shard files and the ``cached_microshard_group`` batch refs that name them.

A *shard* is two files side by side: ``NAME.f32`` holds ``rows`` rows of
``features + targets`` little-endian float32 values, and ``NAME.json`` is
its header::

    {"format": "fakecoord-demo-shard-v1", "rows": 512, "features": 16,
     "targets": 1, "microshard_rows": 32, "values": "NAME.f32"}

A *microshard* is a run of ``microshard_rows`` consecutive rows; its ordinal
is its index inside the shard.  A batch ref groups microshards, possibly from
several shards; entry ``i`` of ``shard_paths``, ``microshard_ids`` and
``ordinals`` describes one microshard, and ``bytes_len`` is their total size::

    {"kind": "cached_microshard_group", "shard_paths": ["/d/train-0003.f32"],
     "microshard_ids": ["train-0003:7"], "ordinals": [7], "bytes_len": 2176}

Reading needs only the standard library (the demo workload imports this
module inside the worker); :func:`write_demo_dataset` imports numpy when called.  Invalid files
or refs raise :class:`ShardError`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import write_bytes

SHARD_FORMAT = "fakecoord-demo-shard-v1"
REF_KIND = "cached_microshard_group"
FAULT_KEY = "fault_inject"
"""A batch ref carrying ``"fault_inject": "error"`` makes the demo workload fail on it."""
MAX_HEADER_BYTES = 1 << 20


class ShardError(ValueError):
    """A shard file, header or batch ref is malformed or does not match its data.

    A ``ValueError`` (not a fakecoord error) because it is raised inside the
    worker, where the workload's exceptions are reported verbatim.
    """


@dataclass(frozen=True)
class ShardHeader:
    path: Path
    rows: int
    features: int
    targets: int
    microshard_rows: int

    @property
    def width(self) -> int:
        return self.features + self.targets

    @property
    def microshards(self) -> int:
        return self.rows // self.microshard_rows


def header_path(values_path: str | os.PathLike) -> Path:
    return Path(values_path).with_suffix(".json")


def read_header(values_path: str | os.PathLike) -> ShardHeader:
    """Read and validate the header next to ``values_path``; raises :class:`ShardError`."""
    path = header_path(values_path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise ShardError(f"shard header {str(path)!r}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_HEADER_BYTES:
        raise ShardError(f"shard header {str(path)!r}: larger than {MAX_HEADER_BYTES} bytes")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ShardError(f"shard header {str(path)!r}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != SHARD_FORMAT:
        raise ShardError(f"shard header {str(path)!r}: expected format {SHARD_FORMAT!r}")
    fields = {}
    for key in ("rows", "features", "targets", "microshard_rows"):
        value = raw.get(key)
        if type(value) is not int or value <= 0:
            raise ShardError(
                f"shard header {str(path)!r}: {key} must be a positive integer, got {value!r}"
            )
        fields[key] = value
    if raw.get("values") != Path(values_path).name:
        raise ShardError(
            f"shard header {str(path)!r}: names values file {raw.get('values')!r}, "
            f"but the shard is {Path(values_path).name!r}"
        )
    header = ShardHeader(Path(values_path), **fields)
    try:
        size = os.stat(values_path).st_size
    except OSError as exc:
        raise ShardError(f"shard {str(values_path)!r}: cannot stat ({exc.strerror})") from None
    if size != header.rows * header.width * 4:
        raise ShardError(
            f"shard {str(values_path)!r}: holds {size} bytes, but its header describes "
            f"{header.rows} rows of {header.width} float32 values ({header.rows * header.width * 4} bytes)"
        )
    return header


def read_rows(header: ShardHeader, first_row: int, count: int) -> bytearray:
    """``count`` rows starting at ``first_row`` as raw little-endian float32 bytes."""
    if first_row < 0 or count < 0 or first_row + count > header.rows:
        raise ShardError(
            f"shard {str(header.path)!r}: rows {first_row}..{first_row + count} are outside 0..{header.rows}"
        )
    size = count * header.width * 4
    buf = bytearray(size)
    with open(header.path, "rb", buffering=0) as f:
        f.seek(first_row * header.width * 4)
        view = memoryview(buf)
        filled = 0
        while filled < size:
            got = f.readinto(view[filled:])
            if not got:
                raise ShardError(f"shard {str(header.path)!r}: ended early")
            filled += got
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        import array

        swapped = array.array("f", bytes(buf))
        swapped.byteswap()
        buf = bytearray(swapped.tobytes())
    return buf


def read_ref(ref: Any, headers: dict[str, ShardHeader] | None = None) -> tuple[bytearray, int]:
    """The rows a ``cached_microshard_group`` ref names, as ``(float32 bytes, width)``.

    ``headers`` caches parsed headers by path.  Raises :class:`ShardError`
    when the ref is malformed, names a missing microshard, or its
    ``bytes_len`` disagrees with the files.
    """
    if not isinstance(ref, dict) or ref.get("kind") != REF_KIND:
        raise ShardError(f"batch ref: expected kind {REF_KIND!r}, got {_short(ref)}")
    paths, ordinals, ids = ref.get("shard_paths"), ref.get("ordinals"), ref.get("microshard_ids")
    if not (isinstance(paths, list) and isinstance(ordinals, list) and isinstance(ids, list)):
        raise ShardError(
            f"batch ref: shard_paths, microshard_ids and ordinals must be lists, got {_short(ref)}"
        )
    if not paths or not (len(paths) == len(ordinals) == len(ids)):
        raise ShardError(
            "batch ref: shard_paths, microshard_ids and ordinals must be non-empty and equally long "
            f"(one entry per microshard), got {len(paths)}, {len(ids)}, {len(ordinals)}"
        )
    headers = {} if headers is None else headers
    chunks = bytearray()
    width = None
    for path, ordinal in zip(paths, ordinals, strict=True):
        if not isinstance(path, str) or type(ordinal) is not int:
            raise ShardError(f"batch ref: bad entry ({path!r}, {ordinal!r})")
        header = headers.get(path)
        if header is None:
            header = headers[path] = read_header(path)
        if width is not None and header.width != width:
            raise ShardError(f"batch ref: shard {path!r} has {header.width} columns, not {width}")
        width = header.width
        if not 0 <= ordinal < header.microshards:
            raise ShardError(
                f"batch ref: ordinal {ordinal} is outside shard {path!r} (0..{header.microshards})"
            )
        chunks += read_rows(header, ordinal * header.microshard_rows, header.microshard_rows)
    if ref.get("bytes_len") != len(chunks):
        raise ShardError(
            f"batch ref: bytes_len is {ref.get('bytes_len')!r} but its microshards hold {len(chunks)} bytes"
        )
    assert width is not None
    return chunks, width


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Coordinator side: writing the demo data set and leasing microshards


@dataclass(frozen=True)
class DemoDataset:
    """Where the demo data lives: the train shards and the eval split names."""

    root: Path
    train_shards: tuple[Path, ...]
    microshards_per_shard: int
    microshard_rows: int
    width: int

    def microshard_count(self) -> int:
        return len(self.train_shards) * self.microshards_per_shard

    def ref(self, microshards: Sequence[int]) -> dict:
        """A batch ref over global microshard indices (shard-major order)."""
        paths, ids, ordinals = [], [], []
        for index in microshards:
            shard, ordinal = divmod(int(index), self.microshards_per_shard)
            path = self.train_shards[shard]
            paths.append(str(path))
            ids.append(f"{path.stem}:{ordinal}")
            ordinals.append(ordinal)
        return {
            "kind": REF_KIND,
            "shard_paths": paths,
            "microshard_ids": ids,
            "ordinals": ordinals,
            "bytes_len": len(ordinals) * self.microshard_rows * self.width * 4,
        }


DEMO_FEATURES = 16
DEMO_TEACHER_HIDDEN = 32
EVAL_SPLITS = {"validation": 1024, "test": 1024}


def write_demo_dataset(
    root: str | os.PathLike,
    seed: int,
    train_shards: int = 16,
    microshards_per_shard: int = 16,
    microshard_rows: int = 32,
) -> DemoDataset:
    """Write the demo's deterministic synthetic regression data under ``root``.

    Targets come from a fixed random two-layer tanh "teacher" network of the
    inputs plus a little noise, scaled to unit variance; the same ``seed``
    gives byte-identical files.  Files that already exist with the right
    header are reused (so a resumed run does not rewrite them).
    """
    import numpy as np

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xDA7A])
    w1 = rng.normal(0.0, 1.0 / np.sqrt(DEMO_FEATURES), (DEMO_FEATURES, DEMO_TEACHER_HIDDEN))
    b1 = rng.normal(0.0, 0.5, DEMO_TEACHER_HIDDEN)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(DEMO_TEACHER_HIDDEN), (DEMO_TEACHER_HIDDEN, 1))

    def teacher(x: Any) -> Any:
        return np.tanh(x @ w1 + b1) @ w2

    probe = teacher(rng.normal(size=(4096, DEMO_FEATURES)))
    shift, scale = float(probe.mean()), float(probe.std()) or 1.0

    def make_rows(count: int, stream: int) -> bytes:
        local = np.random.default_rng([seed, 0xDA7A, stream])
        x = local.normal(size=(count, DEMO_FEATURES))
        y = (teacher(x) - shift) / scale + local.normal(0.0, 0.05, (count, 1))
        return np.concatenate([x, y], axis=1).astype("<f4").tobytes()

    def write_shard(name: str, rows: int, stream: int, ms_rows: int) -> Path:
        values = root / f"{name}.f32"
        header = {
            "format": SHARD_FORMAT,
            "rows": rows,
            "features": DEMO_FEATURES,
            "targets": 1,
            "microshard_rows": ms_rows,
            "values": values.name,
        }
        encoded = json.dumps(header, indent=2).encode("utf-8")
        header_file = header_path(values)
        if (
            header_file.exists()
            and header_file.read_bytes() == encoded
            and values.exists()
            and values.stat().st_size == rows * (DEMO_FEATURES + 1) * 4
        ):
            return values
        write_bytes(values, make_rows(rows, stream))
        write_bytes(header_file, encoded)  # last: a header means complete values
        return values

    rows = microshards_per_shard * microshard_rows
    shards = tuple(
        write_shard(f"train-{i:04d}", rows, i, microshard_rows) for i in range(train_shards)
    )
    for offset, (name, count) in enumerate(EVAL_SPLITS.items(), start=1):
        write_shard(name, count, 1_000_000 + offset, count)
    return DemoDataset(root, shards, microshards_per_shard, microshard_rows, DEMO_FEATURES + 1)


def demo_leases(
    dataset: DemoDataset, seed: int, round_index: int, peers: int, steps: int, per_step: int
) -> list[list[dict]]:
    """Each peer's refs for one round: ``steps`` refs of ``per_step`` microshards.

    A counter-based draw: a permutation of all microshards seeded by
    ``(seed, round_index)``, dealt out in order (wrapping around when a round
    needs more microshards than exist), so any round's leases can be
    recomputed without replaying earlier rounds.
    """
    import numpy as np

    needed = peers * steps * per_step
    total = dataset.microshard_count()
    order: list[int] = []
    epoch = 0
    while len(order) < needed:
        rng = np.random.default_rng([seed, 0x1EA5E, round_index, epoch])
        order.extend(int(i) for i in rng.permutation(total))
        epoch += 1
    leases = []
    for peer in range(peers):
        start = peer * steps * per_step
        leases.append(
            [
                dataset.ref(order[start + s * per_step : start + (s + 1) * per_step])
                for s in range(steps)
            ]
        )
    return leases


__all__ = [
    "FAULT_KEY",
    "REF_KIND",
    "SHARD_FORMAT",
    "DemoDataset",
    "ShardError",
    "ShardHeader",
    "demo_leases",
    "read_header",
    "read_ref",
    "write_demo_dataset",
]
