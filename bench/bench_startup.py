"""Worker start-up: from spawning ``python -m worker`` to its first ``hello`` answer.

The factory (``bench.workloads:make_workload``) imports torch, as real
workloads do, so the limit is ``python -c "import torch"`` with the same
interpreter and environment, timed from spawn until torch is imported (the
child then says so on stdout; its exit, which adds interpreter teardown, is
reported for information).  Runs are interleaved, medians
over ``--runs`` each after one warm-up of each (page cache).  Target: <= 1.2x.
With ``--reference``, the seed worker is measured the same way.

Run: ``python -m bench.bench_startup [--runs 7] [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .common import (
    PYTHON,
    REPO_ROOT,
    BenchError,
    Row,
    Stats,
    add_common_arguments,
    interleaved,
    reference_path,
    run_and_report,
    spawn_worker,
    worker_env,
)

FACTORY = "bench.workloads:make_workload"
STARTUP_TARGET = 1.2


def worker_startup(reference: Path | None = None) -> Callable[[], float]:
    """A measure: spawn a worker, time until its hello answer, then let it exit."""

    def measure() -> float:
        start = time.perf_counter()
        with spawn_worker(FACTORY, {}, reference) as worker:
            worker.call("hello")
            elapsed = time.perf_counter() - start
        return elapsed

    return measure


IMPORT_TORCH = "import torch; print('imported', flush=True)"


class ImportTorch:
    """A measure: spawn ``python -c "import torch"`` and time until the import is
    done (the child says so on stdout).  The time to the child's exit, which
    adds interpreter teardown, is kept in :attr:`wall` for information."""

    def __init__(self) -> None:
        self.wall: list[float] = []

    def __call__(self) -> float:
        start = time.perf_counter()
        child = subprocess.Popen(
            [PYTHON, "-c", IMPORT_TORCH], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=worker_env(), cwd=REPO_ROOT,
        )  # fmt: skip
        assert child.stdout is not None
        line = child.stdout.readline()
        elapsed = time.perf_counter() - start
        try:
            _, err = child.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise BenchError('python -c "import torch" did not exit within 300 s') from None
        self.wall.append(time.perf_counter() - start)
        if child.returncode != 0 or line.strip() != b"imported":
            raise BenchError(f'python -c "import torch" failed:\n{err.decode()[-2000:]}')
        return elapsed


def run(args: argparse.Namespace) -> list[Row]:
    """Measure start-up; returns the result rows."""
    reference = reference_path(args)
    import_torch = ImportTorch()
    measures = {"ours": worker_startup(), "torch": import_torch}
    if reference is not None:
        measures["reference"] = worker_startup(reference)
    print(f"start-up: {args.runs} runs of each, interleaved ...", flush=True)
    stats = interleaved(measures, args.runs, warmup=0 if args.quick else 1)
    ours, limit = stats["ours"], stats["torch"]
    return [
        Row("start to first hello", f"{args.runs} runs", ours.median, limit.median,
            'python -c "import torch"', STARTUP_TARGET, ours_spread=ours.spread,
            limit_spread=limit.spread,
            reference=stats["reference"].median if "reference" in stats else None,
            note="limit = spawn until torch is imported; with interpreter exit it takes "
            f"{Stats(tuple(import_torch.wall[-args.runs:])).median:.3f} s"),
    ]  # fmt: skip


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_common_arguments(parser)
    parser.add_argument("--runs", type=int, default=None, help="timed runs of each (default 7)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = argument_parser().parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 7
    if args.runs < 1:
        raise SystemExit("bench_startup: --runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_and_report("bench_startup", "start-up", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
