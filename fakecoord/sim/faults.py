"""``--fault`` specs: parsing, and the plan of which peer fails, straggles or drops out when.

Pure: no processes are touched here; the engine injects the faults.  The kinds
are one registry, :data:`KINDS`: the parser's accepted kinds, the ``--fault``
help (:func:`fault_help`), the error texts and the docs table
(:func:`fault_table`, held verbatim by docs/simulation.md; regenerate with
``python -m fakecoord.sim.faults``) all derive from it, so adding a kind is one
entry, its application (an event: :meth:`PeerContext.apply_fault
<fakecoord.sim.workers.PeerContext.apply_fault>`; a condition: a
:class:`FaultPlan` query the engine uses) and its tests.

Events, one peer in one round (``KIND@PEER:ROUND``, peers from 0, rounds from 1):

- ``crash``: the peer's worker (or job process) is SIGKILLed during its training call;
- ``hang``: it is SIGSTOPped, so it stops answering and the call timeout fires;
- ``error``: its training call fails (the demo workload raises on a marked
  batch ref; other workloads get a request that every worker must refuse).

Conditions, for one peer or every peer (``*``), in one round, a range of
rounds (``A-B``) or every round (``ROUNDS`` left out), with a value:

- ``slow@PEER[:ROUNDS]=FACTOR``: a straggler; the peer's training takes
  ``FACTOR`` (> 1) times as long (the engine holds its result back for
  ``(FACTOR - 1)`` times its training time, so the round waits for it);
- ``drop@PEER[:ROUNDS]=P``: dropout; each covered peer misses each covered
  round with probability ``P`` (0 < P <= 1), drawn from ``(seed, round,
  peer)`` alone, so runs and resumes with the same seed drop the same peers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import FaultSpecError, one_line

MAX_SLOWDOWN = 1000.0
"""The largest ``slow`` factor: a straggler at most 1000 times slower (the hold-back stays a
bounded wait)."""


@dataclass(frozen=True)
class FaultKind:
    """One ``--fault`` kind.  An event (``value`` None) is ``KIND@PEER:ROUND``; a condition
    is ``KIND@PEER[:ROUNDS]=VALUE`` with ``low < VALUE <= high`` (``value`` names it)."""

    name: str
    help: str
    """The ``--fault`` help's words for it."""
    effect: str
    """The docs table's "effect" column: what the engine does to the peer."""
    value: str | None = None
    """A condition's value in words (an event's: None)."""
    value_name: str = "VALUE"
    """A condition's value as its form shows it."""
    low: float = 0.0
    high: float = 0.0
    example: str = ""
    """A condition's example spec, for the error that shows its form."""

    @property
    def event(self) -> bool:
        return self.value is None

    @property
    def form(self) -> str:
        if self.event:
            return f"{self.name}@PEER:ROUND"
        return f"{self.name}@PEER[:ROUNDS]={self.value_name}"

    @property
    def bounds(self) -> str:
        return f"{self.low:g} < {self.value_name} <= {self.high:g}"


KINDS: tuple[FaultKind, ...] = (
    FaultKind(
        "crash",
        "SIGKILL",
        "the peer's worker (or job process) gets SIGKILL during its training call",
    ),
    FaultKind(
        "hang",
        "SIGSTOP; the call timeout fires",
        "it gets SIGSTOP: the call timeout (`--call-timeout`) fires and it is killed",
    ),
    FaultKind(
        "error",
        "the training call fails",
        "its training call fails (the demo raises on a marked batch ref; other workloads get "
        "a model id every worker must refuse)",
    ),
    FaultKind(
        "slow",
        "a straggler",
        "a straggler: the peer's training takes FACTOR times as long (its result is held back "
        "for `(FACTOR-1)` times its training time, so the round waits for it)",
        value="slow-down factor",
        value_name="FACTOR",
        low=1.0,
        high=MAX_SLOWDOWN,
        example="slow@1=3 (peer 1, 3x slower, every round)",
    ),
    FaultKind(
        "drop",
        "dropout with probability P, seeded",
        "dropout: the peer misses each covered round with probability P, drawn from "
        "`(seed, round, peer)`",
        value="dropout probability",
        value_name="P",
        low=0.0,
        high=1.0,
        example="drop@*=0.2",
    ),
)
"""Every fault kind, in the order of the help and the docs table."""
BY_NAME = {k.name: k for k in KINDS}
EVENT_KINDS = tuple(k.name for k in KINDS if k.event)
CONDITION_KINDS = tuple(k.name for k in KINDS if not k.event)
FAULT_KINDS = EVENT_KINDS + CONDITION_KINDS


