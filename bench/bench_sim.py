"""The simulation's coordinator at 5e7 parameters: its outer rounds, per codec, and its memory.

Two parts, each at ``--params`` (default 5e7, 192 MiB) with 4 and with 8
peers (``--peers``):

- **every codec's outer round** (``--part codecs``): the streamed network
  step (:func:`fakecoord.sim.outer.outer_step_packs`: pseudo-gradients,
  the codec's encoding and decoding, Mean, plain SGD lr 1.0, a new base pack)
  over packs on disk, against **a plain chunked numpy round doing the same
  arithmetic** (same chunk size, ``readinto`` preallocated buffers, the
  codec's arithmetic written straight in numpy: ``astype(float16)`` round
  trips, blockwise max/scale/round/clamp, QSGD's sequential norm pass, signs;
  ``tofile`` of the new base), interleaved in one child process per codec
  and peer count.  Target: <= 1.2x.  **Peak RSS** of that child (``VmHWM``
  after the packs are written; no torch imported) against the model size.
  Target: <= 0.5x.
- **the simulation's coordinator time per round** (``--part sim``), the
  network's default policy (Fp16, Mean, SGD lr 1.0) on
  ``bench.workloads:make_inner_loop_workload`` (its inner loop shifts every
  parameter once, so the workers' share is short and fixed): the report's
  ``coordinator_seconds`` (a round's wall time minus the union of its
  worker calls: the outer step, manifest checks, job set-up, thread
  hand-offs), median over rounds 3..R, against the same numpy Fp16 round
  over the packs the previous round left, measured just before each round.
  Target: <= 1.5x; peak RSS <= 3x the model, whatever the number of peers.

Run: ``python -m bench.bench_sim [--params 5e7] [--peers 4,8] [--rounds 7] [--part all]
[--codecs fp32,fp16,int8,qsgd,sign] [--repeats 5] [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    PYTHON,
    BenchError,
    Row,
    Stats,
    add_common_arguments,
    fmt_count,
    parse_sizes,
    peak_rss,
    run_and_report,
    run_json_child,
)

FACTORY = "bench.workloads:make_inner_loop_workload"
TIME_TARGET = 1.5
MEMORY_TARGET = 3.0
CODEC_TIME_TARGET = 1.2
CODEC_MEMORY_TARGET = 0.5
LIMIT_CHUNK = 1 << 18  # the coordinator's own chunk size (fakecoord.sim.outer.DEFAULT_CHUNK)
CODEC_POLICIES: dict[str, Any] = {
    "fp32": "Fp32",
    "fp16": "Fp16",
    "int8": {"BlockwiseInt8": {"block_size": 256}},
    "qsgd": {"Qsgd": {"bits": 8, "stochastic": False}},
    "sign": {"SignSgd": {"error_feedback": False}},
}
EPS = np.float32(2.0**-23)


def _round_away(x: np.ndarray) -> None:
    """Rust's round, in place, for |x| < 2**22 (floor(|x| + 0.5); 0.49999997 aside)."""
    negative = np.signbit(x)
    np.abs(x, out=x)
    below = x == np.float32(0.49999997)
    np.add(x, np.float32(0.5), out=x)
    np.floor(x, out=x)
    x[below] = 0
    np.negative(x, out=x, where=negative)


