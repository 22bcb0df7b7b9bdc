"""The boundary: fakecoord and conformance never import the worker.

They are the other side of the wire, like the Rust coordinator: they talk to
a worker only over the protocol and the on-disk formats, so that they cannot
share its bugs.  Checked statically (every import, and every string handed
to ``importlib.import_module`` / ``__import__``) and at run time (import every
module of both packages in a fresh interpreter, then look at ``sys.modules``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fakecoord", "conformance")
FORBIDDEN = "worker"


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def _package(path: Path) -> str:
    """The package a module's relative imports resolve against."""
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def worker_imports(source: str, package: str) -> list[str]:
    """Every import of ``worker`` in ``source`` (a module of ``package``), as text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _is_forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _is_forbidden(node.module):
                found.append(f"from {node.module} import ...")
            elif node.level > 0:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
                if _is_forbidden(target):
                    found.append(f"from {'.' * node.level}{node.module or ''} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__", "find_spec") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    if _is_forbidden(first.value):
                        found.append(f"{name}({first.value!r})")
    return found


def test_the_static_check_sees_every_form_of_import() -> None:
    forms = textwrap.dedent(
        """
        import worker
        import os, worker.framing as f
        from worker.packs import read
        from worker import protocol
        importlib.import_module("worker.layout")
        __import__("worker")
        importlib.util.find_spec("worker")
        import workers_unrelated
        from fakecoord import worker_root
        """
    )
    assert len(worker_imports(forms, "fakecoord")) == 7
    assert worker_imports("from .. import worker", "fakecoord.sub") == []  # fakecoord.worker
    assert worker_imports("from . import worker", "fakecoord") == []


def test_no_module_of_fakecoord_or_conformance_imports_worker() -> None:
    sources = _sources()
    assert len(sources) >= 30
    found = {
        str(p.relative_to(REPO_ROOT)): hits
        for p in sources
        if (hits := worker_imports(p.read_text(encoding="utf-8"), _package(p)))
    }
    assert found == {}


def test_importing_every_module_loads_no_worker_module() -> None:
    modules = [_module_name(p) for p in _sources()]
    script = textwrap.dedent(
        f"""
        import importlib, json, sys
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m in sys.modules if m == "worker" or m.startswith("worker."))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_longer_than_800_lines(package: str) -> None:
    lengths = {
        str(p.relative_to(REPO_ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in (REPO_ROOT / package).rglob("*.py")
        if not p.name.startswith("sim")  # the simulation is being rebuilt separately
    }
    assert {name: n for name, n in lengths.items() if n > 800} == {}
