"""The interface between the engine and a training protocol, in the manner of Flower's ``Strategy``.

The engine (:mod:`fakecoord.sim.engine`) owns peers, worker processes,
timing, faults, evaluation, checkpoints and the report.  A
:class:`Strategy` owns what a round *means*, around a typed state ``S`` (a
dataclass it defines):

=====================  ==================================================  ==========================
hook                   what it does                                        runs in
=====================  ==================================================  ==========================
``initialize``         make round 0's state from a fresh ``init_model``    main thread
``configure_round``    one task per peer taking part in round ``r``        main thread
``train``              run one peer's task on its worker                   that peer's thread
``aggregate_round``    fold the peers' results into a new state            main thread
``model``              the model of a state, for evaluation                main thread
``baseline_round``     (optional) one single-peer step, for ``--baseline``  the baseline's thread
=====================  ==================================================  ==========================

A state is never changed in place: ``aggregate_round`` returns a new one,
which the engine commits (checkpoint) only once the round is complete.
``state_to_json`` / ``state_from_json`` give it to the checkpoint.  Paths
inside states are relative to the run directory (``ctx.rel`` / ``ctx.path``).
docs/simulation.md has a worked example of a custom strategy and a custom
aggregator.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from .. import schema, wire
from ..errors import DecodeError
from ..schema import Map
from .config import SimConfig
from .workers import PeerContext

S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class PeerMap(Map):
    """An object keyed by peer index (``"0"``, ``"1"``, ...)."""

    def decode(self, value: Any, path: str, ctx: schema.Ctx, depth: int) -> Any:
        if isinstance(value, dict):
            for key in value:
                if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 10):
                    raise DecodeError(wire.join(path, str(key)), "a peer index", key)
        return super().decode(value, path, ctx, depth)


@dataclass(frozen=True)
class ModelRef:
    """A model on disk: a parameter pack directory or a ``*.safetensors`` artifact.

    ``path`` is relative to the run directory.
    """

    kind: str
    path: str

    def __post_init__(self) -> None:
        if self.kind not in ("pack", "artifact"):
            raise ValueError(f"ModelRef.kind must be 'pack' or 'artifact', got {self.kind!r}")

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path}

    @classmethod
    def from_json(cls, data: dict) -> ModelRef:
        return cls(data["kind"], data["path"])


@dataclass
class PeerResult:
    """What one peer did in one round (returned by :meth:`Strategy.train`).

    ``model`` is the local model it produced; ``private`` holds whatever the
    strategy needs in ``aggregate_round`` (e.g. the inner optimizer's file).
    The engine fills ``peer``, ``pid``, ``injected``, ``straggle_seconds``
    and ``dropped``.
    """

    peer: int
    ok: bool = False
    metrics: dict = field(default_factory=dict)
    steps_completed: int | None = None
    model: ModelRef | None = None
    error: str | None = None
    traceback: str | None = None
    """The whole text behind ``error`` (filled by the engine): the worker's answer with the
    hook's traceback, or the end of a dead worker's stderr."""
    injected: str | None = None
    worker_seconds: float = 0.0
    straggle_seconds: float = 0.0
    pid: int | None = None
    dropped: bool = False
    outside_group: bool = False
    """Available but not among the round's group (the network's ``target_group_size``)."""
    encoded_bytes: int | None = None
    """The bytes its encoded contribution put on the wire (DiLoCo)."""
    private: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The peer's entry in the report's round record."""
        status = (
            "dropped" if self.dropped
            else "outside_group" if self.outside_group
            else "ok" if self.ok
            else "failed"
        )  # fmt: skip
        out: dict[str, Any] = {
            "status": status,
            "metrics": self.metrics,
            "worker_seconds": round(self.worker_seconds, 6),
        }
        if self.straggle_seconds:
            out["straggle_seconds"] = round(self.straggle_seconds, 6)
        if self.steps_completed is not None:
            out["steps_completed"] = self.steps_completed
        if self.error is not None:
            out["error"] = self.error
        if self.traceback is not None:
            out["traceback"] = self.traceback
        if self.injected is not None:
            out["fault_injected"] = self.injected
        if self.encoded_bytes is not None:
            out["encoded_bytes"] = self.encoded_bytes
        return out


@dataclass
class RoundOutcome(Generic[S]):
    """What :meth:`Strategy.aggregate_round` returns.

    ``summary`` goes into the round's record under the strategy's name;
    ``refused`` maps peers whose result the aggregation could not use (e.g.
    a pack full of NaN) to the reason, so they count as failed;
    ``eval_metrics``, when the strategy already evaluated the new model, saves
    the engine an evaluation.  ``failed``: the round failed as the network
    fails it (the reason; the state keeps its model); ``stop``: commit this
    round, then stop the run with exit 1 and this message;
    ``transfer_seconds``: the modelled transfer time, added to the simulated
    clock.
    """

    state: S
    summary: dict = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    eval_metrics: dict | None = None
    failed: str | None = None
    stop: str | None = None
    transfer_seconds: float = 0.0


@dataclass
class BaselineState:
    """The single-peer baseline's model and inner optimizer file (relative paths)."""

    model: ModelRef
    inner_opt: str | None = None

    def to_json(self) -> dict:
        return {"model": self.model.to_json(), "inner_opt": self.inner_opt}

    @classmethod
    def from_json(cls, data: dict) -> BaselineState:
        return cls(ModelRef.from_json(data["model"]), data.get("inner_opt"))


@dataclass
class BaselineOutcome:
    state: BaselineState
    train_metrics: dict


