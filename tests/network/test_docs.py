"""The docs tables of codecs and aggregations are the registries' (derived, never hand-kept)."""

from __future__ import annotations

from pathlib import Path

from fakecoord.network import docs
from fakecoord.network.aggregation import AGGREGATIONS
from fakecoord.network.codecs import CODECS
from fakecoord.sim.cli import argument_parser

SIMULATION_MD = Path(__file__).resolve().parents[2] / "docs" / "simulation.md"


def test_the_simulation_guide_holds_the_generated_tables():
    text = SIMULATION_MD.read_text(encoding="utf-8")
    assert docs.codec_table() in text, "regenerate with: python -m fakecoord.network.docs"
    assert docs.aggregation_table() in text, "regenerate with: python -m fakecoord.network.docs"


def test_the_cli_choices_are_the_registries():
    parser = argument_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert tuple(choices["codec"]) == tuple(e.name for e in CODECS)
    assert tuple(choices["aggregate"]) == tuple(e.name for e in AGGREGATIONS)


def test_the_fault_kinds_table_help_and_errors_are_the_registrys():
    import pytest

    from fakecoord.errors import FaultSpecError
    from fakecoord.sim import faults

    text = SIMULATION_MD.read_text(encoding="utf-8")
    assert faults.fault_table() in text, "regenerate with: python -m fakecoord.sim.faults"
    (action,) = [a for a in argument_parser()._actions if a.dest == "fault"]
    assert action.help == faults.fault_help()
    for kind in faults.KINDS:
        assert f"`{kind.form}`" in faults.fault_table() and kind.form in faults.fault_help()
        spec = f"{kind.name}@0:1" if kind.event else f"{kind.name}@0={kind.high:g}"
        assert faults.parse_fault(spec).kind == kind.name
        if not kind.event:
            with pytest.raises(FaultSpecError, match=f"the {kind.value} must be in"):
                faults.parse_fault(f"{kind.name}@0={kind.low:g}")
    with pytest.raises(FaultSpecError) as info:
        faults.parse_fault("melt@0:1")
    assert str(info.value).endswith(", ".join(k.name for k in faults.KINDS))
