"""What the checks of one run share: options, worker processes, scratch files.

One :class:`Session` keeps one fakecoord :class:`~fakecoord.WorkerClient`
for every check that speaks the protocol, and starts a new one when a check
killed it.  Its helpers turn every way a call can go wrong (``ok: false``, a
dead or hung worker, a result of the wrong shape) into a
:class:`~conformance.errors.CheckFailed` naming the hook to fix.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import shapes
from .errors import (
    CheckFailed,
    CheckSkipped,
    PackProblem,
    ShapeError,
    UsageError,
    describe,
    one_line,
)
from .values import LayoutUnavailable, LocalLayout, Pack, local_layout, read_pack, write_pack

GENERATOR = "burn-p2p-conformance"
"""``payload["generator"]`` of the micro_epoch refs the suite generates."""
DEFAULT_SCHEMA_HASH = "burn-p2p-conformance-schema"
UNKNOWN_MODEL = "conformance-unknown-model"


def generated_batches(count: int, seed: int = 0) -> list[dict]:
    """``count`` micro_epoch BatchRefs whose payload describes generated data.

    A workload that can train on them builds its own batch from
    ``payload["seed"]`` and ``payload["examples"]`` (see docs/workload-authors.md).
    """
    return [
        {
            "kind": "micro_epoch",
            "lease_id": f"conformance-lease-{seed + i}",
            "microshard_ids": [f"conformance-microshard-{seed + i}"],
            "ordinals": [i],
            "bytes_len": 0,
            "pipeline_kind": "generated-dataset",
            "payload": {"generator": GENERATOR, "seed": seed + i, "examples": 16},
        }
        for i in range(count)
    ]


@dataclass
class Options:
    """How to start and exercise the workload under test.

    Raises :class:`~conformance.errors.UsageError` for a malformed value.
    """

    factory: str
    config: Any = None
    device: str = "cpu"
    batches: list | None = None
    worker_cmd: Sequence[str] | None = None
    pythonpath: Sequence[str] = ()
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    max_examples: int = 10
    call_timeout: float = 120.0
    accept_timeout: float = 60.0
    exit_timeout: float = 10.0
    """Seconds a worker gets to answer a refusal, or to exit after EOF or ``shutdown``."""
    model_schema_hash: str = DEFAULT_SCHEMA_HASH
    custom_split: str = "conformance-holdout"
    """The name sent as ``{"Custom": name}`` to evaluate."""

    def __post_init__(self) -> None:
        module, colon, attr = self.factory.partition(":")
        if not colon or not module.strip() or not attr.strip():
            raise UsageError(
                f"factory must be MODULE:ATTR with both parts non-empty "
                f"(e.g. my_pkg.train:make_workload), got {self.factory!r}"
            )
        if self.config is None:
            self.config = {}
        if type(self.max_examples) is not int or self.max_examples < 1:
            raise UsageError(f"max_examples must be a positive integer, got {self.max_examples!r}")
        for name in ("call_timeout", "accept_timeout", "exit_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.batches is not None:
            if not isinstance(self.batches, list) or not self.batches:
                raise UsageError("batches must be a non-empty JSON array of BatchRef objects")
            for i, ref in enumerate(self.batches):
                if not isinstance(ref, dict) or not isinstance(ref.get("kind"), str):
                    raise UsageError(
                        f'batches[{i}] must be a BatchRef object with a string "kind", got {ref!r}'
                    )
        if self.worker_cmd is not None:
            self.worker_cmd = tuple(self.worker_cmd)
            if not self.worker_cmd:
                raise UsageError("worker_cmd must name a program")
        self.pythonpath = tuple(os.fspath(p) for p in self.pythonpath)


@dataclass
class TrainProbe:
    """The first ``train_window`` of the run, shared by the checks that need data."""

    source: str
    metrics: Any = None
    error: str | None = None
    details: str = ""
    skip: str | None = None


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
        self._raw: Any = None
        self._counter = itertools.count(1)
        self._models: list[str] = []
        self._cache: dict[str, Any] = {}
        self._used_in_check = False
        self.spawns = 0

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker this session started and remove its scratch files."""
        self.drop_raw()
        self.drop_client()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def begin_check(self) -> None:
        self._models = []
        self._used_in_check = False

    def end_check(self) -> None:
        """Release the models the finished check created (failures ignored)."""
        models, self._models = self._models, []
        if self._client is None or self._client_dead:
            return
        from fakecoord.errors import FakecoordError

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
            from fakecoord.errors import FakecoordError

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
                    accept_timeout=o.accept_timeout,
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
        from fakecoord.errors import RemoteError, WorkerExited, WorkerTimeout

        if isinstance(exc, RemoteError):
            got = f"ok:false from {method}: {one_line(exc.message) or '(empty message)'}"
            if "unknown method" in one_line(exc.message).lower():
                hook = f"the worker (it does not serve {method}; PROTOCOL.md §2 lists it)"
            return CheckFailed(expected, got, hook, details=exc.message)
        self._client_dead = True
        if isinstance(exc, WorkerExited):
            got = f"the worker process exited during {method} ({one_line(exc)})"
        elif isinstance(exc, WorkerTimeout):
            got = f"no answer to {method} within {exc.timeout} s (the worker was killed)"
        else:
            got = one_line(exc)
        return CheckFailed(expected, got, hook, details=str(exc))

    def call(
        self, method: str, params: Any, *, expected: str, hook: str, timeout: float | None = None
    ) -> Any:
        """Call ``method``; any failure becomes :class:`CheckFailed` (``expected``, ``hook``)."""
        from fakecoord.errors import FakecoordError

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
        from fakecoord.errors import FakecoordError, RemoteError

        client = self.client()
        try:
            return True, client.call(method, params, timeout=timeout)
        except RemoteError as exc:
            return False, exc.message
        except FakecoordError as exc:
            raise self._failure(method, exc, expected, hook) from None

    def still_serves(self, after: str, hook: str) -> None:
        """The same worker process still answers ``hello``."""
        from fakecoord.errors import FakecoordError

        expected = f"the worker to keep serving after {after}"
        if self._client is None or self._client_dead or self._client.returncode is not None:
            raise CheckFailed(expected, "the worker process is gone", hook)
        try:
            shapes.hello(self._client.call("hello", None, timeout=self.options.exit_timeout))
        except (FakecoordError, ShapeError) as exc:
            if isinstance(exc, FakecoordError):
                raise self._failure("hello", exc, expected, hook) from None
            raise CheckFailed(expected, f"a broken hello answer ({exc})", hook) from None

    def shape(self, validator: Callable[..., Any], value: Any, *, what: str, hook: str) -> Any:
        """Run a :mod:`~conformance.shapes` validator; a mismatch is a :class:`CheckFailed`."""
        try:
            return validator(value, "result")
        except ShapeError as exc:
            raise CheckFailed(
                f"{what} with {exc.path} {exc.expected}",
                f"{exc.path} = {one_line(describe(exc.got))}",
                hook,
            ) from None

    # -- cached facts about the workload ---------------------------------------

    def hello(self) -> dict:
        if "hello" not in self._cache:
            result = self.call("hello", None, expected="hello to answer", hook="the worker (hello)")
            self._cache["hello"] = self.shape(
                shapes.hello, result, what="a hello result", hook="the worker (hello)"
            )
        return self._cache["hello"]

    def capabilities(self) -> list[str]:
        return self.hello()["capabilities"]

    def plan(self, state_filter: dict | None = None, *, fresh: bool = False) -> dict:
        """``parameter_pack_plan`` (cached for the empty filter unless ``fresh``)."""
        key = "plan" if state_filter is None and not fresh else None
        if key and key in self._cache:
            return self._cache[key]
        params = {
            "device": self.options.device,
            "state_dict_filter": state_filter or {"include_globs": [], "exclude_globs": []},
        }
        hook = "init_model() (the plan is computed on a fresh init_model state)"
        result = self.call(
            "parameter_pack_plan", params, expected="a parameter pack plan", hook=hook
        )
        plan = self.shape(shapes.plan, result, what="a Plan", hook=hook)
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
        result = self.call(
            "init_model", {"device": self.options.device}, expected=what, hook="init_model()"
        )
        return self.track(self.shape(shapes.model_handle, result, what=what, hook="init_model()"))

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
        result = self.call("export_parameter_pack", params, expected=what, hook=self.export_hook)
        self.shape(shapes.ack, result, what=what, hook=self.export_hook)
        return self.read(path, self.export_hook)

    def read(self, path: Path, hook: str) -> Pack:
        try:
            return read_pack(path)
        except PackProblem as exc:
            raise CheckFailed("a valid parameter pack on disk", str(exc), hook) from None

    def import_pack(self, path: Path, state_dict_filter: dict | None = None) -> str:
        params: dict[str, Any] = {"device": self.options.device, "parameter_pack_path": str(path)}
        if state_dict_filter is not None:
            params["state_dict_filter"] = state_dict_filter
        what = 'import_parameter_pack to answer {"model_id": str}'
        result = self.call("import_parameter_pack", params, expected=what, hook=self.import_hook)
        return self.track(self.shape(shapes.model_handle, result, what=what, hook=self.import_hook))

    def template(self) -> Pack:
        """The pack of a fresh model (cached): its layout hash, count and values."""
        if "template" not in self._cache:
            self._cache["template"] = self.export(self.new_model(), path=self.path("template"))
        return self._cache["template"]

    def write(self, values: Any, name: str, **overrides: Any) -> Path:
        """Write ``values`` as a pack with the template's layout hash."""
        template = self.template()
        return write_pack(
            self.path(name),
            values,
            overrides.pop("layout_hash", template.layout_hash),
            self.options.model_schema_hash,
            **overrides,
        )

    def crafted(self, seed: int) -> tuple[str, Pack]:
        """A model holding seeded values no ``init_model`` gives, and its exported pack."""
        from .values import perturbed

        path = self.write(perturbed(self.template().values, seed), f"crafted-{seed}")
        model_id = self.import_pack(path)
        return model_id, self.export(model_id)

    # -- the workload built in this process ----------------------------------------

    def local_state(self) -> Any:
        """A fresh ``init_model`` state built here (cached); raises :class:`CheckSkipped`."""
        if "local" not in self._cache:
            self._cache["local"] = self._build_local()
        ok, value = self._cache["local"]
        if not ok:
            raise CheckSkipped(value)
        return value

    def _build_local(self) -> tuple[bool, Any]:
        module_name, _, attr = self.options.factory.partition(":")
        roots = [*self.options.pythonpath]
        if self.options.cwd:
            roots.append(self.options.cwd)
        for root in reversed(roots):
            if root not in sys.path:
                sys.path.insert(0, root)
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            workload = obj(self.options.config)
            return True, workload.init_model(self.options.device)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return False, (
                "cannot build the workload in the conformance process for the independent "
                f"layout recomputation ({type(exc).__name__}: {one_line(exc, 200)})"
            )

    def local_layout(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> LocalLayout:
        """The independent layout of the local state; raises :class:`CheckSkipped`."""
        try:
            return local_layout(self.local_state(), include, exclude)
        except LayoutUnavailable as exc:
            raise CheckSkipped(f"no generic torch layout to recompute: {exc}") from None

    def low_precision(self) -> bool:
        """True when some transported tensor is float16/bfloat16 (wider tolerances)."""
        try:
            dtypes = {dtype for _, dtype in self.local_layout().spans}
        except CheckSkipped:
            return False
        return bool(dtypes & {"torch.float16", "torch.half", "torch.bfloat16"})

    # -- training data ---------------------------------------------------------------

    def train_probe(self) -> TrainProbe:
        """``train_window`` on a fresh model with the run's batches (once per run)."""
        if "probe" in self._cache:
            return self._cache["probe"]
        if self.options.batches is not None:
            batches = self.options.batches
            source = f"the {len(batches)} BatchRefs from --batches"
        else:
            batches = generated_batches(2)
            source = "2 generated micro_epoch refs (no --batches given)"
        probe = TrainProbe(source)
        model_id = self.new_model()
        from fakecoord.errors import FakecoordError, RemoteError

        try:
            probe.metrics = self.client().call(
                "train_window", {"model_id": model_id, "batches": batches}
            )
        except RemoteError as exc:
            probe.error = f"ok:false from train_window: {one_line(exc.message)}"
            probe.details = exc.message
            hook_raised = "raised" in one_line(exc.message) or "Traceback" in exc.message
            if self.options.batches is None and hook_raised:
                probe.skip = (
                    "the workload cannot consume generated micro_epoch refs: "
                    f"{one_line(exc.message, 160)}; pass --batches FILE with refs it can read"
                )
        except FakecoordError as exc:
            failure = self._failure("train_window", exc, "", "")
            probe.error, probe.details = failure.got, failure.details
        self._cache["probe"] = probe
        return probe

    def training_batches(self, count: int = 2) -> tuple[list, str]:
        """Batches for a check that trains, and where they come from.

        Raises :class:`CheckSkipped` when the workload cannot consume the
        generated refs and no ``--batches`` were given.
        """
        if self.options.batches is not None:
            return list(self.options.batches), "the BatchRefs from --batches"
        probe = self.train_probe()
        if probe.skip:
            raise CheckSkipped(probe.skip)
        return generated_batches(count), f"{count} generated micro_epoch refs"

    # -- raw worker processes (framing checks) ---------------------------------------

    def spawn_raw(self) -> Any:
        """A new worker process on a raw socket (the caller closes it)."""
        from .rawworker import RawWorker, RawWorkerError

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
                accept_timeout=o.accept_timeout,
            )
        except RawWorkerError as exc:
            raise CheckFailed(
                "the worker to start and connect", str(exc), "the factory or the worker command"
            ) from None

    def take_raw(self) -> Any:
        """The shared raw worker, handed over (or a new one); the caller closes it."""
        raw = self.raw() if self._raw is not None else self.spawn_raw()
        self._raw = None
        return raw

    def raw(self) -> Any:
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


