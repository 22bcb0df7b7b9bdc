"""``python -m fakecoord run`` as a library: a multi-peer training simulation on this machine.

::

    from fakecoord.sim import DiLoCo, SimConfig, run

    report = run(SimConfig(peers=4, rounds=5), strategy=DiLoCo(aggregator="median"))

Modules (docs/simulation.md is the guide):

- :mod:`.engine`: :class:`Engine` (peers, worker slots, rounds, timing,
  evaluation, faults, checkpoint/resume) and :func:`run`;
- :mod:`.strategy`: the :class:`Strategy` interface and its types;
- :mod:`.diloco`, :mod:`.windows`: the two built-in strategies;
- :mod:`.outer`: the streamed DiLoCo outer step (the network's arithmetic, :mod:`fakecoord.network`);
- :mod:`.config`, :mod:`.cli`: settings, checks, the command line and config files;
- :mod:`.workers`: worker processes, fault injection, error messages;
- :mod:`.record`, :mod:`.report`: the report, checkpoint, metrics.jsonl, summary and plot;
- :mod:`.data`, :mod:`.shards`, :mod:`.faults`: batch refs, the demo's data, fault specs;
- :mod:`.bootstrap`: the wrapper factory that seeds and caps threads inside each worker.

Names are imported lazily, so that workers importing :mod:`.bootstrap` or
:mod:`.shards` do not load the engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine",
    "Simulation": "engine",
    "RunState": "engine",
    "run": "engine",
    "CHECKPOINT_NAME": "engine",
    "REPORT_NAME": "engine",
    "METRICS_NAME": "engine",
    "SimConfig": "config",
    "DEMO_FACTORY": "config",
    "schema_hash": "config",
    "Strategy": "strategy",
    "ModelRef": "strategy",
    "PeerResult": "strategy",
    "RoundContext": "strategy",
    "RoundOutcome": "strategy",
    "BaselineState": "strategy",
    "BaselineOutcome": "strategy",
    "DiLoCo": "diloco",
    "DiLoCoState": "diloco",
    "Windows": "windows",
    "WindowsState": "windows",
    "OuterSGD": "outer",
    "Aggregator": "outer",
    "OuterStats": "outer",
    "Fault": "faults",
    "parse_fault": "faults",
    "RunView": "report",
    "RichView": "report",
    "write_plot": "report",
    "load_batches": "data",
    "PeerContext": "workers",
    "network_step": "..network.step",
    "DiLoCoPolicy": "..network.policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    target = module if module.startswith("..") else f".{module}"
    return getattr(importlib.import_module(target, __name__), name)
