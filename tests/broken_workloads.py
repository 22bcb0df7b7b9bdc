"""Deliberately broken subjects for the conformance suite's own tests.

Each *workload defect* is a small mixin with exactly one defect; the factory
``make_broken({"defect": NAME})`` composes it over a correct base workload
(``conformance.example_workload.ExampleWorkload``, or that plus correct
custom pack hooks, or plus float16/bfloat16 buffers), so the subject differs
from a workload that passes every check by that one defect.  ``DEFECTS``
says which check must catch each one.

Framing, parameter validation and the model table belong to the worker, not
to the workload; the *worker defects* break a real worker the way a
``--worker-cmd`` of one's own could: ``python -m tests.broken_workloads
DEFECT --factory ...`` patches one function of our worker, then runs it.
``WORKER_DEFECTS`` says which check must catch each one.  Most run over the
torch-free ``make_stub`` workload so that they start in a fraction of a second.

This module imports neither torch nor the example workload at import time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

# ---------------------------------------------------------------------------
# A torch-free workload for the worker-level checks (framing, validation, handles)


class StubWorkload:
    """Correct, minimal, no torch: states are small lists of floats moved by
    custom pack hooks.  Passes the framing, errors.* (but bad_files) and
    release checks with an intact worker."""

    workload_name = "conformance-stub"

    def __init__(self, config: dict | None) -> None:
        self.config = dict(config or {})

    def runtime_device(self) -> str:
        return "python-cpu"

    def capability_probe(self) -> dict:
        return {
            "preferred_backends": ["cpu"],
            "work_units_per_second": 1.0,
            "target_window_seconds": 1,
        }

    def init_model(self, device: str) -> dict:
        return {"values": [0.0, 1.0, 2.0, 3.0]}

    def train_window(self, state: dict, batches: list) -> dict:
        return {"batches": len(batches)}

    def evaluate(self, state: dict, split: Any) -> dict:
        return {"total": sum(state["values"])}

    def export_parameter_pack_path(self, state: dict, path: str, model_schema_hash: str) -> None:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "values.f32le").write_bytes(struct.pack("<4f", *state["values"]))
        manifest = {
            "format": "burn-p2p-python-flattened-parameter-pack-v1",
            "model_schema_hash": model_schema_hash,
            "layout_hash": "stub-layout-4",
            "parameter_count": 4,
            "values_f32_le": "values.f32le",
        }
        (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    def import_parameter_pack_path(self, device: str, path: str) -> dict:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("layout_hash") != "stub-layout-4":
            raise ValueError(f"layout {manifest.get('layout_hash')!r} is not stub-layout-4")
        return {"values": list(struct.unpack("<4f", (Path(path) / "values.f32le").read_bytes()))}

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        return None

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        return None

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        return None


def make_stub(config: dict | None) -> StubWorkload:
    return StubWorkload(config)


# ---------------------------------------------------------------------------
# Correct extensions of the example workload (bases for some defects)


def _selected(name: str, state_dict_filter: dict | None) -> bool:
    import fnmatch

    f = state_dict_filter or {}
    include, exclude = f.get("include_globs") or [], f.get("exclude_globs") or []
    if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in exclude)


class CustomPacks:
    """Correct custom pack hooks: the standard pack format with a layout hash of
    our own ("custom-..."), validated on import."""

    def _entries(self, state: dict, state_dict_filter: dict | None) -> list:
        tensors = state["model"].state_dict()
        return [
            (k, tensors[k])
            for k in sorted(tensors)
            if tensors[k].is_floating_point() and _selected(k, state_dict_filter)
        ]

    def _layout(self, entries: list) -> str:
        text = json.dumps([[k, list(t.shape), str(t.dtype)] for k, t in entries])
        return "custom-" + hashlib.sha256(text.encode()).hexdigest()

    def export_parameter_pack_path(
        self, state: dict, path: str, model_schema_hash: str, state_dict_filter: dict | None = None
    ) -> None:
        import torch

        entries = self._entries(state, state_dict_filter)
        flat = [t.detach().reshape(-1).to(torch.float32) for _, t in entries]
        values = torch.cat(flat) if flat else torch.zeros(0)
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "values.f32le").write_bytes(values.numpy().astype("<f4").tobytes())
        manifest = {
            "format": "burn-p2p-python-flattened-parameter-pack-v1",
            "model_schema_hash": self._schema_hash(model_schema_hash),
            "layout_hash": self._layout(entries),
            "parameter_count": int(values.numel()),
            "values_f32_le": "values.f32le",
        }
        (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    def _schema_hash(self, requested: str) -> str:
        return requested

    def _read_values(self, path: str, state: dict, state_dict_filter: dict | None) -> tuple:
        import torch

        root = Path(path)
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        entries = self._entries(state, state_dict_filter)
        if manifest.get("format") != "burn-p2p-python-flattened-parameter-pack-v1":
            raise ValueError(f"unknown pack format {manifest.get('format')!r}")
        if manifest.get("values_f32_le") != "values.f32le":
            raise ValueError(
                f"values file must be values.f32le, got {manifest.get('values_f32_le')!r}"
            )
        if manifest.get("layout_hash") != self._layout(entries):
            raise ValueError(f"layout {manifest.get('layout_hash')!r} is not this model's")
        data = (root / "values.f32le").read_bytes()
        count = sum(t.numel() for _, t in entries)
        if len(data) != 4 * count or manifest.get("parameter_count") != count:
            raise ValueError(f"the pack must hold {count} values")
        return entries, torch.frombuffer(bytearray(data), dtype=torch.float32)

    def import_parameter_pack_path(
        self, device: str, path: str, state_dict_filter: dict | None = None
    ) -> dict:
        import torch

        state = self.init_model(device)
        entries, values = self._read_values(path, state, state_dict_filter)
        start = 0
        with torch.no_grad():
            for _, tensor in self._imported(entries):
                n = tensor.numel()
                tensor.copy_(self._cast(values[start : start + n]).view(tensor.shape))
                start += n
        return state

    def _imported(self, entries: list) -> list:
        return entries

    def _cast(self, values: Any) -> Any:
        return values


class MixedPrecision:
    """A model that also carries float16 and bfloat16 buffers (correct)."""

    def init_model(self, device: str) -> dict:
        import torch

        state = super().init_model(device)
        state["model"].register_buffer("half_scale", torch.linspace(-2, 2, 6).to(torch.float16))
        state["model"].register_buffer("bf16_scale", torch.linspace(-3, 3, 6).to(torch.bfloat16))
        return state


class ShardsOnly:
    """Not broken but limited: trains only on cached_microshard_group refs (one
    seeded batch per ordinal), so the suite's generated micro_epoch refs are refused."""

    def batch(self, ref: dict) -> tuple:
        from conformance.example_workload import generated

        if ref.get("kind") != "cached_microshard_group":
            raise ValueError(
                f"only cached_microshard_group refs are readable, got {ref.get('kind')!r}"
            )
        return generated(int(ref["ordinals"][0]), 16)


