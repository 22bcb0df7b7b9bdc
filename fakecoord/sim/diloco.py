"""DiLoCo (docs/protocol.md §6) as a :class:`~fakecoord.sim.strategy.Strategy`.

Every peer imports the base pack, runs ``run_inner_loop`` on its lease
(resuming its inner optimizer from the previous round's file) and exports
its local pack; the coordinator streams the outer step over the packs of the
peers that finished (:mod:`fakecoord.sim.outer`).  With the ``command``
backend (docs/protocol.md §5) a program runs per peer and round instead, by
default ``python -m worker.job`` with the run's (wrapped) factory.

Layout of a round ``R`` under the run directory::

    rounds/RRRR/peer-N/pack/           the peer's local pack
    rounds/RRRR/peer-N/inner_optimizer.pt   its inner optimizer state (if the workload keeps one)
    rounds/RRRR/peer-N/job.json, result.json, job.log   (command backend)
    rounds/RRRR/base/                  the new base
    rounds/RRRR/velocity/              the outer momentum (a pack with the base's layout)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import handling
from ..errors import FakecoordError, OuterError, PackError, SettingsError, SimError
from ..files import write_json
from ..packs import check_compatible, read_manifest
from . import bootstrap
from .config import SimConfig
from .outer import Aggregator, OuterSGD, outer_step_packs, resolve_aggregator
from .strategy import (
    BaselineOutcome,
    BaselineState,
    ModelRef,
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
    """The base pack, the outer momentum pack (None: zeros) and each peer's inner optimizer file."""

    base: str
    velocity: str | None
    inner_opt: dict[int, str | None]


@dataclass(frozen=True)
class DiLoCoTask:
    base: str
    lease: list[dict]
    inner_opt: str | None