def fault_help() -> str:
    """The ``--fault`` help, from :data:`KINDS`."""
    parts = []
    for k in KINDS:
        bounds = "" if k.event else f", {k.bounds}"
        parts.append(f"{k.form} ({k.help}{bounds})")
    star = " and ".join(CONDITION_KINDS)
    return f"{', '.join(parts)}; PEER may be * for {star}; repeatable"


def fault_table() -> str:
    """The docs table of the kinds, from :data:`KINDS` (docs/simulation.md holds it verbatim)."""
    lines = ["| spec | effect |", "|---|---|"]
    for k in KINDS:
        bounds = "" if k.event else f"; {k.bounds}"
        lines.append(f"| `{k.form}` | {k.effect}{bounds} |")
    return "\n".join(lines)


_N = "[0-9]{1,9}"
_EVENT = re.compile(rf"^(?P<kind>[a-z]+)@(?P<peer>{_N}):(?P<round>{_N})$")
_CONDITION = re.compile(
    rf"^(?P<kind>[a-z]+)@(?P<peer>{_N}|\*)(?::(?P<first>{_N})(?:-(?P<last>{_N}))?)?=(?P<value>[^=]+)$"
)
MAX_INDEX_DIGITS = 9
"""Peers and rounds in a spec have at most 9 digits (the run's own bounds are checked later)."""
_FORMS = (
    f"KIND@PEER:ROUND ({', '.join(EVENT_KINDS)}) or KIND@PEER[:ROUNDS]=VALUE "
    f"({', '.join(CONDITION_KINDS)})"
)


@dataclass(frozen=True)
class Fault:
    """One ``--fault``: ``peer`` None means every peer; ``first``/``last`` None mean every round."""

    kind: str
    peer: int | None
    first: int | None
    last: int | None
    value: float | None = None
    text: str = ""

    @property
    def spec(self) -> str:
        return self.text or f"{self.kind}@{self.peer}:{self.first}"

    def covers(self, round_index: int, peer: int) -> bool:
        if self.peer is not None and self.peer != peer:
            return False
        if self.first is not None and round_index < self.first:
            return False
        return self.last is None or round_index <= self.last


class _Shown(str):
    """A spec as messages show it: ``{text!r}`` escaped and cut to 120 characters."""

    def __repr__(self) -> str:
        return one_line(str.__repr__(self), 120)


def parse_fault(text: str) -> Fault:
    """Parse one spec (see the module docstring); raises :class:`FaultSpecError`.

    Peers and rounds are ASCII integers of at most :data:`MAX_INDEX_DIGITS` digits; a
    slow-down factor is in (1, :data:`MAX_SLOWDOWN`], a dropout probability in (0, 1].
    """
    if not isinstance(text, str):
        raise FaultSpecError(f"--fault: expected a spec string, got {type(text).__name__}")
    spec = text.strip()
    text = _Shown(text)
    kind = spec.split("@", 1)[0]
    if kind not in FAULT_KINDS:
        if "@" not in spec:
            raise FaultSpecError(f"--fault: expected {_FORMS}, got {text!r}")
        raise FaultSpecError(
            f"--fault {text!r}: unknown kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
        )
    entry = BY_NAME[kind]
    if entry.event:
        match = _EVENT.match(spec)
        if match is None:
            raise FaultSpecError(
                f"--fault {text!r}: {kind} takes KIND@PEER:ROUND such as {kind}@1:2"
            )
        round_index = int(match["round"])
        if round_index < 1:
            raise FaultSpecError(f"--fault {text!r}: rounds count from 1")
        return Fault(kind, int(match["peer"]), round_index, round_index, None, spec)
    match = _CONDITION.match(spec)
    if match is None:
        raise FaultSpecError(
            f"--fault {text!r}: {kind} takes KIND@PEER[:ROUND[-ROUND]]=VALUE, e.g. {entry.example}"
        )
    try:
        value = float(match["value"]) if len(match["value"]) <= 64 else float("nan")
    except ValueError:
        raise FaultSpecError(f"--fault {text!r}: {match['value']!r} is not a number") from None
    if not entry.low < value <= entry.high:
        raise FaultSpecError(
            f"--fault {text!r}: the {entry.value} must be in ({entry.low:g}, {entry.high:g}]: "
            f"above {entry.low:g}, at most {entry.high:g}"
        )
    first = int(match["first"]) if match["first"] else None
    last = int(match["last"]) if match["last"] else first
    if first is not None and (first < 1 or (last is not None and last < first)):
        raise FaultSpecError(f"--fault {text!r}: rounds count from 1, as FIRST or FIRST-LAST")
    peer = None if match["peer"] == "*" else int(match["peer"])
    return Fault(kind, peer, first, last, value, spec)


