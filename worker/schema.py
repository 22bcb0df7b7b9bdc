"""Declarative parameter schemas: JSON values in, typed values out (pure).

A params class is a frozen, keyword-only dataclass whose fields are declared
with :func:`param` and a schema *node*.  ``Record(cls).decode(value, path,
models)`` checks a JSON object field by field, in declaration order, and
builds the instance; the first problem raises
:class:`~worker.errors.ParamError` (or :class:`~worker.errors.UnknownModelError`)
naming its full path below ``params``, e.g. ``candidates[1].model_id``.
Keys a schema does not name are ignored: the coordinator may add fields.

A field with a default may be absent; a nullable node (:class:`FsPath` with
``optional=True``, :class:`FilterSpec`) also takes ``null`` for "absent".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ParamError, UnknownModelError
from .protocol import NO_FILTER, StateFilter, finite_float

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Models = Mapping[str, Any]
"""The live model table (handle -> state) that :class:`ModelId` resolves against."""

T = TypeVar("T", bound="DataclassInstance")
REQUIRED: Any = dataclasses.MISSING


def child(path: str, key: str) -> str:
    """The path of ``key`` inside the object at ``path`` (``""`` is params itself)."""
    return f"{path}.{key}" if path else key


class Node:
    """One schema node.  ``expected`` completes "expected ..." in messages;
    ``shape`` is its compact JSON shape inside an enum's description."""

    expected = "a value"
    shape = "any"

    def decode(self, value: Any, path: str, models: Models) -> Any:
        """Check ``value`` (found at ``path``) and return its decoded form; raises ParamError."""
        raise NotImplementedError

    def decode_missing(self, path: str, models: Models) -> Any:
        """A required key is absent: raises ParamError."""
        raise ParamError(path, f"{self.expected} (missing)")


def param(node: Node, default: Any = REQUIRED, *, wire: str | None = None) -> Any:
    """Declare a params field decoded by ``node`` from key ``wire`` (default: the
    field's name); without ``default`` the key is required."""
    return dataclasses.field(default=default, metadata={"node": node, "wire": wire})


def whole() -> Any:
    """Declare a field that receives the object as it arrived (for hooks that take it whole)."""
    return dataclasses.field(metadata={"whole": True})


@dataclasses.dataclass(frozen=True)
class Model:
    """A resolved model handle: the handle and the state behind it."""

    id: str
    state: Any


class Text(Node):
    """A string; non-empty unless ``allow_empty``."""

    expected = "a string"
    shape = "str"

    def __init__(self, *, allow_empty: bool = False) -> None:
        self.allow_empty = allow_empty

    def decode(self, value: Any, path: str, models: Models) -> str:
        if not isinstance(value, str):
            raise ParamError(path, "a string", value)
        if not value and not self.allow_empty:
            raise ParamError(path, "a non-empty string", value)
        return value


class FsPath(Node):
    """A non-empty filesystem path without NUL that the filesystem encoding can
    represent; with ``optional``, ``null`` decodes to None."""

    expected = "a string"
    shape = "str"

    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def decode(self, value: Any, path: str, models: Models) -> str | None:
        if value is None and self.optional:
            return None
        text = TEXT.decode(value, path, models)
        if "\x00" in text:
            raise ParamError(path, "a filesystem path without NUL bytes", value)
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            raise ParamError(
                path, "a path the filesystem encoding can represent (no lone surrogates)", value
            ) from None
        return text


class UInt(Node):
    """An integer in ``0..=maximum`` (``type(x) is int``: booleans are refused)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.expected = f"an integer in 0..={maximum}"
        self.shape = "int"

    def decode(self, value: Any, path: str, models: Models) -> int:
        if type(value) is not int or not 0 <= value <= self.maximum:
            raise ParamError(path, self.expected, value)
        return value


class Const(Node):
    """Exactly the integer ``value``."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.expected = str(value)
        self.shape = str(value)

    def decode(self, value: Any, path: str, models: Models) -> int:
        if type(value) is not int or value != self.value:
            raise ParamError(path, self.expected, value)
        return value


class Boolean(Node):
    """``true`` or ``false`` (integers are refused)."""

    expected = "a boolean"
    shape = "bool"

    def decode(self, value: Any, path: str, models: Models) -> bool:
        if type(value) is not bool:
            raise ParamError(path, self.expected, value)
        return value


class Number(Node):
    """A finite number (int or float), decoded as a float."""

    expected = "a finite number"
    shape = "float"

    def decode(self, value: Any, path: str, models: Models) -> float:
        number = finite_float(value)
        if number is None:
            raise ParamError(path, self.expected, value)
        return number


class AnyObject(Node):
    """Any JSON object, returned as is (its contents are the workload's business)."""

    def __init__(self, expected: str = "an object") -> None:
        self.expected = expected
        self.shape = "{...}"

    def decode(self, value: Any, path: str, models: Models) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ParamError(path, self.expected, value)
        return value


class AnyValue(Node):
    """Anything at all (the value is ignored)."""

    def decode(self, value: Any, path: str, models: Models) -> Any:
        return value


class NullParams(Node):
    """Params of a method that takes none: ``null`` (and, leniently, ``{}``)."""

    expected = "null"

    def decode(self, value: Any, path: str, models: Models) -> None:
        if value is not None and value != {}:
            raise ParamError(path, self.expected, value)
        return None


