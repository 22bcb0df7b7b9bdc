"""The simulation engine with foreign workloads: input checks before anything exists, readable
worker errors, failing fast, seeding, thread caps, metrics, faults, config files and the Python
API (custom strategy and aggregator).  Tiny runs; nothing asserts on time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fakecoord.__main__ import main
from fakecoord.errors import RunFailed, SettingsError, SimError
from fakecoord.sim import DiLoCo, OuterSGD, SimConfig, run
from fakecoord.sim.config import usable_cores
from fakecoord.sim.report import plotted_metrics
from fakecoord.sim.workers import failing_line
from tests.conftest import importable_toy_workload

E2E_TIMEOUT = 240

# Like the upstream MNIST example: a classifier with torch's default threads, an unseeded
# init_model, loss and accuracy from evaluate, and a config key it needs.
CLASSIFIER = """
import os
import torch
from torch import nn


class Classifier:
    workload_name = "classifier"

    def __init__(self, config):
        self.root = config["data_root"]
        self.fail = config.get("fail", "")
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 8, generator=g)
        self.y = (self.x.sum(dim=1) > 0).long()

    def runtime_device(self):
        return "python-torch-cpu"

    def capability_probe(self):
        return {"preferred_backends": ["cpu"], "work_units_per_second": 10.0,
                "target_window_seconds": 1}

    def init_model(self, device):
        return {"model": nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))}

    def _train(self, model, steps):
        if self.fail == "train":
            raise RuntimeError("the training data is missing")
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(self.x), self.y)
            loss.backward()
            opt.step()
        return {"loss": float(loss)}

    def train_window(self, state, batches):
        return self._train(state["model"], len(batches))

    def run_inner_loop(self, state, job):
        metrics = self._train(state["model"], job["num_inner_steps"])
        return {"steps_completed": job["num_inner_steps"], "metrics": metrics}

    def evaluate(self, state, split):
        with torch.no_grad():
            logits = state["model"](self.x)
        return {
            "loss": float(nn.functional.cross_entropy(logits, self.y)),
            "accuracy": float((logits.argmax(dim=1) == self.y).float().mean()),
            "examples": 64,
            "torch_threads": torch.get_num_threads(),
            "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "-1")),
        }

    def merge_candidate_models(self, base, candidates, policy):
        return None

    def apply_single_root_ema(self, base, merged, policy):
        return None

    def reconcile_canonical_model(self, local, canonical, strategy):
        return None


def make(config):
    return Classifier(config)
