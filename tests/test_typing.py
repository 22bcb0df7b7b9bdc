"""The worker's typing surface: the Workload protocol, lazy torch, a clean mypy run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.example_workload import ExampleWorkload
from tests.service.support import Minimal
from tests.workloads import TinyWorkload
from worker import Workload
from worker.workload import InnerLoopHook, PatchHook

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_workloads_satisfy_the_protocol_and_optional_hooks_are_separate():
    assert isinstance(TinyWorkload({}), Workload)
    assert isinstance(TinyWorkload({}), InnerLoopHook) and isinstance(TinyWorkload({}), PatchHook)
    assert isinstance(ExampleWorkload({}), Workload)
    assert isinstance(Minimal(), Workload) is False  # no merge / EMA / reconcile hooks
    assert not isinstance(Minimal(), InnerLoopHook)


def test_importing_the_worker_does_not_import_torch():
    code = (
        "import sys, worker, worker.server, worker.job, worker.methods\n"
        "from worker import Workload\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=60)


@pytest.mark.skipif(shutil.which("mypy", path=str(Path(sys.executable).parent)) is None,
                    reason="mypy is not installed in this environment")  # fmt: skip
def test_mypy_is_clean_on_the_worker():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "worker/"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
