"""Soak the worker and the fake coordinator, and print the figures.

``python -m tools.soak`` (from the repository root) runs both soaks at full
size: one worker serving 10,000 mixed calls, then a 200-round
``fakecoord`` simulation with crash, hang and error faults.  Options:
``worker --calls N`` or ``sim --rounds R`` run one of them; ``--json FILE``
also writes the figures as JSON.  Exit status 1 when a soak breaks its bound
(see :data:`RSS_DRIFT_LIMIT_KIB` and the leak checks), 0 otherwise.

What is measured:

- worker: after every cycle of calls, the worker's ``VmRSS`` and its number
  of open descriptors (``/proc/PID/status``, ``/proc/PID/fd``, read while it
  waits for the next request).  Drift is the value at the end minus the value
  after the warm-up (the first calls import lazily loaded code and fill
  allocator pools); the time per call is measured by the coordinator side.
- simulation: around the whole run, this process's open descriptors, its
  child processes (alive or zombie), the entries of a private ``TMPDIR``, the
  worker processes the run started, and ``.partial-`` leftovers in the run
  directory.

The functions are also the CI-sized soaks of ``tests/test_soak.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FACTORY = "tools.soak:make_soak_workload"
""":class:`SoakWorkload`: cheap hooks, so the worker's own cost dominates each call."""
RSS_DRIFT_LIMIT_KIB = 8 * 1024
"""The command line's bound on the worker's RSS growth after the warm-up."""
SCHEMA = "soak-schema"
BATCH = {
    "kind": "cached_microshard_group",
    "shard_paths": [],
    "microshard_ids": ["soak"],
    "ordinals": [0],
    "bytes_len": 1,
}


class SoakError(Exception):
    """A soak could not run (the process to measure is gone, /proc is missing)."""


# ---------------------------------------------------------------------------
# The workload the worker soak serves (imported by the worker process)


class SoakWorkload:
    """A complete workload over a small MLP whose hooks cost little.

    Training is plain SGD written out by hand: constructing a ``torch.optim``
    optimizer costs tens of milliseconds per call, which would hide the
    worker's own cost.  Config: ``hidden`` (32), ``lr`` (0.01), and, to
    check that a soak catches leaks, ``leak_kib`` / ``leak_fds`` (memory and
    open descriptors that every ``train_window`` keeps forever; 0).
    """

    workload_name = "soak"

    def __init__(self, config: dict | None) -> None:
        config = config or {}
        self.hidden = int(config.get("hidden", 32))
        self.lr = float(config.get("lr", 0.01))
        self.leak_kib = int(config.get("leak_kib", 0))
        self.leak_fds = int(config.get("leak_fds", 0))
        self._leaked: list[Any] = []

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 1.0,
            "target_window_seconds": 1,
        }

    def init_model(self, device: str) -> dict:
        import torch

        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(8, self.hidden), torch.nn.Tanh(), torch.nn.Linear(self.hidden, 1)
        )
        return {"model": model.to(device)}

    def _steps(self, model: Any, steps: int) -> float:
        import torch

        x = torch.linspace(-1.0, 1.0, 64).reshape(8, 8)
        y = x.sum(dim=1, keepdim=True)
        loss = torch.zeros(())
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(self.lr * p.grad)
        return float(loss)

    def train_window(self, state: dict, batches: list) -> dict:
        if self.leak_kib:
            self._leaked.append(b"\x01" * (self.leak_kib * 1024))  # touched, so resident
        self._leaked.extend(open(os.devnull, "rb") for _ in range(self.leak_fds))
        return {"loss": self._steps(state["model"], len(batches)), "steps": len(batches)}

    def evaluate(self, state: dict, split: Any) -> dict:
        import torch

        with torch.no_grad():
            x = torch.ones(4, 8)
            return {"loss": float(state["model"](x).square().mean())}

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        steps = job["num_inner_steps"]
        return {"steps_completed": steps, "metrics": {"loss": self._steps(state["model"], steps)}}

    def _blend(self, target: dict, weighted: list) -> None:
        import torch

        sources = [(w, s["model"].state_dict()) for w, s in weighted]
        with torch.no_grad():
            for key, tensor in target["model"].state_dict().items():
                tensor.copy_(sum(w * sd[key] for w, sd in sources))

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        if not candidates:
            return None
        merged = self.init_model("cpu")
        share = 1.0 / len(candidates)
        self._blend(merged, [(share, c["model"]) for c in candidates])
        return merged

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        self._blend(merged, [(0.5, base), (0.5, merged)])

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        if strategy != "Replace":
            w = float(strategy["RootEma"]["canonical_weight"])
            self._blend(canonical, [(w, canonical), (1.0 - w, local)])


