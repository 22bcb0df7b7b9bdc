"""The run's first training window, and what counts as reported work.

:func:`run_train_probe` trains a fresh model once per run with the run's
batches (``--batches``, or generated ``micro_epoch`` refs) and exports it
before and after, so that every check that needs training data knows whether
the workload can train on them: it raised (it cannot read the refs), it did
zero steps (its metrics say so and the model is unchanged: a SKIP with the
hint to pass ``--batches``, never a PASS "trained" and never a FAIL), or it
changed the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fakecoord.errors import FakecoordError, RemoteError
from fakecoord.packs import Pack

from .errors import CheckFailed, one_line
from .options import generated_batches

if TYPE_CHECKING:
    from .session import Session

WORK_METRICS = (
    "steps",
    "train_steps",
    "optimizer_steps",
    "num_steps",
    "step_count",
    "steps_completed",
    "examples",
    "train_examples",
    "examples_processed",
    "samples",
    "sample_count",
    "tokens",
    "tokens_processed",
    "accepted_tokens_or_samples",
)
"""Metric names read as an amount of work done (the last five also weigh a peer's
contribution in the Rust coordinator: ``standard_contribution_weight``)."""

COORDINATOR_METRICS = ("batch_count", "examples_processed", "tokens_processed", "microshard_count")
"""Metrics the Rust coordinator sets on every train_window result (replacing the workload's)."""


def reported_work(metrics: Any) -> dict[str, float]:
    """The numeric work metrics (:data:`WORK_METRICS`) in a metrics dict."""
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for key in WORK_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[key] = float(value)
    return out


def describe_work(work: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in work.items()) or "no work metrics"


@dataclass
class TrainProbe:
    """The first ``train_window`` of the run, shared by the checks that need data."""

    source: str
    batches: list = field(default_factory=list)
    metrics: Any = None
    error: str | None = None
    details: str = ""
    skip: str | None = None
    before: Pack | None = None
    after: Pack | None = None
    pack_error: str | None = None

    @property
    def changed(self) -> int | None:
        """How many parameter values training changed (None when they could not be read)."""
        if self.before is None or self.after is None:
            return None
        if self.before.values.shape != self.after.values.shape:
            return int(max(self.before.values.size, self.after.values.size))
        return int((self.before.bits != self.after.bits).sum())

    @property
    def work(self) -> dict[str, float]:
        metrics = self.metrics.get("metrics") if isinstance(self.metrics, dict) else None
        return reported_work(metrics)

    @property
    def zero_work(self) -> bool:
        """The metrics report work, and all of it is zero."""
        work = self.work
        return bool(work) and all(v == 0 for v in work.values())


def run_train_probe(s: Session) -> TrainProbe:
    """Train a fresh model with the run's batches, exporting it before and after."""
    if s.options.batch_refs is not None:
        batches = list(s.options.batch_refs)
        probe = TrainProbe(
            f"the {len(batches)} BatchRefs from {s.options.flag('batches')}", batches
        )
    else:
        batches = generated_batches(2)
        probe = TrainProbe("2 generated micro_epoch refs", batches)
    model_id = s.new_model()
    try:
        probe.before = s.export(model_id)
    except CheckFailed as exc:
        probe.pack_error = exc.reason
    expected = "train_window to answer"
    why = s.timed_out("train_window")
    if why is not None:
        probe.error = f"no attempt: {why}"
        return probe
    try:
        probe.metrics = s.client().call("train_window", {"model_id": model_id, "batches": batches})
    except RemoteError as exc:
        probe.error = f"ok:false from train_window: {one_line(exc.message)}"
        probe.details = exc.message
        hook_raised = "raised" in one_line(exc.message) or "Traceback" in exc.message
        if s.options.batches is None and hook_raised:
            probe.skip = (
                "the workload cannot consume generated micro_epoch refs: "
                f"{one_line(exc.message, 160)}; pass {s.options.flag('batches')} FILE with refs "
                "it can read"
            )
        return probe
    except FakecoordError as exc:
        failure = s._failure("train_window", exc, expected, "train_window()")
        probe.error, probe.details = failure.got, failure.details
        return probe
    if probe.before is not None:
        try:
            probe.after = s.export(model_id)
        except CheckFailed as exc:
            probe.pack_error = exc.reason
    if probe.changed == 0 and probe.zero_work:
        hint = (
            f"no {s.options.flag('batches')} given: pass {s.options.flag('batches')} FILE with "
            "refs it can read"
            if s.options.batches is None
            else f"check that the refs in {s.options.flag('batches')} name data the workload "
            "can read"
        )
        probe.skip = (
            f"the workload did 0 training steps on {probe.source} "
            f"({describe_work(probe.work)}) and left the model unchanged; {hint}"
        )
    return probe


__all__ = [
    "COORDINATOR_METRICS",
    "WORK_METRICS",
    "TrainProbe",
    "describe_work",
    "reported_work",
    "run_train_probe",
]
