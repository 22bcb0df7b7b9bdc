"""Target "requests": frame bodies and every method's params, through the dispatcher.

:func:`~tools.fuzz.oracle.respond` (a :class:`worker.connection.Connection`
and :meth:`worker.service.Worker.handle`, as ``serve`` runs them) gets
arbitrary bytes, mutated requests and, for every method in the worker's
:data:`worker.methods.METHODS` (the subject), params drawn from the
coordinator's own spec (:func:`fakecoord.strategies.params`): valid ones,
then one field, a field at any depth, a number at any depth (a candidate's
``sample_weight`` as a 400-digit integer: issue #9 item 16), or several
replaced by edge values (huge integers, non-standard JSON, nesting at
the recursion limit, lone surrogates, long hostile strings) and path fields
pointed at FIFOs, links, directories and files inside a per-input sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from fakecoord import spec as coordinator_spec
from fakecoord import strategies as coordinator_strategies
from fakecoord.schema import Option, Str, Type
from worker import artifacts, packs
from worker.methods import METHODS
from worker.service import Worker

from .oracle import (
    FuzzFailure,
    bounded,
    check_fds,
    check_frame,
    check_no_partials,
    check_still_serving,
    fd_count,
    make_socket_file,
    respond,
    temporary_root,
    working_directory,
)
from .values import (
    EDGE_TEXT,
    HUGE_INTEGERS,
    JUNK,
    LONG_TEXT,
    NUMBERS,
    RAW_LEAVES,
    U64_MAX,
    Raw,
    dumps_raw,
)
from .workloads import QuickWorkload, TorchWorkload, make_model


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= U64_MAX


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(sorted(METHODS)))
    body = bytearray(dumps_raw({"id": draw(st.integers(1, 99)), "method": method, "params": None}))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del body[at:]
        elif op == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif body:
            del body[at]
    return bytes(body)


def check_bytes(body: bytes) -> None:
    """Any body gets one valid answer; a parseable request's id is echoed; hello still works."""
    worker = Worker(QuickWorkload())
    response = check_frame(respond(worker, body))
    try:
        message = json.loads(body.decode("utf-8"), parse_constant=_raise_value_error)
    except (UnicodeDecodeError, ValueError, RecursionError):
        message = None
    if isinstance(message, dict) and _is_u64(message.get("id")):
        if response["id"] != message["id"]:
            raise FuzzFailure(f"valid id {message['id']} not echoed: {response!r:.300}")
    elif response["id"] != 0 or response["ok"]:
        raise FuzzFailure(
            f"a body without a valid id must get ok:false with id 0: {response!r:.300}"
        )
    check_still_serving(worker)


def _raise_value_error(name: str) -> Any:
    raise ValueError(name)


@dataclass(frozen=True)
class BoxPath:
    """A path relative to the input's sandbox, resolved when the sandbox exists."""

    rel: str


@dataclass(frozen=True)
class AbsPath:
    """A read-only absolute path outside the sandbox (never used for methods that write)."""

    path: str


READ_ONLY_ABSOLUTE = ["/", "/dev/null", "/dev/zero", "/proc/self/status", "/proc/self/fd",
                      "/nonexistent-burn-p2p-fuzz"]  # fmt: skip
