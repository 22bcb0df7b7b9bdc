"""Rust wire types, and decoding JSON into them as serde does.

:mod:`fakecoord.spec` writes the protocol in these terms; this module gives
each type its serde-faithful decoding.  Pure functions over values from
:func:`fakecoord.wire.parse_json` (or plain Python JSON values); no I/O.

Types: :class:`Str` (``String``, with a *role* such as a model handle or a
path), :class:`Int` (``u32``, ``u64``, ``i64``), :class:`Float` (``f64``),
:class:`Bool`, :class:`Unit`, :class:`Value` (``serde_json::Value``),
:class:`Option`, :class:`Vec` (also ``BTreeSet``), :class:`Map`
(``BTreeMap<String, V>``), :class:`Struct` (a derived struct, fields in
order), :class:`Enum` (externally tagged: unit, newtype and struct
variants), :class:`Untagged` (``#[serde(untagged)]``) and :class:`Tagged`
(internally tagged, ``#[serde(tag = "...")]``).

Decoding has two modes, because the coordinator uses both:

- ``from_bytes`` (``serde_json::from_slice::<T>``, the response envelope,
  pack manifests): a derived struct refuses a duplicated field; fields it
  does not know are skipped unchecked; nesting is limited to 127 levels;
  an untagged or internally tagged enum first buffers its whole value (so
  every part of it is checked as a ``Value`` would be).
- from a value (``serde_json::from_value::<T>``, what the coordinator does
  with ``result``): the value was already a ``serde_json::Value``, so no
  duplicates and no depth limit; a struct variant must be an object.

In both modes, as serde does: a missing ``Option`` field is None, a missing
``#[serde(default)]`` field its default, any other missing field an error;
unknown fields are accepted; a struct may also come as an array of its
fields in order (serde_json's ``deserialize_struct`` takes a sequence, where
only ``#[serde(default)]`` fields may be left off the end); integers are
range-checked as their Rust type and never taken from floats (``2.0`` is not
a ``u32``); an f64 takes any integer or finite float; a unit variant is
``"Name"`` or ``{"Name": null}``; an unknown variant is refused.

Decoded values keep their JSON form: the input itself when nothing needed
filling in, else a shallow copy with the absent defaulted fields filled in,
a struct given as an array turned into an object, and ``{"Unit": null}``
turned into ``"Unit"``.  One deliberate strictness beyond serde:
:class:`Untagged` with ``lossless_integers`` refuses an integer that fits
none of its integer variants, where serde would silently take it as a float
(an ``i64`` MetricValue of ``2**63`` or ``1e25`` written as an integer).

Every refusal is a :class:`~fakecoord.errors.DecodeError` naming the dotted
path, what the Rust type expected and what came.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from . import wire
from .errors import _MISSING, DecodeError
from .wire import BigInteger, JsonObject, NumberOutOfRange, join

MISSING: builtins.object = _MISSING
"""No default: the field must be present (re-exported for the spec)."""


@dataclass(frozen=True)
class Ctx:
    """How to decode (see the module docstring).

    ``from_bytes``: serde_json reads the bytes themselves (duplicate struct
    fields refused, a struct variant may be an array); ``limit_depth``: the
    127-level nesting limit applies (not inside a value serde buffered);
    ``check_strings``: strings still need their lone-surrogate check (False
    once a ``Value`` validation covered them, or when the bytes had no
    ``\\u`` escape).
    """

    from_bytes: bool = False
    limit_depth: bool = False
    check_strings: bool = True


FROM_VALUE = Ctx()
"""From a value that must first be a valid ``serde_json::Value`` (checked)."""
FROM_CHECKED_VALUE = Ctx(check_strings=False)
"""From a ``Value`` that :func:`fakecoord.wire.validate_value` already checked."""
BUFFERED = Ctx(from_bytes=True, check_strings=False)
"""Inside an untagged or internally tagged enum read from bytes: serde buffered
(and so checked) the whole value first; duplicates are still seen, depth no longer."""


def from_bytes(body: bytes | bytearray | memoryview) -> Ctx:
    """The context for decoding ``body`` as ``serde_json::from_slice`` does."""
    return Ctx(from_bytes=True, limit_depth=True, check_strings=wire.may_hold_escapes(body))


def _enter(path: str, ctx: Ctx, depth: int) -> int:
    depth += 1
    if ctx.limit_depth and depth > wire.MAX_DEPTH:
        raise DecodeError(
            path,
            f"at most {wire.MAX_DEPTH} nested arrays/objects",
            got_text="deeper nesting (serde_json: recursion limit exceeded)",
        )
    return depth


class Type:
    """A Rust type as it appears on the wire."""

    rust: ClassVar[str]
    """The Rust spelling (``Option<String>``), for messages and docs."""
    expected: ClassVar[str]
    """What a message says was expected (``a string``)."""

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        """``value`` decoded as this type; raises :class:`DecodeError` at ``path``."""
        raise NotImplementedError

    def refuse(self, value: builtins.object, path: str, note: str = "") -> DecodeError:
        expected = f"{self.expected}{note}"
        if isinstance(value, NumberOutOfRange):
            return wire.number_error(value, path, expected)
        return DecodeError(path, expected, value)


# ---------------------------------------------------------------------------
# Scalars


@dataclass(frozen=True)
class Str(Type):
    """``String`` (also ``PathBuf`` and ``ContentId`` on the wire).

    ``role`` tells derivations what the string means: ``"model_id"`` (a live
    handle: a worker must refuse an unknown one), ``"released_model_id"``
    (``release_model``'s: unknown ones are acked), ``"path"``, ``"device"``,
    ``"schema_hash"``, or None.
    """

    role: str | None = None
    rust: ClassVar[str] = "String"
    expected: ClassVar[str] = "a string"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if not isinstance(value, str):
            raise self.refuse(value, path)
        return wire.check_string(value, path) if ctx.check_strings else value


@dataclass(frozen=True)
class Int(Type):
    """A Rust integer type: ``u32``, ``u64`` (``usize`` on 64-bit) or ``i64``."""

    name: str
    low: int
    high: int

    @property
    def rust(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"an integer in {self.low}..={self.high}"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if type(value) is not int or not self.low <= value <= self.high:
            raise self.refuse(value, path)
        return value


U32 = Int("u32", 0, 2**32 - 1)
U64 = Int("u64", 0, 2**64 - 1)
I64 = Int("i64", -(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Float(Type):
    """``f64``: any integer or finite float (kept in its JSON form)."""

    rust: ClassVar[str] = "f64"
    expected: ClassVar[str] = "a number"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if wire.f64_of(value) is None:
            if isinstance(value, float) and not isinstance(value, BigInteger):
                raise self.refuse(value, path, " (finite: JSON has no NaN/Infinity)")
            if isinstance(value, (int, NumberOutOfRange)) and not isinstance(value, bool):
                raise self.refuse(value, path, " within the f64 range")
            raise self.refuse(value, path)
        return value


@dataclass(frozen=True)
class Bool(Type):
    rust: ClassVar[str] = "bool"
    expected: ClassVar[str] = "a boolean"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if type(value) is not bool:
            raise self.refuse(value, path)
        return value


@dataclass(frozen=True)
class Unit(Type):
    """``()``: JSON null."""

    rust: ClassVar[str] = "()"
    expected: ClassVar[str] = "null"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if value is not None:
            raise self.refuse(value, path)
        return None


@dataclass(frozen=True)
class Value(Type):
    """``serde_json::Value``: any JSON."""

    rust: ClassVar[str] = "serde_json::Value"
    expected: ClassVar[str] = "any JSON value"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if ctx.limit_depth:
            return wire.validate_value(value, path, depth=depth, strings=ctx.check_strings)
        if ctx.check_strings:
            return wire.validate_value(value, path, max_depth=None)
        return value


STRING = Str()
BOOL = Bool()
F64 = Float()
UNIT = Unit()
JSON_VALUE = Value()


# ---------------------------------------------------------------------------
# Containers


@dataclass(frozen=True)
class Option(Type):
    """``Option<T>``: null is None; a missing struct field is None too."""

    inner: Type

    @property
    def rust(self) -> str:  # type: ignore[override]
        return f"Option<{self.inner.rust}>"

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"{self.inner.expected} or null"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if value is None:
            return None
        return self.inner.decode(value, path, ctx, depth)


@dataclass(frozen=True)
class Vec(Type):
    """``Vec<T>`` (and ``BTreeSet<T>``): a JSON array."""

    item: Type

    @property
    def rust(self) -> str:  # type: ignore[override]
        return f"Vec<{self.item.rust}>"

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"an array ({self.rust})"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if not isinstance(value, list):
            raise self.refuse(value, path)
        depth = _enter(path, ctx, depth)
        decode = self.item.decode
        out = [decode(item, f"{path}[{i}]", ctx, depth) for i, item in enumerate(value)]
        return value if all(a is b for a, b in zip(out, value, strict=True)) else out


@dataclass(frozen=True)
class Map(Type):
    """``BTreeMap<String, V>`` / ``HashMap``: an object; a repeated key keeps its last value."""

    value: Type
    name: str | None = None

    @property
    def rust(self) -> str:  # type: ignore[override]
        return self.name or f"BTreeMap<String, {self.value.rust}>"

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"an object ({self.rust})"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if not isinstance(value, dict):
            raise self.refuse(value, path)
        depth = _enter(path, ctx, depth)
        changed = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise DecodeError(path, "an object with string keys", got_text=repr(key))
            if ctx.check_strings:
                wire.check_string(key, path)
            decoded = self.value.decode(item, join(path, key), ctx, depth)
            if decoded is not item:
                changed[key] = decoded
        return {**value, **changed} if changed else value


# ---------------------------------------------------------------------------
# Structs


@dataclass(frozen=True)
class Field:
    """One struct field.

    ``default``: ``#[serde(default)]`` (the value given when the field is
    absent) or :data:`MISSING`.  In a params struct it is the worker
    contract instead: a worker must accept the field's absence (and the
    conformance suite does not demand a refusal).  ``checked`` says how far a
    worker must refuse an ill-typed value here: ``"full"``, ``"shallow"`` (only
    a value of the wrong JSON kind: a refs list whose refs are the
    workload's business) or ``"no"``.  ``accepted``: the only values the
    coordinator goes on with after decoding (a check beyond serde, such as
    hello's protocol version), with the phrase that says so.
    """

    name: str
    type: Type
    default: builtins.object = MISSING
    checked: str = "full"
    accepted: tuple[tuple[builtins.object, ...], str] | None = None

    @property
    def optional(self) -> bool:
        """May be absent (a default, or an ``Option`` that serde reads as None)."""
        return self.default is not MISSING or isinstance(self.type, Option)

    def absent(self) -> builtins.object:
        """The value serde gives an absent field (raises ``LookupError`` when it refuses)."""
        if self.default is not MISSING:
            return _copy(self.default)
        if isinstance(self.type, Option):
            return None
        raise LookupError(self.name)


def _copy(value: builtins.object) -> builtins.object:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Struct(Type):
    """A ``#[derive(Deserialize)]`` struct: unknown fields are accepted unless
    ``deny_unknown_fields`` (``#[serde(deny_unknown_fields)]``; no type of
    this protocol sets it)."""

    name: str
    fields: tuple[Field, ...] = ()
    deny_unknown_fields: bool = False

    @property
    def rust(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a JSON object (struct {self.name})"

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if isinstance(value, dict):
            return self.decode_fields(value, path, ctx, _enter(path, ctx, depth))
        if isinstance(value, list):
            return self.decode_sequence(value, path, ctx, _enter(path, ctx, depth))
        raise self.refuse(value, path)

    def decode_fields(
        self, obj: Mapping[str, builtins.object], path: str, ctx: Ctx, depth: int
    ) -> builtins.object:
        """The object form (``depth`` already counts ``obj`` itself)."""
        if ctx.from_bytes and isinstance(obj, JsonObject) and obj.duplicates:
            for f in self.fields:
                if f.name in obj.duplicates:
                    raise DecodeError(
                        join(path, f.name),
                        "each field once",
                        got_text=f"duplicate key {f.name!r} (serde: duplicate field "
                        f"`{f.name}` in struct {self.name})",
                    )
        if ctx.check_strings:  # serde_json parses every key, known or not
            for key in obj:
                wire.check_string(key, path)
        if self.deny_unknown_fields:
            for key in obj:
                if key not in self.names:
                    raise DecodeError(
                        join(path, key),
                        f"one of the fields of {self.name} ({', '.join(self.names)})",
                        got_text=f"unknown field {key!r} (deny_unknown_fields)",
                    )
        changed: dict[str, builtins.object] = {}
        for f in self.fields:
            where = join(path, f.name)
            if f.name in obj:
                item = obj[f.name]
                decoded = f.type.decode(item, where, ctx, depth)
                if f.accepted is not None and decoded not in f.accepted[0]:
                    raise DecodeError(where, f.accepted[1], decoded)
                if decoded is not item:
                    changed[f.name] = decoded
            else:
                try:
                    changed[f.name] = f.absent()
                except LookupError:
                    raise DecodeError(where, f.type.expected) from None
        if not changed and type(obj) in (dict, JsonObject):
            return obj
        return {**obj, **changed}

    def decode_sequence(
        self, items: Sequence[builtins.object], path: str, ctx: Ctx, depth: int
    ) -> dict[str, builtins.object]:
        """The array form: fields in order; only ``#[serde(default)]`` ones may be left off."""
        if len(items) > len(self.fields):
            raise DecodeError(
                path,
                f"{self.expected} or an array of at most {len(self.fields)} fields",
                items,
            )
        out: dict[str, builtins.object] = {}
        for i, f in enumerate(self.fields):
            if i < len(items):
                out[f.name] = f.type.decode(items[i], f"{path}[{i}]", ctx, depth)
                if f.accepted is not None and out[f.name] not in f.accepted[0]:
                    raise DecodeError(f"{path}[{i}]", f.accepted[1], out[f.name])
            elif f.default is not MISSING:
                out[f.name] = _copy(f.default)
            else:
                raise DecodeError(
                    path,
                    f"{self.expected}, or an array of its fields in order "
                    f"({', '.join(self.names)})",
                    items,
                )
        return out


# ---------------------------------------------------------------------------
# Enums


@dataclass(frozen=True)
class Variant:
    """An enum variant: unit (``payload`` None), newtype (a type) or struct (a :class:`Struct`)."""

    name: str
    payload: Type | None = None

    @property
    def is_struct(self) -> bool:
        return isinstance(self.payload, Struct)


@dataclass(frozen=True)
class Enum(Type):
    """An externally tagged enum: ``"Unit"``, ``{"Newtype": value}``, ``{"Struct": {...}}``."""

    name: str
    variants: tuple[Variant, ...]

    @property
    def rust(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def expected(self) -> str:  # type: ignore[override]
        forms = []
        for v in self.variants:
            if v.payload is None:
                forms.append(f'"{v.name}"')
            elif isinstance(v.payload, Struct):
                inner = ", ".join(f"{f.name}: {f.type.rust}" for f in v.payload.fields)
                forms.append(f'{{"{v.name}": {{{inner}}}}}')
            else:
                forms.append(f'{{"{v.name}": {v.payload.rust}}}')
        return f"a {self.name}: " + ", ".join(forms[:-1]) + f" or {forms[-1]}"

    def variant(self, name: str) -> Variant | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if isinstance(value, str):
            variant = self.variant(value)
            if variant is None:
                raise self.refuse(value, path, " (unknown variant)")
            if variant.payload is not None:
                raise self.refuse(value, path, f" (variant {value} carries a value)")
            return value
        if not isinstance(value, dict):
            raise self.refuse(value, path)
        depth = _enter(path, ctx, depth)
        duplicated = ctx.from_bytes and isinstance(value, JsonObject) and value.duplicates
        if len(value) != 1 or duplicated:
            raise self.refuse(value, path, " (an object with a single key)")
        ((name, payload),) = value.items()
        if ctx.check_strings:
            wire.check_string(name, path)
        variant = self.variant(name)
        if variant is None:
            raise self.refuse(value, path, " (unknown variant)")
        where = join(path, name)
        if variant.payload is None:
            if payload is not None:
                raise DecodeError(where, f"null (unit variant {name})", payload)
            return name
        if variant.is_struct:
            struct: Struct = variant.payload  # type: ignore[assignment]
            if isinstance(payload, dict):
                decoded = struct.decode_fields(payload, where, ctx, _enter(where, ctx, depth))
            elif isinstance(payload, list) and ctx.from_bytes:
                decoded = struct.decode_sequence(payload, where, ctx, _enter(where, ctx, depth))
            else:
                raise struct.refuse(payload, where)
        else:
            decoded = variant.payload.decode(payload, where, ctx, depth)
        return value if decoded is payload else {name: decoded}


@dataclass(frozen=True)
class Untagged(Type):
    """``#[serde(untagged)]``: the first variant that decodes wins (in declaration order)."""

    name: str
    variants: tuple[tuple[str, Type], ...]
    lossless_integers: bool = False
    description: str = ""

    @property
    def rust(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a {self.name} ({self.description})" if self.description else f"a {self.name}"

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if ctx.from_bytes:  # serde buffers the whole value first
            limit = wire.MAX_DEPTH if ctx.limit_depth else None
            wire.validate_value(
                value, path, depth=depth, max_depth=limit, strings=ctx.check_strings
            )
            ctx = BUFFERED
        if self.lossless_integers and (type(value) is int or isinstance(value, BigInteger)):
            ints = [t for _, t in self.variants if isinstance(t, Int)]
            if isinstance(value, BigInteger) or not any(t.low <= value <= t.high for t in ints):
                span = " or ".join(t.rust for t in ints)
                raise DecodeError(
                    path,
                    f"a {self.name} integer within {span} (serde would turn it into a float)",
                    value,
                )
        for _, variant in self.variants:
            try:
                return variant.decode(value, path, ctx, depth)
            except DecodeError:
                continue
        raise self.refuse(value, path)


@dataclass(frozen=True)
class Tagged(Type):
    """An internally tagged enum (``#[serde(tag = "kind")]``): each variant is a
    struct whose object carries the tag."""

    name: str
    tag: str
    variants: tuple[tuple[str, Struct], ...]

    @property
    def rust(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def expected(self) -> str:  # type: ignore[override]
        kinds = ", ".join(f'"{name}"' for name, _ in self.variants)
        return f'a {self.name} object with a string "{self.tag}" ({kinds})'

    def variant(self, name: builtins.object) -> Struct | None:
        for tag, struct in self.variants:
            if tag == name:
                return struct
        return None

    def decode(self, value: builtins.object, path: str, ctx: Ctx, depth: int) -> builtins.object:
        if ctx.from_bytes:  # serde buffers the whole value first
            limit = wire.MAX_DEPTH if ctx.limit_depth else None
            wire.validate_value(
                value, path, depth=depth, max_depth=limit, strings=ctx.check_strings
            )
            ctx = BUFFERED
        where = join(path, self.tag)
        if isinstance(value, list):
            if not value:
                raise DecodeError(where, f'a "{self.tag}" naming a variant')
            struct = self._struct(value[0], where)
            rest = struct.decode_sequence(value[1:], path, ctx, depth + 1)
            return {self.tag: value[0], **rest}
        if not isinstance(value, dict):
            raise self.refuse(value, path)
        if isinstance(value, JsonObject) and self.tag in value.duplicates and ctx.from_bytes:
            raise DecodeError(
                where, "each field once", got_text=f"duplicate key {self.tag!r} (the tag)"
            )
        if self.tag not in value:
            raise DecodeError(where, f"a string naming the variant ({self.expected})")
        struct = self._struct(value[self.tag], where)
        rest = {k: v for k, v in value.items() if k != self.tag}
        if isinstance(value, JsonObject):
            rest = JsonObject(rest, value.duplicates)
        decoded = struct.decode_fields(rest, path, ctx, depth + 1)
        if decoded is rest:
            return value
        return {self.tag: value[self.tag], **decoded}  # type: ignore[dict-item]

    def _struct(self, tag: builtins.object, where: str) -> Struct:
        struct = self.variant(tag) if isinstance(tag, str) else None
        if struct is None:
            names = ", ".join(f'"{name}"' for name, _ in self.variants)
            raise DecodeError(where, f"one of {names} (unknown variant)", tag)
        return struct


# ---------------------------------------------------------------------------
# Entry points


def decode(
    t: Type, value: builtins.object, path: str = "", *, ctx: Ctx = FROM_VALUE
) -> builtins.object:
    """``value`` decoded as ``t`` (``serde_json::from_value``, or per ``ctx``).

    In the default mode, ``value`` must first be a valid ``serde_json::Value``
    (checked: no lone surrogates, no NaN, no sets).  Raises :class:`DecodeError`.
    """
    if not ctx.from_bytes and ctx.check_strings:
        wire.validate_value(value, path, max_depth=None)
        ctx = FROM_CHECKED_VALUE
    return t.decode(value, path, ctx, 0)


def decode_bytes(t: Type, body: bytes | bytearray | memoryview, path: str = "") -> builtins.object:
    """``serde_json::from_slice::<T>(body)``; raises :class:`DecodeError`."""
    return t.decode(wire.parse_json(body, path), path, from_bytes(body), 0)


# ---------------------------------------------------------------------------
# Walking types (for the derivations in spec, strategies and conformance)


def children(t: Type) -> list[Type]:
    """The types directly inside ``t``."""
    if isinstance(t, (Option,)):
        return [t.inner]
    if isinstance(t, Vec):
        return [t.item]
    if isinstance(t, Map):
        return [t.value]
    if isinstance(t, Struct):
        return [f.type for f in t.fields]
    if isinstance(t, Enum):
        return [v.payload for v in t.variants if v.payload is not None]
    if isinstance(t, Untagged):
        return [v for _, v in t.variants]
    if isinstance(t, Tagged):
        return [s for _, s in t.variants]
    return []


def walk(t: Type) -> list[Type]:
    """``t`` and every type inside it, depth first (each once)."""
    seen: list[Type] = []
    stack = [t]
    while stack:
        node = stack.pop()
        if any(node is s for s in seen):
            continue
        seen.append(node)
        stack.extend(reversed(children(node)))
    return seen


__all__ = [
    "JSON_VALUE",
    "BUFFERED",
    "BOOL",
    "F64",
    "I64",
    "MISSING",
    "STRING",
    "U32",
    "U64",
    "UNIT",
    "FROM_CHECKED_VALUE",
    "FROM_VALUE",
    "Bool",
    "Ctx",
    "Enum",
    "Field",
    "Float",
    "Int",
    "Map",
    "Option",
    "Str",
    "Struct",
    "Tagged",
    "Type",
    "Unit",
    "Untagged",
    "Value",
    "Variant",
    "Vec",
    "children",
    "decode",
    "decode_bytes",
    "from_bytes",
    "walk",
]
