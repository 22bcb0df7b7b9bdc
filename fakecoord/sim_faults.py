"""``--fault KIND@PEER:ROUND`` specs: parsing and the plan of which peer fails when.

Pure: no processes are touched here; :mod:`fakecoord.sim` injects the faults.

- ``crash``: the peer's worker (or job process) is SIGKILLed during that round;
- ``hang``: it is SIGSTOPped, so it stops answering and the call timeout fires;
- ``error``: its training call fails (the demo workload raises on a marked
  batch ref; other workloads get a request that every worker must refuse).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import FakecoordError

FAULT_KINDS = ("crash", "hang", "error")
_SPEC = re.compile(r"^(?P<kind>[a-z]+)@(?P<peer>\d+):(?P<round>\d+)$")


class FaultSpecError(FakecoordError):
    """A ``--fault`` spec that is malformed or names a peer or round that does not exist."""


@dataclass(frozen=True, order=True)
class Fault:
    round: int
    peer: int
    kind: str

    @property
    def spec(self) -> str:
        return f"{self.kind}@{self.peer}:{self.round}"


def parse_fault(text: str) -> Fault:
    """Parse ``KIND@PEER:ROUND`` (peers count from 0, rounds from 1).

    Raises :class:`FaultSpecError` naming what is wrong.
    """
    match = _SPEC.match(text.strip())
    if match is None:
        raise FaultSpecError(
            f"--fault: expected KIND@PEER:ROUND such as crash@1:2 (KIND one of "
            f"{', '.join(FAULT_KINDS)}), got {text!r}"
        )
    kind = match["kind"]
    if kind not in FAULT_KINDS:
        raise FaultSpecError(
            f"--fault {text!r}: unknown kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
        )
    fault = Fault(int(match["round"]), int(match["peer"]), kind)
    if fault.round < 1:
        raise FaultSpecError(f"--fault {text!r}: rounds count from 1")
    return fault


def fault_plan(faults: Iterable[Fault], peers: int, rounds: int) -> dict[int, dict[int, Fault]]:
    """``{round: {peer: fault}}``; raises :class:`FaultSpecError` for a peer or round
    outside the run, or for two faults on the same peer in the same round."""
    plan: dict[int, dict[int, Fault]] = {}
    for fault in sorted(faults):
        if fault.peer >= peers:
            raise FaultSpecError(
                f"--fault {fault.spec}: peer {fault.peer} does not exist (peers are 0..{peers - 1})"
            )
        if fault.round > rounds:
            raise FaultSpecError(
                f"--fault {fault.spec}: round {fault.round} is after the last round ({rounds})"
            )
        per_round = plan.setdefault(fault.round, {})
        if fault.peer in per_round:
            raise FaultSpecError(
                f"--fault {fault.spec}: peer {fault.peer} already has "
                f"{per_round[fault.peer].spec} in round {fault.round}"
            )
        per_round[fault.peer] = fault
    return plan


__all__ = ["FAULT_KINDS", "Fault", "FaultSpecError", "fault_plan", "parse_fault"]
