"""RPC round trips of a real worker process against peers that answer the same frames.

Our worker runs as the coordinator starts it (``python -m worker``, connecting
back to our listener, TCP_NODELAY on our side) with ``bench.workloads``, whose
hooks do no work.  The client is the same for every peer: it sends
pre-encoded request frames and reads whole response frames without decoding
them inside the timing (they are checked afterwards).

- ``hello``: median round trip vs a raw Python socket ping-pong of the same
  frames (``bench.peers raw``).  Target: <= 1.5x.  The stdlib-json peer
  (``bench.peers json``) is informative.  Calls are interleaved per call.
- ``train_window`` carrying 10,000 batch refs (cached_microshard_group refs of
  100 microshards each, ~509 KB frame): median vs the stdlib-json floor, a peer
  that ``json.loads`` the request and ``json.dumps`` the answer *without* a torch
  heap.  Target: <= 1.2x.  And our p90 vs our median.  Target: <= 1.5x.
- With ``--reference``: the seed worker on both (fewer calls: its ``hello``
  stalls on a delayed ACK).

Run: ``python -m bench.bench_rpc [--calls 2000] [--train-calls 200] [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import (
    HEADER,
    PYTHON,
    BenchError,
    Peer,
    Row,
    Stats,
    add_common_arguments,
    reference_path,
    run_and_report,
    spawn_worker,
)

FACTORY = "bench.workloads:make_workload"
CONFIG = {"params": 1000}
HELLO_TARGET = 1.5
TRAIN_TARGET = 1.2
TAIL_TARGET = 1.5


def batch_refs(refs: int, group: int) -> list[dict]:
    """``refs`` microshard refs as cached_microshard_group BatchRefs of ``group`` each."""
    if refs < 1 or group < 1:
        raise BenchError(f"--refs and --group must be positive, got {refs} and {group}")
    batches = []
    for start in range(0, refs, group):
        ordinals = list(range(start, min(start + group, refs)))
        batches.append(
            {
                "kind": "cached_microshard_group",
                "shard_paths": [f"/data/cache/shard/{k:07d}.bin" for k in ordinals],
                "microshard_ids": [f"ms-{k:07d}" for k in ordinals],
                "ordinals": ordinals,
                "bytes_len": 1 << 20,
            }
        )
    return batches


def train_frame(peer: Peer, params_json: bytes) -> bytes:
    """The next ``train_window`` request frame for ``peer`` (params pre-encoded)."""
    body = b'{"id":%d,"method":"train_window","params":%s}' % (peer.next_id, params_json)
    peer.next_id += 1
    return HEADER.pack(len(body)) + body


def round_trip(peer: Peer, data: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    peer.send(data)
    body = peer.recv()
    return time.perf_counter() - start, body


def check_answer(peer: Peer, body: bytes, expected_id: int) -> None:
    """Raises :class:`BenchError` unless ``body`` is an ok answer to ``expected_id``."""
    answer = json.loads(body)
    if answer.get("id") != expected_id or answer.get("ok") is not True:
        raise BenchError(f"{peer.name} answered {str(answer)[:300]} to request {expected_id}")


def cpu_seconds(pid: int) -> float | None:
    """CPU time the process's main thread has used (Linux schedstat), or None."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class PingPong:
    """Round-trip times per peer, and each peer's CPU time per timed call (or None)."""

    stats: dict[str, Stats]
    cpu_per_call: dict[str, float | None]
    cpu_samples: dict[str, Stats] | None = None

    def cpu_note(self, labels: dict[str, str]) -> str:
        parts = [
            f"{label} {self.cpu_per_call[name] * 1e6:.1f} us"
            for name, label in labels.items()
            if self.cpu_per_call.get(name) is not None
        ]
        return "peer CPU per call: " + ", ".join(parts) if parts else ""


