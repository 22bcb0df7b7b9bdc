"""One version source: pyproject.toml, read back through the installed metadata."""

from __future__ import annotations

import sys
from pathlib import Path

import conformance
import fakecoord
import worker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_every_package_reports_the_pyproject_version() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert worker.__version__ == fakecoord.__version__ == conformance.__version__ == declared


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    for package in (worker, fakecoord, conformance):
        assert not hasattr(package, "no_such_attribute")


def test_the_simulation_cli_prints_the_version(capsys) -> None:
    import pytest

    from fakecoord.__main__ import main

    for argv in (["--version"], ["run", "--version"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
        assert f"fakecoord {fakecoord.__version__}" in capsys.readouterr().out


def test_the_worker_cli_prints_the_version_without_other_flags() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "worker", "--version"],
        cwd=PYPROJECT.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"python -m worker {worker.__version__} (protocol 2)"