def numpy_round(codec: str, base: Path, locals_: list[Path], out_base: Path) -> float:
    """The limit: one chunked numpy outer round (codec, Mean, SGD lr 1.0); seconds.

    The codec's arithmetic written straight in numpy, on finite data (no NaN
    handling): what any implementation of the network's step has to compute.
    """
    started = time.perf_counter()
    paths = [base, *locals_]
    files = [open(p / "values.f32le", "rb") for p in paths]  # noqa: SIM115
    k = len(locals_)
    try:
        count = (base / "values.f32le").stat().st_size // 4
        b, local, acc = (np.empty(LIMIT_CHUNK, dtype=np.float32) for _ in range(3))
        norms = []
        sq = np.empty(LIMIT_CHUNK + 1, dtype=np.float32)
        if codec == "qsgd":  # the norms: a sequential float32 sum of squares per peer
            for f in files[1:]:
                running = np.float32(-0.0)
                files[0].seek(0)
                for start in range(0, count, LIMIT_CHUNK):
                    n = min(LIMIT_CHUNK, count - start)
                    files[0].readinto(memoryview(b[:n]))
                    f.readinto(memoryview(local[:n]))
                    np.subtract(b[:n], local[:n], out=local[:n])
                    sq[0] = running
                    np.multiply(local[:n], local[:n], out=sq[1 : n + 1])
                    np.add.accumulate(sq[: n + 1], out=sq[: n + 1])
                    running = sq[n]
                norms.append(np.sqrt(running))
                f.seek(0)
            files[0].seek(0)
        with open(out_base, "wb") as nb:
            for start in range(0, count, LIMIT_CHUNK):
                n = min(LIMIT_CHUNK, count - start)
                bc, lc, ac = b[:n], local[:n], acc[:n]
                files[0].readinto(memoryview(bc))
                ac[:] = 0.0
                for i, f in enumerate(files[1:]):
                    f.readinto(memoryview(lc))
                    np.subtract(bc, lc, out=lc)
                    if codec == "fp16":
                        lc[:] = lc.astype(np.float16)
                    elif codec == "int8":
                        full = n // 256 * 256
                        for blocks in (lc[:full].reshape(-1, 256), lc[full:].reshape(1, -1)):
                            if blocks.size == 0:
                                continue
                            m = np.abs(blocks).max(axis=1)
                            scale = m / np.float32(127)
                            scale[m <= EPS] = 0
                            np.divide(blocks, np.where(scale == 0, 1, scale)[:, None], out=blocks)
                            _round_away(blocks)
                            np.clip(blocks, -127, 127, out=blocks)
                            np.multiply(blocks, scale[:, None], out=blocks)
                            np.add(blocks, np.float32(0), out=blocks)
                    elif codec == "qsgd":
                        norm, levels = norms[i], np.float32(255)
                        sign = np.sign(lc)
                        np.abs(lc, out=lc)
                        np.divide(lc, norm, out=lc)
                        np.multiply(lc, levels, out=lc)
                        _round_away(lc)
                        np.minimum(lc, levels, out=lc)
                        np.divide(lc, levels, out=lc)
                        np.multiply(sign, norm, out=sign)
                        np.multiply(sign, lc, out=lc)
                        np.add(lc, np.float32(0), out=lc)
                    elif codec == "sign":
                        np.sign(lc, out=lc)
                        np.add(lc, np.float32(0), out=lc)
                    np.add(ac, lc, out=ac)
                np.multiply(ac, np.float32(1) / np.float32(k), out=ac)
                np.multiply(ac, np.float32(1.0), out=ac)
                np.subtract(bc, ac, out=ac)
                ac.tofile(nb)
    finally:
        for f in files:
            f.close()
    return time.perf_counter() - started


def write_packs(root: Path, params: int, peers: int) -> tuple[Path, list[Path]]:
    """A base and ``peers`` local packs of ``params`` values, written chunk by chunk."""
    from fakecoord.packs import pack_stream_writer

    rng = np.random.default_rng(0)
    hashes = {"layout_hash": "bench", "model_schema_hash": "bench"}
    base = root / "base"
    with pack_stream_writer(base, params, **hashes) as w:
        for start in range(0, params, LIMIT_CHUNK):
            w.write(rng.standard_normal(min(LIMIT_CHUNK, params - start), dtype=np.float32))
    locals_ = []
    for p in range(peers):
        path = root / f"local-{p}"
        with pack_stream_writer(path, params, **hashes) as w:
            for start in range(0, params, LIMIT_CHUNK):
                n = min(LIMIT_CHUNK, params - start)
                w.write(rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3))
        locals_.append(path)
    return base, locals_


