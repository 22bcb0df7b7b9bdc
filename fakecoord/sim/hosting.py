"""``--workers N``: several peers per worker process, and the check that allows it.

By default every peer has its own worker process, as in the network.  With
``--workers N`` the peers are dealt round-robin onto N worker processes;
each peer keeps its own model handles (the protocol allows any number of
handles per worker), but the peers on one worker share its workload object.
That is only sound for a workload whose hooks keep every handle's state to
itself, so before anything is created the run asks the conformance suite,
in a subprocess that starts its own worker (workload code never runs in
fakecoord's process), for its handle-independence checks
(:data:`CHECKS`), and refuses the option (exit 2, with the failing lines)
unless they pass.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import SettingsError
from . import bootstrap
from .config import SimConfig, ThreadChoice

CHECKS = ("semantics.handles_independent", "semantics.release_model")
"""The conformance checks a workload must pass for ``--workers``."""
ROOT = Path(__file__).resolve().parent.parent.parent


def conformance_argv(
    config: SimConfig, threads: ThreadChoice, worker_config: Any, batches: str | None = None
) -> list[str]:
    """``python -m conformance`` running :data:`CHECKS` on the run's workload, as its workers
    load it.  The checks train one handle only when given ``batches`` (a JSON file of refs the
    workload reads); without, that step is left out (``--allow-untrained``)."""
    wrapped = bootstrap.wrap(config.workload_factory, worker_config, threads.threads, config.seed)
    argv = [
        sys.executable, "-m", "conformance", "--factory", bootstrap.FACTORY,
        "--config-json", json.dumps(wrapped), "--timeout", f"{config.start_timeout:g}",
        "--pythonpath", os.getcwd(), "--pythonpath", str(ROOT), "--allow-untrained",
    ]  # fmt: skip
    if batches is not None:
        argv += ["--batches", batches]
    for check in CHECKS:
        argv += ["--select", check]
    if config.worker_cmd is not None:
        argv += ["--worker-cmd", shlex.join(config.worker_cmd)]
    return argv


def check_shared_workers(
    config: SimConfig, threads: ThreadChoice, worker_config: Any, refs: list | None = None
) -> str:
    """Run :data:`CHECKS` (training on ``refs`` when given: one peer's batch refs); returns
    their summary, raises :class:`SettingsError` naming the failure."""
    env = dict(os.environ)
    paths = [os.getcwd(), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    with tempfile.TemporaryDirectory(prefix="fakecoord-workers-check-") as scratch:
        batches = None
        if refs:
            batches = os.path.join(scratch, "batches.json")
            with open(batches, "w", encoding="utf-8") as f:
                json.dump(refs, f)
        try:
            done = subprocess.run(
                conformance_argv(config, threads, worker_config, batches), capture_output=True,
                text=True, env=env, timeout=config.start_timeout * 4 + 60,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SettingsError(
                f"--workers: the handle-independence checks did not run ({exc})"
            ) from None
    lines = [line.rstrip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode == 0:
        return lines[-1] if lines else "passed"
    failed = [line for line in lines if line.lstrip().startswith(("FAIL", "ERROR", "INCOMPLETE"))]
    reason = "; ".join(failed) or (lines[-1] if lines else done.stderr.strip()[-500:])
    raise SettingsError(
        f"--workers: peers would share this workload's objects, and it fails the conformance "
        f"suite's handle-independence checks ({', '.join(CHECKS)}): {reason}"
    )


__all__ = ["CHECKS", "check_shared_workers", "conformance_argv"]
