"""How to start and exercise the workload under test, and the requests the suite makes up.

:class:`Options` is what the CLI, the pytest plugin and the helper build;
:func:`generated_batches` and :func:`candidate` are the BatchRefs and merge
candidates the checks send when the user gave none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass
class Options:
    """How to start and exercise the workload under test.

    Raises :class:`~conformance.errors.UsageError` for a malformed value.
    """

    factory: str
    config: Any = None
    device: str = "cpu"
    batches: list | None = None
    worker_cmd: Sequence[str] | None = None
    pythonpath: Sequence[str] = ()
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    max_examples: int = 10
    call_timeout: float = 120.0
    accept_timeout: float = 60.0
    exit_timeout: float = 10.0
    """Seconds a worker gets to answer a refusal, or to exit after EOF or ``shutdown``."""
    model_schema_hash: str = DEFAULT_SCHEMA_HASH
    custom_split: str = "conformance-holdout"
    """The name sent as ``{"Custom": name}`` to evaluate."""

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
        for name in ("call_timeout", "accept_timeout", "exit_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.batches is not None:
            if not isinstance(self.batches, list) or not self.batches:
                raise UsageError("batches must be a non-empty JSON array of BatchRef objects")
            for i, ref in enumerate(self.batches):
                if not isinstance(ref, dict) or not isinstance(ref.get("kind"), str):
                    raise UsageError(
                        f'batches[{i}] must be a BatchRef object with a string "kind", got {ref!r}'
                    )
        if self.worker_cmd is not None:
            self.worker_cmd = tuple(self.worker_cmd)
            if not self.worker_cmd:
                raise UsageError("worker_cmd must name a program")
        self.pythonpath = tuple(os.fspath(p) for p in self.pythonpath)


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
]