def candidate(model_id: str, sample_weight: float, quality_weight: float = 1.0) -> dict:
    """A merge Candidate as the coordinator sends it."""
    return {
        "peer_id": f"conformance-peer-{model_id}",
        "head_id": f"conformance-head-{model_id}",
        "artifact_id": f"conformance-artifact-{model_id}",
        "model_id": model_id,
        "sample_weight": sample_weight,
        "quality_weight": quality_weight,
    }


def for_examples(
    strategy: Any, body: Callable[[Any], None], max_examples: int, explicit: Sequence[Any] = ()
) -> int:
    """Run ``body`` on ``explicit`` values, then on up to ``max_examples`` drawn from a
    hypothesis ``strategy``; return how many ran.

    Stops at the first :class:`CheckFailed` and re-raises it with the example
    in ``details``.  There is no shrinking: every example costs worker calls,
    and a hang would cost a timeout per shrink step.  Generation is
    derandomized, so a run is reproducible.
    """
    with _HYPOTHESIS_LOCK:
        return _for_examples(strategy, body, max_examples, explicit)


_HYPOTHESIS_LOCK = threading.Lock()
"""Hypothesis is not thread-safe; runs on separate threads take turns here."""


def _for_examples(
    strategy: Any, body: Callable[[Any], None], max_examples: int, explicit: Sequence[Any]
) -> int:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings

    failures: list[tuple[CheckFailed, Any]] = []
    ran = [0]

    def run(value: Any) -> None:
        if failures:
            return
        ran[0] += 1
        try:
            body(value)
        except CheckFailed as exc:
            failures.append((exc, value))

    for value in explicit:
        run(value)
    if not failures:

        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(strategy)
        def prop(value: Any) -> None:
            run(value)

        prop()
    if failures:
        exc, value = failures[0]
        exc.details = f"falsifying example: {value!r}\n{exc.details}".rstrip()
        raise exc
    return ran[0]


__all__ = [
    "GENERATOR",
    "Options",
    "Session",
    "TrainProbe",
    "candidate",
    "for_examples",
    "generated_batches",
]
