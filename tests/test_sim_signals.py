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

RUN = ["-m", "fakecoord", "run", "--quiet", "--peers", "2", "--rounds", "200", "--inner-steps", "5"]


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    found, todo = [], children(pid)
    while todo:
        found.append(todo.pop())
        todo.extend(children(found[-1]))
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("backend", "target"),
    [("worker", "group"), ("command", "group"), ("worker", "workers")],
)
def test_sigint_to_the_process_group_is_an_interruption_not_peer_failures(
    tmp_path: Path, backend: str, target: str
) -> None:
    """``group``: as a script's background job, started with SIGINT ignored (a
    non-interactive shell does that to ``cmd &``), then ``kill -INT -PGID``: fakecoord and
    its workers all stop on it.  ``workers``: only the workers get it (fakecoord learns it
    from their last words, "received SIGINT")."""
    if target == "workers" and not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the workers")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, *RUN, "--diloco-backend", backend, "--out", str(out)],
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
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            # Forked workers are the fork server's children (it ignores SIGINT itself).
            workers = descendants(proc.pid)
            assert workers
            for pid in workers:
                os.kill(pid, signal.SIGINT)
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
