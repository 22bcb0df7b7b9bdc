"""Hypothesis strategies derived from the spec: valid params, valid and invalid results.

For fakecoord's own tests and for fuzzing either side of the wire (imports
hypothesis, so nothing else in fakecoord imports this module).

- :func:`values` draws valid values of a wire type.  With ``serde_forms``
  it also draws the other forms serde accepts: absent ``Option`` and
  ``#[serde(default)]`` fields, unknown extra fields, a struct as an array
  of its fields, ``{"Unit": null}`` for a unit variant.
- :func:`params` draws valid params of a method (model handles from a pool,
  paths under a root), :func:`results` valid results (serde's forms included),
  :func:`invalid_results` ``(path, result)`` pairs that serde refuses at ``path``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from . import examples, schema
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
)
from .spec import method

TEXT = st.text(max_size=12)
"""Strings: hypothesis never draws lone surrogates here (category Cs is excluded)."""
FINITE = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | FINITE | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
"""Any ``serde_json::Value``."""
UNKNOWN_KEYS = st.text(min_size=1, max_size=8).map(lambda k: f"x-unknown-{k}")


def values(
    t: Type,
    *,
    serde_forms: bool = False,
    models: Sequence[str] | None = None,
    root: str = "/nonexistent/fakecoord-strategy",
    name: str = "value",
) -> st.SearchStrategy[Any]:
    """Valid values of ``t`` (see the module docstring)."""

    def sub(inner: Type, inner_name: str = name) -> st.SearchStrategy[Any]:
        return values(inner, serde_forms=serde_forms, models=models, root=root, name=inner_name)

    if isinstance(t, Str):
        if t.role in examples.MODEL_ROLES and models:
            return st.sampled_from(list(models))
        if t.role == "path":
            return TEXT.map(lambda leaf: f"{root}/{name}-{leaf.replace('/', '_')}")
        return TEXT
    if isinstance(t, Int):
        return st.integers(t.low, t.high)
    if isinstance(t, Float):
        return FINITE | st.integers(-(2**63), 2**64 - 1)
    if isinstance(t, Bool):
        return st.booleans()
    if isinstance(t, Unit):
        return st.none()
    if isinstance(t, Value):
        return JSON
    if isinstance(t, Option):
        return st.none() | sub(t.inner)
    if isinstance(t, Vec):
        return st.lists(sub(t.item), max_size=3)
    if isinstance(t, Map):
        return st.dictionaries(TEXT, sub(t.value), max_size=3)
    if isinstance(t, Struct):
        return _struct(t, sub, serde_forms)
    if isinstance(t, Enum):
        options: list[st.SearchStrategy[Any]] = []
        for v in t.variants:
            if v.payload is None:
                options.append(st.just(v.name))
                if serde_forms:
                    options.append(st.just({v.name: None}))
            else:
                options.append(sub(v.payload).map(_wrapped_in(v.name)))
        return st.one_of(options)
    if isinstance(t, Untagged):
        integers = [v for _, v in t.variants if isinstance(v, Int)]
        return st.one_of([sub(v) for _, v in t.variants]).filter(
            lambda x: (
                not t.lossless_integers
                or type(x) is not int
                or any(i.low <= x <= i.high for i in integers)
            )
        )
    if isinstance(t, Tagged):
        return st.one_of(
            [
                _struct(s, sub, serde_forms, sequence=False).map(_tagged(t.tag, tag))
                for tag, s in t.variants
            ]
        )
    raise TypeError(f"no strategy for {t!r}")


def _wrapped_in(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda payload: {name: payload}


def _tagged(key: str, tag: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {key: tag, **body}


def _struct(
    t: Struct, sub: Any, serde_forms: bool, *, sequence: bool = True
) -> st.SearchStrategy[Any]:
    def field(f: Any) -> st.SearchStrategy[Any]:
        return st.sampled_from(f.accepted[0]) if f.accepted else sub(f.type, f.name)

    required = {f.name: field(f) for f in t.fields if not (serde_forms and f.optional)}
    optional = {f.name: field(f) for f in t.fields if serde_forms and f.optional}
    objects = st.fixed_dictionaries(required, optional=optional)
    if not serde_forms:
        return objects
    extras = st.dictionaries(UNKNOWN_KEYS, JSON, max_size=0 if t.deny_unknown_fields else 2)
    objects = st.tuples(objects, extras).map(lambda pair: {**pair[1], **pair[0]})
    if not sequence or not t.fields:
        return objects
    # The array form: every field up to the last one without #[serde(default)], then any
    # of the defaulted ones.
    needed = max((i + 1 for i, f in enumerate(t.fields) if f.default is schema.MISSING), default=0)
    arrays = st.integers(needed, len(t.fields)).flatmap(
        lambda n: st.tuples(*(field(f) for f in t.fields[:n])).map(list)
    )
    return objects | arrays


def params(
    name: str, *, models: Sequence[str] = ("m1", "m2"), root: str = "/nonexistent/fakecoord"
) -> st.SearchStrategy[Any]:
    """Valid params of method ``name`` (null for hello, capability_probe and shutdown)."""
    m = method(name)
    if m.params is None:
        return st.none()
    return values(m.params, models=models, root=root)


def results(name: str, *, serde_forms: bool = True) -> st.SearchStrategy[Any]:
    """Valid results of method ``name`` (as the worker may send them)."""
    return values(method(name).result, serde_forms=serde_forms)


def invalid_results(name: str) -> st.SearchStrategy[tuple[str, Any]]:
    """``(path, result)``: a valid result of ``name`` mutated so that serde refuses it at ``path``."""
    m = method(name)
    return (
        values(m.result)
        .map(lambda valid: examples.mutations(m.result, valid))
        .filter(bool)
        .flatmap(st.sampled_from)
    )


__all__ = ["FINITE", "JSON", "TEXT", "invalid_results", "params", "results", "values"]
