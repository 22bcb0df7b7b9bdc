"""The calls the burn_p2p network makes into a Python worker, in the network's order.

The flow checks (``flows.*``) drive the worker through :class:`NetworkPeer`
so that they send what a node sends, read what it reads and fail where it
fails.  Each method names the upstream function it mirrors (repository
``aberration-technology/burn_p2p``, HEAD):

- ``crates/burn_p2p_python/src/lib.rs``, ``PythonTorchProject``:
  ``new_with_data_pipeline`` (hello, then ``capability_probe``; its
  ``runtime_device`` is the device of every later call),
  ``sanity_check_training_protocol`` (``parameter_pack_plan`` with that
  device and the revision's ``state_dict_filter``), ``P2pWorkload::init_model``,
  ``train_window``, ``evaluate``, ``merge_candidate_models``,
  ``apply_single_root_ema``, ``load_model_artifact`` /
  ``materialize_model_artifact`` (a staged ``artifact.safetensors``),
  ``DiLoCoWorkload::export_parameter_pack`` / ``import_parameter_pack``
  (a staged directory ``parameters``, the revision's filter),
  ``run_worker_inner_loop`` (``inner_optimizer_state_path`` absent on a
  peer's first round, afterwards a fresh copy ``inner-state-input.blob`` of
  the blob the previous inner loop returned; the returned path is read with
  ``fs::read`` right after the call; the local pack is read back from
  ``output_parameter_pack_path``);
- ``crates/burn_p2p/src/diloco/network.rs``, the local round of a peer
  (:func:`diloco_round`): ``import_parameter_pack(&device,
  &state.current_parameters)``, then ``run_inner_steps`` with the state the
  peer saved last round.

Everything here talks through a ``call(method, params) -> result`` function
(a :class:`fakecoord.WorkerClient`'s ``call``, or the session's wrapper of
it); a node's own refusals after a call answered (an unreadable state file)
raise :class:`~conformance.errors.NetworkRefused`.  No workload code runs here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakecoord import packs, spec
from fakecoord.errors import RoundFailed
from fakecoord.network import rounds

from .errors import NetworkRefused

Call = Callable[[str, Any], Any]
"""``call(method, params) -> result``: one request to the worker (raises on failure)."""

DEFAULT_STATE_ENCODING = rounds.DEFAULT_STATE_ENCODING
"""The encoding lib.rs assumes when the inner loop returns none."""

MERGE_POLICIES: tuple[Any, ...] = (
    "WeightedMean",
    "NormClippedWeightedMean",
    "TrimmedMean",
    "Ema",
    "QualityWeightedEma",
    {"Custom": "conformance-custom-policy"},
)
"""Every ``MergePolicy`` the coordinator may send (crates/burn_p2p_core MergePolicy)."""


@dataclass(frozen=True)
class StateBlob:
    """An inner optimizer state as the node keeps it between rounds (``StateBlob``)."""

    data: bytes
    encoding: str = DEFAULT_STATE_ENCODING


@dataclass
class InnerRound:
    """One ``run_worker_inner_loop``: the result, the local pack, the state read back."""

    result: dict
    local_pack: Path
    state: StateBlob | None
    state_path: str | None
    """The path the workload returned (already read into ``state``)."""
    given_state_path: str | None
    """The path the job carried (None on a first round)."""


@dataclass
class NetworkPeer:
    """One node's worker, called as lib.rs's ``PythonTorchProject`` calls it."""

    call: Call
    device: str
    """``probe.runtime_device``: the workload's own string, sent in every device slot."""
    scratch: Callable[[str], Path]
    """A fresh, not yet existing path (the node's ``tempfile`` staging)."""
    model_schema_hash: str
    state_dict_filter: dict = field(default_factory=lambda: dict(spec.EMPTY_FILTER))
    """The revision's ``PythonStateDictFilterConfig`` (empty: every float tensor)."""
    require_exact_steps: bool = True
    """``PythonDiLoCoConfig::require_exact_steps`` (true in every constructor lib.rs has)."""

    # -- lib.rs PythonTorchProject ---------------------------------------------

    def plan(self) -> dict:
        """``sanity_check_training_protocol``: the plan under the revision's filter."""
        params = {"device": self.device, "state_dict_filter": self.state_dict_filter}
        return self.call("parameter_pack_plan", params)

    def init_model(self) -> str:
        """``P2pWorkload::init_model(&runtime_device)``."""
        return self.call("init_model", {"device": self.device})["model_id"]

    def train_window(self, model_id: str, batches: Sequence[Any]) -> dict:
        """``P2pWorkload::train_window``: the metrics (before the node adds batch_count)."""
        return self.call("train_window", {"model_id": model_id, "batches": list(batches)})[
            "metrics"
        ]

    def evaluate(self, model_id: str, split: Any) -> dict:
        """``P2pWorkload::evaluate`` (the node turns a failure into a python_error metric)."""
        return self.call("evaluate", {"model_id": model_id, "split": split})["metrics"]

    def merge(self, base_id: str, candidates: Sequence[dict], policy: Any) -> str | None:
        """``merge_candidate_models``: a new handle, or None for "no merge"."""
        params = {"base_model_id": base_id, "candidates": list(candidates), "policy": policy}
        return self.call("merge_candidate_models", params)["model_id"]

    def root_ema(self, base_id: str, merged_id: str, policy: Any) -> str:
        """``apply_single_root_ema`` with the deployment's policy; answers the merged handle."""
        params = {"base_model_id": base_id, "merged_model_id": merged_id, "policy": policy}
        return self.call("apply_single_root_ema", params)["model_id"]

    def materialize(self, model_id: str) -> Path:
        """``materialize_model_artifact``: a staged ``artifact.safetensors``."""
        path = self._staged("materialized-artifact") / "artifact.safetensors"
        self.call(
            "materialize_model_artifact",
            {"model_id": model_id, "artifact_path": str(path)},
        )
        return path

    def load_artifact(self, model_id: str, artifact: Path) -> None:
        """``load_model_artifact`` into an existing handle (the node keeps the handle)."""
        staged = self._staged("load-artifact") / "artifact.safetensors"
        staged.write_bytes(Path(artifact).read_bytes())
        self.call("load_model_artifact", {"model_id": model_id, "artifact_path": str(staged)})

    def export_pack(self, model_id: str) -> Path:
        """``DiLoCoWorkload::export_parameter_pack``: a staged ``parameters`` directory."""
        path = self._staged("export-pack") / "parameters"
        self.call(
            "export_parameter_pack",
            {
                "model_id": model_id,
                "parameter_pack_path": str(path),
                "model_schema_hash": self.model_schema_hash,
                "state_dict_filter": self.state_dict_filter,
            },
        )
        return path

    def import_pack(self, pack: packs.Pack) -> str:
        """``DiLoCoWorkload::import_parameter_pack``: the node writes the pack it holds
        into a fresh staged ``parameters`` directory and imports it with its device."""
        path = self._staged("import-pack") / "parameters"
        packs.write_pack(
            path,
            pack.values,
            layout_hash=pack.layout_hash,
            model_schema_hash=pack.manifest.model_schema_hash,
        )
        params = {
            "device": self.device,
            "parameter_pack_path": str(path),
            "state_dict_filter": self.state_dict_filter,
        }
        return self.call("import_parameter_pack", params)["model_id"]

    def run_inner_loop(
        self,
        model_id: str,
        batches: Sequence[Any],
        num_inner_steps: int,
        state: StateBlob | None,
    ) -> InnerRound:
        """``run_worker_inner_loop``: the job, then the local pack and the state read back.

        The job, the step check and the state read back are
        :mod:`fakecoord.network.rounds`' (the simulation's round makes the
        same calls); the node's refusals become :class:`NetworkRefused`."""
        try:
            rounds.check_batches(batches, num_inner_steps)
        except RoundFailed as exc:
            raise NetworkRefused(str(exc)) from None
        staged = self._staged("diloco-worker")
        given = None
        if state is not None:
            given = staged / rounds.INNER_STATE_INPUT_NAME
            given.write_bytes(state.data)  # a fresh copy every round
        job = rounds.inner_loop_job(
            model_id=model_id,
            batches=batches,
            num_inner_steps=num_inner_steps,
            inner_optimizer_state_path=given,
            output_parameter_pack_path=staged / "local-parameters",
            model_schema_hash=self.model_schema_hash,
            state_dict_filter_value=self.state_dict_filter,
            require_exact_steps=self.require_exact_steps,
        )
        result = self.call("run_inner_loop", job)
        try:
            rounds.check_steps(result, num_inner_steps, self.require_exact_steps)
        except RoundFailed as exc:
            raise NetworkRefused(str(exc)) from None
        returned = result.get("inner_optimizer_state_path")
        blob = None
        if returned is not None:
            encoding = result.get("inner_optimizer_state_encoding") or DEFAULT_STATE_ENCODING
            blob = StateBlob(read_state_blob(returned), encoding)
        return InnerRound(
            result,
            staged / "local-parameters",
            blob,
            returned,
            None if given is None else str(given),
        )

    def _staged(self, prefix: str) -> Path:
        path = self.scratch(prefix)
        path.mkdir(parents=True)
        return path


