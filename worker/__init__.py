"""burn_p2p Python worker: serves one user workload to the burn_p2p coordinator.

See ``ARCHITECTURE.md`` for the module map and ``PROTOCOL.md`` (protocol v2)
for the wire contract.  Workload authors: :class:`Workload` (and the
optional-hook protocols in :mod:`worker.workload`) describe what the worker
calls.  Importing this package does not import torch.
"""

from .workload import Workload

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

__all__ = ["PROTOCOL_VERSION", "Workload", "__version__"]