_LONG = "n" * 300
_SUB = st.text(st.characters(exclude_categories=(), exclude_characters="/"), min_size=1, max_size=6)
_SUB = _SUB.filter(lambda s: s not in (".", ".."))
_EDGE_REL = st.sampled_from(
    ["file", "fifo", "dir", "empty", "sock", "dangling", "link-out/new", "file/below", _LONG,
     f"{_LONG}/x", "new/", "a//b", "dir/../pack", "x\ud800", "x\udc80", "new\nline", "-", " "]
)  # fmt: skip
_FRESH = st.builds(lambda a, b: f"out-{a}" + (f"/{b}" if b else ""), _SUB, st.none() | _SUB)
READ_PATH = st.one_of(
    st.sampled_from(["pack", "link-pack", "link-out/pack", "artifact.safetensors",
                     "link-artifact"]).map(BoxPath),
    _EDGE_REL.map(BoxPath) | st.just("missing").map(BoxPath),
    st.sampled_from(READ_ONLY_ABSOLUTE).map(AbsPath),
)  # fmt: skip
WRITE_PATH = st.one_of(
    _FRESH.map(BoxPath),
    st.sampled_from(["pack", "dir", "link-pack", "artifact.safetensors"]).map(BoxPath),
    _EDGE_REL.map(BoxPath),
)
# Strings for path keys must never become paths outside the sandbox: no '/'.
PATH_JUNK = st.none() | st.booleans() | NUMBERS | _SUB | EDGE_TEXT | RAW_LEAVES
READ_ONLY_METHODS = frozenset({"load_model_artifact", "import_parameter_pack"})
"""Methods whose paths are only read (the spec says which fields are paths, not
which are written): only these may be pointed outside the sandbox."""
MODELS = ("m1", "m2")
HUGE_RAW = st.sampled_from(["9" * 400, "-" + "9" * 400, "1e400", "-1e400"]).map(Raw)
BAD_VALUES = JUNK | HUGE_INTEGERS | LONG_TEXT | RAW_LEAVES
REQUEST_IDS = st.integers(1, 2**64 - 1) | st.sampled_from(
    [0, U64_MAX, 2**64, -1, 1.0, "1", None, True, Raw("1e400"), Raw("NaN"), Raw("9" * 400)]
)


def is_path(t: Type) -> bool:
    """A field the coordinator fills with a filesystem path."""
    return (isinstance(t, Str) and t.role == "path") or (
        isinstance(t, Option) and isinstance(t.inner, Str) and t.inner.role == "path"
    )


def path_fields(method: str) -> list[str]:
    params = coordinator_spec.method(method).params
    fields = getattr(params, "fields", ())
    return [f.name for f in fields if is_path(f.type)]