def ping_pong(
    peers: dict[str, Peer], frames: dict[str, list[bytes]], warmup: int, per_call_cpu: bool = False
) -> PingPong:
    """Round trips interleaved per call (the order rotates), answers checked at the end.

    Besides wall-clock round trips, each peer's CPU time over the timed calls
    is taken from /proc: it shows the work per call without the scheduling
    noise of a shared machine.  With ``per_call_cpu`` it is also sampled
    around every call (outside the timing), so its tail can be compared with
    the wall-clock tail.
    """
    names = list(peers)
    calls = len(frames[names[0]])
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu_samples: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, bytes] = {}
    cpu_start: dict[str, float | None] = {}
    for i in range(calls):
        if i == warmup:
            cpu_start = {name: cpu_seconds(peers[name].proc.pid) for name in names}
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            before = cpu_seconds(peers[name].proc.pid) if per_call_cpu else None
            elapsed, last[name] = round_trip(peers[name], frames[name][i])
            if i >= warmup:
                samples[name].append(elapsed)
                after = cpu_seconds(peers[name].proc.pid) if per_call_cpu else None
                if before is not None and after is not None:
                    cpu_samples[name].append(after - before)
    cpu: dict[str, float | None] = {}
    for name in names:
        end, start = cpu_seconds(peers[name].proc.pid), cpu_start.get(name)
        timed_calls = calls - warmup
        ok = end is not None and start is not None and timed_calls > 0
        cpu[name] = (end - start) / timed_calls if ok else None  # type: ignore[operator]
        check_answer(peers[name], last[name], peers[name].next_id - 1)
    per_call = (
        {name: Stats(tuple(v)) for name, v in cpu_samples.items()}
        if per_call_cpu and all(cpu_samples.values())
        else None
    )
    return PingPong({name: Stats(tuple(v)) for name, v in samples.items()}, cpu, per_call)


def json_peer(hello_result: dict) -> Peer:
    return Peer(
        "stdlib-json peer",
        lambda port: [PYTHON, "-m", "bench.peers", "json", "--port", str(port),
                      "--hello-result", json.dumps(hello_result)],
    )  # fmt: skip


def raw_peer(hello_result: dict, count: int) -> Peer:
    return Peer(
        "raw ping-pong peer",
        lambda port: [PYTHON, "-m", "bench.peers", "raw", "--port", str(port),
                      "--hello-result", json.dumps(hello_result), "--count", str(count)],
    )  # fmt: skip


def reference_runs(reference: Path, calls: int, params_json: bytes) -> tuple[Stats, Stats]:
    """The seed worker's hello and train_window round trips (not interleaved: too slow)."""
    with spawn_worker(FACTORY, CONFIG, reference) as seed:
        seed.call("hello")
        seed.call("init_model", {"device": "cpu"})
        hello = [round_trip(seed, seed.request("hello"))[0] for _ in range(calls)]
        train = []
        for _ in range(calls + 2):
            elapsed, body = round_trip(seed, train_frame(seed, params_json))
            train.append(elapsed)
        check_answer(seed, body, seed.next_id - 1)
    return Stats(tuple(hello)), Stats(tuple(train[2:]))


