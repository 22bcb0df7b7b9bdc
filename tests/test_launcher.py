"""The ``burn-p2p-python`` launcher, spawned exactly as the Rust coordinator spawns
its ``python_executable``: ``-m burn_p2p_python_runtime.worker`` plus the four
flags, with the coordinator's own seed copy first on ``PYTHONPATH``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.launcher import RUNTIME_MODULE, worker_args

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = [sys.executable, "-m", "worker.launcher"]

SEED_STAND_IN = textwrap.dedent(
    """
    # Stands in for the coordinator's copy of the seed worker: it identifies
    # itself in every answer, so a test can tell who served it.
    import argparse, json, socket, struct, sys

    parser = argparse.ArgumentParser()
    for flag in ("--factory", "--config-json", "--connect-host", "--connect-port"):
        parser.add_argument(flag)
    args = parser.parse_args()
    print("seed stand-in running", file=sys.stderr)
    with socket.create_connection((args.connect_host, int(args.connect_port))) as sock:
        stream = sock.makefile("rb")
        while (header := stream.read(8)):
            request = json.loads(stream.read(struct.unpack(">Q", header)[0]))
            result = {"protocol_version": 2, "workload_name": "seed-stand-in", "capabilities": ["seed"]}
            body = json.dumps({"id": request["id"], "ok": True, "result": result}).encode()
            sock.sendall(struct.pack(">Q", len(body)) + body)
    """
)


@pytest.fixture
def seed_path(tmp_path) -> Path:
    """A directory holding a fake ``burn_p2p_python_runtime`` package."""
    root = tmp_path / "coordinator-runtime"
    package = root / "burn_p2p_python_runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "worker.py").write_text(SEED_STAND_IN)
    (package / "other.py").write_text("import sys; print('other module', sys.argv[1:])\n")
    return root


def test_control_without_the_launcher_the_seed_stand_in_answers(worker_process, seed_path):
    proc = worker_process(
        "tests.workloads:make_tiny", {},
        command=[sys.executable, "-m", RUNTIME_MODULE], pythonpath=[seed_path],
    )  # fmt: skip
    assert proc.conn.request("hello")["result"]["workload_name"] == "seed-stand-in"


def test_launcher_runs_our_worker_for_the_runtime_module(worker_process, seed_path):
    proc = worker_process(
        "tests.workloads:make_tiny", {"hidden": 4},
        command=[*LAUNCHER, "-m", RUNTIME_MODULE], pythonpath=[seed_path],
    )  # fmt: skip
    hello = proc.conn.request("hello")["result"]
    assert hello["workload_name"] == "tiny"
    assert "diloco_checkpoint_job" in hello["capabilities"] and "seed" not in hello["capabilities"]
    # The seed has no parameter_pack_plan: only our worker can answer this.
    plan = proc.conn.request("parameter_pack_plan", {"device": "cpu", "state_dict_filter": None})
    assert plan["ok"] and plan["result"]["parameter_count"] == (4 * 4 + 4) + 4 * 4 + (4 + 1)
    assert proc.conn.request("shutdown")["ok"]
    assert proc.wait() == 0
    assert "seed stand-in" not in proc.stderr


def test_launcher_startup_errors_come_from_our_worker(worker_process, seed_path):
    proc = worker_process(
        "no_colon", {}, command=[*LAUNCHER, "-m", RUNTIME_MODULE], pythonpath=[seed_path],
        connect=False,
    )  # fmt: skip
    assert proc.wait() == 2
    assert proc.stderr.startswith("burn-p2p worker: --factory must be MODULE:ATTR")


def _run(args: list[str], seed_path: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(seed_path), str(REPO_ROOT)])}
    return subprocess.run(
        [*LAUNCHER, *args], env=env, capture_output=True, text=True, timeout=60, **kwargs
    )


def test_other_invocations_pass_through_unchanged(seed_path):
    done = _run(["-c", "import sys; print('hello from', sys.argv[1:])", "a", "--b"], seed_path)
    assert done.returncode == 0 and done.stdout == "hello from ['a', '--b']\n"


def test_pass_through_keeps_exit_status_and_stdin(seed_path):
    done = _run(
        ["-c", "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(7)"],
        seed_path,
        input="piped",
    )
    assert done.returncode == 7 and done.stdout == "PIPED"


def test_other_modules_of_the_runtime_package_pass_through(seed_path):
    done = _run(["-m", "burn_p2p_python_runtime.other", "x"], seed_path)
    assert done.returncode == 0 and done.stdout == "other module ['x']\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", RUNTIME_MODULE, "--factory", "a:b"], ["--factory", "a:b"]),
        (["-u", "-m", RUNTIME_MODULE, "x"], ["x"]),
        (["-E", "-sB", "-m", RUNTIME_MODULE], []),
        ([f"-m{RUNTIME_MODULE}", "x"], ["x"]),
        (["-m", "burn_p2p_python_runtime"], None),
        (["-m", "other.module", "-m", RUNTIME_MODULE], None),
        (["-c", "print(1)"], None),
        (["script.py", "-m", RUNTIME_MODULE], None),
        (["-m"], None),
        ([], None),
    ],
)
def test_worker_args(argv, expected):
    assert worker_args(argv) == expected


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["burn-p2p-python"] == "worker.launcher:main"


def test_installed_console_script_serves_as_python_executable(worker_process, seed_path):
    script = Path(sys.executable).with_name("burn-p2p-python")
    if not script.exists():
        pytest.skip(f"package not installed in this environment ({script} missing)")
    proc = worker_process(
        "tests.workloads:make_tiny", {}, command=[str(script), "-m", RUNTIME_MODULE],
        pythonpath=[seed_path],
    )  # fmt: skip
    assert proc.conn.request("hello")["result"]["workload_name"] == "tiny"


CONSOLE_SCRIPT = """\
import sys
from worker.launcher import main
if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.parametrize(
    "how",
    ["module", "console-script"],
)
def test_factory_modules_in_the_working_directory_import_as_with_python_m(
    worker_process, seed_path, tmp_path, how
):
    # worker_process runs children in tmp_path; a module there is importable
    # by `python -m ...` (sys.path[0] is the working directory).
    (tmp_path / "cwd_workload.py").write_text("from tests.workloads import make_tiny\n")
    if how == "module":
        command = [*LAUNCHER, "-m", RUNTIME_MODULE]
    else:  # what setuptools generates for [project.scripts]
        script_dir = tmp_path / "bin"
        script_dir.mkdir()
        (script_dir / "burn-p2p-python").write_text(CONSOLE_SCRIPT)
        command = [sys.executable, str(script_dir / "burn-p2p-python"), "-m", RUNTIME_MODULE]
    proc = worker_process("cwd_workload:make_tiny", {}, command=command, pythonpath=[seed_path])
    assert proc.conn.request("hello")["result"]["workload_name"] == "tiny"