def _leaf_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in ``value`` (nested dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _leaf_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _leaf_paths(item, (*prefix, i))
    return found


def _value_at(value: Any, where: tuple) -> Any:
    for step in where:
        value = value[step]
    return value


def _replace_at(value: Any, where: tuple, new: Any) -> None:
    for step in where[:-1]:
        value = value[step]
    value[where[-1]] = new


@st.composite
def method_inputs(draw: st.DrawFn) -> tuple[str, Any, Any]:
    """(method, params, request id): params valid by the coordinator's spec, then mutated."""
    method = draw(st.sampled_from(sorted(METHODS)), label="method")
    valid = draw(coordinator_strategies.params(method, models=MODELS), label="valid params")
    shape = draw(
        st.sampled_from(["valid", "valid", "one-bad", "deep-bad", "huge-number", "partial", "junk"])
    )
    if shape == "junk" or not isinstance(valid, dict):
        params = draw(st.none() | st.just({}) | JUNK, label="params") if shape == "junk" else valid
        return method, params, draw(REQUEST_IDS, label="id")
    params = json.loads(json.dumps(valid))  # a deep, mutable copy
    paths = path_fields(method)
    where = READ_PATH if method in READ_ONLY_METHODS else WRITE_PATH
    for key in paths:
        if params.get(key) is not None:
            params[key] = draw(where, label=key)
    if shape == "one-bad" and params:
        key = draw(st.sampled_from(sorted(params)), label="bad key")
        params[key] = draw(PATH_JUNK if key in paths else BAD_VALUES, label=f"bad {key}")
    elif shape == "deep-bad":
        positions = [p for p in _leaf_paths(params) if p[0] not in paths]
        if positions:
            at = draw(st.sampled_from(positions), label="bad position")
            _replace_at(params, at, draw(BAD_VALUES, label=f"bad {at}"))
    elif shape == "huge-number":
        numbers = [
            p for p in _leaf_paths(params)
            if type(_value_at(params, p)) in (int, float) and p[0] not in paths
        ]  # fmt: skip
        if numbers:
            at = draw(st.sampled_from(numbers), label="number position")
            _replace_at(params, at, draw(HUGE_INTEGERS | HUGE_RAW, label=f"huge {at}"))
    elif shape == "partial":
        params = {
            k: (v if draw(st.booleans()) else draw(PATH_JUNK if k in paths else BAD_VALUES))
            for k, v in params.items()
            if draw(st.booleans())
        }
    if draw(st.booleans()):
        params[draw(st.text(max_size=8), label="extra key")] = draw(JUNK, label="extra value")
    return method, params, draw(REQUEST_IDS, label="id")


def build_sandbox(root: Path) -> Path:
    """The per-input file tree that path params point into; returns the box directory."""
    box, outside = root / "box", root / "outside"
    box.mkdir()
    outside.mkdir()
    source = make_model(offset=100.0)
    packs.export_pack(source, box / "pack", "schema")
    packs.export_pack(source, outside / "pack", "schema")
    artifacts.save_state(source, box / "artifact.safetensors")
    (box / "dir").mkdir()
    (box / "file").write_bytes(b"not a pack")
    (box / "empty").write_bytes(b"")
    os.mkfifo(box / "fifo")
    make_socket_file(box / "sock")
    os.symlink("pack", box / "link-pack")
    os.symlink("artifact.safetensors", box / "link-artifact")
    os.symlink("../outside", box / "link-out")
    os.symlink("nowhere", box / "dangling")
    return box


def resolve_paths(value: Any, box: Path) -> Any:
    if isinstance(value, BoxPath):
        return os.path.join(box, value.rel)
    if isinstance(value, AbsPath):
        return value.path
    if isinstance(value, dict):
        return {k: resolve_paths(v, box) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_paths(v, box) for v in value]
    return value


def _manifest_snapshot(path: Any) -> bytes | None:
    if not isinstance(path, str):
        return None
    with contextlib.suppress(OSError, ValueError):
        target = Path(path, packs.MANIFEST_NAME)
        if target.is_file():
            return target.read_bytes()
    return None


def check_method(case: tuple[str, Any, Any]) -> None:
    """One request with plausible-shaped params against a worker holding m1 and m2."""
    method, params, request_id = case
    with temporary_root() as root:
        box = build_sandbox(root)
        worker = Worker(TorchWorkload())
        for _ in range(2):
            check_frame(
                respond(worker, b'{"id": 1, "method": "init_model", "params": {"device": "cpu"}}')
            )
        resolved = resolve_paths(params, box)
        body = dumps_raw({"id": request_id, "method": method, "params": resolved})
        write_targets = (
            [resolved.get(k) for k in path_fields(method)]
            if isinstance(resolved, dict) and method not in READ_ONLY_METHODS
            else []
        )
        write_target = next((t for t in write_targets if isinstance(t, str)), None)
        manifest_before = _manifest_snapshot(write_target)
        models_before = dict(worker.models)
        fds = fd_count()
        with working_directory(box):
            frame = bounded(lambda: respond(worker, body), method, root)
        check_fds(fds, method)
        response = check_frame(frame)
        error = "" if response["ok"] else response["error"]
        if error.startswith("request"):
            if response["id"] not in (0, request_id):
                raise FuzzFailure(f"frame-level refusal with a foreign id: {response!r:.300}")
        elif response["id"] != request_id:
            raise FuzzFailure(f"id {request_id!r} not echoed: {response!r:.300}")
        elif error and not error.startswith(f"{method}:"):
            raise FuzzFailure(f"error does not start with '{method}:': {error[:300]!r}")
        if not response["ok"]:
            if worker.models.keys() != models_before.keys():
                raise FuzzFailure(
                    f"a refused {method} changed the model table to {sorted(worker.models)}"
                )
            if write_target is not None and manifest_before is None:
                if _manifest_snapshot(write_target) is not None:
                    raise FuzzFailure(f"a failed {method} left a new manifest at {write_target!r}")
            elif write_target is not None and _manifest_snapshot(write_target) not in (
                None, manifest_before,
            ):  # fmt: skip
                raise FuzzFailure(f"a failed {method} changed the manifest at {write_target!r}")
        check_no_partials(root)
        check_still_serving(worker)
