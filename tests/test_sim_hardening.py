"""Hardening of ``python -m fakecoord run`` (issue 16): hostile text, results, settings, paths,
checkpoints, files and signals.  Each test failed on the code before its fix (the issue's item
number is in each test's docstring); SECURITY.md ("The simulation") ties each claim to one."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fakecoord.__main__ import main
from fakecoord.errors import FaultSpecError, SettingsError
from fakecoord.handling import contribution_weight
from fakecoord.sim import SimConfig
from fakecoord.sim.cli import OPTIONS, argument_parser, read_toml
from fakecoord.sim.data import load_batches
from fakecoord.sim.diloco import read_result
from fakecoord.sim.engine import CHECKPOINT_NAME
from fakecoord.sim.faults import parse_fault
from fakecoord.sim.report import MAX_METRIC_PANELS, write_plot
from tests.conftest import CUSTOM_REF as REF
from tests.conftest import importable_toy_workload

ROOT = Path(__file__).resolve().parent.parent
E2E_TIMEOUT = 240

# A small foreign workload whose texts, metrics and failures the config chooses.
HOSTILE = """
import os, time
import torch
from torch import nn


class Hostile:
    workload_name = "hostile"

    def __init__(self, config):
        self.config = config
        if config.get("pid_file"):
            with open(config["pid_file"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True)

    def runtime_device(self):
        return "python-torch-cpu"

    def capability_probe(self):
        return {"preferred_backends": ["cpu"], "work_units_per_second": 1.0,
                "target_window_seconds": 1}

    def init_model(self, device):
        return {"model": nn.Linear(4, 1)}

    def _train(self, model, steps):
        if self.config.get("fail"):
            raise RuntimeError(self.config["fail"])
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(self.x), self.y)
            loss.backward()
            opt.step()
        if self.config.get("busy_file"):
            open(self.config["busy_file"], "a").close()
        time.sleep(self.config.get("sleep", 0))
        return {"loss": float(loss), **self.config.get("train_metrics", {})}

    def train_window(self, state, batches):
        return self._train(state["model"], len(batches))

    def run_inner_loop(self, state, job):
        metrics = self._train(state["model"], job["num_inner_steps"])
        return {"steps_completed": job["num_inner_steps"], "metrics": metrics}

    def evaluate(self, state, split):
        with torch.no_grad():
            loss = float(nn.functional.mse_loss(state["model"](self.x), self.y))
        return {"loss": loss, **self.config.get("eval_metrics", {})}

    def merge_candidate_models(self, base, candidates, policy):
        merged = nn.Linear(4, 1)  # the base again: a merge, so a windows run completes
        merged.load_state_dict(base["model"].state_dict())
        return {"model": merged}

    def apply_single_root_ema(self, base, merged, policy):
        return None

    def reconcile_canonical_model(self, local, canonical, strategy):
        return None


def make(config):
    return Hostile(config)
"""


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch) -> dict:
    """The hostile workload importable here and by workers, a batches file, a private tempdir."""
    package, batches = importable_toy_workload(
        tmp_path, monkeypatch, "sim_hostile", HOSTILE, 4, pythonpath=[ROOT]
    )
    return {"tmp": tmp_path, "batches": str(batches), "package": package}


def hostile_args(h: dict, *extra: str, config: dict | None = None) -> list[str]:
    return [
        "run", "--factory", "sim_hostile:make", "--batches", h["batches"],
        "--config-json", json.dumps(config or {}), "--peers", "2", "--rounds", "1",
        "--inner-steps", "2", *extra,
    ]  # fmt: skip


def run_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("fakecoord-run-*"))


# ---------------------------------------------------------------------------
# 1. Nothing a workload, a path or a metric name says is read as markup


@pytest.mark.timeout(E2E_TIMEOUT)
def test_markup_in_a_workload_error_and_a_run_directory_is_printed_as_written(
    hostile, capsys, monkeypatch
) -> None:
    """Item 1: ``cannot open [/data/x]`` raised MarkupError (exit 1, no report, every resume
    too); ``[lr=0.1]`` in the run directory's name vanished from the header."""
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps at the console's width
    out = hostile["tmp"] / "run [lr=0.1] [bold]"
    args = hostile_args(hostile, "--out", str(out), config={"fail": "cannot open [/data/x]"})
    assert main(args) == 1  # no peer contributed: stopped early, with a report
    err = capsys.readouterr().err
    assert "cannot open [/data/x]" in err
    assert f"run directory {out}" in err
    assert "MarkupError" not in err
    report = json.loads((out / "report.json").read_text())
    assert "cannot open [/data/x]" in report["rounds"][0]["peers"]["0"]["error"]


