"""The report of a run, its faults and recoveries, the checkpoint and ``metrics.jsonl``.

The report is a JSON document (format ``fakecoord-sim-report-v2``, described
in docs/simulation.md "Reading the report"); only the engine's main thread
changes it, through a :class:`Recorder`.  Checkpoints are
``fakecoord-sim-checkpoint-v2``: checkpoints of the v1 format (before the
engine/strategy split) cannot be resumed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .. import schema, wire
from ..errors import DecodeError, SettingsError, one_line
from ..files import write_bytes, write_json
from ..schema import (
    BOOL,
    F64,
    I64,
    JSON_VALUE,
    STRING,
    U32,
    Enum,
    Field,
    Map,
    Option,
    Struct,
    Variant,
    Vec,
)
from .config import SimConfig
from .faults import parse_fault
from .strategy import BaselineState, PeerMap, PeerResult
from .workers import short_error

if TYPE_CHECKING:
    from .engine import Engine

CHECKPOINT_FORMAT = "fakecoord-sim-checkpoint-v2"
REPORT_FORMAT = "fakecoord-sim-report-v2"
COUNT_METRICS = ("examples", "batch_count", "steps", "microshard_count")


# ---------------------------------------------------------------------------
# The checkpoint's schema: everything a resume reads, in the wire types of fakecoord.schema


_OPT_F64 = Option(F64)
_NUMBERS = Map(JSON_VALUE)
_ANNOTATIONS: dict[str, schema.Type] = {
    "int": I64,
    "float": F64,
    "bool": BOOL,
    "str": STRING,
    "str | None": Option(STRING),
    "int | None": Option(I64),
    "float | None": _OPT_F64,
    "list[str] | None": Option(Vec(STRING)),
    "list[Fault]": Vec(STRING),
}


def config_schema() -> Struct:
    """:class:`SimConfig` as the checkpoint holds it, derived from its fields (an absent
    field takes its default; an annotation without a wire type here takes any JSON)."""
    fields = []
    for f in dataclasses.fields(SimConfig):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every SimConfig field has a default
            default = schema.MISSING
        kind = _ANNOTATIONS.get(str(f.type), JSON_VALUE)
        fields.append(Field(f.name, kind, default=[] if f.name == "faults" else default))
    return Struct("SimConfig", tuple(fields))


_MODEL_REF = Struct(
    "ModelRef",
    (
        Field("kind", Enum("ModelKind", (Variant("pack"), Variant("artifact")))),
        Field("path", STRING),
    ),
)
_ROUND = Struct(
    "RoundRecord",
    (
        Field("round", U32),
        Field("eval", _NUMBERS, default={}),
        Field("eval_value", _OPT_F64, default=None),
        Field("contributors", Vec(U32)),
        Field("failed", Vec(U32)),
        Field("dropped", Vec(U32)),
        Field(
            "peers",
            PeerMap(
                Struct(
                    "PeerRecord",
                    (
                        Field("status", STRING),
                        Field("metrics", _NUMBERS, default={}),
                        Field("error", Option(STRING), default=None),
                    ),
                )
            ),
        ),
        Field(
            "timings",
            Struct(
                "RoundTimings",
                tuple(
                    Field(name, F64)
                    for name in (
                        "round_seconds",
                        "worker_call_seconds",
                        "coordinator_seconds",
                        "straggle_seconds",
                        "wall_seconds_at_end",
                    )
                ),
            ),
        ),
        Field(
            "baseline",
            Option(
                Struct(
                    "BaselineRecord",
                    (
                        Field("eval_value", _OPT_F64, default=None),
                        Field("eval", _NUMBERS, default={}),
                    ),
                )
            ),
            default=None,
        ),
    ),
)
_FAULT = Struct(
    "FaultEntry",
    (
        Field("spec", STRING),
        Field("kind", STRING),
        Field("peer", U32),
        Field("round", U32),
        Field("error", Option(STRING), default=None),
        Field(
            "recovery",
            Option(Struct("Recovery", (Field("round", Option(U32)), Field("action", STRING)))),
        ),
    ),
)
_REPORT = Struct(
    "Report",
    (
        Field("format", STRING),
        Field("strategy", STRING),
        Field("eval_metric", STRING),
        Field("initial_eval", _NUMBERS, default={}),
        Field("initial_eval_value", _OPT_F64, default=None),
        Field("final_eval_value", _OPT_F64, default=None),
        Field("rounds", Vec(_ROUND)),
        Field("faults", Vec(_FAULT)),
        Field(
            "baseline",
            Option(
                Struct(
                    "BaselineHeader",
                    (
                        Field("steps_per_round", U32),
                        Field("description", STRING),
                        Field("eval_values", Vec(_OPT_F64)),
                        Field("final_eval_value", _OPT_F64, default=None),
                    ),
                )
            ),
            default=None,
        ),
        Field(
            "timings",
            Struct(
                "Timings",
                (
                    *(
                        Field(name, F64)
                        for name in (
                            "wall_seconds",
                            "startup_seconds",
                            "rounds_seconds",
                            "worker_call_seconds",
                            "coordinator_seconds",
                            "straggle_seconds",
                        )
                    ),
                    Field("coordinator_overhead_share", _OPT_F64, default=None),
                ),
            ),
        ),
        Field("resumed", Vec(Struct("Resumed", (Field("after_round", U32),))), default=[]),
        Field(
            "threads",
            Option(Struct("Threads", (Field("per_worker", Option(U32)), Field("reason", STRING)))),
            default=None,
        ),
    ),
)
CHECKPOINT = Struct(
    "Checkpoint",
    (
        Field("format", STRING),
        Field("strategy", STRING),
        Field("config", config_schema()),
        Field(
            "state",
            Struct(
                "RunState",
                (
                    Field("completed_rounds", U32),
                    Field("strategy", JSON_VALUE),
                    Field(
                        "baseline",
                        Option(
                            Struct(
                                "BaselineState",
                                (
                                    Field("model", _MODEL_REF),
                                    Field("inner_opt", Option(STRING), default=None),
                                ),
                            )
                        ),
                        default=None,
                    ),
                    Field("failed_streak", U32, default=0),
                ),
            ),
        ),
        Field("pending_recovery", PeerMap(STRING), default={}),
        Field("report", _REPORT),
    ),
)
"""What a ``fakecoord-sim-checkpoint-v2`` file must hold for a resume (the strategy's own
state is checked by its ``state_schema``)."""


def read_checkpoint(path: Path, where: str) -> dict:
    """The checkpoint at ``path``, validated whole against :data:`CHECKPOINT` (JSON read as
    serde_json reads it); raises :class:`SettingsError` ``"<where>: the checkpoint is damaged:
    <path in the file>: ..."``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{where}: no readable {path.name} ({exc})") from None
    try:
        data = wire.parse_json(raw)
        found = data.get("format") if isinstance(data, dict) else None
        if found == "fakecoord-sim-checkpoint-v1":
            raise SettingsError(
                f"{where}: the checkpoint was written by an older fakecoord "
                "(fakecoord-sim-checkpoint-v1) and cannot be resumed; start a new run"
            )
        if found != CHECKPOINT_FORMAT:
            raise SettingsError(f"{where}: {path.name} is not a {CHECKPOINT_FORMAT} file")
        decoded = schema.decode(CHECKPOINT, data)
        assert isinstance(decoded, dict)
        for i, spec in enumerate(decoded["config"]["faults"]):
            try:
                parse_fault(spec)
            except SettingsError as exc:
                raise DecodeError(
                    f"config.faults[{i}]", "a --fault spec", got_text=str(exc)
                ) from None
        if decoded["state"]["completed_rounds"] != len(decoded["report"]["rounds"]):
            raise DecodeError(
                "state.completed_rounds",
                f"the number of rounds in report.rounds ({len(decoded['report']['rounds'])})",
                decoded["state"]["completed_rounds"],
            )
    except DecodeError as exc:
        raise SettingsError(f"{where}: the checkpoint is damaged: {one_line(str(exc))}") from None
    return decoded