# ---------------------------------------------------------------------------
# Workload defects: one each


class NanMetric:
    """train_window reports loss=NaN, which JSON cannot carry."""

    def train_window(self, state: dict, batches: list) -> dict:
        return {**super().train_window(state, batches), "loss": float("nan")}


class ListMetric:
    """train_window reports a list metric (MetricValue is a scalar)."""

    def train_window(self, state: dict, batches: list) -> dict:
        metrics = super().train_window(state, batches)
        return {**metrics, "losses": [metrics["loss"]]}


class FloatWindow:
    """capability_probe reports target_window_seconds as a float (Rust decodes u64)."""

    def capability_probe(self) -> dict:
        return {**super().capability_probe(), "target_window_seconds": 2.5}


class InitReturnsNone:
    """init_model builds the model but forgets to return it."""

    def init_model(self, device: str) -> None:
        super().init_model(device)


class EvaluateStrSplit:
    """evaluate assumes the split is a string and breaks on {"Custom": name}."""

    def evaluate(self, state: dict, split: Any) -> dict:
        return super().evaluate(state, split + "")


class EvaluateSystemExit:
    """evaluate calls sys.exit() (a hook raising SystemExit)."""

    def evaluate(self, state: dict, split: Any) -> dict:
        sys.exit(3)


