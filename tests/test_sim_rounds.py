"""A DiLoCo round as the network runs it (fakecoord.network.rounds, .transfer) and the
simulation driving it: the workload's own device, the inner state handed back, the group's
order and minimum, checkpoint heads, non-finite bases, encoded bytes and the link model.
Tiny runs; nothing asserts on time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fakecoord.__main__ import main
from fakecoord.errors import InnerStateError, RoundFailed, RunFailed, SettingsError
from fakecoord.network import rounds, transfer
from fakecoord.packs import open_pack, write_pack
from fakecoord.sim import DiLoCo, SimConfig, run
from fakecoord.sim.diloco import (
    DiLoCoState,
    first_fp16_overflow,
    first_nonfinite,
    first_nonfinite_gradient,
)
from fakecoord.sim.faults import parse_fault
from fakecoord.sim.report import _finite
from tests.conftest import CUSTOM_REF as REF
from tests.conftest import importable_toy_workload

E2E_TIMEOUT = 240

# Records every device it is given and every inner-state path it receives; keeps its state
# in one file of its own choosing, overwritten each round (the coordinator must copy it
# right after the call).
RECORDER = """
import json
import os
import torch
from torch import nn

DEVICE = "recorder-cpu"


class Recorder:
    workload_name = "recorder"

    def __init__(self, config):
        self.log = config["log"]
        self.poison = config.get("poison")
        self.calls = 0
        self.evals = 0
        self.fail_eval = config.get("fail_eval")
        self.state_file = os.path.join(config["state_dir"], f"state-{os.getpid()}.bin")

    def _note(self, **entry):
        with open(self.log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), **entry}) + "\\n")

    def runtime_device(self):
        return DEVICE

    def capability_probe(self):
        return {"preferred_backends": ["cpu"], "work_units_per_second": 10.0,
                "target_window_seconds": 1}

    def init_model(self, device):
        self._note(hook="init_model", device=device)
        if device != DEVICE:
            raise ValueError(f"unknown device {device!r}")
        torch.manual_seed(0)
        return {"model": nn.Linear(3, 2)}

    def run_inner_loop(self, state, job):
        self.calls += 1
        given = job["inner_optimizer_state_path"]
        content = open(given).read() if given is not None else None
        self._note(hook="run_inner_loop", call=self.calls, given=given, content=content,
                   steps=job["num_inner_steps"])
        with torch.no_grad():
            for p in state["model"].parameters():
                p.add_(0.01)
        with open(self.state_file, "w") as f:
            f.write(f"pid {os.getpid()} call {self.calls}")
        return {"steps_completed": job["num_inner_steps"], "metrics": {"loss": 1.0},
                "inner_optimizer_state_path": self.state_file}

    def evaluate(self, state, split):
        self.evals += 1
        if self.evals == self.fail_eval:
            raise RuntimeError("the validation data went missing")
        return {"loss": float(state["model"].weight.sum())}

    def train_window(self, state, batches):
        with torch.no_grad():
            for p in state["model"].parameters():
                p.add_(0.01)
        return {"loss": 1.0}

    def merge_candidate_models(self, base, candidates, policy):
        return None

    def apply_single_root_ema(self, base, merged, policy):
        return None

    def reconcile_canonical_model(self, local, canonical, strategy):
        return None


def make(config):
    return Recorder(config)
