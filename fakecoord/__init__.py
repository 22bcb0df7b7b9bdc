"""fakecoord: a fake burn_p2p coordinator for driving Python workers in tests.

:class:`WorkerClient` spawns one worker and speaks protocol v2 to it as
strictly as the Rust coordinator; :mod:`fakecoord.handling` adds what the
real coordinator does around some calls.  Errors live in :mod:`fakecoord.errors`.
"""

from .client import WorkerClient
from .errors import (
    ClientClosed,
    FakecoordError,
    InvalidParams,
    PlanRefused,
    ProtocolViolation,
    RemoteError,
    WorkerExited,
    WorkerTimeout,
)

__all__ = [
    "ClientClosed",
    "FakecoordError",
    "InvalidParams",
    "PlanRefused",
    "ProtocolViolation",
    "RemoteError",
    "WorkerClient",
    "WorkerExited",
    "WorkerTimeout",
]