"""


@pytest.fixture
def classifier(tmp_path: Path, monkeypatch) -> dict:
    """The classifier module importable by this process and by workers, and a batches file."""
    _, batches = importable_toy_workload(tmp_path, monkeypatch, "sim_classifier", CLASSIFIER, 8)
    return {"tmp": tmp_path, "batches": str(batches), "factory": "sim_classifier:make"}


def classifier_args(classifier: dict, *extra: str, config: dict | None = None) -> list[str]:
    return [
        "run", "--quiet", "--factory", classifier["factory"], "--batches", classifier["batches"],
        "--config-json", json.dumps({"data_root": "/data"} if config is None else config), "--peers", "2",
        "--rounds", "2", "--inner-steps", "3", *extra,
    ]  # fmt: skip


def run_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("fakecoord-run-*"))


def test_the_failing_line_of_a_worker_stderr() -> None:
    traceback = "Traceback (most recent call last):\n  File x\nKeyError: 'mnist_root'\n"
    assert failing_line(traceback) == "KeyError: 'mnist_root'"
    assert failing_line("noise\nburn-p2p worker: --factory 'a:b': bad\nTraceback\n") == (
        "burn-p2p worker: --factory 'a:b': bad"
    )
    assert failing_line("just this\n\n") == "just this" and failing_line("") is None


def test_input_errors_exit_2_and_create_nothing(classifier, capsys) -> None:
    tmp = classifier["tmp"]
    bad_refs = tmp / "bad.json"
    bad_refs.write_text(json.dumps([{"kind": "cached_microshard_group"}] * 2))
    cases = [
        (["--batches", str(tmp / "missing.json")], "cannot read a JSON list"),
        (["--batches", str(bad_refs)], "peer 0 ref 0: cached_microshard_group needs a list"),
        (["--factory", "no_such_module:make"], "No module named 'no_such_module'"),
        (["--device", "cuda"], "--device 'cuda': torch cannot use it here"),
        (["--eval-metric", ""], "--eval-metric must name a metric"),
        (["--threads-per-peer", "-1"], "--threads-per-peer must be 0"),
        (["--config", str(tmp / "missing.toml")], "cannot read TOML"),
    ]
    for extra, message in cases:
        assert main(classifier_args(classifier, *extra)) == 2, extra
        assert message in capsys.readouterr().err
    assert run_dirs(tmp) == []


@pytest.mark.parametrize(
    ("factory", "config", "message"),
    [
        ("sim_classifier:make", {}, "the factory raised KeyError: 'data_root'"),
        ("sim_clasifier:make", None, "cannot import 'sim_clasifier'"),
        ("sim_classifier:mkae", None, "module 'sim_classifier' has no 'mkae'"),
        ("sim_classifier:nothing", None, "returned None; it must return the workload object"),
    ],
)
def test_a_bad_factory_is_found_by_one_probe_before_any_peer_starts(
    classifier, capsys, factory, config, message
) -> None:
    """A typo in the module or attribute, a factory that raises or returns None: exit 2 from
    the probe process, with the factory's traceback (file:line), and no run directory."""
    (classifier["tmp"] / "pkg" / "sim_classifier.py").write_text(
        CLASSIFIER + "\n\ndef nothing(config):\n    return None\n"
    )
    args = classifier_args({**classifier, "factory": factory}, config=config)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and f"--factory {factory!r}" in err
    assert "no worker could start" not in err and "peer-0" not in err  # no peer was spawned
    if config == {}:
        assert 'sim_classifier.py", line ' in err and 'self.root = config["data_root"]' in err
    assert err.count("KeyError: 'data_root'") == (config == {})  # said once, not twice
    assert run_dirs(classifier["tmp"]) == []


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_round_without_contributors_stops_the_run(classifier, capsys) -> None:
    out = classifier["tmp"] / "run"
    args = classifier_args(
        classifier, "--out", str(out), config={"data_root": "/d", "fail": "train"}
    )
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no peer contributed in round 1 (--max-failed-rounds 1)" in err
    assert (
        "peer 0, 1: RemoteError: run_inner_loop: " in err and "the training data is missing" in err
    )
    assert f"(logs: {out / 'logs' / 'peer-0.log'}, {out / 'logs' / 'peer-1.log'})" in err
    report = json.loads((out / "report.json").read_text())
    assert report["completed_rounds"] == 1 and report["stopped"]["round"] == 1
    # The cause is kept: the named log and the report hold the hook's traceback (file:line).
    where = 'sim_classifier.py", line '
    log = (out / "logs" / "peer-0.log").read_text()
    assert "run_inner_loop refused by the worker" in log and where in log
    assert 'raise RuntimeError("the training data is missing")' in log
    peer = report["rounds"][0]["peers"]["0"]
    assert peer["traceback"].startswith("run_inner_loop: workload hook run_inner_loop raised")
    assert where in peer["traceback"] and where in report["faults"][0]["traceback"]
    with pytest.raises(RunFailed, match="2 rounds in a row, up to round 2"):
        run(
            SimConfig(factory=classifier["factory"], config={"data_root": "/d", "fail": "train"},
                      batches=classifier["batches"], peers=1, rounds=3, inner_steps=1,
                      max_failed_rounds=2),
        )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_failed_command_job_leaves_its_traceback_in_the_report(classifier, capsys) -> None:
    out = classifier["tmp"] / "run"
    args = classifier_args(
        classifier, "--out", str(out), "--rounds", "1", "--diloco-backend", "command",
        config={"data_root": "/d", "fail": "train"},
    )  # fmt: skip
    assert main(args) == 1
    report = json.loads((out / "report.json").read_text())
    peer = report["rounds"][0]["peers"]["0"]
    assert "job.log" in peer["error"]
    assert 'sim_classifier.py", line ' in peer["traceback"]
    assert "the training data is missing" in peer["traceback"]


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_completed_run_keeps_the_logs_its_messages_name(classifier, capsys) -> None:
    """Without --out, a run that completed but reported a peer failure (a fault) keeps its
    temporary directory (the logs the messages name) and says where."""
    args = classifier_args(
        classifier, "--rounds", "1", "--max-failed-rounds", "2",
        config={"data_root": "/d", "fail": "train"},
    )  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    (kept,) = run_dirs(classifier["tmp"])
    assert f"run directory kept: the worker logs named above are in {kept / 'logs'}" in err
    assert "the training data is missing" in (kept / "logs" / "peer-0.log").read_text()


