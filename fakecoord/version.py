"""The installed distribution's version: the one version source of the coordinator side.

The version is written once, in ``pyproject.toml``; installed metadata
carries it (``importlib.metadata``).  The worker side reads the same
metadata in ``worker/__init__.py``.
"""

from __future__ import annotations

DISTRIBUTION = "burn-p2p-python-worker"


def package_version() -> str:
    """The installed version, or ``"0+unknown"`` when run from a tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
