"""The network's pseudo-gradient transport codecs, as one registry (docs/protocol.md §6).

Each :class:`CodecEntry` is one ``GradientCodec`` variant of upstream
``crates/burn_p2p_core/src/schema/diloco.rs``: its serde tag and fields, the
network's validation (``GradientCodec::validate``), the CLI shorthand, a
line for the docs table, and its arithmetic, written from upstream
``crates/burn_p2p/src/diloco/codec.rs`` (``encode_values`` /
``decode_values``).  :data:`CODECS` lists them; adding a codec is one entry
(and its :class:`Codec` class) plus its tests: the policy's serde type, the
``--codec`` choices, config validation, error texts and the docs table are
derived from the registry.

Arithmetic (bit for bit the network's; float32 throughout, no FMA):

- ``Fp32``: the values' little-endian bytes.
- ``Fp16``: IEEE half, round to nearest even, overflow to +-inf, a NaN keeps
  its sign and top payload bits with the quiet bit set (the ``half`` crate).
- ``BlockwiseInt8``: per block of ``block_size`` values a u16 length, an f32
  scale ``max|x| / 127`` (NaN-ignoring max from +0; 0 when ``max <=
  f32::EPSILON``) and one i8 per value ``clamp(round(x / scale), -127,
  127)`` with Rust's ``round`` (half away from zero) and ``as i8`` (NaN ->
  0); decoded ``q * scale``.  A block of 65536 values or more writes a
  wrapped length, and decoding then reads the bytes as the network does
  (it almost always fails).
- ``Qsgd``: one f32 norm, ``sqrt`` of the sequential float32 sum of squares
  (from -0.0, as Rust's ``Sum for f32``); per value a u16 level and an i8
  sign; ``level = round(|x| / norm * levels)`` or, stochastic, ``floor +
  (u < frac)`` with ``u`` from splitmix64 of (index, value bits, bits).
  Encoding refuses a non-finite norm.
- ``SignSgd``: 2-bit codes, four per byte; decoded +1, -1 or +0.
- ``LowRank``: refused at encoding (flattened packs carry no shapes).

Streaming (the simulation's outer step): :meth:`Codec.stream` gives a
:class:`CodecStream` that encodes and decodes a chunk at a time, with
global indices; chunks must be multiples of :attr:`CodecStream.alignment`
(except the last) and, when :attr:`CodecStream.first_pass` is set (QSGD's
norm), every chunk is first given to :meth:`CodecStream.observe` in order.
:meth:`CodecStream.transport` (encode + decode fused, the values the
aggregate sees) gives exactly ``decode(encode(values))``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import schema
from ..errors import NetworkStepError

F32 = np.dtype("<f4")
F32_EPSILON = np.float32(2.0**-23)
LOW_RANK_REFUSAL = (
    "low-rank DiLoCo transport requires tensor-shape layout metadata; "
    "flattened packs cannot preserve rank semantics"
)

U8 = schema.Int("u8", 0, 2**8 - 1)
U16 = schema.Int("u16", 0, 2**16 - 1)
U32 = schema.U32

Params = Mapping[str, Any]


# ---------------------------------------------------------------------------
# Rust's float semantics, vectorized


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Rust's ``f32::round``: to the nearest integer, halves away from zero (a new array).

    ``x - trunc(x)`` is exact in float32, so the half-way test is exact
    (``trunc(x + copysign(0.5, x))`` is not: 0.49999997 + 0.5 rounds to 1).
    NaN and +-inf come back as they are.
    """
    t = np.trunc(x)
    with np.errstate(invalid="ignore"):
        frac = np.subtract(x, t)
        away = np.abs(frac) >= np.float32(0.5)
    return np.where(away, t + np.sign(x), t).astype(x.dtype, copy=False)


