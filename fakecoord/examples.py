"""Valid and ill-typed example values, derived from the spec's types.

Deterministic and pure: the conformance suite builds its error-path
requests from these (:func:`required_params`, :func:`model_slots`,
:func:`valid_params`, :func:`ill_typed_params`), and
:mod:`fakecoord.strategies` mutates valid results with :func:`mutations`.

An *ill-typed* value is one of the wrong JSON kind or out of range for the
type (``7`` for a string, ``-1`` and ``2**32`` for a ``u32``, ``"Bogus"`` for
an enum), inside containers too (an element, a struct field, a variant's
payload).  serde refuses every one of them; in params, a worker must refuse
them as far as the field's ``checked`` says (see :class:`fakecoord.schema.Field`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .schema import (
    Bool,
    Enum,
    Float,
    Int,
    Map,
    Option,
    Str,
    Struct,
    Tagged,
    Type,
    Unit,
    Untagged,
    Value,
    Vec,
    _copy,
)
from .spec import METHODS, method
from .wire import join

MODEL_ROLES = ("model_id", "released_model_id")


@dataclass
class Examples:
    """What valid example values are made of: the device, the schema hash, the
    model handles to use in turn, and the directory paths live in."""

    device: str = "cpu"
    schema_hash: str = "example-schema-hash"
    models: Sequence[str] = ("m1", "m2")
    root: str = "/nonexistent/fakecoord-example"
    _cycle: Iterator[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.models)

    def next_model(self) -> str:
        return next(self._cycle)

    def path(self, name: str) -> str:
        """A path for field ``name`` (artifacts end in ``.safetensors``, as the coordinator names them)."""
        leaf = "artifact.safetensors" if name == "artifact_path" else name
        return f"{self.root}/{leaf}"


def example(t: Type, ex: Examples, name: str = "value") -> Any:
    """A valid value of ``t`` (every struct field present, Options null, lists empty)."""
    if isinstance(t, Str):
        if t.role in MODEL_ROLES:
            return ex.next_model()
        if t.role == "path":
            return ex.path(name)
        if t.role == "device":
            return ex.device
        if t.role == "schema_hash":
            return ex.schema_hash
        return f"example-{name.replace('_', '-')}"
    if isinstance(t, Int):
        return 1 if t.low <= 1 <= t.high else t.low
    if isinstance(t, Float):
        return 1.0
    if isinstance(t, Bool):
        return True
    if isinstance(t, (Unit, Option)):
        return None
    if isinstance(t, Value):
        return {}
    if isinstance(t, Vec):
        return []
    if isinstance(t, Map):
        return {}
    if isinstance(t, Struct):
        return {f.name: example(f.type, ex, f.name) for f in t.fields}
    if isinstance(t, Enum):
        variant = next((v for v in t.variants if v.payload is None), t.variants[0])
        if variant.payload is None:
            return variant.name
        return {variant.name: example(variant.payload, ex, name)}
    if isinstance(t, Untagged):
        return example(t.variants[0][1], ex, name)
    if isinstance(t, Tagged):
        tag, struct = t.variants[0]
        return {t.tag: tag, **example(struct, ex, name)}
    raise TypeError(f"no example for {t!r}")


@dataclass(frozen=True)
class Bad:
    """An ill-typed value and the innermost struct field it sits in (None: the value itself)."""

    value: Any
    field: str | None = None


def _wrong_kind(t: Type) -> list[Any]:
    """Values of a JSON kind ``t`` never takes."""
    if isinstance(t, Str):
        return [7, None, ["x"]]
    if isinstance(t, Int):
        return [t.low - 1, t.high + 1, "2", 1.5]
    if isinstance(t, Float):
        return ["half", None]
    if isinstance(t, Bool):
        return ["yes", 1]
    if isinstance(t, Unit):
        return [0]
    if isinstance(t, Vec):
        return ["*"]
    if isinstance(t, Map):
        return [["x"]]
    if isinstance(t, Struct):
        return ["*", 5]
    if isinstance(t, Enum):
        return ["Bogus"]
    if isinstance(t, Untagged):
        return [None, [1.0], {"a": 1}] + ([2**63] if t.lossless_integers else [])
    if isinstance(t, Tagged):
        return [5]
    if isinstance(t, Option):
        return [v for v in _wrong_kind(t.inner) if v is not None]
    return []  # a Value takes anything


def ill_typed(t: Type, valid: Any, ex: Examples, checked: str = "full") -> list[Bad]:
    """Ill-typed replacements for ``valid`` (a valid value of ``t``), outermost first.

    ``checked="shallow"`` keeps to the wrong kind of the value and of its
    elements; ``"no"`` gives nothing.
    """
    if checked == "no":
        return []
    bad = [Bad(v) for v in _wrong_kind(t)]
    inner = t.inner if isinstance(t, Option) else t
    if isinstance(inner, Vec):
        item = example(inner.item, ex)
        if isinstance(inner.item, (Struct, Tagged)):
            bad.append(Bad(item))  # one element where the list belongs
        if checked == "shallow":
            bad += [Bad([v]) for v in _wrong_kind(inner.item)[:1]]
        else:
            bad += [Bad([b.value], b.field) for b in ill_typed(inner.item, item, ex)]
    elif isinstance(inner, Struct) and checked == "full":
        base = valid if isinstance(valid, dict) else example(inner, ex)
        for f in inner.fields:
            for b in ill_typed(f.type, base.get(f.name), ex, f.checked):
                bad.append(Bad({**base, f.name: b.value}, b.field or f.name))
    elif isinstance(inner, Enum) and checked == "full":
        for v in inner.variants:
            if v.payload is None:
                continue
            payload = example(v.payload, ex)
            if isinstance(v.payload, Struct):  # a struct variant: each field ill-typed in turn
                for f in v.payload.fields:
                    wrong = _wrong_kind(f.type)[0]
                    bad.append(
                        Bad({v.name: {**payload, f.name: wrong}})
                    )  # the enum is one parameter
            else:
                bad += [Bad({v.name: b.value}) for b in ill_typed(v.payload, payload, ex)[:1]]
    return bad


# ---------------------------------------------------------------------------
# Params of one method (the conformance suite's error-path tables)


def object_methods() -> list[str]:
    """Methods whose params are an object (the others take ``null``)."""
    return [name for name, m in METHODS.items() if m.params is not None]


def required_params(name: str) -> list[str]:
    """The params fields a worker must refuse a request without, in spec order."""
    params = method(name).params
    return [] if params is None else [f.name for f in params.fields if not f.optional]


def model_slots() -> list[tuple[str, str]]:
    """``(method, field)`` for every params field holding a live model handle: a
    worker must refuse an unknown one there (``candidates``: inside each candidate)."""
    slots = []
    for name, m in METHODS.items():
        for f in m.params.fields if m.params else ():
            inner = f.type.item if isinstance(f.type, Vec) else f.type
            if isinstance(inner, Str) and inner.role == "model_id":
                slots.append((name, f.name))
            elif isinstance(inner, Struct) and any(
                isinstance(g.type, Str) and g.type.role == "model_id" for g in inner.fields
            ):
                slots.append((name, f.name))
    return slots


def with_model(name: str, field_name: str, params: dict, model_id: str, ex: Examples) -> dict:
    """``params`` with the handle at slot ``field_name`` replaced by ``model_id``."""
    f = method(name).params.field(field_name)  # type: ignore[union-attr]
    if isinstance(f.type, Vec):
        element = example(f.type.item, ex)
        for g in f.type.item.fields:  # type: ignore[attr-defined]
            if isinstance(g.type, Str) and g.type.role == "model_id":
                element[g.name] = model_id
        return {**params, field_name: [element]}
    return {**params, field_name: model_id}


def valid_params(name: str, ex: Examples) -> dict:
    """Params of ``name`` that a worker accepts as well-typed (every field given)."""
    params = method(name).params
    if params is None:
        raise ValueError(f"{name} takes null params")
    return example(params, Examples(ex.device, ex.schema_hash, ex.models, ex.root), name)


@dataclass(frozen=True)
class IllTyped:
    """One ill-typed request: ``params[field] = value``; the refusal must mention ``mention``."""

    method: str
    field: str
    value: Any
    mention: str


def ill_typed_params(name: str, ex: Examples) -> list[IllTyped]:
    """Every ill-typed replacement of a checked params field of ``name``."""
    params = method(name).params
    if params is None:
        return []
    valid = valid_params(name, ex)
    out = []
    for f in params.fields:
        for b in ill_typed(f.type, valid[f.name], ex, f.checked):
            out.append(IllTyped(name, f.name, b.value, b.field or f.name))
    return out


# ---------------------------------------------------------------------------
# Mutations of a whole value (for invalid results)


def mutations(t: Type, value: Any, path: str = "result") -> list[tuple[str, Any]]:
    """``(path, mutated value)`` pairs, each a copy of ``value`` that serde refuses
    at ``path``: an ill-typed value there, or a required field removed."""
    ex = Examples()
    out: list[tuple[str, Any]] = [(path, b.value) for b in ill_typed(t, value, ex)[:3]]
    inner = t.inner if isinstance(t, Option) else t
    if value is None:
        return out
    if isinstance(inner, Struct) and isinstance(value, dict):
        for f in inner.fields:
            where = join(path, f.name)
            if f.name not in value:
                continue
            if not f.optional:
                out.append((where, {k: v for k, v in value.items() if k != f.name}))
            for sub, bad in mutations(f.type, value[f.name], where):
                out.append((sub, {**value, f.name: bad}))
    elif isinstance(inner, (Vec, Map)) and value:
        items = list(enumerate(value)) if isinstance(value, list) else list(value.items())
        key, item = items[0]
        where = f"{path}[{key}]" if isinstance(value, list) else join(path, str(key))
        for sub, bad in mutations(
            inner.item if isinstance(inner, Vec) else inner.value, item, where
        ):
            copy: Any = _copy(value)
            copy[key] = bad
            out.append((sub, copy))
    elif isinstance(inner, Enum) and isinstance(value, dict) and len(value) == 1:
        ((name, payload),) = value.items()
        variant = inner.variant(name)
        if variant is not None and variant.payload is not None and not variant.is_struct:
            for sub, bad in mutations(variant.payload, payload, join(path, name)):
                out.append((sub, {name: bad}))
    return out


__all__ = [
    "Bad",
    "Examples",
    "IllTyped",
    "example",
    "ill_typed",
    "ill_typed_params",
    "model_slots",
    "mutations",
    "object_methods",
    "required_params",
    "valid_params",
    "with_model",
]
