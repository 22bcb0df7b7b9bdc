"""Which batch refs each peer trains on in each round.

Two sources (docs/simulation.md, "Feeding your data"):

- the demo's own shards (:mod:`fakecoord.sim.shards`): every round draws a
  fresh permutation of all microshards from ``(seed, round)`` and deals
  ``inner_steps`` refs of ``microshards_per_step`` microshards to each peer;
- ``--batches FILE|DIR`` (:func:`load_batches`): a fixed list of refs per
  peer; in round ``r`` each peer takes the next ``inner_steps`` refs of its
  own list, wrapping around (round 1 starts at ref 0).

Either way a round's leases depend on ``(seed, round)`` only, so a resumed
run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import schema, spec, wire
from ..errors import DecodeError, SettingsError
from .shards import REF_KIND, DemoDataset, demo_leases

PIPELINE_KINDS = ("sharded-static", "indexed-dataset", "generated-dataset", "custom")
MAX_BATCHES_FILE = 256 * 1024 * 1024


EVAL_SPLIT_NAMES = ("val", "valid", "validation", "test", "eval", "evaluation", "holdout")
"""A file in a ``--batches`` directory whose name starts with one of these (followed by
``.``, ``_`` or ``-``, any case) is an evaluation split, not training data: skipped."""


@dataclass(frozen=True)
class BatchFiles:
    """What a ``--batches`` directory gives: the files taken (sorted by name) and the
    entries skipped, each with the reason."""

    taken: list[Path]
    skipped: list[tuple[str, str]]

    def note(self) -> str:
        """One line saying what was taken and what skipped (and why)."""
        text = f"{len(self.taken)} file(s) taken as training refs"
        if self.skipped:
            by_reason: dict[str, list[str]] = {}
            for name, why in self.skipped:
                by_reason.setdefault(why, []).append(name)
            text += "; skipped: " + "; ".join(
                f"{', '.join(names)} ({why})" for why, names in by_reason.items()
            )
        return text


def select_batch_files(directory: Path) -> BatchFiles:
    """The one rule for a ``--batches`` directory: every regular file directly in it, except
    hidden files (``.*``) and evaluation splits (:data:`EVAL_SPLIT_NAMES`).  Sub-directories
    are not searched.  Nothing is read."""
    taken: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        stem = name.lower().replace("_", ".").replace("-", ".").split(".")[0]
        if name.startswith("."):
            skipped.append((name, "hidden"))
        elif entry.is_dir():
            skipped.append((name + "/", "a sub-directory: not searched"))
        elif not entry.is_file():
            skipped.append((name, "not a regular file"))
        elif stem in EVAL_SPLIT_NAMES:
            skipped.append((name, "an evaluation split by its name"))
        else:
            taken.append(entry)
    return BatchFiles(taken, skipped)


def load_batches(source: str | os.PathLike, peers: int) -> list[list[dict]]:
    """Batch refs per peer from ``--batches``; raises :class:`SettingsError`.

    A JSON file holds either one list of refs per peer (``[[ref, ...], ...]``,
    exactly ``peers`` lists) or a single list of refs dealt round-robin (ref
    ``i`` goes to peer ``i % peers``).  A directory turns each file that
    :func:`select_batch_files` takes (sorted by name) into a one-microshard
    ``cached_microshard_group`` ref naming the file, dealt round-robin the
    same way.  Every ref is checked against the BatchRef shapes of
    docs/protocol.md §2.
    """
    path = Path(source)
    where = f"--batches {str(path)!r}"
    if path.is_dir():
        selection = select_batch_files(path)
        files = selection.taken
        if not files:
            raise SettingsError(f"{where}: no training files in the directory; {selection.note()}")
        refs = [
            {
                "kind": REF_KIND,
                "shard_paths": [str(f.resolve())],
                "microshard_ids": [f.name],
                "ordinals": [i],
                "bytes_len": f.stat().st_size,
            }
            for i, f in enumerate(files)
        ]
        per_peer = [refs[p::peers] for p in range(peers)]
    else:
        try:
            if path.stat().st_size > MAX_BATCHES_FILE:
                raise SettingsError(f"{where}: larger than {MAX_BATCHES_FILE} bytes")
            data = wire.parse_json(path.read_bytes())
        except DecodeError as exc:
            raise SettingsError(f"{where}: not standard JSON: {exc}") from None
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{where}: cannot read a JSON list of batch refs ({exc})") from None
        if not isinstance(data, list) or not data:
            raise SettingsError(f"{where}: expected a non-empty JSON list of batch refs")
        if all(isinstance(item, list) for item in data):
            if len(data) != peers:
                raise SettingsError(
                    f"{where}: holds {len(data)} per-peer lists for {peers} peers "
                    "(give one list per peer, or one flat list to deal round-robin)"
                )
            per_peer = data
        elif any(isinstance(item, list) for item in data):
            raise SettingsError(
                f"{where}: mixes lists and refs; give a list of per-peer lists or a flat list of refs"
            )
        else:
            per_peer = [data[p::peers] for p in range(peers)]
    for p, refs in enumerate(per_peer):
        if not refs:
            raise SettingsError(
                f"{where}: peer {p} gets no batch refs ({sum(map(len, per_peer))} refs for "
                f"{peers} peers)"
            )
        for i, ref in enumerate(refs):
            problem = ref_problem(ref)
            if problem:
                raise SettingsError(f"{where}: peer {p} ref {i}: {problem}")
    return per_peer


def ref_problem(ref: Any) -> str | None:
    """Why ``ref`` is not a BatchRef the real coordinator could send, or None.

    Beyond the shapes below, the ref must decode as the coordinator's ``PythonBatchRef``
    (:data:`fakecoord.spec.BATCH_REF`, read as serde_json reads it): no NaN or Infinity in a
    payload, no lone surrogate in any string (a file name that is not UTF-8), ``bytes_len``
    within u64."""
    if not isinstance(ref, dict):
        return f"expected a BatchRef object, got {type(ref).__name__}"
    kind = ref.get("kind")
    lists: tuple[str, ...] = ("microshard_ids", "ordinals")
    if kind == REF_KIND:
        lists = ("shard_paths", *lists)
    elif kind == "micro_epoch":
        if not isinstance(ref.get("lease_id"), str):
            return "micro_epoch needs a string lease_id"
        if ref.get("pipeline_kind") not in PIPELINE_KINDS:
            return f"micro_epoch pipeline_kind must be one of {', '.join(PIPELINE_KINDS)}"
    else:
        return f"kind must be {REF_KIND!r} or 'micro_epoch', got {kind!r}"
    for key in lists:
        value = ref.get(key)
        if not isinstance(value, list):
            return f"{kind} needs a list {key}"
        if key == "ordinals":
            if not all(type(v) is int and 0 <= v < 2**32 for v in value):
                return "ordinals must be integers in 0..2^32-1"
        elif not all(isinstance(v, str) for v in value):
            return f"{key} must hold strings"
    if type(ref.get("bytes_len")) is not int or ref["bytes_len"] < 0:
        return "bytes_len must be a non-negative integer"
    try:
        schema.decode(spec.BATCH_REF, ref)
        wire.encode_body(ref)
    except (DecodeError, ValueError, TypeError, RecursionError) as exc:
        return f"the coordinator could never send it: {exc}"
    return None


class Leases:
    """Each peer's refs for round ``r``: :meth:`for_round`."""

    def __init__(
        self,
        *,
        peers: int,
        steps: int,
        seed: int,
        dataset: DemoDataset | None = None,
        per_peer: list[list[dict]] | None = None,
        microshards_per_step: int = 2,
    ) -> None:
        if (dataset is None) == (per_peer is None):
            raise ValueError("Leases: give either a demo dataset or per-peer refs")
        self.peers, self.steps, self.seed = peers, steps, seed
        self.dataset, self.per_peer = dataset, per_peer
        self.microshards_per_step = microshards_per_step

    def for_round(self, r: int) -> list[list[dict]]:
        if self.per_peer is not None:
            return [
                [refs[((r - 1) * self.steps + i) % len(refs)] for i in range(self.steps)]
                for refs in self.per_peer
            ]
        assert self.dataset is not None
        return demo_leases(
            self.dataset, self.seed, r, self.peers, self.steps, self.microshards_per_step
        )


def interleave(leases: list[list[dict]]) -> list[dict]:
    """All peers' refs step by step: peer 0 step 0, peer 1 step 0, ..., peer 0 step 1, ..."""
    longest = max((len(lease) for lease in leases), default=0)
    return [lease[i] for i in range(longest) for lease in leases if i < len(lease)]


__all__ = ["Leases", "PIPELINE_KINDS", "interleave", "load_batches", "ref_problem"]