def test_metric_names_in_the_summary_table_are_not_markup() -> None:
    """Item 1: a metric name is a table header; ``[red]`` in it stays text."""
    from rich.console import Console

    from fakecoord.sim.report import summary_table

    report = {"eval_metric": "acc[/]", "strategy": "diloco", "rounds": [],
              "initial_eval_value": 1.0}  # fmt: skip
    console = Console(record=True, width=120)
    console.print(summary_table(report))
    assert "eval acc[/]" in console.export_text()


# ---------------------------------------------------------------------------
# 2. Job results read as strictly as the Rust coordinator reads them


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"steps_completed": 2, "metrics": {"loss": NaN}}', "metrics.loss"),
        ('{"steps_completed": 2, "metrics": {"loss": Infinity}}', "metrics.loss"),
        ('{"steps_completed": 2, "metrics": {"note": "\\ud800"}}', "metrics.note"),
        ('{"steps_completed": 2, "local_parameter_pack_path": 5}', "local_parameter_pack_path"),
        ('{"steps_completed": 2, "metrics": {"n": 9223372036854775808}}', "metrics.n"),
    ],
)
def test_a_result_manifest_serde_would_refuse_is_refused_naming_the_field(
    tmp_path: Path, text: str, where: str
) -> None:
    """Item 2: ``json.loads`` took NaN, and the checkpoint write then raised at every resume."""
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"result manifest .*{where}"):
        read_result(path, 2)
    path.write_text('{"steps_completed": 2, "metrics": {"loss": 0.5, "ok": true, "n": "x"}}')
    assert read_result(path, 2)["metrics"] == {"loss": 0.5, "ok": True, "n": "x"}


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_nan_result_refuses_the_round_and_the_run_stays_resumable(tmp_path: Path) -> None:
    """Item 2, end to end: the round is refused with the reason, the checkpoint stays valid."""
    script = tmp_path / "nan_job.py"
    script.write_text(
        "import json, sys\n"
        "job = json.load(open(sys.argv[1]))\n"
        'open(sys.argv[2], \'w\').write(\'{"steps_completed": %d, "metrics": {"loss": NaN}}\''
        " % job['num_inner_steps'])\n"
    )
    out = tmp_path / "run"
    command = f"{sys.executable} {script} {{job_manifest}} {{result_manifest}}"
    args = ["run", "--quiet", "--out", str(out), "--peers", "1", "--rounds", "1",
            "--inner-steps", "2", "--diloco-backend", "command", "--command", command]  # fmt: skip
    assert main(args) == 1  # the only peer was refused: stopped early, not a crash
    report = json.loads((out / "report.json").read_text())
    error = report["rounds"][0]["peers"]["0"]["error"]
    assert "metrics.loss" in error and "NaN" in error
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    assert checkpoint["state"]["completed_rounds"] == 1


# ---------------------------------------------------------------------------
# 3. Candidate weights as the Rust coordinator computes them


def test_the_contribution_weight_follows_the_rust_coordinator() -> None:
    """Item 3: ``standard_contribution_weight``: the first finite positive number among
    tokens_processed, accepted_tokens_or_samples, examples_processed, sample_count, samples,
    batch_count; strings, bools, zeros skipped; 1.0 when none."""
    assert contribution_weight({"examples_processed": "many", "batch_count": 3}) == 3.0
    assert contribution_weight({"tokens_processed": 0, "samples": 7, "batch_count": 3}) == 7.0
    assert contribution_weight({"tokens_processed": True, "examples_processed": 5}) == 5.0
    assert contribution_weight({"examples": 64}) == 1.0
    assert contribution_weight({}) == 1.0


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_string_metric_does_not_kill_the_windows_protocol(hostile) -> None:
    """Item 3: ``float("many")`` killed the run with a traceback."""
    config = {"train_metrics": {"examples_processed": "many", "loss": "low"}}
    out = hostile["tmp"] / "run"
    args = hostile_args(hostile, "--quiet", "--protocol", "windows", "--out", str(out),
                        config=config)  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"][0]["contributors"] == [0, 1]
    assert report["rounds"][0]["merge"]["candidates"] == 2