class RoundContext:
    """What ``aggregate_round`` gets from the engine for round ``round``."""

    def __init__(
        self,
        round_index: int,
        directory: Path,
        config: SimConfig,
        run_dir: Path,
        peer: Callable[[int], PeerContext],
        parallel: Callable[[Callable[[PeerContext], Any], list[int]], dict[int, Any]],
        evaluate: Callable[[ModelRef], dict],
        unplanned: Callable[[int, BaseException, str], None],
        event: Callable[..., None],
    ) -> None:
        self.round = round_index
        self.dir = directory
        self.config = config
        self.run_dir = run_dir
        self.peer = peer
        """``peer(p)``: a :class:`PeerContext` on peer ``p``'s worker."""
        self.parallel = parallel
        """``parallel(fn, peers)``: ``fn(peer_context)`` on each peer's thread; a dict of results
        (or the exception each raised)."""
        self.evaluate = evaluate
        """``evaluate(model)``: the validation metrics of a model, on a worker of the run."""
        self.unplanned = unplanned
        """``unplanned(peer, exc, phase)``: record a failure outside the training call."""
        self.event = event
        """``event(text, style=None)``: a line in the live log (plain text, never markup)."""

    def rel(self, path: Path | str) -> str:
        return os.path.relpath(path, self.run_dir)

    def path(self, relative: str) -> Path:
        return self.run_dir / relative


class SetupContext(PeerContext):
    """A :class:`PeerContext` on the first worker that started, in round 0 (``rounds/0000``),
    plus ``report``: a dict whose entries go into the report (e.g. the pack plan)."""

    report: dict
    schema_hash: str


class Strategy(ABC, Generic[S]):
    """A training protocol (see the module docstring).  Subclass it, or one of
    :class:`~fakecoord.sim.diloco.DiLoCo` and :class:`~fakecoord.sim.windows.Windows`."""

    name: ClassVar[str] = "strategy"
    summary_key: ClassVar[str] = "summary"
    """Where a round's ``RoundOutcome.summary`` goes in the report's round record."""
    state_schema: ClassVar[schema.Type | None] = None
    """What ``state_to_json`` gives, in :mod:`fakecoord.schema` types: a resume refuses a
    checkpoint whose state does not match (None: only ``state_from_json``'s errors count)."""

    config: SimConfig
    schema_hash: str

    def bind(self, config: SimConfig, schema_hash: str) -> None:
        """Called by the engine before any other hook: the run's settings and schema hash."""
        self.config = config
        self.schema_hash = schema_hash

    def check(self, config: SimConfig) -> None:
        """Refuse settings this strategy cannot run with (raise ``SettingsError``)."""

    def describe(self, config: SimConfig) -> str:
        """A few words for the header line."""
        return self.name

    def needs_peer_workers(self, config: SimConfig) -> bool:
        """False when peers train in job processes, not in long-lived workers."""
        return True

    def required_capability(self, config: SimConfig) -> str | None:
        """A capability every peer's worker must advertise in ``hello``."""
        return None

    @abstractmethod
    def initialize(self, setup: SetupContext) -> S:
        """Round 0's state, from a fresh ``init_model`` on ``setup``'s worker."""

    @abstractmethod
    def configure_round(self, r: int, state: S, leases: dict[int, list[dict]]) -> dict[int, Any]:
        """One task per peer taking part (``leases`` has exactly those peers' batch refs)."""

    @abstractmethod
    def train(self, peer: PeerContext, task: Any) -> PeerResult:
        """Run ``task`` on ``peer``'s worker.  Must not raise for a failed peer: return
        ``PeerResult(ok=False, error=...)`` (after ``peer.after_failure``).

        The engine owns fault injection: train through ``peer.client()`` (its
        ``run_inner_loop``/``train_window`` apply the round's planned ``--fault``)
        or, for job processes, ``peer.run_job``; a strategy never calls
        ``peer.inject`` (a deprecated shim, a no-op once the fault is applied)."""

    def select_group(self, r: int, candidates: list[int]) -> list[int]:
        """The peers (of the available ``candidates``) that take part in round ``r``, in the
        order of every sum; raise :class:`~fakecoord.errors.RoundFailed` to fail the round
        before anyone trains.  Default: all of them."""
        return candidates

    def round_failure(self, r: int, results: list[PeerResult]) -> str | None:
        """A reason to fail round ``r`` after training, before any aggregation (None: go on)."""
        return None

    def after_round(
        self, r: int, old: S, outcome: RoundOutcome[S], results: list[PeerResult], ctx: RoundContext
    ) -> RoundOutcome[S]:
        """Called after ``aggregate_round`` (or for a failed round, with the old state):
        the outcome to commit.  Default: unchanged."""
        return outcome

    def run_failure(self, report: dict) -> str | None:
        """Called when the run ends: a reason to call the whole run failed (exit 1), or None."""
        return None

    @abstractmethod
    def aggregate_round(
        self, r: int, state: S, results: list[PeerResult], ctx: RoundContext
    ) -> RoundOutcome[S]:
        """The new state from the round's results (failed and dropped peers included)."""

    @abstractmethod
    def model(self, state: S) -> ModelRef:
        """The model a state stands for: what the engine evaluates."""

    @abstractmethod
    def state_to_json(self, state: S) -> dict: ...

    @abstractmethod
    def state_from_json(self, data: dict) -> S: ...

    def baseline_round(
        self, peer: PeerContext, state: BaselineState, batches: list[dict]
    ) -> BaselineOutcome:
        """One round of the single-peer baseline: train ``state``'s model on ``batches``."""
        raise NotImplementedError(f"the {self.name} strategy has no baseline")

    @property
    def has_baseline(self) -> bool:
        return type(self).baseline_round is not Strategy.baseline_round


__all__ = [
    "BaselineOutcome",
    "BaselineState",
    "ModelRef",
    "PeerMap",
    "PeerResult",
    "RoundContext",
    "RoundOutcome",
    "SetupContext",
    "Strategy",
]