def numeric(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def union_seconds(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Total length of the union of ``intervals`` clipped to ``[lo, hi]``."""
    total, end = 0.0, lo
    for start, stop in sorted(intervals):
        start, stop = max(start, end), min(stop, hi)
        if stop > start:
            total += stop - start
            end = stop
    return total


class Recorder:
    """Builds the engine's report and writes its files (main thread only)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pending: dict[int, dict] = {}
        """Each peer's last unrecovered fault entry (its recovery is filled when it rejoins)."""
        self.prior_wall = 0.0

    @property
    def report(self) -> dict:
        return self.engine.report

    @property
    def metric(self) -> str:
        return self.engine.config.eval_metric

    # -- building -------------------------------------------------------------------

    def new_report(self) -> dict:
        e = self.engine
        return {
            "format": REPORT_FORMAT,
            "strategy": e.strategy.name,
            "settings": e.config.to_json(),
            "workload": {},
            "model_schema_hash": e.schema_hash,
            "eval_metric": self.metric,
            "initial_eval": {},
            "initial_eval_value": None,
            "final_eval_value": None,
            "rounds": [],
            "faults": [],
            "baseline": None,
            "timings": {
                "wall_seconds": 0.0,
                "startup_seconds": 0.0,
                "rounds_seconds": 0.0,
                "worker_call_seconds": 0.0,
                "coordinator_seconds": 0.0,
                "coordinator_overhead_share": None,
                "straggle_seconds": 0.0,
            },
        }

    def value(self, metrics: dict) -> float | None:
        value = metrics.get(self.metric)
        return float(value) if numeric(value) and math.isfinite(value) else None

    def eval_failure(self, metrics: dict) -> str | None:
        """Why an evaluation gave no usable value (None: it did): the worker's or the
        workload's error, a missing metric, or a non-finite one."""
        if "python_error" in metrics:
            return str(metrics["python_error"])
        value = metrics.get(self.metric)
        if not numeric(value):
            return f"evaluate returned no numeric {self.metric!r}"
        if not math.isfinite(value):
            return f"evaluate returned {self.metric} {value}"
        return None

    def check_eval_metric(self, metrics: dict) -> None:
        """Refuse an ``eval_metric`` that the workload's evaluate does not return as a number."""
        if numeric(metrics.get(self.metric)):
            return
        offered = sorted(
            (k for k, v in metrics.items() if numeric(v)), key=lambda k: (k in COUNT_METRICS, k)
        )
        raise SettingsError(
            f"--eval-metric {self.metric!r}: the workload's evaluate returned "
            f"{', '.join(offered) or 'no numeric metric'}"
            + (f"; choose one of these (e.g. --eval-metric {offered[0]})" if offered else "")
        )

    def baseline_header(self) -> dict:
        c = self.engine.config
        total = c.baseline_steps == "total"
        steps = c.peers * c.inner_steps if total else c.inner_steps
        if total:
            compared = (
                f"one worker trains {steps} steps per round ({c.peers} peers x {c.inner_steps} "
                "inner steps) on all peers' batches in turn: the same optimizer steps and data as "
                "the whole network, without communication"
            )
        else:
            compared = (
                f"one worker trains {steps} steps per round on peer 0's batches: one peer's share "
                "of the work, alone"
            )
        return {
            "steps_per_round": steps,
            "description": compared,
            "eval_values": [],
            "final_eval_value": None,
        }

    def round_record(self, r: int, results: list[PeerResult], metrics: dict) -> dict:
        plan = self.engine.plan
        finished = sum(res.ok for res in results)
        asked = sum(not res.dropped and not res.outside_group for res in results)
        for res in results:
            if res.dropped or res.outside_group:
                continue
            pending = self.pending.pop(res.peer, None)
            if pending is not None:
                pending["recovery"] = self._recovery(r, pending, res)
            if res.ok:
                continue
            fault = plan.event(r, res.peer)
            entry = {
                "spec": fault.spec if fault else f"unplanned@{res.peer}:{r}",
                "kind": fault.kind if fault else "unplanned",
                "peer": res.peer,
                "round": r,
                "planned": fault is not None,
                "injected": res.injected,
                "error": res.error,
                "traceback": res.traceback,
                "effect": f"round {r} aggregated {finished} of {asked} peers without it",
                "recovery": None,
                "pid": res.pid,
            }
            self.report["faults"].append(entry)
            self.pending[res.peer] = entry
            self.engine.view.event(
                f"round {r}: peer {res.peer} failed ({entry['spec']}): {res.error}", "red"
            )
        return {
            "round": r,
            "eval_metric": self.metric,
            "eval_value": self.value(metrics),
            "eval": metrics,
            "contributors": [res.peer for res in results if res.ok],
            "failed": [
                res.peer
                for res in results
                if not res.ok and not res.dropped and not res.outside_group
            ],
            "dropped": [res.peer for res in results if res.dropped],
            "outside_group": [res.peer for res in results if res.outside_group],
            "peers": {str(res.peer): res.record() for res in results},
        }

    def _recovery(self, r: int, entry: dict, res: PeerResult) -> dict:
        """How a peer that failed earlier came back in round ``r`` (or did not)."""
        if not res.ok:
            return {
                "round": r,
                "action": f"not recovered: failed again in round {r}",
                "worker_restarted": False,
            }
        e = self.engine
        source = "base" if e.strategy.name == "diloco" else "model"
        if not e.strategy.needs_peer_workers(e.config):
            action = f"a new job process (pid {res.pid}) ran from the round-{r - 1} {source}"
            restarted = True
        elif entry.get("pid") is not None and res.pid != entry["pid"]:
            action = (
                f"worker restarted (pid {entry['pid']} -> {res.pid}); rejoined in round {r} "
                f"from the round-{r - 1} {source}"
            )
            restarted = True
        else:
            action = (
                f"same worker (pid {res.pid}); rejoined in round {r} from the round-{r - 1} "
                f"{source}"
            )
            restarted = False
        e.view.event(f"round {r}: peer {res.peer} recovered ({entry['spec']}): {action}", "green")
        return {"round": r, "action": action, "worker_restarted": restarted}

    def unplanned(self, r: int, p: int, exc: BaseException, phase: str) -> None:
        slot = self.engine.workers.peers[p] if self.engine.workers else None
        entry = {
            "spec": f"unplanned@{p}:{r}",
            "kind": "unplanned",
            "peer": p,
            "round": r,
            "planned": False,
            "injected": None,
            "error": f"{phase}: {short_error(exc)}",
            "effect": f"the peer's {phase} step in round {r} was skipped",
            "recovery": None,
            "pid": slot.pids[-1] if slot and slot.pids else None,
        }
        self.report["faults"].append(entry)
        self.pending.setdefault(p, entry)

    def stop_reason(self, streak: int) -> str:
        """Why the run stops: the last round's errors, grouped by text."""
        last = self.report["rounds"][-1]
        if last.get("round_failed") and not last["failed"]:
            rounds = "round" if streak == 1 else f"{streak} rounds in a row, up to round"
            return (
                f"the network fails {rounds} {last['round']} (--max-failed-rounds "
                f"{self.engine.config.max_failed_rounds}): {last['round_failed']}"
            )
        errors: dict[str, list[tuple[str, str]]] = {}
        for p, entry in last["peers"].items():
            if entry["status"] == "failed":
                text = entry.get("error") or "no error text"
                match = re.search(r" \(log: ([^()]*)\)$", text)
                log = match.group(1) if match else ""
                errors.setdefault(text[: match.start()] if match else text, []).append((p, log))
        lines = "\n  ".join(
            f"peer {', '.join(p for p, _ in group)}: {text}"
            + (f" (logs: {', '.join(log for _, log in group)})" if group[0][1] else "")
            for text, group in errors.items()
        )
        rounds = "round" if streak == 1 else f"{streak} rounds in a row, up to round"
        return (
            f"no peer contributed in {rounds} {last['round']} (--max-failed-rounds "
            f"{self.engine.config.max_failed_rounds}); stopping:\n  {lines}"
        )

    # -- committing -----------------------------------------------------------------------

    def commit(self, record: dict) -> None:
        report = self.report
        report["rounds"].append(record)
        if record.get("eval_value") is not None:
            report["final_eval_value"] = record["eval_value"]
        baseline = report.get("baseline")
        if baseline is not None and record.get("baseline"):
            value = record["baseline"].get("eval_value")
            baseline["eval_values"].append(value)
            if value is not None:
                baseline["final_eval_value"] = value
        timings = report["timings"]
        timings["wall_seconds"] = round(self.engine._wall(), 6)
        spent = record["timings"]
        for source, target in (
            ("round_seconds", "rounds_seconds"),
            ("worker_call_seconds", "worker_call_seconds"),
            ("coordinator_seconds", "coordinator_seconds"),
            ("straggle_seconds", "straggle_seconds"),
        ):
            timings[target] = round(timings.get(target, 0.0) + spent[source], 6)
        if timings["rounds_seconds"] > 0:
            timings["coordinator_overhead_share"] = round(
                timings["coordinator_seconds"] / timings["rounds_seconds"], 6
            )

    def finish(self, all_done: bool, wall: float) -> None:
        if all_done:
            for entry in self.pending.values():
                entry["recovery"] = {
                    "round": None,
                    "action": "none: the run ended before the peer's next round",
                    "worker_restarted": False,
                }
        self.report["timings"]["wall_seconds"] = round(wall, 6)
        assert self.engine.state is not None
        self.report["completed_rounds"] = self.engine.state.completed_rounds

    # -- files --------------------------------------------------------------------------------

    def write_checkpoint(self) -> None:
        e = self.engine
        state = e.state
        assert state is not None
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "strategy": e.strategy.name,
            "config": e.config.to_json(),
            "state": {
                "completed_rounds": state.completed_rounds,
                "strategy": e.strategy.state_to_json(state.strategy),
                "baseline": state.baseline.to_json() if state.baseline else None,
                "failed_streak": state.failed_streak,
            },
            "pending_recovery": {str(p): entry["spec"] for p, entry in self.pending.items()},
            "report": self.report,
        }
        write_json(e.out / "checkpoint.json", checkpoint)

    def load_checkpoint(self, path: Path) -> tuple[Any, dict]:
        """``(RunState, report)`` from a checkpoint (validated whole by :func:`read_checkpoint`
        and the strategy's ``state_schema``); raises :class:`SettingsError`."""
        from .engine import RunState

        e = self.engine
        where = f"--resume {e.out}"
        data = read_checkpoint(path, where)
        if data["strategy"] != e.strategy.name:
            raise SettingsError(
                f"{where}: the run used the {one_line(repr(data['strategy']), 80)} strategy, "
                f"not {e.strategy.name!r}"
            )
        raw = data["state"]
        try:
            if e.strategy.state_schema is not None:
                schema.decode(e.strategy.state_schema, raw["strategy"], "state.strategy")
            strategy_state = e.strategy.state_from_json(raw["strategy"])
        except DecodeError as exc:
            raise SettingsError(
                f"{where}: the checkpoint is damaged: {one_line(str(exc))}"
            ) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SettingsError(
                f"{where}: the checkpoint is damaged: state.strategy: {one_line(short_error(exc))}"
            ) from None
        baseline = raw["baseline"]
        state = RunState(
            raw["completed_rounds"],
            strategy_state,
            BaselineState.from_json(baseline) if baseline else None,
            raw["failed_streak"],
        )
        report = data["report"]
        report["settings"] = e.config.to_json()
        report.pop("stopped_after_round", None)
        report.pop("stopped", None)
        self.prior_wall = report["timings"]["wall_seconds"]
        for p_text, spec in data["pending_recovery"].items():
            for entry in reversed(report["faults"]):
                if entry["spec"] == spec and entry["peer"] == int(p_text):
                    self.pending[int(p_text)] = entry
                    break
        return state, report

    def write_report(self, path: Path) -> None:
        write_json(path, self.report)

    def write_metrics(self, path: Path) -> None:
        text = "".join(
            json.dumps(line, allow_nan=False) + "\n" for line in metrics_lines(self.report)
        )
        write_bytes(path, text.encode("utf-8"))


def metrics_lines(report: dict) -> list[dict]:
    """One JSON object per round of ``report`` (round 0: the initial model); docs/simulation.md."""
    lines = [
        {
            "round": 0,
            "eval": report.get("initial_eval", {}),
            "eval_value": report.get("initial_eval_value"),
            "wall_seconds": report["timings"].get("startup_seconds"),
        }
    ]
    for record in report["rounds"]:
        line: dict[str, Any] = {
            "round": record["round"],
            "eval": record["eval"],
            "eval_value": record["eval_value"],
            "wall_seconds": record["timings"]["wall_seconds_at_end"],
            "round_seconds": record["timings"]["round_seconds"],
            "contributors": record["contributors"],
            "failed": record["failed"],
            "dropped": record["dropped"],
            "train": {
                p: entry["metrics"]
                for p, entry in record["peers"].items()
                if entry["status"] == "ok"
            },
        }
        for key in ("eval_error", "round_failed"):
            if record.get(key):
                line[key] = record[key]
        if "simulated_seconds_at_end" in record["timings"]:
            line["simulated_seconds"] = record["timings"]["simulated_seconds_at_end"]
        wire = (record.get("aggregate") or {}).get("wire")
        if wire:
            line["encoded_bytes"] = wire["encoded_bytes_total"]
        if record.get("baseline"):
            line["baseline_eval"] = record["baseline"].get("eval", {})
            line["baseline_eval_value"] = record["baseline"].get("eval_value")
        lines.append(line)
    return lines


__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "config_schema",
    "read_checkpoint",
    "REPORT_FORMAT",
    "Recorder",
    "metrics_lines",
    "numeric",
    "union_seconds",
]