def read_state_blob(path: str) -> bytes:
    """``read_state_blob_file``: ``fs::read`` of the returned path, right after the call.

    Raises :class:`NetworkRefused` with the node's reason when it cannot read
    it (missing, a directory, not readable); a FIFO or device is refused as
    well (the node would block or read a stream, never a saved state).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise NetworkRefused(f"read optimizer state blob {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise NetworkRefused(f"read optimizer state blob {path}: {kind}")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise NetworkRefused(f"read optimizer state blob {path}: {exc.strerror or exc}") from None


def diloco_round(
    peer: NetworkPeer,
    base: packs.Pack,
    batches: Sequence[Any],
    num_inner_steps: int,
    state: StateBlob | None,
) -> tuple[str, InnerRound]:
    """A peer's local round (diloco/network.rs): import the current base with the
    node's device, run the inner loop with the state saved last round (None on the
    first); the caller keeps ``round.state`` for the next round."""
    model_id = peer.import_pack(base)
    return model_id, peer.run_inner_loop(model_id, batches, num_inner_steps, state)


__all__ = [
    "DEFAULT_STATE_ENCODING",
    "MERGE_POLICIES",
    "Call",
    "InnerRound",
    "NetworkPeer",
    "StateBlob",
    "diloco_round",
    "read_state_blob",
]
