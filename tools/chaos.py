"""Signal a worker while it exports a pack, many times, and count what is left behind.

``python -m tools.chaos`` (from the repository root) runs two campaigns of
``--trials`` workers each (a new worker per trial, since each one stops):

- ``random``: SIGTERM or SIGINT at a random moment of a large export (from
  just before the request to just after a typical export's duration);
- ``watch``: SIGSTOP the moment a ``.partial-`` entry appears next to the
  target, then SIGTERM and SIGCONT: the signal lands right after the
  worker created its temporary directory or file.

After each trial the worker must have exited 0 with one line on stderr and
no traceback, and the directory must hold no ``.partial-`` entry and no
pack other than the old one or a complete new one.  Half the trials export
into a fresh directory, half over an existing pack.  Prints one line per
campaign; ``--json FILE`` writes every trial.  Exit status 1 when any trial
broke the contract.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fakecoord.errors import FakecoordError
from fakecoord.spawn import spawn_worker
from worker.packs import MANIFEST_NAME, PACK_FORMAT, VALUES_NAME

ROOT = Path(__file__).resolve().parent.parent
FACTORY = "tools.chaos:make_export_workload"
TIMEOUT = 60.0
"""Seconds any one wait may take (connect, answer, exit)."""


class ChaosError(Exception):
    """A trial could not run (the worker did not start, or never answered)."""


class ExportWorkload:
    """Just enough workload to export a large pack: ``tensors`` float32 buffers of
    ``numel`` elements (config; 64 x 262144 = 64 MiB by default)."""

    workload_name = "chaos-export"

    def __init__(self, config: dict | None) -> None:
        config = config or {}
        self.tensors = int(config.get("tensors", 64))
        self.numel = int(config.get("numel", 256 * 1024))

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 1.0,
            "target_window_seconds": 1,
        }

    def init_model(self, device: str) -> Any:
        import torch

        module = torch.nn.Module()
        for i in range(self.tensors):
            module.register_buffer(f"t{i:04d}", torch.full((self.numel,), float(i)))
        return {"model": module}

    def train_window(self, state: Any, batches: list) -> dict:
        return {}

    def evaluate(self, state: Any, split: Any) -> dict:
        return {}

    def merge_candidate_models(self, base: Any, candidates: list, policy: Any) -> None:
        return None

    def apply_single_root_ema(self, base: Any, merged: Any, policy: Any) -> None:
        return None

    def reconcile_canonical_model(self, local: Any, canonical: Any, strategy: Any) -> None:
        return None


def make_export_workload(config: dict | None) -> ExportWorkload:
    return ExportWorkload(config)


# ---------------------------------------------------------------------------
# One worker, driven over a raw socket (the signal may cut any frame)


class Worker:
    """A spawned ``python -m worker`` and the coordinator's end of its connection."""

    def __init__(self, workdir: Path, config: dict) -> None:
        self.stderr_path = workdir / "worker.stderr"
        with open(self.stderr_path, "wb") as stderr:
            try:
                spawned = spawn_worker(
                    FACTORY, config, pythonpath=[ROOT], stderr=stderr, accept_timeout=TIMEOUT
                )
            except FakecoordError as exc:
                raise ChaosError(f"the worker did not start: {exc}") from None
        self.proc = spawned.process
        self.sock = spawned.sock
        self.sock.settimeout(TIMEOUT)
        self.next_id = 1

    def send(self, method: str, params: Any) -> int:
        request_id = self.next_id
        self.next_id += 1
        body = json.dumps({"id": request_id, "method": method, "params": params}).encode()
        self.sock.sendall(struct.pack(">Q", len(body)) + body)
        return request_id

    def receive(self) -> dict | None:
        """The next response, or None when the worker closed the connection
        (at a frame boundary or, stopped while answering, inside a frame)."""
        header = self._exact(8)
        if len(header) < 8:
            return None
        length = struct.unpack(">Q", header)[0]
        body = self._exact(length)
        return json.loads(body) if len(body) == length else None

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def call(self, method: str, params: Any) -> Any:
        request_id = self.send(method, params)
        answer = self.receive()
        if not answer or answer.get("id") != request_id or not answer.get("ok"):
            raise ChaosError(f"{method}: unexpected answer {answer!r}")
        return answer["result"]

    def wait(self) -> int:
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ChaosError(f"the worker did not exit within {TIMEOUT:g} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------------
# Trials


@dataclass
class Trial:
    campaign: str
    signal: str
    existing: bool
    delay: float | None = None
    outcome: str = ""
    """``stopped`` (no answer), ``answered`` (the export finished first)."""
    exit_status: int | None = None
    problems: list[str] = field(default_factory=list)


def write_old_pack(path: Path) -> dict[str, bytes]:
    """A small valid pack written by hand, as another peer would; returns its files."""
    path.mkdir(parents=True)
    (path / VALUES_NAME).write_bytes(struct.pack("<2f", 1.5, -2.5))
    manifest = {
        "format": PACK_FORMAT,
        "model_schema_hash": "old",
        "layout_hash": "torch-layout-old",
        "parameter_count": 2,
        "values_f32_le": VALUES_NAME,
    }
    (path / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def check_directory(parent: Path, target: Path, old: dict[str, bytes] | None) -> list[str]:
    """What is wrong on disk: ``.partial-`` leftovers, or a manifest whose values
    are not the ones it describes."""
    problems = [
        f"leftover {p.relative_to(parent)}" for p in parent.rglob("*") if ".partial-" in p.name
    ]
    manifest_path = target / MANIFEST_NAME
    if manifest_path.exists():
        files = {p.name: p.read_bytes() for p in target.iterdir()}
        manifest = json.loads(files[MANIFEST_NAME])
        values = manifest["values_f32_le"]  # a re-export names its own values file
        if old is not None and files.get(MANIFEST_NAME) == old[MANIFEST_NAME]:
            if files.get(values) != old[VALUES_NAME]:
                problems.append("the old manifest describes values that changed")
        else:
            size = len(files.get(values, b""))
            if size != manifest["parameter_count"] * 4:
                problems.append(
                    f"manifest of {manifest['parameter_count']} values over {size} bytes"
                )
        stray = sorted(set(files) - {MANIFEST_NAME, values})
        if stray:
            problems.append(f"files no manifest names: {stray}")
    return problems


def _watch(worker: Worker, parent: Path, target: Path) -> bool:
    """SIGSTOP the worker as soon as a temporary entry appears; False if none did."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        names = os.listdir(parent) + (os.listdir(target) if target.is_dir() else [])
        if any(".partial-" in name for name in names):
            os.kill(worker.proc.pid, signal.SIGSTOP)
            return True
        if select.select([worker.sock], [], [], 0.0002)[0]:
            return False
    return False


def run_trial(
    campaign: str, index: int, workdir: Path, config: dict, export_seconds: float
) -> Trial:
    rng = random.Random(index)
    sig = (signal.SIGTERM, signal.SIGINT)[index % 2]
    trial = Trial(campaign, sig.name, existing=index % 4 >= 2)
    trial_dir = workdir / f"{campaign}-{index:03d}"
    trial_dir.mkdir(parents=True)
    worker = Worker(trial_dir, config)
    try:
        model = worker.call("init_model", {"device": "cpu"})["model_id"]
        parent = trial_dir / "packs"
        parent.mkdir()
        target = parent / "pack"
        old = write_old_pack(target) if trial.existing else None
        params = {"model_id": model, "parameter_pack_path": str(target), "model_schema_hash": "s"}
        if campaign == "random":
            trial.delay = round(rng.uniform(0.0, 1.2 * export_seconds), 4)
            worker.send("export_parameter_pack", params)
            time.sleep(trial.delay)
            worker.proc.send_signal(sig)
        else:
            worker.send("export_parameter_pack", params)
            stopped = _watch(worker, parent, target)
            worker.proc.send_signal(sig)
            if stopped:
                os.kill(worker.proc.pid, signal.SIGCONT)
        answer = worker.receive()
        trial.outcome = "stopped" if answer is None else "answered"
        if answer is not None:
            worker.sock.shutdown(socket.SHUT_WR)  # the signal may still be pending
        trial.exit_status = worker.wait()
        if trial.exit_status != 0:
            trial.problems.append(f"exit status {trial.exit_status}")
        stderr = worker.stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        if "Traceback" in stderr or len(lines) > 1:
            trial.problems.append(f"stderr: {stderr.strip()[:300]!r}")
        trial.problems += check_directory(parent, target, old)
    finally:
        worker.sock.close()
        if worker.proc.poll() is None:
            worker.kill()
    shutil.rmtree(trial_dir, ignore_errors=True)
    return trial


def measure_export(workdir: Path, config: dict) -> float:
    """Seconds one export of the campaign's pack takes on this machine now."""
    worker = Worker(workdir, config)
    try:
        model = worker.call("init_model", {"device": "cpu"})["model_id"]
        started = time.monotonic()
        params = {
            "model_id": model,
            "parameter_pack_path": str(workdir / "p"),
            "model_schema_hash": "s",
        }
        worker.call("export_parameter_pack", params)
        seconds = time.monotonic() - started
        worker.call("shutdown", None)
        worker.wait()
        return seconds
    finally:
        worker.sock.close()
        shutil.rmtree(workdir / "p", ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("campaigns", nargs="*", help="random and/or watch (default: both)")
    parser.add_argument("--trials", type=int, default=20, help="workers per campaign (20)")
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--numel", type=int, default=256 * 1024)
    parser.add_argument("--json", metavar="FILE", help="write every trial here")
    args = parser.parse_args(argv)
    campaigns = args.campaigns or ["random", "watch"]
    unknown = sorted(set(campaigns) - {"random", "watch"})
    if unknown:
        parser.error(f"unknown campaign {unknown[0]!r}; expected random or watch")

    config = {"tensors": args.tensors, "numel": args.numel}
    workdir = Path(tempfile.mkdtemp(prefix="burn-p2p-chaos-"))
    trials: list[Trial] = []
    try:
        export_seconds = measure_export(workdir, config)
        print(
            f"one export of {args.tensors * args.numel * 4 / 2**20:.0f} MiB takes {export_seconds:.3f} s here"
        )
        for campaign in campaigns:
            ran = [
                run_trial(campaign, i, workdir, config, export_seconds) for i in range(args.trials)
            ]
            trials += ran
            stopped = sum(t.outcome == "stopped" for t in ran)
            broken = [t for t in ran if t.problems]
            print(
                f"{campaign}: {len(ran)} signals sent, {stopped} stopped an export, "
                f"{len(ran) - stopped} came after it; {len(ran) - len(broken)} survived cleanly, "
                f"{len(broken)} broke the contract"
            )
            for t in broken:
                print(
                    f"  {t.signal} {'existing' if t.existing else 'fresh'}: {'; '.join(t.problems)}"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps([asdict(t) for t in trials], indent=2), encoding="utf-8"
        )
    return 1 if any(t.problems for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
