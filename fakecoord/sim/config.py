"""A run's settings (:class:`SimConfig`), their checks, and the choices derived from them.

Everything here is checked before the run creates anything:
:meth:`SimConfig.validate` checks the values themselves, :func:`check_inputs`
what they name outside the process (the ``--batches`` file, the factory's
module, a non-CPU device).  Both raise :class:`~fakecoord.errors.SettingsError`
(``python -m fakecoord run`` exits 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import PolicyError, SettingsError, one_line
from ..network import aggregation as aggregations
from ..network import codecs
from ..network.policy import (
    DiLoCoAggregationPolicy,
    DiLoCoPolicy,
    GradientCodec,
)
from ..network.transfer import parse_links
from .faults import Fault, FaultPlan, parse_fault

DEMO_FACTORY = "fakecoord.demo:make_workload"
MAX_PEERS = 4096
"""Peers (one worker process each) and threads per worker, at most."""
MAX_COUNT = 10**9
"""Rounds and ``--max-failed-rounds``, at most."""
U32_MAX = 2**32 - 1
"""``--inner-steps`` travels as ``num_inner_steps: u32``."""
U16_MAX = 2**16 - 1
"""The group sizes are ``u16`` in the network's ``DiLoCoPolicy``."""
MAX_SEED = 2**32 - 1
"""``--seed`` is in ``0..MAX_SEED``: numpy's legacy seeding takes no more, torch and random take it."""
WINDOW_STEPS = 20
"""``--inner-steps`` of the windows protocol when not given (DiLoCo's is the policy's)."""
POLICY_SHORTHANDS = ("target_group_size", "minimum_group_size", "checkpoint_interval_rounds")
"""SimConfig fields that are the policy's fields of the same name (besides ``inner_steps``)."""
PROTOCOLS = ("diloco", "windows")
BACKENDS = ("worker", "command")
MERGE_POLICIES = (
    "WeightedMean",
    "NormClippedWeightedMean",
    "TrimmedMean",
    "Ema",
    "QualityWeightedEma",
)


