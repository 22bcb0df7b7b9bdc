"""burn_p2p conformance suite: checks a workload through a real worker process.

``python -m conformance --factory MOD:ATTR`` runs every check;
``pytest --workload-factory MOD:ATTR`` runs them as tests (see
:mod:`conformance.pytest_plugin`); :func:`conformance.helpers.parametrize_with_checks`
puts them in your own test module.  The guide is docs/workload-authors.md.

Importing this package is cheap (no torch, numpy or hypothesis): the pytest
plugin is loaded in every pytest run of a project that installs it.
"""

from .errors import CheckFailed, CheckSkipped, ConformanceError, ConformanceWarning, UsageError


def __getattr__(name: str) -> str:
    if name == "__version__":  # from the installed metadata, on first use
        from fakecoord.version import package_version

        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckFailed",
    "CheckSkipped",
    "ConformanceError",
    "ConformanceWarning",
    "UsageError",
    "__version__",
]
