"""A reader that goes away (``... | head``) ends a command quietly: no traceback, no "internal
error", exit 141 (128 + SIGPIPE), as a Unix filter."""

from __future__ import annotations

import os
import subprocess
import sys


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    try:
        return subprocess.run(
            [sys.executable, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_conformance_list_into_a_closed_pipe_ends_quietly() -> None:
    done = run_into_closed_pipe("-m", "conformance", "--list")
    assert done.stderr == "" and done.returncode == 141
