"""``python -m fakecoord run``: the demo workload, the pieces of the simulation, and
end-to-end runs of both protocols, the command backend, faults, Ctrl-C and resume.

End-to-end runs use tiny settings (2 peers, a few rounds and steps) and
assert on losses, reports and files, never on wall-clock time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fakecoord.__main__ import main
from fakecoord.demo import AdamW, InjectedFault, make_workload
from fakecoord.errors import FakecoordError, SettingsError
from fakecoord.packs import open_pack
from fakecoord.sim import SimConfig
from fakecoord.sim.cli import build_config
from fakecoord.sim.data import load_batches
from fakecoord.sim.engine import CHECKPOINT_NAME
from fakecoord.sim.faults import parse_fault
from fakecoord.sim.record import union_seconds
from fakecoord.sim.shards import FAULT_KEY, ShardError, demo_leases, read_ref, write_demo_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY = "tests.workloads:make_tiny"
E2E_TIMEOUT = 240


# ---------------------------------------------------------------------------
# The demo workload, in-process


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demo")
    dataset = write_demo_dataset(root / "data", seed=3, train_shards=2, microshards_per_shard=4)
    return {"root": root, "dataset": dataset, "config": {"data_dir": str(root / "data"), "seed": 3}}


def flat(state: dict) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in state["model"].parameters()])


def test_demo_data_is_deterministic_and_reused(tmp_path: Path) -> None:
    a = write_demo_dataset(tmp_path / "a", seed=5, train_shards=2, microshards_per_shard=2)
    b = write_demo_dataset(tmp_path / "b", seed=5, train_shards=2, microshards_per_shard=2)
    c = write_demo_dataset(tmp_path / "c", seed=6, train_shards=2, microshards_per_shard=2)
    assert a.train_shards[1].read_bytes() == b.train_shards[1].read_bytes()
    assert a.train_shards[1].read_bytes() != c.train_shards[1].read_bytes()
    before = a.train_shards[0].stat().st_mtime_ns
    write_demo_dataset(tmp_path / "a", seed=5, train_shards=2, microshards_per_shard=2)
    assert a.train_shards[0].stat().st_mtime_ns == before  # complete files are not rewritten


def test_leases_depend_only_on_seed_and_round(demo) -> None:
    dataset = demo["dataset"]
    first = demo_leases(dataset, seed=1, round_index=2, peers=2, steps=3, per_step=2)
    again = demo_leases(dataset, seed=1, round_index=2, peers=2, steps=3, per_step=2)
    other = demo_leases(dataset, seed=1, round_index=3, peers=2, steps=3, per_step=2)
    assert first == again and first != other
    assert [len(lease) for lease in first] == [3, 3]
    ref = first[0][0]
    assert ref["kind"] == "cached_microshard_group"
    assert len(ref["shard_paths"]) == len(ref["microshard_ids"]) == len(ref["ordinals"]) == 2
    data, width = read_ref(ref)
    assert width == 17 and len(data) == ref["bytes_len"] == 2 * 32 * 17 * 4


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bytes_len": 1}, "bytes_len is 1"),
        ({"ordinals": [99, 0]}, "ordinal 99 is outside"),
        ({"kind": "micro_epoch"}, "expected kind"),
        ({"ordinals": [0]}, "equally long"),
        ({"shard_paths": ["/nonexistent/x.f32", "/nonexistent/x.f32"]}, "cannot read"),
    ],
)
def test_malformed_refs_are_refused(demo, change: dict, match: str) -> None:
    ref = {**demo["dataset"].ref([0, 1]), **change}
    with pytest.raises(ShardError, match=match):
        read_ref(ref)


def test_the_handwritten_adamw_matches_torch_and_round_trips_its_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours, theirs = nn.Linear(5, 3), nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = AdamW(ours.parameters(), lr=1e-2, weight_decay=0.05)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.05)
    for step in range(12):
        if step == 6:  # save, load weights-only into a fresh optimizer, continue with it
            torch.save(opt_ours.state_dict(), tmp_path / "opt.pt")
            opt_ours = AdamW(ours.parameters(), lr=1e-2, weight_decay=0.05)
            opt_ours.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
        x = torch.randn(4, 5)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="exp_avg does not match"):
        AdamW(nn.Linear(2, 2).parameters(), lr=1.0).load_state_dict(opt_ours.state_dict())


def test_inner_loop_resumes_its_optimizer_state_exactly(demo, tmp_path: Path) -> None:
    workload = make_workload(demo["config"])
    refs = demo_leases(demo["dataset"], 3, 1, 1, 8, 1)[0]
    # The network's way (docs/protocol.md §6): null on the first round, the returned state after.
    whole, halves = workload.init_model("python-torch-cpu"), workload.init_model("cpu")
    out = str(tmp_path / "local-parameters")
    workload.run_inner_loop(
        whole, {"batches": refs, "num_inner_steps": 8, "output_parameter_pack_path": out}
    )
    given = None
    for i, part in enumerate((refs[:4], refs[4:])):
        job = {
            "batches": part,
            "num_inner_steps": 4,
            "inner_optimizer_state_path": given,
            "output_parameter_pack_path": str(tmp_path / f"round-{i}" / "local-parameters"),
        }
        (tmp_path / f"round-{i}").mkdir()
        result = workload.run_inner_loop(halves, job)
        assert result["steps_completed"] == 4
        assert result["inner_optimizer_state_encoding"] == "fakecoord-demo-adamw-v1"
        returned = Path(result["inner_optimizer_state_path"])
        assert returned.is_file() and returned.parent == tmp_path / f"round-{i}"
        given = str(tmp_path / f"copy-{i}.blob")
        shutil.copyfile(returned, given)
    assert torch.equal(flat(whole), flat(halves))


def test_inner_loop_learns_and_a_marked_ref_raises(demo, tmp_path: Path) -> None:
    tmp = tmp_path
    workload = make_workload(demo["config"])
    state = workload.init_model("cpu")
    before = workload.evaluate(state, "Validation")["loss"]
    refs = demo_leases(demo["dataset"], 3, 1, 1, 30, 2)[0]
    job = {"batches": refs, "num_inner_steps": 30, "output_parameter_pack_path": str(tmp / "p")}
    metrics = workload.run_inner_loop(state, job)["metrics"]
    assert metrics["examples"] == 30 * 64 and metrics["last_loss"] < metrics["first_loss"]
    assert workload.evaluate(state, "Validation")["loss"] < 0.7 * before
    marked = [dict(r) for r in refs[:2]]
    marked[1][FAULT_KEY] = "error"
    with pytest.raises(InjectedFault):
        workload.train_window(state, marked)


def test_evaluate_serves_every_split(demo) -> None:
    workload = make_workload(demo["config"])
    state = workload.init_model("cpu")
    results = {
        str(split): workload.evaluate(state, split)
        for split in ("Train", "Validation", "Test", {"Custom": "validation"})
    }
    assert results["Validation"] == results[str({"Custom": "validation"})]
    assert results["Validation"]["loss"] != results["Test"]["loss"]
    assert results["Train"]["examples"] == 4 * 32
    # Any custom name is served (a peer may be asked for one it has no shard of).
    assert workload.evaluate(state, {"Custom": "nope"}) == results["Validation"]
    with pytest.raises(ValueError, match="plain file stem"):
        workload.evaluate(state, {"Custom": "../etc"})


def _states(workload, *values: float) -> list[dict]:
    states = []
    for value in values:
        state = workload.init_model("cpu")
        with torch.no_grad():
            for p in state["model"].parameters():
                p.fill_(value)
        states.append(state)
    return states


def _candidates(states: list[dict], samples: list[float], quality: list[float]) -> list[dict]:
    return [
        {"peer_id": f"p{i}", "model": s, "sample_weight": w, "quality_weight": q}
        for i, (s, w, q) in enumerate(zip(states, samples, quality, strict=True))
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("WeightedMean", (1 * 1 + 2 * 3 + 1 * 8) / 4),  # sample weights only
        ("QualityWeightedEma", (1 * 1 * 1 + 2 * 3 * 0.5 + 1 * 8 * 1) / 3),  # sample x quality
        ("TrimmedMean", 3.0),  # drops 1 and 8 coordinate-wise
        ({"Custom": "uniform"}, 4.0),
    ],
)
def test_merge_honours_the_policy_and_weights(demo, policy, expected: float) -> None:
    workload = make_workload(demo["config"])
    base, *states = _states(workload, 0.0, 1.0, 3.0, 8.0)
    merged = workload.merge_candidate_models(
        base, _candidates(states, [1, 2, 1], [1, 0.5, 1]), policy
    )
    torch.testing.assert_close(flat(merged), torch.full_like(flat(base), expected))
    assert flat(states[0]).eq(1.0).all()  # candidates untouched


def test_norm_clipped_merge_clips_each_delta_to_the_median_norm(demo) -> None:
    workload = make_workload(demo["config"])
    base, *states = _states(workload, 0.0, 1.0, 2.0, 10.0)
    merged = workload.merge_candidate_models(
        base, _candidates(states, [1, 1, 1], [1, 1, 1]), "NormClippedWeightedMean"
    )
    # Deltas 1, 2, 10 (times a common norm); the median is 2, so 10 is clipped to 2.
    torch.testing.assert_close(flat(merged), torch.full_like(flat(base), (1 + 2 + 2) / 3))


def test_merge_edge_cases(demo) -> None:
    workload = make_workload(demo["config"])
    base, a = _states(workload, 0.0, 1.0)
    assert workload.merge_candidate_models(base, [], "WeightedMean") is None
    # Weights summing to 0 merge into the base, as the Rust reference merge does.
    kept = workload.merge_candidate_models(base, _candidates([a], [0.0], [1.0]), "WeightedMean")
    assert kept is not base and torch.equal(flat(kept), flat(base))
    with pytest.raises(ValueError, match="not supported"):
        workload.merge_candidate_models(base, _candidates([a], [1.0], [1.0]), {"Custom": "x"})


def test_root_ema_and_reconcile(demo) -> None:
    workload = make_workload({**demo["config"], "root_ema_decay": 0.25})
    base, merged = _states(workload, 0.0, 4.0)
    assert workload.apply_single_root_ema(base, merged, "WeightedMean") is None
    assert flat(merged).eq(4.0).all()  # no EMA for non-EMA policies
    workload.apply_single_root_ema(base, merged, "Ema")
    torch.testing.assert_close(flat(merged), torch.full_like(flat(merged), 3.0))
    local, canonical = _states(workload, 2.0, 6.0)
    assert workload.reconcile_canonical_model(local, canonical, "Replace") is None
    assert flat(canonical).eq(6.0).all()
    workload.reconcile_canonical_model(local, canonical, {"RootEma": {"canonical_weight": 0.75}})
    torch.testing.assert_close(flat(canonical), torch.full_like(flat(canonical), 5.0))


# ---------------------------------------------------------------------------
# Simulation pieces


def test_batches_from_a_file_or_a_directory(tmp_path: Path) -> None:
    refs = [
        {"kind": "micro_epoch", "lease_id": f"l{i}", "microshard_ids": [], "ordinals": [],
         "bytes_len": 0, "pipeline_kind": "custom", "payload": {"i": i}}
        for i in range(5)
    ]  # fmt: skip
    (tmp_path / "flat.json").write_text(json.dumps(refs))
    assert load_batches(tmp_path / "flat.json", 2) == [refs[0::2], refs[1::2]]
    (tmp_path / "per_peer.json").write_text(json.dumps([refs[:1], refs[1:]]))
    assert load_batches(tmp_path / "per_peer.json", 2) == [refs[:1], refs[1:]]
    with pytest.raises(SettingsError, match="2 per-peer lists for 3 peers"):
        load_batches(tmp_path / "per_peer.json", 3)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("b.bin", "a.bin", "c.bin"):
        (data / name).write_bytes(b"x" * 3)
    per_peer = load_batches(data, 2)
    assert [r["microshard_ids"] for r in per_peer[0]] == [["a.bin"], ["c.bin"]]
    assert per_peer[1][0]["bytes_len"] == 3 and per_peer[1][0]["kind"] == "cached_microshard_group"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"peers": 0}, "--peers"),
        ({"protocol": "gossip"}, "--protocol"),
        ({"codec": "int4"}, "--codec must be one of fp32, fp16, int8, qsgd, lowrank, sign"),
        ({"outer_momentum": 1.5}, "momentum_micros must be <= 1000000, got 1500000"),
        ({"outer_momentum": 0.0}, r"the network refuses this policy: .*momentum_micros: Some\(0\)"),
        ({"nesterov": True}, "--beyond-network runs this optimizer"),
        ({"policy": {"codec": {"LowRank": {"rank": 2}}}}, "low-rank DiLoCo transport requires"),
        (
            {"policy": '{"codec": {"Qsgd": {"bits": 9, "stochastic": false}}}'},
            "between 1 and 8, got 9",
        ),
        (
            {"policy": {"num_inner_steps": -1}},
            r"--policy: policy\.num_inner_steps: expected an integer",
        ),
        ({"inner_steps": 0}, "--inner-steps must be in 1"),
        ({"protocol": "windows", "diloco_backend": "command"}, "only applies to --protocol diloco"),
        ({"factory": TINY}, "--factory needs --batches"),
        ({"faults": [parse_fault("crash@5:1")]}, "peer 5 does not exist"),
    ],
)
def test_invalid_settings_are_refused(changes: dict, match: str) -> None:
    with pytest.raises(FakecoordError, match=match):
        SimConfig(**changes).validate()


def test_interval_union() -> None:
    assert union_seconds([(0, 2), (1, 3), (5, 6)], 0, 10) == 4
    assert union_seconds([(0, 2), (1, 3)], 1.5, 2.5) == 1
    assert union_seconds([], 0, 1) == 0


def test_bad_command_lines_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--protocol", "gossip"])
    assert exc.value.code == 2
    assert main(["frobnicate"]) == 2
    assert main(["--fault", "melt@0:1", "--quiet"]) == 2
    assert "unknown kind 'melt'" in capsys.readouterr().err
    assert main(["--peers", "2", "--fault", "crash@2:1", "--quiet"]) == 2
    assert "peer 2 does not exist" in capsys.readouterr().err
    assert main(["--resume", "/nonexistent/run", "--quiet"]) == 2
    assert "no readable checkpoint.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# End to end (real worker processes)


def run_sim(tmp_path: Path, name: str, *args: str) -> tuple[int, dict, Path]:
    out = tmp_path / name
    code = main(["run", "--out", str(out), "--quiet", *args])
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return code, report, out


def eval_losses(report: dict) -> list:
    return [r["eval_value"] for r in report["rounds"]]


def train_losses(report: dict) -> list:
    return [
        p["metrics"].get("loss") for r in report["rounds"] for _, p in sorted(r["peers"].items())
    ]


def fault(report: dict, spec: str) -> dict:
    (entry,) = [f for f in report["faults"] if f["spec"] == spec]
    return entry


DEMO_ARGS = [
    "--peers",
    "2",
    "--rounds",
    "3",
    "--inner-steps",
    "15",
    "--seed",
    "7",
    "--codec",
    "fp16",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """One uninterrupted DiLoCo run of the demo with the baseline, a report file and a plot."""
    root = tmp_path_factory.mktemp("demo_run")
    out, report_file, plot = root / "run", root / "report.json", root / "loss.png"
    args = ["--out", str(out), *DEMO_ARGS, "--baseline", "--report", str(report_file)]
    with contextlib.redirect_stdout(io.StringIO()) as shown:  # the summary table goes there
        code = main([*args, "--plot", str(plot)])
    return {
        "code": code,
        "out": out,
        "report": json.loads(report_file.read_text()),
        "plot": plot,
        "shown": shown.getvalue(),
    }


@pytest.mark.timeout(E2E_TIMEOUT)
def test_diloco_demo_learns_with_baseline_report_plot_and_summary(demo_run) -> None:
    assert demo_run["code"] == 0
    report, out = demo_run["report"], demo_run["out"]
    assert report == json.loads((out / "report.json").read_text())
    assert report["final_eval_value"] < 0.5 * report["initial_eval_value"]
    assert report["workload"]["workload_name"] == "fakecoord-demo"
    assert report["plan"]["parameter_count"] > 0 and report["faults"] == []
    assert len(report["rounds"]) == 3 and report["completed_rounds"] == 3
    for record in report["rounds"]:
        assert record["contributors"] == [0, 1] and record["aggregate"]["contributors"] == 2
        assert set(record["peers"]) == {"0", "1"}
        assert record["peers"]["0"]["steps_completed"] == 15
        assert record["peers"]["0"]["metrics"]["batch_count"] == 15
        timings = record["timings"]
        assert timings["round_seconds"] == pytest.approx(
            timings["worker_call_seconds"] + timings["coordinator_seconds"], abs=1e-5
        )
        assert record["baseline"]["eval_value"] is not None
    assert (
        report["baseline"]["steps_per_round"] == 30 and len(report["baseline"]["eval_values"]) == 3
    )
    assert 0 <= report["timings"]["coordinator_overhead_share"] < 1
    # The packs are real: round 3's base is a valid pack that differs from round 2's.
    base2 = open_pack(out / "rounds" / "0002" / "base").values
    base3 = open_pack(out / "rounds" / "0003" / "base").values
    assert base2.shape == base3.shape and not np.array_equal(base2, base3)
    plot = demo_run["plot"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    shown = demo_run["shown"]
    assert "eval loss" in shown and "baseline" in shown and "round" in shown
    assert f"{report['initial_eval_value']:.4f} -> {report['final_eval_value']:.4f}" in shown


@pytest.mark.timeout(E2E_TIMEOUT)
def test_same_seed_same_losses_and_resume_continues_identically(
    tmp_path: Path, demo_run, capsys
) -> None:
    straight = demo_run["report"]
    code, stopped, out = run_sim(tmp_path, "stopped", *DEMO_ARGS, "--stop-after-round", "1")
    assert code == 0 and stopped["stopped_after_round"] == 1 and len(stopped["rounds"]) == 1
    assert eval_losses(stopped) == eval_losses(straight)[:1]
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    assert checkpoint["state"]["completed_rounds"] == 1
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--quiet", "--seed", "99"]) == 0
    assert "ignoring --seed" in capsys.readouterr().err  # the checkpoint's seed is kept
    resumed = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["resumed"] == [{"after_round": 1}]
    assert eval_losses(resumed) == eval_losses(straight)
    assert train_losses(resumed) == train_losses(straight)
    assert resumed["initial_eval_value"] == straight["initial_eval_value"]


@pytest.mark.timeout(E2E_TIMEOUT)
def test_crash_hang_and_error_faults_are_survived_and_reported(tmp_path: Path) -> None:
    code, report, out = run_sim(
        tmp_path, "faults",
        "--peers", "3", "--rounds", "3", "--inner-steps", "3", "--call-timeout", "2",
        "--fault", "crash@0:1", "--fault", "hang@1:2", "--fault", "error@2:2",
    )  # fmt: skip
    assert code == 0 and report["completed_rounds"] == 3
    rounds = report["rounds"]
    assert [r["contributors"] for r in rounds] == [[1, 2], [0], [0, 1, 2]]
    assert rounds[1]["aggregate"]["contributors"] == 1
    assert all(r["eval_value"] is not None for r in rounds)

    crash = fault(report, "crash@0:1")
    assert crash["injected"].startswith("SIGKILL sent to pid")
    assert crash["error"].startswith("WorkerExited") and "SIGKILL" in crash["error"]
    assert crash["recovery"]["round"] == 2 and crash["recovery"]["worker_restarted"]

    hang = fault(report, "hang@1:2")
    assert hang["injected"].startswith("SIGSTOP") and hang["error"].startswith("WorkerTimeout")
    assert "no response within 2 s" in hang["error"]
    assert hang["recovery"]["round"] == 3 and hang["recovery"]["worker_restarted"]

    error = fault(report, "error@2:2")
    assert "InjectedFault" in error["error"] and error["error"].startswith("RemoteError")
    assert error["recovery"] == {
        "round": 3,
        "action": error["recovery"]["action"],
        "worker_restarted": False,
    }
    assert "same worker" in error["recovery"]["action"]
    # Restarted workers are new processes, and every worker of the run is gone now.
    spawned = [
        json.loads(line) for line in (out / "logs" / "workers.jsonl").read_text().splitlines()
    ]
    assert sorted(s["slot"] for s in spawned) == ["peer-0", "peer-0", "peer-1", "peer-1", "peer-2"]
    for entry in spawned:
        assert not _alive(entry["pid"])


@pytest.mark.timeout(E2E_TIMEOUT)
def test_windows_protocol_merges_reconciles_and_survives_an_error(tmp_path: Path) -> None:
    code, report, out = run_sim(
        tmp_path, "windows",
        "--protocol", "windows", "--peers", "2", "--rounds", "2", "--inner-steps", "10",
        "--fault", "error@1:1", "--merge-policy", "QualityWeightedEma",
    )  # fmt: skip
    assert code == 0
    first, second = report["rounds"]
    assert first["contributors"] == [0] and second["contributors"] == [0, 1]
    assert first["merge"]["merged"] and first["merge"]["candidates"] == 1
    assert second["merge"] == {
        "policy": "QualityWeightedEma", "candidates": 2, "merged": True, "reducer": 1,
    }  # fmt: skip
    assert report["final_eval_value"] < report["initial_eval_value"]
    assert second["peers"]["1"]["metrics"]["batch_count"] == 10
    assert fault(report, "error@1:1")["recovery"]["round"] == 2
    for name in (
        "canonical.safetensors",
        "peer-0/candidate.safetensors",
        "peer-0/local.safetensors",
    ):
        assert (out / "rounds" / "0002" / name).stat().st_size > 0


def _fake_trainer(tmp_path: Path, update: str = "values * 0.5") -> Path:
    script = tmp_path / "halve.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys
            import numpy as np
            job_path, result_path = sys.argv[1], sys.argv[2]
            assert os.environ["BURN_P2P_DILOCO_JOB_MANIFEST"] == job_path
            assert os.environ["BURN_P2P_DILOCO_RESULT_MANIFEST"] == result_path
            job = json.load(open(job_path))
            base = job["base_parameter_pack_path"]
            out = job["output_parameter_pack_path"] + "-elsewhere"
            os.makedirs(out)
            values = np.fromfile(os.path.join(base, "values.f32le"), dtype="<f4")
            (UPDATE).astype("<f4").tofile(os.path.join(out, "values.f32le"))
            with open(os.path.join(base, "manifest.json")) as f:
                manifest = f.read()
            with open(os.path.join(out, "manifest.json"), "w") as f:
                f.write(manifest)
            result = {"steps_completed": job["num_inner_steps"], "metrics": {"loss": 0.5},
                      "local_parameter_pack_path": out}
            with open(result_path, "w") as f:
                json.dump(result, f)
            """
        )
    )
    script.write_text(script.read_text().replace("UPDATE", update))
    return script


