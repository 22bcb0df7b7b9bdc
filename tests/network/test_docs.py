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
