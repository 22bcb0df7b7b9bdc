"""One DiLoCo round as the burn_p2p network runs it: the group, and the calls into a peer's worker.

The upstream code is the spec (``aberration-technology/burn_p2p``, HEAD):

- **Group** (``crates/burn_p2p/src/diloco/network.rs``,
  ``RunningNode::matchmake_diloco_participants``; the same rule in
  ``diloco/engine.rs`` ``DiLoCoReferenceCoordinator::run_round``): candidates
  sorted by peer id *as strings* (``"peer-10"`` before ``"peer-2"``), the
  first ``target_group_size`` form the group, fewer than
  ``minimum_group_size`` fail the round before anyone trains ("need at least
  N DiLoCo participant(s), found M").  After the inner loops,
  ``diloco_round_once_with_batches`` fails the round when fewer than
  ``minimum_group_size`` contributions arrived ("DiLoCo aggregation only
  collected N participant(s), below the minimum M").  A failed round changes
  neither the base nor the round counter: the next attempt starts from the
  same base.  Sums run in group order, as ``engine.rs`` and docs/protocol.md §6
  have it.  (``network.rs`` itself builds each member's list as its own
  contribution first, then the others in peer-id order (a ``BTreeMap``), so
  with a ``Mean`` over three or more members each member may sum in another
  order and compute a base a last bit apart.)
- **Calls into a peer's worker** (``crates/burn_p2p_python/src/lib.rs``):
  ``PythonTorchProject::new`` takes the workload's own ``runtime_device``
  from ``capability_probe``, and every ``device`` it sends
  (``init_model``, ``import_parameter_pack``, ``parameter_pack_plan``) is
  that string.  A round is ``import_parameter_pack`` of the base (a pack the
  coordinator wrote, with the revision's ``state_dict_filter``), then
  ``run_worker_inner_loop``: a fresh staging directory, the inner state (if
  any) written there as ``inner-state-input.blob``, ``run_inner_loop`` with
  ``inner_optimizer_state_path`` null on the peer's first round, the step
  count checked (``validate_diloco_steps``), the local pack read back from
  ``output_parameter_pack_path``, and the returned inner state read right
  after the call (``read_state_blob_file``; encoding
  ``application/octet-stream`` when the workload gives none).  The model
  handle is released afterwards (``PythonModelHandle``'s ``Drop``, errors
  ignored).  ``run_inner_steps`` refuses, before calling, ``steps > 0``
  without batches.
- **Command backend** (``lib.rs`` ``run_command_inner_loop``): the job
  manifest ``PythonDiLoCoCheckpointJob`` omits ``inner_optimizer_state_path``
  when there is no state (``skip_serializing_if``); the result's state file
  is read the same way.
- **Checkpoint heads** (``network.rs`` ``checkpoint_due``): after the round
  whose zero-based ``round_id`` satisfies ``(round_id + 1) %
  max(checkpoint_interval_rounds, 1) == 0``.

Everything here works over :class:`fakecoord.client.WorkerClient` and plain
values; the simulation (``fakecoord.sim.diloco``) and the conformance
suite's flow checks call it.  ``call`` arguments let a caller time or wrap
each worker call (``call(fn, *args)``; default: call it).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..client import WorkerClient
from ..errors import FakecoordError, InnerStateError, RoundFailed
from ..files import staged_file
from ..packs import Manifest, read_manifest

DEFAULT_STATE_ENCODING = "application/octet-stream"
"""``lib.rs``: the encoding a ``StateBlob`` gets when the workload returns none."""
INNER_STATE_INPUT_NAME = "inner-state-input.blob"
"""``lib.rs`` ``run_worker_inner_loop``: the staged copy handed to the workload."""
LOCAL_PACK_NAME = "local-parameters"
"""``lib.rs`` ``run_worker_inner_loop``: ``output_parameter_pack_path`` in the staging dir."""
CAPTURED_STATE_NAME = "inner-state.blob"
"""Where :func:`run_peer_round` keeps the bytes it read (the coordinator's ``StateBlob``)."""
EMPTY_FILTER: Mapping[str, list[str]] = {"include_globs": [], "exclude_globs": []}
"""``PythonStateDictFilterConfig::default()`` as serde writes it: every float entry."""

Call = Callable[..., Any]


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def state_dict_filter(value: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The filter as the network sends it: both keys always present (serde ``default``)."""
    value = value or {}
    return {
        "include_globs": list(value.get("include_globs", [])),
        "exclude_globs": list(value.get("exclude_globs", [])),
    }


def runtime_device(client: WorkerClient, call: Call = _direct) -> str:
    """The workload's own device string (``capability_probe``'s ``runtime_device``): what
    ``lib.rs`` passes as ``device`` to ``init_model``, ``import_parameter_pack`` and
    ``parameter_pack_plan``."""
    probe = call(client.capability_probe)
    return str(probe["runtime_device"])


# -- the group ------------------------------------------------------------------------------


def form_group(
    peer_ids: Iterable[str], target_group_size: int, minimum_group_size: int
) -> list[str]:
    """The round's group, in the order of every sum: the available peers sorted by id as
    strings, the first ``target_group_size`` of them.

    Raises :class:`RoundFailed` with the network's text when fewer than
    ``minimum_group_size`` remain (``network.rs``
    ``matchmake_diloco_participants``).  Python's ``str`` order is Rust's
    ``str::cmp`` order (both compare code points / UTF-8 bytes alike).
    """
    group = sorted(peer_ids)[: max(target_group_size, 0)]
    if len(group) < minimum_group_size:
        raise RoundFailed(
            f"need at least {minimum_group_size} DiLoCo participant(s), found {len(group)}"
        )
    return group


def check_contributions(count: int, minimum_group_size: int) -> None:
    """Raise :class:`RoundFailed` (the network's text) when fewer than ``minimum_group_size``
    contributions arrived (``network.rs`` ``diloco_round_once_with_batches``)."""
    if count < minimum_group_size:
        raise RoundFailed(
            f"DiLoCo aggregation only collected {count} participant(s), below the minimum "
            f"{minimum_group_size}"
        )


def checkpoint_due(round_id: int, checkpoint_interval_rounds: int) -> bool:
    """Whether completing zero-based round ``round_id`` publishes a checkpoint head
    (``network.rs`` ``checkpoint_due``): every ``checkpoint_interval_rounds`` completed rounds."""
    return (round_id + 1) % max(checkpoint_interval_rounds, 1) == 0


# -- the inner state ------------------------------------------------------------------------


@dataclass(frozen=True)
class InnerState:
    """A peer's inner optimizer state as the coordinator holds it: a private copy of the blob
    the workload returned (``path``) and the encoding it named."""

    path: Path
    encoding: str = DEFAULT_STATE_ENCODING


def stage_inner_state(state: InnerState | None, directory: Path) -> Path | None:
    """A fresh copy of ``state`` for the next call (``directory/inner-state-input.blob``), or
    None on a peer's first round.  The workload may change or delete it; ``state`` stays."""
    if state is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / INNER_STATE_INPUT_NAME
    with staged_file(target) as out, open(state.path, "rb") as src:
        shutil.copyfileobj(src, out)
    return target


def capture_inner_state(
    returned: Any, encoding: Any, target: Path, where: str
) -> InnerState | None:
    """Read the state file a workload returned, right after the call, into ``target``.

    ``returned`` None: the workload keeps no state (the next round gets
    null).  Otherwise it must name a readable regular file (``lib.rs``
    ``read_state_blob_file``: ``fs::read``, which follows links); raises
    :class:`InnerStateError` naming ``where`` (e.g. ``"peer-2, round 3"``).
    """
    if returned is None:
        return None
    if not isinstance(returned, str) or not returned:
        raise InnerStateError(
            f"{where}: run_inner_loop returned inner_optimizer_state_path {returned!r}; "
            "expected a path string or null"
        )
    try:
        fd = os.open(returned, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise InnerStateError(
            f"{where}: inner_optimizer_state_path {returned!r} returned by run_inner_loop "
            f"cannot be read ({exc.strerror or exc})"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InnerStateError(
                f"{where}: inner_optimizer_state_path {returned!r} returned by run_inner_loop "
                "is not a regular file"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as src, staged_file(target) as out:
            shutil.copyfileobj(src, out)
    except OSError as exc:
        raise InnerStateError(
            f"{where}: inner_optimizer_state_path {returned!r} returned by run_inner_loop "
            f"cannot be read ({exc.strerror or exc})"
        ) from None
    finally:
        os.close(fd)
    return InnerState(target, encoding if isinstance(encoding, str) else DEFAULT_STATE_ENCODING)


# -- the jobs -------------------------------------------------------------------------------


def check_batches(batches: Sequence[Any], num_inner_steps: int) -> None:
    """``lib.rs`` ``run_inner_steps``: steps without batches fail before any call."""
    if num_inner_steps > 0 and not batches:
        raise RoundFailed("Python DiLoCo inner loop requires at least one batch")


def check_steps(done: Mapping[str, Any], requested: int, require_exact_steps: bool = True) -> None:
    """``lib.rs`` ``validate_diloco_steps``: the step count, when exact steps are required."""
    completed = done.get("steps_completed")
    if require_exact_steps and completed != requested:
        raise RoundFailed(
            f"Python DiLoCo inner loop completed {completed} step(s), requested {requested}"
        )


def inner_loop_job(
    *,
    model_id: str,
    batches: Sequence[Any],
    num_inner_steps: int,
    inner_optimizer_state_path: Path | None,
    output_parameter_pack_path: Path,
    model_schema_hash: str,
    state_dict_filter_value: Mapping[str, Any] | None,
    require_exact_steps: bool = True,
) -> dict[str, Any]:
    """The ``run_inner_loop`` params exactly as ``worker.rs`` ``run_inner_loop_path`` builds
    them (the state path is an explicit null when there is none)."""
    return {
        "model_id": model_id,
        "batches": list(batches),
        "num_inner_steps": num_inner_steps,
        "inner_optimizer_state_path": (
            None if inner_optimizer_state_path is None else str(inner_optimizer_state_path)
        ),
        "output_parameter_pack_path": str(output_parameter_pack_path),
        "model_schema_hash": model_schema_hash,
        "require_exact_steps": require_exact_steps,
        "state_dict_filter": state_dict_filter(state_dict_filter_value),
    }


def command_job(
    *,
    job_id: str,
    model_schema_hash: str,
    base_parameter_pack_path: Path,
    output_parameter_pack_path: Path,
    result_manifest_path: Path,
    batches: Sequence[Any],
    num_inner_steps: int,
    state_dict_filter_value: Mapping[str, Any] | None,
    inner_optimizer_state_path: Path | None,
    require_exact_steps: bool = True,
) -> dict[str, Any]:
    """The command backend's job manifest (``lib.rs`` ``PythonDiLoCoCheckpointJob``): the
    state path is left out when there is none."""
    job: dict[str, Any] = {
        "protocol_version": 1,
        "job_id": job_id,
        "model_schema_hash": model_schema_hash,
        "base_parameter_pack_path": str(base_parameter_pack_path),
        "output_parameter_pack_path": str(output_parameter_pack_path),
        "result_manifest_path": str(result_manifest_path),
        "batches": list(batches),
        "num_inner_steps": num_inner_steps,
        "require_exact_steps": require_exact_steps,
        "state_dict_filter": state_dict_filter(state_dict_filter_value),
    }
    if inner_optimizer_state_path is not None:
        job["inner_optimizer_state_path"] = str(inner_optimizer_state_path)
    return job


# -- one peer's round -----------------------------------------------------------------------


@dataclass
class PeerRound:
    """What one peer's inner loop gave: the local pack (manifest read back), the state the
    coordinator keeps for its next round, and the worker's answer."""

    local_pack: Path
    manifest: Manifest
    inner_state: InnerState | None
    steps_completed: int
    metrics: dict
    job: dict


def run_peer_round(
    client: WorkerClient,
    *,
    device: str,
    base_pack: Path,
    work_dir: Path,
    batches: Sequence[Any],
    num_inner_steps: int,
    model_schema_hash: str,
    state_dict_filter_value: Mapping[str, Any] | None,
    inner_state: InnerState | None,
    where: str,
    call: Call = _direct,
    before_inner_loop: Callable[[dict], dict] | None = None,
    require_exact_steps: bool = True,
) -> PeerRound:
    """One peer's part of a round on its worker, as ``lib.rs`` makes the calls (see the module
    docstring): import the base, run the inner loop, read the local pack and the state back,
    release the model.

    ``work_dir`` plays the staging directory (the local pack goes to
    ``work_dir/local-parameters``; the state read back to
    ``work_dir/inner-state.blob``).  ``before_inner_loop(job)`` may return a
    changed job (fault injection).  Raises :class:`RoundFailed` (no batches,
    wrong step count), :class:`InnerStateError`, and whatever the calls
    raise (:class:`~fakecoord.errors.FakecoordError`,
    :class:`~fakecoord.errors.PackError` for an unreadable local pack).
    """
    check_batches(batches, num_inner_steps)
    work_dir.mkdir(parents=True, exist_ok=True)
    filter_value = state_dict_filter(state_dict_filter_value)
    model_id = call(client.import_parameter_pack, device, str(base_pack), filter_value)
    try:
        job = inner_loop_job(
            model_id=model_id,
            batches=batches,
            num_inner_steps=num_inner_steps,
            inner_optimizer_state_path=stage_inner_state(inner_state, work_dir),
            output_parameter_pack_path=work_dir / LOCAL_PACK_NAME,
            model_schema_hash=model_schema_hash,
            state_dict_filter_value=filter_value,
            require_exact_steps=require_exact_steps,
        )
        if before_inner_loop is not None:
            job = before_inner_loop(job)
        done = call(client.run_inner_loop, job)
        check_steps(done, num_inner_steps, require_exact_steps)
        local = work_dir / LOCAL_PACK_NAME
        manifest = read_manifest(local)
        captured = capture_inner_state(
            done.get("inner_optimizer_state_path"),
            done.get("inner_optimizer_state_encoding"),
            work_dir / CAPTURED_STATE_NAME,
            where,
        )
    finally:
        try:
            call(client.release_model, model_id)
        except FakecoordError:
            pass  # lib.rs: PythonModelHandle::drop ignores the answer
    return PeerRound(local, manifest, captured, done["steps_completed"], done["metrics"], job)


__all__ = [
    "CAPTURED_STATE_NAME",
    "DEFAULT_STATE_ENCODING",
    "EMPTY_FILTER",
    "INNER_STATE_INPUT_NAME",
    "LOCAL_PACK_NAME",
    "InnerState",
    "PeerRound",
    "capture_inner_state",
    "check_batches",
    "check_contributions",
    "check_steps",
    "checkpoint_due",
    "command_job",
    "form_group",
    "inner_loop_job",
    "run_peer_round",
    "runtime_device",
    "stage_inner_state",
    "state_dict_filter",
]
