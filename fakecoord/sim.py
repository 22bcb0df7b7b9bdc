"""The local multi-peer training simulation behind ``python -m fakecoord run``.

One worker process per peer (started in parallel), each driven from its own
thread through a :class:`~fakecoord.client.WorkerClient`; everything the run
produces (data shards, packs, artifacts, worker logs, the checkpoint and the
report) lives under the run directory ``out``::

    out/data/                      demo shards (demo workload only)
    out/logs/peer-N.log            worker stderr; workers.jsonl lists every spawned pid
    out/rounds/0000/               the initial base (pack, or canonical artifact)
    out/rounds/RRRR/peer-N/        a peer's local pack / artifacts / job files of round R
    out/rounds/RRRR/base/          DiLoCo: the base after round R's outer step
    out/checkpoint.json            the last committed round (written atomically)
    out/report.json                the report

Protocols (PROTOCOL.md §6 and §2):

- ``diloco``: every peer imports the base pack, runs ``run_inner_loop`` on
  its lease (resuming its AdamW state from the previous round's file) and
  exports its local pack; the coordinator aggregates ``base - local`` across
  the peers that finished (:mod:`fakecoord.outer`) and takes the outer SGD
  step.  With ``diloco_backend="command"`` a program is run per peer and
  round instead (PROTOCOL.md §5), by default :mod:`worker.job`.
- ``windows``: every peer trains its local model with ``train_window`` and
  materializes it; a reducer loads every candidate artifact, merges them
  with sample (examples) and quality (``1 / (1 + train loss)``) weights,
  applies the single-root EMA and materializes the new canonical model;
  every peer then reconciles its local model with it.

Faults (:mod:`fakecoord.sim_faults`) never stop the run: the round completes
with the peers that finished, a peer whose worker died is restarted at the
start of the next round from the then-current base, and the report lists
each fault with its recovery.  Every round ends with an atomic checkpoint
from which :meth:`Simulation.run` continues when constructed with
``resume=True``.  Data leases are drawn from ``(seed, round)`` alone, so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import handling
from .client import WorkerClient
from .errors import FakecoordError, RemoteError, WorkerTimeout, describe_returncode
from .outer import AGGREGATES, CODECS, OuterError, OuterSGD, outer_round
from .sim_faults import Fault, fault_plan, parse_fault
from .sim_packs import PackIOError, check_compatible, read_pack, write_pack
from .sim_report import RunView
from .sim_shards import FAULT_KEY, REF_KIND, demo_leases, write_demo_dataset

ROOT = Path(__file__).resolve().parent.parent
"""The directory holding ``fakecoord`` and ``worker``: put on every child's PYTHONPATH."""
DEMO_FACTORY = "fakecoord.demo:make_workload"
CHECKPOINT_NAME = "checkpoint.json"
CHECKPOINT_FORMAT = "fakecoord-sim-checkpoint-v1"
REPORT_NAME = "report.json"
REPORT_FORMAT = "fakecoord-sim-report-v1"
PROTOCOLS = ("diloco", "windows")
BACKENDS = ("worker", "command")
MERGE_POLICIES = (
    "WeightedMean",
    "NormClippedWeightedMean",
    "TrimmedMean",
    "Ema",
    "QualityWeightedEma",
)
UNKNOWN_MODEL = "fakecoord-fault-injected-unknown-model"
"""The model id sent to a non-demo workload for ``--fault error``: every worker must refuse it."""


class SimError(FakecoordError):
    """The simulation cannot run: invalid settings, no worker could start, a bad checkpoint."""


class JobFailed(FakecoordError):
    """A checkpoint-command job exited with a non-zero status; the message quotes its log."""

    def __init__(self, returncode: int, log: Path) -> None:
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        reason = next(
            (ln for ln in lines if ln.startswith("burn-p2p job:")), lines[-1] if lines else ""
        )
        super().__init__(
            f"job command exited ({describe_returncode(returncode)}): {reason or 'no output'} (log: {log})"
        )
        self.returncode = returncode


class SimStopped(FakecoordError):
    """Raised inside peer threads once the run is being torn down (after Ctrl-C)."""


@dataclass
class SimConfig:
    """Every setting of a run (what ``python -m fakecoord run`` parses into)."""

    protocol: str = "diloco"
    peers: int = 4
    rounds: int = 10
    inner_steps: int = 20
    seed: int = 0
    factory: str | None = None
    """None: the built-in demo workload."""
    config: Any = None
    batches: str | None = None
    """A JSON file (a list of batch refs per peer, or one list dealt round-robin) or a data directory."""
    worker_cmd: list[str] | None = None
    faults: list[Fault] = field(default_factory=list)
    aggregate: str = "mean"
    codec: str = "fp32"
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    diloco_backend: str = "worker"
    command: list[str] | None = None
    baseline: bool = False
    baseline_steps: str = "total"
    """``total``: peers x inner_steps per round on all peers' batches; ``per-peer``: inner_steps on peer 0's."""
    merge_policy: Any = "QualityWeightedEma"
    reconcile: Any = field(default_factory=lambda: {"RootEma": {"canonical_weight": 0.75}})
    call_timeout: float = 60.0
    start_timeout: float = 60.0
    device: str = "cpu"
    microshards_per_step: int = 2
    state_dict_filter: dict | None = None
    eval_metric: str = "loss"

    @property
    def is_demo(self) -> bool:
        return self.factory is None or self.factory == DEMO_FACTORY

    def validate(self) -> None:
        """Raise :class:`SimError` naming the first invalid setting."""
        checks = [
            (self.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}"),
            (self.peers >= 1, "--peers must be at least 1"),
            (self.rounds >= 1, "--rounds must be at least 1"),
            (self.inner_steps >= 1, "--inner-steps must be at least 1"),
            (self.aggregate in AGGREGATES, f"--aggregate must be one of {', '.join(AGGREGATES)}"),
            (self.codec in CODECS, f"--codec must be one of {', '.join(CODECS)}"),
            (
                self.diloco_backend in BACKENDS,
                f"--diloco-backend must be one of {', '.join(BACKENDS)}",
            ),
            (self.call_timeout > 0, "--call-timeout must be positive"),
            (self.start_timeout > 0, "--start-timeout must be positive"),
            (self.microshards_per_step >= 1, "--microshards-per-step must be at least 1"),
            (
                self.baseline_steps in ("total", "per-peer"),
                "--baseline-steps must be total or per-peer",
            ),
            (
                self.diloco_backend == "worker" or self.protocol == "diloco",
                "--diloco-backend command only applies to --protocol diloco",
            ),
            (
                self.command is None or self.diloco_backend == "command",
                "--command needs --diloco-backend command",
            ),
            (self.factory is not None or self.config is None, "--config-json needs --factory"),
            (
                self.factory is None or self.batches is not None,
                "--factory needs --batches FILE|DIR (the demo data only fits the demo workload)",
            ),
            (bool(self.command) or self.command is None, "--command must name a program"),
            (bool(self.worker_cmd) or self.worker_cmd is None, "--worker-cmd must name a program"),
        ]
        for ok, message in checks:
            if not ok:
                raise SimError(message)
        try:
            OuterSGD(self.outer_lr, self.outer_momentum, self.nesterov)
        except OuterError as exc:
            raise SimError(str(exc)) from None
        if self.factory is not None and self.factory.partition(":")[2] == "":
            raise SimError(f"--factory must be MODULE:ATTR, got {self.factory!r}")
        fault_plan(self.faults, self.peers, self.rounds)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["faults"] = [f.spec for f in self.faults]
        return data

    @classmethod
    def from_json(cls, data: dict) -> SimConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["faults"] = [parse_fault(s) for s in values.get("faults", [])]
        return cls(**values)