@pytest.mark.timeout(E2E_TIMEOUT)
def test_command_backend_expands_placeholders_and_reads_the_result(tmp_path: Path) -> None:
    script = _fake_trainer(tmp_path)
    code, report, out = run_sim(
        tmp_path, "custom",
        "--peers", "1", "--rounds", "1", "--inner-steps", "2", "--diloco-backend", "command",
        "--command", f"{sys.executable} {script} {{job_manifest}} {{result_manifest}}",
        "--outer-lr", "1", "--codec", "fp32",
    )  # fmt: skip
    assert code == 0 and report["rounds"][0]["contributors"] == [0]
    before = open_pack(out / "rounds" / "0000" / "base").values
    after = open_pack(out / "rounds" / "0001" / "base").values
    np.testing.assert_allclose(after, before * 0.5, rtol=1e-6)  # lr 1, no momentum: base = local
    assert report["rounds"][0]["peers"]["0"]["metrics"]["loss"] == 0.5


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_non_finite_new_base_stops_the_run_naming_the_round_peer_and_cause(
    tmp_path: Path, capsys
) -> None:
    # The network computes this step (fp16 overflows to inf; nothing checks finiteness) and
    # would publish the base; the rehearsal stops there and says why.
    script = _fake_trainer(tmp_path, "values - 1e5")
    code, _, out = run_sim(
        tmp_path, "diverge",
        "--peers", "1", "--rounds", "2", "--inner-steps", "2", "--diloco-backend", "command",
        "--command", f"{sys.executable} {script} {{job_manifest}} {{result_manifest}}",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "round 1: the new base holds" in err and "group peer-0" in err
    assert "rounds past 65504 and becomes inf in the Fp16 codec" in err
    assert "publishes such a base" in err
    assert np.isinf(open_pack(out / "rounds" / "0001" / "base").values).all()


def test_policy_options_refused_before_anything_starts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    for args, fragment in (
        (["--policy", '{"codec": {"LowRank": {"rank": 2}}}'], "low-rank DiLoCo transport"),
        (["--outer-momentum", "0.9"], "requires a workload-specific implementation"),
        (["--policy", '{"codec": "Int8"}'], "policy.codec: expected a GradientCodec"),
        (["--policy", str(tmp_path / "missing.json")], "cannot read it"),
        (
            ["--policy", '{"num_inner_steps": 0}'],
            "DiLoCo num_inner_steps must be greater than zero",
        ),
    ):
        assert main(["run", "--quiet", "--out", str(out), *args]) == 2
        assert fragment in capsys.readouterr().err
        assert not out.exists()
    toml = tmp_path / "run.toml"
    toml.write_text("[policy]\ncodec = { Qsgd = { bits = 9, stochastic = false } }\n")
    assert main(["run", "--quiet", "--out", str(out), "--config", str(toml)]) == 2
    assert "policy.codec.Qsgd.bits: DiLoCo QSGD codec bits must be between 1 and 8" in (
        capsys.readouterr().err
    )
    policy = tmp_path / "policy.json"
    policy.write_text('{"codec": "Fp32", "num_inner_steps": 7, "outer_optimizer_policy": '
                      '{"Sgd": {"learning_rate_micros": 700000, "momentum_micros": 900000, '
                      '"nesterov": true}}}')  # fmt: skip
    config = build_config({"policy": str(policy), "beyond_network": True, "inner_steps": 5})
    config.validate()
    assert config.inner_steps == 5 and config.policy["num_inner_steps"] == 5  # the flag wins
    assert config.network_refusal() is not None and "Some(900000)" in config.network_refusal()
    from fakecoord.sim.diloco import DiLoCo

    strategy = DiLoCo()
    strategy.bind(config, "h")
    assert "BEYOND THE NETWORK" in strategy.describe(config)


@pytest.mark.timeout(E2E_TIMEOUT)
def test_command_backend_with_the_default_job_runner_survives_a_crash(tmp_path: Path) -> None:
    code, report, out = run_sim(
        tmp_path, "command",
        "--peers", "2", "--rounds", "2", "--inner-steps", "3", "--diloco-backend", "command",
        "--fault", "crash@1:1",
    )  # fmt: skip
    assert code == 0
    assert [r["contributors"] for r in report["rounds"]] == [[0], [0, 1]]
    crash = fault(report, "crash@1:1")
    assert crash["error"].startswith("JobFailed") and "SIGKILL" in crash["error"]
    assert "new job process" in crash["recovery"]["action"]
    job = json.loads((out / "rounds" / "0002" / "peer-1" / "job.json").read_text())
    assert job["protocol_version"] == 1 and job["num_inner_steps"] == 3
    result = json.loads((out / "rounds" / "0002" / "peer-1" / "result.json").read_text())
    assert result["steps_completed"] == 3 and result["metrics"]["steps"] == 3
    # Peer 0's AdamW state carried over from round 1 into round 2, as the network carries it:
    # no path on its first round, a fresh copy of what it returned afterwards; peer 1 (crashed
    # in round 1) starts without one in round 2.
    jobs = {
        (r, p): json.loads((out / "rounds" / f"000{r}" / f"peer-{p}" / "job.json").read_text())
        for r, p in ((1, 0), (2, 0), (2, 1))
    }
    assert "inner_optimizer_state_path" not in jobs[1, 0]
    assert "inner_optimizer_state_path" not in jobs[2, 1]
    given = Path(jobs[2, 0]["inner_optimizer_state_path"])
    assert given == out / "rounds" / "0002" / "peer-0" / "inner-state-input.blob"
    opt = torch.load(out / "rounds" / "0002" / "peer-0" / "inner-state.blob", weights_only=True)
    assert opt["steps"] == 6
    assert report["final_eval_value"] < report["initial_eval_value"]


SEEDLIKE = """
import sys
from worker import service
from worker.__main__ import main

# Like the seed worker: no parameter_pack_plan (it answers "unknown method").
del service.METHODS["parameter_pack_plan"]
sys.exit(main())
"""


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_worker_without_parameter_pack_plan_and_a_foreign_workload(tmp_path: Path) -> None:
    wrapper = tmp_path / "seedlike.py"
    wrapper.write_text(SEEDLIKE)
    refs = [{"kind": "cached_microshard_group", "shard_paths": [], "microshard_ids": [],
             "ordinals": [], "bytes_len": 0}] * 4  # fmt: skip
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    code, report, _ = run_sim(
        tmp_path, "seedlike",
        "--worker-cmd", f"{sys.executable} {wrapper}", "--factory", TINY, "--config-json", "{}",
        "--batches", str(tmp_path / "refs.json"), "--peers", "2", "--rounds", "2",
        "--inner-steps", "2", "--fault", "error@1:1",
    )  # fmt: skip
    assert code == 0
    assert report["plan"] is None and report["workload"]["workload_name"] == "tiny"
    error = fault(report, "error@1:1")
    assert "unknown model id" in error["error"] and "must refuse" in error["injected"]
    assert error["recovery"]["round"] == 2
    assert report["rounds"][1]["contributors"] == [0, 1]


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(E2E_TIMEOUT)
def test_ctrl_c_stops_every_worker_and_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakecoord", "run", "--out", str(out), "--quiet",
         "--peers", "2", "--rounds", "500", "--inner-steps", "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if (
                    json.loads((out / CHECKPOINT_NAME).read_text())["state"]["completed_rounds"]
                    >= 1
                ):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert f"resume with --resume {out}" in stderr
    spawned = [
        json.loads(line) for line in (out / "logs" / "workers.jsonl").read_text().splitlines()
    ]
    assert len(spawned) == 2 and not any(_alive(s["pid"]) for s in spawned)
    done = json.loads((out / CHECKPOINT_NAME).read_text())["state"]["completed_rounds"]
    assert done >= 1
    assert main(["run", "--resume", str(out), "--rounds", str(done + 1), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == list(range(1, done + 2))
    assert report["resumed"] == [{"after_round": done}]


def test_the_policy_survives_the_checkpoint_round_trip() -> None:
    # resume_config rebuilds SimConfig from the checkpoint's settings (config.to_json())
    config = SimConfig(
        policy={"codec": {"Qsgd": {"bits": 4, "stochastic": True}}, "target_group_size": 3},
        aggregate="median", beyond_network=True, outer_momentum=0.9, nesterov=True,
    )  # fmt: skip
    config.validate()
    again = SimConfig.from_json(json.loads(json.dumps(config.to_json())))
    again.validate()
    assert again.policy == config.policy and again.beyond_network
    assert again.network_policy() == config.network_policy()
    assert config.policy["codec"] == {"Qsgd": {"bits": 4, "stochastic": True}}
    assert config.policy["aggregation_policy"] == "CoordinateMedian"
    assert config.target_group_size == 3 and config.policy["outer_optimizer_policy"] == {
        "Sgd": {"learning_rate_micros": 1000000, "momentum_micros": 900000, "nesterov": True}
    }


def test_the_summary_says_when_the_run_went_beyond_the_network() -> None:
    from fakecoord.sim.report import summary_lines

    report = {
        "eval_metric": "loss", "initial_eval_value": 1.0, "final_eval_value": 0.5, "rounds": [],
        "strategy": "diloco", "settings": {"peers": 2, "inner_steps": 2},
        "network": {"refused_by_network": "DiLoCo outer optimizer policy Sgd { ... } requires "
                    "a workload-specific implementation"},
    }  # fmt: skip
    lines = summary_lines(report)
    assert any(
        line.startswith("BEYOND THE NETWORK: DiLoCo outer optimizer policy") for line in lines
    )
    report["network"] = {"refused_by_network": None}
    assert not any("BEYOND" in line for line in summary_lines(report))
