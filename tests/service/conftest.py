"""Fixtures of the service tests: workers over the tiny torch workload."""

from __future__ import annotations

import pytest

from tests.service.support import export, ok
from tests.workloads import TinyWorkload
from worker.service import Worker


@pytest.fixture
def worker() -> Worker:
    return Worker(TinyWorkload({}))


@pytest.fixture
def tiny(worker) -> Worker:
    """A worker with two live models, m1 and m2."""
    assert ok(worker, "init_model", {"device": "cpu"}) == {"model_id": "m1"}
    assert ok(worker, "init_model", {"device": "cpu"}) == {"model_id": "m2"}
    return worker


@pytest.fixture
def prepared(tiny, tmp_path) -> Worker:
    """``tiny`` plus a pack (``tmp_path/pack``) and an artifact (``tmp_path/artifact.safetensors``)
    exported from m2."""
    assert export(tiny, "m2", tmp_path / "pack")["ok"]
    ok(
        tiny,
        "materialize_model_artifact",
        {"model_id": "m2", "artifact_path": str(tmp_path / "artifact.safetensors")},
    )
    return tiny