@dataclass
class SimConfig:
    """Every setting of a run (what ``python -m fakecoord run`` and ``--config FILE.toml`` parse
    into; docs/simulation.md describes each)."""

    protocol: str = "diloco"
    peers: int = 4
    rounds: int = 10
    inner_steps: int = None  # type: ignore[assignment]
    """DiLoCo: a shorthand for the policy's ``num_inner_steps``; None (the default): the
    policy's (the network's default: 32).  Windows: steps per window (None: 20).
    :meth:`validate` sets it."""
    target_group_size: int = None  # type: ignore[assignment]
    """A shorthand for the policy's ``target_group_size`` (None: the policy's; the network's
    default: 4): the first N peers by id (as strings) form a round's group."""
    minimum_group_size: int = None  # type: ignore[assignment]
    """A shorthand for the policy's ``minimum_group_size`` (None: the policy's, 1): fewer
    participants or contributions fail the round."""
    checkpoint_interval_rounds: int = None  # type: ignore[assignment]
    """A shorthand for the policy's ``checkpoint_interval_rounds`` (None: the policy's, 8):
    the network publishes a checkpoint head every N completed rounds."""
    seed: int = 0
    factory: str | None = None
    """None: the built-in demo workload."""
    config: Any = None
    batches: str | None = None
    """A JSON file (a list of batch refs per peer, or one list dealt round-robin) or a data directory."""
    worker_cmd: list[str] | None = None
    faults: list[Fault] = field(default_factory=list)
    policy: Any = None
    """The network's ``DiLoCoPolicy`` in its serde JSON shape (``--policy``, ``[policy]``;
    absent fields take the network's defaults).  :meth:`validate` makes it complete."""
    beyond_network: bool = False
    """Run an outer optimizer the network refuses for Python workloads (momentum, Nesterov,
    weight decay) as the simulation's own."""
    aggregate: str | None = None
    """Shorthands over ``policy`` (None: the policy's): an aggregation name
    (:data:`fakecoord.network.aggregation.AGGREGATION_NAMES`), a codec name
    (:data:`fakecoord.network.codecs.CODEC_NAMES`), the outer SGD's lr, momentum, Nesterov."""
    codec: str | None = None
    outer_lr: float | None = None
    outer_momentum: float | None = None
    nesterov: bool | None = None
    diloco_backend: str = "worker"
    command: list[str] | None = None
    baseline: bool = False
    baseline_steps: str = "total"
    """``total``: peers x inner_steps per round on all peers' batches; ``per-peer``: inner_steps on peer 0's."""
    merge_policy: Any = "QualityWeightedEma"
    reconcile: Any = field(default_factory=lambda: {"RootEma": {"canonical_weight": 0.75}})
    call_timeout: float = 60.0
    start_timeout: float = 60.0
    device: str | None = None
    """None (the network's behaviour): every ``device`` is the workload's own ``runtime_device``
    from ``capability_probe``.  A string overrides it (the network never sends one)."""
    link: list[str] = field(default_factory=list)
    """``MBIT[/LATENCY_MS]`` for every peer or ``peer-N=MBIT[/LATENCY_MS]`` for one
    (:mod:`fakecoord.network.transfer`); empty: no transfer time is modelled."""
    microshards_per_step: int = 2
    state_dict_filter: dict | None = None
    eval_metric: str = "loss"
    threads_per_peer: int | None = None
    """Threads for each worker's torch, OpenMP and MKL; None: ``max(1, cores // peers)``;
    0: leave the workload's defaults (oversubscribes when peers share cores)."""
    max_failed_rounds: int = 1
    """Stop after this many consecutive rounds in which no peer contributed."""
    workers: int | None = None
    """None: one worker process per peer (the network's shape).  N: the peers are hosted on N
    worker processes, each peer one set of model handles (:mod:`fakecoord.sim.hosting`)."""
    start_method: str = "fork-server"
    """``fork-server``: fork workers from one warm process (:mod:`fakecoord.forkserver`)
    where possible; ``spawn``: a fresh interpreter per worker (``--worker-cmd`` always is)."""

    @property
    def is_demo(self) -> bool:
        return self.factory is None or self.factory == DEMO_FACTORY

    @property
    def workload_factory(self) -> str:
        return self.factory or DEMO_FACTORY

    def __post_init__(self) -> None:
        self._fill_from_policy(strict=False)

    def _fill_from_policy(self, strict: bool) -> None:
        """Give the policy's value to every policy shorthand left at None (``strict``: a policy
        that does not parse raises :class:`SettingsError`; else it is left for
        :meth:`validate` to report)."""
        try:
            base = (
                DiLoCoPolicy.default() if self.policy is None else DiLoCoPolicy.coerce(self.policy)
            )
        except PolicyError as exc:
            if strict:
                raise SettingsError(f"--policy: {exc}") from None
            return
        if strict:  # the policy as given, before any flag: refused with the network's reason
            try:
                base.validate()
            except PolicyError as exc:
                raise SettingsError(f"the network refuses this policy: {exc}") from None
        if self.inner_steps is None:
            self.inner_steps = base.num_inner_steps if self.protocol == "diloco" else WINDOW_STEPS
        for name in POLICY_SHORTHANDS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(base, name))

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the first invalid setting (no I/O)."""
        self._fill_from_policy(strict=True)
        checks = [
            (self.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}"),
            (_in(self.peers, 1, MAX_PEERS), f"--peers must be in 1..{MAX_PEERS}"),
            (_in(self.rounds, 1, MAX_COUNT), f"--rounds must be in 1..{MAX_COUNT}"),
            (_in(self.inner_steps, 1, U32_MAX), f"--inner-steps must be in 1..{U32_MAX} (u32)"),
            (
                _is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
                f"--seed must be an integer in 0..{MAX_SEED} (2**32-1: the range random, numpy "
                f"and torch all accept), got {self.seed!r}",
            ),
            (_in(self.target_group_size, 1, U16_MAX), f"--target-group-size must be in 1..{U16_MAX} (u16)"),
            (_in(self.minimum_group_size, 1, U16_MAX), f"--minimum-group-size must be in 1..{U16_MAX} (u16)"),
            (
                _in(self.checkpoint_interval_rounds, 1, U32_MAX),
                f"--checkpoint-interval-rounds must be in 1..{U32_MAX} (u32)",
            ),
            (
                not (_is_int(self.minimum_group_size) and _is_int(self.target_group_size))
                or self.minimum_group_size <= self.target_group_size,
                # DiLoCoPolicy::validate (burn_p2p_core schema/diloco.rs)
                f"DiLoCo minimum_group_size ({self.minimum_group_size}) cannot exceed "
                f"target_group_size ({self.target_group_size})",
            ),
            (
                self.device is None or (isinstance(self.device, str) and self.device != ""),
                "--device must name a device (leave it out to use the workload's runtime_device)",
            ),
            (
                self.aggregate is None or self.aggregate in aggregations.AGGREGATION_NAMES,
                f"--aggregate must be one of {', '.join(aggregations.AGGREGATION_NAMES)}",
            ),
            (
                self.codec is None or self.codec in codecs.CODEC_NAMES,
                f"--codec must be one of {', '.join(codecs.CODEC_NAMES)}",
            ),
            (type(self.beyond_network) is bool, "--beyond-network is a flag (true or false)"),
            (
                self.diloco_backend in BACKENDS,
                f"--diloco-backend must be one of {', '.join(BACKENDS)}",
            ),
            (_positive(self.call_timeout), "--call-timeout must be a positive number of seconds"),
            (_positive(self.start_timeout), "--start-timeout must be a positive number of seconds"),
            (
                _in(self.microshards_per_step, 1, U32_MAX),
                f"--microshards-per-step must be in 1..{U32_MAX}",
            ),
            (
                self.baseline_steps in ("total", "per-peer"),
                "--baseline-steps must be total or per-peer",
            ),
            (
                self.diloco_backend == "worker" or self.protocol == "diloco",
                "--diloco-backend command only applies to --protocol diloco",
            ),
            (
                self.command is None or self.diloco_backend == "command",
                "--command needs --diloco-backend command",
            ),
            (self.factory is not None or self.config is None, "--config-json needs --factory"),
            (
                self.is_demo or self.batches is not None,
                "--factory needs --batches FILE|DIR (the demo data only fits the demo workload)",
            ),
            (bool(self.command) or self.command is None, "--command must name a program"),
            (bool(self.worker_cmd) or self.worker_cmd is None, "--worker-cmd must name a program"),
            (
                isinstance(self.eval_metric, str) and self.eval_metric != "",
                "--eval-metric must name a metric of the workload's evaluate",
            ),
            (
                self.threads_per_peer is None or _in(self.threads_per_peer, 0, MAX_PEERS),
                f"--threads-per-peer must be 0 (the workload's defaults) or a count up to "
                f"{MAX_PEERS}",
            ),
            (
                _in(self.max_failed_rounds, 1, MAX_COUNT),
                f"--max-failed-rounds must be in 1..{MAX_COUNT}",
            ),
            (
                self.workers is None or (_is_int(self.workers) and 1 <= self.workers <= self.peers),
                "--workers must be between 1 and --peers",
            ),
            (
                self.workers is None or self.diloco_backend == "worker",
                "--workers hosts peers on worker processes; --diloco-backend command has none",
            ),
            (
                self.workers is None
                or not any(f.kind in ("crash", "hang") for f in self.faults),
                "--workers: crash and hang faults would stop every peer on the worker; "
                "use error, slow or drop",
            ),
            (
                self.start_method in ("fork-server", "spawn"),
                "--start-method must be fork-server or spawn",
            ),
            (
                self.protocol == "diloco" or self.merge_policy in MERGE_POLICIES
                or isinstance(self.merge_policy, dict),
                f"--merge-policy must be one of {', '.join(MERGE_POLICIES)}",
            ),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        policy = self.network_policy()
        self.policy = policy.to_json()
        if self.factory is not None:
            module, colon, attr = self.factory.partition(":")
            if not colon or not module.strip() or not attr.strip():
                raise SettingsError(
                    f"--factory must be MODULE:ATTR (e.g. my_pkg.train:make_workload), "
                    f"got {self.factory!r}"
                )
        if self.state_dict_filter is not None:
            _check_filter(self.state_dict_filter)
        try:
            parse_links(self.link, self.peers)
        except ValueError as exc:
            raise SettingsError(f"--link: {exc}") from None
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"--config-json: not standard JSON ({exc})") from None
        _check_reconcile(self.reconcile)
        self.fault_plan()

    def network_policy(self) -> DiLoCoPolicy:
        """The run's ``DiLoCoPolicy``: ``policy`` with the shorthands given over it, checked as
        the network checks it (``DiLoCoPolicy::validate``, and for DiLoCo the refusals a
        Python workload meets; the outer optimizer's only without ``beyond_network``).
        Raises :class:`SettingsError` with the network's reason."""
        try:
            policy = (
                DiLoCoPolicy.default() if self.policy is None else DiLoCoPolicy.coerce(self.policy)
            )
        except PolicyError as exc:
            raise SettingsError(f"--policy: {exc}") from None
        changes: dict[str, Any] = {}
        if self.inner_steps is not None and self.protocol == "diloco":
            changes["num_inner_steps"] = self.inner_steps
        for name in POLICY_SHORTHANDS:
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        high = {"target_group_size": 2**16 - 1, "minimum_group_size": 2**16 - 1}
        for name, value in changes.items():
            if not _is_int(value) or not 0 <= value <= high.get(name, 2**32 - 1):
                flag = "--" + ("inner_steps" if name == "num_inner_steps" else name).replace(
                    "_", "-"
                )
                raise SettingsError(
                    f"{flag} must be an integer in 0..={high.get(name, 2**32 - 1)} (the network's "
                    f"{'u16' if name in high else 'u32'}), got {value!r}"
                )
        if self.codec is not None:
            changes["codec"] = GradientCodec.shorthand(self.codec)
        if self.aggregate is not None:
            changes["aggregation_policy"] = DiLoCoAggregationPolicy.shorthand(self.aggregate)
        outer = policy.outer_optimizer_policy
        for name, flag, micros in (
            ("outer_lr", "--outer-lr", "learning_rate_micros"),
            ("outer_momentum", "--outer-momentum", "momentum_micros"),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0 <= value <= 2**64 / 1e6)
            ):
                raise SettingsError(f"{flag} must be a number >= 0, got {value!r}")
            change: dict[str, Any] = {micros: round(value * 1_000_000)}
            outer = dataclasses.replace(outer, **change)
        if self.nesterov is not None:
            if type(self.nesterov) is not bool:
                raise SettingsError(f"--nesterov is a flag (true or false), got {self.nesterov!r}")
            outer = dataclasses.replace(outer, nesterov=self.nesterov)
        if outer != policy.outer_optimizer_policy:
            changes["outer_optimizer_policy"] = outer
        policy = policy.replace(**changes)
        try:
            if self.protocol == "diloco":
                policy.check(beyond_network=self.beyond_network)
            else:
                policy.validate()
        except PolicyError as exc:
            hint = ""
            if exc.stage == "outer":
                hint = (
                    " (the network runs only plain SGD for Python workloads; "
                    "--beyond-network runs this optimizer as the simulation's own)"
                )
            raise SettingsError(f"the network refuses this policy: {exc}{hint}") from None
        return policy

    def network_refusal(self) -> str | None:
        """The network's reason for refusing the run's outer optimizer, when
        ``beyond_network`` runs it anyway (for the header, summary and report)."""
        if not self.beyond_network or self.protocol != "diloco":
            return None
        refused = self.network_policy().refusal()
        return refused.reason if refused is not None else None

    def fault_plan(self) -> FaultPlan:
        return FaultPlan(self.faults, self.peers, self.rounds, self.seed)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["faults"] = [f.spec for f in self.faults]
        return data

    @classmethod
    def from_json(cls, data: dict) -> SimConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["faults"] = [parse_fault(s) for s in values.get("faults", [])]
        return cls(**values)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e9


