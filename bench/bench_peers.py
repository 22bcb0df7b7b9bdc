"""What a peer costs: ``python -m fakecoord run`` at 1, 4, 8, 32 peers, forked and spawned.

For each workload (the demo; ``bench.workloads:make_mlp_workload``, an MLP of
``--params`` parameters, default 5e6, trained with ``torch.optim``) and each
peer count, the run is started twice, once per ``--start-method``
(``fork-server``, ``spawn``), as a child process of this one.  Figures:

- **wall**: from starting ``python -m fakecoord run`` to its exit;
- **start-up**: from starting it until round 1's directory appears (the
  first training step is under way);
- **round 1** and **rounds 2.. median**: the report's ``round_seconds``
  (every peer is in the round's group: ``--target-group-size`` = peers);
- **peak PSS**: the largest sum, over the coordinator and all its
  descendants (fork server and workers), of ``Pss`` in
  ``/proc/<pid>/smaps_rollup``, sampled every ``--sample`` seconds.  PSS
  splits a shared page between the processes mapping it, so it is the
  tree's real share of memory (RSS would count torch once per worker).

Every row is shown against the 1-peer run of the same method (the floor)
and the fork-server rows against the spawned ones.  Then the default demo
run (``python -m fakecoord run``: 4 peers, 10 rounds) is timed against one
``python -c "import torch"``, interleaved (``--repeats`` each), medians:
target <= 2x.  Flower's simulation (``bench/flower_run.py``) runs the mlp
workload at each peer count only when ``flwr`` is importable; this script
never installs it.

One run per configuration: the machine is shared, and the load average is
printed with the table.  Nothing here asserts on time.

With ``--shared 256:2`` the demo also runs with ``--peers 256 --workers 2``
(every peer in the round's group): target peak PSS <= 4 GB.

Run: ``python -m bench.bench_peers [--peers 1,4,8,32] [--params 5e6] [--rounds 5]
[--inner-steps 16] [--repeats 3] [--shared 256:2] [--json FILE] [--quick] [--no-flower]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import PYTHON, REPO_ROOT, environment, parse_sizes, worker_env

METHODS = ("fork-server", "spawn")
MLP_FACTORY = "bench.workloads:make_mlp_workload"
WALL_TARGET = 2.0
FLOWER = "flower"
# Issue 17's targets against Flower at 8 peers: wall and PSS ratios, round 1 over rounds 2..
FLOWER_TARGETS = {"wall": 0.6, "peak_pss": 0.8}
ROUND1_TARGET = 1.5


def flower_targets(results: dict[tuple[str, int, str], dict[str, Any]], peers: int) -> list[str]:
    """One line per fork-server MLP run at ``peers`` checked against issue 17's targets."""
    ours = results.get(("mlp", peers, METHODS[0]))
    theirs = results.get(("mlp", peers, FLOWER))
    if ours is None or theirs is None:
        return []
    parts = []
    for key, target in FLOWER_TARGETS.items():
        ratio = ours[key] / theirs[key]
        parts.append(
            f"{key} / Flower = {ratio:.2f}x (target <= {target:g}x: "
            f"{'PASS' if ratio <= target else 'MISS'})"
        )
    if ours["rounds_median"]:
        ratio = ours["round1"] / ours["rounds_median"]
        parts.append(
            f"round 1 / rounds 2.. = {ratio:.2f}x (target <= {ROUND1_TARGET:g}x: "
            f"{'PASS' if ratio <= ROUND1_TARGET else 'MISS'})"
        )
    return [f"mlp, {peers} peers, fork-server: " + "; ".join(parts)]