class FaultPlan:
    """Every fault of a run, checked against its peers and rounds.

    Raises :class:`FaultSpecError` for a peer or round outside the run and for
    two events, two slow-downs or two dropouts covering the same peer and round.
    """

    def __init__(self, faults: Iterable[Fault], peers: int, rounds: int, seed: int) -> None:
        self.faults = sorted(
            faults, key=lambda f: (f.first or 0, -1 if f.peer is None else f.peer, f.kind, f.text)
        )
        self.seed = seed
        for fault in self.faults:
            if fault.peer is not None and fault.peer >= peers:
                raise FaultSpecError(
                    f"--fault {fault.spec}: peer {fault.peer} does not exist "
                    f"(peers are 0..{peers - 1})"
                )
            if fault.first is not None and fault.first > rounds:
                raise FaultSpecError(
                    f"--fault {fault.spec}: round {fault.first} is after the last round ({rounds})"
                )
        groups = (EVENT_KINDS, *((k,) for k in CONDITION_KINDS))
        for group in groups:
            chosen = [f for f in self.faults if f.kind in group]
            for i, a in enumerate(chosen):
                for b in chosen[i + 1 :]:
                    if _overlap(a, b, rounds):
                        raise FaultSpecError(
                            f"--fault {b.spec}: overlaps {a.spec} (same peer, same round)"
                        )

    def event(self, round_index: int, peer: int) -> Fault | None:
        """The crash, hang or error planned for ``peer`` in ``round_index``, if any."""
        for fault in self.faults:
            if fault.kind in EVENT_KINDS and fault.covers(round_index, peer):
                return fault
        return None

    def slowdown(self, round_index: int, peer: int) -> Fault | None:
        return next(
            (f for f in self.faults if f.kind == "slow" and f.covers(round_index, peer)), None
        )

    def dropped(self, round_index: int, peer: int) -> Fault | None:
        """The dropout fault that takes ``peer`` out of ``round_index`` (a seeded draw), or None."""
        for fault in self.faults:
            if fault.kind == "drop" and fault.covers(round_index, peer):
                assert fault.value is not None
                return fault if _uniform(self.seed, round_index, peer) < fault.value else None
        return None


def _overlap(a: Fault, b: Fault, rounds: int) -> bool:
    if a.peer is not None and b.peer is not None and a.peer != b.peer:
        return False
    a_first, a_last = a.first or 1, a.last or rounds
    b_first, b_last = b.first or 1, b.last or rounds
    return a_first <= b_last and b_first <= a_last


def _uniform(seed: int, round_index: int, peer: int) -> float:
    """A number in [0, 1) that depends on ``(seed, round, peer)`` only."""
    digest = hashlib.sha256(f"fakecoord-drop:{seed}:{round_index}:{peer}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


__all__ = [
    "BY_NAME",
    "CONDITION_KINDS",
    "EVENT_KINDS",
    "FAULT_KINDS",
    "KINDS",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultSpecError",
    "MAX_SLOWDOWN",
    "fault_help",
    "fault_table",
    "parse_fault",
]

if __name__ == "__main__":  # pragma: no cover - a maintenance helper
    print(fault_table())
