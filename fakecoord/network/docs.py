"""The docs tables of the codecs and aggregations, derived from the registries.

docs/simulation.md holds the output of :func:`codec_table` and
:func:`aggregation_table` verbatim; tests/network/test_docs.py checks that
it still does, so adding an entry to a registry means regenerating the table
(``python -m fakecoord.network.docs``), not writing one.
"""

from __future__ import annotations

import json

from . import aggregation, codecs


def _json(value: object) -> str:
    return json.dumps(value, separators=(", ", ": "))


def codec_table() -> str:
    """One row per codec: ``--codec`` name, the policy's JSON, what goes on the wire."""
    lines = ["| `--codec` | policy `codec` | on the wire |", "|---|---|---|"]
    for e in codecs.CODECS:
        lines.append(f"| `{e.name}` | `{_json(e.serde_json(e.shorthand))}` | {e.summary} |")
    return "\n".join(lines)


def aggregation_table() -> str:
    """One row per aggregation: ``--aggregate`` name, the policy's JSON, what it computes."""
    lines = ["| `--aggregate` | policy `aggregation_policy` | per coordinate |", "|---|---|---|"]
    for e in aggregation.AGGREGATIONS:
        lines.append(f"| `{e.name}` | `{_json(e.serde_json(e.shorthand))}` | {e.summary} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a maintenance helper
    print(codec_table())
    print()
    print(aggregation_table())
