"""The worker's request handling: one table of methods over a model table.

:class:`Worker` turns a frame body into a response frame and never raises
for bad input: every refusal becomes an ``ok: false`` answer naming the
method, the parameter and what was expected.  No sockets here.
"""

from __future__ import annotations

import gc
import inspect
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import PROTOCOL_VERSION, artifacts, files, packs
from .errors import (
    LayoutError,
    ParamError,
    RequestError,
    UnknownModelError,
    WorkloadError,
    describe,
)
from .framing import encode_frame
from .layout import compute_layout
from .protocol import (
    ACK,
    NO_ID,
    BadRequest,
    Request,
    StateFilter,
    check_batches,
    check_capability,
    check_eval_split,
    check_merge_policy,
    check_patch,
    check_patch_outcome,
    check_reconcile,
    error_response,
    metrics_map,
    ok_response,
    optional_filter,
    optional_path,
    params_null,
    params_object,
    parse_request,
    require_bool,
    require_list,
    require_number,
    require_path,
    require_str,
    require_uint,
)


class WorkerStop(BaseException):
    """Raised by the worker's own SIGINT/SIGTERM handlers: stop serving now.

    A BaseException that is *not* KeyboardInterrupt/SystemExit, so a hook
    raising those is reported as a hook error, never taken for a stop.
    """


def workload_has(workload: Any, *hooks: str) -> bool:
    return any(callable(getattr(workload, h, None)) for h in hooks)


def capabilities(workload: Any) -> list[str]:
    """What this workload can really do (PROTOCOL.md §2, ``hello``).

    Pack export/import and artifact I/O always work: through custom hooks, or
    through the generic torch layout that every ``init_model`` state must fit.
    """
    caps = ["artifact_path_io", "parameter_pack_export", "parameter_pack_import"]
    if workload_has(workload, "run_inner_loop"):
        caps += ["diloco_checkpoint_job", "exact_step_budget"]
    return caps


