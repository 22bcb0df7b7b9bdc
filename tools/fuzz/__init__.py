"""Fuzz the worker's untrusted-input surfaces (frames, requests, packs, artifacts, races) and
the simulation's run inputs (sim).

Usage (from the repository root)::

    python -m tools.fuzz --target frames|requests|packs|artifacts|races|sim|all --seconds N \\
        [--seed S] [--verbose]

``--seconds`` is the budget of the whole run, shared evenly by the selected
targets and, within a target, by its properties.  The run prints, per
property and per target, the inputs tried and the distinct failures found,
then the process RSS (current and peak) and open descriptors at start and
end.  Exit status: 0 when nothing failed, 1 otherwise, 2 for bad arguments.

Each property is a plain function over one generated input that raises
:class:`~tools.fuzz.oracle.FuzzFailure` (or lets any unexpected exception
escape) when the worker misbehaves; :mod:`tools.fuzz.oracle` says what every
input must satisfy.  ``tests/test_fuzz.py`` runs the same properties under
the project's hypothesis profile with a CI-sized budget.

Modules, one per target: :mod:`~tools.fuzz.framing` (frames),
:mod:`~tools.fuzz.requests` (bodies and every method's params, drawn from the
coordinator's spec), :mod:`~tools.fuzz.packs`, :mod:`~tools.fuzz.artifacts`,
:mod:`~tools.fuzz.races` (re-export racing import), :mod:`~tools.fuzz.sim`
(``fakecoord run``'s TOML options, checkpoints and output paths); shared:
:mod:`~tools.fuzz.oracle`, :mod:`~tools.fuzz.values` (edge values),
:mod:`~tools.fuzz.workloads`; :mod:`~tools.fuzz.runner` (registry, CLI).
"""

from .artifacts import apply_artifact_mutation, artifact_oracle
from .oracle import FuzzFailure, check_frame, respond, rss_kib
from .packs import apply_pack_mutation, pack_oracle
from .runner import PROPERTIES, TARGETS, Property, main
from .values import U64_MAX, dumps_raw
from .workloads import TorchWorkload, make_model

__all__ = [
    "PROPERTIES",
    "TARGETS",
    "U64_MAX",
    "FuzzFailure",
    "Property",
    "TorchWorkload",
    "apply_artifact_mutation",
    "apply_pack_mutation",
    "artifact_oracle",
    "check_frame",
    "dumps_raw",
    "main",
    "make_model",
    "pack_oracle",
    "respond",
    "rss_kib",
]