def codec_child(codec: str, params: int, peers: int, repeats: int, root: Path) -> dict[str, Any]:
    """Time one codec's streamed outer round against the numpy round, interleaved."""
    from fakecoord.sim.outer import outer_step_packs

    from .common import interleaved, reset_peak_rss

    base, locals_ = root / "base", [root / f"local-{p}" for p in range(peers)]
    policy = {"codec": CODEC_POLICIES[codec]}
    out = root / "new"

    def ours() -> float:
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        outer_step_packs(base, locals_, out, policy)
        return time.perf_counter() - started

    def limit() -> float:
        (root / "limit").unlink(missing_ok=True)
        return numpy_round(codec, base, locals_, root / "limit")

    baseline_rss = reset_peak_rss()
    stats = interleaved({"ours": ours, "limit": limit}, repeats)
    peak = peak_rss()
    same = filecmp.cmp(out / "values.f32le", root / "limit", shallow=False)
    return {
        "same_bytes": same,
        "ours": list(stats["ours"].samples),
        "limit": list(stats["limit"].samples),
        "peak_rss": peak,
        "baseline_rss": baseline_rss,
        "model_bytes": params * 4,
    }


def run_codecs(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for params in args.params:
        for peers in args.peers:
            root = Path(tempfile.mkdtemp(prefix="bench-codec-", dir=args.dir))
            results = {}
            try:
                write_packs(root, params, peers)  # here: the child's memory is the step's
                for codec in args.codecs:
                    print(f"{codec} outer round at {fmt_count(params)} params, {peers} peers ...",
                          flush=True)  # fmt: skip
                    results[codec] = run_json_child(
                        [PYTHON, "-m", "bench.bench_sim", "--codec-child", codec, "--params",
                         str(params), "--peers", str(peers), "--repeats", str(args.repeats),
                         "--dir", str(root)],
                        timeout=3600,
                    )  # fmt: skip
            finally:
                shutil.rmtree(root, ignore_errors=True)
            for codec, result in results.items():
                ours, limit = Stats(tuple(result["ours"])), Stats(tuple(result["limit"]))
                case = f"{codec}, {fmt_count(params)} params, {peers} peers"
                rows.append(Row(
                    "sim outer round", case, ours.median, limit.median,
                    "numpy round, same arithmetic", CODEC_TIME_TARGET,
                    ours_spread=ours.spread, limit_spread=limit.spread,
                    note=f"{len(ours.samples)} interleaved repeats; the limit's new base is "
                    + ("the same bytes" if result["same_bytes"] else "NOT the same bytes"),
                ))  # fmt: skip
                rows.append(Row(
                    "sim outer round peak RSS", case, float(result["peak_rss"]),
                    float(result["model_bytes"]), "model size", CODEC_MEMORY_TARGET, unit="B",
                    note="VmHWM of the child; the parent wrote the packs (no torch imported)",
                ))  # fmt: skip
    return rows


def child(params: int, peers: int, rounds: int, root: Path) -> dict[str, Any]:
    """Run the simulation here, timing the limit before each round from round 2 on."""
    from fakecoord.sim import Engine, SimConfig

    refs = [
        {"kind": "micro_epoch", "lease_id": f"peer-{p}", "microshard_ids": [], "ordinals": [],
         "bytes_len": 0, "pipeline_kind": "generated-dataset", "payload": {"delta": 1e-3 * (p + 1)}}
        for p in range(peers)
    ]  # fmt: skip
    batches = root / "batches.json"
    batches.write_text(json.dumps([[ref] for ref in refs]))
    out = root / "run"
    limits: list[float] = []

    def before_round(r: int) -> None:
        if r < 3:
            return
        previous, older = out / "rounds" / f"{r - 1:04d}", out / "rounds" / f"{r - 2:04d}"
        # The best of two: the first pass may still share the disk with the
        # write-back of the packs the workers just wrote; a limit is a floor.
        times = []
        for _ in range(2):
            scratch = root / "limit"
            scratch.mkdir(exist_ok=True)
            times.append(
                numpy_round(
                    "fp16", older / "base",
                    [previous / f"peer-{p}" / "local-parameters" for p in range(peers)],
                    scratch / "base",
                )
            )  # fmt: skip
            shutil.rmtree(scratch)
        limits.append(min(times))
        if r >= 4:  # keep the disk bounded: nothing refers to rounds before r - 2 any more
            shutil.rmtree(out / "rounds" / f"{r - 3:04d}", ignore_errors=True)

    config = SimConfig(
        factory=FACTORY, config={"params": params}, batches=str(batches), peers=peers,
        rounds=rounds, inner_steps=1, call_timeout=600.0, start_timeout=300.0,
    )  # fmt: skip
    report = Engine(config, out, on_round=before_round).run()
    # The limit before round r used round r - 1's packs, so it pairs with round r - 1's
    # coordinator time (rounds 2..R-1).
    measured = report["rounds"][1:-1] or report["rounds"][1:]
    return {
        "coordinator": [r["timings"]["coordinator_seconds"] for r in measured],
        "outer": [r["aggregate"]["outer_step_seconds"] for r in measured],
        "limit": limits,
        "peak_rss": peak_rss(),
        "model_bytes": params * 4,
        "threads": report["threads"],
    }


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    if args.part in ("all", "codecs"):
        rows += run_codecs(args)
    if args.part in ("all", "sim"):
        rows += run_sim(args)
    return rows


def run_sim(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for params in args.params:
        for peers in args.peers:
            print(f"simulation at {fmt_count(params)} params, {peers} peers ...", flush=True)
            root = Path(tempfile.mkdtemp(prefix="bench-sim-", dir=args.dir))
            try:
                result = run_json_child(
                    [PYTHON, "-m", "bench.bench_sim", "--child", "--params", str(params),
                     "--peers", str(peers), "--rounds", str(args.rounds), "--dir", str(root)],
                    timeout=3600,
                )  # fmt: skip
            finally:
                shutil.rmtree(root, ignore_errors=True)
            ours, outer, limit = (
                Stats(tuple(result[k])) for k in ("coordinator", "outer", "limit")
            )
            case = f"{fmt_count(params)} params, {peers} peers"
            rows.append(Row(
                "sim coordinator time per round", case, ours.median, limit.median,
                "numpy fp16 round", TIME_TARGET, ours_spread=ours.spread,
                limit_spread=limit.spread,
                note=f"{len(ours.samples)} rounds; coordinator = round time minus worker calls",
            ))  # fmt: skip
            rows.append(Row(
                "sim outer step alone (info)", case, outer.median, limit.median,
                "numpy fp16 round", None, ours_spread=outer.spread,
                limit_spread=limit.spread,
            ))  # fmt: skip
            rows.append(Row(
                "sim coordinator peak RSS", case, float(result["peak_rss"]),
                float(result["model_bytes"]), "model size", MEMORY_TARGET, unit="B",
                note="VmHWM of the coordinator process (no torch imported)",
            ))  # fmt: skip
    return rows


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_common_arguments(parser)
    parser.add_argument("--params", type=parse_sizes, default=None,
                        help="parameter counts (default 5e7; --quick: 2e5)")  # fmt: skip
    parser.add_argument("--peers", type=parse_sizes, default=None,
                        help="peer counts (default 4,8; --quick: 2)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per run (default 7; --quick: 3); the first is not timed")  # fmt: skip
    parser.add_argument("--dir", default=None, help="where runs are written (default: $TMPDIR)")
    parser.add_argument("--part", choices=("all", "codecs", "sim"), default="all",
                        help="every codec's outer round, the whole simulation, or both")  # fmt: skip
    parser.add_argument("--codecs", default=",".join(CODEC_POLICIES),
                        help=f"codecs for --part codecs (default {','.join(CODEC_POLICIES)})")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats per codec (default 5; --quick: 2)")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--codec-child", default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = argument_parser().parse_args(argv)
    if args.params is None:
        args.params = [200_000] if args.quick else [50_000_000]
    if args.peers is None:
        args.peers = [2] if args.quick else [4, 8]
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.rounds < 3:
        raise SystemExit("bench_sim: --rounds must be >= 3 (round 1 is not timed)")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    args.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in args.codecs if c not in CODEC_POLICIES]
    if unknown:
        raise SystemExit(f"bench_sim: unknown codec(s) {', '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.codec_child:
        try:
            result = codec_child(
                args.codec_child, args.params[0], args.peers[0], args.repeats, Path(args.dir)
            )
        except BenchError as exc:
            print(f"bench_sim: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0
    if args.child:
        try:
            result = child(args.params[0], args.peers[0], args.rounds, Path(args.dir))
        except BenchError as exc:
            print(f"bench_sim: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0
    return run_and_report("bench_sim", "simulation coordinator", args, run)


if __name__ == "__main__":
    sys.exit(main())
