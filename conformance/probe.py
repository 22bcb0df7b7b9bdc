"""The layout probe: the suite's own bounded subprocess that builds the workload.

No workload code runs in the suite's process.  Where a check needs what only
torch can see, the shapes and dtypes behind a layout hash (to recompute it
independently of the worker, docs/protocol.md §3) and a model built in another
process, the suite starts ``python -m conformance.probe REQUEST`` with the
worker's environment (the same import roots, the same working directory).

The child imports the factory, calls it, then calls ``init_model`` up to
``calls`` times; after each step it publishes what it has so far
(``REPORT``: the phase it is in, one layout per call, the first model's
float32 values).  It leaves with ``os._exit``, so a thread the workload
started cannot keep it alive.  The parent (:class:`Probe`) waits at most
``--timeout`` seconds, then kills the child's whole process group, and
reads whatever was published: a hang, a crash or an ``os._exit`` in a hook
becomes a :class:`ProbeResult` saying in which phase the child stopped.

This module imports neither torch nor the workload unless run as the child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakecoord import files
from fakecoord.spawn import child_environment

from .layout import LocalLayout

REPORT = "probe-report.json"
VALUES = "probe-values.f32le"
LOG = "probe.log"


@dataclass
class ProbeResult:
    """What the probe saw; ``layouts`` holds one layout per completed ``init_model`` call."""

    layouts: list[LocalLayout] = field(default_factory=list)
    values: Any = None
    """The first model's float32 values in layout order (numpy), or None."""
    opaque: str | None = None
    """Why the state has no generic layout (an opaque state with custom pack hooks)."""
    phase: str = "starting"
    """Where the child was when it stopped: ``import``, ``factory``, ``init_model 3``, ``done``."""
    error: str | None = None
    """What went wrong, on one line (None when every requested call completed)."""
    details: str = ""
    setup_failed: bool = False
    """True when the workload could not even be imported or built here (not a hook's fault)."""
    raw: dict = field(default_factory=dict)
    """What hooks returned before any worker shaped it (protocol.portable_results):
    ``workload_name`` (its type name and repr, or absent when the attribute is
    missing), ``train_window`` (the result's type name, or the exception it raised)."""


def probe_command() -> list[str]:
    """``python -m conformance.probe`` with this interpreter."""
    return [sys.executable, "-m", "conformance.probe"]


