"""A missing optional package is named, with the install line of its extra (exit 2,
no traceback), before a simulation starts anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fakecoord.errors import MissingExtra, SettingsError
from fakecoord.optional import require

BLOCKED_RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import of it now fails as if it were not installed
from fakecoord.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(packages: str, *args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, packages, "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("blocked", "args", "named"),
    [
        ("rich", ("--rounds", "1", "--peers", "2"), "rich"),
        ("numpy", ("--rounds", "1", "--peers", "2"), "numpy"),
        (
            "matplotlib",
            ("--quiet", "--rounds", "1", "--peers", "2", "--plot", "p.png"),
            "matplotlib",
        ),
    ],
)
def test_fakecoord_run_names_the_missing_package_and_its_extra(tmp_path, blocked, args, named):
    proc = run_without(blocked, *args, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"needs the optional package '{named}'" in proc.stderr
    assert "pip install 'burn-p2p-python-worker[sim]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_quiet_run_does_not_need_rich(tmp_path):
    """--quiet never imports rich: the check follows what the run will use."""
    proc = run_without("rich", "--quiet", "--rounds", "1", "--peers", "1", cwd=str(tmp_path))
    assert "optional package" not in proc.stderr
    assert proc.returncode == 0, proc.stderr


def test_require_is_a_settings_error_naming_the_extra():
    with pytest.raises(MissingExtra) as info:
        require("no_such_package_h6", "a feature", extra="conformance")
    assert isinstance(info.value, SettingsError)
    assert str(info.value) == (
        "a feature needs the optional package 'no_such_package_h6': "
        "pip install 'burn-p2p-python-worker[conformance]'"
    )
