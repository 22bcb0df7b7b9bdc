"""The simulation engine: peers, rounds, faults, evaluation, checkpoints and the report.

One worker process per peer (started in parallel), each driven from its own
thread; a :class:`~fakecoord.sim.strategy.Strategy` says what a round does.
Everything a run produces lives under the run directory ``out``::

    out/data/                      demo shards (demo workload only)
    out/logs/peer-N.log            worker stderr; workers.jsonl lists every spawned pid
    out/rounds/0000/               the initial model
    out/rounds/RRRR/...            round R's files (see the strategy's module)
    out/checkpoint.json            the last committed round (written atomically)
    out/report.json, metrics.jsonl the report, and one line of metrics per round

Each round the strategy picks its group from the peers not dropped
(``Strategy.select_group``; DiLoCo: the network's peer-id order and group
sizes, :mod:`fakecoord.network.rounds`), and may fail the round as the
network fails it (``round_failure``, ``RoundOutcome.failed``: the model
stays) or stop the run after it (``RoundOutcome.stop``: exit 1).
Faults never stop the run by themselves: a round completes with the peers
that finished, a dead worker is restarted when next needed, and the report
lists each fault with its recovery.  The run stops early (:class:`RunFailed`)
after ``max_failed_rounds`` consecutive rounds in which no peer taking part
contributed.  Every round ends with an atomic checkpoint from which a run
continues with ``resume=True``; leases, dropouts and worker seeds depend on
``(seed, round)`` only, so a resumed run matches an uninterrupted one.

Threads: peer threads return results and never touch the engine's state;
the main thread alone changes ``state`` and ``report`` (the shared interval
list and process set are guarded by ``Workers.lock``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import handling
from ..errors import FakecoordError, RoundFailed, RunFailed, SettingsError, SimError
from .config import SimConfig, check_inputs, choose_threads, schema_hash
from .data import Leases, interleave, select_batch_files
from .diloco import DiLoCo
from .faults import FaultPlan
from .hosting import check_shared_workers
from .record import Recorder, union_seconds
from .report import RunView
from .shards import write_demo_dataset
from .strategy import (
    BaselineState,
    ModelRef,
    PeerResult,
    RoundContext,
    RoundOutcome,
    SetupContext,
    Strategy,
)
from .windows import Windows
from .workers import PeerContext, Slot, Workers, short_error

CHECKPOINT_NAME = "checkpoint.json"
REPORT_NAME = "report.json"
METRICS_NAME = "metrics.jsonl"


def device_override_warning(device: str) -> str:
    """What the run header and the report say when ``--device`` overrides the workload's own
    device string."""
    return (
        f"--device {device!r}: every device argument is {device!r}; the network never sends "
        "this, it passes the runtime_device the workload's capability_probe reports"
    )


def default_strategy(config: SimConfig) -> Strategy:
    """The built-in strategy named by ``config.protocol``."""
    return DiLoCo() if config.protocol == "diloco" else Windows()


@dataclass
class RunState:
    """Everything a round needs from the rounds before it (what the checkpoint holds)."""

    completed_rounds: int
    strategy: Any
    baseline: BaselineState | None = None
    failed_streak: int = 0


class Engine:
    """One run.  :meth:`run` returns the report; Ctrl-C propagates as KeyboardInterrupt after
    every worker was killed and reaped (the last checkpoint stays valid).

    Raises :class:`~fakecoord.errors.SettingsError` for invalid settings or
    inputs (before anything is created, except an ``eval_metric`` the
    workload does not return, found at the first evaluation),
    :class:`~fakecoord.errors.RunFailed` when too many rounds in a row had no
    contributor, and :class:`~fakecoord.errors.SimError` when the run cannot
    proceed (no worker starts, the initial model cannot be made, a bad
    checkpoint).
    """

    def __init__(
        self,
        config: SimConfig,
        out: str | os.PathLike,
        *,
        strategy: Strategy | None = None,
        view: RunView | None = None,
        resume: bool = False,
        stop_after_round: int | None = None,
        on_round: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out).resolve()
        self.strategy = strategy if strategy is not None else default_strategy(config)
        self.view = view or RunView()
        self.resume = resume
        self.stop_after_round = stop_after_round
        self.on_round = on_round
        self.state: RunState | None = None
        self.report: dict[str, Any] = {}
        self._prepared = False

    # -- checks before anything is created ------------------------------------------

    def prepare(self) -> None:
        """Validate every setting and input; creates nothing.  Raises :class:`SettingsError`."""
        if self._prepared:
            return
        c = self.config
        c.validate()
        self.plan: FaultPlan = c.fault_plan()
        self.schema_hash = schema_hash(c)
        self.strategy.bind(c, self.schema_hash)
        self.strategy.check(c)
        if c.baseline and not self.strategy.has_baseline:
            raise SettingsError(f"--baseline: the {self.strategy.name} strategy has no baseline")
        self.batches = check_inputs(c)
        self.batches_note: str | None = None
        if c.batches is not None and Path(c.batches).is_dir():
            self.batches_note = (
                f"--batches {c.batches}: {select_batch_files(Path(c.batches)).note()}"
            )
        self.threads = choose_threads(c)
        self.hosting: str | None = None
        if c.workers is not None:
            demo = {"seed": c.seed, "threads": self.threads.threads or 1}
            self.hosting = check_shared_workers(
                c,
                self.threads,
                demo if c.is_demo else (c.config or {}),
                self.batches[0] if self.batches else None,
            )
        self._prepared = True

    # -- the run ---------------------------------------------------------------------

    def run(self) -> dict:
        self.prepare()
        self._started = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=self.config.peers + 2, thread_name_prefix="peer")
        interrupted = False
        self.workers: Workers | None = None
        try:
            if self.config.device is not None:
                self.view.event(f"warning: {device_override_warning(self.config.device)}", "yellow")
            self._setup()
            if self.config.device is not None:
                self.report["device_override"] = device_override_warning(self.config.device)
            assert self.state is not None
            startup = time.monotonic() - self._started
            self.report["timings"]["startup_seconds"] += round(startup, 6)
            first = self.state.completed_rounds + 1
            self.view.start(self.config.rounds, first - 1, self.describe())
            for r in range(first, self.config.rounds + 1):
                if self.on_round is not None:
                    self.on_round(r)
                record, new_state, new_baseline = self._round(r)
                self._stop_if_signalled()  # the round is not committed: resume redoes it
                self._commit(r, record, new_state, new_baseline)
                self.view.round_done(record)
                if record.get("stop"):
                    self.report["stopped"] = {"round": r, "reason": record["stop"]}
                    self._finish()
                    raise RunFailed(record["stop"])
                if self.state.failed_streak >= self.config.max_failed_rounds:
                    reason = self.recorder.stop_reason(self.state.failed_streak)
                    self.report["stopped"] = {"round": r, "reason": reason}
                    self._finish()
                    raise RunFailed(reason)
                if self.stop_after_round is not None and r >= self.stop_after_round:
                    self.report["stopped_after_round"] = r
                    break
            self._finish()
            failure = self.strategy.run_failure(self.report)
            if failure is not None:
                self.report["run_failed"] = failure
                self.recorder.write_report(self.out / REPORT_NAME)
                raise RunFailed(failure)
            return self.report
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.view.close()
            if self.workers is not None:
                self.workers.teardown(interrupted)
            self.pool.shutdown(wait=True, cancel_futures=True)
            if self.workers is not None:
                self.workers.close()

    def _stop_if_signalled(self) -> None:
        """A worker that stopped on SIGINT/SIGTERM (e.g. Ctrl-C, or a signal sent to the whole
        process group) means the run is being interrupted, not that the peer failed: end it as
        an interrupted run (the last committed round stays resumable)."""
        if self.workers is not None and self.workers.signalled.is_set():
            raise KeyboardInterrupt(self.workers.signalled_reason)

    def describe(self) -> str:
        c = self.config
        workload = "demo workload" if c.is_demo else c.factory
        threads = self.threads.threads if self.threads.threads is not None else "default"
        started = self.workers.start_description() if self.workers else "not started"
        shared = (
            f"peers share workload objects ({c.peers} peers on {c.workers} worker processes, "
            "each peer its own model handles); "
            if c.workers is not None
            else ""
        )
        return (
            f"fakecoord run: {self.strategy.name}, {c.peers} peers, {c.rounds} rounds x "
            f"{c.inner_steps} steps, {workload}, {self.strategy.describe(c)}; threads per worker: "
            f"{threads} ({self.threads.reason}); workers {started}; {shared}"
            f"run directory {self.out}" + (f"\n{self.batches_note}" if self.batches_note else "")
        )

    # -- setup ---------------------------------------------------------------------------

    def _setup(self) -> None:
        c = self.config
        checkpoint = self.out / CHECKPOINT_NAME
        self.recorder = Recorder(self)
        if self.resume:
            self.state, self.report = self.recorder.load_checkpoint(checkpoint)
        elif checkpoint.exists():
            raise SettingsError(
                f"{self.out} already holds a run (checkpoint.json); continue it with "
                "--resume, or choose another --out"
            )
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        if not self.resume:
            self.report = self.recorder.new_report()
        self.report["threads"] = {"per_worker": self.threads.threads, "reason": self.threads.reason}
        if self.batches_note:
            self.report["batches"] = self.batches_note
        if c.is_demo:
            dataset = write_demo_dataset(self.out / "data", c.seed)
            self.leases = Leases(
                peers=c.peers, steps=c.inner_steps, seed=c.seed, dataset=dataset,
                microshards_per_step=c.microshards_per_step,
            )  # fmt: skip
            worker_config: Any = {
                "data_dir": str(self.out / "data"),
                "seed": c.seed,
                "threads": self.threads.threads or 1,
            }
        else:
            self.leases = Leases(
                peers=c.peers, steps=c.inner_steps, seed=c.seed, per_peer=self.batches
            )
            worker_config = c.config if c.config is not None else {}
        self.workers = Workers(c, self.out, self.threads, worker_config)
        if self.state is not None and self.state.completed_rounds >= c.rounds:
            self.view.event(f"{self.out}: all {c.rounds} rounds are done already")
            return
        peers = list(dict.fromkeys(self.workers.peers))  # --workers: peers share slots
        slots = peers if self.strategy.needs_peer_workers(c) else []
        if not slots:
            slots.append(self.workers.evaluator)
        if c.baseline:
            slots.append(self.workers.baseline)
        self._start(slots)
        self.report["workers_start"] = self.workers.start_description()
        if self.hosting is not None:
            self.report["shared_workers"] = {
                "workers": c.workers, "peers": c.peers, "checks": self.hosting,
            }  # fmt: skip
        if self.resume:
            assert self.state is not None
            self.view.event(f"resuming after round {self.state.completed_rounds}")
            self.report.setdefault("resumed", []).append(
                {"after_round": self.state.completed_rounds}
            )
            return
        self._initialize(next(s for s in slots if s.alive))

    def _note_workload(self) -> None:
        """The workload's ``hello`` into the report (main thread; workers only set slot.hello)."""
        assert self.workers is not None
        hello = next((s.hello for s in self.workers.slots() if s.hello is not None), None)
        if hello is not None:
            self.report["workload"] = {
                "workload_name": hello["workload_name"],
                "protocol_version": hello["protocol_version"],
                "capabilities": hello["capabilities"],
            }

    def _start(self, slots: list[Slot]) -> None:
        assert self.workers is not None
        futures = {slot.label: self.pool.submit(self.workers.spawn, slot, 0) for slot in slots}
        errors: dict[str, list[str]] = {}
        for label, future in futures.items():
            try:
                future.result()
            except FakecoordError as exc:
                text = re.sub(r" \(log: [^()]*\)$", "", str(exc))
                errors.setdefault(text, []).append(label)
        if errors and not any(s.alive for s in slots):
            logs = self.out / "logs"
            lines = [f"{', '.join(labels)}: {text}" for text, labels in errors.items()]
            raise SimError(
                "no worker could start:\n  " + "\n  ".join(lines) + f"\n  (worker logs: {logs})"
            )
        for text, labels in errors.items():
            self.view.event(
                f"worker start failed {', '.join(labels)}: {text} (retried when needed)", "yellow"
            )
        self._note_workload()
        needed = self.strategy.required_capability(self.config)
        for slot in slots:
            if needed and slot.hello is not None and slot in self.workers.peers:
                if needed not in slot.hello["capabilities"]:
                    raise SimError(
                        f"the workload {slot.hello['workload_name']!r} does not advertise "
                        f"{needed} (it has no run_inner_loop); use --protocol windows or "
                        "--diloco-backend command"
                    )

    def _initialize(self, slot: Slot) -> None:
        assert self.workers is not None
        c = self.config
        setup = SetupContext(self.workers, slot, 0, self.out / "rounds" / "0000")
        setup.report = self.report
        setup.schema_hash = self.schema_hash
        strategy_state = self.strategy.initialize(setup)
        model = self.strategy.model(strategy_state)
        metrics = self._evaluate(model, 0)
        if "python_error" in metrics:
            raise SimError(f"the initial evaluation failed: {metrics['python_error']}")
        self.recorder.check_eval_metric(metrics)
        self.report["initial_eval"] = metrics
        self.report["initial_eval_value"] = self.recorder.value(metrics)
        baseline = None
        if c.baseline:
            baseline = BaselineState(model)
            self.report["baseline"] = self.recorder.baseline_header()
        self.state = RunState(0, strategy_state, baseline)
        self.recorder.write_checkpoint()

    # -- a round ---------------------------------------------------------------------------

    def _round(self, r: int) -> tuple[dict, Any, BaselineState | None]:
        assert self.state is not None and self.workers is not None
        started = time.monotonic()
        mark = self.workers.mark()
        round_dir = self.out / "rounds" / f"{r:04d}"
        if round_dir.exists():  # leftovers of an interrupted attempt at this round
            shutil.rmtree(round_dir)
        round_dir.mkdir(parents=True)
        leases = self.leases.for_round(r)
        dropped = {p for p in range(self.config.peers) if self.plan.dropped(r, p) is not None}
        available = [p for p in range(self.config.peers) if p not in dropped]
        group_failed: str | None = None
        try:
            group = self.strategy.select_group(r, available)
        except RoundFailed as exc:
            group, group_failed = [], str(exc)
        taking_part = {p: leases[p] for p in group}
        tasks = self.strategy.configure_round(r, self.state.strategy, taking_part)
        futures = {
            p: self.pool.submit(self._train_peer, r, p, round_dir, task)
            for p, task in tasks.items()
        }
        baseline: Future | None = None
        if self.config.baseline:
            baseline = self.pool.submit(self._baseline_round, r, round_dir, leases)
        # The group's order is the order of every sum (the network's peer-id order).
        results = [futures[p].result() for p in group if p in futures]
        self._stop_if_signalled()
        results += [PeerResult(p, outside_group=True) for p in available if p not in group]
        results += [PeerResult(p, dropped=True) for p in sorted(dropped)]
        ctx = self._round_context(r, round_dir)
        failed = group_failed or self.strategy.round_failure(r, results)
        if failed is None:
            outcome = self.strategy.aggregate_round(r, self.state.strategy, results, ctx)
        else:
            outcome = RoundOutcome(self.state.strategy, failed=failed)
        outcome = self.strategy.after_round(r, self.state.strategy, outcome, results, ctx)
        if outcome.failed is not None:
            self.view.event(
                f"round {r} failed: {outcome.failed} (as the network fails it: the model "
                "stays as it was)",
                "red",
            )
        for res in results:
            if res.peer in outcome.refused:
                res.ok, res.error = False, outcome.refused[res.peer]
        metrics = outcome.eval_metrics
        if metrics is None:
            metrics = self._evaluate(self.strategy.model(outcome.state), r)
        record = self.recorder.round_record(r, results, metrics)
        eval_error = self.recorder.eval_failure(metrics)
        if eval_error is not None:
            record["eval_error"] = eval_error
            self.view.event(f"round {r}: evaluation failed: {eval_error}", "yellow")
        record[self.strategy.summary_key] = outcome.summary
        if outcome.failed is not None:
            record["round_failed"] = outcome.failed
        if outcome.stop is not None:
            record["stop"] = outcome.stop
        new_baseline = self.state.baseline
        if baseline is not None:
            record["baseline"], new_baseline = baseline.result()
            failure = record["baseline"].get("error") or self.recorder.eval_failure(
                record["baseline"].get("eval", {})
            )
            if failure is not None:
                record["baseline"]["eval_error"] = failure
                self.view.event(f"round {r}: the baseline's evaluation failed: {failure}", "yellow")
        ended = time.monotonic()
        worker = union_seconds(self.workers.since(mark), started, ended)
        record["timings"] = {
            "round_seconds": round(ended - started, 6),
            "worker_call_seconds": round(worker, 6),
            "coordinator_seconds": round(ended - started - worker, 6),
            "straggle_seconds": round(sum(res.straggle_seconds for res in results), 6),
            "wall_seconds_at_end": round(self._wall(), 6),
            "transfer_seconds": round(outcome.transfer_seconds, 6),
        }
        transfer = sum(
            rec["timings"].get("transfer_seconds", 0.0) for rec in self.report.get("rounds", [])
        )
        record["timings"]["simulated_seconds_at_end"] = round(
            self._wall() + transfer + outcome.transfer_seconds, 6
        )
        return record, outcome.state, new_baseline

    def _wall(self) -> float:
        return self.recorder.prior_wall + time.monotonic() - self._started

    def _train_peer(self, r: int, p: int, round_dir: Path, task: Any) -> PeerResult:
        assert self.workers is not None
        ctx = PeerContext(
            self.workers,
            self.workers.peers[p],
            r,
            round_dir / f"peer-{p}",
            p,
            self.plan.event(r, p),
        )
        result = self.strategy.train(ctx, task)
        result.peer, result.injected = p, ctx.injected
        if result.error and "(log: " not in result.error:
            result.error += f" (log: {ctx.log})"
        if result.error and result.traceback is None:
            result.traceback = ctx.failure_detail()
        result.pid = result.pid or ctx.pid
        slow = self.plan.slowdown(r, p)
        if slow is not None and result.ok and slow.value is not None:
            # A straggler: hold the result back as if its worker were `value` times slower.
            delay = (slow.value - 1.0) * result.worker_seconds
            began = time.monotonic()
            self.workers.stopping.wait(delay)
            self.workers.record_interval(began)
            result.straggle_seconds = delay
        return result

    def _baseline_round(
        self, r: int, round_dir: Path, leases: list[list[dict]]
    ) -> tuple[dict, BaselineState | None]:
        assert self.state is not None and self.workers is not None
        ctx = PeerContext(self.workers, self.workers.baseline, r, round_dir / "baseline")
        batches = (
            list(leases[0]) if self.config.baseline_steps == "per-peer" else interleave(leases)
        )
        state = self.state.baseline
        assert state is not None
        try:
            outcome = self.strategy.baseline_round(ctx, state, batches)
            metrics = self._evaluate_on(ctx, outcome.state.model)
        except (FakecoordError, OSError) as exc:
            self.workers.after_failure(ctx.slot, exc, None)
            return {"eval_value": None, "error": short_error(exc)}, state
        record = {
            "eval_value": self.recorder.value(metrics),
            "eval": metrics,
            "train_metrics": outcome.train_metrics,
        }
        return record, outcome.state

    def _round_context(self, r: int, round_dir: Path) -> RoundContext:
        assert self.workers is not None
        workers = self.workers

        def peer(p: int) -> PeerContext:
            return PeerContext(workers, workers.peers[p], r, round_dir / f"peer-{p}", p)

        def parallel(fn: Callable[[PeerContext], Any], peers: list[int]) -> dict[int, Any]:
            def guarded(p: int) -> Any:
                try:
                    return fn(peer(p))
                except (FakecoordError, OSError) as exc:
                    return exc

            futures = {p: self.pool.submit(guarded, p) for p in peers}
            return {p: future.result() for p, future in futures.items()}

        return RoundContext(
            r, round_dir, self.config, self.out, peer, parallel,
            lambda model: self._evaluate(model, r),
            lambda p, exc, phase: self.recorder.unplanned(r, p, exc, phase),
            self.view.event,
        )  # fmt: skip

    # -- evaluation ---------------------------------------------------------------------------

    def _evaluate_on(self, ctx: PeerContext, model: ModelRef) -> dict:
        c = self.config
        client = ctx.client()
        device = ctx.device()
        if model.kind == "pack":
            model_id = ctx.call(
                client.import_parameter_pack, device, ctx.path(model.path), c.state_dict_filter
            )
        else:
            model_id = ctx.call(client.init_model, device)
            ctx.call(client.load_model_artifact, model_id, ctx.path(model.path))
        metrics = ctx.call(handling.evaluate_metrics, client, model_id, "Validation")
        ctx.call(client.release_model, model_id)
        return metrics

    def _evaluate(self, model: ModelRef, r: int) -> dict:
        """Evaluate on the first usable worker, restarting one if none is left."""
        assert self.workers is not None
        if self.strategy.needs_peer_workers(self.config):
            slots = [s for s in dict.fromkeys(self.workers.peers) if s.alive] or [
                self.workers.peers[0]
            ]
        else:
            slots = [self.workers.evaluator]
        last: BaseException | None = None
        for slot in slots[:2]:
            ctx = PeerContext(self.workers, slot, r, self.out / "rounds" / f"{r:04d}")
            try:
                return self._evaluate_on(ctx, model)
            except (FakecoordError, OSError) as exc:
                last = exc
                self.workers.after_failure(slot, exc, None)
        return {"python_error": f"evaluation failed: {short_error(last) if last else 'no worker'}"}

    # -- commit and finish ------------------------------------------------------------------------

    def _commit(self, r: int, record: dict, new_state: Any, baseline: BaselineState | None) -> None:
        assert self.state is not None
        asked = [
            p
            for p, entry in record["peers"].items()
            if entry["status"] not in ("dropped", "outside_group")
        ]
        failed = record.get("round_failed") or (asked and not record["contributors"])
        streak = self.state.failed_streak + 1 if failed else 0
        self.state = RunState(r, new_state, baseline, streak)
        self.recorder.commit(record)
        self.recorder.write_checkpoint()
        self.recorder.write_metrics(self.out / METRICS_NAME)

    def _finish(self) -> None:
        assert self.state is not None
        self.recorder.finish(self.state.completed_rounds >= self.config.rounds, self._wall())
        self.recorder.write_checkpoint()
        self.recorder.write_report(self.out / REPORT_NAME)
        self.recorder.write_metrics(self.out / METRICS_NAME)
        self.view.finish(self.report)


Simulation = Engine
"""The name this class had before the engine/strategy split."""


def run(
    config: SimConfig | None = None,
    strategy: Strategy | None = None,
    *,
    out: str | os.PathLike | None = None,
    view: RunView | None = None,
    resume: bool = False,
) -> dict:
    """Run a simulation from Python and return its report (see docs/simulation.md).

    ``config`` defaults to :class:`SimConfig` ``()`` (the demo, 4 peers,
    DiLoCo); ``strategy`` to the built-in one its ``protocol`` names.  Without
    ``out`` the run directory is temporary and removed when the run ends
    (pass ``out`` to keep packs, logs and the checkpoint).  Raises what
    :class:`Engine` raises.
    """
    import tempfile

    config = config if config is not None else SimConfig()
    if out is not None:
        return Engine(config, out, strategy=strategy, view=view, resume=resume).run()
    engine = Engine(config, "unused", strategy=strategy, view=view)
    engine.prepare()
    with tempfile.TemporaryDirectory(prefix="fakecoord-run-") as tmp:
        engine.out = Path(tmp).resolve()
        return engine.run()


__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "REPORT_NAME",
    "Engine",
    "RunState",
    "Simulation",
    "default_strategy",
    "run",
]
