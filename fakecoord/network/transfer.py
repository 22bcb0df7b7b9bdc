"""What a DiLoCo round puts on the wire, and how long a link model says it takes.

**Bytes** (``crates/burn_p2p/src/diloco/codec.rs``, ``encode_values``): the
encoded pseudo-gradient of ``n`` float32 values is

=====================================  ====================================
codec (serde JSON)                     encoded bytes
=====================================  ====================================
``"Fp32"``                             ``4 n``
``"Fp16"``                             ``2 n``
``{"BlockwiseInt8": {"block_size": B}}``  ``sum over blocks of (2 + 4 + len)`` = ``n + 6 ceil(n / B)``
``{"Qsgd": {...}}``                    ``4 + 3 n`` (f32 norm, then u16 level + i8 sign each)
``{"SignSgd": {...}}``                 ``ceil(n / 4)`` (2-bit codes)
``{"LowRank": {...}}``                 refused, as the network refuses it
=====================================  ====================================

``encode_pseudo_gradient`` cuts those bytes into chunks of
``DILOCO_CHUNK_SIZE_BYTES`` = 1024 (``diloco/network.rs``).  The manifest
(ids, codec, round cursor, checksum) travels too; it is small and not
counted.

**What crosses the wire in a round** (``network.rs``
``diloco_round_once_with_batches``): each group member publishes its own
encoded pseudo-gradient, then ``collect_remote_diloco_contributions`` fetches,
for every other member in turn, its state snapshot, its gradient manifest
and its chunks, *one request at a time*.  Every member then applies the
outer update itself: the new base is never transferred (only a rejoining
peer downloads parameters).

**The link model** (``--link MBIT[/LATENCY_MS]``, per peer
``peer-N=MBIT[/LATENCY_MS]``): each peer has a symmetric link of ``MBIT``
Mbit/s and a one-way latency of ``LATENCY_MS`` ms to every other peer (a
peer without a link: unlimited, no latency).  For a group of ``k``:

- a request from ``i`` to ``j`` costs a round trip ``2 (lat_i + lat_j)``;
- ``download_i = sum over j != i of (2 + chunks_j) * rtt_ij
  + 8 bytes_j / min(bw_i, bw_j)`` (snapshot, manifest, then each chunk);
- ``upload_i = (k - 1) * 8 bytes_i / bw_i`` (every other member fetches it);
- peer ``i`` is done after ``max(download_i, upload_i)``; the round's
  transfer time is the slowest member's.

The simulated wall clock is the measured wall clock plus every round's
transfer time.  The network also gives up on a contribution not fetched
within ``aggregation_timeout_ms`` (15 000 by default) and caps each request
at 750 ms (``DILOCO_REQUEST_TIMEOUT_CAP``); :func:`round_transfer` reports
the peers whose modelled transfer passes the former (the model does not drop
their contributions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PolicyError
from .codecs import BY_NAME
from .policy import GradientCodec

CHUNK_SIZE_BYTES = 1024
"""``DILOCO_CHUNK_SIZE_BYTES`` in ``diloco/network.rs``."""
AGGREGATION_TIMEOUT_SECONDS = 15.0
"""``DiLoCoPolicy::default().aggregation_timeout_ms`` / 1000."""


def codec_name(codec: Any) -> str:
    """The serde variant name of a codec given as ``"fp16"``, ``"Fp16"`` or ``{"Qsgd": {...}}``."""
    if isinstance(codec, str):
        entry = BY_NAME.get(codec)
        return entry.tag if entry is not None else codec
    if isinstance(codec, Mapping) and len(codec) == 1:
        return str(next(iter(codec)))
    raise ValueError(f"not a codec: {codec!r}")


def encoded_size(codec: Any, n: int) -> int:
    """The bytes ``codec.rs`` ``encode_values`` produces for ``n`` values (see the module table;
    the codec registry's :meth:`~fakecoord.network.codecs.Codec.encoded_size`).

    ``codec`` is the serde JSON of a ``GradientCodec`` (``"Fp16"``,
    ``{"BlockwiseInt8": {"block_size": 256}}``...) or a ``--codec`` name
    (``"fp32"``, ``"int8"``).  Raises ``ValueError`` for a codec the
    network cannot encode (LowRank, a zero block size).
    """
    try:
        if isinstance(codec, str) and codec in BY_NAME:
            parsed = GradientCodec.shorthand(codec)
        else:
            parsed = GradientCodec.from_json(codec)
    except PolicyError as exc:
        raise ValueError(f"unknown codec {codec!r}: {exc.reason}") from None
    entry = parsed.entry
    if entry.refusal is not None:
        raise ValueError(entry.refusal)
    found = entry.check(dict(parsed.params))
    if found is not None and "block_size" in found[0]:
        raise ValueError("blockwise int8 block size must be positive")
    return parsed.make().encoded_size(n)


def chunk_count(encoded_bytes: int) -> int:
    """How many chunks ``encode_pseudo_gradient`` cuts ``encoded_bytes`` into."""
    return -(-encoded_bytes // CHUNK_SIZE_BYTES)


@dataclass(frozen=True)
class Link:
    """A peer's link: ``mbit`` Mbit/s both ways, ``latency_ms`` one way."""

    mbit: float
    latency_ms: float = 0.0

    @property
    def bits_per_second(self) -> float:
        return self.mbit * 1e6


UNLIMITED = Link(math.inf, 0.0)


def _parse_link(text: str) -> Link:
    rate, slash, latency = text.partition("/")
    try:
        mbit = float(rate)
        ms = float(latency) if slash else 0.0
    except ValueError:
        raise ValueError(f"{text!r}: expected MBIT[/LATENCY_MS], e.g. 100/20") from None
    if not (math.isfinite(mbit) and mbit > 0):
        raise ValueError(f"{text!r}: the bandwidth must be a positive number of Mbit/s")
    if not (math.isfinite(ms) and ms >= 0):
        raise ValueError(f"{text!r}: the latency must be a non-negative number of ms")
    return Link(mbit, ms)


def parse_links(specs: Sequence[str], peers: int) -> dict[str, Link]:
    """``{"*": Link}`` for ``MBIT[/LATENCY_MS]`` and ``{"peer-N": Link}`` for
    ``peer-N=MBIT[/LATENCY_MS]`` (later specs win).  Raises ``ValueError``."""
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"expected a list of MBIT[/LATENCY_MS] strings, got {specs!r}")
    links: dict[str, Link] = {}
    for spec in specs:
        if not isinstance(spec, str):
            raise ValueError(f"expected a MBIT[/LATENCY_MS] string, got {spec!r}")
        peer, eq, rest = spec.partition("=")
        if not eq:
            links["*"] = _parse_link(spec)
            continue
        peer = peer.strip()
        index = peer.removeprefix("peer-")
        if not (peer.startswith("peer-") and index.isdigit() and int(index) < peers):
            raise ValueError(
                f"{spec!r}: {peer!r} is not a peer of this run (peer-0..peer-{peers - 1})"
            )
        links[f"peer-{int(index)}"] = _parse_link(rest)
    return links


