"""Window merging (docs/protocol.md §2) as a :class:`~fakecoord.sim.strategy.Strategy`.

Every peer trains its local model with ``train_window`` and materializes
it as a candidate artifact; a reducer (the round's survivors take turns)
loads every candidate, merges them with sample (examples) and quality
(``1 / (1 + train loss)``) weights, applies the single-root EMA and
materializes the new canonical model; every peer then reconciles its local
model with it.  Round ``R`` writes ``rounds/RRRR/canonical.safetensors`` and
``rounds/RRRR/peer-N/{candidate,local}.safetensors``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import handling
from ..errors import FakecoordError
from ..schema import STRING, Field, Struct
from .strategy import (
    BaselineOutcome,
    BaselineState,
    ModelRef,
    PeerMap,
    PeerResult,
    RoundContext,
    RoundOutcome,
    SetupContext,
    Strategy,
)
from .workers import PeerContext, short_error


@dataclass
class WindowsState:
    """The canonical artifact and each peer's local artifact (relative paths)."""

    canonical: str
    local: dict[int, str]


@dataclass(frozen=True)
class WindowTask:
    local: str
    lease: list[dict]


class Windows(Strategy[WindowsState]):
    """Train windows, merge candidates on a reducer peer, reconcile every peer."""

    name = "windows"
    summary_key = "merge"

    def describe(self, config: Any) -> str:
        return f"merge policy {config.merge_policy}, reconcile {config.reconcile}"

    def initialize(self, setup: SetupContext) -> WindowsState:
        client = setup.client()
        model_id = setup.call(client.init_model, setup.device())
        canonical = setup.dir / "canonical.safetensors"
        setup.call(client.materialize_model_artifact, model_id, canonical)
        setup.call(client.release_model, model_id)
        rel = setup.rel(canonical)
        return WindowsState(rel, {p: rel for p in range(self.config.peers)})

    def model(self, state: WindowsState) -> ModelRef:
        return ModelRef("artifact", state.canonical)

    def configure_round(
        self, r: int, state: WindowsState, leases: dict[int, list[dict]]
    ) -> dict[int, WindowTask]:
        return {p: WindowTask(state.local[p], lease) for p, lease in leases.items()}

    def train(self, peer: PeerContext, task: WindowTask) -> PeerResult:
        assert peer.peer is not None
        result = PeerResult(peer.peer)
        model_id = None
        try:
            client = peer.client()
            started = time.monotonic()
            model_id = peer.call(client.init_model, peer.device())
            peer.call(client.load_model_artifact, model_id, peer.path(task.local))
            metrics = peer.call(handling.train_window_metrics, client, model_id, task.lease)
            candidate = peer.dir / "candidate.safetensors"
            peer.call(client.materialize_model_artifact, model_id, candidate)
            result.worker_seconds = time.monotonic() - started
            result.metrics = metrics
            result.model = ModelRef("artifact", peer.rel(candidate))
            result.private["local_id"] = model_id
            result.ok = True
        except (FakecoordError, OSError) as exc:
            result.error = short_error(exc)
            peer.after_failure(exc, model_id)
        return result

    def aggregate_round(
        self, r: int, state: WindowsState, results: list[PeerResult], ctx: RoundContext
    ) -> RoundOutcome[WindowsState]:
        c = self.config
        survivors = [res for res in results if res.ok]
        canonical = ctx.path(state.canonical)
        merge: dict[str, Any] = {
            "policy": c.merge_policy,
            "candidates": len(survivors),
            "merged": False,
        }
        eval_metrics = None
        if survivors:
            reducer = survivors[(r - 1) % len(survivors)].peer
            merge["reducer"] = reducer
            peer = ctx.peer(reducer)
            try:
                canonical, merged, eval_metrics = self._reduce(peer, state, survivors, ctx.dir)
                merge["merged"] = merged
                if not merged:
                    merge["error"] = "merge_candidate_models returned null (the workload declined)"
            except (FakecoordError, OSError) as exc:
                merge["error"] = short_error(exc)
                ctx.unplanned(reducer, exc, "merge")
                peer.after_failure(exc)
            if not merge["merged"]:
                ctx.event(
                    f"round {r}: no merge on peer {reducer}: {merge['error']}; the "
                    "canonical model stays as it was",
                    "yellow",
                )
        by_peer = {res.peer: res for res in survivors}

        def reconcile(peer: PeerContext) -> Any:
            assert peer.peer is not None  # a training peer, not the baseline
            return self._reconcile(peer, by_peer[peer.peer], canonical)

        reconciled = ctx.parallel(reconcile, [p for p in by_peer if ctx.peer(p).slot.alive])
        local = {p: ctx.rel(canonical) for p in range(c.peers)}
        for p, outcome in reconciled.items():
            if isinstance(outcome, BaseException):
                ctx.unplanned(p, outcome, "reconcile")
            else:
                local[p] = ctx.rel(outcome)
        return RoundOutcome(
            WindowsState(ctx.rel(canonical), local), merge, eval_metrics=eval_metrics or None
        )

    def _reduce(
        self, peer: PeerContext, state: WindowsState, survivors: list[PeerResult], round_dir: Path
    ) -> tuple[Path, bool, dict | None]:
        c = self.config
        client = peer.client()
        held: list[str] = []
        try:
            base_id = peer.call(client.init_model, peer.device())
            held.append(base_id)
            peer.call(client.load_model_artifact, base_id, peer.path(state.canonical))
            candidates = []
            for res in survivors:
                assert res.model is not None
                cid = peer.call(client.init_model, peer.device())
                held.append(cid)
                peer.call(client.load_model_artifact, cid, peer.path(res.model.path))
                loss = handling.metric_number(res.metrics, "loss")
                candidates.append(
                    {
                        "peer_id": f"peer-{res.peer}",
                        "head_id": f"round-{peer.round}-peer-{res.peer}",
                        "artifact_id": res.model.path,
                        "model_id": cid,
                        "sample_weight": handling.contribution_weight(res.metrics),
                        "quality_weight": 1.0 / (1.0 + loss)
                        if loss is not None and loss >= 0
                        else 1.0,
                    }
                )
            merged = peer.call(client.merge_candidate_models, base_id, candidates, c.merge_policy)
            if merged is None:
                return peer.path(state.canonical), False, None
            held.append(merged)
            peer.call(client.apply_single_root_ema, base_id, merged, c.merge_policy)
            canonical = round_dir / "canonical.safetensors"
            peer.call(client.materialize_model_artifact, merged, canonical)
            metrics = peer.call(handling.evaluate_metrics, client, merged, "Validation")
            return canonical, True, metrics
        finally:
            for model_id in held:
                if client.returncode is None:
                    try:
                        peer.call(client.release_model, model_id)
                    except FakecoordError:
                        break

    def _reconcile(self, peer: PeerContext, result: PeerResult, canonical: Path) -> Path:
        client = peer.client()
        canon_id = None
        try:
            canon_id = peer.call(client.init_model, peer.device())
            peer.call(client.load_model_artifact, canon_id, canonical)
            local_id = result.private["local_id"]
            peer.call(client.reconcile_canonical_model, local_id, canon_id, self.config.reconcile)
            local = peer.dir / "local.safetensors"
            peer.call(client.materialize_model_artifact, canon_id, local)
            for model_id in (local_id, canon_id):
                peer.call(client.release_model, model_id)
            return local
        except (FakecoordError, OSError) as exc:
            peer.after_failure(exc, None)
            raise

    def baseline_round(
        self, peer: PeerContext, state: BaselineState, batches: list[dict]
    ) -> BaselineOutcome:
        model_id = None
        try:
            client = peer.client()
            model_id = peer.call(client.init_model, peer.device())
            peer.call(client.load_model_artifact, model_id, peer.path(state.model.path))
            train = peer.call(handling.train_window_metrics, client, model_id, batches)
            artifact = peer.dir / "baseline.safetensors"
            peer.call(client.materialize_model_artifact, model_id, artifact)
            peer.call(client.release_model, model_id)
        except (FakecoordError, OSError) as exc:
            peer.after_failure(exc, model_id)
            raise
        return BaselineOutcome(BaselineState(ModelRef("artifact", peer.rel(artifact))), train)

    def run_failure(self, report: dict) -> str | None:
        """A windows run in which no round merged failed: the canonical model never moved."""
        records = report.get("rounds", [])
        if not records or any(rec.get("merge", {}).get("merged") for rec in records):
            return None
        errors = [rec["merge"]["error"] for rec in records if rec.get("merge", {}).get("error")]
        last = f"; last: {errors[-1]}" if errors else ""
        return f"no round merged: every merge failed or was declined ({len(records)} rounds){last}"

    def state_to_json(self, state: WindowsState) -> dict:
        return {"canonical": state.canonical, "local": {str(p): v for p, v in state.local.items()}}

    state_schema = Struct(
        "WindowsState", (Field("canonical", STRING), Field("local", PeerMap(STRING)))
    )

    def state_from_json(self, data: dict) -> WindowsState:
        return WindowsState(data["canonical"], {int(p): v for p, v in data["local"].items()})


__all__ = ["WindowTask", "Windows", "WindowsState"]
