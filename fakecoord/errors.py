"""The fake coordinator's one error hierarchy, split by who is at fault.

Every error :mod:`fakecoord` raises on purpose is a :class:`FakecoordError`
(the simulation's own errors live with the simulation)::

    FakecoordError
    ├── CallerError          the caller's bad input or misuse
    │   ├── InvalidParams      params or config that cannot be sent (not standard JSON)
    │   ├── ClientClosed       a call on a closed, shut down or broken client
    │   └── PolicyError        a DiLoCoPolicy the network cannot parse, validate or run
    ├── WorkerFault          the worker process broke its side of the contract
    │   ├── ProtocolViolation  a bad frame, a wrong id, a result serde would refuse
    │   │   └── DecodeError      ... with the dotted path, what was expected and what came
    │   ├── WorkerExited       it exited (before connecting, or during a call)
    │   └── WorkerTimeout      it did not connect or answer in time (it was killed)
    ├── RemoteError          the worker answered ``ok: false`` (a hook raised, or it refused params)
    ├── SpawnError           the environment: the worker program or its stderr target cannot be opened
    ├── PackError            a parameter pack on disk is missing, invalid or cannot be written
    ├── NetworkStepError     a DiLoCo step the network itself fails (the codec or aggregation refuses)
    └── PlanRefused          a parameter pack plan the coordinator would refuse to train with

Messages name the method and, where there is one, the field or parameter
and what was expected, so a failing test or simulation says what went wrong.
"""

from __future__ import annotations

import re
import signal
from typing import Any

_MISSING: Any = object()
"""Stands for an absent field in :class:`DecodeError` and :func:`describe`."""


class FakecoordError(Exception):
    """Base class of every error fakecoord raises on purpose."""


# ---------------------------------------------------------------------------
# The caller's fault


class CallerError(FakecoordError):
    """The caller gave input fakecoord cannot use, or used a client it should not."""