class DiLoCo(Strategy[DiLoCoState]):
    """DiLoCo with a pluggable aggregator and outer optimizer.

    ``aggregator``: ``"mean"``, ``"median"`` or a function ``(gradients, out)``
    (see :data:`fakecoord.sim.outer.Aggregator`); ``optimizer``: an
    :class:`~fakecoord.sim.outer.OuterSGD`.  Left out, both come from the
    run's settings (``--aggregate``, ``--outer-lr``, ...).  Override
    :meth:`optimizer_for` for a per-round schedule.
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
        spec = self._aggregator if self._aggregator is not None else config.aggregate
        try:
            self.aggregator_name, self.aggregator = resolve_aggregator(spec)
        except OuterError as exc:
            raise SettingsError(str(exc)) from None
        self.optimizer = self._optimizer or OuterSGD(
            config.outer_lr, config.outer_momentum, config.nesterov
        )

    @property
    def command_backend(self) -> bool:
        return self.config.diloco_backend == "command"

    def optimizer_for(self, r: int) -> OuterSGD:
        """The outer optimizer of round ``r`` (override for a schedule)."""
        return self.optimizer

    def describe(self, config: SimConfig) -> str:
        o = self.optimizer
        text = (
            f"{self.aggregator_name}/{config.codec}, outer lr {o.lr:g} momentum {o.momentum:g}"
            + (" nesterov" if o.nesterov else "")
        )
        return text + (", command backend" if self.command_backend else "")

    def needs_peer_workers(self, config: SimConfig) -> bool:
        return config.diloco_backend != "command"

    def required_capability(self, config: SimConfig) -> str | None:
        return None if config.diloco_backend == "command" else CAPABILITY

    # -- round 0 ----------------------------------------------------------------

    def initialize(self, setup: SetupContext) -> DiLoCoState:
        c = self.config
        client = setup.client()
        model_id = setup.call(client.init_model, c.device)
        plan = setup.call(handling.plan_or_none, client, c.device, c.state_dict_filter)
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

    def train(self, peer: PeerContext, task: DiLoCoTask) -> PeerResult:
        if self.command_backend:
            return self._train_command(peer, task)
        c = self.config
        assert peer.peer is not None
        result = PeerResult(peer.peer)
        model_id = None
        try:
            client = peer.client()
            started = time.monotonic()
            base = peer.path(task.base)
            model_id = peer.call(client.import_parameter_pack, c.device, base, c.state_dict_filter)
            job = self._job(peer, model_id, task.lease, c.inner_steps, task.inner_opt)
            job = peer.inject(job)
            done = peer.call(client.run_inner_loop, job)
            peer.call(client.release_model, model_id)
            model_id = None
            result.worker_seconds = time.monotonic() - started
            result.metrics = {**done["metrics"], **handling.batch_counts(task.lease)}
            result.steps_completed = done["steps_completed"]
            result.model = self._checked_local(peer, peer.dir / "pack", base)
            opt = done.get("inner_optimizer_state_path") or job["inner_optimizer_state_path"]
            result.private["inner_opt"] = peer.rel(opt) if os.path.exists(opt) else None
            result.ok = True
        except (FakecoordError, OSError) as exc:
            result.error = short_error(exc)
            peer.after_failure(exc, model_id)
        return result

    def _job(
        self, peer: PeerContext, model_id: str, batches: list, steps: int, inner_opt: str | None
    ) -> dict[str, Any]:
        job: dict[str, Any] = {
            "model_id": model_id,
            "batches": batches,
            "num_inner_steps": steps,
            "inner_optimizer_state_path": str(_fresh_copy(peer, inner_opt)),
            "output_parameter_pack_path": str(peer.dir / "pack"),
            "model_schema_hash": self.schema_hash,
            "require_exact_steps": True,
        }
        if self.config.state_dict_filter is not None:
            job["state_dict_filter"] = self.config.state_dict_filter
        return job

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
        job: dict[str, Any] = {
            "protocol_version": 1,
            "job_id": f"round-{peer.round}-peer-{peer.peer}",
            "model_schema_hash": self.schema_hash,
            "base_parameter_pack_path": str(base),
            "output_parameter_pack_path": str(peer.dir / "pack"),
            "result_manifest_path": str(result_path),
            "batches": task.lease,
            "num_inner_steps": c.inner_steps,
            "require_exact_steps": True,
            "state_dict_filter": c.state_dict_filter or {"include_globs": [], "exclude_globs": []},
            "inner_optimizer_state_path": str(_fresh_copy(peer, task.inner_opt)),
        }
        try:
            if peer.fault is not None and peer.fault.kind == "error":
                job = peer.inject(job)
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

            def started(pid: int) -> None:
                peer.pid = pid
                if peer.fault is not None and peer.fault.kind != "error":
                    peer.inject(job, pid=pid)

            t = time.monotonic()
            try:
                peer.workers.run_job(argv, env, peer.log, c.call_timeout, started)
            finally:
                result.worker_seconds = time.monotonic() - t
            done = read_result(result_path, c.inner_steps)
            result.metrics = {**done.get("metrics", {}), **handling.batch_counts(task.lease)}
            result.steps_completed = done["steps_completed"]
            local = done.get("local_parameter_pack_path") or job["output_parameter_pack_path"]
            result.model = self._checked_local(peer, Path(local), base)
            opt = done.get("inner_optimizer_state_path")
            result.private["inner_opt"] = peer.rel(opt) if opt and os.path.exists(opt) else None
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
            "--device", self.config.device,
            "--job", "{job_manifest}",
        ]  # fmt: skip

    def aggregate_round(
        self, r: int, state: DiLoCoState, results: list[PeerResult], ctx: RoundContext
    ) -> RoundOutcome[DiLoCoState]:
        contributors = [res for res in results if res.ok]
        refused: dict[int, str] = {}
        optimizer = self.optimizer_for(r)
        summary: dict[str, Any] = {"method": self.aggregator_name, "codec": self.config.codec}
        new_base, new_velocity = state.base, state.velocity
        while contributors:
            try:
                stats = outer_step_packs(
                    ctx.path(state.base),
                    [ctx.path(res.model.path) for res in contributors if res.model],
                    ctx.path(state.velocity) if state.velocity else None,
                    ctx.dir / "base",
                    ctx.dir / "velocity",
                    optimizer,
                    self.aggregator,
                    self.config.codec,
                )
            except OuterError as exc:
                if exc.source is None:
                    raise SimError(f"round {r}: the outer step failed: {exc}") from None
                bad = contributors.pop(exc.source)
                refused[bad.peer] = f"OuterError: {exc}".replace(
                    f"contributor {exc.source}'s", f"peer {bad.peer}'s"
                )
                continue
            except PackError as exc:
                raise SimError(f"round {r}: the outer step failed: {exc}") from None
            new_base = ctx.rel(ctx.dir / "base")
            new_velocity = ctx.rel(ctx.dir / "velocity") if optimizer.keeps_momentum else None
            summary.update(
                pseudo_gradient_norm=stats.pseudo_gradient_norm,
                update_norm=stats.update_norm,
                outer_step_seconds=round(stats.seconds, 6),
            )
            break
        # Nobody left: the base and the momentum stay as they were.
        summary["contributors"] = len(contributors)
        ok = {res.peer for res in contributors}
        inner_opt = dict(state.inner_opt)
        for res in results:
            if res.peer in ok and res.private.get("inner_opt"):
                inner_opt[res.peer] = res.private["inner_opt"]
        return RoundOutcome(DiLoCoState(new_base, new_velocity, inner_opt), summary, refused)

    # -- baseline ---------------------------------------------------------------------

    def baseline_round(
        self, peer: PeerContext, state: BaselineState, batches: list[dict]
    ) -> BaselineOutcome:
        c = self.config
        model_id = None
        try:
            client = peer.client()
            model_id = peer.call(
                client.import_parameter_pack, c.device, peer.path(state.model.path),
                c.state_dict_filter,
            )  # fmt: skip
            job = self._job(peer, model_id, batches, len(batches), state.inner_opt)
            done = peer.call(client.run_inner_loop, job)
            peer.call(client.release_model, model_id)
        except (FakecoordError, OSError) as exc:
            peer.after_failure(exc, model_id)
            raise
        opt = Path(job["inner_optimizer_state_path"])
        new = BaselineState(
            ModelRef("pack", peer.rel(peer.dir / "pack")), peer.rel(opt) if opt.exists() else None
        )
        return BaselineOutcome(new, done["metrics"])

    # -- checkpoint ----------------------------------------------------------------------

    def state_to_json(self, state: DiLoCoState) -> dict:
        return {
            "base": state.base,
            "velocity": state.velocity,
            "inner_opt": {str(p): v for p, v in state.inner_opt.items()},
        }

    def state_from_json(self, data: dict) -> DiLoCoState:
        return DiLoCoState(
            data["base"], data.get("velocity"), {int(p): v for p, v in data["inner_opt"].items()}
        )


def _fresh_copy(peer: PeerContext, previous: str | None) -> Path:
    """A private copy of the committed inner optimizer state for this round (the workload
    writes the new one there, so the committed one stays intact for a resume)."""
    target = peer.dir / "inner_optimizer.pt"
    if previous:
        source = peer.path(previous)
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.exists():
            shutil.copy2(source, target)
    return target


def read_result(path: Path, steps: int) -> dict:
    """Read a command backend result manifest (docs/protocol.md §5); raises ``ValueError``."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"result manifest {str(path)!r}: cannot read ({exc})") from None
    if not isinstance(result, dict):
        raise ValueError(f"result manifest {str(path)!r}: expected a JSON object")
    done = result.get("steps_completed")
    if type(done) is not int or done != steps:
        raise ValueError(
            f"result manifest {str(path)!r}: steps_completed is {done!r}, but {steps} were required"
        )
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float, bool, str)) for v in metrics.values()
    ):
        raise ValueError(
            f"result manifest {str(path)!r}: metrics must map names to numbers, bools or strings"
        )
    for key in (
        "local_parameter_pack_path",
        "inner_optimizer_state_path",
        "inner_optimizer_state_encoding",
    ):
        if result.get(key) is not None and not isinstance(result[key], str):
            raise ValueError(f"result manifest {str(path)!r}: {key} must be a string")
    return result


__all__ = ["CAPABILITY", "DiLoCo", "DiLoCoState", "DiLoCoTask", "read_result"]
