"""pytest fixtures for the conformance self-tests (``pytest_plugins = ["tests.broken.fixtures"]``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fork server's socket path, one per test session (stopped at teardown)."""
    path = str(tmp_path_factory.mktemp("zygote") / "zygote.sock")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.broken", "--zygote-serve", path],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        assert process.poll() is None, "the fork server exited while starting"
        assert time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.05)
    yield path
    process.terminate()
    process.wait(30)
