"""burn_p2p Python worker: serves one user workload to the burn_p2p coordinator.

See ``ARCHITECTURE.md`` for the module map and ``PROTOCOL.md`` (protocol v2)
for the wire contract.  Importing this package does not import torch.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