class BadPatchOutcome:
    """apply_patch answers "applied" (the variant is "Applied")."""

    def apply_patch(self, patch: dict) -> Any:
        return "applied"


class UnstableLayout:
    """init_model's hidden width changes from one call to the next."""

    calls = 0

    def init_model(self, device: str) -> dict:
        type(self).calls += 1
        self.hidden = 8 + type(self).calls % 2
        return super().init_model(device)


class LoadIgnoresFile:
    """load_model_artifact_path accepts the artifact and never reads it."""

    def load_model_artifact_path(self, state: dict, path: str) -> None:
        return None


class MergeReturnsBase:
    """merge_candidate_models returns the base instead of merging."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict:
        return base


class MergeSums:
    """merge_candidate_models forgets to normalise: a weighted sum, not a mean."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict:
        from conformance.example_workload import _blend

        merged = self.init_model("cpu")
        _blend(merged, [(float(c["sample_weight"]), c["model"]) for c in candidates])
        return merged


class MergeMutatesBase:
    """merge_candidate_models also writes the merged values into the base."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict:
        from conformance.example_workload import _blend

        merged = super().merge_candidate_models(base, candidates, policy)
        _blend(base, [(1.0, merged)])
        return merged


class EmaExtrapolates:
    """apply_single_root_ema overshoots: merged + 0.5 * (merged - base)."""

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        from conformance.example_workload import _blend

        _blend(merged, [(1.5, merged), (-0.5, base)])


class ReplaceKeepsLocal:
    """reconcile "Replace" copies the local model over the canonical one."""

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        from conformance.example_workload import _blend

        if strategy == "Replace":
            _blend(canonical, [(1.0, local)])
            return None
        return super().reconcile_canonical_model(local, canonical, strategy)


class RootEmaInverted:
    """RootEma uses canonical_weight as the weight of the local model."""

    def reconcile_canonical_model(self, local: dict, canonical: dict, strategy: Any) -> None:
        if isinstance(strategy, dict):
            w = strategy["RootEma"]["canonical_weight"]
            strategy = {"RootEma": {"canonical_weight": 1.0 - w}}
        return super().reconcile_canonical_model(local, canonical, strategy)


class InnerLoopMiscounts:
    """run_inner_loop runs and reports one step fewer than asked."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        job = {**job, "num_inner_steps": max(job["num_inner_steps"] - 1, 0)}
        return super().run_inner_loop(state, job)


