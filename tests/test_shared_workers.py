"""``--workers N``: peers hosted on N worker processes, each peer its own model handles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fakecoord.sim import SimConfig
from fakecoord.sim.config import choose_threads
from fakecoord.sim.hosting import CHECKS, conformance_argv
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

REF = {
    "kind": "micro_epoch", "lease_id": "bench", "microshard_ids": [], "ordinals": [],
    "bytes_len": 0, "pipeline_kind": "generated-dataset", "payload": {},
}  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fakecoord", "run", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=240,
    )  # fmt: skip


def test_shared_workers_give_the_packs_of_one_worker_per_peer(tmp_path: Path) -> None:
    common = ["--peers", "4", "--rounds", "2", "--inner-steps", "4"]
    shared = _run(*common, "--workers", "2", "--out", str(tmp_path / "shared"))
    assert shared.returncode == 0, shared.stderr
    header = " ".join(shared.stderr.split())
    assert "peers share workload objects (4 peers on 2 worker processes" in header
    own = _run(*common, "--out", str(tmp_path / "own"))
    assert own.returncode == 0, own.stderr
    started = [
        json.loads(line)
        for line in (tmp_path / "shared" / "logs" / "workers.jsonl").read_text().splitlines()
    ]
    assert sorted(s["slot"] for s in started) == ["worker-0", "worker-1"]
    report = json.loads((tmp_path / "shared" / "report.json").read_text())
    assert report["shared_workers"]["workers"] == 2
    files = sorted(
        p.relative_to(tmp_path / "own") for p in (tmp_path / "own" / "rounds").rglob("*")
    )
    assert Path("rounds/0001/peer-3/local-parameters/values.f32le") in files
    for name in files:
        if (tmp_path / "own" / name).is_file():
            mine = (tmp_path / "shared" / name).read_bytes()
            assert mine == (tmp_path / "own" / name).read_bytes(), name


def test_a_workload_sharing_state_across_handles_is_refused(tmp_path: Path) -> None:
    batches = tmp_path / "batches.json"
    batches.write_text(json.dumps([[REF], [REF]]))
    out = tmp_path / "run"
    done = _run(
        "--peers", "2", "--workers", "1", "--factory", "bench.workloads:make_inner_loop_workload",
        "--config-json", '{"reuse_model": true}', "--batches", str(batches), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--workers: peers would share this workload's objects" in done.stderr
    assert "FAIL semantics.handles_independent" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "2", "--workers", "3"], "--workers must be between 1 and --peers"),
        (["--workers", "2", "--fault", "crash@1:1"], "crash and hang faults"),
        (["--workers", "2", "--diloco-backend", "command"], "--diloco-backend command has none"),
    ],
)
def test_bad_workers_settings_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = _run(*args, "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert message in done.stderr


def test_the_check_runs_the_workload_as_the_workers_load_it() -> None:
    config = SimConfig(workers=2, seed=5, worker_cmd=["my-worker", "--x"])
    argv = conformance_argv(config, choose_threads(config), {"k": 1})
    assert argv[1:3] == ["-m", "conformance"]
    wrapped = json.loads(argv[argv.index("--config-json") + 1])
    assert wrapped["factory"] == "fakecoord.demo:make_workload"
    assert wrapped["config"] == {"k": 1} and wrapped["seed"] == 5
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--select"] == list(CHECKS)
    assert argv[argv.index("--worker-cmd") + 1] == "my-worker --x"