# ---------------------------------------------------------------------------
# The process tree's memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    tree = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def pss(pid: int) -> int:
    """The process's proportional set size in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_pss(root: int) -> tuple[int, int]:
    """(PSS of ``root``'s tree in bytes, number of processes in it)."""
    pids = tree_pids(root)
    return sum(pss(p) for p in pids), len(pids)


# ---------------------------------------------------------------------------
# One run


def run_once(argv: list[str], out: Path, sample: float) -> dict[str, Any]:
    """Run ``argv`` (a ``fakecoord run`` writing to ``out``), sampling its tree."""
    # stderr goes to a file, not a pipe: a chatty child (Ray) must not block on a full pipe.
    errors = tempfile.TemporaryFile("w+")
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=worker_env(), stdout=subprocess.DEVNULL, stderr=errors, text=True,
    )  # fmt: skip
    first_step: float | None = None
    peak, peak_procs = 0, 0
    while proc.poll() is None:
        if first_step is None and (out / "rounds" / "0001").exists():
            first_step = time.monotonic() - started
        total, count = tree_pss(proc.pid)
        if total > peak:
            peak, peak_procs = total, count
        time.sleep(sample)
    wall = time.monotonic() - started
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    if proc.returncode != 0:
        raise SystemExit(f"bench_peers: {' '.join(argv[1:])} failed:\n{stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    rounds = [r["timings"]["round_seconds"] for r in report["rounds"]]
    return {
        "wall": wall,
        "startup": first_step,
        "round1": rounds[0],
        "rounds_median": statistics.median(rounds[1:]) if len(rounds) > 1 else None,
        "peak_pss": peak,
        "processes": peak_procs,
        "forked": "forked from a fork server" in report.get("workers_start", ""),
    }


def fakecoord_argv(
    workload: str, peers: int, method: str, args: argparse.Namespace, root: Path
) -> list[str]:
    argv = [
        PYTHON, "-m", "fakecoord", "run", "--quiet", "--peers", str(peers),
        "--rounds", str(args.rounds), "--inner-steps", str(args.inner_steps),
        "--start-method", method, "--out", str(root / "run"), "--start-timeout", "600",
        "--target-group-size", str(peers),
    ]  # fmt: skip
    if workload != "demo":
        batches = root / "batches.json"
        refs = [
            [{"kind": "micro_epoch", "lease_id": f"peer-{p}", "microshard_ids": [],
              "ordinals": [], "bytes_len": 0, "pipeline_kind": "generated-dataset",
              "payload": {"delta": 1e-3 * (p + 1)}}]
            for p in range(peers)
        ]  # fmt: skip
        batches.write_text(json.dumps(refs))
        argv += [
            "--factory", MLP_FACTORY, "--config-json", json.dumps({"params": args.params}),
            "--batches", str(batches), "--protocol", "diloco",
        ]  # fmt: skip
    return argv


def measure(workload: str, peers: int, method: str, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=args.dir))
    try:
        argv = fakecoord_argv(workload, peers, method, args, root)
        return run_once(argv, root / "run", args.sample)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_flower(peers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Flower's simulation (``bench.flower_run``) on the MLP workload, sampled like a run."""
    root = Path(tempfile.mkdtemp(prefix="bench-peers-flower-", dir=args.dir))
    try:
        argv = [
            PYTHON, "-m", "bench.flower_run", "--peers", str(peers), "--rounds", str(args.rounds),
            "--inner-steps", str(args.inner_steps), "--params", str(args.params),
            "--out", str(root / "run"),
        ]  # fmt: skip
        return run_once(argv, root / "run", args.sample)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_shared(peers: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """The demo with ``--workers``: every peer in the round's group."""
    root = Path(tempfile.mkdtemp(prefix="bench-peers-shared-", dir=args.dir))
    try:
        argv = fakecoord_argv("demo", peers, "fork-server", args, root)
        argv += ["--workers", str(workers)]
        return run_once(argv, root / "run", args.sample)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(
        argv, cwd=REPO_ROOT, env=worker_env(), check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.monotonic() - started


def default_demo(args: argparse.Namespace) -> dict[str, list[float]]:
    """The default demo run (both methods) and ``import torch``, interleaved."""
    times: dict[str, list[float]] = {"fork-server": [], "spawn": [], "import torch": []}
    for _ in range(args.repeats):
        for name in times:
            root = Path(tempfile.mkdtemp(prefix="bench-peers-demo-", dir=args.dir))
            try:
                if name == "import torch":
                    argv = [PYTHON, "-c", "import torch"]
                else:
                    argv = [PYTHON, "-m", "fakecoord", "run", "--quiet", "--out",
                            str(root / "run"), "--start-method", name]  # fmt: skip
                    if args.quick:
                        argv += ["--rounds", "2"]
                times[name].append(timed(argv))
            finally:
                shutil.rmtree(root, ignore_errors=True)
    return times


# ---------------------------------------------------------------------------
# The table


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value: float) -> str:
    return f"{value / 2**20:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def table(results: dict[tuple[str, int, str], dict[str, Any]], workloads: list[str]) -> list[str]:
    head = (
        "workload", "peers", "method", "wall s", "start-up s", "round 1 s", "rounds 2.. s",
        "peak PSS MB", "procs", "wall/floor", "PSS/floor", "wall fork/spawn",
        "start-up fork/spawn", "PSS fork/spawn", "wall/Flower", "start-up/Flower",
        "round 1/Flower", "rounds 2../Flower", "PSS/Flower",
    )  # fmt: skip
    rows = [head]
    for (workload, peers, method), r in sorted(results.items()):
        floor = results.get((workload, 1, method))
        other = results.get((workload, peers, "spawn")) if method == "fork-server" else None
        flower = results.get((workload, peers, FLOWER)) if method != FLOWER else None
        fl: dict[str, Any] = flower or {}
        rows.append((
            workload, str(peers), method + ("" if r["forked"] or method != METHODS[0] else " (!)"),
            _s(r["wall"]), _s(r["startup"]), _s(r["round1"]), _s(r["rounds_median"]),
            _mb(r["peak_pss"]), str(r["processes"]),
            _ratio(r["wall"], floor["wall"] if floor else None),
            _ratio(r["peak_pss"], floor["peak_pss"] if floor else None),
            _ratio(r["wall"], other["wall"] if other else None),
            _ratio(r["startup"], other["startup"] if other else None),
            _ratio(r["peak_pss"], other["peak_pss"] if other else None),
            _ratio(r["wall"], fl.get("wall")), _ratio(r["startup"], fl.get("startup")),
            _ratio(r["round1"], fl.get("round1")),
            _ratio(r["rounds_median"], fl.get("rounds_median")),
            _ratio(r["peak_pss"], fl.get("peak_pss")),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_peers", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--peers", type=parse_sizes, default=None, help="default 1,4,8,32")
    parser.add_argument("--params", type=int, default=None, help="MLP size (default 5e6)")
    parser.add_argument("--rounds", type=int, default=None, help="default 5")
    parser.add_argument("--inner-steps", type=int, default=None, help="default 16")
    parser.add_argument("--repeats", type=int, default=None, help="default-demo repeats (3)")
    parser.add_argument("--workloads", default="demo,mlp", help="demo,mlp (default both)")
    parser.add_argument("--sample", type=float, default=0.2, help="PSS sampling period (s)")
    parser.add_argument("--dir", default=None, help="where runs are written (default $TMPDIR)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny, meaningless")
    parser.add_argument(
        "--no-flower", action="store_true", help="skip Flower even when flwr is importable"
    )
    parser.add_argument(
        "--shared", default=None, metavar="PEERS:WORKERS",
        help="also run the demo with --peers PEERS --workers WORKERS (all peers in the group)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    args.peers = args.peers or ([1, 2] if quick else [1, 4, 8, 32])
    if 1 not in args.peers:
        args.peers.insert(0, 1)
    args.params = args.params or (20_000 if quick else 5_000_000)
    args.rounds = args.rounds or (2 if quick else 5)
    args.inner_steps = args.inner_steps or (2 if quick else 16)
    args.repeats = args.repeats or (1 if quick else 3)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    env = environment()
    has_flower = importlib.util.find_spec("flwr") is not None
    print(f"bench_peers: {json.dumps(env)}", flush=True)
    results: dict[tuple[str, int, str], dict[str, Any]] = {}
    for workload in workloads:
        for peers in args.peers:
            for method in METHODS:
                print(f"  {workload}, {peers} peers, {method} ...", flush=True)
                results[(workload, peers, method)] = measure(workload, peers, method, args)
            if workload == "mlp" and has_flower and not args.no_flower:
                print(f"  {workload}, {peers} peers, Flower simulation ...", flush=True)
                results[(workload, peers, FLOWER)] = measure_flower(peers, args)
    shared = None
    if args.shared:
        peers, workers = (int(x) for x in args.shared.split(":"))
        print(f"  demo, {peers} peers on {workers} workers ...", flush=True)
        shared = measure_shared(peers, workers, args)
    demo = default_demo(args)
    load = os.getloadavg()
    print()
    print(
        f"== what a peer costs ==  ({args.rounds} rounds x {args.inner_steps} inner steps; "
        f"mlp = {args.params:.0e} params; load average {[round(x, 2) for x in load]})"
    )
    for line in table(results, workloads):
        print(line)
    if shared is not None:
        print(
            f"demo, {args.shared.replace(':', ' peers on ')} workers (--workers, every peer in "
            f"the group), {args.rounds} rounds x {args.inner_steps} steps: wall "
            f"{shared['wall']:.1f} s, start-up {_s(shared['startup'])} s, round 1 "
            f"{shared['round1']:.2f} s, rounds 2.. {_s(shared['rounds_median'])} s, peak PSS "
            f"{_mb(shared['peak_pss'])} MB over {shared['processes']} processes "
            f"(target <= 4096 MB: {'PASS' if shared['peak_pss'] <= 4 * 2**30 else 'MISS'})"
        )
    medians = {k: statistics.median(v) for k, v in demo.items()}
    ratio = medians["fork-server"] / medians["import torch"]
    print()
    print(
        f"default demo run (4 peers, {'2' if quick else '10'} rounds), medians of "
        f"{args.repeats}: fork-server {medians['fork-server']:.2f} s, spawn "
        f"{medians['spawn']:.2f} s, python -c 'import torch' {medians['import torch']:.2f} s; "
        f"fork-server / import torch = {ratio:.2f}x (target <= {WALL_TARGET:g}x: "
        f"{'PASS' if ratio <= WALL_TARGET else 'MISS'})"
    )
    if not has_flower:
        print(
            "Flower: flwr is not importable; its column is skipped (this script never installs it)"
        )
    elif args.no_flower:
        print("Flower: skipped (--no-flower)")
    else:
        print(
            "Flower: simulation (Ray actors, client_resources num_cpus=1) on the mlp workload, "
            "same rounds x steps, FedAvg (outer lr 1.0, no momentum); the rows 'flower'"
        )
        for peers in args.peers:
            for line in flower_targets(results, peers):
                print(line)
    print("(!) after a fork-server method: the run spawned its workers (see its header)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "environment": env,
                    "load_after": load,
                    "runs": [
                        {"workload": w, "peers": p, "method": m, **r}
                        for (w, p, m), r in results.items()
                    ],
                    "default_demo": demo,
                    "shared": shared,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