BELOW_HALF = np.float32(0.5) - np.float32(2.0**-25)
"""The largest float32 below 0.5: the one value ``|x| < 2**22`` for which ``floor(|x| + 0.5)``
is not Rust's ``round`` (the sum rounds up to 1.0)."""


def round_half_away_in_place(x: np.ndarray) -> np.ndarray:
    """:func:`round_half_away` in place, for ``|x| < 2**22`` (NaN kept): ``floor(|x| + 0.5)``
    is exact there but for :data:`BELOW_HALF`, with the sign put back (fewer passes)."""
    sign_source = np.signbit(x)
    np.abs(x, out=x)
    below = x == BELOW_HALF
    np.add(x, np.float32(0.5), out=x)
    np.floor(x, out=x)
    if below.any():
        x[below] = 0.0
    np.negative(x, out=x, where=sign_source)
    return x


def saturating_i8(x: np.ndarray) -> np.ndarray:
    """Rust's ``f32 as i8``: saturating, NaN -> 0 (``x`` already integral)."""
    with np.errstate(invalid="ignore"):
        clipped = np.clip(np.nan_to_num(x, nan=0.0, posinf=127.0, neginf=-128.0), -128, 127)
    return clipped.astype(np.int8)


def u64_to_f32(value: int) -> np.float32:
    """Rust's ``u64 as f32`` (one rounding to nearest even, no double rounding via f64)."""
    if value < 2**24:
        return np.float32(value)
    shift = value.bit_length() - 24
    mantissa, rest = value >> shift, value & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and mantissa & 1):
        mantissa += 1
    return np.float32(float(mantissa << shift))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Upstream ``splitmix64`` over a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _encode_error(message: str) -> NetworkStepError:
    return NetworkStepError("encode", message)


def _decode_error(message: str) -> NetworkStepError:
    return NetworkStepError("decode", message)


# ---------------------------------------------------------------------------
# The codec interface


class CodecStream:
    """Encoding and decoding one pack of ``n`` values a chunk at a time (see the module doc)."""

    alignment: int = 1
    first_pass: bool = False

    def __init__(self, codec: Codec, n: int) -> None:
        self.codec, self.n = codec, n

    @property
    def streamable(self) -> bool:
        """False when the network's decoding cannot be done chunk by chunk (the whole
        encoding must then be decoded at once: :meth:`Codec.decode`)."""
        return True

    def observe(self, values: np.ndarray, start: int) -> None:
        """The first pass over chunk ``values`` (starting at value ``start``)."""

    def end_first_pass(self) -> None:
        """After the first pass: raises :class:`NetworkStepError` where encoding fails."""

    def encode_chunk(self, values: np.ndarray, start: int) -> bytes:
        """The encoded bytes of a chunk (with the pack's header when ``start == 0``)."""
        raise NotImplementedError

    def transport(self, values: np.ndarray, start: int) -> np.ndarray:
        """``decode(encode(values))`` for a chunk: may overwrite ``values`` and return it."""
        raise NotImplementedError


class Codec:
    """One codec with its parameters: the network's encode/decode of a whole pack."""

    stream_class: ClassVar[type[CodecStream]] = CodecStream

    def __init__(self, params: Params) -> None:
        self.params = dict(params)

    def encoded_size(self, n: int) -> int:
        """Bytes the encoding of ``n`` values takes (``total_encoded_bytes``)."""
        raise NotImplementedError

    def stream(self, n: int) -> CodecStream:
        return self.stream_class(self, n)

    def encode(self, values: np.ndarray) -> bytes:
        """``encode_values``: raises :class:`NetworkStepError` (stage ``encode``)."""
        values = np.ascontiguousarray(values, dtype=F32)
        s = self.stream(values.shape[0])
        if s.first_pass:
            s.observe(values, 0)
            s.end_first_pass()
        return s.encode_chunk(values, 0)

    def decode(self, data: bytes, n: int) -> np.ndarray:
        """``decode_values``: raises :class:`NetworkStepError` (stage ``decode``)."""
        raise NotImplementedError