# ---------------------------------------------------------------------------
# 5. --plot: plain labels, any finite value, a bounded image


def _report(metrics: list[dict]) -> dict:
    rounds = [
        {
            "round": r, "eval": m, "peers": {"0": {"status": "ok", "metrics": {"loss": 1.0}}},
            "timings": {"worker_call_seconds": 1.0, "coordinator_seconds": 0.1},
        }
        for r, m in enumerate(metrics[1:], start=1)
    ]  # fmt: skip
    return {"strategy": "diloco", "settings": {"peers": 1}, "eval_metric": "loss",
            "initial_eval": metrics[0], "rounds": rounds, "faults": [],
            "timings": {"wall_seconds": 1.0}}  # fmt: skip


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_a_mathtext_metric_name_is_drawn_as_written(tmp_path: Path) -> None:
    """Item 5: ``spend_$_per_$_token`` crashed matplotlib's mathtext parser."""
    name = "spend_$_per_$_token"
    write_plot(_report([{"loss": 1.0, name: 1.0}, {"loss": 0.5, name: 2.0}]), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_finite_extremes_are_plotted(tmp_path: Path) -> None:
    """Item 5: values near +-1.7e308 made the axis limits overflow (ValueError)."""
    metrics = [{"loss": 1.7e308, "gap": -1.7e308}, {"loss": -1.7e308, "gap": 1.7e308},
               {"loss": 5e-324, "gap": 0.0}]  # fmt: skip
    write_plot(_report(metrics), tmp_path / "p.svg")
    assert "clipped" in (tmp_path / "p.svg").read_text()


def test_150_metrics_make_a_bounded_image_and_are_named(tmp_path: Path) -> None:
    """Item 5: 150 metrics made a 20,000-pixel-high image; the panels are capped and the
    metrics left out are returned (and written under the figure)."""
    names = [f"m{i:03d}" for i in range(150)]
    metrics = [{"loss": 1.0, **{n: 0.0 for n in names}}, {"loss": 0.5, **{n: 1.0 for n in names}}]
    left_out = write_plot(_report(metrics), tmp_path / "p.png")
    assert len(left_out) == 151 - MAX_METRIC_PANELS and "m149" in left_out
    width, height = _png_size(tmp_path / "p.png")
    assert height <= 2200 and width <= 1600


# ---------------------------------------------------------------------------
# 6. Output paths checked before anything starts


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--report", "nope/r.json"], "--report 'nope/r.json': the directory"),
        (["--plot", "x.png2"], "--plot 'x.png2': the extension decides the format"),
        (["--plot", "nope/x.png"], "--plot 'nope/x.png': the directory"),
        (["--report", "."], "is a directory"),
        (["--out", "refs.json"], "exists and is not a directory"),
    ],
)
def test_unwritable_outputs_exit_2_before_anything_starts(
    hostile, capsys, monkeypatch, extra: list[str], message: str
) -> None:
    """Item 6: these were found after the whole run (traceback, exit 1, run directory unnamed)."""
    monkeypatch.chdir(hostile["tmp"])
    assert main(hostile_args(hostile, "--quiet", *extra)) == 2
    assert message in capsys.readouterr().err
    assert run_dirs(hostile["tmp"]) == []


def test_a_stream_is_an_acceptable_report_path(tmp_path: Path) -> None:
    """``--report /dev/stdout`` or a FIFO passes the check (written into, never replaced:
    fakecoord/files.py), with no metrics file beside it."""
    from fakecoord.sim.rundir import check_output_file, is_stream

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/null"), fifo):
        assert check_output_file("--report", path, beside=".metrics.jsonl") == path
        assert is_stream(path)
    assert not is_stream(tmp_path)


@pytest.mark.timeout(E2E_TIMEOUT)
def test_an_output_failing_at_the_end_keeps_and_names_the_run_directory(
    hostile, capsys, monkeypatch
) -> None:
    """Item 6: an output that still fails (here the plot) exits 1 naming the kept run directory."""

    def broken(report: dict, path: object) -> list[str]:
        raise RuntimeError("the plot backend failed")

    monkeypatch.setattr("fakecoord.sim.report.write_plot", broken)
    plot = hostile["tmp"] / "p.png"
    assert main(hostile_args(hostile, "--quiet", "--plot", str(plot))) == 1
    err = capsys.readouterr().err
    (kept,) = run_dirs(hostile["tmp"])
    assert "the plot backend failed" in err and "run directory kept" in err and str(kept) in err
    assert (kept / "report.json").exists()


