"""Worker processes of a run: slots, spawning, timing, fault injection, readable errors.

A :class:`Slot` is one worker process at a time (a peer's, the baseline's
or the evaluator's), restarted on demand.  :class:`Workers` owns every slot
and job process of a run, the intervals spent in worker calls (to split a
round's time into worker and coordinator time), and the stop flag.  A
:class:`PeerContext` is what a strategy's code gets to drive one slot in one
round.  Thread safety: a slot is used by one thread at a time (its peer's
thread, or the main thread between phases); shared lists are guarded by
``Workers.lock``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from .. import forkserver, spawn
from ..client import WorkerClient
from ..errors import (
    FakecoordError,
    JobFailed,
    PackError,
    RemoteError,
    SimError,
    SimStopped,
    WorkerExited,
    WorkerTimeout,
)
from ..network.rounds import runtime_device
from ..stderr import open_log
from . import bootstrap
from .config import SimConfig, ThreadChoice
from .faults import Fault
from .shards import FAULT_KEY

ROOT = Path(__file__).resolve().parent.parent.parent
"""The directory holding ``fakecoord`` (and ``worker``): put on every child's PYTHONPATH."""
UNKNOWN_MODEL = "fakecoord-fault-injected-unknown-model"
"""The model id sent to a non-demo workload for ``--fault error``: every worker must refuse it."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STOPPED_BY_SIGNAL = re.compile(r"^burn-p2p (worker|job): received SIG(INT|TERM)\b")
"""The line a worker (or job) writes when it stops on a signal sent to it."""
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Fault|Warning)\b")


def failing_line(stderr: str) -> str | None:
    """The line of a worker's stderr that says why it failed.

    The worker's own one-line reason (``burn-p2p worker: ...`` or
    ``burn-p2p job: ...``) when there is one, else the last exception line of
    a traceback, else the last non-empty line; None for an empty stderr.
    """
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("burn-p2p worker:", "burn-p2p job:")):
            return line
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else None


def read_tail(path: Path, start: int = 0, limit: int = 16384) -> str:
    """The last ``limit`` bytes of ``path`` after offset ``start`` ("" when unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(start, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception's message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Slot:
    """One worker process slot (a peer, the baseline, or the evaluator)."""

    def __init__(self, label: str, log: Path) -> None:
        self.label = label
        self.log = log
        self.client: WorkerClient | None = None
        self.pids: list[int] = []
        self.hello: dict | None = None
        self.runtime_device: str | None = None
        """The workload's own device string (``capability_probe``), asked at every start."""
        self.log_start = 0
        """Where the current worker's stderr starts in ``log`` (earlier workers' lines are older)."""
        self.lock = threading.RLock()
        """Held around every use by a peer (``--workers``: several peers share one slot)."""

    @property
    def alive(self) -> bool:
        return self.client is not None and self.client.returncode is None


class Workers:
    """Every worker and job process of a run (see the module docstring)."""

    def __init__(
        self,
        config: SimConfig,
        out: Path,
        threads: ThreadChoice,
        worker_config: Any,
    ) -> None:
        self.config = config
        self.out = out
        self.threads = threads
        self.factory_config = bootstrap.wrap(
            config.workload_factory, worker_config, threads.threads, config.seed
        )
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.signalled = threading.Event()
        """Set when a worker or job said it stopped on SIGINT/SIGTERM: the run is interrupted."""
        self.signalled_reason = ""
        self.intervals: list[tuple[float, float]] = []
        self.procs: set[subprocess.Popen] = set()
        self.peers = [
            Slot(f"peer-{p}", out / "logs" / f"peer-{p}.log") for p in range(config.peers)
        ]
        if config.workers is not None:  # peers dealt round-robin onto shared slots
            hosts = [
                Slot(f"worker-{w}", out / "logs" / f"worker-{w}.log") for w in range(config.workers)
            ]
            self.peers = [hosts[p % config.workers] for p in range(config.peers)]
        self.baseline = Slot("baseline", out / "logs" / "baseline.log")
        self.evaluator = Slot("evaluator", out / "logs" / "evaluator.log")
        self.forkserver: forkserver.ForkServer | None = None
        self.start_note = start_note(config)
        if self.start_note is None:
            env = spawn.child_environment(self.env(), self.pythonpath(), worker_root=True)
            # The demo's hand-written AdamW never imports torch.optim: no warm-up to share.
            self.forkserver = forkserver.ForkServer(
                env, out / "logs" / "forkserver.log", warmup=not config.is_demo
            )

    # -- environment ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """A child's environment: this one's, with the thread caps."""
        env = dict(os.environ)
        if self.threads.threads is not None:
            for name in THREAD_VARIABLES:
                env[name] = str(self.threads.threads)
        return env

    def pythonpath(self) -> tuple[str, ...]:
        return (os.getcwd(), str(ROOT))

    def start_description(self) -> str:
        """How workers started, for the header: forked, spawned, and why."""
        fs = self.forkserver
        if fs is None:
            return f"spawned ({self.start_note})"
        if fs.forked and not fs.spawned:
            return "forked from a fork server (torch imported once)"
        why = fs.notes[0] if fs.notes else fs.broken or "no worker started yet"
        return f"{fs.forked} forked, {fs.spawned} spawned ({why}; log: {self.rel(fs.log)})"

    # -- timing -------------------------------------------------------------------

    def record_interval(self, started: float) -> None:
        with self.lock:
            self.intervals.append((started, time.monotonic()))

    def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` and count its time as worker time; raises :class:`SimStopped` when stopping."""
        if self.stopping.is_set():
            raise SimStopped("the run is stopping")
        started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.record_interval(started)

    def mark(self) -> int:
        with self.lock:
            return len(self.intervals)

    def since(self, mark: int) -> list[tuple[float, float]]:
        with self.lock:
            return list(self.intervals[mark:])

    # -- processes ------------------------------------------------------------------

    def spawn(self, slot: Slot, round_index: int) -> WorkerClient:
        """Start the slot's worker; raises :class:`FakecoordError` with a readable reason."""
        if self.stopping.is_set():
            raise SimStopped("the run is stopping")
        c = self.config
        started = time.monotonic()
        for log in (slot.log, self.out / "logs" / "workers.jsonl"):
            try:
                open_log(log).close()  # never through a planted link (O_NOFOLLOW)
            except OSError as exc:
                raise SimError(f"{slot.label}: cannot open its log {str(log)!r} ({exc})") from None
        slot.log_start = slot.log.stat().st_size
        try:
            try:
                client = WorkerClient.spawn(
                    bootstrap.FACTORY,
                    self.factory_config,
                    worker_cmd=c.worker_cmd,
                    env=self.env(),
                    pythonpath=self.pythonpath(),
                    call_timeout=c.call_timeout,
                    accept_timeout=c.start_timeout,
                    stderr=str(slot.log),
                    forkserver=self.forkserver,
                )
            except FakecoordError as exc:
                raise self.explain(slot, exc) from None
            slot.client = client
            slot.pids.append(client.pid)
            line = {"slot": slot.label, "pid": client.pid, "round": round_index}
            with self.lock, open_log(self.out / "logs" / "workers.jsonl") as f:
                f.write((json.dumps(line) + "\n").encode("utf-8"))
            try:
                hello = client.hello()
                # lib.rs PythonTorchProject::new: the probe's runtime_device is every device.
                device = runtime_device(client)
            except FakecoordError as exc:
                raise self.explain(slot, exc) from None
        finally:
            self.record_interval(started)
        if self.stopping.is_set():
            client.kill()
            raise SimStopped("the run is stopping")
        slot.hello = hello
        slot.runtime_device = device
        return client

    def ensure(self, slot: Slot, round_index: int) -> WorkerClient:
        """The slot's client, (re)starting its worker when there is none or it died."""
        if slot.alive:
            return slot.client  # type: ignore[return-value]
        if slot.client is not None:
            slot.client.kill()
            slot.client.close()
            slot.client = None
        return self.spawn(slot, round_index)

    def explain(self, slot: Slot, exc: FakecoordError) -> FakecoordError:
        """``exc`` with the failing line of the worker's stderr and its log path added.

        Only for errors where the worker's stderr says more than the message
        (it exited or hung); refusals already carry the worker's reason.
        """
        if not isinstance(exc, (WorkerExited, WorkerTimeout)):
            return exc
        head = str(exc).split("; the end of its stderr:", 1)[0]
        line = failing_line(read_tail(slot.log, slot.log_start))
        if line and STOPPED_BY_SIGNAL.match(line):
            self.signalled_reason = f"{slot.label}: {line}"
            self.signalled.set()
        if line:
            head += f": {self.unwrap(line)}"
        explained = type(exc).__new__(type(exc))
        explained.__dict__.update(exc.__dict__)
        explained.args = (f"{head} (log: {self.rel(slot.log)})",)
        return explained

    def unwrap(self, line: str) -> str:
        """A worker's stderr line, naming the user's factory instead of the bootstrap wrapper."""
        wrapper, factory = repr(bootstrap.FACTORY), repr(self.config.workload_factory)
        line = line.replace(f"--factory {wrapper}: the factory raised FactoryError: ", "")
        return line.replace(wrapper, factory)

    def log_refusal(self, slot: Slot, round_index: int, exc: RemoteError) -> None:
        """Append a refused call's whole answer to ``slot``'s log (the worker's stderr file,
        opened for appending by the worker too)."""
        text = exc.message.rstrip("\n")
        header = f"--- fakecoord: round {round_index}: {exc.method} refused by the worker:"
        try:
            with self.lock, open(slot.log, "a", encoding="utf-8", errors="replace") as f:
                f.write(f"{header}\n{text}\n")
        except OSError:
            pass

    def rel(self, path: Path | str) -> str:
        """How messages name a file of the run: its absolute path."""
        return str(Path(path).resolve())

    def after_failure(self, slot: Slot, exc: BaseException, model_id: str | None) -> None:
        """Leave ``slot`` usable for the next round.

        After a refusal (``RemoteError``) or a bad result file the worker is
        still in step: release the model the failed step left behind.  After
        a dead, hung or out-of-step worker, kill and reap it; the next use
        restarts it.
        """
        client = slot.client
        if client is None:
            return
        in_step = isinstance(exc, (RemoteError, PackError, OSError, ValueError))
        if in_step and client.returncode is None:
            try:
                if model_id is not None:
                    self.timed(client.release_model, model_id)
                return
            except FakecoordError:
                pass
        client.kill()
        client.close()

    def run_job(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        timeout: float,
        on_start: Callable[[int], None],
    ) -> None:
        """Run a command-backend job; raises :class:`JobFailed`, :class:`WorkerTimeout`."""
        if self.stopping.is_set():
            raise SimStopped("the run is stopping")
        started = time.monotonic()
        with open_log(log, truncate=True) as sink:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                env=dict(env),
            )  # fmt: skip
        with self.lock:
            self.procs.add(proc)
        try:
            on_start(proc.pid)
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise WorkerTimeout(
                    f"job command: no result within {timeout:g} s; the process was killed "
                    f"(log: {self.rel(log)})",
                    "job command",
                    timeout,
                ) from None
        finally:
            self.record_interval(started)
            with self.lock:
                self.procs.discard(proc)
        if status != 0:
            reason = self.unwrap(failing_line(read_tail(log)) or "")
            if (
                status in (-signal.SIGINT, -signal.SIGTERM)
                or reason.startswith("KeyboardInterrupt")
                or STOPPED_BY_SIGNAL.match(reason)
            ):
                self.signalled_reason = f"job command: {reason or f'status {status}'}"
                self.signalled.set()
            raise JobFailed(status, self.rel(log), reason)

    def slots(self) -> list[Slot]:
        return list(dict.fromkeys([*self.peers, self.baseline, self.evaluator]))

    def teardown(self, interrupted: bool) -> None:
        """Stop every worker and job process and reap it (kill first after an interrupt)."""
        self.stopping.set()
        if interrupted:
            for slot in self.slots():
                if slot.client is not None and slot.client.returncode is None:
                    try:
                        slot.client.process.kill()
                    except OSError:
                        pass
            with self.lock:
                procs = list(self.procs)
            for proc in procs:
                try:
                    proc.kill()
                except OSError:
                    pass

    def close(self) -> None:
        """Close every worker (all at once: each waits for its worker to exit), then the fork server."""
        closing = [
            threading.Thread(target=slot.client.close, name=f"close-{slot.label}")
            for slot in self.slots()
            if slot.client is not None
        ]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()
        if self.forkserver is not None:
            self.forkserver.close()


def start_note(config: SimConfig) -> str | None:
    """Why workers of this run are spawned rather than forked (None: they are forked)."""
    if config.start_method == "spawn":
        return "--start-method spawn"
    if config.worker_cmd is not None:
        return "--worker-cmd is always spawned"
    return forkserver.unavailable()


class PeerContext:
    """What strategy code gets to drive one slot in one round.

    ``peer`` is the peer's index (None for the baseline and the evaluator);
    ``dir`` is this slot's directory of the round (created on first use);
    ``fault`` the crash, hang or error planned for it this round.
    """

    def __init__(
        self,
        workers: Workers,
        slot: Slot,
        round_index: int,
        directory: Path,
        peer: int | None = None,
        fault: Fault | None = None,
    ) -> None:
        self.workers = workers
        self.slot = slot
        self.round = round_index
        self.peer = peer
        self.fault = fault
        self.config = workers.config
        self.run_dir = workers.out
        self._dir = directory
        self.injected: str | None = None
        self._applied = False
        self.pid: int | None = None
        self.log: Path = slot.log
        """The log that explains this slot's failures (a job's own log for the command backend)."""
        self.detail: str | None = None
        """The whole text behind this round's last failed call (the worker's answer with the
        hook's traceback, or the end of a dead worker's stderr): the report's ``traceback``."""

    @property
    def dir(self) -> Path:
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir

    def client(self) -> WorkerClient:
        """This slot's worker, as strategy code must use it: its training calls
        (``run_inner_loop``, ``train_window``) get the round's planned fault first
        (see :meth:`apply_fault`), whether or not the strategy calls :meth:`inject`."""
        with self.slot.lock:
            client = self.workers.ensure(self.slot, self.round)
        self.pid = client.pid
        if self.fault is None:
            return client
        return cast(WorkerClient, _FaultingClient(client, self))

    def run_job(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout: float,
        job_path: Path,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        """Run a command-backend job (its manifest already written at ``job_path``) with
        the round's planned fault applied: ``error`` rewrites the manifest before the
        start, ``crash``/``hang`` signal the job process once it runs.  Logs to :attr:`log`."""
        if self.fault is not None and self.fault.kind == "error" and not self._applied:
            job = json.loads(job_path.read_text(encoding="utf-8"))
            job_path.write_text(json.dumps(self.apply_fault(job)), encoding="utf-8")

        def started(pid: int) -> None:
            self.pid = pid
            if on_start is not None:
                on_start(pid)
            if self.fault is not None and self.fault.kind != "error":
                self.apply_fault({}, pid=pid)

        self.workers.run_job(argv, env, self.log, timeout, started)

    def device(self) -> str:
        """The ``device`` to send: ``--device`` when given (an override the network never
        makes), else the workload's own ``runtime_device`` from its worker's probe (for a
        command job: the evaluator's)."""
        if self.config.device is not None:
            return self.config.device
        slot = self.slot
        if slot.runtime_device is None and slot.client is None:
            slot = self.workers.evaluator if self.workers.evaluator.runtime_device else slot
        if slot.runtime_device is None:
            with slot.lock:
                self.workers.ensure(slot, self.round)
        assert slot.runtime_device is not None
        return slot.runtime_device

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a worker method (or a :mod:`fakecoord.handling` helper), timed as worker time."""
        try:
            with self.slot.lock:
                return self.workers.timed(fn, *args, **kwargs)
        except (WorkerExited, WorkerTimeout) as exc:
            self.detail = read_tail(self.slot.log, self.slot.log_start, 4000).strip() or None
            raise self.workers.explain(self.slot, exc) from None
        except RemoteError as exc:
            # The worker answered ok:false and keeps running: its stderr says nothing, so the
            # answer (first line, then the hook's traceback) goes into the log the message names.
            self.detail = exc.message
            self.workers.log_refusal(self.slot, self.round, exc)
            raise

    def failure_detail(self) -> str | None:
        """The whole text behind this round's failure, for the report: the refused call's
        answer or the dead worker's stderr (:attr:`detail`), else the end of a job's own log."""
        if self.detail is not None or self.log == self.slot.log:
            return self.detail
        return read_tail(self.log, 0, 4000).strip() or None

    def rel(self, path: Path | str) -> str:
        return os.path.relpath(path, self.run_dir)

    def path(self, relative: str) -> Path:
        return self.run_dir / relative

    def after_failure(self, exc: BaseException, model_id: str | None = None) -> None:
        with self.slot.lock:
            self.workers.after_failure(self.slot, exc, model_id)

    def inject(self, job: dict, pid: int | None = None) -> dict:
        """Deprecated: the engine applies the planned fault itself (see :meth:`client`
        and :meth:`run_job`).  Kept for old strategies: the same as :meth:`apply_fault`,
        which applies a fault once per round, so calling it too changes nothing."""
        return self.apply_fault(job, pid)

    def apply_fault(self, job: dict, pid: int | None = None) -> dict:
        """Apply the round's planned fault, once, just before the training call; returns the
        job to send (the same job when there is nothing (more) to apply).

        The events of :data:`fakecoord.sim.faults.KINDS`: ``error`` changes the job so
        that the call fails; ``crash`` and ``hang`` signal the worker (or ``pid``, a job
        process).
        """
        fault = self.fault
        if fault is None or self._applied:
            return job
        if fault.kind == "error":
            self._applied = True
            job = dict(job)
            if self.config.is_demo and "batches" in job:
                batches = [dict(ref) for ref in job["batches"]]
                batches[-1][FAULT_KEY] = "error"
                job["batches"] = batches
                self.injected = (
                    "the last batch ref carries fault_inject=error (the demo workload raises on it)"
                )
            elif "base_parameter_pack_path" in job:
                job["base_parameter_pack_path"] += ".fault-injected-missing"
                self.injected = "the job names a base pack that does not exist"
            else:
                job["model_id"] = UNKNOWN_MODEL
                self.injected = (
                    f"the call names model {UNKNOWN_MODEL!r}, which every worker must refuse"
                )
            return job
        target = pid if pid is not None else self.slot.client.pid if self.slot.client else None
        if target is None:
            return job
        self._applied = True
        sig = signal.SIGKILL if fault.kind == "crash" else signal.SIGSTOP
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass
        self.injected = f"{sig.name} sent to pid {target}"
        return job


class _FaultingClient:
    """A worker client whose training calls first apply the peer's planned fault; every
    other attribute is the client's own."""

    def __init__(self, client: WorkerClient, peer: PeerContext) -> None:
        self._client = client
        self._peer = peer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def run_inner_loop(self, job: dict, *, timeout: float | None = None) -> Any:
        job = self._peer.apply_fault(job)
        return self._client.run_inner_loop(job, timeout=timeout)

    def train_window(
        self, model_id: str, batches: Sequence[Any], *, timeout: float | None = None
    ) -> Any:
        job = self._peer.apply_fault({"model_id": model_id, "batches": list(batches)})
        return self._client.train_window(job["model_id"], job["batches"], timeout=timeout)

    def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        if method == "run_inner_loop" and isinstance(params, dict) and "job" in params:
            params = {**params, "job": self._peer.apply_fault(params["job"])}
        elif method == "train_window" and isinstance(params, dict):
            params = self._peer.apply_fault(params)
        return self._client.call(method, params, timeout)


__all__ = ["PeerContext", "ROOT", "Slot", "Workers", "failing_line", "short_error"]