class Probe:
    """One probe child: :meth:`start` it early, :meth:`result` waits (bounded) and reads it."""

    def __init__(
        self,
        *,
        factory: str,
        config: Any,
        device: str | None,
        calls: int,
        root: Path,
        batches: list | None = None,
        timeout: float,
        command: Sequence[str] | None = None,
        pythonpath: Sequence[str] = (),
        env: Any = None,
        cwd: str | None = None,
    ) -> None:
        self.root = root
        self.timeout = timeout
        self.calls = calls
        self.request = {
            "factory": factory,
            "config": config,
            "device": device,
            "calls": calls,
            "batches": batches,
            "report": str(root / REPORT),
            "values": str(root / VALUES),
        }
        self.command = list(command) if command is not None else probe_command()
        self.pythonpath = list(pythonpath)
        self.env = env
        self.cwd = cwd
        self._process: subprocess.Popen | None = None
        self._started = 0.0
        self._result: ProbeResult | None = None

    def start(self) -> None:
        """Start the child (once); a failure to start is reported by :meth:`result`."""
        if self._process is not None or self._result is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        request = self.root / "probe-request.json"
        files.write_bytes(request, json.dumps(self.request).encode("utf-8"))
        environment = child_environment(self.env, self.pythonpath, worker_root=True)
        self._started = time.monotonic()
        try:
            with open(self.root / LOG, "ab") as log:
                self._process = subprocess.Popen(
                    [*self.command, str(request)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=environment,
                    cwd=self.cwd,
                    start_new_session=True,  # its own process group: killed whole on timeout
                )
        except OSError as exc:
            self._result = ProbeResult(
                error=f"cannot start the layout probe {self.command[0]!r}: {exc}",
                setup_failed=True,
            )

    def result(self) -> ProbeResult:
        """Wait until the child exits or ``timeout`` s after its start, kill it, read its report."""
        if self._result is not None:
            return self._result
        self.start()
        if self._result is not None:
            return self._result
        assert self._process is not None
        remaining = self._started + self.timeout - time.monotonic()
        status: int | None
        try:
            status = self._process.wait(max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            status = None
        self.stop()
        self._result = self._read(status)
        return self._result

    def stop(self) -> None:
        """Kill the child's process group (if it still runs) and reap the child."""
        process = self._process
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass  # already gone (its group with it)
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            pass

    def _read(self, status: int | None) -> ProbeResult:
        try:
            report = json.loads((self.root / REPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
        result = ProbeResult(phase=str(report.get("phase", "starting")))
        try:
            result.layouts = [LocalLayout.from_json(v) for v in report.get("layouts", [])]
        except ValueError as exc:
            result.error = f"the layout probe wrote a malformed report ({exc})"
            return result
        result.opaque = report.get("opaque")
        raw = report.get("raw")
        result.raw = raw if isinstance(raw, dict) else {}
        if result.layouts and report.get("values_written"):
            import numpy as np

            result.values = np.fromfile(self.root / VALUES, dtype="<f4")
        tail = _log_tail(self.root / LOG)
        where = _phase_text(result.phase)
        if report.get("error"):
            result.error = f"{where} raised {report['error']}"
            result.details = report.get("traceback", "")
            result.setup_failed = result.phase in ("import", "factory")
        elif status is None:
            result.error = (
                f"{where} did not return within {self.timeout:g} s (the probe process was killed)"
            )
        elif result.phase != "done":
            result.error = (
                f"the probe process exited with status {status} during {where} without raising "
                "(os._exit or a crash in the workload)"
            )
            result.details = tail
        if result.error and tail and not result.details:
            result.details = tail
        return result


def _phase_text(phase: str) -> str:
    if phase == "import":
        return "importing the factory's module"
    if phase == "factory":
        return "calling the factory"
    if phase.startswith("init_model"):
        number = phase.partition(" ")[2]
        return f"init_model (call {number})" if number else "init_model"
    return f"the probe ({phase})"


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


# ---------------------------------------------------------------------------
# The child: python -m conformance.probe REQUEST


def _publish(request: dict, report: dict) -> None:
    files.write_bytes(request["report"], json.dumps(report).encode("utf-8"))


def _factory(spec: str) -> Any:
    import importlib

    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def child_main(request_path: str) -> None:
    """Build the workload and report its layouts; always ends the process with ``os._exit``."""
    code = 0
    try:
        request = json.loads(Path(request_path).read_text(encoding="utf-8"))
        report: dict[str, Any] = {"phase": "import", "layouts": []}
        _publish(request, report)
        try:
            factory = _factory(request["factory"])
            report["phase"] = "factory"
            _publish(request, report)
            workload = factory(request["config"])
            report["raw"] = raw = _raw_name(workload)
            device = request["device"]
            if device is None:
                report["phase"] = "runtime_device"
                _publish(request, report)
                device = workload.runtime_device()
            for call in range(1, int(request["calls"]) + 1):
                report["phase"] = f"init_model {call}"
                _publish(request, report)
                state = workload.init_model(device)
                if not _record(request, report, state, first=call == 1):
                    break
                del state
            if request.get("batches"):
                report["phase"] = "train_window"
                _publish(request, report)
                raw["train_window"] = _raw_train(workload, device, request["batches"])
            report["phase"] = "done"
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a hook included
            report["error"] = f"{type(exc).__name__}: {exc}"
            report["traceback"] = traceback.format_exc()
        _publish(request, report)
    except BaseException:
        traceback.print_exc()
        code = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _raw_name(workload: Any) -> dict:
    """The ``workload_name`` attribute as the factory's object holds it."""
    if not hasattr(workload, "workload_name"):
        return {}
    name = workload.workload_name
    return {"workload_name": {"type": type(name).__name__, "repr": repr(name)[:200]}}


def _raw_train(workload: Any, device: str, batches: list) -> dict:
    """What ``train_window`` returns on a fresh model, before any worker shapes it
    (a hook that raises here is protocol.train_window_metrics' business, not ours)."""
    try:
        result = workload.train_window(workload.init_model(device), batches)
    except BaseException as exc:  # SystemExit too: reported here, judged elsewhere
        return {"raised": f"{type(exc).__name__}: {exc}"[:300]}
    return {"type": type(result).__name__, "dict": isinstance(result, dict)}


def _record(request: dict, report: dict, state: Any, *, first: bool) -> bool:
    """Add ``state``'s layout to ``report``; False when it has no generic layout."""
    from .errors import LayoutUnavailable
    from .layout import float32_values, local_layout

    tensors: list = []
    try:
        layout = local_layout(state, tensors=tensors if first else None)
    except LayoutUnavailable as exc:
        report["opaque"] = str(exc)
        report["phase"] = "done"
        return False
    if first:
        files.write_bytes(request["values"], float32_values(tensors))
        report["values_written"] = True
    report["layouts"].append(layout.to_json())
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(
            "usage: python -m conformance.probe REQUEST.json (started by the suite)",
            file=sys.stderr,
        )
        sys.exit(2)
    child_main(sys.argv[1])