# ---------------------------------------------------------------------------
# 7. One typed schema for flags and TOML


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("batches = 5", "batches (--batches): expected a path string (not empty, no NUL), got 5"),
        ("out = 7", "out (--out): expected a path string (not empty, no NUL), got 7"),
        ("resume = 1", "resume (--resume): expected a path string (not empty, no NUL), got 1"),
        ("command = 5", "command (--command): expected a command string or an array of strings"),
        (
            "report = true",
            "report (--report): expected a path string (not empty, no NUL), got True",
        ),
        ("plot = [1]", "plot (--plot): expected a path string (not empty, no NUL), got [1]"),
        ('baseline = "false"', "baseline (--baseline): expected a boolean"),
        ('quiet = "false"', "quiet (--quiet): expected a boolean"),
        ('nesterov = "false"', "nesterov (--nesterov): expected a boolean"),
        ("peers = 2.5", "peers (--peers): expected an integer, got 2.5"),
        ('protocol = "gossip"', "protocol (--protocol): expected one of diloco, windows"),
        ("fault = [1]", "fault (--fault): expected a string or an array of strings"),
    ],
)
def test_a_toml_value_of_the_wrong_type_names_the_key_and_the_type(
    tmp_path: Path, capsys, toml: str, message: str
) -> None:
    """Item 7: these ended in tracebacks, and ``"false"`` counted as true for two booleans."""
    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    assert main(["run", "--config", str(path), "--quiet"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("weight", ["nan", "inf", "1.5", "-0.1"])
def test_a_canonical_weight_the_checkpoint_cannot_hold_is_refused(capsys, weight: str) -> None:
    """Found by the sim fuzz target: ``--canonical-weight nan`` passed every check, and the
    first checkpoint write then raised (allow_nan=False)."""
    assert main(["run", "--quiet", "--protocol", "windows", "--canonical-weight", weight]) == 2
    assert "--canonical-weight must be a number in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peers": 2**63}, "--peers must be in 1..4096"),
        ({"inner_steps": 2**32}, "--inner-steps must be in 1..4294967295 (u32)"),
        ({"rounds": 10**10}, "--rounds must be in 1..1000000000"),
        ({"reconcile": {"RootEma": None}}, "--canonical-weight must be a number in [0, 1]"),
        ({"reconcile": "x" * 10**6}, "--canonical-weight must be a number in [0, 1]"),
    ],
)
def test_settings_a_checkpoint_could_not_hold_are_refused(changes: dict, message: str) -> None:
    """Found by the sim fuzz target: these passed the checks (or raised AttributeError), and
    the run then wrote a checkpoint its own resume refuses (peers beyond i64, inner steps
    beyond the wire's u32)."""
    with pytest.raises(SettingsError) as refused:
        SimConfig(**changes).validate()
    assert message in str(refused.value) and len(str(refused.value)) < 300


def test_every_option_is_one_entry_read_by_both_the_flags_and_toml(tmp_path: Path) -> None:
    """Item 7: the parser and the TOML reader are both derived from OPTIONS."""
    parser = argument_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for opt in OPTIONS:
        assert opt.flag in flags, opt.name
    path = tmp_path / "run.toml"
    path.write_text('peers = 3\nouter-lr = 1\nnesterov = false\nworker_cmd = ["py", "-m", "w"]\n')
    assert read_toml(path) == {"peers": 3, "outer_lr": 1.0, "nesterov": False,
                               "worker_cmd": "py -m w"}  # fmt: skip


# ---------------------------------------------------------------------------
# 8. --batches refs the coordinator could never send


