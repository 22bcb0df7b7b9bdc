"""DiLoCo (docs/protocol.md §6) as a :class:`~fakecoord.sim.strategy.Strategy`.

Every peer of the round's group makes the calls of
:func:`fakecoord.network.rounds.run_peer_round` (``lib.rs``
``run_worker_inner_loop``: import the base with the workload's own device,
``run_inner_loop`` with a null inner-state path on its first round and a
fresh copy of the state it returned before afterwards, read the local pack
and the returned state back); the coordinator streams the outer step over
the packs of the peers that finished (:mod:`fakecoord.sim.outer`).  With the
``command`` backend (docs/protocol.md §5) a program runs per peer and round
instead, by default ``python -m worker.job`` with the run's (wrapped)
factory.

Layout of a round ``R`` under the run directory::

    rounds/RRRR/peer-N/local-parameters/     the peer's local pack (``pack/`` for command jobs)
    rounds/RRRR/peer-N/inner-state-input.blob  the fresh copy handed to the workload (if any)
    rounds/RRRR/peer-N/inner-state.blob      the state it returned, read right after the call
    rounds/RRRR/peer-N/job.json, result.json, job.log   (command backend)
    rounds/RRRR/base/                  the new base
    rounds/RRRR/velocity/              the outer momentum (--beyond-network only)
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import handling, schema, spec
from ..errors import (
    DecodeError,
    FakecoordError,
    NetworkStepError,
    OuterError,
    PackError,
    PolicyError,
    RoundFailed,
    SettingsError,
    SimError,
)
from ..files import write_json
from ..network import rounds
from ..network.aggregation import AGGREGATION_NAMES
from ..network.policy import DiLoCoAggregationPolicy, DiLoCoPolicy
from ..network.transfer import AGGREGATION_TIMEOUT_SECONDS, parse_links, round_transfer
from ..packs import check_compatible, open_pack, read_manifest
from ..schema import STRING, Field, Option, Struct
from . import bootstrap
from .config import SimConfig
from .outer import Aggregator, OuterSGD, outer_step_packs
from .strategy import (
    BaselineOutcome,
    BaselineState,
    ModelRef,
    PeerMap,
    PeerResult,
    RoundContext,
    RoundOutcome,
    SetupContext,
    Strategy,
)
from .workers import ROOT, PeerContext, short_error

CAPABILITY = "diloco_checkpoint_job"


@dataclass
class DiLoCoState:
    """The base pack, the outer momentum pack (None: zeros), each peer's inner optimizer state
    (the coordinator's copy of the blob its last inner loop returned; None: none yet) and the
    network's ``round_id`` (completed rounds; failed rounds do not count)."""

    base: str
    velocity: str | None
    inner_opt: dict[int, str | None]
    round_id: int = 0


@dataclass(frozen=True)
class DiLoCoTask:
    base: str
    lease: list[dict]
    inner_opt: str | None


class DiLoCo(Strategy[DiLoCoState]):
    """DiLoCo as the network runs it (:mod:`fakecoord.network`), on the run's policy.

    ``aggregator``: an aggregation name (``"mean"``, ``"median"``,
    ``"sign-majority"``: the policy's aggregation replaced) or a function
    ``(gradients, out)`` (:data:`fakecoord.sim.outer.Aggregator`, the
    simulation's own); ``optimizer``: an :class:`~fakecoord.sim.outer.OuterSGD`
    instead of the policy's outer optimizer.  Override :meth:`optimizer_for`
    for a per-round schedule.  Anything but plain SGD needs ``beyond_network``
    (``--beyond-network``): the network refuses it for Python workloads.
    """

    name = "diloco"
    summary_key = "aggregate"

    def __init__(
        self, aggregator: str | Aggregator | None = None, optimizer: OuterSGD | None = None
    ) -> None:
        self._aggregator = aggregator
        self._optimizer = optimizer

    def bind(self, config: SimConfig, schema_hash: str) -> None:
        super().bind(config, schema_hash)
        policy = config.network_policy()
        self.custom: Aggregator | None = None
        spec = self._aggregator
        if isinstance(spec, str):
            if spec not in AGGREGATION_NAMES:
                raise SettingsError(
                    f"DiLoCo(aggregator=...) must be one of {', '.join(AGGREGATION_NAMES)} "
                    f"or a function, got {spec!r}"
                )
            policy = policy.replace(aggregation_policy=DiLoCoAggregationPolicy.shorthand(spec))
        elif callable(spec):
            self.custom = spec
        self.policy: DiLoCoPolicy = policy
        self.aggregator_name = (
            getattr(spec, "__name__", type(spec).__name__)
            if self.custom is not None
            else policy.aggregation_policy.describe()
        )
        self.optimizer = self._optimizer
        if self.optimizer is not None and not self.optimizer.plain and not config.beyond_network:
            reason = self.optimizer.as_policy().refusal_reason()
            raise SettingsError(
                f"the network refuses this outer optimizer: {reason} (--beyond-network runs it "
                "as the simulation's own)"
            )

    def optimizer_for(self, r: int) -> OuterSGD | None:
        """The outer optimizer of round ``r`` (None: the policy's; override for a schedule)."""
        return self.optimizer

    def describe(self, config: SimConfig) -> str:
        p = self.policy
        outer = (
            p.outer_optimizer_policy.describe()
            if self.optimizer is None
            else self.optimizer.as_policy().describe()
        )
        text = f"{p.codec.describe()}, {self.aggregator_name}, outer {outer}"
        if self.custom is not None:
            text += " (custom aggregator: not the network's)"
        refused = config.network_refusal()
        if refused is not None or (self.optimizer is not None and not self.optimizer.plain):
            text += (
                "; BEYOND THE NETWORK: the network refuses this outer optimizer for Python "
                "workloads"
            )
        return text + (", command backend" if self.command_backend else "")

    @property
    def command_backend(self) -> bool:
        return self.config.diloco_backend == "command"

    def needs_peer_workers(self, config: SimConfig) -> bool:
        return config.diloco_backend != "command"

    def required_capability(self, config: SimConfig) -> str | None:
        return None if config.diloco_backend == "command" else CAPABILITY

    # -- round 0 ----------------------------------------------------------------

    def initialize(self, setup: SetupContext) -> DiLoCoState:
        c = self.config
        client = setup.client()
        device = setup.device()
        model_id = setup.call(client.init_model, device)
        plan = setup.call(handling.plan_or_none, client, device, c.state_dict_filter)
        if plan is not None:
            try:
                handling.check_diloco_plan(plan)
            except FakecoordError as exc:
                raise SimError(str(exc)) from None
            setup.report["plan"] = {
                k: plan.get(k)
                for k in ("layout_hash", "parameter_count", "uses_custom_parameter_pack_hooks")
            }
        else:
            setup.report["plan"] = None
        setup.report["network"] = {
            "policy": self.policy.to_json(),
            "beyond_network": c.beyond_network,
            "refused_by_network": c.network_refusal(),
        }
        base = setup.dir / "base"
        setup.call(
            handling.export_checked,
            client, model_id, base, self.schema_hash, c.state_dict_filter,
        )  # fmt: skip
        setup.call(client.release_model, model_id)
        return DiLoCoState(setup.rel(base), None, {p: None for p in range(c.peers)})

    def model(self, state: DiLoCoState) -> ModelRef:
        return ModelRef("pack", state.base)

    # -- a round ------------------------------------------------------------------

    def configure_round(
        self, r: int, state: DiLoCoState, leases: dict[int, list[dict]]
    ) -> dict[int, DiLoCoTask]:
        return {
            p: DiLoCoTask(state.base, lease, state.inner_opt.get(p)) for p, lease in leases.items()
        }

    # -- the round's group (network.rs matchmake_diloco_participants) ----------------------

    def select_group(self, r: int, candidates: list[int]) -> list[int]:
        """The first ``target_group_size`` candidates by peer id as strings; raises
        :class:`RoundFailed` below ``minimum_group_size`` (:func:`rounds.form_group`)."""
        ids = {f"peer-{p}": p for p in candidates}
        c = self.config
        return [ids[i] for i in rounds.form_group(ids, c.target_group_size, c.minimum_group_size)]

    def round_failure(self, r: int, results: list[PeerResult]) -> str | None:
        """The network's reason when fewer than ``minimum_group_size`` peers contributed."""
        try:
            rounds.check_contributions(
                sum(res.ok for res in results), self.config.minimum_group_size
            )
        except RoundFailed as exc:
            return str(exc)
        return None

    def train(self, peer: PeerContext, task: DiLoCoTask) -> PeerResult:
        if self.command_backend:
            return self._train_command(peer, task)
        c = self.config
        assert peer.peer is not None
        result = PeerResult(peer.peer)
        try:
            client = peer.client()
            started = time.monotonic()
            base = peer.path(task.base)
            done = rounds.run_peer_round(
                client,
                device=peer.device(),
                base_pack=base,
                work_dir=peer.dir,
                batches=task.lease,
                num_inner_steps=c.inner_steps,
                model_schema_hash=self.schema_hash,
                state_dict_filter_value=c.state_dict_filter,
                inner_state=self._inner_state(peer, task.inner_opt),
                where=f"peer-{peer.peer}, round {peer.round}",
                call=peer.call,
            )
            result.worker_seconds = time.monotonic() - started
            result.metrics = {**done.metrics, **handling.batch_counts(task.lease)}
            result.steps_completed = done.steps_completed
            result.model = self._checked_local(peer, done.local_pack, base)
            self._keep_inner_state(peer, result, done.inner_state)
            result.ok = True
        except (FakecoordError, OSError) as exc:
            result.error = short_error(exc)
            peer.after_failure(exc, None)
        return result

    @staticmethod
    def _inner_state(peer: PeerContext, kept: str | None) -> rounds.InnerState | None:
        return None if kept is None else rounds.InnerState(peer.path(kept))

    @staticmethod
    def _keep_inner_state(
        peer: PeerContext, result: PeerResult, state: rounds.InnerState | None
    ) -> None:
        """Remember the state the peer's inner loop returned (None: none) for its next round."""
        result.private["inner_opt"] = None if state is None else peer.rel(state.path)
        result.private["inner_state_encoding"] = None if state is None else state.encoding

    def _checked_local(self, peer: PeerContext, pack: Path, base: Path) -> ModelRef:
        """The local pack, refused (``PackError``) unless it has the base's layout and schema."""
        check_compatible(read_manifest(pack), read_manifest(base), f"parameter pack {str(pack)!r}")
        return ModelRef("pack", peer.rel(pack))

    def _train_command(self, peer: PeerContext, task: DiLoCoTask) -> PeerResult:
        c = self.config
        assert peer.peer is not None
        result = PeerResult(peer.peer)
        job_path, result_path = peer.dir / "job.json", peer.dir / "result.json"
        peer.log = peer.dir / "job.log"
        base = peer.path(task.base)
        where = f"peer-{peer.peer}, round {peer.round}"
        try:
            rounds.check_batches(task.lease, c.inner_steps)
            job = rounds.command_job(
                job_id=f"round-{peer.round}-peer-{peer.peer}",
                model_schema_hash=self.schema_hash,
                base_parameter_pack_path=base,
                output_parameter_pack_path=peer.dir / "pack",
                result_manifest_path=result_path,
                batches=task.lease,
                num_inner_steps=c.inner_steps,
                state_dict_filter_value=c.state_dict_filter,
                inner_optimizer_state_path=rounds.stage_inner_state(
                    self._inner_state(peer, task.inner_opt), peer.dir
                ),
            )
            write_json(job_path, job)
            argv = [
                a.replace("{job_manifest}", str(job_path)).replace(
                    "{result_manifest}", str(result_path)
                )
                for a in self._command(peer)
            ]
            env = peer.workers.env()
            env["BURN_P2P_DILOCO_JOB_MANIFEST"] = str(job_path)
            env["BURN_P2P_DILOCO_RESULT_MANIFEST"] = str(result_path)
            paths = [os.getcwd(), str(ROOT), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
            env["PYTHONUNBUFFERED"] = "1"

            t = time.monotonic()
            try:
                peer.run_job(argv, env, c.call_timeout, job_path)
            finally:
                result.worker_seconds = time.monotonic() - t
            done = read_result(result_path, c.inner_steps)
            result.metrics = {**done.get("metrics", {}), **handling.batch_counts(task.lease)}
            result.steps_completed = done["steps_completed"]
            local = done.get("local_parameter_pack_path") or job["output_parameter_pack_path"]
            checked = self._checked_local(peer, Path(local), base)
            # lib.rs run_command_inner_loop: the local pack, then the state file, read back.
            state = rounds.capture_inner_state(
                done.get("inner_optimizer_state_path"),
                done.get("inner_optimizer_state_encoding"),
                peer.dir / rounds.CAPTURED_STATE_NAME,
                where,
            )
            self._keep_inner_state(peer, result, state)
            result.model = checked
            result.ok = True
        except (FakecoordError, OSError, ValueError) as exc:
            result.error = short_error(exc)
        return result

    def _command(self, peer: PeerContext) -> list[str]:
        if self.config.command is not None:
            return list(self.config.command)
        return [
            sys.executable, "-m", "worker.job",
            "--factory", bootstrap.FACTORY,
            "--config-json", json.dumps(peer.workers.factory_config),
            "--device", peer.device(),
            "--job", "{job_manifest}",
        ]  # fmt: skip

    def aggregate_round(
        self, r: int, state: DiLoCoState, results: list[PeerResult], ctx: RoundContext
    ) -> RoundOutcome[DiLoCoState]:
        contributors = [res for res in results if res.ok]
        refused: dict[int, str] = {}
        optimizer = self.optimizer_for(r)
        summary: dict[str, Any] = {
            "method": self.aggregator_name,
            "codec": self.policy.codec.describe(),
        }
        new_base, new_velocity = state.base, state.velocity
        keeps = False
        while contributors:
            try:
                stats = outer_step_packs(
                    ctx.path(state.base),
                    [ctx.path(res.model.path) for res in contributors if res.model],
                    ctx.dir / "base",
                    self.policy,
                    velocity=ctx.path(state.velocity) if state.velocity else None,
                    new_velocity=ctx.dir / "velocity",
                    optimizer=optimizer,
                    beyond_network=self.config.beyond_network,
                    aggregator=self.custom,
                )
            except OuterError as exc:
                if exc.source is None:
                    raise SimError(f"round {r}: the outer step failed: {exc}") from None
                bad = contributors.pop(exc.source)
                refused[bad.peer] = f"OuterError: {exc}".replace(
                    f"contributor {exc.source}'s", f"peer {bad.peer}'s"
                )
                continue
            except NetworkStepError as exc:
                who = f"peer {contributors[exc.peer].peer}: " if exc.peer is not None else ""
                raise SimError(
                    f"round {r}: the network's DiLoCo step fails ({exc.stage}) for {who}"
                    f"{exc.reason}"
                ) from None
            except (PackError, PolicyError) as exc:
                raise SimError(f"round {r}: the outer step failed: {exc}") from None
            new_base = ctx.rel(ctx.dir / "base")
            opt = optimizer or OuterSGD.from_policy(self.policy.outer_optimizer_policy)
            keeps = opt.keeps_momentum
            new_velocity = ctx.rel(ctx.dir / "velocity") if keeps else None
            summary.update(stats.figures())
            break
        # Nobody left: the base and the momentum stay as they were.
        summary["contributors"] = len(contributors)
        ok = {res.peer for res in contributors}
        inner_opt = dict(state.inner_opt)
        for res in results:
            if res.peer in ok and res.private.get("inner_opt"):
                inner_opt[res.peer] = res.private["inner_opt"]
        return RoundOutcome(DiLoCoState(new_base, new_velocity, inner_opt), summary, refused)

    # -- after the outer step: what the network does around it ------------------------------

    def after_round(
        self,
        r: int,
        old: DiLoCoState,
        outcome: RoundOutcome[DiLoCoState],
        results: list[PeerResult],
        ctx: RoundContext,
    ) -> RoundOutcome[DiLoCoState]:
        """Carry each peer's inner state, count the network's ``round_id``, mark checkpoint
        heads, put the encoded bytes and the modelled transfer in the record, and stop the
        run when the new base holds a non-finite value.

        Inner state (``network.rs``: ``state.inner_optimizer_state`` is set
        right after the peer's own inner loop, before the group's minimum is
        checked): every peer whose inner loop and local pack succeeded keeps
        the state it returned (None when it returned none), even in a failed
        round.
        """
        state = outcome.state
        inner = dict(state.inner_opt)
        for res in results:
            if "inner_opt" in res.private:
                inner[res.peer] = res.private["inner_opt"]
        summary = dict(outcome.summary)
        published = [res for res in results if res.ok]
        n = read_manifest(ctx.path(old.base)).parameter_count
        size = self.policy.codec.make().encoded_size(n)
        for res in published:
            res.encoded_bytes = size
        wire: dict[str, Any] = {
            "codec": self.policy.codec.to_json(),
            "values": n,
            "encoded_bytes_per_peer": size,
            "encoded_bytes_total": size * len(published),
        }
        transfer_seconds = 0.0
        if self.config.link and published:
            links = parse_links(self.config.link, self.config.peers)
            ids = [f"peer-{res.peer}" for res in published]
            modelled = round_transfer(ids, dict.fromkeys(ids, size), links)
            transfer_seconds = modelled.seconds
            wire["transfer_seconds"] = round(modelled.seconds, 6)
            wire["peer_transfer_seconds"] = {
                k: round(v, 6) for k, v in modelled.peer_seconds.items()
            }
            if modelled.late:
                wire["past_aggregation_timeout"] = modelled.late
                ctx.event(
                    f"round {r}: {', '.join(modelled.late)} would need more than "
                    f"{AGGREGATION_TIMEOUT_SECONDS:g} s (the network's aggregation_timeout_ms) to "
                    "fetch the other contributions; the network would aggregate without them",
                    "yellow",
                )
        summary["wire"] = wire
        round_id = old.round_id
        stop = None
        if outcome.failed is None:
            round_id += 1
            if rounds.checkpoint_due(old.round_id, self.config.checkpoint_interval_rounds):
                summary["checkpoint_head"] = {"round_id": old.round_id, "base": state.base}
            stop = self._nonfinite(r, old, state, published, ctx)
        new_state = DiLoCoState(state.base, state.velocity, inner, round_id)
        return RoundOutcome(
            new_state,
            summary,
            outcome.refused,
            outcome.eval_metrics,
            failed=outcome.failed,
            stop=stop,
            transfer_seconds=transfer_seconds,
        )

    def _nonfinite(
        self,
        r: int,
        old: DiLoCoState,
        new: DiLoCoState,
        published: list[PeerResult],
        ctx: RoundContext,
    ) -> str | None:
        """None when the new base is finite; else the stop message naming the round, the group
        and the first cause found (the network checks nothing and would publish this base)."""
        found = first_nonfinite(open_pack(ctx.path(new.base)).values)
        if found is None:
            return None
        index, value = found
        base = open_pack(ctx.path(old.base)).values
        cause = "the aggregate or the outer update overflowed float32"
        for res in published:
            if res.model is None:
                continue
            local = open_pack(ctx.path(res.model.path)).values
            hit = first_nonfinite(local)
            if hit is not None:
                cause = f"peer-{res.peer}'s local pack holds {hit[1]} at index {hit[0]}"
                break
            hit = first_nonfinite_gradient(base, local)
            if hit is not None:
                cause = (
                    f"peer-{res.peer}'s pseudo-gradient (base - local) overflows float32 at "
                    f"index {hit[0]} ({hit[1]})"
                )
                break
            if self.policy.codec.tag == "Fp16":
                hit = first_fp16_overflow(base, local)
                if hit is not None:
                    cause = (
                        f"peer-{res.peer}'s pseudo-gradient value {hit[1]:g} at index {hit[0]} "
                        "rounds past 65504 and becomes inf in the Fp16 codec"
                    )
                    break
        group = ", ".join(f"peer-{res.peer}" for res in published)
        return (
            f"round {r}: the new base holds a non-finite value ({value} at index {index}); "
            f"group {group}; cause: {cause}. The network computes and publishes such a base "
            "(nothing checks finiteness there); the simulation stops here."
        )

    # -- baseline ---------------------------------------------------------------------

    def baseline_round(
        self, peer: PeerContext, state: BaselineState, batches: list[dict]
    ) -> BaselineOutcome:
        c = self.config
        try:
            client = peer.client()
            done = rounds.run_peer_round(
                client,
                device=peer.device(),
                base_pack=peer.path(state.model.path),
                work_dir=peer.dir,
                batches=batches,
                num_inner_steps=len(batches),
                model_schema_hash=self.schema_hash,
                state_dict_filter_value=c.state_dict_filter,
                inner_state=self._inner_state(peer, state.inner_opt),
                where=f"the baseline, round {peer.round}",
                call=peer.call,
            )
        except (FakecoordError, OSError) as exc:
            peer.after_failure(exc, None)
            raise
        kept = None if done.inner_state is None else peer.rel(done.inner_state.path)
        new = BaselineState(ModelRef("pack", peer.rel(done.local_pack)), kept)
        return BaselineOutcome(new, done.metrics)

    # -- checkpoint ----------------------------------------------------------------------

    def state_to_json(self, state: DiLoCoState) -> dict:
        return {
            "base": state.base,
            "velocity": state.velocity,
            "inner_opt": {str(p): v for p, v in state.inner_opt.items()},
            "round_id": state.round_id,
        }

    state_schema = Struct(
        "DiLoCoState",
        (
            Field("base", STRING),
            Field("velocity", Option(STRING), default=None),
            Field("inner_opt", PeerMap(Option(STRING))),
        ),
    )

    def state_from_json(self, data: dict) -> DiLoCoState:
        return DiLoCoState(
            data["base"],
            data.get("velocity"),
            {int(p): v for p, v in data["inner_opt"].items()},
            int(data.get("round_id", 0)),
        )


MAX_RESULT_BYTES = 64 * 1024 * 1024
"""A result manifest larger than this is refused unread."""


def read_result(path: Path, steps: int) -> dict:
    """Read a command backend result manifest (docs/protocol.md §5) as the Rust coordinator does
    (``serde_json::from_slice::<PythonDiLoCoCheckpointResult>``: no NaN/Infinity, no lone
    surrogates, every field of its type); raises ``ValueError`` naming the file and the field."""
    where = f"result manifest {str(path)!r}"
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_RESULT_BYTES:
                raise ValueError(f"{where}: larger than {MAX_RESULT_BYTES} bytes")
            raw = f.read(MAX_RESULT_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read ({exc})") from None
    try:
        result = schema.decode_bytes(spec.CHECKPOINT_RESULT, raw)
    except DecodeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    assert isinstance(result, dict)
    done = result["steps_completed"]
    if done != steps:
        raise ValueError(f"{where}: steps_completed is {done!r}, but {steps} were required")
    return result


CHUNK = 1 << 20
FP16_LIMIT = 65520.0
"""The smallest magnitude that rounds (to nearest even) past half's largest finite 65504."""


def first_nonfinite(values: np.ndarray) -> tuple[int, float] | None:
    """The index and value of the first NaN or infinity, scanning in chunks (None: all finite)."""
    for start in range(0, len(values), CHUNK):
        part = np.asarray(values[start : start + CHUNK])
        bad = ~np.isfinite(part)
        if bad.any():
            i = int(np.argmax(bad))
            return start + i, float(part[i])
    return None


def first_nonfinite_gradient(base: np.ndarray, local: np.ndarray) -> tuple[int, float] | None:
    """The first index where ``base - local`` (float32) is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(base), CHUNK):
            g = np.subtract(
                base[start : start + CHUNK], local[start : start + CHUNK], dtype=np.float32
            )
            hit = first_nonfinite(g)
            if hit is not None:
                return start + hit[0], hit[1]
    return None


def first_fp16_overflow(base: np.ndarray, local: np.ndarray) -> tuple[int, float] | None:
    """The first index where ``base - local`` rounds to an infinite half (``|g| >= 65520``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(base), CHUNK):
            g = np.subtract(
                base[start : start + CHUNK], local[start : start + CHUNK], dtype=np.float32
            )
            bad = np.abs(g) >= FP16_LIMIT
            if bad.any():
                i = int(np.argmax(bad))
                return start + i, float(g[i])
    return None


__all__ = ["CAPABILITY", "DiLoCo", "DiLoCoState", "DiLoCoTask", "read_result"]