def make_soak_workload(config: dict | None) -> SoakWorkload:
    return SoakWorkload(config)


# ---------------------------------------------------------------------------
# Reading a process from /proc


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB; raises :class:`SoakError` if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError as exc:
        raise SoakError(f"cannot read /proc/{pid}/status: {exc}") from None
    raise SoakError(f"/proc/{pid}/status has no VmRSS line (is {pid} a zombie?)")


def open_fds(pid: int) -> dict[int, str]:
    """``{fd: what it points to}`` for every open descriptor of ``pid``."""
    table = {}
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError as exc:
        raise SoakError(f"cannot list {base}: {exc}") from None
    for name in names:
        try:
            table[int(name)] = os.readlink(f"{base}/{name}")
        except OSError:
            pass  # closed while we looked (e.g. the listing's own descriptor)
    return table


def children(pid: int) -> dict[int, str]:
    """``{child pid: state letter}`` for every process whose parent is ``pid`` (Z: zombie)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2 and int(fields[1]) == pid:
            found[int(name)] = fields[0]
    return found


def pid_exists(pid: int) -> bool:
    """True while ``pid`` is a process (a zombie counts: it still holds its slot)."""
    return os.path.exists(f"/proc/{pid}")


def partial_leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".partial-" in p.name)


# ---------------------------------------------------------------------------
# The worker soak


@dataclass
class Sample:
    calls: int
    rss_kib: int
    fds: int


@dataclass
class WorkerSoak:
    """Figures of :func:`soak_worker`; ``samples`` are taken after every cycle."""

    calls: int
    warmup_calls: int
    seconds: float
    """Wall time of the calls after the warm-up."""
    samples: list[Sample] = field(default_factory=list)
    method_seconds: dict[str, float] = field(default_factory=dict)
    method_calls: dict[str, int] = field(default_factory=dict)

    @property
    def warm(self) -> Sample:
        return next(s for s in self.samples if s.calls >= self.warmup_calls)

    @property
    def end(self) -> Sample:
        return self.samples[-1]

    @property
    def rss_drift_kib(self) -> int:
        return self.end.rss_kib - self.warm.rss_kib

    @property
    def fd_drift(self) -> int:
        return self.end.fds - self.warm.fds

    @property
    def measured_calls(self) -> int:
        return self.end.calls - self.warm.calls

    @property
    def ms_per_call(self) -> float:
        return 1000.0 * self.seconds / max(self.measured_calls, 1)

    def figures(self) -> dict[str, Any]:
        after = [s for s in self.samples if s.calls >= self.warm.calls]
        return {
            "calls": self.end.calls,
            "warmup_calls": self.warm.calls,
            "rss_kib_start": self.samples[0].rss_kib,
            "rss_kib_after_warmup": self.warm.rss_kib,
            "rss_kib_end": self.end.rss_kib,
            "rss_kib_max_after_warmup": max(s.rss_kib for s in after),
            "rss_drift_kib": self.rss_drift_kib,
            "fds_after_warmup": self.warm.fds,
            "fds_end": self.end.fds,
            "fds_max_after_warmup": max(s.fds for s in after),
            "fd_drift": self.fd_drift,
            "ms_per_call": round(self.ms_per_call, 3),
            "ms_per_method": {
                m: round(1000.0 * self.method_seconds[m] / self.method_calls[m], 3)
                for m in sorted(self.method_calls)
            },
        }


CANDIDATE = {
    "peer_id": "p",
    "head_id": "h",
    "artifact_id": "x",
    "sample_weight": 1.0,
    "quality_weight": 1.0,
}


def _cycle(client: Any, workdir: Path) -> Iterator[str]:
    """Run one cycle of mixed calls, yielding each method's name right after
    its call returned (so the time between two ``next()`` is that call's).

    Every method that creates, changes, moves or drops a model runs once, and
    what the cycle made is released, so a flat worker holds nothing from one
    cycle to the next.  The export goes to ``workdir/pack``: into a fresh
    directory when the caller removed it, over the previous pack otherwise.
    """
    pack = workdir / "pack"
    artifact = workdir / "model.safetensors"
    a = client.init_model("cpu")
    yield "init_model"
    client.train_window(a, [BATCH, BATCH])
    yield "train_window"
    client.evaluate(a, "Validation")
    yield "evaluate"
    client.export_parameter_pack(a, pack, SCHEMA)
    yield "export_parameter_pack"
    b = client.import_parameter_pack("cpu", pack)
    yield "import_parameter_pack"
    c = client.merge_candidate_models(a, [{**CANDIDATE, "model_id": b}], "WeightedMean")
    yield "merge_candidate_models"
    client.apply_single_root_ema(a, c, "Ema")
    yield "apply_single_root_ema"
    client.reconcile_canonical_model(b, c, {"RootEma": {"canonical_weight": 0.5}})
    yield "reconcile_canonical_model"
    client.materialize_model_artifact(c, artifact)
    yield "materialize_model_artifact"
    client.load_model_artifact(a, artifact)
    yield "load_model_artifact"
    client.run_inner_loop(
        {
            "model_id": a,
            "batches": [BATCH],
            "num_inner_steps": 2,
            "inner_optimizer_state_path": None,
            "output_parameter_pack_path": str(workdir / "inner"),
            "model_schema_hash": SCHEMA,
            "require_exact_steps": True,
        }
    )
    yield "run_inner_loop"
    for model in (a, b, c):
        client.release_model(model)
        yield "release_model"


def soak_worker(
    calls: int = 10_000,
    warmup: int = 500,
    *,
    workdir: str | os.PathLike,
    factory: str = DEFAULT_FACTORY,
    config: Any = None,
    call_timeout: float = 120.0,
) -> WorkerSoak:
    """Serve at least ``calls`` mixed calls (whole cycles of :func:`_cycle`)
    from one worker and sample its RSS and descriptors after each cycle.

    Raises :class:`SoakError` or the client's
    :class:`~fakecoord.FakecoordError` when a call fails.
    """
    # Imported here, not at the top: the worker imports this module for its
    # workload and needs none of the coordinator side.
    from fakecoord import WorkerClient

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    with WorkerClient.spawn(
        factory,
        config,
        call_timeout=call_timeout,
        accept_timeout=120.0,
        stderr=root / "worker.log",
    ) as client:
        result = WorkerSoak(calls=calls, warmup_calls=warmup, seconds=0.0)
        done = 0
        index = 0
        result.samples.append(Sample(0, rss_kib(client.pid), len(open_fds(client.pid))))
        while done < calls:
            warm = done >= warmup
            if index % 2 == 0:  # alternate the fresh-directory and in-place export paths
                shutil.rmtree(root / "pack", ignore_errors=True)
            calls_of_cycle = _cycle(client, root)
            while True:
                started = time.perf_counter()
                method = next(calls_of_cycle, None)
                elapsed = time.perf_counter() - started
                if method is None:
                    break
                done += 1
                if warm:
                    result.seconds += elapsed
                    result.method_seconds[method] = result.method_seconds.get(method, 0.0) + elapsed
                    result.method_calls[method] = result.method_calls.get(method, 0) + 1
            index += 1
            result.samples.append(Sample(done, rss_kib(client.pid), len(open_fds(client.pid))))
        result.calls = done
        if result.warm is result.end:
            raise SoakError(f"warmup={warmup} leaves no cycle to measure after {done} calls")
        return result


# ---------------------------------------------------------------------------
# The simulation soak


@dataclass
class SimSoak:
    """Figures of :func:`soak_sim`: what was there before the run and what is left after."""

    rounds: int
    completed_rounds: int
    seconds: float
    faults: list[dict]
    coordinator_rss_kib: tuple[int, int]
    """This process's VmRSS before and after the run."""
    fds_before: int
    leaked_fds: dict[int, str]
    children_after: dict[int, str]
    tmpdir_leftovers: list[str]
    workers_started: int
    workers_alive: list[int]
    partial_leftovers: list[str]
    unplanned_errors: list[str]

    @property
    def clean(self) -> bool:
        return not (
            self.leaked_fds
            or self.children_after
            or self.tmpdir_leftovers
            or self.workers_alive
            or self.partial_leftovers
        )

    def figures(self) -> dict[str, Any]:
        data = asdict(self)
        data["leaked_fds"] = {str(k): v for k, v in self.leaked_fds.items()}
        data["children_after"] = {str(k): v for k, v in self.children_after.items()}
        data["seconds_per_round"] = round(self.seconds / max(self.completed_rounds, 1), 3)
        return data


def spread_faults(rounds: int, peers: int, every: int = 10) -> list[str]:
    """A fault every ``every`` rounds, cycling crash, hang, error over the peers."""
    kinds = ("crash", "hang", "error")
    return [f"{kinds[i % 3]}@{i % peers}:{r}" for i, r in enumerate(range(every, rounds, every))]


@contextmanager
def private_tmpdir(path: Path) -> Iterator[Path]:
    """Point ``TMPDIR`` (ours and every child's) and :mod:`tempfile` at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    old_env, old_cached = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = old_cached
        if old_env is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old_env


def soak_sim(
    rounds: int = 200,
    *,
    workdir: str | os.PathLike,
    peers: int = 2,
    inner_steps: int = 2,
    faults: Sequence[str] | None = None,
    call_timeout: float = 10.0,
    seed: int = 0,
) -> SimSoak:
    """Run a ``rounds``-round DiLoCo simulation of the demo workload in this process.

    ``faults`` defaults to :func:`spread_faults`; a hang costs ``call_timeout``
    seconds.  ``TMPDIR`` points at ``workdir/tmp`` for the run; the run
    directory is ``workdir/run``.  Raises
    :class:`~fakecoord.sim.SimError` when the run cannot proceed.
    """
    from fakecoord.sim import RunView, SimConfig, Simulation, parse_fault

    root = Path(workdir)
    out = root / "run"
    config = SimConfig(
        peers=peers,
        rounds=rounds,
        inner_steps=inner_steps,
        seed=seed,
        faults=[
            parse_fault(spec)
            for spec in (spread_faults(rounds, peers) if faults is None else faults)
        ],
        call_timeout=call_timeout,
        start_timeout=120.0,
    )
    me = os.getpid()
    with private_tmpdir(root / "tmp") as tmp:
        gc.collect()
        rss_before = rss_kib(me)
        fds_before = open_fds(me)
        children_before = children(me)
        tmp_before = set(os.listdir(tmp))
        started = time.monotonic()
        report = Simulation(config, out, view=RunView()).run()
        seconds = time.monotonic() - started
        gc.collect()  # a dropped client's finalizer would still reap its worker here
        fds_after = open_fds(me)
        rss_after = rss_kib(me)
        children_after = {
            pid: state for pid, state in children(me).items() if pid not in children_before
        }
        tmp_after = set(os.listdir(tmp))
    spawned = [
        json.loads(line)["pid"]
        for line in (out / "logs" / "workers.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    unplanned = [f"{f['spec']}: {f.get('error')}" for f in report["faults"] if not f["planned"]]
    return SimSoak(
        rounds=rounds,
        completed_rounds=report["completed_rounds"],
        seconds=round(seconds, 3),
        faults=[
            {"spec": f["spec"], "error": f.get("error") or "", "recovery": f.get("recovery")}
            for f in report["faults"]
            if f["planned"]
        ],
        coordinator_rss_kib=(rss_before, rss_after),
        fds_before=len(fds_before),
        leaked_fds={fd: target for fd, target in fds_after.items() if fds_before.get(fd) != target},
        children_after=children_after,
        tmpdir_leftovers=sorted(tmp_after - tmp_before),
        workers_started=len(spawned),
        workers_alive=[pid for pid in spawned if pid_exists(pid)],
        partial_leftovers=partial_leftovers(out),
        unplanned_errors=unplanned,
    )


# ---------------------------------------------------------------------------
# Command line


def _print_worker(soak: WorkerSoak) -> bool:
    f = soak.figures()
    print(f"worker soak: {f['calls']} calls ({f['warmup_calls']} of warm-up)")
    print(
        f"  RSS  start {f['rss_kib_start'] / 1024:.1f} MiB, after warm-up "
        f"{f['rss_kib_after_warmup'] / 1024:.1f} MiB, end {f['rss_kib_end'] / 1024:.1f} MiB, "
        f"max {f['rss_kib_max_after_warmup'] / 1024:.1f} MiB: drift {f['rss_drift_kib']:+d} KiB"
    )
    print(
        f"  fds  after warm-up {f['fds_after_warmup']}, end {f['fds_end']}, "
        f"max {f['fds_max_after_warmup']}: drift {f['fd_drift']:+d}"
    )
    print(f"  time {f['ms_per_call']:.3f} ms per call; per method (ms):")
    for method, ms in f["ms_per_method"].items():
        print(f"    {method:<28} {ms:8.3f}")
    ok = soak.rss_drift_kib <= RSS_DRIFT_LIMIT_KIB and soak.fd_drift == 0
    print(
        f"  verdict: {'flat' if ok else 'DRIFTING'} (bounds: RSS +{RSS_DRIFT_LIMIT_KIB} KiB, fds +0)"
    )
    return ok


def _print_sim(soak: SimSoak) -> bool:
    f = soak.figures()
    print(
        f"simulation soak: {soak.completed_rounds}/{soak.rounds} rounds in {soak.seconds:.1f} s "
        f"({f['seconds_per_round']:.3f} s per round), {soak.workers_started} worker processes"
    )
    for fault in soak.faults:
        recovery = fault["recovery"] or {}
        print(
            f"  fault {fault['spec']}: {fault['error'][:90]} -> recovered in round "
            f"{recovery.get('round')}"
        )
    print(f"  unplanned errors: {len(soak.unplanned_errors)}")
    for line in soak.unplanned_errors[:10]:
        print(f"    {line[:150]}")
    print(
        f"  coordinator fds before {soak.fds_before}, leaked {len(soak.leaked_fds)}: {soak.leaked_fds}"
    )
    print(f"  child processes left (Z = zombie): {soak.children_after or 'none'}")
    print(f"  workers still alive: {soak.workers_alive or 'none'}")
    print(f"  TMPDIR leftovers: {soak.tmpdir_leftovers or 'none'}")
    print(f"  .partial- leftovers in the run directory: {soak.partial_leftovers or 'none'}")
    ok = soak.clean and soak.completed_rounds == soak.rounds
    print(f"  verdict: {'clean' if ok else 'LEAKING'}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("which", nargs="?", choices=("all", "worker", "sim"), default="all")
    parser.add_argument("--calls", type=int, default=10_000, help="worker soak calls (10000)")
    parser.add_argument("--warmup", type=int, default=500, help="worker warm-up calls (500)")
    parser.add_argument("--factory", default=DEFAULT_FACTORY, help="worker soak workload")
    parser.add_argument("--rounds", type=int, default=200, help="simulation rounds (200)")
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument(
        "--fault", action="append", metavar="KIND@PEER:ROUND",
        help="simulation faults (default: one every 10 rounds, cycling crash, hang, error)",
    )  # fmt: skip
    parser.add_argument("--call-timeout", type=float, default=10.0, help="per call (10 s)")
    parser.add_argument("--workdir", help="where to work (default: a temporary directory)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="burn-p2p-soak-"))
    figures: dict[str, Any] = {}
    ok = True
    try:
        if args.which in ("all", "worker"):
            soak = soak_worker(
                args.calls, args.warmup, workdir=workdir / "worker", factory=args.factory
            )
            figures["worker"] = soak.figures()
            ok &= _print_worker(soak)
        if args.which in ("all", "sim"):
            sim = soak_sim(
                args.rounds,
                workdir=workdir / "sim",
                peers=args.peers,
                inner_steps=args.inner_steps,
                faults=args.fault,
                call_timeout=args.call_timeout,
            )
            figures["sim"] = sim.figures()
            ok &= _print_sim(sim)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
