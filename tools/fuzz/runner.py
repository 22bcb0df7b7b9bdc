"""The registry of fuzzed properties and the time-boxed runner (``python -m tools.fuzz``)."""

from __future__ import annotations

import argparse
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from . import artifacts, framing, packs, races, requests, sim
from .oracle import fd_count, rss_kib

USAGE = """Fuzz the worker's untrusted-input surfaces for a time budget, per target: frames,
requests, packs, artifacts, races; and the coordinator side's run inputs (sim).  Prints per property and per target the
inputs tried and the distinct failures found, then RSS and descriptors."""

TARGETS = ("frames", "requests", "packs", "artifacts", "races", "sim")


@dataclass(frozen=True)
class Property:
    """One fuzzed property: ``check`` must hold for every value of ``strategy``."""

    name: str
    target: str
    strategy: st.SearchStrategy
    check: Callable[[Any], None]
    ci_examples: int | None = None
    """Examples under ``tests/test_fuzz.py`` when fewer than the profile's (slow inputs)."""

    def __repr__(self) -> str:
        return f"Property({self.target}/{self.name})"


PROPERTIES: list[Property] = [
    Property("decoder-chunks", "frames", framing.decoder_inputs(), framing.check_decoder),
    Property("serve-socketpair", "frames", framing.serve_inputs(), framing.check_serve),
    Property(
        "respond-bytes",
        "requests",
        st.binary(max_size=200) | requests.mutated_bodies(),
        requests.check_bytes,
    ),  # fmt: skip
    Property("method-params", "requests", requests.method_inputs(), requests.check_method),
    Property("pack-import", "packs", packs.pack_inputs(), packs.check_pack),
    Property(
        "artifact-load",
        "artifacts",
        st.lists(artifacts.ARTIFACT_MUTATIONS, max_size=3),
        artifacts.check_artifact,
    ),  # fmt: skip
    Property("export-import", "races", races.RACES, races.check_race, ci_examples=12),
    Property("toml-options", "sim", sim.toml_inputs(), sim.check_toml),
    Property("checkpoint", "sim", sim.checkpoint_inputs(), sim.check_checkpoint),
    Property("output-paths", "sim", sim.path_inputs(), sim.check_path),
]


@dataclass
class Report:
    """What one property's run found."""

    name: str
    target: str = ""
    tried: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


def _failure_key(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    first = re.sub(r"/[^\s'\"]*burn-p2p-fuzz-[^\s'\"]*", "<tmp>", first)
    first = re.sub(r"\d+", "#", first)
    return f"{type(exc).__name__}: {first[:160]}"


def _leaves(exc: BaseException) -> list[BaseException]:
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup (Python 3.11+)
    if isinstance(group, tuple):
        return [leaf for sub in group for leaf in _leaves(sub)]
    return [exc]


def run_property(prop: Property, seconds: float, base_seed: int, batch: int = 100) -> Report:
    """Run ``prop`` in seeded hypothesis batches for ``seconds``; shrink and record failures."""
    report = Report(prop.name, prop.target)
    start = time.monotonic()
    deadline = start + seconds
    batch_number = 0
    while time.monotonic() < deadline:
        batch_number += 1

        @settings(
            max_examples=batch, database=None, deadline=None, derandomize=False,
            suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
            report_multiple_bugs=True, print_blob=False,
        )  # fmt: skip
        @seed(base_seed * 1_000_003 + batch_number)
        @given(prop.strategy)
        def body(value: Any) -> None:
            if time.monotonic() > deadline:
                return  # out of time: let the batch (or a shrink) finish at once
            report.tried += 1
            prop.check(value)

        try:
            body()
        except Exception as exc:
            for leaf in _leaves(exc):
                key = _failure_key(leaf)
                if key not in report.failures:
                    notes = "\n".join(getattr(leaf, "__notes__", []))
                    report.failures[key] = f"{type(leaf).__name__}: {str(leaf)[:2000]}\n{notes}"
    report.seconds = time.monotonic() - start
    return report


def _kib(value: int | None) -> str:
    return "?" if value is None else f"{value / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz", description=USAGE)
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="total budget, shared evenly by the targets (default 60)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument(
        "--verbose", action="store_true", help="print each failure's falsifying input"
    )
    args = parser.parse_args(argv)
    # Long hostile strings are the point; hypothesis need not warn about their repr.
    warnings.filterwarnings("ignore", message="Generating overly large repr")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    targets = TARGETS if args.target == "all" else (args.target,)
    chosen = [p for p in PROPERTIES if p.target in targets]
    rss_start, peak_start = rss_kib()
    fds_start = fd_count()
    print(f"fuzzing {', '.join(targets)} for {args.seconds:g} s (seed {args.seed})", flush=True)
    reports = []
    for prop in chosen:
        share = args.seconds / len(targets) / sum(p.target == prop.target for p in chosen)
        report = run_property(prop, share, args.seed)
        reports.append(report)
        print(
            f"  {prop.target:<9} {prop.name:<18} {report.tried:>7} inputs "
            f"in {report.seconds:6.1f} s"
            f"   {len(report.failures)} failure(s)",
            flush=True,
        )
        for key, detail in report.failures.items():
            print(f"      - {key}")
            if args.verbose:
                print("        " + detail.replace("\n", "\n        "))
    rss_end, peak_end = rss_kib()
    print(f"inputs tried: {sum(r.tried for r in reports)}; "
          f"distinct failures: {sum(len(r.failures) for r in reports)}")  # fmt: skip
    for target in targets:
        mine = [r for r in reports if r.target == target]
        print(f"  {target:<10} {sum(r.tried for r in mine):>7} inputs, "
              f"{sum(len(r.failures) for r in mine)} failure(s)")  # fmt: skip
    print(f"RSS start {_kib(rss_start)} (peak {_kib(peak_start)}), "
          f"end {_kib(rss_end)} (peak {_kib(peak_end)}); "
          f"open fds {fds_start} -> {fd_count()}")  # fmt: skip
    return 1 if any(r.failures for r in reports) else 0