# -- Fp32 -------------------------------------------------------------------


class _Fp32Stream(CodecStream):
    def encode_chunk(self, values: np.ndarray, start: int) -> bytes:
        return np.ascontiguousarray(values, dtype=F32).tobytes()

    def transport(self, values: np.ndarray, start: int) -> np.ndarray:
        return values


class Fp32(Codec):
    stream_class = _Fp32Stream

    def encoded_size(self, n: int) -> int:
        return 4 * n

    def decode(self, data: bytes, n: int) -> np.ndarray:
        if len(data) != 4 * n:
            raise _decode_error(f"fp32 payload expected {4 * n} bytes, received {len(data)}")
        return np.frombuffer(data, dtype=F32).copy()


# -- Fp16 -------------------------------------------------------------------

FP16_MAX = np.float32(65504.0)


def round_to_fp16(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` rounded in place to the float32 value of ``half::f16::from_f32``.

    numpy's float32 -> float16 conversion is IEEE's (round to nearest even,
    subnormals, +-inf past 65504: the ``half`` crate's, checked against the
    golden vectors and a scalar transcription of the crate), and fast (SIMD);
    only a NaN is re-made as ``half`` makes it (quiet, sign and top payload
    bits kept), since numpy keeps a signalling NaN's payload as it is.
    """
    has_nan = values.size > 0 and bool(np.isnan(np.min(values)))
    if has_nan:
        bits = values.view(np.uint32)
        nan = np.isnan(values)
        nan_bits = (bits[nan] & np.uint32(0x807FE000)) | np.uint32(0x7FC00000)
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16)
    np.copyto(values, half)
    if has_nan:
        bits[nan] = nan_bits
    return values


class _Fp16Stream(CodecStream):
    def encode_chunk(self, values: np.ndarray, start: int) -> bytes:
        rounded = round_to_fp16(np.array(values, dtype=F32, copy=True))
        return _f16_bits(rounded).astype("<u2").tobytes()

    def transport(self, values: np.ndarray, start: int) -> np.ndarray:
        return round_to_fp16(values)


def _f16_bits(rounded: np.ndarray) -> np.ndarray:
    """The binary16 bits of float32 values that are exactly half values (or NaN as ``half``
    makes them: quiet, top payload bits)."""
    out = rounded.astype(np.float16).view(np.uint16).copy()
    nan = np.isnan(rounded)
    if nan.any():
        b = rounded.view(np.uint32)[nan]
        out[nan] = (
            ((b >> np.uint32(16)) & np.uint32(0x8000))
            | np.uint32(0x7E00)
            | ((b & np.uint32(0x7FFFFF)) >> np.uint32(13))
        )
    return out


def _f16_to_f32(bits: np.ndarray) -> np.ndarray:
    """``half::f16::to_f32``: exact; a NaN keeps its payload with the quiet bit set."""
    out = bits.view(np.float16).astype(F32)
    nan = (bits & np.uint16(0x7C00)) == np.uint16(0x7C00)
    nan &= (bits & np.uint16(0x03FF)) != 0
    if nan.any():
        b = bits[nan].astype(np.uint32)
        out.view(np.uint32)[nan] = (
            ((b & np.uint32(0x8000)) << np.uint32(16))
            | np.uint32(0x7FC00000)
            | ((b & np.uint32(0x03FF)) << np.uint32(13))
        )
    return out


class Fp16(Codec):
    stream_class = _Fp16Stream

    def encoded_size(self, n: int) -> int:
        return 2 * n

    def decode(self, data: bytes, n: int) -> np.ndarray:
        if len(data) != 2 * n:
            raise _decode_error(f"fp16 payload expected {2 * n} bytes, received {len(data)}")
        return _f16_to_f32(np.frombuffer(data, dtype="<u2").astype(np.uint16))


# -- BlockwiseInt8 ----------------------------------------------------------

_BLOCK_HEADER = struct.Struct("<Hf")


def _block_scales(blocks: np.ndarray) -> np.ndarray:
    """Per row: ``max|x|`` folded from +0 with ``f32::max`` (NaN ignored), then the scale."""
    with np.errstate(invalid="ignore"):
        max_abs = np.fmax.reduce(np.abs(blocks), axis=1, initial=np.float32(0.0))
    max_abs = max_abs.astype(F32, copy=False)
    with np.errstate(over="ignore"):
        scale = max_abs / np.float32(127.0)
    scale[max_abs <= F32_EPSILON] = np.float32(0.0)
    return scale


def _quantize(blocks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = round_half_away(blocks / scale[:, None])
        np.clip(q, np.float32(-127.0), np.float32(127.0), out=q)
    q = saturating_i8(q)
    q[scale == 0.0] = 0
    return q


class _Int8Stream(CodecStream):
    def __init__(self, codec: Codec, n: int) -> None:
        super().__init__(codec, n)
        self.block = int(codec.params["block_size"])
        if self.block <= 0:
            raise _encode_error("blockwise int8 block size must be positive")
        self.alignment = self.block

    @property
    def streamable(self) -> bool:
        return min(self.block, self.n) < 65536

    def _split(self, values: np.ndarray) -> list[np.ndarray]:
        full = (values.shape[0] // self.block) * self.block
        parts = [values[:full].reshape(-1, self.block)] if full else []
        if full < values.shape[0]:
            parts.append(values[full:].reshape(1, -1))
        return parts

    def encode_chunk(self, values: np.ndarray, start: int) -> bytes:
        out = []
        for blocks in self._split(np.ascontiguousarray(values, dtype=F32)):
            scale = _block_scales(blocks)
            q = _quantize(blocks, scale)
            rows, length = blocks.shape
            enc = np.empty((rows, 6 + length), dtype=np.uint8)
            enc[:, 0:2] = np.full(rows, length % 65536, dtype="<u2").view(np.uint8).reshape(rows, 2)
            enc[:, 2:6] = scale.astype("<f4").view(np.uint8).reshape(rows, 4)
            enc[:, 6:] = q.view(np.uint8)
            out.append(enc.tobytes())
        return b"".join(out)

    def transport(self, values: np.ndarray, start: int) -> np.ndarray:
        for blocks in self._split(values):
            scale = _block_scales(blocks)
            # A zero scale (max <= EPSILON) divides by 1 instead: those values round to
            # +-0 and decode to 0 * 0; "+ 0" below makes every zero +0 (Rust's 0_i8).
            safe = np.where(scale == 0.0, np.float32(1.0), scale)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                np.divide(blocks, safe[:, None], out=blocks)
                round_half_away_in_place(blocks)
                np.clip(blocks, np.float32(-127.0), np.float32(127.0), out=blocks)
                if np.isnan(np.min(blocks)):  # `as i8` of NaN is 0
                    np.nan_to_num(blocks, copy=False, nan=0.0)
                np.multiply(blocks, scale[:, None], out=blocks)
                np.add(blocks, np.float32(0.0), out=blocks)
        return values


class BlockwiseInt8(Codec):
    stream_class = _Int8Stream

    def encoded_size(self, n: int) -> int:
        b = int(self.params["block_size"])
        return n + 6 * (-(-n // b)) if b > 0 else 0

    def decode(self, data: bytes, n: int) -> np.ndarray:
        b = int(self.params["block_size"])
        if 0 < b and min(b, n) < 65536 and len(data) == self.encoded_size(n):
            fast = self._decode_regular(data, n, b)
            if fast is not None:
                return fast
        return self._decode_literal(data, n)

    @staticmethod
    def _decode_regular(data: bytes, n: int, b: int) -> np.ndarray | None:
        """The vectorized reading of an encoding whose headers all say ``b`` (the last the
        rest); None when any header says otherwise (then read literally)."""
        raw = np.frombuffer(data, dtype=np.uint8)
        full = n // b
        out = np.empty(n, dtype=F32)
        parts = [(raw[: full * (6 + b)].reshape(full, 6 + b), b, 0)] if full else []
        if full * b < n:
            parts.append((raw[full * (6 + b) :].reshape(1, -1), n - full * b, full * b))
        for rows, length, at in parts:
            lengths = rows[:, 0:2].copy().view("<u2").reshape(-1)
            if np.any(lengths != length):
                return None
            scale = rows[:, 2:6].copy().view("<f4").reshape(-1)
            q = rows[:, 6:].view(np.int8).astype(F32)
            with np.errstate(invalid="ignore", over="ignore"):
                out[at : at + q.size] = (q * scale[:, None]).reshape(-1)
        return out

    @staticmethod
    def _decode_literal(data: bytes, n: int) -> np.ndarray:
        """``decode_values`` step by step, as the network reads any bytes."""
        offset = 0
        parts: list[np.ndarray] = []
        count = 0
        while count < n:
            if offset + 6 > len(data):
                raise _decode_error("truncated blockwise int8 header")
            length, scale = _BLOCK_HEADER.unpack_from(data, offset)
            offset += 6
            if offset + length > len(data):
                raise _decode_error("truncated blockwise int8 block")
            q = np.frombuffer(data, dtype=np.int8, count=length, offset=offset).astype(F32)
            with np.errstate(invalid="ignore", over="ignore"):
                parts.append(q * np.float32(scale))
            count += length
            offset += length
        if count != n:
            raise _decode_error(f"decoded {count} values, expected {n}")
        if offset != len(data):
            raise _decode_error("blockwise int8 payload has trailing bytes")
        return np.concatenate(parts).astype(F32) if parts else np.empty(0, dtype=F32)


# -- Qsgd ---------------------------------------------------------------------

SUM_START = np.float32(-0.0)
"""Rust's ``Sum for f32`` folds from -0.0 (the neutral element of float addition)."""


def qsgd_levels(bits: int) -> int:
    """``qsgd_levels``; raises the network's error (the caller says which stage)."""
    if not 1 <= bits <= 15:
        raise ValueError(f"QSGD bits must be in 1..=15, got {bits}")
    return (1 << bits) - 1


def qsgd_unit(index: np.ndarray, values: np.ndarray, bits: int) -> np.ndarray:
    """``qsgd_deterministic_unit`` for global ``index`` (uint64) and float32 ``values``."""
    v = values.view(np.uint32).astype(np.uint64)
    seed = index ^ (v << np.uint64(17)) ^ np.uint64(bits << 48)
    mixed = splitmix64(seed)
    return (mixed >> np.uint64(40)).astype(F32) / np.float32(1 << 24)


class _QsgdStream(CodecStream):
    first_pass = True

    def __init__(self, codec: Codec, n: int) -> None:
        super().__init__(codec, n)
        self.bits = int(codec.params["bits"])
        self.stochastic = bool(codec.params["stochastic"])
        try:
            self.levels = qsgd_levels(self.bits)
        except ValueError as exc:
            raise _encode_error(str(exc)) from None
        self.sum = SUM_START
        self.norm: np.float32 | None = None

    def observe(self, values: np.ndarray, start: int) -> None:
        m = values.shape[0]
        if m == 0:
            return
        buf = np.empty(m + 1, dtype=F32)
        buf[0] = self.sum
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(values, values, out=buf[1:])
            np.add.accumulate(buf, out=buf)
        self.sum = F32.type(buf[-1])

    def end_first_pass(self) -> None:
        with np.errstate(invalid="ignore"):
            norm = np.sqrt(np.float32(self.sum))
        if not np.isfinite(norm):
            raise _encode_error("QSGD payload norm must be finite")
        self.norm = norm

    def _levels(self, values: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.norm is not None
        norm, levels = self.norm, np.float32(self.levels)
        sign = (values > 0).astype(np.int8) - (values < 0).astype(np.int8)
        if norm <= F32_EPSILON:
            return np.zeros(values.shape[0], dtype=np.uint16), sign
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = (np.abs(values) / norm) * levels
            if self.stochastic:
                floor = np.floor(scaled)
                frac = scaled - floor
                index = np.arange(start, start + values.shape[0], dtype=np.uint64)
                up = qsgd_unit(index, values, self.bits) < frac
                quantized = floor + up.astype(F32)
            else:
                quantized = round_half_away(scaled)
            np.clip(quantized, np.float32(0.0), levels, out=quantized)
        level = np.nan_to_num(quantized, nan=0.0).astype(np.uint16)
        level[sign == 0] = 0
        return level, sign

    def encode_chunk(self, values: np.ndarray, start: int) -> bytes:
        assert self.norm is not None
        values = np.ascontiguousarray(values, dtype=F32)
        level, sign = self._levels(values, start)
        enc = np.empty((values.shape[0], 3), dtype=np.uint8)
        enc[:, 0:2] = level.astype("<u2").view(np.uint8).reshape(-1, 2)
        enc[:, 2] = sign.view(np.uint8)
        head = np.float32(self.norm).astype("<f4").tobytes() if start == 0 else b""
        return head + enc.tobytes()

    def transport(self, values: np.ndarray, start: int) -> np.ndarray:
        assert self.norm is not None
        norm, levels = self.norm, np.float32(self.levels)
        if norm <= F32_EPSILON:
            values[:] = 0.0
            return values
        if self.stochastic:
            level, sign = self._levels(values, start)
            return _qsgd_values(level, sign, norm, self.levels, out=values)
        # The values are finite (a non-finite one makes the norm refuse), so every step
        # below is exact as the network's: |x| / norm * levels, Rust's round (>= 0 here),
        # the clamp; then sign * norm * (level / levels), and "+ 0" makes the zeros +0.
        sign = np.sign(values)
        with np.errstate(over="ignore", invalid="ignore"):
            np.abs(values, out=values)
            np.divide(values, norm, out=values)
            np.multiply(values, levels, out=values)
            round_half_away_in_place(values)
            np.minimum(values, levels, out=values)
            np.divide(values, levels, out=values)
            np.multiply(sign, norm, out=sign)
            np.multiply(sign, values, out=values)
            np.add(values, np.float32(0.0), out=values)
        return values


def _qsgd_values(
    level: np.ndarray, sign: np.ndarray, norm: np.float32, levels: int, out: np.ndarray
) -> np.ndarray:
    """``sign * norm * (level / levels)``, +0 where the sign or level is 0 or norm <= eps."""
    if norm <= F32_EPSILON:
        out[:] = 0.0
        return out
    with np.errstate(over="ignore"):
        value = (sign.astype(F32) * norm) * (level.astype(F32) / np.float32(levels))
    value[(sign == 0) | (level == 0)] = 0.0
    out[:] = value
    return out


class Qsgd(Codec):
    stream_class = _QsgdStream

    def encoded_size(self, n: int) -> int:
        return 4 + 3 * n

    def decode(self, data: bytes, n: int) -> np.ndarray:
        try:
            levels = qsgd_levels(int(self.params["bits"]))
        except ValueError as exc:
            raise _decode_error(str(exc)) from None
        if len(data) != 4 + 3 * n:
            raise _decode_error(f"QSGD payload expected {4 + 3 * n} bytes, received {len(data)}")
        norm = np.frombuffer(data, dtype="<f4", count=1)[0]
        if not (np.isfinite(norm) and norm >= 0.0):
            raise _decode_error("QSGD payload norm must be finite and non-negative")
        body = np.frombuffer(data, dtype=np.uint8, offset=4).reshape(n, 3)
        level = body[:, 0:2].copy().view("<u2").reshape(-1).astype(np.uint16)
        sign = body[:, 2].view(np.int8)
        bad = (level > levels) | (sign < -1) | (sign > 1) | ((sign == 0) & (level != 0))
        if bad.any():
            i = int(np.argmax(bad))
            if level[i] > levels:
                raise _decode_error(f"QSGD level {level[i]} exceeds configured maximum {levels}")
            if not -1 <= sign[i] <= 1:
                raise _decode_error(f"QSGD payload contains invalid sign {sign[i]}")
            raise _decode_error("QSGD payload contains non-zero level for zero sign")
        return _qsgd_values(level, sign, np.float32(norm), levels, np.empty(n, dtype=F32))


# -- SignSgd ------------------------------------------------------------------


def _sign_codes(values: np.ndarray) -> np.ndarray:
    return (values > 0).astype(np.uint8) | ((values < 0).astype(np.uint8) << np.uint8(1))


class _SignStream(CodecStream):
    alignment = 4

    def encode_chunk(self, values: np.ndarray, start: int) -> bytes:
        codes = _sign_codes(values)
        padded = np.zeros(-(-codes.shape[0] // 4) * 4, dtype=np.uint8)
        padded[: codes.shape[0]] = codes
        quads = padded.reshape(-1, 4)
        packed = quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)
        return packed.astype(np.uint8).tobytes()

    def transport(self, values: np.ndarray, start: int) -> np.ndarray:
        np.sign(values, out=values)
        if values.size and np.isnan(np.min(values)):  # NaN is neither > 0 nor < 0: code 0
            np.nan_to_num(values, copy=False, nan=0.0)
        np.add(values, np.float32(0.0), out=values)  # -0 -> +0
        return values


class SignSgd(Codec):
    stream_class = _SignStream

    def encoded_size(self, n: int) -> int:
        return (n + 3) // 4

    def decode(self, data: bytes, n: int) -> np.ndarray:
        expected = (n + 3) // 4
        if len(data) != expected:
            raise _decode_error(
                f"signSGD payload expected {expected} packed bytes for {n} values, "
                f"received {len(data)}"
            )
        raw = np.frombuffer(data, dtype=np.uint8)
        codes = np.stack([(raw >> np.uint8(s)) & np.uint8(3) for s in (0, 2, 4, 6)], axis=1)
        codes = codes.reshape(-1)
        if np.any(codes[:n] == 3):
            raise _decode_error("signSGD payload contains reserved sign code")
        if np.any(codes[n:] != 0):
            raise _decode_error("signSGD payload contains non-zero padding bits")
        out = np.zeros(n, dtype=F32)
        out[codes[:n] == 1] = 1.0
        out[codes[:n] == 2] = -1.0
        return out


# -- LowRank ------------------------------------------------------------------


class _LowRankStream(CodecStream):
    def __init__(self, codec: Codec, n: int) -> None:
        raise _encode_error(LOW_RANK_REFUSAL)


class LowRank(Codec):
    stream_class = _LowRankStream

    def encoded_size(self, n: int) -> int:
        return 0

    def decode(self, data: bytes, n: int) -> np.ndarray:
        raise _decode_error(LOW_RANK_REFUSAL)


# ---------------------------------------------------------------------------
# The registry


Check = Callable[[Params], "tuple[str, str] | None"]
"""``GradientCodec::validate`` for one variant: None, or ``(field, the network's reason)``."""


def _no_check(params: Params) -> tuple[str, str] | None:
    return None


def _check_block(params: Params) -> tuple[str, str] | None:
    if params["block_size"] == 0:
        return "block_size", "DiLoCo blockwise int8 codec block_size must be greater than zero"
    return None


def _check_bits(params: Params) -> tuple[str, str] | None:
    bits = params["bits"]
    if bits == 0 or bits > 8:
        return "bits", f"DiLoCo QSGD codec bits must be between 1 and 8, got {bits}"
    return None


def _check_rank(params: Params) -> tuple[str, str] | None:
    if params["rank"] == 0:
        return "rank", "DiLoCo low-rank codec rank must be greater than zero"
    return None


def variant_json(tag: str, fields: tuple[schema.Field, ...], params: Params) -> Any:
    """An externally tagged enum variant as serde writes it: ``"Tag"`` for a unit variant,
    ``{"Tag": {field: value, ...}}`` for a struct variant."""
    return {tag: {f.name: params[f.name] for f in fields}} if fields else tag


@dataclass(frozen=True)
class CodecEntry:
    """One ``GradientCodec`` variant (see the module docstring)."""

    tag: str
    """The serde variant name (``"BlockwiseInt8"``)."""
    name: str
    """The ``--codec`` shorthand (``"int8"``)."""
    summary: str
    """One line for the docs table."""
    codec: type[Codec]
    fields: tuple[schema.Field, ...] = ()
    """Struct variant fields, in the Rust order (none: a unit variant)."""
    shorthand: Mapping[str, Any] = field(default_factory=dict)
    """The parameters ``--codec NAME`` stands for."""
    check: Check = _no_check
    refusal: str | None = None
    """The reason the network refuses it at run time for a Python workload."""

    def make(self, params: Params) -> Codec:
        return self.codec(params)

    def serde_json(self, params: Params) -> Any:
        """The variant in serde's JSON shape."""
        return variant_json(self.tag, self.fields, params)


CODECS: tuple[CodecEntry, ...] = (
    CodecEntry("Fp32", "fp32", "float32 values, exact (4 bytes a value)", Fp32),
    CodecEntry(
        "Fp16",
        "fp16",
        "IEEE half, round to nearest even, overflow to +-inf (2 bytes a value; the default)",
        Fp16,
    ),
    CodecEntry(
        "BlockwiseInt8",
        "int8",
        "per block: a u16 length, an f32 scale (the largest magnitude / 127), one i8 a value "
        "(1 byte a value + 6 a block)",
        BlockwiseInt8,
        (schema.Field("block_size", U32),),
        {"block_size": 256},
        _check_block,
    ),
    CodecEntry(
        "Qsgd",
        "qsgd",
        "one f32 norm, per value a u16 level of 2**bits - 1 and an i8 sign (3 bytes a value)",
        Qsgd,
        (schema.Field("bits", U8), schema.Field("stochastic", schema.BOOL)),
        {"bits": 8, "stochastic": False},
        _check_bits,
    ),
    CodecEntry(
        "LowRank",
        "lowrank",
        "refused by the network for Python workloads (no tensor shapes in a flattened pack)",
        LowRank,
        (schema.Field("rank", U16),),
        {"rank": 4},
        _check_rank,
        refusal=LOW_RANK_REFUSAL,
    ),
    CodecEntry(
        "SignSgd",
        "sign",
        "2-bit sign codes, four a byte; decoded +1, -1 or 0 (error_feedback changes nothing)",
        SignSgd,
        (schema.Field("error_feedback", schema.BOOL),),
        {"error_feedback": False},
    ),
)
"""In the Rust declaration order."""

BY_TAG = {e.tag: e for e in CODECS}
BY_NAME = {e.name: e for e in CODECS}
CODEC_NAMES = tuple(e.name for e in CODECS)


def entry(tag: str) -> CodecEntry:
    return BY_TAG[tag]


__all__ = [
    "BY_NAME",
    "BY_TAG",
    "CODECS",
    "CODEC_NAMES",
    "LOW_RANK_REFUSAL",
    "Codec",
    "CodecEntry",
    "CodecStream",
    "entry",
    "qsgd_levels",
    "round_half_away",
    "round_to_fp16",
    "splitmix64",
    "u64_to_f32",
]