def test_refs_the_coordinator_could_never_send_are_refused(tmp_path: Path) -> None:
    """Item 8: NaN payloads, lone surrogates, non-UTF-8 file names and a u64 overflow passed."""
    cases = {
        "nan.json": '[{"kind": "micro_epoch", "lease_id": "l", "microshard_ids": [], '
        '"ordinals": [], "bytes_len": 0, "pipeline_kind": "custom", "payload": {"x": NaN}}]',
        "surrogate.json": json.dumps([{**REF, "lease_id": "\ud800"}]),
        "u64.json": json.dumps([{**REF, "bytes_len": 2**64}]),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        with pytest.raises(SettingsError, match="--batches"):
            load_batches(tmp_path / name, 1)
    data = tmp_path / "data"
    data.mkdir()
    fd = os.open(os.fsencode(data) + b"/shard-\xff.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    with pytest.raises(SettingsError, match="could never send it"):
        load_batches(data, 1)


# ---------------------------------------------------------------------------
# 9. --resume: the whole checkpoint validated, its owner, one run at a time


@pytest.fixture
def finished_run(hostile) -> Path:
    out = hostile["tmp"] / "done"
    assert main(hostile_args(hostile, "--quiet", "--out", str(out), "--fault", "slow@0=2")) == 0
    return out


def _damaged(out: Path, name: str, change) -> Path:
    copy = out.parent / name
    shutil.copytree(out, copy)
    data = json.loads((copy / CHECKPOINT_NAME).read_text())
    change(data)
    (copy / CHECKPOINT_NAME).write_text(json.dumps(data))
    return copy


DAMAGE = [
    ("config-list", lambda d: d.update(config=[1, 2]), "config"),
    ("no-timings", lambda d: d["report"].pop("timings"), "report.timings"),
    ("rounds-text", lambda d: d["state"].update(completed_rounds="1"), "state.completed_rounds"),
    ("inner-opt-list", lambda d: d["state"]["strategy"].update(inner_opt=[]), "inner_opt"),
    ("fault-number", lambda d: d["config"].update(faults=[5]), "config.faults[0]"),
    ("fault-bad", lambda d: d["config"].update(faults=["melt@0:1"]), "config.faults[0]"),
    ("peer-key", lambda d: d.update(pending_recovery={"x": "y"}), "pending_recovery.x"),
    ("round-peers", lambda d: d["report"]["rounds"][0].update(peers=[]), "report.rounds[0].peers"),
]


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_damaged_checkpoint_is_refused_naming_where(finished_run: Path, capsys) -> None:
    """Item 9: each of these gave a traceback (only one block was guarded)."""
    for name, change, where in DAMAGE:
        copy = _damaged(finished_run, name, change)
        assert main(["run", "--resume", str(copy), "--rounds", "2", "--quiet"]) == 2, name
        err = capsys.readouterr().err
        assert "the checkpoint is damaged: " in err and where in err, (name, err)


@pytest.mark.timeout(E2E_TIMEOUT)
def test_a_run_directory_locked_or_owned_by_another_user_is_refused(
    finished_run: Path, capsys
) -> None:
    """Item 9: two resumes of one directory ran at once; another user's directory was used."""
    fd = os.open(finished_run / "run.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["run", "--resume", str(finished_run), "--rounds", "2", "--quiet"]) == 2
        assert "another fakecoord run is using this directory" in capsys.readouterr().err
    finally:
        os.close(fd)
    if os.geteuid() != 0:
        pytest.skip("changing a directory's owner needs root (CI has it)")
    foreign = finished_run.parent / "foreign"
    shutil.copytree(finished_run, foreign)
    os.chown(foreign / CHECKPOINT_NAME, 65534, 65534)
    assert main(["run", "--resume", str(foreign), "--rounds", "2", "--quiet"]) == 2
    assert "belongs to uid 65534, not to this user" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# 10. --seed, 12. --fault values: bounded before anything starts


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
def test_a_seed_outside_0_to_2_pow_32_is_refused_before_anything_starts(
    tmp_path: Path, capsys, monkeypatch, seed: str
) -> None:
    """Item 10: -1 crashed numpy after the run directory existed; 2**64 failed every worker."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["run", "--quiet", "--seed", seed]) == 2
    assert "--seed must be an integer in 0..4294967295" in capsys.readouterr().err
    assert run_dirs(tmp_path) == []
    SimConfig(seed=2**32 - 1).validate()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("slow@0=1e12", "at most 1000"),
        ("slow@0=inf", "at most 1000"),
        ("slow@0=nan", "at most 1000"),
        ("crash@0:" + "9" * 5000, "crash takes KIND@PEER:ROUND"),
        ("drop@" + "9" * 5000 + "=0.5", "drop takes"),
        ("slow@0=" + "1" * 5000, "at most 1000"),
    ],
)
def test_fault_values_are_bounded_when_parsed(spec: str, message: str) -> None:
    """Item 12: ``slow@0=1e12`` passed and crashed the run (Event.wait overflow); 5000-digit
    peers and rounds raised ValueError (int's digit limit) instead of a usage error."""
    with pytest.raises(FaultSpecError, match=message):
        parse_fault(spec)
    assert parse_fault("slow@0=1000").value == 1000.0


# ---------------------------------------------------------------------------
# 11. Nothing written through a planted link


@pytest.mark.timeout(E2E_TIMEOUT)
def test_reports_and_logs_are_never_written_through_planted_links(hostile, capsys) -> None:
    """Item 11: ``--report`` and its metrics file were truncated through links, and
    ``logs/workers.jsonl`` / ``logs/peer-N.log`` appended through them."""
    tmp = hostile["tmp"]
    victim = tmp / "victim.txt"
    victim.write_text("precious\n")
    report = tmp / "r.json"
    report.symlink_to(victim)
    (tmp / "r.metrics.jsonl").symlink_to(victim)
    assert main(hostile_args(hostile, "--quiet", "--report", str(report))) == 0
    assert victim.read_text() == "precious\n"
    assert not report.is_symlink() and json.loads(report.read_text())["completed_rounds"] == 1
    out = tmp / "out-jsonl"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "workers.jsonl").symlink_to(victim)
    assert main(hostile_args(hostile, "--quiet", "--out", str(out))) == 1  # no worker starts
    assert "cannot open its log" in capsys.readouterr().err
    out = tmp / "out-peer-log"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "peer-0.log").symlink_to(victim)
    assert main(hostile_args(hostile, "--quiet", "--out", str(out))) == 0  # peer 1 trains alone
    peer = json.loads((out / "report.json").read_text())["rounds"][0]["peers"]["0"]
    assert peer["status"] == "failed" and "cannot open its log" in peer["error"]
    assert victim.read_text() == "precious\n"


# ---------------------------------------------------------------------------
# 13. SIGTERM is handled as Ctrl-C is


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached; exit {proc.poll()}: {proc.communicate()[1]}")


def _completed_rounds(out: Path) -> int:
    try:
        return json.loads((out / CHECKPOINT_NAME).read_text())["state"]["completed_rounds"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.timeout(E2E_TIMEOUT)
def test_sigterm_stops_every_worker_exits_143_and_the_run_resumes(hostile) -> None:
    """Item 13: after SIGTERM busy workers kept running and hung ones never exited."""
    out = hostile["tmp"] / "terminated"
    pids = hostile["tmp"] / "pids"
    config = {"sleep": 0.3, "pid_file": str(pids)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakecoord", "run", "--factory", "sim_hostile:make",
         "--batches", hostile["batches"], "--config-json", json.dumps(config), "--peers", "2",
         "--rounds", "200", "--inner-steps", "1", "--out", str(out), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _completed_rounds(out) >= 1, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM); all workers stopped" in stderr
    assert f"resume with --resume {out}" in stderr
    spawned = [int(p) for p in pids.read_text().split()]
    # The factory probe built the workload once before the run (issue 18), then one worker
    # per peer did.
    assert len(spawned) == 3 and not any(_alive(p) for p in spawned)
    done = _completed_rounds(out)
    assert main(["run", "--resume", str(out), "--rounds", str(done + 1), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == list(range(1, done + 2))


@pytest.mark.timeout(E2E_TIMEOUT)
def test_sigterm_stops_the_conformance_suite_and_its_worker(hostile) -> None:
    """Item 13: ``python -m conformance`` died on SIGTERM without stopping its worker."""
    pids, busy = hostile["tmp"] / "pids", hostile["tmp"] / "busy"
    config = {"sleep": 600, "pid_file": str(pids), "busy_file": str(busy)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "conformance", "--factory", "sim_hostile:make",
         "--config-json", json.dumps(config), "--timeout", "600"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(busy.exists, proc)  # a worker is inside a 600 s training call
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr
    spawned = [int(p) for p in pids.read_text().split()]
    assert spawned and not any(_alive(p) for p in spawned)