@pytest.mark.timeout(E2E_TIMEOUT)
def test_seed_threads_metrics_and_plot_for_a_foreign_workload(classifier, capsys) -> None:
    tmp = classifier["tmp"]
    reports = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        report_file = tmp / f"{name}.json"
        args = ["--seed", seed, "--report", str(report_file), "--eval-metric", "accuracy"]
        if name == "a":
            args += ["--plot", str(tmp / "a.png"), "--threads-per-peer", "2"]
        assert main(classifier_args(classifier, *args)) == 0
        reports.append(json.loads(report_file.read_text()))
    a, b, c = reports
    # An unseeded init_model is reproducible from --seed alone.
    assert a["initial_eval"]["loss"] == b["initial_eval"]["loss"] != c["initial_eval"]["loss"]
    assert [r["eval"]["loss"] for r in a["rounds"]] == [r["eval"]["loss"] for r in b["rounds"]]
    # Threads: 2 when asked, else max(1, cores // peers), in torch and in OMP_NUM_THREADS.
    assert a["threads"]["per_worker"] == 2 and a["initial_eval"]["torch_threads"] == 2
    default = max(1, usable_cores() // 2)
    assert b["initial_eval"]["torch_threads"] == b["initial_eval"]["omp_threads"] == default
    assert b["threads"]["reason"] == f"{usable_cores()} cores / 2 peers"
    # The chosen metric, bounded, drives the summary; every varying metric gets a panel.
    assert a["eval_metric"] == "accuracy" and 0 <= a["final_eval_value"] <= 1
    assert plotted_metrics(a)[0] == "accuracy" and "loss" in plotted_metrics(a)
    assert "examples" not in plotted_metrics(a)
    assert (tmp / "a.png").read_bytes()[:4] == b"\x89PNG"
    lines = [json.loads(x) for x in (tmp / "a.metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert lines[2]["eval"]["accuracy"] == a["final_eval_value"]
    assert main(classifier_args(classifier, "--eval-metric", "acc")) == 2
    assert "the workload's evaluate returned accuracy, loss" in capsys.readouterr().err
    assert run_dirs(tmp) == []  # the refused run's temporary directory is gone


@pytest.mark.timeout(E2E_TIMEOUT)
def test_stragglers_and_dropout_on_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--quiet", "--out", str(out), "--peers", "3", "--rounds", "3",
            "--inner-steps", "3", "--seed", "11", "--fault", "slow@1=3", "--fault", "drop@2=0.5"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    dropped = [r["dropped"] for r in report["rounds"]]
    from fakecoord.sim.faults import FaultPlan, parse_fault

    plan = FaultPlan([parse_fault("drop@2=0.5")], 3, 3, seed=11)
    assert dropped == [[2] if plan.dropped(r, 2) else [] for r in (1, 2, 3)]
    for record in report["rounds"]:
        slow = record["peers"]["1"]
        assert slow["straggle_seconds"] == pytest.approx(2 * slow["worker_seconds"], rel=1e-3)
        assert sorted(record["contributors"] + record["dropped"]) == [0, 1, 2]
    assert report["timings"]["straggle_seconds"] > 0 and report["faults"] == []


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_toml_config_mirrors_the_flags_and_flags_override_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the file are relative to this directory
    config = tmp_path / "conf" / "run.toml"
    config.parent.mkdir()
    config.write_text(
        'peers = 2\nrounds = 3\ninner-steps = 2\nout = "run"\n'
        'fault = ["error@1:1"]\nouter_lr = 0.5\nnesterov = false\n'
        "[policy]\ncodec = { BlockwiseInt8 = { block_size = 64 } }\n"
        'aggregation_policy = "CoordinateMedian"\n'
    )
    assert main(["run", "--quiet", "--config", str(config), "--rounds", "1"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert not (tmp_path / "conf" / "run").exists()  # one rule: not relative to the file
    settings = report["settings"]
    assert (settings["peers"], settings["rounds"], settings["inner_steps"]) == (2, 1, 2)
    assert settings["faults"] == ["error@1:1"]
    assert settings["outer_lr"] == 0.5 and settings["nesterov"] is False
    # the [policy] table, with the shorthands over it, complete in the settings and the report
    policy = settings["policy"]
    assert policy["codec"] == {"BlockwiseInt8": {"block_size": 64}}
    assert policy["aggregation_policy"] == "CoordinateMedian" and policy["num_inner_steps"] == 2
    assert policy["outer_optimizer_policy"] == {
        "Sgd": {"learning_rate_micros": 500000, "nesterov": False}
    }
    assert report["network"] == {
        "policy": policy,
        "beyond_network": False,
        "refused_by_network": None,
    }
    assert report["rounds"][0]["aggregate"]["codec"] == "BlockwiseInt8(block_size=64)"
    config.write_text("peers = 2\nwhat = 1\n")
    assert main(["run", "--quiet", "--config", str(config)]) == 2


@pytest.mark.timeout(E2E_TIMEOUT)
def test_the_python_api_takes_a_custom_aggregator_and_strategy(tmp_path: Path) -> None:
    calls = []

    def trimmed(gradients: np.ndarray, out: np.ndarray) -> None:
        calls.append(gradients.shape[0])
        ordered = np.sort(gradients, axis=0)
        np.mean(ordered[1:-1] if len(ordered) > 2 else ordered, axis=0, out=out)

    class Warmup(DiLoCo):
        """DiLoCo whose outer learning rate ramps up over the first rounds."""

        def optimizer_for(self, r: int) -> OuterSGD:
            return OuterSGD(lr=0.7 * min(1.0, r / 2), momentum=0.9, nesterov=True)

    config = SimConfig(peers=3, rounds=2, inner_steps=3, seed=2)
    with pytest.raises(SimError, match="requires a workload-specific implementation"):
        run(config, strategy=Warmup(aggregator=trimmed), out=tmp_path / "refused")
    config = SimConfig(peers=3, rounds=2, inner_steps=3, seed=2, beyond_network=True)
    report = run(config, strategy=Warmup(aggregator=trimmed), out=tmp_path / "run")
    assert calls and set(calls) == {3}
    assert report["rounds"][0]["aggregate"]["method"] == "trimmed"
    assert report["final_eval_value"] < report["initial_eval_value"]
    with pytest.raises(SettingsError, match="--aggregate must be one of"):
        run(SimConfig(aggregate="trimmed"))


def test_a_v1_checkpoint_is_refused_with_a_reason(tmp_path: Path, capsys) -> None:
    out = tmp_path / "old"
    out.mkdir()
    settings = {**SimConfig().to_json(), "peers": 2}
    (out / "checkpoint.json").write_text(
        json.dumps({"format": "fakecoord-sim-checkpoint-v1", "config": settings})
    )
    assert main(["run", "--quiet", "--resume", str(out)]) == 2
    assert "older fakecoord (fakecoord-sim-checkpoint-v1) and cannot be resumed" in (
        capsys.readouterr().err
    )


@pytest.mark.timeout(E2E_TIMEOUT)
def test_the_simulation_benchmark_still_runs() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_sim", "--quick"],
        cwd=root, capture_output=True, text=True, timeout=E2E_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sim coordinator time per round" in done.stdout and "peak RSS" in done.stdout


@pytest.mark.parametrize("spec", ["error@0:1", "crash@1:1"])
def test_the_engine_applies_a_planned_fault_to_a_strategy_that_never_injects(
    tmp_path: Path, spec: str
) -> None:
    """Fault injection is the engine's: a strategy whose training never calls ``peer.inject``
    (here: DiLoCo with ``inject`` a no-op) still gets the planned fault on its training call."""
    from fakecoord.sim.faults import parse_fault

    class NoInject(DiLoCo):
        def train(self, peer, task):  # type: ignore[no-untyped-def]
            peer.inject = lambda job, pid=None: job  # type: ignore[method-assign]
            return super().train(peer, task)

    config = SimConfig(peers=2, rounds=2, inner_steps=3, seed=2, faults=[parse_fault(spec)])
    report = run(config, strategy=NoInject(), out=tmp_path / "run")
    (entry,) = [f for f in report["faults"] if f["spec"] == spec]
    assert entry["injected"] and entry["error"]
    peer = int(spec.split("@")[1].split(":")[0])
    assert report["rounds"][0]["contributors"] == [1 - peer]
    assert report["rounds"][1]["contributors"] == [0, 1]
