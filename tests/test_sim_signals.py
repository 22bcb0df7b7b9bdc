"""A signal sent to the whole process group (a script's ``kill -INT -PGID``, or Ctrl-C) ends
the run as an interrupted, resumable run: workers that stopped on the signal are not peer
failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_to_the_process_group_is_an_interruption_not_peer_failures(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # As a script's background job: SIGINT ignored by fakecoord itself (a non-interactive
    # shell does that to `cmd &`); the workers install their own handlers and stop on it.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fakecoord",
            "run",
            "--quiet",
            "--peers",
            "2",
            "--rounds",
            "200",
            "--inner-steps",
            "5",
            "--out",
            str(out),
        ],  # fmt: skip
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no round completed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "unplanned" not in err and "failed" not in err
    assert f"resume with --resume {out}" in err
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert not any(f.get("kind") == "unplanned" for f in checkpoint["report"]["faults"])
