"""The burn_p2p network's DiLoCo, modelled on the coordinator side (docs/protocol.md §6).

Written from the upstream Rust code (the spec): ``crates/burn_p2p_core/src/schema/diloco.rs``
(the policy), ``crates/burn_p2p/src/diloco/codec.rs`` (codecs, aggregations) and
``crates/burn_p2p_workload/src/diloco.rs`` (the pseudo-gradient and the default outer update).

- :mod:`.policy`: ``DiLoCoPolicy`` and its parts in their serde JSON shape, defaults, validation
  and the refusals a Python workload meets;
- :mod:`.codecs`, :mod:`.aggregation`: the registries of transport codecs and aggregations with
  the network's exact arithmetic (whole packs and chunk by chunk);
- :mod:`.step`: :func:`network_step`, one group's step, byte for byte the network's;
- :mod:`.rounds`: a round's group and the calls into a peer's worker;
- :mod:`.transfer`: what a round puts on the wire, and a link model's time for it.

Uses numpy; never imports :mod:`worker`.
"""

from __future__ import annotations

from .policy import (
    DiLoCoAggregationPolicy,
    DiLoCoPolicy,
    DiLoCoRejoinPolicy,
    DiLoCoTopologyPolicy,
    GradientCodec,
    OuterOptimizerPolicy,
)
from .step import StepDetail, network_step, network_step_detail, run_step

__all__ = [
    "DiLoCoAggregationPolicy",
    "DiLoCoPolicy",
    "DiLoCoRejoinPolicy",
    "DiLoCoTopologyPolicy",
    "GradientCodec",
    "OuterOptimizerPolicy",
    "StepDetail",
    "network_step",
    "network_step_detail",
    "run_step",
]