def run(args: argparse.Namespace) -> list[Row]:
    """Measure hello and train_window round trips; returns the result rows."""
    reference = reference_path(args)
    batches = batch_refs(args.refs, args.group)
    warmup = max(2, args.calls // 20)
    train_warmup = max(2, args.train_calls // 20)
    print("rpc benchmarks: starting our worker and the peers ...", flush=True)
    with spawn_worker(FACTORY, CONFIG) as ours:
        hello_result = ours.call("hello")
        model_id = ours.call("init_model", {"device": "cpu"})["model_id"]
        total = warmup + args.calls
        with raw_peer(hello_result, total + 1) as raw, json_peer(hello_result) as floor:
            print(f"hello: {args.calls} calls per peer, interleaved ...", flush=True)
            peers = {"ours": ours, "raw": raw, "json": floor}
            frames = {name: [p.request("hello") for _ in range(total)] for name, p in peers.items()}
            hello_run = ping_pong(peers, frames, warmup)

            params_json = json.dumps(
                {"model_id": model_id, "batches": batches}, separators=(",", ":")
            ).encode("utf-8")
            frame_bytes = len(params_json) + len(b'{"id":1,"method":"train_window","params":}') + 8
            print(
                f"train_window: {args.refs} refs in {len(batches)} BatchRefs, "
                f"{frame_bytes / 1000:.0f} KB frame, {args.train_calls} calls per peer ...",
                flush=True,
            )
            train_run = ping_pong(
                {"ours": ours, "json": floor},
                {
                    name: [
                        train_frame(p, params_json) for _ in range(train_warmup + args.train_calls)
                    ]
                    for name, p in (("ours", ours), ("json", floor))
                },
                train_warmup,
                per_call_cpu=True,
            )
    ref_hello = ref_train = None
    if reference is not None:
        print(f"reference worker: {args.reference_calls} calls each ...", flush=True)
        ref_hello, ref_train = reference_runs(reference, args.reference_calls, params_json)

    hello, train = hello_run.stats, train_run.stats
    refs = f"{args.refs // 1000}k refs" if args.refs % 1000 == 0 else f"{args.refs} refs"
    ours_train, floor_train = train["ours"], train["json"]
    rows = [
        Row("hello round trip", f"{args.calls} calls", hello["ours"].median,
            hello["raw"].median, "raw ping-pong", HELLO_TARGET,
            ours_spread=hello["ours"].spread, limit_spread=hello["raw"].spread,
            reference=None if ref_hello is None else ref_hello.median,
            note=f"p90: ours {hello['ours'].p90 * 1e6:.1f} us, raw {hello['raw'].p90 * 1e6:.1f} us; "
            + hello_run.cpu_note({"ours": "ours", "raw": "raw", "json": "stdlib-json"})),
        Row("hello (stdlib-json peer, info)", f"{args.calls} calls", hello["json"].median,
            hello["raw"].median, "raw ping-pong", ours_spread=hello["json"].spread,
            limit_spread=hello["raw"].spread),
        Row("train_window median", f"{refs}, {frame_bytes / 1000:.0f} KB", ours_train.median,
            floor_train.median, "stdlib-json floor", TRAIN_TARGET,
            ours_spread=ours_train.spread, limit_spread=floor_train.spread,
            reference=None if ref_train is None else ref_train.median,
            note="the floor peer has no torch heap; "
            + train_run.cpu_note({"ours": "ours", "json": "floor"})),
        Row("train_window p90", f"{refs}, {frame_bytes / 1000:.0f} KB", ours_train.p90,
            ours_train.median, "our median", TAIL_TARGET,
            reference=None if ref_train is None else ref_train.p90,
            note="ratio = our p90 / our median; speed-up = reference p90 / our p90"),
        Row("train_window p90 (stdlib-json floor, info)", f"{refs}, {frame_bytes / 1000:.0f} KB",
            floor_train.p90, floor_train.median, "floor median",
            note="the same tail measure for the floor peer, in the same run"),
    ]  # fmt: skip
    if train_run.cpu_samples is not None:
        cpu, floor_cpu = train_run.cpu_samples["ours"], train_run.cpu_samples["json"]
        rows.append(
            Row("train_window worker CPU p90 (info)", f"{refs}, {frame_bytes / 1000:.0f} KB",
                cpu.p90, cpu.median, "its CPU median",
                note="worker CPU time per call (/proc schedstat): a GC pause shows here, "
                "waiting for a busy core does not; the floor peer's CPU p90/median is "
                f"{floor_cpu.p90 / floor_cpu.median:.2f}x")
        )  # fmt: skip
    return rows


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_rpc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_common_arguments(parser)
    parser.add_argument("--calls", type=int, default=None, help="hello calls (default 2000)")
    parser.add_argument(
        "--train-calls", type=int, default=None, help="train_window calls (default 200)"
    )
    parser.add_argument("--refs", type=int, default=10_000, help="microshard refs per window")
    parser.add_argument("--group", type=int, default=100, help="microshards per BatchRef")
    parser.add_argument(
        "--reference-calls", type=int, default=40, help="calls of each kind to the reference"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = argument_parser().parse_args(argv)
    if args.calls is None:
        args.calls = 100 if args.quick else 2000
    if args.train_calls is None:
        args.train_calls = 10 if args.quick else 200
    if min(args.calls, args.train_calls, args.reference_calls) < 1:
        raise SystemExit("bench_rpc: --calls, --train-calls and --reference-calls must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_and_report("bench_rpc", "RPC round trips", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
