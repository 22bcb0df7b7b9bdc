"""A slow, scalar reference of the network's DiLoCo step, written line by line from upstream
``crates/burn_p2p/src/diloco/codec.rs`` and ``crates/burn_p2p_workload/src/diloco.rs``.

No numpy vector operations: one value at a time, with Rust's float semantics spelled
out (``f32`` results are computed in f64 and rounded once, which is exact for one
+, -, *, / or sqrt of f32 operands).  The fast implementation in
:mod:`fakecoord.network` is checked against this (tests/network/test_codecs.py).
"""

from __future__ import annotations

import math
import struct

import numpy as np

EPS = 2.0**-23
LOW_RANK = (
    "low-rank DiLoCo transport requires tensor-shape layout metadata; "
    "flattened packs cannot preserve rank semantics"
)


class RefError(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage, self.message = stage, message


def f32(x: float) -> float:
    """Round to the nearest f32 (ties to even; overflow to +-inf; NaN kept)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0] if math.isfinite(x) else _bits_nonfinite(x)


def _bits_nonfinite(x: float) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def from_bits(b: int) -> float:
    return float(np.array([b], dtype=np.uint32).view(np.float32)[0])


def rust_max(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return a if a > b else b


def rust_round(x: float) -> float:
    if math.isnan(x) or math.isinf(x):
        return x
    t = math.trunc(x)
    if abs(x - t) >= 0.5:
        t += 1 if x > 0 else -1
    return float(t) if t != 0 else math.copysign(0.0, x)


def rust_clamp(x: float, lo: float, hi: float) -> float:
    if math.isnan(x):
        return x
    return lo if x < lo else hi if x > hi else x


def as_int(x: float, lo: int, hi: int) -> int:
    if math.isnan(x):
        return 0
    if x <= lo:
        return lo
    if x >= hi:
        return hi
    return int(x)


# -- half (the crate's software conversion) ------------------------------------


def f32_to_f16(value: float) -> int:
    x = bits(value) if not math.isnan(value) else _bits_nonfinite(value)
    sign = x & 0x80000000
    exp = x & 0x7F800000
    man = x & 0x007FFFFF
    if exp == 0x7F800000:
        nan_bit = 0 if man == 0 else 0x0200
        return (sign >> 16) | 0x7C00 | nan_bit | (man >> 13)
    half_sign = sign >> 16
    half_exp = ((exp >> 23) - 127) + 15
    if half_exp >= 0x1F:
        return half_sign | 0x7C00
    if half_exp <= 0:
        if 14 - half_exp > 24:
            return half_sign
        man = man | 0x00800000
        half_man = man >> (14 - half_exp)
        round_bit = 1 << (13 - half_exp)
        if (man & round_bit) != 0 and (man & (3 * round_bit - 1)) != 0:
            half_man += 1
        return half_sign | half_man
    half_exp_bits = half_exp << 10
    half_man = man >> 13
    round_bit = 0x00001000
    if (man & round_bit) != 0 and (man & (3 * round_bit - 1)) != 0:
        return (half_sign | half_exp_bits | half_man) + 1
    return half_sign | half_exp_bits | half_man


def f16_to_f32(h: int) -> float:
    sign = -1.0 if h & 0x8000 else 1.0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0x1F:
        if m == 0:
            return sign * math.inf
        return from_bits(((h & 0x8000) << 16) | 0x7FC00000 | (m << 13))
    if e == 0:
        return sign * m * 2.0**-24
    return sign * (1024 + m) * 2.0 ** (e - 25)


# -- splitmix64 and the QSGD unit -----------------------------------------------

M64 = (1 << 64) - 1


def splitmix64(v: int) -> int:
    v = (v + 0x9E3779B97F4A7C15) & M64
    m = v
    m = ((m ^ (m >> 30)) * 0xBF58476D1CE4E5B9) & M64
    m = ((m ^ (m >> 27)) * 0x94D049BB133111EB) & M64
    return m ^ (m >> 31)


def rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def qsgd_unit(index: int, value: float, nbits: int) -> float:
    seed = index ^ rotl(bits(value) if not math.isnan(value) else _bits_nonfinite(value), 17)
    seed ^= rotl(nbits, 48)
    mixed = splitmix64(seed)
    return f32(float(mixed >> 40) / float(1 << 24))


def qsgd_levels(nbits: int, stage: str) -> int:
    if not 1 <= nbits <= 15:
        raise RefError(stage, f"QSGD bits must be in 1..=15, got {nbits}")
    return (1 << nbits) - 1


# -- encode / decode ---------------------------------------------------------------


def encode(codec, values: list[float]) -> bytes:
    tag = codec if isinstance(codec, str) else next(iter(codec))
    p = {} if isinstance(codec, str) else codec[tag]
    out = bytearray()
    if tag == "Fp32":
        for v in values:
            out += np.array([v], dtype="<f4").tobytes()
    elif tag == "Fp16":
        for v in values:
            out += struct.pack("<H", f32_to_f16(v))
    elif tag == "BlockwiseInt8":
        b = p["block_size"]
        if b <= 0:
            raise RefError("encode", "blockwise int8 block size must be positive")
        for s in range(0, len(values), b):
            block = values[s : s + b]
            max_abs = 0.0
            for v in block:
                max_abs = rust_max(max_abs, abs(v))
            scale = 0.0 if max_abs <= EPS else f32(max_abs / 127.0)
            out += struct.pack("<H", len(block) % 65536)
            out += np.array([scale], dtype="<f4").tobytes()
            for v in block:
                if scale == 0.0:
                    q = 0
                else:
                    with np.errstate(all="ignore"):
                        x = (
                            f32(v / scale)
                            if not (math.isinf(v) and math.isinf(scale))
                            else math.nan
                        )
                    q = as_int(rust_clamp(rust_round(x), -127.0, 127.0), -128, 127)
                out.append(q & 0xFF)
    elif tag == "SignSgd":
        out = bytearray((len(values) + 3) // 4)
        for i, v in enumerate(values):
            code = 1 if v > 0 else 2 if v < 0 else 0
            out[i // 4] |= code << ((i % 4) * 2)
    elif tag == "Qsgd":
        nbits, stochastic = p["bits"], p["stochastic"]
        levels = qsgd_levels(nbits, "encode")
        total = -0.0
        for v in values:
            total = f32(total + f32(v * v))
        norm = f32(math.sqrt(total)) if not (total < 0 or math.isnan(total)) else math.nan
        if total == 0.0:
            norm = total  # sqrt(+-0) = +-0
        if not math.isfinite(norm):
            raise RefError("encode", "QSGD payload norm must be finite")
        out += np.array([norm], dtype="<f4").tobytes()
        for i, v in enumerate(values):
            sign = 1 if v > 0 else -1 if v < 0 else 0
            if sign == 0 or norm <= EPS:
                level = 0
            else:
                scaled = f32(f32(abs(v) / norm) * float(levels))
                if stochastic:
                    fl = math.floor(scaled)
                    frac = f32(scaled - fl)
                    q = fl + (1.0 if qsgd_unit(i, v, nbits) < frac else 0.0)
                else:
                    q = rust_round(scaled)
                level = as_int(rust_clamp(q, 0.0, float(levels)), 0, 65535)
            out += struct.pack("<H", level)
            out.append(sign & 0xFF)
    elif tag == "LowRank":
        raise RefError("encode", LOW_RANK)
    else:  # pragma: no cover
        raise AssertionError(tag)
    return bytes(out)


def decode(codec, data: bytes, n: int) -> list[float]:
    tag = codec if isinstance(codec, str) else next(iter(codec))
    p = {} if isinstance(codec, str) else codec[tag]
    if tag == "Fp32":
        if len(data) != 4 * n:
            raise RefError("decode", f"fp32 payload expected {4 * n} bytes, received {len(data)}")
        return [float(x) for x in np.frombuffer(data, dtype="<f4")]
    if tag == "Fp16":
        if len(data) != 2 * n:
            raise RefError("decode", f"fp16 payload expected {2 * n} bytes, received {len(data)}")
        return [f16_to_f32(h) for (h,) in struct.iter_unpack("<H", data)]
    if tag == "BlockwiseInt8":
        offset, vals = 0, []
        while len(vals) < n:
            if offset + 6 > len(data):
                raise RefError("decode", "truncated blockwise int8 header")
            (length,) = struct.unpack_from("<H", data, offset)
            scale = float(np.frombuffer(data, dtype="<f4", count=1, offset=offset + 2)[0])
            offset += 6
            if offset + length > len(data):
                raise RefError("decode", "truncated blockwise int8 block")
            for q in struct.unpack_from(f"<{length}b", data, offset):
                vals.append(f32(q * scale))  # 0 * inf: the hardware's default NaN (x86: -NaN)
            offset += length
        if len(vals) != n:
            raise RefError("decode", f"decoded {len(vals)} values, expected {n}")
        if offset != len(data):
            raise RefError("decode", "blockwise int8 payload has trailing bytes")
        return vals
    if tag == "SignSgd":
        expected = (n + 3) // 4
        if len(data) != expected:
            raise RefError(
                "decode",
                f"signSGD payload expected {expected} packed bytes for {n} values, "
                f"received {len(data)}",
            )
        vals = []
        for i in range(n):
            code = (data[i // 4] >> ((i % 4) * 2)) & 3
            if code == 3:
                raise RefError("decode", "signSGD payload contains reserved sign code")
            vals.append([0.0, 1.0, -1.0][code])
        for i in range(n, expected * 4):
            if (data[i // 4] >> ((i % 4) * 2)) & 3:
                raise RefError("decode", "signSGD payload contains non-zero padding bits")
        return vals
    if tag == "Qsgd":
        levels = qsgd_levels(p["bits"], "decode")
        if len(data) != 4 + 3 * n:
            raise RefError(
                "decode", f"QSGD payload expected {4 + 3 * n} bytes, received {len(data)}"
            )
        norm = float(np.frombuffer(data, dtype="<f4", count=1)[0])
        if not (math.isfinite(norm) and norm >= 0.0):
            raise RefError("decode", "QSGD payload norm must be finite and non-negative")
        vals, offset = [], 4
        for _ in range(n):
            (level,) = struct.unpack_from("<H", data, offset)
            (sign,) = struct.unpack_from("<b", data, offset + 2)
            offset += 3
            if level > levels:
                raise RefError("decode", f"QSGD level {level} exceeds configured maximum {levels}")
            if not -1 <= sign <= 1:
                raise RefError("decode", f"QSGD payload contains invalid sign {sign}")
            if sign == 0 and level != 0:
                raise RefError("decode", "QSGD payload contains non-zero level for zero sign")
            if sign == 0 or level == 0 or norm <= EPS:
                vals.append(0.0)
            else:
                vals.append(f32(f32(sign * norm) * f32(level / float(levels))))
        return vals
    raise RefError("decode", LOW_RANK)


# -- aggregation ----------------------------------------------------------------------


def total_key(x: float) -> int:
    b = bits(x) if not math.isnan(x) else _bits_nonfinite(x)
    signed = b - (1 << 32) if b & 0x80000000 else b
    return signed ^ ((signed >> 31) & 0x7FFFFFFF)


def aggregate(policy, rows: list[list[float]]) -> list[float]:
    tag = policy if isinstance(policy, str) else next(iter(policy))
    p = {} if isinstance(policy, str) else policy[tag]
    k = len(rows)
    if k == 0:
        raise RefError(
            "aggregate",
            "cannot average zero pseudo-gradients"
            if tag == "Mean"
            else "cannot aggregate zero pseudo-gradients",
        )
    n = len(rows[0])
    out = []
    for j in range(n):
        col = [r[j] for r in rows]
        if tag == "Mean":
            acc = 0.0
            for v in col:
                acc = f32(acc + v)
            out.append(f32(acc * f32(1.0 / k)))
        elif tag == "CoordinateMedian":
            col.sort(key=total_key)
            mid = k // 2
            out.append(f32(f32(col[mid - 1] + col[mid]) * 0.5) if k % 2 == 0 else col[mid])
        else:
            micros = p.get("minimum_agreement_micros", 0)
            minimum = min(max(f32(f32(micros) / 1_000_000.0), 0.0), 1.0)
            pos = sum(1 for v in col if v > 0)
            neg = sum(1 for v in col if v < 0)
            zero = k - pos - neg
            top = max(pos, neg, zero)
            pt, nt, zt = pos == top and pos > 0, neg == top and neg > 0, zero == top and zero > 0
            tie = p.get("tie_break", "Zero")
            if zt:
                cand, votes = 0.0, zero
            elif pt and nt:
                cand, votes = {
                    "Zero": (0.0, zero),
                    "Positive": (1.0, pos),
                    "Negative": (-1.0, neg),
                }[tie]
            elif pt:
                cand, votes = 1.0, pos
            elif nt:
                cand, votes = -1.0, neg
            else:
                cand, votes = 0.0, zero
            agreement = f32(float(votes) / float(k))
            out.append(0.0 if cand != 0.0 and agreement < minimum else cand)
    return out


def step(codec, policy, lr_micros: int, base: list[float], locals_: list[list[float]]):
    """``(pseudo_gradients, encoded, decoded, aggregate, new_base)``; raises :class:`RefError`."""
    grads = [[f32(b - v) for b, v in zip(base, local, strict=True)] for local in locals_]
    encoded, decoded = [], []
    for g in grads:
        e = encode(codec, g)
        encoded.append(e)
        decoded.append(decode(codec, e, len(g)))
    agg = aggregate(policy, decoded)
    lr = f32(lr_micros / 1_000_000.0)
    new = [f32(b - f32(lr * a)) for b, a in zip(base, agg, strict=True)]
    return grads, encoded, decoded, agg, new