class Worker:
    """Serves one workload.  Use :meth:`respond` per frame body."""

    def __init__(self, workload: Any) -> None:
        self.workload = workload
        self.models: dict[str, Any] = {}
        self._next_model = 1
        self.shutdown_requested = False
        name = getattr(workload, "workload_name", None)
        if not isinstance(name, str) or not name:
            name = type(workload).__name__
        # What hello answers cannot change while the workload lives.
        self._hello = {
            "protocol_version": PROTOCOL_VERSION,
            "workload_name": name,
            "capabilities": capabilities(workload),
        }

    # -- entry points ------------------------------------------------------

    def respond(self, body: bytes) -> bytes:
        """Handle one frame body; return the response frame (never raises, except WorkerStop)."""
        # Decoding and encoding create no reference cycles: keep the
        # collector out of them (10k batch refs would trigger several passes).
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            request = parse_request(body)
        except BadRequest as exc:
            return encode_frame(error_response(exc.request_id, str(exc)))
        finally:
            if gc_enabled:
                gc.enable()
        response = self.handle(request)
        try:
            return _encode_without_gc(response)
        except (TypeError, ValueError, RecursionError) as exc:
            return encode_frame(
                error_response(
                    request.id,
                    f"{request.method}: the result cannot be encoded as standard JSON ({exc}); "
                    "hooks must return JSON-serializable values without NaN or Infinity",
                )
            )

    def handle(self, request: Request) -> dict:
        """Run one parsed request; returns the response object."""
        handler = METHODS.get(request.method)
        if handler is None:
            return error_response(
                request.id,
                f"unknown method {request.method!r}; this worker (protocol {PROTOCOL_VERSION}) "
                f"serves: {', '.join(METHODS)}",
            )
        try:
            return ok_response(request.id, handler(self, request.params))
        except RequestError as exc:
            message = str(exc)
            if not message.startswith(request.method):
                message = f"{request.method}: {message}"
            return error_response(request.id, message)
        except WorkerStop:
            raise
        except BaseException as exc:  # a bug in the worker or code it called outside a hook
            return error_response(
                request.id,
                f"{request.method}: internal error {type(exc).__name__}: {exc}\n{traceback.format_exc()}",
            )

    # -- helpers -----------------------------------------------------------

    def call_hook(self, method: str, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Call a workload hook; anything it raises becomes a :class:`WorkloadError`."""
        fn = getattr(self.workload, hook, None)
        if not callable(fn):
            raise WorkloadError(
                f"{method}: the workload has no {hook}() hook; add it to use {method}"
            )
        try:
            return fn(*args, **kwargs)
        except WorkerStop:
            raise
        except BaseException as exc:
            raise WorkloadError(
                f"{method}: workload hook {hook} raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            ) from None

    def has(self, *hooks: str) -> bool:
        return workload_has(self.workload, *hooks)

    def add_model(self, method: str, hook: str, state: Any) -> str:
        if state is None:
            raise WorkloadError(
                f"{method}: workload hook {hook} returned None; it must return a model state"
            )
        model_id = f"m{self._next_model}"
        self._next_model += 1
        self.models[model_id] = state
        return model_id

    def model(self, method: str, params: dict, key: str) -> tuple[str, Any]:
        model_id = require_str(method, params, key)
        if model_id not in self.models:
            ids = list(self.models)
            live = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            live = live or "none"
            raise UnknownModelError(
                f"{method}: params.{key}: unknown model id {model_id!r} (live models: {live}); "
                "handles are valid from the call that returned them until release_model"
            )
        return model_id, self.models[model_id]

    def export(
        self, method: str, state: Any, path: str, schema_hash: str, state_filter: StateFilter
    ) -> None:
        if self.has("export_parameter_pack_path"):
            self.call_hook(
                method,
                "export_parameter_pack_path",
                state,
                path,
                schema_hash,
                **self._filter_kwarg(method, "export_parameter_pack_path", state_filter),
            )
        else:
            packs.export_pack(state, path, schema_hash, state_filter)

    def _filter_kwarg(self, method: str, hook: str, state_filter: StateFilter) -> dict:
        """Pass a filter to a custom pack hook only if it asks for one."""
        try:
            accepts = (
                "state_dict_filter" in inspect.signature(getattr(self.workload, hook)).parameters
            )
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            return {"state_dict_filter": state_filter.to_json()}
        if not state_filter.is_trivial:
            raise ParamError(
                method, "state_dict_filter",
                f"no filter, because the workload's custom {hook} hook takes no state_dict_filter argument",
                state_filter.to_json(),
            )  # fmt: skip
        return {}

    # -- methods (PROTOCOL.md §2) -------------------------------------------

    def hello(self, params: Any) -> dict:
        params_null("hello", params)
        return self._hello

    def capability_probe(self, params: Any) -> dict:
        params_null("capability_probe", params)
        device = self.call_hook("capability_probe", "runtime_device")
        if not isinstance(device, str):
            raise WorkloadError(
                f"capability_probe: runtime_device() must return a string, got {describe(device)}"
            )
        capability = check_capability(self.call_hook("capability_probe", "capability_probe"))
        return {"runtime_device": device, "capability": capability}

    def init_model(self, params: Any) -> dict:
        p = params_object("init_model", params)
        device = require_str("init_model", p, "device")
        state = self.call_hook("init_model", "init_model", device)
        return {"model_id": self.add_model("init_model", "init_model", state)}

    def parameter_pack_plan(self, params: Any) -> dict:
        method = "parameter_pack_plan"
        p = params_object(method, params)
        device = require_str(method, p, "device")
        state_filter = optional_filter(method, p)
        state = self.call_hook(method, "init_model", device)
        custom = self.has("export_parameter_pack_path", "import_parameter_pack_path")
        try:
            plan = compute_layout(state, state_filter).plan()
        except LayoutError as exc:
            if not custom:
                raise LayoutError(f"{method}: {exc}") from None
            return {
                "uses_custom_parameter_pack_hooks": True, "layout_hash": None, "included_keys": [],
                "excluded_float_keys": [], "ignored_non_float_keys": [], "parameter_count": 0,
                "generic_plan_error": str(exc),
            }  # fmt: skip
        plan["uses_custom_parameter_pack_hooks"] = custom
        return plan

    def train_window(self, params: Any) -> dict:
        p = params_object("train_window", params)
        _, state = self.model("train_window", p, "model_id")
        batches = check_batches("train_window", p)
        return {
            "metrics": metrics_map(
                "train_window", self.call_hook("train_window", "train_window", state, batches)
            )
        }

    def evaluate(self, params: Any) -> dict:
        p = params_object("evaluate", params)
        _, state = self.model("evaluate", p, "model_id")
        split = check_eval_split("evaluate", p.get("split"))
        return {
            "metrics": metrics_map("evaluate", self.call_hook("evaluate", "evaluate", state, split))
        }

    def apply_patch(self, params: Any) -> Any:
        patch = check_patch("apply_patch", params)
        if not self.has("apply_patch"):
            return {
                "Rejected": "python workload does not support runtime patches (it has no apply_patch hook)"
            }
        return check_patch_outcome(self.call_hook("apply_patch", "apply_patch", patch))

    def load_model_artifact(self, params: Any) -> dict:
        method = "load_model_artifact"
        p = params_object(method, params)
        model_id, state = self.model(method, p, "model_id")
        path = require_path(method, p, "artifact_path")
        if self.has("load_model_artifact_path"):
            updated = self.call_hook(method, "load_model_artifact_path", state, path)
        elif self.has("load_model_artifact"):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ParamError(
                    method, "artifact_path", "a readable file", f"{path} ({exc.strerror})"
                ) from None
            updated = self.call_hook(method, "load_model_artifact", state, data)
        else:
            artifacts.load_state(state, path)
            updated = None
        if updated is not None:
            self.models[model_id] = updated
        return ACK

    def materialize_model_artifact(self, params: Any) -> dict:
        method = "materialize_model_artifact"
        p = params_object(method, params)
        _, state = self.model(method, p, "model_id")
        path = require_path(method, p, "artifact_path")
        if self.has("materialize_model_artifact_path"):
            self.call_hook(method, "materialize_model_artifact_path", state, path)
        elif self.has("materialize_model_artifact"):
            data = self.call_hook(method, "materialize_model_artifact", state)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise WorkloadError(
                    f"{method}: hook materialize_model_artifact must return bytes, got {describe(data)}"
                )
            _write_atomically(method, path, data)
        else:
            artifacts.save_state(state, path)
        return ACK

    def export_parameter_pack(self, params: Any) -> dict:
        method = "export_parameter_pack"
        p = params_object(method, params)
        _, state = self.model(method, p, "model_id")
        path = require_path(method, p, "parameter_pack_path")
        schema_hash = require_str(method, p, "model_schema_hash", allow_empty=True)
        self.export(method, state, path, schema_hash, optional_filter(method, p))
        return ACK

    def import_parameter_pack(self, params: Any) -> dict:
        method = "import_parameter_pack"
        p = params_object(method, params)
        device = require_str(method, p, "device")
        path = require_path(method, p, "parameter_pack_path")
        state_filter = optional_filter(method, p)
        if self.has("import_parameter_pack_path"):
            hook = "import_parameter_pack_path"
            kwargs = self._filter_kwarg(method, hook, state_filter)
            state = self.call_hook(method, hook, device, path, **kwargs)
        else:
            hook = "init_model"
            state = packs.import_pack(
                path, lambda: self.call_hook(method, hook, device), state_filter
            )
        return {"model_id": self.add_model(method, hook, state)}

    def run_inner_loop(self, params: Any) -> dict:
        method = "run_inner_loop"
        job = params_object(method, params)
        model_id, state = self.model(method, job, "model_id")
        check_batches(method, job)
        steps = require_uint(method, job, "num_inner_steps")
        optional_path(method, job, "inner_optimizer_state_path")
        output = require_path(method, job, "output_parameter_pack_path")
        schema_hash = require_str(method, job, "model_schema_hash", allow_empty=True)
        exact = require_bool(method, job, "require_exact_steps")
        state_filter = optional_filter(method, job)
        before = _stat_or_none(Path(output, packs.MANIFEST_NAME))

        result = self.call_hook(method, "run_inner_loop", state, job)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise WorkloadError(
                f"{method}: hook run_inner_loop must return a dict or None, got {describe(result)}"
            )
        done = result.get("steps_completed", steps)
        if type(done) is not int or not 0 <= done <= 2**32 - 1:
            raise WorkloadError(
                f"{method}: steps_completed must be an integer in 0..=4294967295, got {describe(done)}"
            )
        if exact and done != steps:
            raise WorkloadError(
                f"{method}: the inner loop completed {done} steps but {steps} were requested with "
                "require_exact_steps; run exactly num_inner_steps steps"
            )
        metrics = metrics_map("run_inner_loop", result.get("metrics"))
        out: dict[str, Any] = {"steps_completed": done, "metrics": metrics}
        for key in ("inner_optimizer_state_path", "inner_optimizer_state_encoding"):
            value = result.get(key)
            if value is not None and not isinstance(value, str):
                raise WorkloadError(
                    f"{method}: {key} must be a string or None, got {describe(value)}"
                )
            out[key] = value
        if result.get("state") is not None:
            state = self.models[model_id] = result["state"]
        after = _stat_or_none(Path(output, packs.MANIFEST_NAME))
        if after is None or after == before:
            self.export(method, state, output, schema_hash, state_filter)
        return out

    def merge_candidate_models(self, params: Any) -> dict:
        method = "merge_candidate_models"
        p = params_object(method, params)
        _, base = self.model(method, p, "base_model_id")
        candidates = []
        for i, raw in enumerate(require_list(method, p, "candidates")):
            if not isinstance(raw, dict):
                raise ParamError(method, f"candidates[{i}]", "a Candidate object", raw)
            candidate = {k: v for k, v in raw.items() if k != "model_id"}
            where = f"{method}: candidates[{i}]"
            for key in ("peer_id", "head_id", "artifact_id"):
                if key in raw:
                    require_str(where, raw, key, allow_empty=True)
            _, candidate["model"] = self.model(where, raw, "model_id")
            for key in ("sample_weight", "quality_weight"):
                candidate[key] = require_number(where, raw, key)
            candidates.append(candidate)
        policy = check_merge_policy(method, p.get("policy"))
        merged = self.call_hook(method, "merge_candidate_models", base, candidates, policy)
        if merged is None:
            return {"model_id": None}
        return {"model_id": self.add_model(method, "merge_candidate_models", merged)}

    def apply_single_root_ema(self, params: Any) -> dict:
        method = "apply_single_root_ema"
        p = params_object(method, params)
        _, base = self.model(method, p, "base_model_id")
        merged_id, merged = self.model(method, p, "merged_model_id")
        policy = check_merge_policy(method, p.get("policy"))
        updated = self.call_hook(method, "apply_single_root_ema", base, merged, policy)
        if updated is not None:
            self.models[merged_id] = updated
        return {"model_id": merged_id}

    def reconcile_canonical_model(self, params: Any) -> dict:
        method = "reconcile_canonical_model"
        p = params_object(method, params)
        _, local = self.model(method, p, "local_model_id")
        canonical_id, canonical = self.model(method, p, "canonical_model_id")
        strategy = check_reconcile(method, p.get("strategy"))
        updated = self.call_hook(method, "reconcile_canonical_model", local, canonical, strategy)
        if updated is not None:
            self.models[canonical_id] = updated
        return {"model_id": canonical_id}

    def release_model(self, params: Any) -> dict:
        p = params_object("release_model", params)
        self.models.pop(require_str("release_model", p, "model_id", allow_empty=True), None)
        return ACK

    def shutdown(self, params: Any) -> dict:
        self.shutdown_requested = True
        return ACK


METHODS: dict[str, Callable[[Worker, Any], Any]] = {
    name: getattr(Worker, name)
    for name in (
        "hello", "capability_probe", "init_model", "parameter_pack_plan", "train_window",
        "evaluate", "apply_patch", "load_model_artifact", "materialize_model_artifact",
        "export_parameter_pack", "import_parameter_pack", "run_inner_loop",
        "merge_candidate_models", "apply_single_root_ema", "reconcile_canonical_model",
        "release_model", "shutdown",
    )
}  # fmt: skip
"""The one table of protocol methods: name -> handler(worker, params)."""


def _encode_without_gc(response: dict) -> bytes:
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        return encode_frame(response)
    finally:
        if gc_enabled:
            gc.enable()


def _stat_or_none(path: Path) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _write_atomically(method: str, path: str, data: bytes | bytearray | memoryview) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        files.write_file_atomically(target, data)
    except OSError as exc:
        raise ParamError(
            method, "artifact_path", "a writable path", f"{path} ({exc.strerror})"
        ) from None


__all__ = ["METHODS", "NO_ID", "Worker", "WorkerStop", "capabilities"]