@dataclass
class PeerOutcome:
    """What one peer did in one round."""

    peer: int
    ok: bool = False
    metrics: dict = field(default_factory=dict)
    steps_completed: int | None = None
    values: Any = None
    local_id: str | None = None
    artifact: str | None = None
    inner_opt: str | None = None
    error: str | None = None
    injected: str | None = None
    worker_seconds: float = 0.0
    pid: int | None = None

    def record(self) -> dict:
        out: dict[str, Any] = {
            "status": "ok" if self.ok else "failed",
            "metrics": self.metrics,
            "worker_seconds": round(self.worker_seconds, 6),
        }
        if self.steps_completed is not None:
            out["steps_completed"] = self.steps_completed
        if self.error is not None:
            out["error"] = self.error
        if self.injected is not None:
            out["fault_injected"] = self.injected
        return out


class _Slot:
    """One worker process slot (a peer, the baseline, or the evaluator)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.client: WorkerClient | None = None
        self.pids: list[int] = []

    @property
    def alive(self) -> bool:
        return self.client is not None and self.client.returncode is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _rel(out: Path, path: Path | str | None) -> str | None:
    if path is None:
        return None
    return os.path.relpath(path, out)


class Simulation:
    """One run.  ``run()`` returns the report; Ctrl-C propagates as KeyboardInterrupt
    after every worker was killed and reaped (the last checkpoint stays valid).

    Raises :class:`SimError` for invalid settings or when the run cannot
    proceed at all (no worker starts, the initial model cannot be made).
    """

    def __init__(
        self,
        config: SimConfig,
        out: str | os.PathLike,
        *,
        view: RunView | None = None,
        resume: bool = False,
        stop_after_round: int | None = None,
        on_round: Callable[[int], None] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.out = Path(out).resolve()
        self.view = view or RunView()
        self.resume = resume
        self.stop_after_round = stop_after_round
        self.on_round = on_round
        self.faults = fault_plan(config.faults, config.peers, config.rounds)
        self.peer_slots = [_Slot(f"peer-{p}") for p in range(config.peers)]
        self.baseline_slot = _Slot("baseline")
        self.eval_slot = _Slot("evaluator")
        self.outer = OuterSGD(config.outer_lr, config.outer_momentum, config.nesterov)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._intervals: list[tuple[float, float]] = []
        self._procs: set[subprocess.Popen] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._pending_recovery: dict[int, dict] = {}
        self._started = time.monotonic()
        self._prior_wall = 0.0
        self.dataset: Any = None
        self.user_batches: list[list[dict]] | None = None
        self.state: dict[str, Any] = {}
        self.report: dict[str, Any] = {}

    # -- public ----------------------------------------------------------------

    def run(self) -> dict:
        started = self._started = time.monotonic()
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.peers + 2, thread_name_prefix="peer"
        )
        interrupted = False
        try:
            self._prepare()
            startup = time.monotonic() - started
            self.report["timings"]["startup_seconds"] += startup
            first = self.state["completed_rounds"] + 1
            self.view.start(self.config.rounds, first - 1, self._describe())
            for r in range(first, self.config.rounds + 1):
                if self.on_round is not None:
                    self.on_round(r)
                record = self._round(r)
                self._commit(r, record)
                self.view.round_done(record)
                if self.stop_after_round is not None and r >= self.stop_after_round:
                    self.report["stopped_after_round"] = r
                    break
            self._finish(time.monotonic() - started)
            return self.report
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.view.close()
            self._teardown(interrupted)

    # -- setup -------------------------------------------------------------------

    def _describe(self) -> str:
        c = self.config
        workload = "demo workload" if c.is_demo else c.factory
        what = (
            f"{c.protocol}, {c.peers} peers, {c.rounds} rounds x {c.inner_steps} steps, {workload}"
        )
        if c.protocol == "diloco":
            what += f", {c.aggregate}/{c.codec}, outer lr {c.outer_lr} momentum {c.outer_momentum}"
            what += " nesterov" if c.nesterov else ""
            if c.diloco_backend == "command":
                what += ", command backend"
        return f"fakecoord run: {what}; run directory {self.out}"

    def _worker_config(self) -> Any:
        if self.config.is_demo:
            return {"data_dir": str(self.out / "data"), "seed": self.config.seed}
        return self.config.config if self.config.config is not None else {}

    def _prepare(self) -> None:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        if c.is_demo:
            self.dataset = write_demo_dataset(self.out / "data", c.seed)
        if c.batches is not None:
            self.user_batches = load_batches(c.batches, c.peers)
        checkpoint = self.out / CHECKPOINT_NAME
        if self.resume:
            self._load_checkpoint(checkpoint)
        else:
            if checkpoint.exists():
                raise SimError(
                    f"{self.out} already holds a run (checkpoint.json); continue it with "
                    "--resume, or choose another --out"
                )
            self.report = self._new_report()
            self.state = {"completed_rounds": 0}
        self._prior_wall = self.report["timings"]["wall_seconds"]
        if self.state["completed_rounds"] >= c.rounds:
            self.view.event(f"{self.out}: all {c.rounds} rounds are done already")
            return
        slots = list(self.peer_slots)
        if c.diloco_backend == "command":
            slots = [self.eval_slot]
        if c.baseline:
            slots.append(self.baseline_slot)
        self._start_slots(slots)
        if not self.resume:
            self._initial_state(next(s for s in slots if s.alive))
        else:
            self.view.event(f"resuming after round {self.state['completed_rounds']}")
            self.report.setdefault("resumed", []).append(
                {"after_round": self.state["completed_rounds"]}
            )

    def _new_report(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "settings": self.config.to_json(),
            "workload": {},
            "model_schema_hash": schema_hash(self.config),
            "initial_eval_loss": None,
            "final_eval_loss": None,
            "initial_eval_metrics": {},
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
            },
        }

    def _start_slots(self, slots: Sequence[_Slot]) -> None:
        futures = {slot.label: self._submit(self._spawn, slot, 0) for slot in slots}
        errors = []
        for label, future in futures.items():
            try:
                future.result()
            except FakecoordError as exc:
                errors.append(f"{label}: {_first_line(exc)}")
        if errors and not any(s.alive for s in slots):
            raise SimError("no worker could start:\n  " + "\n  ".join(errors))
        for message in errors:
            self.view.event(f"[yellow]worker start failed[/] {message} (retried next round)")

    def _spawn(self, slot: _Slot, round_index: int) -> WorkerClient:
        if self._stopping.is_set():
            raise SimStopped("the run is stopping")
        c = self.config
        started = time.monotonic()
        try:
            client = WorkerClient.spawn(
                c.factory or DEMO_FACTORY,
                self._worker_config(),
                worker_cmd=c.worker_cmd,
                pythonpath=(str(ROOT),),
                call_timeout=c.call_timeout,
                accept_timeout=c.start_timeout,
                stderr=str(self.out / "logs" / f"{slot.label}.log"),
            )
            slot.client = client
            slot.pids.append(client.pid)
            with self._lock, open(self.out / "logs" / "workers.jsonl", "a") as f:
                f.write(
                    json.dumps({"slot": slot.label, "pid": client.pid, "round": round_index}) + "\n"
                )
            hello = client.hello()
        finally:
            self._interval(started)
        if self._stopping.is_set():
            client.kill()
            raise SimStopped("the run is stopping")
        needs_job = (
            c.protocol == "diloco" and c.diloco_backend == "worker" and slot is not self.eval_slot
        )
        if needs_job and "diloco_checkpoint_job" not in hello["capabilities"]:
            client.close()
            raise SimError(
                f"the workload {hello['workload_name']!r} does not advertise diloco_checkpoint_job "
                "(it has no run_inner_loop); use --protocol windows or --diloco-backend command"
            )
        with self._lock:
            self.report["workload"] = {
                "workload_name": hello["workload_name"],
                "protocol_version": hello["protocol_version"],
                "capabilities": hello["capabilities"],
            }
        return client

    def _initial_state(self, slot: _Slot) -> None:
        c = self.config
        client = self._require(slot)
        round_dir = self.out / "rounds" / "0000"
        round_dir.mkdir(parents=True, exist_ok=True)
        model_id = self._timed(client.init_model, c.device)
        if c.protocol == "diloco":
            plan = self._timed(handling.plan_or_none, client, c.device, c.state_dict_filter)
            if plan is not None:
                try:
                    handling.check_diloco_plan(plan)
                except FakecoordError as exc:
                    raise SimError(str(exc)) from None
                self.report["plan"] = {
                    k: plan.get(k)
                    for k in ("layout_hash", "parameter_count", "uses_custom_parameter_pack_hooks")
                }
            else:
                self.report["plan"] = None
                self.view.event(
                    "the worker does not know parameter_pack_plan (treated as 'no plan')"
                )
            base = round_dir / "base"
            self._timed(
                handling.export_checked,
                client, model_id, base, self.report["model_schema_hash"], c.state_dict_filter,
            )  # fmt: skip
            self.state.update(
                base=_rel(self.out, base),
                velocity=None,
                inner_opt={str(p): None for p in range(c.peers)},
                baseline_pack=_rel(self.out, base),
                baseline_opt=None,
            )
        else:
            canonical = round_dir / "canonical.safetensors"
            self._timed(client.materialize_model_artifact, model_id, canonical)
            self.state.update(
                canonical=_rel(self.out, canonical),
                local={str(p): _rel(self.out, canonical) for p in range(c.peers)},
                baseline_artifact=_rel(self.out, canonical),
            )
        metrics = self._timed(handling.evaluate_metrics, client, model_id, "Validation")
        self._timed(client.release_model, model_id)
        self.report["initial_eval_metrics"] = metrics
        self.report["initial_eval_loss"] = self._loss(metrics)
        if c.baseline:
            total = c.baseline_steps == "total"
            self.report["baseline"] = {
                "steps_per_round": c.peers * c.inner_steps if total else c.inner_steps,
                "description": (
                    "one peer, the same total steps and batches as all peers together"
                    if total
                    else "one peer, the same steps and batches as peer 0"
                ),
                "eval_losses": [],
                "final_eval_loss": None,
            }
        self._write_checkpoint()

    # -- rounds -------------------------------------------------------------------

    def _round(self, r: int) -> dict:
        started = time.monotonic()
        mark = len(self._intervals)
        round_dir = self.out / "rounds" / f"{r:04d}"
        if round_dir.exists():  # leftovers of an interrupted attempt at this round
            shutil.rmtree(round_dir)
        round_dir.mkdir(parents=True)
        leases = self._leases(r)
        if self.config.protocol == "diloco":
            record = self._diloco_round(r, round_dir, leases)
        else:
            record = self._windows_round(r, round_dir, leases)
        ended = time.monotonic()
        with self._lock:
            intervals = self._intervals[mark:]
        worker = _union_seconds(intervals, started, ended)
        record["timings"] = {
            "round_seconds": round(ended - started, 6),
            "worker_call_seconds": round(worker, 6),
            "coordinator_seconds": round(ended - started - worker, 6),
        }
        return record

    def _leases(self, r: int) -> list[list[dict]]:
        c = self.config
        if self.user_batches is not None:
            # Each peer walks its own list, wrapping around: round r takes the next H refs.
            return [
                [refs[((r - 1) * c.inner_steps + i) % len(refs)] for i in range(c.inner_steps)]
                for refs in self.user_batches
            ]
        return demo_leases(self.dataset, c.seed, r, c.peers, c.inner_steps, c.microshards_per_step)

    def _diloco_round(self, r: int, round_dir: Path, leases: list[list[dict]]) -> dict:
        c = self.config
        base_path = self.out / self.state["base"]
        faults = self.faults.get(r, {})
        task = self._command_peer if c.diloco_backend == "command" else self._diloco_peer
        futures = {
            p: self._submit(
                task, r, p, round_dir / f"peer-{p}", base_path, leases[p], faults.get(p)
            )
            for p in range(c.peers)
        }
        baseline = self._submit(self._diloco_baseline, r, round_dir, leases) if c.baseline else None
        outcomes = {p: self._outcome(p, f) for p, f in futures.items()}
        base_manifest, base_values = read_pack(base_path)
        contributors = [p for p, o in outcomes.items() if o.ok]
        new_base_dir = round_dir / "base"
        aggregate: dict[str, Any] = {
            "method": c.aggregate,
            "codec": c.codec,
            "contributors": len(contributors),
        }
        if contributors:
            velocity = None
            if self.state.get("velocity"):
                velocity = np.load(self.out / self.state["velocity"], allow_pickle=False)
            new_base, new_velocity, gradient = outer_round(
                base_values,
                [outcomes[p].values for p in contributors],
                velocity,
                self.outer,
                c.aggregate,
                c.codec,
            )
            write_pack(new_base_dir, base_manifest, new_base)
            velocity_path = round_dir / "outer_velocity.npy"
            np.save(velocity_path, new_velocity, allow_pickle=False)
            aggregate["pseudo_gradient_norm"] = float(np.linalg.norm(gradient))
            aggregate["update_norm"] = float(np.linalg.norm(new_base - base_values))
            self.state["pending"] = {
                "base": _rel(self.out, new_base_dir),
                "velocity": _rel(self.out, velocity_path),
            }
        else:
            # Nobody finished: the base and the momentum stay as they were.
            write_pack(new_base_dir, base_manifest, base_values)
            self.state["pending"] = {
                "base": _rel(self.out, new_base_dir),
                "velocity": self.state.get("velocity"),
            }
        self.state["pending"]["inner_opt"] = {
            str(p): _rel(self.out, o.inner_opt)
            if o.ok and o.inner_opt
            else self.state["inner_opt"][str(p)]
            for p, o in outcomes.items()
        }
        eval_metrics = self._evaluate_pack(new_base_dir)
        record = self._record(r, outcomes, eval_metrics)
        record["aggregate"] = aggregate
        if baseline is not None:
            record["baseline"] = baseline.result()
        return record

    def _diloco_peer(
        self, r: int, p: int, peer_dir: Path, base: Path, lease: list[dict], fault: Fault | None
    ) -> PeerOutcome:
        c = self.config
        outcome = PeerOutcome(p)
        slot = self.peer_slots[p]
        model_id = None
        try:
            client = self._ensure(slot, r, p)
            outcome.pid = client.pid
            t = time.monotonic()
            peer_dir.mkdir(parents=True, exist_ok=True)
            model_id = self._timed(
                client.import_parameter_pack, c.device, base, c.state_dict_filter
            )
            job: dict[str, Any] = {
                "model_id": model_id,
                "batches": lease,
                "num_inner_steps": c.inner_steps,
                "inner_optimizer_state_path": str(self._inner_opt_path(p, peer_dir)),
                "output_parameter_pack_path": str(peer_dir / "pack"),
                "model_schema_hash": self.report["model_schema_hash"],
                "require_exact_steps": True,
            }
            if c.state_dict_filter is not None:
                job["state_dict_filter"] = c.state_dict_filter
            if fault is not None:
                job, outcome.injected = self._inject(fault, slot, job)
            result = self._timed(client.run_inner_loop, job)
            self._timed(client.release_model, model_id)
            model_id = None
            outcome.worker_seconds = time.monotonic() - t
            outcome.metrics = {**result["metrics"], **handling.batch_counts(lease)}
            outcome.steps_completed = result["steps_completed"]
            outcome.values = self._read_local(peer_dir / "pack", base)
            outcome.inner_opt = result.get("inner_optimizer_state_path") or (
                job["inner_optimizer_state_path"]
                if os.path.exists(job["inner_optimizer_state_path"])
                else None
            )
            outcome.ok = True
        except (FakecoordError, OSError) as exc:
            outcome.error = _first_line(exc)
            self._after_failure(slot, exc, model_id)
        return outcome

    def _inner_opt_path(self, p: int, peer_dir: Path) -> Path:
        """A fresh copy of the peer's committed inner-optimizer state for this round."""
        target = peer_dir / "inner_optimizer.pt"
        previous = self.state["inner_opt"].get(str(p))
        if previous:
            source = self.out / previous
            if source.is_dir():
                shutil.copytree(source, target)
            elif source.exists():
                shutil.copy2(source, target)
        return target

    def _read_local(self, pack: Path, base: Path) -> np.ndarray:
        manifest, values = read_pack(pack)
        base_manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
        check_compatible(pack, manifest, base_manifest)
        return values

    def _command_peer(
        self, r: int, p: int, peer_dir: Path, base: Path, lease: list[dict], fault: Fault | None
    ) -> PeerOutcome:
        c = self.config
        outcome = PeerOutcome(p)
        peer_dir.mkdir(parents=True, exist_ok=True)
        job_path, result_path = peer_dir / "job.json", peer_dir / "result.json"
        job: dict[str, Any] = {
            "protocol_version": 1,
            "job_id": f"round-{r}-peer-{p}",
            "model_schema_hash": self.report["model_schema_hash"],
            "base_parameter_pack_path": str(base),
            "output_parameter_pack_path": str(peer_dir / "pack"),
            "result_manifest_path": str(result_path),
            "batches": lease,
            "num_inner_steps": c.inner_steps,
            "require_exact_steps": True,
            "state_dict_filter": c.state_dict_filter or {"include_globs": [], "exclude_globs": []},
            "inner_optimizer_state_path": str(self._inner_opt_path(p, peer_dir)),
        }
        proc = None
        try:
            if fault is not None and fault.kind == "error":
                job, outcome.injected = self._inject(fault, None, job)
            job_path.write_text(json.dumps(job, indent=2), encoding="utf-8")
            argv = [
                a.replace("{job_manifest}", str(job_path)).replace(
                    "{result_manifest}", str(result_path)
                )
                for a in self._command()
            ]
            env = dict(os.environ)
            env["BURN_P2P_DILOCO_JOB_MANIFEST"] = str(job_path)
            env["BURN_P2P_DILOCO_RESULT_MANIFEST"] = str(result_path)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            env["PYTHONUNBUFFERED"] = "1"
            if self._stopping.is_set():
                raise SimStopped("the run is stopping")
            started = time.monotonic()
            with open(peer_dir / "job.log", "wb") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
                )
            outcome.pid = proc.pid
            with self._lock:
                self._procs.add(proc)
            if fault is not None and fault.kind != "error":
                _, outcome.injected = self._inject(fault, proc.pid, job)
            try:
                status = proc.wait(timeout=c.call_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise WorkerTimeout(
                    f"job command: no result within {c.call_timeout:g} s; the process was killed",
                    "job command",
                    c.call_timeout,
                ) from None
            finally:
                self._interval(started)
                outcome.worker_seconds = time.monotonic() - started
            if status != 0:
                raise JobFailed(status, peer_dir / "job.log")
            result = _read_result(result_path, c.inner_steps)
            outcome.metrics = {**result.get("metrics", {}), **handling.batch_counts(lease)}
            outcome.steps_completed = result["steps_completed"]
            local = result.get("local_parameter_pack_path") or job["output_parameter_pack_path"]
            outcome.values = self._read_local(Path(local), base)
            outcome.inner_opt = result.get("inner_optimizer_state_path")
            outcome.ok = True
        except (FakecoordError, OSError, ValueError) as exc:
            outcome.error = _first_line(exc)
        finally:
            if proc is not None:
                with self._lock:
                    self._procs.discard(proc)
        return outcome

    def _command(self) -> list[str]:
        c = self.config
        if c.command is not None:
            return list(c.command)
        return [
            sys.executable, "-m", "worker.job",
            "--factory", c.factory or DEMO_FACTORY,
            "--config-json", json.dumps(self._worker_config()),
            "--device", c.device,
            "--job", "{job_manifest}",
        ]  # fmt: skip

    def _diloco_baseline(self, r: int, round_dir: Path, leases: list[list[dict]]) -> dict:
        c = self.config
        slot = self.baseline_slot
        out_dir = round_dir / "baseline"
        model_id = None
        try:
            client = self._ensure(slot, r, None)
            out_dir.mkdir(parents=True, exist_ok=True)
            model_id = self._timed(
                client.import_parameter_pack,
                c.device,
                self.out / self.state["baseline_pack"],
                c.state_dict_filter,
            )
            opt = out_dir / "inner_optimizer.pt"
            if self.state.get("baseline_opt"):
                shutil.copy2(self.out / self.state["baseline_opt"], opt)
            batches = self._baseline_batches(leases)
            job = {
                "model_id": model_id,
                "batches": batches,
                "num_inner_steps": len(batches),
                "inner_optimizer_state_path": str(opt),
                "output_parameter_pack_path": str(out_dir / "pack"),
                "model_schema_hash": self.report["model_schema_hash"],
                "require_exact_steps": True,
            }
            if c.state_dict_filter is not None:
                job["state_dict_filter"] = c.state_dict_filter
            result = self._timed(client.run_inner_loop, job)
            metrics = self._timed(handling.evaluate_metrics, client, model_id, "Validation")
            self._timed(client.release_model, model_id)
            self.state.setdefault("pending_baseline", {}).update(
                baseline_pack=_rel(self.out, out_dir / "pack"),
                baseline_opt=_rel(self.out, opt) if opt.exists() else None,
            )
            return {
                "eval_loss": self._loss(metrics),
                "eval_metrics": metrics,
                "train_metrics": result["metrics"],
            }
        except (FakecoordError, OSError) as exc:
            self._after_failure(slot, exc, model_id)
            return {"eval_loss": None, "error": _first_line(exc)}

    def _windows_round(self, r: int, round_dir: Path, leases: list[list[dict]]) -> dict:
        c = self.config
        faults = self.faults.get(r, {})
        futures = {
            p: self._submit(
                self._window_peer, r, p, round_dir / f"peer-{p}", leases[p], faults.get(p)
            )
            for p in range(c.peers)
        }
        baseline = self._submit(self._window_baseline, r, round_dir, leases) if c.baseline else None
        outcomes = {p: self._outcome(p, f) for p, f in futures.items()}
        record = self._record(r, outcomes, {})
        survivors = [p for p, o in outcomes.items() if o.ok]
        previous = self.out / self.state["canonical"]
        canonical = previous
        merge: dict[str, Any] = {
            "policy": c.merge_policy,
            "candidates": len(survivors),
            "merged": False,
        }
        eval_metrics: dict = {}
        if survivors:
            reducer = survivors[(r - 1) % len(survivors)]
            merge["reducer"] = reducer
            try:
                canonical, merged, eval_metrics = self._reduce(
                    r, round_dir, reducer, outcomes, survivors
                )
                merge["merged"] = merged
            except (FakecoordError, OSError) as exc:
                merge["error"] = _first_line(exc)
                self._unplanned(r, reducer, exc, "merge")
                self._after_failure(self.peer_slots[reducer], exc, None)
        if not eval_metrics:
            eval_metrics = self._evaluate_artifact(canonical)
        reconciled = {
            p: self._submit(self._reconcile_peer, r, p, outcomes[p], canonical)
            for p in survivors
            if self.peer_slots[p].alive
        }
        local = {}
        for p in range(c.peers):
            local[str(p)] = _rel(self.out, canonical)
            if p in reconciled:
                try:
                    local[str(p)] = _rel(self.out, reconciled[p].result())
                except (FakecoordError, OSError) as exc:
                    self._unplanned(r, p, exc, "reconcile")
        self.state["pending"] = {"canonical": _rel(self.out, canonical), "local": local}
        record["eval_loss"] = self._loss(eval_metrics)
        record["eval_metrics"] = eval_metrics
        record["merge"] = merge
        if baseline is not None:
            record["baseline"] = baseline.result()
        return record

    def _window_peer(
        self, r: int, p: int, peer_dir: Path, lease: list[dict], fault: Fault | None
    ) -> PeerOutcome:
        c = self.config
        outcome = PeerOutcome(p)
        slot = self.peer_slots[p]
        model_id = None
        try:
            client = self._ensure(slot, r, p)
            outcome.pid = client.pid
            t = time.monotonic()
            peer_dir.mkdir(parents=True, exist_ok=True)
            model_id = self._timed(client.init_model, c.device)
            self._timed(
                client.load_model_artifact, model_id, self.out / self.state["local"][str(p)]
            )
            call_id = model_id
            if fault is not None:
                job, outcome.injected = self._inject(
                    fault, slot, {"model_id": model_id, "batches": lease}
                )
                call_id, lease = job["model_id"], job["batches"]
            metrics = self._timed(handling.train_window_metrics, client, call_id, lease)
            candidate = peer_dir / "candidate.safetensors"
            self._timed(client.materialize_model_artifact, model_id, candidate)
            outcome.worker_seconds = time.monotonic() - t
            outcome.metrics, outcome.artifact, outcome.local_id = metrics, str(candidate), model_id
            outcome.ok = True
        except (FakecoordError, OSError) as exc:
            outcome.error = _first_line(exc)
            self._after_failure(slot, exc, model_id)
        return outcome

    def _reduce(
        self,
        r: int,
        round_dir: Path,
        reducer: int,
        outcomes: dict[int, PeerOutcome],
        survivors: list[int],
    ) -> tuple[Path, bool, dict]:
        c = self.config
        client = self._require(self.peer_slots[reducer])
        held: list[str] = []
        try:
            base_id = self._timed(client.init_model, c.device)
            held.append(base_id)
            self._timed(client.load_model_artifact, base_id, self.out / self.state["canonical"])
            candidates = []
            for p in survivors:
                cid = self._timed(client.init_model, c.device)
                held.append(cid)
                self._timed(client.load_model_artifact, cid, outcomes[p].artifact)
                metrics = outcomes[p].metrics
                loss = metrics.get("loss")
                candidates.append(
                    {
                        "peer_id": f"peer-{p}",
                        "head_id": f"round-{r}-peer-{p}",
                        "artifact_id": os.path.relpath(outcomes[p].artifact, self.out),
                        "model_id": cid,
                        "sample_weight": float(
                            metrics.get("examples_processed")
                            or metrics.get("examples")
                            or metrics["batch_count"]
                        ),
                        "quality_weight": 1.0 / (1.0 + float(loss))
                        if isinstance(loss, (int, float)) and loss >= 0
                        else 1.0,
                    }
                )
            merged = self._timed(client.merge_candidate_models, base_id, candidates, c.merge_policy)
            if merged is None:
                return self.out / self.state["canonical"], False, {}
            held.append(merged)
            self._timed(client.apply_single_root_ema, base_id, merged, c.merge_policy)
            canonical = round_dir / "canonical.safetensors"
            self._timed(client.materialize_model_artifact, merged, canonical)
            metrics = self._timed(handling.evaluate_metrics, client, merged, "Validation")
            return canonical, True, metrics
        finally:
            for model_id in held:
                if client.returncode is None:
                    try:
                        self._timed(client.release_model, model_id)
                    except FakecoordError:
                        break

    def _reconcile_peer(self, r: int, p: int, outcome: PeerOutcome, canonical: Path) -> Path:
        c = self.config
        slot = self.peer_slots[p]
        client = self._require(slot)
        canon_id = None
        try:
            canon_id = self._timed(client.init_model, c.device)
            self._timed(client.load_model_artifact, canon_id, canonical)
            assert outcome.local_id is not None
            self._timed(client.reconcile_canonical_model, outcome.local_id, canon_id, c.reconcile)
            local = canonical.parent / f"peer-{p}" / "local.safetensors"
            self._timed(client.materialize_model_artifact, canon_id, local)
            for model_id in (outcome.local_id, canon_id):
                self._timed(client.release_model, model_id)
            return local
        except (FakecoordError, OSError) as exc:
            self._after_failure(slot, exc, None)
            raise

    def _window_baseline(self, r: int, round_dir: Path, leases: list[list[dict]]) -> dict:
        c = self.config
        slot = self.baseline_slot
        model_id = None
        try:
            client = self._ensure(slot, r, None)
            model_id = self._timed(client.init_model, c.device)
            self._timed(
                client.load_model_artifact, model_id, self.out / self.state["baseline_artifact"]
            )
            train = self._timed(
                handling.train_window_metrics, client, model_id, self._baseline_batches(leases)
            )
            artifact = round_dir / "baseline.safetensors"
            self._timed(client.materialize_model_artifact, model_id, artifact)
            metrics = self._timed(handling.evaluate_metrics, client, model_id, "Validation")
            self._timed(client.release_model, model_id)
            self.state.setdefault("pending_baseline", {})["baseline_artifact"] = _rel(
                self.out, artifact
            )
            return {
                "eval_loss": self._loss(metrics),
                "eval_metrics": metrics,
                "train_metrics": train,
            }
        except (FakecoordError, OSError) as exc:
            self._after_failure(slot, exc, model_id)
            return {"eval_loss": None, "error": _first_line(exc)}

    def _baseline_batches(self, leases: list[list[dict]]) -> list[dict]:
        if self.config.baseline_steps == "per-peer":
            return list(leases[0])
        return _interleave(leases)

    # -- evaluation ---------------------------------------------------------------

    def _eval_slots(self) -> list[_Slot]:
        if self.config.diloco_backend == "command":
            return [self.eval_slot]
        return [s for s in self.peer_slots if s.alive] or [self.peer_slots[0]]

    def _evaluate_pack(self, pack: Path) -> dict:
        def run(client: WorkerClient) -> dict:
            model_id = self._timed(
                client.import_parameter_pack,
                self.config.device,
                pack,
                self.config.state_dict_filter,
            )
            metrics = self._timed(handling.evaluate_metrics, client, model_id, "Validation")
            self._timed(client.release_model, model_id)
            return metrics

        return self._evaluate_with(run)

    def _evaluate_artifact(self, artifact: Path) -> dict:
        def run(client: WorkerClient) -> dict:
            model_id = self._timed(client.init_model, self.config.device)
            self._timed(client.load_model_artifact, model_id, artifact)
            metrics = self._timed(handling.evaluate_metrics, client, model_id, "Validation")
            self._timed(client.release_model, model_id)
            return metrics

        return self._evaluate_with(run)

    def _evaluate_with(self, run: Callable[[WorkerClient], dict]) -> dict:
        """Evaluate on the first usable worker, restarting one if none is left."""
        last: Exception | None = None
        for slot in self._eval_slots()[:2]:
            try:
                return run(self._ensure(slot, None, None))
            except (FakecoordError, OSError) as exc:
                last = exc
                self._after_failure(slot, exc, None)
        return {"python_error": f"evaluation failed: {_first_line(last) if last else 'no worker'}"}

    def _loss(self, metrics: dict) -> float | None:
        value = metrics.get(self.config.eval_metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return None

    # -- faults and recovery ---------------------------------------------------------

    def _inject(self, fault: Fault, target: _Slot | int | None, job: dict) -> tuple[dict, str]:
        """Apply ``fault`` just before the peer's training call; returns the job to send."""
        if fault.kind == "error":
            job = dict(job)
            if self.config.is_demo:
                batches = [dict(ref) for ref in job["batches"]]
                batches[-1][FAULT_KEY] = "error"
                job["batches"] = batches
                return (
                    job,
                    "the last batch ref carries fault_inject=error (the demo workload raises on it)",
                )
            if "base_parameter_pack_path" in job:
                job["base_parameter_pack_path"] = (
                    job["base_parameter_pack_path"] + ".fault-injected-missing"
                )
                return job, "the job names a base pack that does not exist"
            job["model_id"] = UNKNOWN_MODEL
            return job, f"the call names model {UNKNOWN_MODEL!r}, which every worker must refuse"
        pid = target.client.pid if isinstance(target, _Slot) and target.client else target
        assert isinstance(pid, int)
        sig = signal.SIGKILL if fault.kind == "crash" else signal.SIGSTOP
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        return job, f"{sig.name} sent to pid {pid}"

    def _after_failure(self, slot: _Slot, exc: BaseException, model_id: str | None) -> None:
        """Leave ``slot`` usable for the next round.

        After a refusal (``RemoteError``) or a bad result file the worker is
        still in step: release the model the failed step left behind.  After
        a dead, hung or out-of-step worker, kill and reap it; the next round
        restarts it.
        """
        client = slot.client
        if client is None:
            return
        in_step = isinstance(exc, (RemoteError, PackIOError, OSError, ValueError))
        if in_step and client.returncode is None:
            try:
                if model_id is not None:
                    self._timed(client.release_model, model_id)
                return
            except FakecoordError:
                pass
        client.kill()
        client.close()

    def _ensure(self, slot: _Slot, r: int | None, peer: int | None) -> WorkerClient:
        """The slot's client, restarting the worker if it died (recorded as a recovery)."""
        if slot.alive:
            return slot.client  # type: ignore[return-value]
        old = slot.pids[-1] if slot.pids else None
        if slot.client is not None:
            slot.client.kill()
            slot.client.close()
            slot.client = None
        client = self._spawn(slot, r or 0)
        if peer is not None and r is not None:
            self.view.event(f"round {r}: restarted {slot.label} (pid {old} -> {client.pid})")
        return client

    def _require(self, slot: _Slot) -> WorkerClient:
        if not slot.alive:
            raise SimError(f"{slot.label}: no running worker")
        return slot.client  # type: ignore[return-value]

    def _outcome(self, p: int, future: Future) -> PeerOutcome:
        try:
            return future.result()
        except SimError as exc:
            return PeerOutcome(p, error=_first_line(exc))

    def _record(self, r: int, outcomes: dict[int, PeerOutcome], eval_metrics: dict) -> dict:
        faults = self.faults.get(r, {})
        finished = sum(o.ok for o in outcomes.values())
        for p, outcome in outcomes.items():
            pending = self._pending_recovery.pop(p, None)
            if pending is not None:
                pending["recovery"] = self._recovery(r, pending, outcome)
            if outcome.ok:
                continue
            fault = faults.get(p)
            entry = {
                "spec": fault.spec if fault else f"unplanned@{p}:{r}",
                "kind": fault.kind if fault else "unplanned",
                "peer": p,
                "round": r,
                "planned": fault is not None,
                "injected": outcome.injected,
                "error": outcome.error,
                "effect": f"round {r} aggregated {finished} of {len(outcomes)} peers without it",
                "recovery": None,
                "pid": outcome.pid,
            }
            self.report["faults"].append(entry)
            self._pending_recovery[p] = entry
            self.view.event(
                f"[red]round {r}: peer {p} failed[/] ({entry['spec']}): {outcome.error}"
            )
        return {
            "round": r,
            "eval_loss": self._loss(eval_metrics),
            "eval_metrics": eval_metrics,
            "contributors": [p for p, o in outcomes.items() if o.ok],
            "failed": [p for p, o in outcomes.items() if not o.ok],
            "peers": {str(p): o.record() for p, o in outcomes.items()},
        }

    def _recovery(self, r: int, entry: dict, outcome: PeerOutcome) -> dict:
        """How a peer that failed earlier came back in round ``r`` (or did not)."""
        if not outcome.ok:
            return {
                "round": r,
                "action": f"not recovered: failed again in round {r}",
                "worker_restarted": False,
            }
        source = "base" if self.config.protocol == "diloco" else "canonical model"
        if self.config.diloco_backend == "command" and self.config.protocol == "diloco":
            action = f"a new job process (pid {outcome.pid}) ran from the round-{r - 1} {source}"
            restarted = True
        elif entry.get("pid") is not None and outcome.pid != entry["pid"]:
            action = (
                f"worker restarted (pid {entry['pid']} -> {outcome.pid}); rejoined in round {r} "
                f"from the round-{r - 1} {source}"
            )
            restarted = True
        else:
            action = f"same worker (pid {outcome.pid}); rejoined in round {r} from the round-{r - 1} {source}"
            restarted = False
        self.view.event(
            f"[green]round {r}: peer {outcome.peer} recovered[/] ({entry['spec']}): {action}"
        )
        return {"round": r, "action": action, "worker_restarted": restarted}

    def _unplanned(self, r: int, p: int, exc: BaseException, phase: str) -> None:
        entry = {
            "spec": f"unplanned@{p}:{r}",
            "kind": "unplanned",
            "peer": p,
            "round": r,
            "planned": False,
            "injected": None,
            "error": f"{phase}: {_first_line(exc)}",
            "effect": f"the peer's {phase} step in round {r} was skipped",
            "recovery": None,
            "pid": self.peer_slots[p].pids[-1] if self.peer_slots[p].pids else None,
        }
        self.report["faults"].append(entry)
        self._pending_recovery.setdefault(p, entry)

    # -- commit, checkpoint, report ------------------------------------------------

    def _commit(self, r: int, record: dict) -> None:
        pending = self.state.pop("pending")
        self.state.update(pending)
        self.state.update(self.state.pop("pending_baseline", {}))
        self.state["completed_rounds"] = r
        self.report["rounds"].append(record)
        if record.get("eval_loss") is not None:
            self.report["final_eval_loss"] = record["eval_loss"]
        baseline = self.report.get("baseline")
        if baseline is not None and record.get("baseline"):
            baseline["eval_losses"].append(record["baseline"].get("eval_loss"))
            if record["baseline"].get("eval_loss") is not None:
                baseline["final_eval_loss"] = record["baseline"]["eval_loss"]
        timings = self.report["timings"]
        timings["wall_seconds"] = round(self._prior_wall + time.monotonic() - self._started, 6)
        for key in ("round_seconds", "worker_call_seconds", "coordinator_seconds"):
            target = "rounds_seconds" if key == "round_seconds" else key
            timings[target] = round(timings[target] + record["timings"][key], 6)
        if timings["rounds_seconds"] > 0:
            timings["coordinator_overhead_share"] = round(
                timings["coordinator_seconds"] / timings["rounds_seconds"], 6
            )
        self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_json(),
            "state": {k: v for k, v in self.state.items() if not k.startswith("pending")},
            "pending_recovery": {str(k): v["spec"] for k, v in self._pending_recovery.items()},
            "report": self.report,
        }
        _write_json_atomic(self.out / CHECKPOINT_NAME, checkpoint)

    def _load_checkpoint(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SimError(f"--resume {self.out}: cannot read {CHECKPOINT_NAME} ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise SimError(
                f"--resume {self.out}: {CHECKPOINT_NAME} is not a {CHECKPOINT_FORMAT} file"
            )
        self.state = data["state"]
        self.report = data["report"]
        self.report["settings"] = self.config.to_json()
        self.report.pop("stopped_after_round", None)
        for p_text, spec in data.get("pending_recovery", {}).items():
            for entry in reversed(self.report["faults"]):
                if entry["spec"] == spec and entry["peer"] == int(p_text):
                    self._pending_recovery[int(p_text)] = entry
                    break

    def _finish(self, wall: float) -> None:
        done = self.state["completed_rounds"]
        if done >= self.config.rounds:
            for entry in self._pending_recovery.values():
                entry["recovery"] = {
                    "round": None,
                    "action": "none: the run ended before the peer's next round",
                    "worker_restarted": False,
                }
        self.report["timings"]["wall_seconds"] = round(self._prior_wall + wall, 6)
        self.report["completed_rounds"] = done
        self._write_checkpoint()
        _write_json_atomic(self.out / REPORT_NAME, self.report)
        self.view.finish(self.report)

    def _teardown(self, interrupted: bool) -> None:
        """Stop every worker and job process and reap it (kill first after an interrupt)."""
        self._stopping.set()
        slots = [*self.peer_slots, self.baseline_slot, self.eval_slot]
        if interrupted:
            for slot in slots:
                if slot.client is not None and slot.client.returncode is None:
                    try:
                        slot.client.process.kill()
                    except OSError:
                        pass
            with self._lock:
                procs = list(self._procs)
            for proc in procs:
                try:
                    proc.kill()
                except OSError:
                    pass
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for slot in slots:
            if slot.client is not None:
                slot.client.close()

    # -- plumbing ---------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        assert self._pool is not None
        return self._pool.submit(fn, *args)

    def _interval(self, started: float) -> None:
        with self._lock:
            self._intervals.append((started, time.monotonic()))

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._stopping.is_set():
            raise SimStopped("the run is stopping")
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._interval(started)


def _interleave(leases: list[list[dict]]) -> list[dict]:
    """All peers' refs step by step: peer 0 step 0, peer 1 step 0, ..., peer 0 step 1, ..."""
    longest = max((len(lease) for lease in leases), default=0)
    return [lease[i] for i in range(longest) for lease in leases if i < len(lease)]


def _union_seconds(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Total length of the union of ``intervals`` clipped to ``[lo, hi]``."""
    total, end = 0.0, lo
    for start, stop in sorted(intervals):
        start, stop = max(start, end), min(stop, hi)
        if stop > start:
            total += stop - start
            end = stop
    return total


def _read_result(path: Path, steps: int) -> dict:
    """Read a command backend result manifest (PROTOCOL.md §5); raises ``ValueError``."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"result manifest {str(path)!r}: cannot read ({exc})") from None
    if not isinstance(result, dict):
        raise ValueError(f"result manifest {str(path)!r}: expected a JSON object")
    done = result.get("steps_completed")
    if type(done) is not int or done != steps:
        raise ValueError(
            f"result manifest {str(path)!r}: steps_completed is {done!r}, but {steps} were required"
        )
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float, bool, str)) for v in metrics.values()
    ):
        raise ValueError(
            f"result manifest {str(path)!r}: metrics must map names to numbers, bools or strings"
        )
    for key in (
        "local_parameter_pack_path",
        "inner_optimizer_state_path",
        "inner_optimizer_state_encoding",
    ):
        if result.get(key) is not None and not isinstance(result[key], str):
            raise ValueError(f"result manifest {str(path)!r}: {key} must be a string")
    return result


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def schema_hash(config: SimConfig) -> str:
    """The model schema hash the run's packs carry: derived from the factory only, so a
    moved run directory (a different ``data_dir``) keeps it."""
    key = json.dumps(
        [config.factory or DEMO_FACTORY, None if config.is_demo else config.config], sort_keys=True
    )
    return "fakecoord-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def load_batches(source: str | os.PathLike, peers: int) -> list[list[dict]]:
    """Batch refs per peer from ``--batches``; raises :class:`SimError`.

    A JSON file holds either one list of refs per peer (``[[ref, ...], ...]``,
    exactly ``peers`` lists) or a single list of refs dealt round-robin.  A
    directory turns each regular file (sorted by name) into a one-microshard
    ``cached_microshard_group`` ref, dealt round-robin.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise SimError(f"--batches {str(path)!r}: the directory holds no files")
        refs = [
            {
                "kind": REF_KIND,
                "shard_paths": [str(f.resolve())],
                "microshard_ids": [f.name],
                "ordinals": [i],
                "bytes_len": f.stat().st_size,
            }
            for i, f in enumerate(files)
        ]
        return [refs[p::peers] for p in range(peers)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SimError(
            f"--batches {str(path)!r}: cannot read a JSON list of batch refs ({exc})"
        ) from None
    if not isinstance(data, list) or not data:
        raise SimError(f"--batches {str(path)!r}: expected a non-empty JSON list")
    if all(isinstance(item, list) for item in data):
        if len(data) != peers:
            raise SimError(
                f"--batches {str(path)!r}: holds {len(data)} per-peer lists for {peers} peers"
            )
        per_peer = data
    else:
        per_peer = [data[p::peers] for p in range(peers)]
    for p, refs in enumerate(per_peer):
        if not refs:
            raise SimError(f"--batches {str(path)!r}: peer {p} gets no batch refs")
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict) or not isinstance(ref.get("kind"), str):
                raise SimError(
                    f"--batches {str(path)!r}: peer {p} ref {i} is not a BatchRef object with a 'kind'"
                )
    return per_peer


def split_command(text: str, option: str) -> list[str]:
    """``shlex.split`` for ``--worker-cmd`` / ``--command``; raises :class:`SimError`."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise SimError(f"{option}: cannot split {text!r} ({exc})") from None
    if not argv:
        raise SimError(f"{option}: must name a program")
    return argv


__all__ = [
    "DEMO_FACTORY",
    "PeerOutcome",
    "SimConfig",
    "SimError",
    "Simulation",
    "load_batches",
    "schema_hash",
    "split_command",
]
