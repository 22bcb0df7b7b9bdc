"""Worker defects: ``python -m tests.broken DEFECT <worker flags>`` patches one function
of our worker, then runs it (a ``--worker-cmd`` of one's own could be broken so)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _replace_handler(method: str, wrap: Any) -> None:
    """Swap ``method``'s handler in the worker's table for ``wrap(original)``."""
    import dataclasses

    import worker.service as service

    spec = service.METHODS[method]
    service.METHODS[method] = dataclasses.replace(spec, handler=wrap(spec.handler))


def _hello_version_string() -> None:
    """hello reports protocol_version as the string "2" (Rust decodes an integer)."""
    _replace_handler(
        "hello", lambda hello: lambda self, p: {**hello(self, p), "protocol_version": "2"}
    )


def _id_as_float() -> None:
    """Response ids go through a float: ids above 2**53 come back wrong."""
    import worker.connection as connection

    ok, err = connection.ok_response, connection.error_response
    connection.ok_response = lambda i, result: ok(int(float(i)), result)
    connection.error_response = lambda i, error: err(int(float(i)), error)


def _split_read() -> None:
    """The body is whatever arrived with its header: a frame split across writes is cut short."""
    import worker.framing as framing

    original = framing.FrameDecoder._next_frame

    def cut_short(self: Any) -> Any:
        body = original(self)
        if body is None and self._length is not None and self._end > self._start:
            body = self._small[self._start : self._end]
            self._start, self._length = self._end, None
        return body

    framing.FrameDecoder._next_frame = cut_short


def _garbage_crashes() -> None:
    """Requests are parsed with a bare json.loads: a garbage frame kills the worker."""
    import worker.connection as connection
    from worker.protocol import Request

    def parse(body: bytes) -> Request:
        message = json.loads(body)
        return Request(message["id"], message["method"], message.get("params"))

    connection.parse_request = parse


def _shutdown_null() -> None:
    """shutdown answers a null result (the coordinator decodes an object)."""

    def null(original: Any) -> Any:
        def shutdown(self: Any, params: Any) -> None:
            original(self, params)
            return None

        return shutdown

    _replace_handler("shutdown", null)


def _truncated_exit_zero() -> None:
    """Every exit is reported as success, EOF inside a frame included."""
    import worker.server as server

    original = server.serve

    def serve(*args: Any, **kwargs: Any) -> int:
        original(*args, **kwargs)
        return 0

    server.serve = serve


def _oversized_waits() -> None:
    """No frame limit: the worker waits for all 2**64-1 announced bytes."""
    import worker.server as server
    from worker.connection import Connection

    server.Connection = lambda max_frame_bytes=0: Connection(2**64)


def _unknown_method_ok() -> None:
    """An unknown method is answered ok:true with a null result."""
    import worker.service as service
    from worker.protocol import Answer

    handle = service.Worker.handle

    def lenient(self: Any, request: Any) -> Answer:
        if request.method not in service.METHODS:
            return Answer(request.id, request.method, None)
        return handle(self, request)

    service.Worker.handle = lenient


def _missing_defaults() -> None:
    """A missing string parameter defaults to "default" instead of being refused."""
    import worker.schema as schema

    schema.Text.decode_missing = lambda self, path, models: "default"


def _coerce_types() -> None:
    """String parameters of any type are coerced with str() instead of refused."""
    import worker.schema as schema

    decode = schema.Text.decode

    def coercing(self: Any, value: Any, path: str, models: Any) -> Any:
        return decode(self, value if isinstance(value, str) else str(value), path, models)

    schema.Text.decode = coercing


def _lenient_unknown_ids() -> None:
    """An unknown model id silently means the most recent model."""
    import worker.schema as schema

    decode = schema.ModelId.decode

    def lenient(self: Any, value: Any, path: str, models: Any) -> Any:
        if isinstance(value, str) and value not in models and models:
            value = list(models)[-1]
        return decode(self, value, path, models)

    schema.ModelId.decode = lenient


def _release_noop() -> None:
    """release_model acknowledges and keeps the model."""
    _replace_handler("release_model", lambda original: lambda self, p: {"ok": True})


def _filter_ignores_exclude() -> None:
    """state_dict filters ignore exclude_globs."""
    import fnmatch

    import worker.protocol as protocol

    def selects(self: Any, name: str) -> bool:
        return not self.include_globs or any(
            fnmatch.fnmatchcase(name, g) for g in self.include_globs
        )

    protocol.StateFilter.selects = selects


def _layout_hash_loose() -> None:
    """The layout hash is computed over json.dumps with default separators."""
    import worker.layout as layout

    def loose(entries: list) -> str:
        text = json.dumps(entries, sort_keys=True)
        return layout.LAYOUT_HASH_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()

    layout.layout_hash = loose


def _plan_count_off() -> None:
    """parameter_pack_plan reports one value more than the layout holds."""

    def off(plan: Any) -> Any:
        def counted(self: Any, params: Any) -> dict:
            result = plan(self, params)
            return {**result, "parameter_count": result["parameter_count"] + 1}

        return counted

    _replace_handler("parameter_pack_plan", off)


def _half_rounding() -> None:
    """Import fills bfloat16 tensors through float16 (overflow, lost subnormals)."""
    import torch

    import worker.packs as packs

    read = packs.read_f32_into_tensor

    def via_half(raw: Any, tensor: Any) -> None:
        if tensor.dtype != torch.bfloat16:
            return read(raw, tensor)
        staged = torch.empty(tensor.shape, dtype=torch.float32)
        read(raw, staged)
        with torch.no_grad():
            tensor.copy_(staged.to(torch.float16).to(torch.bfloat16))
        return None

    packs.read_f32_into_tensor = via_half


# name -> (patch, factory, config, the check that must FAIL)
WORKER_DEFECTS: dict[str, tuple[Any, str, dict, str]] = {
    "hello_version_string": (_hello_version_string, "stub", {}, "protocol.hello"),
    "id_as_float": (_id_as_float, "stub", {}, "framing.requests_roundtrip"),
    "split_read": (_split_read, "stub", {}, "framing.split_frames"),
    "garbage_crashes": (_garbage_crashes, "stub", {}, "framing.garbage_refused"),
    "shutdown_null": (_shutdown_null, "stub", {}, "framing.shutdown_acks_and_exits"),
    "truncated_exit_zero": (
        _truncated_exit_zero,
        "stub",
        {},
        "framing.truncated_frame_exits_nonzero",
    ),
    "oversized_waits": (_oversized_waits, "stub", {}, "framing.oversized_frame_refused"),
    "unknown_method_ok": (_unknown_method_ok, "stub", {}, "errors.unknown_method"),
    "missing_defaults": (_missing_defaults, "stub", {}, "errors.missing_params"),
    "coerce_types": (_coerce_types, "stub", {}, "errors.ill_typed_params"),
    "lenient_unknown_ids": (_lenient_unknown_ids, "stub", {}, "errors.unknown_model_ids"),
    "release_noop": (_release_noop, "stub", {}, "semantics.release_model"),
    "filter_ignores_exclude": (_filter_ignores_exclude, "example", {}, "packs.filters_select_keys"),
    "layout_hash_loose": (_layout_hash_loose, "example", {}, "packs.layout_hash_independent"),
    "plan_count_off": (_plan_count_off, "example", {}, "packs.plan_shape"),
    "half_rounding": (_half_rounding, "mixed", {"base": "mixed_precision"}, "packs.import_exact"),
}
