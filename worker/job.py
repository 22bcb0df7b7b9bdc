"""Run one DiLoCo inner-loop job for any workload (docs/protocol.md §5, checkpoint-command backend).

Usage, as the coordinator's ``--command``::

    python -m worker.job --factory MOD:ATTR --config-json JSON [--device cpu] --job {job_manifest}

``--job`` defaults to ``$BURN_P2P_DILOCO_JOB_MANIFEST``.  The runner builds
the workload, imports the job's base pack into a fresh ``init_model`` state
(or through the workload's custom pack hook), calls ``run_inner_loop`` with
an InnerLoopJob made from the manifest, makes sure the output pack exists,
and writes the result manifest (atomically) at ``result_manifest_path``.
It goes through the same handlers as the socket worker, so packs, filters,
step checks and metric conversion behave exactly as over RPC.

Exit status: 0 when the result manifest was written; 1 when the job failed
(the workload raised, a pack was invalid, ...); 2 for a bad command line, an
invalid job manifest or a workload that cannot be built.  Failures print one
line ``burn-p2p job: ...`` on stderr, followed by the traceback if a hook
raised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import files
from .errors import JobError, ParamError, RequestError, StartupError
from .protocol import NO_FILTER, StateFilter
from .schema import (
    BATCH_REFS,
    BOOL,
    FILTER,
    OPTIONAL_PATH,
    PATH,
    TEXT_ANY,
    U32,
    Const,
    Record,
    param,
)

JOB_ENV = "BURN_P2P_DILOCO_JOB_MANIFEST"
RESULT_ENV = "BURN_P2P_DILOCO_RESULT_MANIFEST"
JOB_PROTOCOL_VERSION = 1
MAX_JOB_BYTES = 256 * 1024 * 1024
WHERE = "job manifest"


@dataclass(frozen=True, kw_only=True)
class Job:
    """A job manifest (docs/protocol.md §5)."""

    protocol_version: int = param(Const(JOB_PROTOCOL_VERSION))
    job_id: str = param(TEXT_ANY)
    model_schema_hash: str = param(TEXT_ANY)
    base_parameter_pack_path: str = param(PATH)
    output_parameter_pack_path: str = param(PATH)
    result_manifest_path: str = param(PATH)
    batches: list[dict[str, Any]] = param(BATCH_REFS)
    num_inner_steps: int = param(U32)
    require_exact_steps: bool = param(BOOL)
    state_dict_filter: StateFilter = param(FILTER, NO_FILTER)
    inner_optimizer_state_path: str | None = param(OPTIONAL_PATH, None)


JOB = Record(Job)


def read_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a job manifest; raises :class:`JobError` naming the bad field."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JOB_BYTES + 1)
    except OSError as exc:
        raise JobError(
            f"{WHERE} {os.fspath(path)!r}: cannot read ({exc.strerror or exc})"
        ) from None
    if len(data) > MAX_JOB_BYTES:
        raise JobError(f"{WHERE} {os.fspath(path)!r}: larger than {MAX_JOB_BYTES} bytes")
    try:
        job = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JobError(f"{WHERE} {os.fspath(path)!r}: not valid UTF-8 JSON ({exc})") from None
    try:
        return check_job(job)
    except ParamError as exc:
        raise JobError(f"{os.fspath(path)!r}: {exc}") from None


def check_job(job: Any) -> Job:
    """Validate a decoded job manifest (docs/protocol.md §5); raises ``ParamError``."""
    try:
        decoded: Job = JOB.decode(job, "", {})
    except ParamError as exc:
        exc.method = WHERE
        raise
    return decoded


def run_job(workload: Any, job: Job, device: str = "cpu") -> dict[str, Any]:
    """Run a validated job against ``workload``; returns the result manifest (not yet written).

    Goes through the worker's own methods (``import_parameter_pack``, then
    ``run_inner_loop``).  Raises ``RequestError`` when the base pack cannot be
    imported, the workload has no ``run_inner_loop`` or it fails.
    """
    from .service import Worker

    worker = Worker(workload)
    state_filter = job.state_dict_filter.to_json()
    imported = worker.call(
        "import_parameter_pack",
        {
            "device": device,
            "parameter_pack_path": job.base_parameter_pack_path,
            "state_dict_filter": state_filter,
        },
    )
    outcome = worker.call(
        "run_inner_loop",
        {
            "job_id": job.job_id,
            "model_id": imported["model_id"],
            "batches": job.batches,
            "num_inner_steps": job.num_inner_steps,
            "inner_optimizer_state_path": job.inner_optimizer_state_path,
            "output_parameter_pack_path": job.output_parameter_pack_path,
            "model_schema_hash": job.model_schema_hash,
            "require_exact_steps": job.require_exact_steps,
            "state_dict_filter": state_filter,
        },
    )
    result: dict[str, Any] = {
        "steps_completed": outcome["steps_completed"],
        "metrics": outcome["metrics"],
        "local_parameter_pack_path": job.output_parameter_pack_path,
    }
    for key in ("inner_optimizer_state_path", "inner_optimizer_state_encoding"):
        if outcome.get(key) is not None:
            result[key] = outcome[key]
    return result


def write_result(path: str | os.PathLike[str], result: dict[str, Any]) -> None:
    """Write the result manifest atomically; raises ``RequestError`` if it cannot."""
    target = Path(path)
    try:
        data = json.dumps(result, indent=2, allow_nan=False).encode("utf-8")
        target.parent.mkdir(parents=True, exist_ok=True)
        files.write_file_atomically(target, data)
    except (OSError, ValueError) as exc:
        raise RequestError(f"cannot write the result manifest {str(target)!r}: {exc}") from None


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker.job",
        description="Run one DiLoCo inner-loop job (checkpoint-command backend) for a workload.",
    )
    parser.add_argument("--factory", required=True, help="MODULE:ATTR of the workload factory")
    parser.add_argument("--config-json", default="{}", help="JSON passed to the factory")
    parser.add_argument("--device", default="cpu", help="device passed to init_model (default cpu)")
    parser.add_argument("--job", default=None, help=f"job manifest path (default ${JOB_ENV})")
    return parser


def _fail(message: str, status: int) -> int:
    first, _, rest = message.partition("\n")
    print(f"burn-p2p job: {first}", file=sys.stderr)
    if rest.strip():
        print(rest.rstrip(), file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    job_path = args.job or os.environ.get(JOB_ENV)
    if not job_path:
        return _fail(f"no job manifest: pass --job PATH or set ${JOB_ENV}", 2)
    try:
        job = read_job(job_path)
    except JobError as exc:
        return _fail(str(exc), 2)
    result_path = job.result_manifest_path
    env_result = os.environ.get(RESULT_ENV)
    if env_result and os.path.abspath(env_result) != os.path.abspath(result_path):
        return _fail(
            f"${RESULT_ENV} is {env_result!r} but the job's result_manifest_path is "
            f"{result_path!r}; they must name the same file",
            2,
        )
    from .__main__ import build_workload

    try:
        workload = build_workload(args.factory, args.config_json)
    except StartupError as exc:
        cause = exc.__cause__
        detail = "".join(traceback.format_exception(cause)) if cause is not None else ""
        return _fail(f"{exc}\n{detail}", 2)
    try:
        result = run_job(workload, job, args.device)
        write_result(result_path, result)
    except RequestError as exc:
        return _fail(f"job {job.job_id!r} failed: {exc}", 1)
    return 0


if __name__ == "__main__":
    from .stopping import exit_process

    exit_process(main())