class ListOf(Node):
    """A list whose items all decode with ``item``."""

    expected = "a list"

    def __init__(self, item: Node) -> None:
        self.item = item
        self.shape = f"[{item.shape}]"

    def decode(self, value: Any, path: str, models: Models) -> list[Any]:
        if not isinstance(value, list):
            raise ParamError(path, self.expected, value)
        item = self.item
        return [item.decode(v, f"{path}[{i}]", models) for i, v in enumerate(value)]


class BatchRefs(Node):
    """A list of BatchRef objects, each with a string ``kind``, returned as is.

    Deliberately shallow: refs are the workload's business, and a deep check
    of 10k refs would cost more than decoding them.
    """

    expected = "a list"
    shape = "[BatchRef]"

    def decode(self, value: Any, path: str, models: Models) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise ParamError(path, self.expected, value)
        for i, ref in enumerate(value):
            if type(ref) is not dict or type(ref.get("kind")) is not str:
                raise ParamError(f"{path}[{i}]", 'a BatchRef object with a string "kind"', ref)
        return value


class Variants(Node):
    """An externally tagged enum: a unit variant is its name as a string, a
    newtype variant a one-key object ``{name: payload}``.  Returns the value as
    is (hooks receive the JSON form)."""

    def __init__(self, units: tuple[str, ...], newtypes: Mapping[str, Node] | None = None):
        self.units = units
        self.newtypes = dict(newtypes or {})
        shown = [f'"{u}"' for u in units] + [
            f'{{"{name}": {node.shape}}}' for name, node in self.newtypes.items()
        ]
        self.expected = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
        self.shape = self.expected

    def decode(self, value: Any, path: str, models: Models) -> Any:
        if isinstance(value, str):
            if value in self.units:
                return value
        elif isinstance(value, dict) and len(value) == 1:
            ((name, payload),) = value.items()
            node = self.newtypes.get(name) if isinstance(name, str) else None
            if node is not None:
                node.decode(payload, child(path, name), models)
                return value
        raise ParamError(path, self.expected, value)


class ModelId(Node):
    """A handle naming a live model, resolved to a :class:`Model`."""

    expected = "a string"
    shape = "handle"

    def decode(self, value: Any, path: str, models: Models) -> Model:
        handle = TEXT.decode(value, path, models)
        try:
            return Model(handle, models[handle])
        except KeyError:
            raise UnknownModelError(path, handle, list(models)) from None


class FilterSpec(Node):
    """A Filter ``{include_globs, exclude_globs}`` (both lists of non-blank globs
    without NUL, default empty) decoded to a :class:`StateFilter`; ``null`` means none."""

    expected = "an object {include_globs: [str], exclude_globs: [str]}"
    shape = "Filter"

    def decode(self, value: Any, path: str, models: Models) -> StateFilter:
        if value is None:
            return NO_FILTER
        if not isinstance(value, dict):
            raise ParamError(path, self.expected, value)
        unknown = set(value) - {"include_globs", "exclude_globs"}
        if unknown:
            raise ParamError(path, "only include_globs and exclude_globs", sorted(unknown))
        globs = []
        for key in ("include_globs", "exclude_globs"):
            patterns = value.get(key)
            if patterns is None:
                patterns = []
            if not isinstance(patterns, list):
                raise ParamError(child(path, key), "a list of glob strings", patterns)
            for i, pattern in enumerate(patterns):
                if not isinstance(pattern, str) or not pattern.strip() or "\x00" in pattern:
                    raise ParamError(
                        f"{child(path, key)}[{i}]", "a non-blank glob string without NUL", pattern
                    )
            globs.append(tuple(patterns))
        return StateFilter(globs[0], globs[1])


class Record(Node, Generic[T]):
    """A JSON object decoded into the params dataclass ``cls`` (see :func:`param`)."""

    def __init__(self, cls: type[T], expected: str = "an object") -> None:
        self.cls = cls
        self.expected = expected
        self.fields: list[tuple[str, str, Node, Any]] = []
        self.whole_field: str | None = None
        for f in dataclasses.fields(cls):
            if f.metadata.get("whole"):
                self.whole_field = f.name
            else:
                node = f.metadata["node"]
                self.fields.append((f.name, f.metadata["wire"] or f.name, node, f.default))
        self.shape = (
            "{" + ", ".join(f'"{key}": {node.shape}' for _, key, node, _ in self.fields) + "}"
        )

    def decode(self, value: Any, path: str, models: Models) -> T:
        if not isinstance(value, dict):
            raise ParamError(path, self.expected, value)
        kwargs: dict[str, Any] = {}
        for name, key, node, default in self.fields:
            if key in value:
                kwargs[name] = node.decode(value[key], child(path, key), models)
            elif default is REQUIRED:
                kwargs[name] = node.decode_missing(child(path, key), models)
            else:
                kwargs[name] = default
        if self.whole_field is not None:
            kwargs[self.whole_field] = value
        return self.cls(**kwargs)


TEXT = Text()
TEXT_ANY = Text(allow_empty=True)
PATH = FsPath()
OPTIONAL_PATH = FsPath(optional=True)
U32 = UInt(2**32 - 1)
U64 = UInt(2**64 - 1)
BOOL = Boolean()
NUMBER = Number()
MODEL = ModelId()
FILTER = FilterSpec()
BATCH_REFS = BatchRefs()
NULL = NullParams()
ANY = AnyValue()
