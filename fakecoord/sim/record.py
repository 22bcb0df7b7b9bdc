"""The report of a run, its faults and recoveries, the checkpoint and ``metrics.jsonl``.

The report is a JSON document (format ``fakecoord-sim-report-v2``, described
in docs/simulation.md "Reading the report"); only the engine's main thread
changes it, through a :class:`Recorder`.  Checkpoints are
``fakecoord-sim-checkpoint-v2``: checkpoints of the v1 format (before the
engine/strategy split) cannot be resumed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from ..errors import SettingsError, SimError
from ..files import write_bytes, write_json
from .strategy import BaselineState, PeerResult
from .workers import short_error

if TYPE_CHECKING:
    from .engine import Engine

CHECKPOINT_FORMAT = "fakecoord-sim-checkpoint-v2"
REPORT_FORMAT = "fakecoord-sim-report-v2"
COUNT_METRICS = ("examples", "batch_count", "steps", "microshard_count")


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
                f"[red]round {r}: peer {res.peer} failed[/] ({entry['spec']}): {res.error}"
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
        e.view.event(f"[green]round {r}: peer {res.peer} recovered[/] ({entry['spec']}): {action}")
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
        """``(RunState, report)`` from a checkpoint; raises :class:`SettingsError`."""
        from .engine import RunState

        e = self.engine
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SettingsError(f"--resume {e.out}: cannot read {path.name} ({exc})") from None
        found = data.get("format") if isinstance(data, dict) else None
        if found == "fakecoord-sim-checkpoint-v1":
            raise SettingsError(
                f"--resume {e.out}: the checkpoint was written by an older fakecoord "
                "(fakecoord-sim-checkpoint-v1) and cannot be resumed; start a new run"
            )
        if found != CHECKPOINT_FORMAT:
            raise SettingsError(f"--resume {e.out}: {path.name} is not a {CHECKPOINT_FORMAT} file")
        if data.get("strategy") != e.strategy.name:
            raise SettingsError(
                f"--resume {e.out}: the run used the {data.get('strategy')!r} strategy, "
                f"not {e.strategy.name!r}"
            )
        try:
            raw = data["state"]
            state = RunState(
                raw["completed_rounds"],
                e.strategy.state_from_json(raw["strategy"]),
                BaselineState.from_json(raw["baseline"]) if raw.get("baseline") else None,
                raw.get("failed_streak", 0),
            )
            report = data["report"]
        except (KeyError, TypeError, ValueError) as exc:
            raise SimError(f"--resume {e.out}: the checkpoint is damaged ({exc!r})") from None
        report["settings"] = e.config.to_json()
        report.pop("stopped_after_round", None)
        report.pop("stopped", None)
        self.prior_wall = report["timings"]["wall_seconds"]
        for p_text, spec in data.get("pending_recovery", {}).items():
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
    "CHECKPOINT_FORMAT",
    "REPORT_FORMAT",
    "Recorder",
    "metrics_lines",
    "numeric",
    "union_seconds",
]
