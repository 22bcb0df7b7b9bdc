"""The worker's request handling: the dispatcher over the method table, the
model table, and the calls into the workload.  No sockets and no bytes here
(see ``connection.py``); the methods themselves are in ``methods.py``.
"""

from __future__ import annotations

import inspect
from typing import Any

from . import PROTOCOL_VERSION, packs, stopping
from .errors import (
    EnvironmentFault,
    InternalFault,
    ParamError,
    RequestError,
    UnknownMethod,
    WorkerStop,
    WorkloadError,
    hook_failure,
)
from .methods import METHODS, Method
from .protocol import Answer, Request, StateFilter


def workload_has(workload: Any, *hooks: str) -> bool:
    """True when ``workload`` has at least one of ``hooks`` as a callable."""
    return any(callable(getattr(workload, h, None)) for h in hooks)


def capabilities(workload: Any) -> list[str]:
    """What this workload can really do (docs/protocol.md §2, ``hello``).

    Pack export/import and artifact I/O always work: through custom hooks, or
    through the generic torch layout that every ``init_model`` state must fit.
    """
    caps = ["artifact_path_io", "parameter_pack_export", "parameter_pack_import"]
    if workload_has(workload, "run_inner_loop"):
        caps += ["diloco_checkpoint_job", "exact_step_budget"]
    return caps


class Worker:
    """Serves one workload: :meth:`handle` per request."""

    def __init__(self, workload: Any) -> None:
        self.workload = workload
        self.models: dict[str, Any] = {}
        self._next_model = 1
        name = getattr(workload, "workload_name", None)
        if not isinstance(name, str) or not name:
            name = type(workload).__name__
        self.hello_result: dict[str, Any] = {
            "protocol_version": PROTOCOL_VERSION,
            "workload_name": name,
            "capabilities": capabilities(workload),
        }
        """What ``hello`` answers: it cannot change while the workload lives."""

    # -- dispatch --------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        """Run one request; every refusal becomes an answer carrying the error.

        Never raises, except :class:`~worker.errors.WorkerStop`.
        """
        spec = METHODS.get(request.method)
        try:
            if spec is None:
                raise UnknownMethod(request.method, list(METHODS), PROTOCOL_VERSION)
            result = self._run(spec, request.params)
        except RequestError as exc:
            return Answer(request.id, request.method, error=exc)
        except WorkerStop:
            raise
        except BaseException as exc:  # a bug in the worker or code it called outside a hook
            fault = InternalFault(
                f"internal error {hook_failure(exc)}",
                method=request.method,
            )
            return Answer(request.id, request.method, error=fault)
        return Answer(request.id, request.method, result, ends_session=spec.ends_session)

    def call(self, method: str, params: Any) -> Any:
        """Run ``method`` on raw JSON ``params`` exactly as a request would; returns
        its result.  Raises a :class:`~worker.errors.RequestError` naming the method."""
        spec = METHODS.get(method)
        if spec is None:
            raise UnknownMethod(method, list(METHODS), PROTOCOL_VERSION)
        return self._run(spec, params)

    def _run(self, spec: Method, params: Any) -> Any:
        """Decode ``params`` with the method's schema, then run its handler."""
        try:
            return spec.handler(self, spec.params.decode(params, "", self.models))
        except RequestError as exc:
            if exc.method is None:
                exc.method = spec.name
            raise
        except OSError as exc:
            raise EnvironmentFault(str(exc), method=spec.name) from exc

    # -- the workload ------------------------------------------------------------

    def has(self, *hooks: str) -> bool:
        return workload_has(self.workload, *hooks)

    def call_hook(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Call a workload hook.  Anything it raises (SystemExit and
        KeyboardInterrupt too) becomes a :class:`~worker.errors.WorkloadError`
        with the traceback (and a fallback text when the exception cannot be
        printed); a missing hook is one too.  A stop signal the hook swallowed
        is raised when it returns (:mod:`worker.stopping`)."""
        fn = getattr(self.workload, hook, None)
        if not callable(fn):
            raise WorkloadError(f"the workload has no {hook}() hook; add it to use this method")
        failure: WorkloadError | None = None
        with stopping.hook_running():
            try:
                result = fn(*args, **kwargs)
            except WorkerStop:
                raise
            except BaseException as exc:
                failure = WorkloadError(f"workload hook {hook} raised {hook_failure(exc)}")
        stopping.raise_if_requested()
        if failure is not None:
            raise failure from None
        return result

    # -- the model table ---------------------------------------------------------

    def add_model(self, hook: str, state: Any) -> str:
        """Give ``state`` (returned by ``hook``) a new handle; raises WorkloadError for None."""
        if state is None:
            raise WorkloadError(f"workload hook {hook} returned None; it must return a model state")
        model_id = f"m{self._next_model}"
        self._next_model += 1
        self.models[model_id] = state
        return model_id

    # -- packs -------------------------------------------------------------------

    def export(self, state: Any, path: str, schema_hash: str, state_filter: StateFilter) -> None:
        """Export ``state`` as a pack at ``path``: the custom hook if the
        workload has one, else the generic torch layout."""
        hook = "export_parameter_pack_path"
        if self.has(hook):
            kwargs = self.filter_kwarg(hook, state_filter)
            self.call_hook(hook, state, path, schema_hash, **kwargs)
        else:
            packs.export_pack(state, path, schema_hash, state_filter)

    def filter_kwarg(self, hook: str, state_filter: StateFilter) -> dict[str, Any]:
        """Pass a filter to a custom pack hook only if it takes one; raises
        ParamError for a non-trivial filter the hook cannot take."""
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
                "state_dict_filter",
                f"no filter, because the workload's custom {hook} hook takes no "
                "state_dict_filter argument",
                state_filter.to_json(),
            )
        return {}


__all__ = ["METHODS", "Worker", "capabilities", "workload_has"]