class InnerLoopDoesNothing:
    """run_inner_loop reports the steps but never trains."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        return {"steps_completed": job["num_inner_steps"], "metrics": {"loss": 0.0}}


class LingeringThread:
    """The factory starts a non-daemon thread, which keeps the process alive
    after the coordinator has gone (bounded here to 60 s)."""

    def __init__(self, config: dict | None) -> None:
        super().__init__(config)
        stop = threading.Event()
        threading.Thread(target=stop.wait, args=(60.0,), daemon=False).start()


class LossyImport:
    """Custom import goes through bfloat16 (loses float32 precision)."""

    def _cast(self, values: Any) -> Any:
        import torch

        return values.to(torch.bfloat16).to(torch.float32)


class ImportDropsLast:
    """Custom import has an off-by-one: the last tensor keeps its initial values."""

    def _imported(self, entries: list) -> list:
        return entries[:-1]


class WrongSchemaHash:
    """Custom export writes a fixed model_schema_hash instead of the requested one."""

    def _schema_hash(self, requested: str) -> str:
        return "schema-v1"


class ImportSwallowsErrors:
    """Custom import returns a fresh model when the pack cannot be read."""

    def import_parameter_pack_path(
        self, device: str, path: str, state_dict_filter: dict | None = None
    ) -> dict:
        try:
            return super().import_parameter_pack_path(device, path, state_dict_filter)
        except (OSError, ValueError):
            return self.init_model(device)


# name -> (defect mixin, base, the check that must FAIL)
DEFECTS: dict[str, tuple[type, str, str]] = {
    "nan_metric": (NanMetric, "example", "protocol.train_window_metrics"),
    "list_metric": (ListMetric, "example", "protocol.train_window_metrics"),
    "float_window": (FloatWindow, "example", "protocol.capability_probe"),
    "init_returns_none": (InitReturnsNone, "example", "protocol.init_model"),
    "evaluate_str_split": (EvaluateStrSplit, "example", "protocol.evaluate_metrics"),
    "evaluate_system_exit": (EvaluateSystemExit, "example", "protocol.evaluate_metrics"),
    "bad_patch_outcome": (BadPatchOutcome, "example", "protocol.apply_patch_outcome"),
    "unstable_layout": (UnstableLayout, "example", "packs.layout_stable"),
    "load_ignores_file": (LoadIgnoresFile, "example", "artifacts.roundtrip_restores"),
    "merge_returns_base": (MergeReturnsBase, "example", "semantics.merge_weighted_mean"),
    "merge_sums": (MergeSums, "example", "semantics.merge_identical_copies"),
    "merge_mutates_base": (MergeMutatesBase, "example", "semantics.merge_preserves_base"),
    "ema_extrapolates": (EmaExtrapolates, "example", "semantics.ema_between"),
    "replace_keeps_local": (ReplaceKeepsLocal, "example", "semantics.reconcile_replace"),
    "root_ema_inverted": (RootEmaInverted, "example", "semantics.reconcile_root_ema"),
    "inner_loop_miscounts": (InnerLoopMiscounts, "example", "diloco.inner_loop_exact_steps"),
    "inner_loop_does_nothing": (InnerLoopDoesNothing, "example", "diloco.inner_loop_updates_pack"),
    "lingering_thread": (LingeringThread, "example", "framing.eof_exits_zero"),
    "lossy_import": (LossyImport, "custom_packs", "packs.import_exact"),
    "import_drops_last": (ImportDropsLast, "custom_packs", "packs.roundtrip_bit_identical"),
    "wrong_schema_hash": (WrongSchemaHash, "custom_packs", "packs.manifest_valid"),
    "import_swallows_errors": (ImportSwallowsErrors, "custom_packs", "errors.bad_files"),
}

BASES = {
    "example": (),
    "custom_packs": (CustomPacks,),
    "mixed_precision": (MixedPrecision,),
    "shards_only": (ShardsOnly,),
}


@functools.cache
def subject_class(defect: str | None, base: str) -> type:
    """``defect`` (or nothing) over ``base``, as one class."""
    from conformance.example_workload import ExampleWorkload

    mixins = (DEFECTS[defect][0],) if defect else ()
    name = DEFECTS[defect][0].__name__ if defect else f"Correct{base.title().replace('_', '')}"
    return type(name, (*mixins, *BASES[base], ExampleWorkload), {})


def make_broken(config: dict) -> Any:
    """``{"defect": NAME}`` from DEFECTS, or ``{"base": NAME}`` for a correct base."""
    defect = config.get("defect")
    base = DEFECTS[defect][1] if defect else config.get("base", "example")
    return subject_class(defect, base)(config)


# ---------------------------------------------------------------------------
# Worker defects: `python -m tests.broken_workloads DEFECT <worker flags>`


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

FACTORIES = {
    "stub": "tests.broken_workloads:make_stub",
    "example": "tests.broken_workloads:make_broken",
    "mixed": "tests.broken_workloads:make_broken",
}


def worker_command(defect: str | None = None, zygote: str | None = None) -> list[str]:
    """The ``--worker-cmd`` prefix running our worker with ``defect`` applied
    (or intact), directly or forked by the fork server at ``zygote``."""
    prefix = [sys.executable, "-m", "tests.broken_workloads"]
    if zygote:
        prefix += ["--via-zygote", zygote]
    return [*prefix, defect or "-"]


def main(argv: list[str]) -> int:
    """``DEFECT|- <worker flags>``: patch the worker with DEFECT, then run it."""
    defect, *rest = argv
    if defect != "-":
        WORKER_DEFECTS[defect][0]()
    from worker.__main__ import main as worker_main

    return worker_main(rest)


# ---------------------------------------------------------------------------
# A fork server for the suite's own tests.
#
# Every subject is a fresh worker process, and importing torch costs ~2 s of
# CPU per process: on a shared 2-core machine, dozens of subjects would take
# minutes.  `--zygote-serve PATH` imports torch, the worker and the example
# workload once and forks one worker per request; `--via-zygote PATH ARGS`
# is the worker command: it hands its stdio to the zygote, which forks a
# child running `main(ARGS)` on them, and relays the child's exit status (and
# the signals it receives).  The child is the real worker code in its own
# process on its own socket; only the imports are shared.  Every loop is
# bounded.

ZYGOTE_LIFETIME = 900.0
"""Seconds the fork server lives at most; it also stops when its parent (the test run) dies."""


def zygote_serve(path: str) -> int:
    import importlib
    import socket

    # torch._dynamo: the first optimizer step imports it (~1 s); importing starts no thread.
    preload = (
        "torch",
        "torch._dynamo",
        "worker.__main__",
        "worker.server",
        "conformance.example_workload",
    )
    for name in preload:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the path appears once the zygote is ready
    listener.listen(64)
    zygote = os.getpid()
    try:
        _zygote_loop(listener, os.getppid(), time.monotonic() + ZYGOTE_LIFETIME)
    finally:
        if os.getpid() == zygote:  # a forked worker leaves through here too
            listener.close()
            os.unlink(path)
    return 0


def _zygote_loop(listener: Any, parent: int, deadline: float) -> None:
    import select
    import signal
    import socket

    children: dict[Any, int] = {}
    while time.monotonic() < deadline and os.getppid() == parent:
        readable, _, _ = select.select([listener, *children], [], [], 0.05)
        for sock in readable:
            if sock is listener:
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
                pid = os.fork()
                if pid == 0:
                    _zygote_child(json.loads(message), fds, [listener, conn, *children])
                for fd in fds:
                    os.close(fd)
                children[conn] = pid
            else:
                data = sock.recv(64)
                signals = [int(n) for n in data.split()] if data else [signal.SIGKILL]
                for signum in signals:
                    try:
                        os.kill(children[sock], signum)
                    except ProcessLookupError:
                        pass
                if not data:  # the client is gone: so is its worker
                    sock.close()
                    del children[sock]
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            for conn, child in list(children.items()):
                if child == pid:
                    try:
                        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                    except OSError:
                        pass
                    conn.close()
                    del children[conn]
    for pid in children.values():  # the run is over: no orphaned workers
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _zygote_child(argv: list[str], fds: list[int], inherited: list[Any]) -> NoReturn:
    """In the forked child: take over the client's stdio and run the worker.

    Ends by raising SystemExit through the zygote's frames, so the child exits
    the way a fresh interpreter does (atexit handlers run, non-daemon threads
    are waited for), not through os._exit.
    """
    import signal
    import traceback

    for sock in inherited:
        sock.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        code = main(argv)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        code = 1
    raise SystemExit(code)


def via_zygote(path: str, argv: list[str]) -> int:
    import signal
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    socket.send_fds(conn, [json.dumps(argv).encode()], [0, 1, 2])

    def forward(signum: int, _frame: Any) -> None:
        conn.sendall(f"{signum}\n".encode())

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(64)
        if not chunk:
            return 1
        data += chunk
    code = int(data.split(b"\n")[0])
    if code < 0:  # killed by a signal: die the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--zygote-serve"]:
        sys.exit(zygote_serve(args[1]))
    if args[:1] == ["--via-zygote"]:
        sys.exit(via_zygote(args[1], args[2:]))
    sys.exit(main(args))
