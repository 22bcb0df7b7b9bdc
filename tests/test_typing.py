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


TYPED_WORKLOAD = """
from typing import Any

from worker import Workload


class Mine:
    workload_name = "mine"

    def runtime_device(self) -> str:
        return "python-torch-cpu"

    def capability_probe(self) -> dict[str, Any]:
        return {}

    def init_model(self, device: str) -> Any:
        return None

    def train_window(self, state: Any, batches: list[dict[str, Any]]) -> dict[str, Any]:
        return {}

    def evaluate(self, state: Any, split: Any) -> dict[str, Any]:
        return {}

    def merge_candidate_models(self, base: Any, candidates: list[dict[str, Any]], policy: Any) -> Any:
        return None

    def apply_single_root_ema(self, base: Any, merged: Any, policy: Any) -> Any:
        return None

    def reconcile_canonical_model(self, local: Any, canonical: Any, strategy: Any) -> Any:
        return None


def make_workload(config: Any) -> Workload:
    return Mine()
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mypy", path=str(Path(sys.executable).parent)) is None,
                    reason="mypy is not installed in this environment")  # fmt: skip
def test_the_documented_mypy_path_setting_checks_a_workload_against_the_protocol(tmp_path):
    """docs/workload-authors.md: `mypy_path = "path/to/checkout"` lets mypy find `worker`
    whatever the install mode (an editable install alone hides it from mypy)."""
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(TYPED_WORKLOAD)
    (tmp_path / "pyproject.toml").write_text(f'[tool.mypy]\nmypy_path = "{REPO_ROOT}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "my_pkg"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (package / "train.py").write_text(
        TYPED_WORKLOAD.replace("    def evaluate", "    def _evaluate")
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "my_pkg"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "protocol member" in result.stdout  # the protocol is checked
    assert "evaluate" in result.stdout.split("protocol member", 1)[1]