"""


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch) -> dict:
    _, batches = importable_toy_workload(tmp_path, monkeypatch, "sim_recorder", RECORDER, 8)
    state_dir = tmp_path / "workload-state"
    state_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    return {"tmp": tmp_path, "batches": str(batches), "log": log, "state_dir": state_dir}


def recorder_config(recorder: dict, **changes) -> SimConfig:
    values = dict(
        factory="sim_recorder:make",
        config={"log": str(recorder["log"]), "state_dir": str(recorder["state_dir"])},
        batches=recorder["batches"], peers=2, rounds=3, inner_steps=2, outer_lr=1.0,
        codec="fp32",  # plain SGD lr 1: the network's (a momentum, even 0, is refused)
    )  # fmt: skip
    values.update(changes)
    return SimConfig(**values)


def calls(recorder: dict) -> list[dict]:
    return [json.loads(line) for line in recorder["log"].read_text().splitlines()]


# -- the group -------------------------------------------------------------------------------


def test_the_group_is_the_first_peers_by_id_as_strings() -> None:
    ids = [f"peer-{p}" for p in range(12)]
    assert rounds.form_group(reversed(ids), 4, 1) == ["peer-0", "peer-1", "peer-10", "peer-11"]
    assert rounds.form_group(["peer-2", "peer-10"], 4, 2) == ["peer-10", "peer-2"]
    with pytest.raises(RoundFailed, match=r"need at least 3 DiLoCo participant\(s\), found 2"):
        rounds.form_group(["peer-2", "peer-10"], 4, 3)
    with pytest.raises(
        RoundFailed, match=r"only collected 1 participant\(s\), below the minimum 2"
    ):
        rounds.check_contributions(1, 2)
    rounds.check_contributions(2, 2)
    strategy = DiLoCo()
    strategy.bind(SimConfig(peers=12, target_group_size=4), "h")
    assert strategy.select_group(1, list(range(12))) == [0, 1, 10, 11]


def test_checkpoint_heads_every_interval_of_completed_rounds() -> None:
    assert [r for r in range(20) if rounds.checkpoint_due(r, 8)] == [7, 15]
    assert all(rounds.checkpoint_due(r, 1) for r in range(3))


# -- the calls -------------------------------------------------------------------------------


def test_jobs_have_the_network_fields() -> None:
    job = rounds.inner_loop_job(
        model_id="m", batches=[REF], num_inner_steps=2, inner_optimizer_state_path=None,
        output_parameter_pack_path=Path("/s/local-parameters"), model_schema_hash="h",
        state_dict_filter_value=None,
    )  # fmt: skip
    assert job["inner_optimizer_state_path"] is None  # an explicit null, as worker.rs sends it
    assert job["state_dict_filter"] == {"include_globs": [], "exclude_globs": []}
    assert job["require_exact_steps"] is True
    command = rounds.command_job(
        job_id="j", model_schema_hash="h", base_parameter_pack_path=Path("/b"),
        output_parameter_pack_path=Path("/o"), result_manifest_path=Path("/r"), batches=[],
        num_inner_steps=0, state_dict_filter_value={"include_globs": ["a*"]},
        inner_optimizer_state_path=None,
    )  # fmt: skip
    assert "inner_optimizer_state_path" not in command  # skip_serializing_if = Option::is_none
    assert command["state_dict_filter"] == {"include_globs": ["a*"], "exclude_globs": []}
    with pytest.raises(RoundFailed, match="requires at least one batch"):
        rounds.check_batches([], 1)
    rounds.check_batches([], 0)
    with pytest.raises(RoundFailed, match=r"completed 1 step\(s\), requested 2"):
        rounds.check_steps({"steps_completed": 1}, 2)


def test_the_returned_inner_state_is_read_right_away_or_refused(tmp_path: Path) -> None:
    where = "peer-3, round 2"
    assert rounds.capture_inner_state(None, None, tmp_path / "t", where) is None
    blob = tmp_path / "blob"
    blob.write_bytes(b"state-1")
    kept = rounds.capture_inner_state(str(blob), None, tmp_path / "kept" / "t", where)
    assert kept is not None and kept.encoding == "application/octet-stream"
    blob.write_bytes(b"state-2")  # the workload may reuse its file: the copy is the coordinator's
    assert kept.path.read_bytes() == b"state-1"
    staged = rounds.stage_inner_state(kept, tmp_path / "next")
    assert staged == tmp_path / "next" / "inner-state-input.blob"
    assert staged.read_bytes() == b"state-1"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad, reason in (
        (str(tmp_path / "missing"), "cannot be read"),
        (str(tmp_path), "is not a regular file"),
        (str(fifo), "is not a regular file"),  # refused without blocking on the pipe
        (7, "expected a path string or null"),
    ):
        with pytest.raises(InnerStateError, match=reason) as info:
            rounds.capture_inner_state(bad, "x", tmp_path / "t", where)
        assert str(info.value).startswith("peer-3, round 2: ")


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_run_sends_the_workloads_device_and_hands_back_its_state(recorder) -> None:
    out = recorder["tmp"] / "run"
    report = run(recorder_config(recorder, checkpoint_interval_rounds=2), out=out)
    assert report["completed_rounds"] == 3
    heads = [r["round"] for r in report["rounds"] if "checkpoint_head" in r["aggregate"]]
    assert heads == [2]  # every 2 completed rounds
    assert report["rounds"][1]["aggregate"]["checkpoint_head"]["base"] == "rounds/0002/base"
    log = calls(recorder)
    devices = {entry["device"] for entry in log if entry["hook"] == "init_model"}
    assert devices == {"recorder-cpu"}  # never --device's 'cpu'
    inner = [entry for entry in log if entry["hook"] == "run_inner_loop"]
    by_pid: dict[int, list[dict]] = {}
    for entry in inner:
        by_pid.setdefault(entry["pid"], []).append(entry)
    assert len(by_pid) == 2
    for pid, entries in by_pid.items():
        assert [e["call"] for e in entries] == [1, 2, 3]
        assert entries[0]["given"] is None  # null on the peer's first round
        for previous, entry in zip(entries, entries[1:], strict=False):
            # a fresh copy of the blob the previous inner loop returned (not the workload's file)
            assert entry["content"] == f"pid {pid} call {previous['call']}"
            assert Path(entry["given"]).name == "inner-state-input.blob"
            assert Path(entry["given"]).is_relative_to(out)
    record = report["rounds"][0]
    assert record["aggregate"]["wire"]["encoded_bytes_per_peer"] == 4 * 8  # fp32, 8 values
    assert record["peers"]["0"]["encoded_bytes"] == 32


@pytest.mark.timeout(E2E_TIMEOUT)
def test_device_override_is_kept_with_a_warning(recorder, capsys) -> None:
    args = [
        "run", "--factory", "sim_recorder:make", "--batches", recorder["batches"],
        "--config-json", json.dumps(recorder_config(recorder).config), "--peers", "1",
        "--rounds", "1", "--inner-steps", "1", "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 1  # the recorder refuses a device that is not its own
    err = " ".join(capsys.readouterr().err.split())  # however the console wraps it
    assert "unknown device 'cpu'" in err
    assert "warning: --device 'cpu': every device argument is 'cpu'; the network never sends" in err
    assert "[yellow]" not in err
    assert {e["device"] for e in calls(recorder)} == {"cpu"}


@pytest.mark.timeout(E2E_TIMEOUT)
def test_peers_outside_the_group_sit_out_and_sums_follow_the_group(recorder) -> None:
    report = run(recorder_config(recorder, peers=3, rounds=1, target_group_size=2))
    record = report["rounds"][0]
    assert record["contributors"] == [0, 1] and record["outside_group"] == [2]
    assert record["peers"]["2"]["status"] == "outside_group" and report["faults"] == []
    assert len([e for e in calls(recorder) if e["hook"] == "run_inner_loop"]) == 2


@pytest.mark.timeout(E2E_TIMEOUT)
def test_below_the_minimum_group_the_round_fails_as_in_the_network(recorder) -> None:
    out = recorder["tmp"] / "run"
    config = recorder_config(
        recorder, rounds=2, minimum_group_size=2, faults=[parse_fault("crash@1:1")],
        max_failed_rounds=2,
    )  # fmt: skip
    report = run(config, out=out)
    first, second = report["rounds"]
    assert first["round_failed"] == (
        "DiLoCo aggregation only collected 1 participant(s), below the minimum 2"
    )
    assert first["contributors"] == [0] and second["contributors"] == [0, 1]
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    state = checkpoint["state"]["strategy"]
    assert state["round_id"] == 1  # the failed round did not count
    # The base did not move in the failed round: round 2 trained from the initial base.
    assert not (out / "rounds" / "0001" / "base").exists()
    # Peer 0 keeps the state its round-1 inner loop returned (the network saves it before the
    # minimum is checked); peer 1 crashed and starts round 2 without one.
    entries = [e for e in calls(recorder) if e["hook"] == "run_inner_loop"]
    assert [e["given"] is None for e in entries].count(False) == 1
    with pytest.raises(RunFailed, match=r"need at least 3 DiLoCo participant\(s\), found 2"):
        run(recorder_config(recorder, rounds=1, minimum_group_size=3))


class PoisonedBase(DiLoCo):
    """The aggregate as computed, then one value of the new base made infinite (what an fp16
    overflow or an overflowing outer update gives in the network)."""

    def aggregate_round(self, r, state, results, ctx):
        outcome = super().aggregate_round(r, state, results, ctx)
        if r == 2:
            values = np.array(open_pack(ctx.path(outcome.state.base)).values)
            values[1] = np.inf
            path = ctx.path(outcome.state.base)
            manifest = open_pack(path).manifest
            poisoned = ctx.dir / "poisoned-base"
            write_pack(poisoned, values, layout_hash=manifest.layout_hash,
                       model_schema_hash=manifest.model_schema_hash)  # fmt: skip
            outcome.state = DiLoCoState(
                ctx.rel(poisoned), outcome.state.velocity, outcome.state.inner_opt
            )
        return outcome


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_non_finite_base_stops_the_run_naming_round_peers_and_cause(recorder) -> None:
    out = recorder["tmp"] / "run"
    with pytest.raises(RunFailed) as info:
        run(recorder_config(recorder, rounds=3), PoisonedBase(), out=out)
    message = str(info.value)
    assert message.startswith("round 2: the new base holds a non-finite value (inf at index 1)")
    assert "group peer-0, peer-1" in message and "outer update overflowed" in message
    report = json.loads((out / "report.json").read_text())
    assert report["stopped"] == {"round": 2, "reason": message}
    assert len(report["rounds"]) == 2  # the round is recorded, as the network publishes it


def test_the_cause_finders() -> None:
    base = np.array([0.0, 1.0, -3e38, 0.0], dtype=np.float32)
    local = np.array([0.0, np.nan, 3e38, 7e4], dtype=np.float32)
    assert first_nonfinite(local) == (1, pytest.approx(np.nan, nan_ok=True))
    assert first_nonfinite(base) is None
    assert first_nonfinite_gradient(base[2:], local[2:]) == (0, -np.inf)
    assert first_fp16_overflow(base[3:], local[3:]) == (0, -7e4)
    near = np.array([65519.0, 65520.0], dtype=np.float32)
    assert first_fp16_overflow(np.zeros(2, np.float32), -near) == (1, 65520.0)


# -- bytes and time on the wire ----------------------------------------------------------------


def test_encoded_sizes_follow_codec_rs() -> None:
    n = 1000
    assert transfer.encoded_size("fp32", n) == transfer.encoded_size("Fp32", n) == 4000
    assert transfer.encoded_size("Fp16", n) == 2000
    # 3 blocks of 256 and one of 232: 4 x (2 + 4) + 1000
    assert transfer.encoded_size({"BlockwiseInt8": {"block_size": 256}}, n) == 1024
    assert transfer.encoded_size({"BlockwiseInt8": {"block_size": 1000}}, n) == 1006
    assert transfer.encoded_size({"Qsgd": {"bits": 4, "stochastic": False}}, n) == 3004
    assert transfer.encoded_size({"SignSgd": {"error_feedback": True}}, 1001) == 251
    assert transfer.encoded_size({"SignSgd": {"error_feedback": False}}, 0) == 0
    with pytest.raises(ValueError, match="low-rank DiLoCo transport requires"):
        transfer.encoded_size({"LowRank": {"rank": 2}}, n)
    assert [transfer.chunk_count(b) for b in (0, 1, 1024, 1025)] == [0, 1, 1, 2]


def test_the_link_model() -> None:
    links = transfer.parse_links(["8", "peer-1=8/10"], 2)
    assert links == {"*": transfer.Link(8.0), "peer-1": transfer.Link(8.0, 10.0)}
    # Two peers, 1e6 bytes each over 8 Mbit/s, no latency: one second either way.
    free = transfer.round_transfer(
        ["peer-0", "peer-1"], {"peer-0": 10**6, "peer-1": 10**6}, {"*": transfer.Link(8.0)}
    )
    assert free.seconds == pytest.approx(1.0) and free.late == []
    # 10 ms one way at peer-1: every request from peer-0 to it costs 20 ms; 977 chunks + 2.
    slow = transfer.round_transfer(["peer-0", "peer-1"], {"peer-0": 10**6, "peer-1": 10**6}, links)
    assert slow.peer_seconds["peer-0"] == pytest.approx(1.0 + 979 * 0.02)
    assert slow.late == ["peer-0", "peer-1"]
    alone = transfer.round_transfer(["peer-0"], {"peer-0": 10**6}, links)
    assert alone.seconds == 0.0  # a group of one fetches nothing
    for bad in (["0"], ["x/1"], ["8/-1"], ["peer-2=8"], ["peer-x=8"], "8"):
        with pytest.raises(ValueError):
            transfer.parse_links(bad, 2)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="--link"):
        SimConfig(link=["fast"]).validate()


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_link_adds_transfer_time_to_the_simulated_clock(recorder) -> None:
    report = run(recorder_config(recorder, rounds=2, link=["0.001/5"]))
    for record in report["rounds"]:
        wire = record["aggregate"]["wire"]
        # 32 bytes each way at 1000 bit/s, 3 requests of 20 ms each: 0.256 + 0.06
        assert wire["transfer_seconds"] == pytest.approx(0.256 + 0.06)
        assert record["timings"]["transfer_seconds"] == pytest.approx(0.316)
    last = report["rounds"][-1]["timings"]
    assert last["simulated_seconds_at_end"] == pytest.approx(
        last["wall_seconds_at_end"] + 2 * 0.316, abs=1e-5
    )


# -- failures a user must see -------------------------------------------------------------------


def cli_args(recorder: dict, *extra: str, **config) -> list[str]:
    values = {"log": str(recorder["log"]), "state_dir": str(recorder["state_dir"]), **config}
    return [
        "run", "--factory", "sim_recorder:make", "--batches", recorder["batches"],
        "--config-json", json.dumps(values), "--peers", "2", "--rounds", "3",
        "--inner-steps", "1", *extra,
    ]  # fmt: skip


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_failed_evaluation_is_a_warning_a_summary_line_and_a_gap(recorder, capsys) -> None:
    report_file = recorder["tmp"] / "report.json"
    # Evaluations run on peer 0's worker: the initial one, then one per round.
    args = cli_args(recorder, "--report", str(report_file), "--codec", "fp32", fail_eval=3)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "round 2: evaluation failed: " in captured.err  # the live log
    assert "the validation data went missing" in captured.err
    assert "round 2: evaluation failed: " in captured.out  # the summary
    report = json.loads(report_file.read_text())
    second = report["rounds"][1]
    assert second["eval_value"] is None and "went missing" in second["eval_error"]
    assert "eval_error" not in report["rounds"][0]
    lines = report_file.with_suffix(".metrics.jsonl").read_text().splitlines()
    assert "went missing" in json.loads(lines[2])["eval_error"]
    assert json.loads(lines[1])["encoded_bytes"] == 2 * 32  # two peers, fp32, 8 values
    values = [report["initial_eval_value"]] + [r["eval_value"] for r in report["rounds"]]
    xs, ys = _finite([0, 1, 2, 3], values)
    assert xs == [0, 1, 2, 3] and np.isnan(ys[2]) and not np.isnan(ys[3])  # a gap, not a bridge


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_windows_run_that_never_merges_says_so_and_exits_1(recorder, capsys) -> None:
    # The recorder's merge_candidate_models declines (returns null) every time.
    assert main(cli_args(recorder, "--protocol", "windows", "--rounds", "2")) == 1
    err = capsys.readouterr().err
    assert "round 1: no merge on peer 0: merge_candidate_models returned null" in err
    assert "round 2: no merge on peer 1" in err
    assert "no round merged: every merge failed or was declined (2 rounds)" in err


def test_the_new_settings_from_flags_and_toml(tmp_path: Path) -> None:
    from fakecoord.sim.cli import argument_parser, build_config, merged_options

    parser = argument_parser()
    config = build_config(merged_options(parser.parse_args([])))
    assert (config.inner_steps, config.target_group_size, config.minimum_group_size) == (32, 4, 1)
    assert config.checkpoint_interval_rounds == 8 and config.device is None and config.link == []
    toml = tmp_path / "run.toml"
    toml.write_text(
        'link = ["100/20", "peer-1=10"]\ntarget-group-size = 2\nminimum_group_size = 2\n'
        "checkpoint-interval-rounds = 3\n"
    )
    args = parser.parse_args(["--config", str(toml), "--link", "50"])
    config = build_config(merged_options(args))
    assert config.link == ["50"]  # flags override the file
    config = build_config(merged_options(parser.parse_args(["--config", str(toml)])))
    assert config.link == ["100/20", "peer-1=10"] and config.target_group_size == 2
    assert config.minimum_group_size == 2 and config.checkpoint_interval_rounds == 3
    config.validate()
    with pytest.raises(SettingsError, match=r"minimum_group_size \(3\) cannot exceed target"):
        SimConfig(target_group_size=2, minimum_group_size=3).validate()


@pytest.mark.timeout(E2E_TIMEOUT)
def test_run_peer_round_over_a_worker_client(tmp_path: Path) -> None:
    """The API the conformance flow checks reuse, driven directly: a workload that saves its
    state only when it was given a path never carries state (as in the network)."""
    from fakecoord.client import WorkerClient

    root = Path(__file__).resolve().parent.parent
    with WorkerClient.spawn(
        "tests.workloads:make_tiny", {}, pythonpath=[root], call_timeout=60.0, accept_timeout=60.0
    ) as client:
        device = rounds.runtime_device(client)
        assert device == "python-torch-cpu"
        model = client.init_model(device)
        base = tmp_path / "base"
        client.export_parameter_pack(model, str(base), "schema")
        client.release_model(model)
        kept = None
        for r in (1, 2):
            done = rounds.run_peer_round(
                client, device=device, base_pack=base, work_dir=tmp_path / f"r{r}",
                batches=[REF], num_inner_steps=2, model_schema_hash="schema",
                state_dict_filter_value=None, inner_state=kept, where=f"peer-0, round {r}",
            )  # fmt: skip
            assert done.job["inner_optimizer_state_path"] is None
            assert (
                done.steps_completed == 2
                and done.local_pack == tmp_path / f"r{r}" / "local-parameters"
            )
            assert done.manifest.parameter_count == open_pack(base).parameter_count
            kept = done.inner_state
            assert kept is None
        with pytest.raises(RoundFailed, match="requires at least one batch"):
            rounds.run_peer_round(
                client, device=device, base_pack=base, work_dir=tmp_path / "r3", batches=[],
                num_inner_steps=1, model_schema_hash="schema", state_dict_filter_value=None,
                inner_state=None, where="peer-0, round 3",
            )  # fmt: skip
