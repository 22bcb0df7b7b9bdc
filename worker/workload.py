"""The workload contract (docs/protocol.md §4) as typing protocols, for workload authors.

Annotate your factory with ``-> Workload`` and let a type checker compare
your class with what the worker calls.  :class:`Workload` lists the required
hooks; each optional hook has its own protocol below (the worker looks for
optional hooks with ``hasattr`` and falls back to its generic torch I/O or a
``Rejected`` outcome without them).  A *state* is whatever ``init_model``
returns: a ``torch.nn.Module``, ``{"model": module, ...}`` or
``{"modules": {name: module}}`` for the generic pack and artifact I/O, or any
object when the workload brings its own pack and artifact hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

State = Any
"""A model state (see the module docstring)."""
Metrics = Mapping[str, Any]
"""str -> int, float, bool or str (numpy scalars and 0-d tensors are converted)."""
JsonObject = dict[str, Any]


@runtime_checkable
class Workload(Protocol):
    """The hooks every workload must have."""

    def runtime_device(self) -> str:
        """E.g. ``"python-torch-cpu"``."""
        ...

    def capability_probe(self) -> JsonObject:
        """A CapabilityEstimate: ``{"preferred_backends": [str],
        "work_units_per_second": float, "target_window_seconds": int}``."""
        ...

    def init_model(self, device: str) -> State:
        """A fresh model state on ``device``."""
        ...

    def train_window(self, state: State, batches: list[JsonObject]) -> Metrics:
        """Train ``state`` in place on the BatchRefs; returns metrics."""
        ...

    def evaluate(self, state: State, split: str | JsonObject) -> Metrics:
        """``split`` is ``"Train"``, ``"Validation"``, ``"Test"`` or ``{"Custom": str}``."""
        ...

    def merge_candidate_models(
        self, base: State, candidates: list[JsonObject], policy: str | JsonObject
    ) -> State | None:
        """A new merged state, or None for "no merge".  Each candidate is the
        coordinator's Candidate with ``"model"`` (the state) in place of ``model_id``."""
        ...

    def apply_single_root_ema(
        self, base: State, merged: State, policy: str | JsonObject
    ) -> State | None:
        """The new merged state, or None when ``merged`` was updated in place."""
        ...

    def reconcile_canonical_model(
        self, local: State, canonical: State, strategy: str | JsonObject
    ) -> State | None:
        """The new canonical state, or None when ``canonical`` was updated in place."""
        ...


@runtime_checkable
class NamedWorkload(Protocol):
    """Optional: the name ``hello`` reports (default: the class name)."""

    workload_name: str


@runtime_checkable
class PatchHook(Protocol):
    """Optional: runtime patches (without it every patch is ``Rejected``)."""

    def apply_patch(self, patch: JsonObject) -> str | JsonObject:
        """``"Applied"``, ``"RequiresRestart"`` or ``{"Rejected": str}``."""
        ...


@runtime_checkable
class ArtifactPathHooks(Protocol):
    """Optional: artifact I/O by path (else the bytes hooks, else generic safetensors)."""

    def load_model_artifact_path(self, state: State, path: str) -> State | None: ...

    def materialize_model_artifact_path(self, state: State, path: str) -> None: ...


@runtime_checkable
class ArtifactBytesHooks(Protocol):
    """Optional: artifact I/O as bytes (the worker reads and writes the file)."""

    def load_model_artifact(self, state: State, data: bytes) -> State | None: ...

    def materialize_model_artifact(self, state: State) -> bytes: ...


@runtime_checkable
class PackPathHooks(Protocol):
    """Optional: custom parameter pack I/O instead of the generic torch layout.
    Either hook may also take a ``state_dict_filter`` keyword (a Filter object)."""

    def export_parameter_pack_path(
        self, state: State, path: str, model_schema_hash: str
    ) -> None: ...

    def import_parameter_pack_path(self, device: str, path: str) -> State: ...


@runtime_checkable
class InnerLoopHook(Protocol):
    """Optional, needed for DiLoCo: run an InnerLoopJob.  May return
    ``{"steps_completed", "metrics", "state", "inner_optimizer_state_path",
    "inner_optimizer_state_encoding"}`` (all optional) or None."""

    def run_inner_loop(self, state: State, job: JsonObject) -> JsonObject | None: ...


__all__ = [
    "ArtifactBytesHooks", "ArtifactPathHooks", "InnerLoopHook", "Metrics", "NamedWorkload",
    "PackPathHooks", "PatchHook", "State", "Workload",
]  # fmt: skip