def _check_reconcile(value: Any) -> None:
    """``Replace`` or ``{"RootEma": {"canonical_weight": w}}`` with a finite ``w`` in [0, 1]."""
    if value == "Replace":
        return
    root = value.get("RootEma") if isinstance(value, dict) else None
    weight = root.get("canonical_weight") if isinstance(root, dict) else root
    if not _number(weight) or not 0.0 <= weight <= 1.0:
        raise SettingsError(
            "--canonical-weight must be a number in [0, 1] (RootEma), got "
            + one_line(repr(weight), 80)
        )


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_filter(value: Any) -> None:
    if not isinstance(value, dict) or set(value) - {"include_globs", "exclude_globs"}:
        raise SettingsError(
            '--state-dict-filter must be {"include_globs": [...], "exclude_globs": [...]}'
        )
    for key, globs in value.items():
        if not isinstance(globs, list) or not all(
            isinstance(g, str) and g.strip() and "\x00" not in g for g in globs
        ):
            raise SettingsError(
                f"--state-dict-filter: {key} must be a list of non-blank glob strings"
            )


def schema_hash(config: SimConfig) -> str:
    """The model schema hash the run's packs carry: derived from the factory and its config
    only (the demo's ``data_dir`` excluded), so a moved run directory keeps it."""
    key = json.dumps(
        [config.workload_factory, None if config.is_demo else config.config], sort_keys=True
    )
    return "fakecoord-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ThreadChoice:
    """Threads per worker (None: the workload's defaults) and why, for the header line."""

    threads: int | None
    reason: str


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_threads(config: SimConfig) -> ThreadChoice:
    """``max(1, cores // peers)`` unless ``threads_per_peer`` says otherwise."""
    cores = usable_cores()
    if config.threads_per_peer == 0:
        return ThreadChoice(None, f"the workload's defaults (--threads-per-peer 0; {cores} cores)")
    if config.threads_per_peer is not None:
        return ThreadChoice(config.threads_per_peer, "--threads-per-peer")
    if config.workers is not None:
        return ThreadChoice(
            max(1, cores // config.workers), f"{cores} cores / {config.workers} workers"
        )
    threads = max(1, cores // config.peers)
    return ThreadChoice(threads, f"{cores} cores / {config.peers} peers")


def check_inputs(config: SimConfig) -> list[list[dict]] | None:
    """Check what the settings name outside this process; returns the ``--batches`` refs per
    peer (None for the demo's own data).  Raises :class:`SettingsError`."""
    from .data import load_batches

    batches = load_batches(config.batches, config.peers) if config.batches is not None else None
    if config.factory is not None and not config.is_demo and config.worker_cmd is None:
        check_factory(config)
    if config.device is not None and config.device != "cpu" and config.worker_cmd is None:
        check_device(config.device)
    return batches


_FACTORY_PROBE = """
import sys
from fakecoord.sim.bootstrap import probe
sys.exit(probe(sys.argv[1]))
"""


def check_factory(config: SimConfig) -> None:
    """Build the workload once in a probe process, as each worker will (same interpreter,
    cwd, PYTHONPATH, thread caps and seed), before any peer starts: a typo in the module or
    attribute, an import error, a factory that raises or returns None is one
    :class:`SettingsError`.  Workload code never runs in this process."""
    from ..spawn import child_environment
    from . import bootstrap

    assert config.factory is not None
    threads = choose_threads(config)
    env = dict(os.environ)
    if threads.threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads.threads)
    wrapped = bootstrap.wrap(config.factory, config.config, threads.threads, config.seed)
    root = Path(__file__).resolve().parent.parent.parent
    try:
        done = subprocess.run(
            [sys.executable, "-c", _FACTORY_PROBE, json.dumps(wrapped)],
            env=child_environment(env, (os.getcwd(), str(root))),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=config.start_timeout,
        )
    except subprocess.TimeoutExpired:
        raise SettingsError(
            f"--factory {config.factory!r}: building the workload took longer than "
            f"--start-timeout ({config.start_timeout:g} s) in the probe process"
        ) from None
    if done.returncode == 0:
        return
    text = done.stderr.strip()
    start = text.find(bootstrap.PROBE_PREFIX)
    if start >= 0:
        message = text[start + len(bootstrap.PROBE_PREFIX) :]
    else:
        message = f"--factory {config.factory!r}: the probe process failed (exit {done.returncode})"
        message += f"; the end of its stderr:\n{text[-2000:]}" if text else ""
    raise SettingsError(message)


_DEVICE_PROBE = """
import sys, torch
try:
    torch.empty(1, device=sys.argv[1])
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
    sys.exit(1)
"""


def check_device(device: str) -> None:
    """Refuse a torch device this machine cannot use (one short ``python -c`` probe)."""
    done = subprocess.run(
        [sys.executable, "-c", _DEVICE_PROBE, device],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise SettingsError(f"--device {device!r}: torch cannot use it here ({reason})")


__all__ = [
    "BACKENDS",
    "DEMO_FACTORY",
    "MAX_SEED",
    "MERGE_POLICIES",
    "PROTOCOLS",
    "SimConfig",
    "ThreadChoice",
    "check_inputs",
    "choose_threads",
    "schema_hash",
]
