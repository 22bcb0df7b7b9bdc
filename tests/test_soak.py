"""CI-sized soaks: the worker stays flat over many mixed calls, and a fakecoord
run with faults leaves nothing behind.

The full sizes (10,000 calls, 200 rounds) and the printed figures are
``python -m tools.soak``; these run the same code smaller and assert on drift
and leftovers, never on time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.soak import (
    SoakError,
    children,
    open_fds,
    private_tmpdir,
    rss_kib,
    soak_sim,
    soak_worker,
)

pytestmark = pytest.mark.timeout(300)

WORKER_CALLS = 2000
WARMUP_CALLS = 300
RSS_TOLERANCE_KIB = 4 * 1024
"""Allocator noise over 1,700 measured calls; a leak of one small model per
cycle (~5 KiB, ~120 cycles) or of any request buffer would pass it only if
tiny, so the trend check below backs it up."""
SIM_ROUNDS = 20
SIM_FAULTS = ("crash@0:3", "hang@1:5", "error@0:7")


@pytest.fixture(scope="module")
def worker_soak(tmp_path_factory):
    return soak_worker(WORKER_CALLS, WARMUP_CALLS, workdir=tmp_path_factory.mktemp("soak"))


def test_worker_rss_stays_flat_over_mixed_calls(worker_soak) -> None:
    figures = worker_soak.figures()
    assert figures["calls"] >= WORKER_CALLS
    assert set(figures["ms_per_method"]) >= {
        "init_model", "train_window", "export_parameter_pack", "import_parameter_pack",
        "merge_candidate_models", "release_model",
    }  # fmt: skip
    assert worker_soak.rss_drift_kib <= RSS_TOLERANCE_KIB, figures
    # A leak grows steadily: the second half of the measured run must not
    # grow by more than the tolerance's share either.
    after = [s for s in worker_soak.samples if s.calls >= worker_soak.warm.calls]
    middle = after[len(after) // 2]
    assert worker_soak.end.rss_kib - middle.rss_kib <= RSS_TOLERANCE_KIB // 2, figures


def test_worker_descriptor_count_is_constant(worker_soak) -> None:
    after = [s.fds for s in worker_soak.samples if s.calls >= worker_soak.warm.calls]
    assert after and set(after) == {worker_soak.warm.fds}, after


def test_the_soak_catches_a_leaking_worker(tmp_path: Path) -> None:
    """The same measurement on a workload that keeps 64 KiB and one descriptor
    per train_window: both drifts show, so the bounds above can fail."""
    soak = soak_worker(600, 100, workdir=tmp_path, config={"leak_kib": 64, "leak_fds": 1})
    leaks = soak.method_calls["train_window"]  # those after the warm-up sample
    assert soak.fd_drift == leaks > 0, soak.figures()
    assert soak.rss_drift_kib >= 0.75 * 64 * leaks, soak.figures()


def test_proc_readers_see_this_process_and_refuse_a_missing_one() -> None:
    me = os.getpid()
    assert rss_kib(me) > 0
    with open(__file__, "rb") as f:
        assert open_fds(me)[f.fileno()] == str(Path(__file__).resolve())
    assert me in children(os.getppid())
    with pytest.raises(SoakError, match="/proc/"):
        rss_kib(2**22 + 1)  # above Linux's pid_max ceiling: never a process


def test_private_tmpdir_is_restored(tmp_path: Path) -> None:
    import tempfile

    before_env, before_dir = os.environ.get("TMPDIR"), tempfile.gettempdir()
    with private_tmpdir(tmp_path / "t") as tmp:
        assert tempfile.mkdtemp().startswith(str(tmp))
        assert os.environ["TMPDIR"] == str(tmp)
    assert os.environ.get("TMPDIR") == before_env and tempfile.gettempdir() == before_dir


def test_a_faulty_fakecoord_run_leaves_no_process_descriptor_or_temp_dir(tmp_path: Path) -> None:
    soak = soak_sim(SIM_ROUNDS, workdir=tmp_path, faults=SIM_FAULTS, call_timeout=5.0)
    figures = soak.figures()
    assert soak.completed_rounds == SIM_ROUNDS, figures
    assert soak.leaked_fds == {}, figures
    assert soak.children_after == {}, figures  # neither running nor zombie
    assert soak.workers_alive == [], figures
    assert soak.tmpdir_leftovers == [], figures
    assert soak.partial_leftovers == [], figures
    # Every planned fault was injected, failed its round and was recovered from
    # in the next one (crash and hang by a new worker): the run went on.
    by_spec = {f["spec"]: f for f in soak.faults}
    assert set(by_spec) == set(SIM_FAULTS), figures
    for spec, fault in by_spec.items():
        fault_round = int(spec.rpartition(":")[2])
        assert fault["recovery"]["round"] == fault_round + 1, fault
        assert fault["recovery"]["worker_restarted"] is (not spec.startswith("error")), fault
    # One worker per peer (they also evaluate), and one restart per crash or hang.
    assert soak.workers_started == 2 + 2, figures
