"""fakecoord: a fake burn_p2p coordinator for driving Python workers in tests.

:class:`WorkerClient` spawns one worker and speaks protocol v2 to it as
strictly as the Rust coordinator; :mod:`fakecoord.spec` is the protocol as
this side sees it; :mod:`fakecoord.handling` adds what the real coordinator
does around some calls.  Errors live in :mod:`fakecoord.errors`.
ARCHITECTURE.md maps the modules.
"""

from .client import WorkerClient
from .errors import (
    CallerError,
    ClientClosed,
    DecodeError,
    FakecoordError,
    InvalidParams,
    PlanRefused,
    ProtocolViolation,
    RemoteError,
    SpawnError,
    WorkerExited,
    WorkerFault,
    WorkerTimeout,
)


def __getattr__(name: str) -> str:
    if name == "__version__":  # from the installed metadata, on first use
        from .version import package_version

        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "CallerError",
    "ClientClosed",
    "DecodeError",
    "FakecoordError",
    "InvalidParams",
    "PlanRefused",
    "ProtocolViolation",
    "RemoteError",
    "SpawnError",
    "WorkerClient",
    "WorkerExited",
    "WorkerFault",
    "WorkerTimeout",
]
