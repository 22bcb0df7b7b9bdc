"""Target "races": a pack re-exported in place while it is imported (issue #9 item 1).

One thread exports a model into one path again and again, alternating two
filters that give layouts of the same parameter count; this thread imports
the path meanwhile with the first filter.  Every value of the model says
which tensor it came from, so an import that answers ok with the other
layout's values is a torn pack: a manifest paired with another export's
values.  Refusals (the pack held the other layout at that moment) are fine.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

from worker.errors import PackError
from worker.packs import export_pack, import_pack
from worker.protocol import StateFilter

from .oracle import HANG_TIMEOUT, FuzzFailure, check_no_partials, temporary_root

FILTERS = {"a": StateFilter(("a",), ()), "b": StateFilter(("b",), ())}


class TwoHalves(nn.Module):
    """Tensors ``a`` (all 1.0) and ``b`` (all 2.0) of one shape."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.full((size,), 1.0))
        self.b = nn.Parameter(torch.full((size,), 2.0))


@dataclass(frozen=True)
class Race:
    size: int
    exports: int
    switch_interval: float

    def __repr__(self) -> str:
        return f"Race(size={self.size}, exports={self.exports}, switch={self.switch_interval})"


RACES = st.builds(
    Race,
    st.sampled_from([16, 1024, 1 << 16]),
    st.integers(10, 120),
    st.sampled_from([1e-6, 1e-5, 5e-3]),
)


def check_race(race: Race) -> None:
    """No import of a pack being re-exported may answer ok with the other layout's values."""
    with temporary_root() as root:
        pack = root / "pack"
        model = TwoHalves(race.size)
        export_pack(model, pack, "race", FILTERS["a"])
        done = threading.Event()
        failure: list[BaseException] = []

        def exporter() -> None:
            try:
                for i in range(race.exports):
                    export_pack(model, pack, "race", FILTERS["ab"[i % 2]])
            except BaseException as exc:  # handed to the checking thread
                failure.append(exc)
            finally:
                done.set()

        target = TwoHalves(race.size)
        torn = imports = 0
        interval = sys.getswitchinterval()
        sys.setswitchinterval(race.switch_interval)
        thread = threading.Thread(target=exporter, name="fuzz-exporter", daemon=True)
        try:
            thread.start()
            while not done.is_set():
                with torch.no_grad():
                    target.a.fill_(0.0)
                try:
                    import_pack(pack, lambda: target, FILTERS["a"])
                except PackError:
                    continue
                imports += 1
                if set(target.a.detach().unique().tolist()) != {1.0}:
                    torn += 1
        finally:
            sys.setswitchinterval(interval)
            thread.join(HANG_TIMEOUT)
        if failure:
            raise FuzzFailure(f"the exporter failed: {failure[0]!r}")
        if torn:
            raise FuzzFailure(
                f"torn pack: {torn} of {imports} imports held the other export's values"
            )
        check_no_partials(root)
