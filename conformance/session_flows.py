"""The session's extra worker processes and its network peers (the flow checks).

Functions over a :class:`~conformance.session.Session`: more worker processes than the run's own (a writer and a reader with their own
``PYTHONHASHSEED``, started side by side and kept for the run), and
:class:`~conformance.network_calls.NetworkPeer` objects whose calls go through
the session's error handling (a failure is a :class:`CheckFailed` naming the
hook behind the method).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fakecoord import spec
from fakecoord.errors import FakecoordError

from .errors import CheckFailed, one_line

if TYPE_CHECKING:
    from .network_calls import NetworkPeer
    from .session import Session


def second_workers(s: Session) -> tuple[Any, Any]:
    """Two more worker processes for the flow checks, started side by side and kept
    for the run: a writer (PYTHONHASHSEED=1) and a reader that never trains
    (PYTHONHASHSEED=2).  A check may shut the writer down."""
    if "second_workers" not in s._cache:
        from concurrent.futures import ThreadPoolExecutor

        specs = (("writer", {"PYTHONHASHSEED": "1"}), ("reader", {"PYTHONHASHSEED": "2"}))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(_spawn_worker, s, n, e) for n, e in specs]
        clients = [f.result() for f in futures if f.exception() is None]
        s._kept.extend(clients)  # closed with the session, even when one failed
        for future in futures:
            future.result()  # the first failure to start, as a CheckFailed
        s._cache["second_workers"] = tuple(clients)
    return s._cache["second_workers"]


def spawn_worker(s: Session, name: str, env: Mapping[str, str] | None = None) -> Any:
    """A second worker process for a flow check (stopped after the check):
    ``env`` entries are added to the worker's environment (e.g. PYTHONHASHSEED)."""
    client = _spawn_worker(s, name, env)
    s._extra.append(client)
    return client


def _spawn_worker(s: Session, name: str, env: Mapping[str, str] | None = None) -> Any:
    from fakecoord import WorkerClient

    with s._lock:
        s.spawns += 1
        number = s.spawns
    o = s.options
    environment = dict(os.environ if o.env is None else o.env)
    environment.update(env or {})
    try:
        client = WorkerClient.spawn(
            o.factory,
            o.config,
            worker_cmd=o.worker_cmd,
            env=environment,
            cwd=o.cwd,
            pythonpath=o.pythonpath,
            call_timeout=o.call_timeout,
            accept_timeout=o.accept_timeout or o.call_timeout,
            stderr=str(s.root / f"worker-{number}-{name}.log"),
            shutdown_timeout=o.exit_timeout,
        )
    except FakecoordError as exc:
        raise CheckFailed(
            f"a second worker process ({name}) to start and connect",
            one_line(exc),
            "the factory or the worker command",
            details=str(exc),
        ) from None
    return client


def network_peer(
    s: Session,
    client: Any = None,
    *,
    state_dict_filter: dict | None = None,
    require_exact_steps: bool = True,
    name: str = "the worker",
) -> NetworkPeer:
    """A :class:`~conformance.network_calls.NetworkPeer` on the run's worker (or
    ``client``, a :meth:`spawn_worker`), with the network's device; any failure of
    a call is a :class:`CheckFailed` naming the hook behind the method."""
    from .network_calls import NetworkPeer

    def call(method: str, params: Any) -> Any:
        hook = hook_of(s, method)
        expected = f"{method} to answer as the network calls it (in {name})"
        if client is None:
            result = s.call(method, params, expected=expected, hook=hook)
            s.decode(method, result, what=expected, hook=hook)  # validated, kept raw
            return result
        s._unblocked(method, expected, hook)
        try:
            result = client.call(method, params)
        except FakecoordError as exc:
            dead = s._client_dead  # the run's own worker is not the one that broke
            failure = s._failure(method, exc, expected, hook)
            s._client_dead = dead
            raise failure from None
        s.decode(method, result, what=expected, hook=hook)
        return result

    return NetworkPeer(
        call=call,
        device=s.device(),
        scratch=s.path,
        model_schema_hash=s.options.model_schema_hash,
        state_dict_filter=dict(state_dict_filter or spec.EMPTY_FILTER),
        require_exact_steps=require_exact_steps,
    )


def hook_of(s: Session, method: str) -> str:
    """The workload hook(s) to fix when ``method`` fails."""
    if method == "export_parameter_pack":
        return s.export_hook
    if method == "import_parameter_pack":
        return s.import_hook
    if method in ("materialize_model_artifact", "load_model_artifact"):
        return f"{method}_path() / {method}()"
    from .session import METHOD_HOOKS

    hooks = METHOD_HOOKS.get(method)
    return " / ".join(f"{h}()" for h in hooks) if hooks else f"the worker ({method})"


__all__ = ["hook_of", "network_peer", "second_workers", "spawn_worker"]
