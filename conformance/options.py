"""How to start and exercise the workload under test, and the requests the suite makes up.

:class:`Options` is what the CLI, the pytest plugin and the helper build;
:func:`generated_batches` and :func:`candidate` are the BatchRefs and merge
candidates the checks send when the user gave none; :func:`load_batches`
reads a ``--batches`` file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakecoord import wire
from fakecoord.errors import DecodeError

from .errors import UsageError

GENERATOR = "burn-p2p-conformance"
"""``payload["generator"]`` of the micro_epoch refs the suite generates."""
DEFAULT_SCHEMA_HASH = "burn-p2p-conformance-schema"
UNKNOWN_MODEL = "conformance-unknown-model"


def generated_batches(count: int, seed: int = 0) -> list[dict]:
    """``count`` micro_epoch BatchRefs whose payload describes generated data.

    A workload that can train on them builds its own batch from
    ``payload["seed"]`` and ``payload["examples"]`` (see docs/workload-authors.md).
    """
    return [
        {
            "kind": "micro_epoch",
            "lease_id": f"conformance-lease-{seed + i}",
            "microshard_ids": [f"conformance-microshard-{seed + i}"],
            "ordinals": [i],
            "bytes_len": 0,
            "pipeline_kind": "generated-dataset",
            "payload": {"generator": GENERATOR, "seed": seed + i, "examples": 16},
        }
        for i in range(count)
    ]


def load_batches(path: str | os.PathLike) -> list:
    """A ``--batches`` file: a JSON array of BatchRef objects (or ``{"batches": [...]}``).

    Read as standard JSON (fakecoord.wire): refs the coordinator could not
    send are refused here.  Raises :class:`UsageError` naming the file.
    """
    try:
        value = wire.decode_value(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"--batches {str(path)!r}: cannot read ({exc.strerror})") from None
    except DecodeError as exc:
        raise UsageError(f"--batches {str(path)!r}: not JSON ({exc})") from None
    if isinstance(value, dict) and "batches" in value:
        value = value["batches"]
    if not isinstance(value, list) or not value:
        raise UsageError(f"--batches {str(path)!r}: expected a non-empty JSON array of BatchRefs")
    return value


@dataclass
class Options:
    """How to start and exercise the workload under test.

    ``batches`` is a list of BatchRefs or the path of a ``--batches`` file.
    ``call_timeout`` (``--timeout``) bounds every wait of a check: each hook
    call, a worker's start, the layout probe.  ``probe_cmd`` replaces
    ``python -m conformance.probe`` (the suite's own tests fork it).
    Raises :class:`~conformance.errors.UsageError` for a malformed value.
    """

    factory: str
    config: Any = None
    device: str | None = None
    """``--device``: overrides the workload's own ``runtime_device`` (which the network
    sends, and the suite sends by default) in init_model, import and plan calls."""
    batches: list | str | os.PathLike | None = None
    worker_cmd: Sequence[str] | None = None
    pythonpath: Sequence[str] = ()
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    max_examples: int = 10
    call_timeout: float = 120.0
    accept_timeout: float | None = None
    """Seconds a worker gets to connect (default: ``call_timeout``)."""
    exit_timeout: float = 10.0
    """Seconds a worker gets to answer a refusal, or to exit after EOF or ``shutdown``."""
    probe_cmd: Sequence[str] | None = None
    model_schema_hash: str = DEFAULT_SCHEMA_HASH
    custom_split: str = "conformance-holdout"
    """The name sent as ``{"Custom": name}`` to evaluate."""
    interface: str = "cli"
    """Who runs the suite: ``"cli"`` or ``"pytest"``; hints name options in its terms."""

    def __post_init__(self) -> None:
        module, colon, attr = self.factory.partition(":")
        if not colon or not module.strip() or not attr.strip():
            raise UsageError(
                f"factory must be MODULE:ATTR with both parts non-empty "
                f"(e.g. my_pkg.train:make_workload), got {self.factory!r}"
            )
        if self.config is None:
            self.config = {}
        if type(self.max_examples) is not int or self.max_examples < 1:
            raise UsageError(f"max_examples must be a positive integer, got {self.max_examples!r}")
        if self.accept_timeout is None:
            self.accept_timeout = self.call_timeout
        for name in ("call_timeout", "accept_timeout", "exit_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.batches, (str, os.PathLike)):
            self.batches = load_batches(self.batches)
        if self.batches is not None:
            if not isinstance(self.batches, list) or not self.batches:
                raise UsageError("batches must be a non-empty JSON array of BatchRef objects")
            for i, ref in enumerate(self.batches):
                if not isinstance(ref, dict) or not isinstance(ref.get("kind"), str):
                    raise UsageError(
                        f'batches[{i}] must be a BatchRef object with a string "kind", got {ref!r}'
                    )
        for name in ("worker_cmd", "probe_cmd"):
            command = getattr(self, name)
            if command is not None:
                if isinstance(command, str):
                    raise UsageError(
                        f"{name} must be a list of arguments, not the string {command!r}"
                    )
                setattr(self, name, tuple(command))
                if not command:
                    raise UsageError(f"{name} must name a program")
        self.pythonpath = tuple(os.fspath(p) for p in self.pythonpath)

    def flag(self, name: str) -> str:
        """The option ``name`` (e.g. ``"batches"``) as the running interface spells it:
        ``--batches`` on the command line, ``--workload-batches`` under pytest."""
        return f"--workload-{name}" if self.interface == "pytest" else f"--{name}"

    @property
    def batch_refs(self) -> list | None:
        """The BatchRefs to train on (a ``batches`` path was read when the options were made)."""
        assert not isinstance(self.batches, (str, os.PathLike))
        return self.batches


def candidate(model_id: str, sample_weight: float, quality_weight: float = 1.0) -> dict:
    """A merge Candidate as the coordinator sends it."""
    return {
        "peer_id": f"conformance-peer-{model_id}",
        "head_id": f"conformance-head-{model_id}",
        "artifact_id": f"conformance-artifact-{model_id}",
        "model_id": model_id,
        "sample_weight": sample_weight,
        "quality_weight": quality_weight,
    }


__all__ = [
    "DEFAULT_SCHEMA_HASH",
    "GENERATOR",
    "UNKNOWN_MODEL",
    "Options",
    "candidate",
    "generated_batches",
    "load_batches",
]