class InvalidParams(CallerError):
    """Params (or a spawn config) that cannot be sent as standard JSON: NaN, sets, objects.

    ``method`` is the protocol method (``"spawn"`` for the config); ``field``
    the parameter when one is to blame.
    """

    def __init__(self, message: str, method: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.field = field


class ClientClosed(CallerError):
    """A call on a client that is closed, shut down, or broken by an earlier error."""

    def __init__(self, message: str, method: str | None = None) -> None:
        super().__init__(message)
        self.method = method


class PolicyError(CallerError):
    """A ``DiLoCoPolicy`` (:mod:`fakecoord.network.policy`) the network would not take.

    ``field`` is the dotted path of the offending field (``policy.codec.Qsgd.bits``);
    ``reason`` the network's own text (``DiLoCoPolicy::validate``'s error, or the
    refusal a Python workload meets at run time); ``stage`` is None for a policy
    that does not parse or validate, else where the network's step fails every
    round (``"encode"`` for LowRank, ``"outer"`` for an outer optimizer beyond
    plain SGD).
    """

    def __init__(self, field: str, reason: str, stage: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
        self.stage = stage


# ---------------------------------------------------------------------------
# The worker's fault


class WorkerFault(FakecoordError):
    """The worker process broke the contract: bad bytes, a crash, a hang."""

    method: str | None = None


class ProtocolViolation(WorkerFault):
    """The worker broke the wire contract: a bad frame, a wrong response id, or a
    result the Rust coordinator could not decode.  ``method`` and ``field``
    (a dotted path such as ``result.metrics.loss``) say where."""

    def __init__(self, message: str, method: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.field = field


class DecodeError(ProtocolViolation):
    """JSON that serde (as the Rust coordinator uses it) would refuse.

    ``field`` is the dotted path of the offending value (``result.capability``,
    ``response.id``; ``""`` for a whole document), ``expected`` what the Rust
    type wanted, ``got`` the value that came (``_MISSING`` for an absent
    field).  ``got_text``, when given, replaces the rendering of ``got``.
    """

    def __init__(
        self,
        field: str,
        expected: str,
        got: Any = _MISSING,
        *,
        method: str | None = None,
        got_text: str | None = None,
    ) -> None:
        self.expected = expected
        self.got = got
        self.got_text = got_text if got_text is not None else describe(got)
        text = f"{field or 'the document'}: expected {expected}, got {self.got_text}"
        super().__init__(f"{method}: {text}" if method else text, method, field)

    def at(self, method: str | None = None, field: str | None = None) -> DecodeError:
        """The same error for ``method`` and/or another path (the original is unchanged)."""
        return DecodeError(
            (self.field or "") if field is None else field,
            self.expected,
            self.got,
            method=self.method if method is None else method,
            got_text=self.got_text,
        )


class WorkerExited(WorkerFault):
    """The worker process exited: before it connected, or during a call.

    ``returncode`` is the exit status (negative: killed by that signal);
    ``stderr_tail`` is the end of what it wrote on stderr ("" when the client
    could not keep it, e.g. ``stderr`` was a pipe owned by the caller).
    """

    def __init__(
        self,
        returncode: int | None,
        stderr_tail: str,
        method: str | None = None,
        *,
        when: str | None = None,
    ) -> None:
        where = f"{method}: " if method else ""
        status = describe_returncode(returncode)
        text = f"{where}the worker exited ({status})"
        if when:
            text += f" {when}"
        if stderr_tail.strip():
            text += f"; the end of its stderr:\n{stderr_tail.rstrip()}"
        else:
            text += " and left nothing on stderr"
        super().__init__(text)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.method = method


class WorkerTimeout(WorkerFault):
    """The worker did not connect, or did not answer a call, in time; it has been killed."""

    def __init__(
        self, message: str, method: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(message)
        self.method = method
        self.timeout = timeout


# ---------------------------------------------------------------------------
# The workload's refusal, the environment, data and policy


class RemoteError(FakecoordError):
    """The worker answered ``ok: false``; ``message`` is its error text verbatim.

    Usually the workload's refusal (a hook raised, with its traceback); it is
    also how a worker refuses params it finds invalid.
    """

    def __init__(self, method: str, message: str) -> None:
        first_line = message.splitlines()[0] if message else "(empty error text)"
        super().__init__(f"{method}: the worker refused the call: {first_line}")
        self.method = method
        self.message = message


class SpawnError(FakecoordError):
    """The worker cannot be started here: its program is missing or not executable,
    or its stderr target cannot be opened."""


class PackError(FakecoordError):
    """A parameter pack on disk is missing, invalid or inconsistent, or cannot be written."""


class PlanRefused(FakecoordError):
    """A parameter pack plan the coordinator would refuse to train with (see ``handling``)."""


class NetworkStepError(FakecoordError):
    """One DiLoCo step that the network itself fails, with its reason (``anyhow`` text).

    ``stage`` is ``"encode"``, ``"decode"``, ``"aggregate"`` or ``"outer"``;
    ``reason`` the network's message verbatim; ``peer`` the index (in group
    order) of the contributor whose pseudo-gradient failed, when one did.
    """

    def __init__(self, stage: str, reason: str, peer: int | None = None) -> None:
        who = f" (contributor {peer})" if peer is not None else ""
        super().__init__(f"the network's {stage} step fails{who}: {reason}")
        self.stage = stage
        self.reason = reason
        self.peer = peer


# ---------------------------------------------------------------------------
# Rendering values and exit statuses in messages


def describe_returncode(returncode: int | None) -> str:
    """``"status 3"``, ``"killed by SIGKILL"`` or ``"status unknown"``."""
    if returncode is None:
        return "status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"status {returncode}"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    kind = getattr(value, "json_kind", None)  # fakecoord.wire's number markers
    if isinstance(kind, str):
        return kind
    for cls, name in ((int, "integer"), (float, "float"), (str, "string"), (list, "array")):
        if isinstance(value, cls):
            return name
    return "object" if isinstance(value, dict) else type(value).__name__


def describe(value: object, limit: int = 80) -> str:
    """A short rendering of ``value`` with its JSON type, for error messages."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({_json_kind(value)})"


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` as one printable line: control characters, bidi overrides and lone surrogates
    escaped (``\\n``, ``\\x1b``, ``\\u202e``), cut to ``limit`` characters."""
    shown = _UNPRINTABLE.sub(
        lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
        text[: limit * 2],
    )
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


__all__ = [
    "CallerError",
    "ClientClosed",
    "DecodeError",
    "FakecoordError",
    "InvalidParams",
    "NetworkStepError",
    "PackError",
    "PlanRefused",
    "PolicyError",
    "ProtocolViolation",
    "RemoteError",
    "SpawnError",
    "WorkerExited",
    "WorkerFault",
    "WorkerTimeout",
    "describe",
    "one_line",
    "describe_returncode",
]


# ---------------------------------------------------------------------------
# The simulation (``python -m fakecoord run``, :mod:`fakecoord.sim`)


class SimError(FakecoordError):
    """The simulation cannot run or go on: no worker starts, a bad checkpoint, a failed setup."""


class SettingsError(SimError):
    """An invalid setting or input (flag, config file, batches, device), found before anything
    was created; ``python -m fakecoord run`` exits 2."""


class MissingExtra(SettingsError):
    """An optional package a feature needs is not installed; the message names the
    package and the install line of the extra that brings it (exit 2)."""

    def __init__(self, package: str, purpose: str, extra: str = "sim") -> None:
        super().__init__(
            f"{purpose} needs the optional package {package!r}: "
            f"pip install 'burn-p2p-python-worker[{extra}]'"
        )
        self.package = package
        self.extra = extra


class FaultSpecError(SettingsError):
    """A ``--fault`` spec that is malformed or names a peer or round that does not exist."""


class RunFailed(SimError):
    """The run stopped early: too many consecutive rounds without any contributing peer."""


class SimStopped(FakecoordError):
    """Raised inside peer threads once the run is being torn down (after Ctrl-C)."""


class OuterError(FakecoordError):
    """Bad input to the DiLoCo outer step: mismatched sizes, unknown names, non-finite values."""

    def __init__(self, message: str, source: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        """Which contributor's pack held the bad values (index into the locals), if known."""


class RoundFailed(FakecoordError):
    """The network fails this DiLoCo round (``burn_p2p`` ``diloco/network.rs``): too few
    participants or contributions, an inner loop without batches or with the wrong step
    count.  The message is the network's own text."""


class InnerStateError(WorkerFault):
    """A workload returned an ``inner_optimizer_state_path`` the coordinator cannot read
    right after the call (missing, not a regular file, unreadable); the message names the
    peer and the round."""

    method = "run_inner_loop"


class JobFailed(FakecoordError):
    """A checkpoint-command job exited with a non-zero status; the message quotes its log."""

    def __init__(self, returncode: int, log: str, reason: str) -> None:
        super().__init__(
            f"job command exited ({describe_returncode(returncode)}): {reason or 'no output'} "
            f"(log: {log})"
        )
        self.returncode = returncode
        self.log = log


__all__ += [
    "FaultSpecError",
    "InnerStateError",
    "JobFailed",
    "OuterError",
    "RoundFailed",
    "RunFailed",
    "SettingsError",
    "SimError",
    "SimStopped",
]
