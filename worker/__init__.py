"""burn_p2p Python worker: serves one user workload to the burn_p2p coordinator.

See ``ARCHITECTURE.md`` for the module map and ``docs/protocol.md`` (protocol v2)
for the wire contract.  Workload authors: :class:`Workload` (and the
optional-hook protocols in :mod:`worker.workload`) describe what the worker
calls.  Importing this package does not import torch.
"""

from .workload import Workload

PROTOCOL_VERSION = 2
DISTRIBUTION = "burn-p2p-python-worker"


def __getattr__(name: str) -> str:
    # ``__version__`` is read from the installed metadata (pyproject.toml is the
    # one source), on first use: start-up never pays for importlib.metadata.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PROTOCOL_VERSION", "Workload", "__version__"]
