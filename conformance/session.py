"""What the checks of one run share: worker processes, decoded answers, packs, scratch files.

One :class:`Session` keeps one fakecoord :class:`~fakecoord.WorkerClient`
for every check that speaks the protocol, and starts a new one when a check
killed it.  Its helpers turn every way a call can go wrong (``ok: false``, a
dead or hung worker, a result the Rust coordinator could not decode) into a
:class:`~conformance.errors.CheckFailed` naming the hook to fix.  Results
are decoded by :func:`fakecoord.spec.decode_result` (the one spec), packs
read and written by :mod:`fakecoord.packs`.

No workload code runs in this process: every hook call goes to a worker
process, and what needs torch outside the worker runs in the layout probe
(:mod:`conformance.probe`), a bounded subprocess of the suite's own.  Every
wait is bounded by ``Options.call_timeout``; a method that timed out or ended
the worker process once is not called again in the run (later checks that
need it fail at once, naming the first time), so a hanging hook costs one
timeout, not one per check.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fakecoord import packs, spec
from fakecoord.errors import (
    DecodeError,
    FakecoordError,
    PackError,
    RemoteError,
    WorkerExited,
    WorkerTimeout,
)
from fakecoord.packs import Pack

from .errors import (
    CheckFailed,
    CheckSkipped,
    RawWorkerError,
    describe,
    one_line,
)
from .layout import LocalLayout
from .options import (
    DEFAULT_SCHEMA_HASH,
    GENERATOR,
    UNKNOWN_MODEL,
    Options,
    candidate,
    generated_batches,
)
from .probe import Probe, ProbeResult
from .properties import for_examples
from .rawworker import RawWorker
from .training import TrainProbe, run_train_probe

PLAN_KEY_LISTS = ("included_keys", "excluded_float_keys", "ignored_non_float_keys")


def repeated_plan_key(plan: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """``(list, key, first list)`` for a key a Plan lists twice across its three
    key lists (they must be disjoint), or None."""
    seen: dict[str, str] = {}
    for field in PLAN_KEY_LISTS:
        for name in plan[field]:
            if name in seen:
                return field, name, seen[name]
            seen[name] = field
    return None


PROBE_CALLS = 8
"""init_model calls the layout probe makes (packs.layout_stable counts them; see the guide)."""

METHOD_HOOKS: dict[str, tuple[str, ...]] = {
    "capability_probe": ("runtime_device", "capability_probe"),
    "init_model": ("init_model",),
    "parameter_pack_plan": ("init_model",),
    "import_parameter_pack": ("init_model", "import_parameter_pack_path"),
    "train_window": ("train_window",),
    "evaluate": ("evaluate",),
    "run_inner_loop": ("run_inner_loop",),
    "merge_candidate_models": ("merge_candidate_models",),
    "apply_single_root_ema": ("apply_single_root_ema",),
    "reconcile_canonical_model": ("reconcile_canonical_model",),
    "apply_patch": ("apply_patch",),
}
"""The workload hooks a method calls in the worker (a timed-out hook blocks every method using it)."""


class Session:
    """Shared state of one run.  Use as a context manager (or call :meth:`close`)."""

    def __init__(self, options: Options, workdir: str | os.PathLike | None = None) -> None:
        self.options = options
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="burn-p2p-conformance-")
            workdir = self._tmp.name
        self.root = Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._client: Any = None
        self._client_dead = False
        self._raw: RawWorker | None = None
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._models: list[str] = []
        self._cache: dict[str, Any] = {}
        self._used_in_check = False
        self._timed_out: dict[str, str] = {}
        self._probe: Probe | None = None
        self.check_id = ""
        self.warnings: list[str] = []
        self.spawns = 0
        self._extra: list[Any] = []
        self._kept: list[Any] = []

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this session started and remove its scratch files."""
        for client in [*self._extra, *self._kept]:
            client.close()
        self._extra, self._kept = [], []
        self.drop_raw()
        self.drop_client()
        if self._probe is not None:
            self._probe.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def begin_check(self, check_id: str = "") -> None:
        self._models = []
        self._used_in_check = False
        self.check_id = check_id
        self.warnings = []

    def warn(self, text: str) -> None:
        """Record a WARN for the running check: legal, but suspicious (the check still passes)."""
        self.warnings.append(one_line(text))

    def end_check(self) -> None:
        """Release the models the finished check created (failures ignored); stop the
        extra workers it started."""
        extra, self._extra = self._extra, []
        for client in extra:
            client.close()
        models, self._models = self._models, []
        if self._client is None or self._client_dead:
            return
        for model_id in models:
            try:
                self._client.call("release_model", {"model_id": model_id}, timeout=10.0)
            except FakecoordError:
                self._client_dead = self._client.returncode is not None
                if self._client_dead:
                    return

    def path(self, name: str) -> Path:
        """A fresh, not yet existing path in the scratch directory."""
        return self.root / f"{next(self._counter):03d}-{name}"

    # -- the protocol client ---------------------------------------------------

    def client(self) -> Any:
        """The live WorkerClient, started (again) when needed.

        Raises :class:`CheckFailed` when the worker cannot start; the runner
        turns that into a usage error before the first check.
        """
        if self._client is not None and (self._client_dead or self._client.returncode is not None):
            if self._used_in_check and not self._client_dead:
                # It answered this check earlier and died since: that is the check's business.
                status = self._client.returncode
                lines = self._client.stderr_tail().strip().splitlines()
                tail = one_line(lines[-1]) if lines else "(empty)"
                raise CheckFailed(
                    "the worker to keep serving",
                    f"the worker process exited (status {status}) after answering; stderr: {tail}",
                    "the worker or the hook that ran last",
                )
            self.drop_client()
        if self._client is None:
            from fakecoord import WorkerClient

            self.spawns += 1
            log = self.root / f"worker-{self.spawns}.log"
            o = self.options
            try:
                self._client = WorkerClient.spawn(
                    o.factory,
                    o.config,
                    worker_cmd=o.worker_cmd,
                    env=o.env,
                    cwd=o.cwd,
                    pythonpath=o.pythonpath,
                    call_timeout=o.call_timeout,
                    accept_timeout=o.accept_timeout or o.call_timeout,
                    stderr=str(log),
                    shutdown_timeout=o.exit_timeout,
                )
            except FakecoordError as exc:
                raise CheckFailed(
                    "the worker to start and connect",
                    str(exc),
                    "the factory, its config, or the worker command",
                    details=str(exc),
                ) from None
            self._client_dead = False
        self._used_in_check = True
        return self._client

    def drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _failure(self, method: str, exc: Exception, expected: str, hook: str) -> CheckFailed:
        if isinstance(exc, RemoteError):
            got = f"ok:false from {method}: {one_line(exc.message) or '(empty message)'}"
            if "unknown method" in one_line(exc.message).lower():
                hook = f"the worker (it does not serve {method}; docs/protocol.md §2 lists it)"
            return CheckFailed(expected, got, hook, details=exc.message)
        self._client_dead = True
        if isinstance(exc, WorkerExited):
            got = one_line(exc)  # "METHOD: the worker exited (status N) during the call: ..."
            self._block(method, f"{method} ended the worker process (status {exc.returncode})")
        elif isinstance(exc, WorkerTimeout):
            got = f"no answer to {method} within {exc.timeout:g} s (the worker was killed)"
            self._block(method, f"{method} did not answer within {exc.timeout:g} s")
        else:
            got = one_line(exc)
        return CheckFailed(expected, got, hook, details=str(exc))

    def _block(self, method: str, what: str) -> None:
        """Remember a method that timed out or ended the worker (and its hook, when it
        calls only one)."""
        where = f" in {self.check_id}" if self.check_id else ""
        text = f"{what}{where}; not called again in this run"
        self._timed_out.setdefault(method, text)
        hooks = METHOD_HOOKS.get(method, ())
        if len(hooks) == 1:
            self._timed_out.setdefault("hook:" + hooks[0], text)

    def timed_out(self, method: str) -> str | None:
        """Why ``method`` is not called again (an earlier timeout), or None."""
        if method in self._timed_out:
            return self._timed_out[method]
        for hook in METHOD_HOOKS.get(method, ()):
            if "hook:" + hook in self._timed_out:
                return self._timed_out["hook:" + hook]
        return None

    def _unblocked(self, method: str, expected: str, hook: str) -> None:
        why = self.timed_out(method)
        if why is not None:
            raise CheckFailed(expected, f"no attempt: {why}", hook)

    def call(
        self, method: str, params: Any, *, expected: str, hook: str, timeout: float | None = None
    ) -> Any:
        """Call ``method``; any failure becomes :class:`CheckFailed` (``expected``, ``hook``)."""
        self._unblocked(method, expected, hook)
        client = self.client()
        try:
            return client.call(method, params, timeout=timeout)
        except FakecoordError as exc:
            raise self._failure(method, exc, expected, hook) from None

    def attempt(
        self, method: str, params: Any, *, expected: str, hook: str, timeout: float | None = None
    ) -> tuple[bool, Any]:
        """``(True, result)`` or ``(False, error text)``; a dead or hung worker,
        or a broken response, raises :class:`CheckFailed`."""
        self._unblocked(method, expected, hook)
        client = self.client()
        try:
            return True, client.call(method, params, timeout=timeout)
        except RemoteError as exc:
            return False, exc.message
        except FakecoordError as exc:
            raise self._failure(method, exc, expected, hook) from None

    def decode(
        self,
        method: str,
        result: Any,
        *,
        what: str,
        hook: str,
        hooks: Mapping[str, str] | None = None,
    ) -> Any:
        """``result`` decoded as the Rust coordinator decodes ``method``'s
        (:func:`fakecoord.spec.decode_result`); a refusal is a :class:`CheckFailed`
        naming ``hook``, or ``hooks[prefix]`` for a field under that path prefix."""
        try:
            return spec.decode_result(method, result)
        except DecodeError as exc:
            field = exc.field or ""
            for prefix, owner in (hooks or {}).items():
                if field == prefix or field.startswith((f"{prefix}.", f"{prefix}[")):
                    hook = owner
            raise CheckFailed(
                f"{what} with {exc.field} {exc.expected}",
                f"{exc.field} = {one_line(exc.got_text)}",
                hook,
            ) from None

    def request(
        self, method: str, params: Any, *, expected: str, hook: str, timeout: float | None = None
    ) -> Any:
        """:meth:`call`, then :meth:`decode` the result against ``expected``."""
        result = self.call(method, params, expected=expected, hook=hook, timeout=timeout)
        return self.decode(method, result, what=expected, hook=hook)

    def handle(self, method: str, params: Any, *, what: str, hook: str) -> str:
        """A model handle answered by ``method``: a non-empty string (beyond what serde checks)."""
        model_id = self.request(method, params, expected=what, hook=hook)
        if not model_id:
            raise CheckFailed(
                f"{what} with result.model_id a non-empty string", repr(model_id), hook
            )
        return model_id

    def still_serves(self, after: str, hook: str) -> None:
        """The same worker process still answers ``hello``."""
        expected = f"the worker to keep serving after {after}"
        if self._client is None or self._client_dead or self._client.returncode is not None:
            raise CheckFailed(expected, "the worker process is gone", hook)
        try:
            self._client.hello(timeout=self.options.exit_timeout)
        except DecodeError as exc:
            raise CheckFailed(expected, f"a broken hello answer ({exc})", hook) from None
        except FakecoordError as exc:
            raise self._failure("hello", exc, expected, hook) from None

    # -- cached facts about the workload ---------------------------------------

    def hello(self) -> dict:
        if "hello" not in self._cache:
            what, hook = "a hello result", "the worker (hello)"
            hello = self.request("hello", None, expected=what, hook=hook)
            if not hello["workload_name"]:
                raise CheckFailed(
                    f"{what} with result.workload_name a non-empty string", "''", hook
                )
            self._cache["hello"] = hello
        return self._cache["hello"]

    def capabilities(self) -> list[str]:
        return self.hello()["capabilities"]

    def capability(self) -> dict:
        """``capability_probe``'s decoded result (cached)."""
        if "capability" not in self._cache:
            hooks = "runtime_device() / capability_probe()"
            what = "a capability_probe result {runtime_device: str, capability: CapabilityEstimate}"
            result = self.call("capability_probe", None, expected=what, hook=hooks)
            fields = {
                "result.runtime_device": "runtime_device()",
                "result.capability": "capability_probe()",
            }
            decoded = self.decode("capability_probe", result, what=what, hook=hooks, hooks=fields)
            self._cache["capability"] = decoded
        return self._cache["capability"]

    def device(self) -> str:
        """The device every ``init_model`` / ``import_parameter_pack`` /
        ``parameter_pack_plan`` call gets: the workload's own ``runtime_device``
        from ``capability_probe``, as the network sends it (lib.rs
        ``PythonTorchProject::new_with_data_pipeline`` keeps
        ``probe.runtime_device`` and passes it to every such call), unless
        ``--device`` overrides it (protocol.capability_probe WARNs when they
        differ).  When ``capability_probe`` cannot answer: the override, else
        ``"cpu"`` (protocol.capability_probe fails for that)."""
        if "device" not in self._cache:
            override = self.options.device
            if override is not None:
                self._cache["device"] = override
            else:
                try:
                    self._cache["device"] = self.capability()["runtime_device"]
                except CheckFailed:
                    return "cpu"
        return self._cache["device"]

    def device_override(self) -> str | None:
        """Why ``--device`` differs from the workload's ``runtime_device`` (a WARN), or None."""
        override = self.options.device
        if override is None:
            return None
        own = self.capability()["runtime_device"]
        if own == override:
            return None
        return (
            f"{self.options.flag('device')} {override!r} overrides the workload's "
            f"runtime_device {own!r}; the "
            f"network always sends {own!r} to init_model, import_parameter_pack and "
            "parameter_pack_plan, so this run does not certify that device string"
        )

    def plan(self, state_filter: dict | None = None, *, fresh: bool = False) -> dict:
        """``parameter_pack_plan`` (cached for the empty filter unless ``fresh``).

        Beyond decoding, its three key lists must be disjoint and list each key once.
        """
        key = "plan" if state_filter is None and not fresh else None
        if key and key in self._cache:
            return self._cache[key]
        params = {
            "device": self.device(),
            "state_dict_filter": state_filter or dict(spec.EMPTY_FILTER),
        }
        hook = "init_model() (the plan is computed on a fresh init_model state)"
        plan = self.request("parameter_pack_plan", params, expected="a Plan", hook=hook)
        repeated = repeated_plan_key(plan)
        if repeated is not None:
            field, name, first = repeated
            raise CheckFailed(
                f"a Plan with result.{field} keys listed once across the plan "
                f"({name!r} is also in {first})",
                f"result.{field} = {one_line(describe(plan[field]))}",
                hook,
            )
        if key:
            self._cache[key] = plan
        return plan

    @property
    def custom_packs(self) -> bool:
        try:
            return bool(self.plan()["uses_custom_parameter_pack_hooks"])
        except CheckFailed:
            return False

    @property
    def export_hook(self) -> str:
        if self.custom_packs:
            return "export_parameter_pack_path()"
        return "init_model() state (exported by the worker's generic torch layout)"

    @property
    def import_hook(self) -> str:
        if self.custom_packs:
            return "import_parameter_pack_path()"
        return "init_model() state (imported by the worker's generic torch layout)"

    # -- models and packs --------------------------------------------------------

    def track(self, model_id: str) -> str:
        self._models.append(model_id)
        return model_id

    def new_model(self) -> str:
        """A fresh ``init_model`` handle (released after the check)."""
        what = 'init_model to answer {"model_id": str}'
        params = {"device": self.device()}
        return self.track(self.handle("init_model", params, what=what, hook="init_model()"))

    def export(
        self,
        model_id: str,
        *,
        state_dict_filter: dict | None = None,
        schema_hash: str | None = None,
        path: Path | None = None,
    ) -> Pack:
        """Export ``model_id`` and read the pack back."""
        path = path or self.path("pack")
        params: dict[str, Any] = {
            "model_id": model_id,
            "parameter_pack_path": str(path),
            "model_schema_hash": schema_hash or self.options.model_schema_hash,
        }
        if state_dict_filter is not None:
            params["state_dict_filter"] = state_dict_filter
        what = "export_parameter_pack to write a pack and answer an ack object"
        self.request("export_parameter_pack", params, expected=what, hook=self.export_hook)
        return self.read(path, self.export_hook)

    def result(self, model_id: str, hook: str, what: str) -> Pack:
        """Export a hook's result and check it has the template's layout and count first
        (a merge that changes the parameter count is a FAIL with that reason, not a
        comparison of arrays of different sizes)."""
        return self.same_layout(self.export(model_id), hook, what)

    def same_layout(self, pack: Pack, hook: str, what: str) -> Pack:
        """``pack``, after checking it has the template's layout hash and parameter count."""
        want = self.template()
        if (pack.layout_hash, pack.parameter_count) != (want.layout_hash, want.parameter_count):
            changed = (
                f"{pack.parameter_count} values instead of {want.parameter_count}"
                if pack.parameter_count != want.parameter_count
                else f"layout {pack.layout_hash} instead of {want.layout_hash}"
            )
            raise CheckFailed(
                f"{what} in the base's layout ({want.parameter_count} values, layout "
                f"{want.layout_hash}): every peer compares packs by layout hash",
                changed,
                hook + ": keep every key, shape and dtype of the base",
            )
        return pack

    def read(self, path: Path, hook: str) -> Pack:
        """The pack at ``path``, validated and read into memory (fakecoord.packs)."""
        try:
            return packs.open_pack(path, in_memory=True)
        except PackError as exc:
            raise CheckFailed("a valid parameter pack on disk", str(exc), hook) from None

    def import_pack(self, path: Path, state_dict_filter: dict | None = None) -> str:
        params: dict[str, Any] = {"device": self.device(), "parameter_pack_path": str(path)}
        if state_dict_filter is not None:
            params["state_dict_filter"] = state_dict_filter
        what = 'import_parameter_pack to answer {"model_id": str}'
        return self.track(
            self.handle("import_parameter_pack", params, what=what, hook=self.import_hook)
        )

    def template(self) -> Pack:
        """The pack of a fresh model (cached): its layout hash, count and values."""
        if "template" not in self._cache:
            self._cache["template"] = self.export(self.new_model(), path=self.path("template"))
        return self._cache["template"]

    def write(self, values: Any, name: str) -> Path:
        """Write ``values`` as a pack with the template's layout hash."""
        return packs.write_pack(
            self.path(name),
            values,
            layout_hash=self.template().layout_hash,
            model_schema_hash=self.options.model_schema_hash,
        )

    def crafted(self, seed: int) -> tuple[str, Pack]:
        """A model holding seeded values no ``init_model`` gives (tied weights kept tied),
        and its exported pack."""
        from .values import perturbed

        values = self.tied(perturbed(self.template().values, seed))
        return self.holding(values, f"crafted-{seed}")

    def tied(self, values: Any) -> Any:
        """``values`` with tied weights (two names, one tensor) equal, as every peer's pack
        holds them; unchanged when the layout is not the generic one or is unknown."""
        if "tie_layout" not in self._cache:
            layout = None
            if not self.custom_packs:
                try:
                    layout = self.local_layout()
                except (CheckSkipped, CheckFailed):
                    layout = None
            self._cache["tie_layout"] = layout
        layout = self._cache["tie_layout"]
        return layout.tie(values) if layout is not None else values

    def holding(self, values: Any, name: str) -> tuple[str, Pack]:
        """A model imported from a pack of ``values`` (template layout), and its exported pack.

        The first one also tells :meth:`low_precision`: values that do not come
        back as written were rounded by a float16/bfloat16 tensor (or a lossy import).
        """
        from .values import same_bits

        model_id = self.import_pack(self.write(values, name))
        pack = self.export(model_id)
        self._cache.setdefault("low_precision", not same_bits(pack.values, values))
        return model_id, pack

    def low_precision(self) -> bool:
        """True when crafted float32 values came back rounded (wider tolerances)."""
        if "low_precision" not in self._cache:
            self.crafted(0)
        return bool(self._cache["low_precision"])

    # -- the layout probe: the workload built in a subprocess of the suite's own -----

    def start_probe(self) -> None:
        """Start the layout probe in the background (once)."""
        if self._probe is None:
            o = self.options
            self._probe = Probe(
                factory=o.factory,
                config=o.config,
                device=o.device,
                calls=PROBE_CALLS,
                batches=o.batch_refs if o.batch_refs is not None else generated_batches(2),
                root=self.root / "probe",
                timeout=o.call_timeout,
                command=o.probe_cmd,
                pythonpath=o.pythonpath,
                env=o.env,
                cwd=o.cwd,
            )
        self._probe.start()

    def probe(self) -> ProbeResult:
        """The layout probe's result (started if needed; waits at most ``call_timeout``)."""
        self.start_probe()
        assert self._probe is not None
        return self._probe.result()

    def local_layout(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> LocalLayout:
        """The layout recomputed from the probe's first model (under a filter).

        Raises :class:`CheckSkipped` when the workload cannot be built outside
        the worker or has an opaque state, :class:`CheckFailed` when a hook
        hung, crashed or ended the probe process before any layout was seen.
        """
        result = self.probe()
        if result.layouts:
            return result.layouts[0].filtered(include, exclude)
        if result.opaque:
            raise CheckSkipped(f"no generic torch layout to recompute: {result.opaque}")
        if result.setup_failed:
            raise CheckSkipped(
                "cannot build the workload outside the worker for the independent layout "
                f"recomputation ({result.error})"
            )
        raise CheckFailed(
            "init_model to build a model in the layout probe (a process of the suite's own)",
            result.error or "no layout reported",
            "init_model() (or the factory): never block, exit or crash",
            details=result.details,
        )

    # -- training data ---------------------------------------------------------------

    def train_probe(self) -> TrainProbe:
        """``train_window`` on a fresh model with the run's batches (once per run)."""
        if "probe" not in self._cache:
            self._cache["probe"] = run_train_probe(self)
        return self._cache["probe"]

    def untrained(self) -> str | None:
        """Why the run's training checks could not run (the first train_window on the
        run's batches raised or did 0 steps), when a check asked; else None."""
        probe = self._cache.get("probe")
        return probe.skip if probe is not None else None

    def training_batches(self, count: int = 2) -> tuple[list, str]:
        """Batches for a check that trains, and where they come from.

        Raises :class:`CheckSkipped` when the workload cannot consume the
        generated refs (it raised, or did 0 steps on them), or did 0 steps on
        the ``--batches`` refs.
        """
        probe = self.train_probe()
        if probe.skip:
            raise CheckSkipped(probe.skip)
        if self.options.batch_refs is not None:
            return list(
                self.options.batch_refs
            ), f"the BatchRefs from {self.options.flag('batches')}"
        return generated_batches(count), f"{count} generated micro_epoch refs"

    # -- raw worker processes (framing checks) ---------------------------------------

    def spawn_raw(self) -> RawWorker:
        """A new worker process on a raw socket (the caller closes it)."""
        self.spawns += 1
        o = self.options
        try:
            return RawWorker.spawn(
                o.factory,
                o.config,
                log_path=self.root / f"raw-worker-{self.spawns}.log",
                worker_cmd=o.worker_cmd,
                env=o.env,
                cwd=o.cwd,
                pythonpath=o.pythonpath,
                accept_timeout=o.accept_timeout or o.call_timeout,
            )
        except RawWorkerError as exc:
            raise CheckFailed(
                "the worker to start and connect",
                str(exc),
                "the factory or the worker command",
                details=str(exc),
            ) from None

    def take_raw(self) -> RawWorker:
        """The shared raw worker, handed over (or a new one); the caller closes it."""
        raw = self.raw() if self._raw is not None else self.spawn_raw()
        self._raw = None
        return raw

    def raw(self) -> RawWorker:
        """The shared raw worker (started again if it has exited)."""
        if self._raw is not None and self._raw.process.poll() is not None:
            self.drop_raw()
        if self._raw is None:
            self._raw = self.spawn_raw()
        return self._raw

    def drop_raw(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()


__all__ = [
    "DEFAULT_SCHEMA_HASH",
    "GENERATOR",
    "UNKNOWN_MODEL",
    "Options",
    "Session",
    "TrainProbe",
    "candidate",
    "for_examples",
    "generated_batches",
    "repeated_plan_key",
]