def link_of(links: Mapping[str, Link], peer_id: str) -> Link:
    return links.get(peer_id) or links.get("*") or UNLIMITED


@dataclass(frozen=True)
class Transfer:
    """One round's modelled transfer: per peer its seconds (max of download and upload), and
    the round's (the slowest member's); ``late`` lists members whose transfer passes the
    network's aggregation timeout."""

    peer_seconds: dict[str, float]
    seconds: float
    late: list[str]


def round_transfer(
    group: Sequence[str], encoded_bytes: Mapping[str, int], links: Mapping[str, Link]
) -> Transfer:
    """The link model of the module docstring over the members that contributed (``group``
    order; ``encoded_bytes[peer]`` each)."""
    seconds: dict[str, float] = {}
    for i in group:
        li = link_of(links, i)
        download = 0.0
        for j in group:
            if j == i:
                continue
            lj = link_of(links, j)
            rtt = 2.0 * (li.latency_ms + lj.latency_ms) / 1000.0
            rate = min(li.bits_per_second, lj.bits_per_second)
            size = encoded_bytes[j]
            download += (2 + chunk_count(size)) * rtt + (8.0 * size / rate if rate else 0.0)
        upload = (len(group) - 1) * 8.0 * encoded_bytes[i] / li.bits_per_second
        seconds[i] = max(download, upload)
    late = [p for p, s in seconds.items() if s > AGGREGATION_TIMEOUT_SECONDS]
    return Transfer(seconds, max(seconds.values(), default=0.0), late)


__all__ = [
    "AGGREGATION_TIMEOUT_SECONDS",
    "CHUNK_SIZE_BYTES",
    "UNLIMITED",
    "Link",
    "Transfer",
    "chunk_count",
    "codec_name",
    "encoded_size",
    "link_of",
    "parse_links",
    "round_transfer",
]
