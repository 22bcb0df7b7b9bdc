"""The optional packages fakecoord's simulation uses, imported on demand.

``python -m fakecoord run`` needs numpy (always), rich (the progress bar and
tables), matplotlib (``--plot``) and, on Python 3.10, tomli (``--config``):
the ``sim`` extra.  :func:`require` imports one and turns its absence into a
:class:`~fakecoord.errors.MissingExtra` that names the package and the install
line, instead of a traceback from deep inside a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtra


def require(module: str, purpose: str, extra: str = "sim") -> ModuleType:
    """Import ``module`` (a top-level package name, also its distribution name);
    raises :class:`MissingExtra` when it, or a package it needs, is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).partition(".")[0]
        if missing != module:  # installed, but something it imports is not
            purpose = f"{purpose} (importing {module!r} failed: {exc})"
        raise MissingExtra(module, purpose, extra) from None


def require_for_run(*, progress: bool, plot: bool) -> None:
    """Check, before anything starts, every optional package this run will import
    (tomli, on Python 3.10, is checked where ``--config`` is read)."""
    require("numpy", "python -m fakecoord run")
    if progress:
        require("rich", "python -m fakecoord run (its progress and summary; --quiet skips them)")
    if plot:
        require("matplotlib", "--plot")


__all__ = ["require", "require_for_run"]
