"""The registry: every check, its stable id, what it checks and which hooks it concerns.

The table is the run order: framing first (it starts and ends its own worker
processes), then shapes, packs, semantics and error paths on one shared
worker, ``protocol.apply_patch_outcome`` late because an applied patch may
change the workload for whatever runs after it, and
``protocol.shutdown_after_hooks`` last: it shuts down the worker every earlier
check used, to see that nothing a hook started keeps it alive.

A check is a function ``(Session) -> str`` returning a one-line PASS reason;
it raises :class:`~conformance.errors.CheckFailed` or
:class:`~conformance.errors.CheckSkipped` otherwise, and may call
``Session.warn`` (a WARN: legal but suspicious).  Ids are a stability
promise: new ones are added, none is renamed or removed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import checks_errors as errors
from . import checks_flows as flows
from . import checks_framing as framing
from . import checks_merging as merging
from . import checks_packs as packs
from . import checks_protocol as protocol
from . import checks_semantics as semantics
from . import checks_training as training
from .errors import UsageError
from .session import Session


@dataclass(frozen=True)
class Check:
    id: str
    description: str
    hooks: tuple[str, ...]
    func: Callable[[Session], str | None]
    uses_probe: bool = False
    """It needs the layout probe (started in the background before the first check)."""

    @property
    def group(self) -> str:
        return self.id.partition(".")[0]


WORKER = "worker"
CHECKS: tuple[Check, ...] = (
    Check("framing.requests_roundtrip",
          "any JSON request (big ids, unicode, nested params) is answered once, with its id",
          (WORKER,), framing.requests_roundtrip),
    Check("framing.split_frames",
          "a frame split at any byte boundary, or two frames in one write, decode the same",
          (WORKER,), framing.split_frames),
    Check("framing.garbage_refused",
          "empty, non-UTF-8, non-JSON and id-less frames get ok:false; the worker keeps serving",
          (WORKER,), framing.garbage_refused),
    Check("framing.shutdown_acks_and_exits",
          "shutdown is answered with an object, then the process exits with status 0",
          (WORKER,), framing.shutdown_acks_and_exits),
    Check("framing.eof_exits_zero",
          "EOF between frames ends the process with status 0, promptly",
          (WORKER, "no lingering non-daemon threads"), framing.eof_exits_zero),
    Check("framing.truncated_frame_exits_nonzero",
          "EOF inside a frame ends the process with a non-zero status",
          (WORKER,), framing.truncated_frame_exits_nonzero),
    Check("framing.oversized_frame_refused",
          "a frame announcing 2**64-1 bytes is refused at once, without waiting for it",
          (WORKER,), framing.oversized_frame_refused),
    Check("protocol.hello",
          "hello: protocol_version 1 or 2, a workload name, a list of capability strings",
          ("workload_name",), protocol.hello),
    Check("protocol.capability_probe",
          "capability_probe decodes: backends [str], a finite rate, an integer window >= 0",
          ("runtime_device", "capability_probe"), protocol.capability_probe),
    Check("protocol.capability_placement",
          "the capability earns a window budget of at least one work unit, so the "
          "coordinator places the peer",
          ("capability_probe",), protocol.capability_placement),
    Check("protocol.init_model",
          "init_model answers a new string handle on every call",
          ("init_model",), protocol.init_model),
    Check("protocol.train_window_metrics",
          "train_window answers valid MetricValues (no NaN, lists or null) for the batches",
          ("train_window",), protocol.train_window_metrics),
    Check("protocol.portable_results",
          "hook results are what the protocol allows as the hooks return them (a str "
          "workload_name, a dict from train_window), not only as this worker repairs them",
          ("workload_name", "train_window"), protocol.portable_results, uses_probe=True),
    Check("protocol.evaluate_metrics",
          "evaluate answers valid MetricValues for Train, Validation, Test and {Custom: ...}",
          ("evaluate",), protocol.evaluate_metrics),
    Check("packs.plan_shape",
          "parameter_pack_plan decodes; its keys are disjoint; its count matches the export",
          ("init_model",), packs.plan_shape),
    Check("packs.layout_stable",
          "two init_model calls give the same layout (plan and exported packs)",
          ("init_model",), packs.layout_stable, uses_probe=True),
    Check("packs.layout_hash_independent",
          "the plan's layout hash equals the manifest's and an independent recomputation",
          ("init_model", WORKER), packs.layout_hash_independent, uses_probe=True),
    Check("packs.manifest_valid",
          "an exported manifest has the five fields, the requested schema hash, a plain "
          "values file of 4*count bytes; re-export replaces it",
          ("export_parameter_pack_path", WORKER), packs.manifest_valid),
    Check("packs.roundtrip_bit_identical",
          "export -> import -> export gives bit-identical values",
          ("export_parameter_pack_path", "import_parameter_pack_path", WORKER),
          packs.roundtrip_bit_identical),
    Check("packs.import_exact",
          "imported float32/float16/bfloat16 values (zeros, subnormals, extremes) come back exactly",
          ("import_parameter_pack_path", WORKER), packs.import_exact, uses_probe=True),
    Check("packs.filters_select_keys",
          "state_dict filters include/exclude exactly the matching keys, in plan and pack",
          ("export_parameter_pack_path", WORKER), packs.filters_select_keys, uses_probe=True),
    Check("artifacts.roundtrip_restores",
          "materialize, then load into a fresh model, restores every parameter",
          ("materialize_model_artifact_path", "load_model_artifact_path"),
          semantics.artifacts_roundtrip),
    Check("semantics.train_window_updates_model",
          "train_window changes the parameters when it reports training, and reports the "
          "work it did; zero steps on the refs is a SKIP",
          ("train_window",), training.train_window_updates_model),
    Check("semantics.evaluate_preserves_model",
          "evaluate leaves every parameter of the model unchanged",
          ("evaluate",), training.evaluate_preserves_model),
    Check("semantics.merge_identical_copies",
          "merging copies of one model gives that model",
          ("merge_candidate_models",), merging.merge_identical_copies),
    Check("semantics.merge_weighted_mean",
          "a WeightedMean merge lies in the candidates' convex hull and honours the weights",
          ("merge_candidate_models",), merging.merge_weighted_mean),
    Check("semantics.merge_preserves_base",
          "merging modifies neither the base nor the candidates",
          ("merge_candidate_models",), merging.merge_preserves_base),
    Check("semantics.merge_policy_weights",
          "each merge policy weighs candidates by sample_weight times its quality rule, "
          "as the Rust reference merge",
          ("merge_candidate_models",), merging.merge_policy_weights),
    Check("semantics.ema_between",
          "apply_single_root_ema lands between base and merged, on the merged handle",
          ("apply_single_root_ema",), merging.ema_between),
    Check("semantics.reconcile_replace",
          "reconcile with Replace leaves exactly the canonical parameters",
          ("reconcile_canonical_model",), merging.reconcile_replace),
    Check("semantics.reconcile_root_ema",
          "RootEma with canonical_weight 1 gives canonical, 0 gives local, 0.25 lies between",
          ("reconcile_canonical_model",), merging.reconcile_root_ema),
    Check("semantics.results_keep_layout",
          "merge, EMA and reconcile results keep the base's layout hash (keys, shapes, dtypes)",
          ("merge_candidate_models", "apply_single_root_ema", "reconcile_canonical_model"),
          merging.results_keep_layout),
    Check("semantics.handles_independent",
          "a hook changes no model but the one it returns or may update in place",
          ("init_model", "evaluate", "train_window", "apply_single_root_ema",
           "reconcile_canonical_model"), semantics.handles_independent),
    Check("semantics.release_model",
          "a released handle is refused afterwards; releasing twice or an unknown id is acked",
          (WORKER,), semantics.release_model),
    Check("diloco.inner_loop_exact_steps",
          "run_inner_loop reports exactly num_inner_steps, with and without require_exact_steps",
          ("run_inner_loop",), training.inner_loop_exact_steps),
    Check("diloco.inner_loop_updates_pack",
          "run_inner_loop writes a valid output pack that changes the parameters and matches "
          "the handle",
          ("run_inner_loop",), training.inner_loop_updates_pack),
    Check("flows.diloco_rounds",
          "two DiLoCo rounds with the inner optimizer state carried as the network carries "
          "it (null, then a fresh copy); a returned path names a readable regular file",
          ("run_inner_loop",), flows.diloco_rounds),
    Check("flows.train_handles",
          "train_window trains an init_model handle, a merge result and an imported base, "
          "on one-ref windows, and a dozen windows on one handle",
          ("train_window", "merge_candidate_models", "import_parameter_pack_path"),
          flows.train_handles),
    Check("flows.merge_edge_cases",
          "a single candidate merges into itself; candidates whose weights sum to 0 give the "
          "base (as the reference merge) or no merge",
          ("merge_candidate_models",), flows.merge_edge_cases),
    Check("flows.root_ema_policies",
          "apply_single_root_ema answers between base and merged under every MergePolicy",
          ("apply_single_root_ema",), flows.root_ema_policies),
    Check("flows.evaluate_fresh_worker",
          "a fresh worker that never trained imports a base and evaluates every split",
          ("evaluate", "import_parameter_pack_path"), flows.evaluate_fresh_worker),
    Check("flows.exchange_between_processes",
          "packs and artifacts read by another worker process (another PYTHONHASHSEED) "
          "after the writer exited give the same values and evaluation metrics",
          ("export_parameter_pack_path", "import_parameter_pack_path",
           "materialize_model_artifact_path", "load_model_artifact_path"),
          flows.exchange_between_processes),
    Check("flows.filters_in_jobs",
          "the revision's state_dict_filter in exports and inner-loop jobs (custom pack "
          "hooks included) gives packs of exactly the plan's values",
          ("export_parameter_pack_path", "run_inner_loop"), flows.filters_in_jobs),
    Check("errors.unknown_method",
          "an unknown method is answered ok:false; the worker keeps serving",
          (WORKER,), errors.unknown_method),
    Check("errors.unknown_model_ids",
          "every model-id parameter of every method refuses an unknown handle, naming it",
          (WORKER,), errors.unknown_model_ids),
    Check("errors.missing_params",
          "every method refuses non-object params and each missing required parameter, naming it",
          (WORKER,), errors.missing_params),
    Check("errors.ill_typed_params",
          "every method refuses ill-typed and out-of-range parameters, naming them",
          (WORKER,), errors.ill_typed_params),
    Check("errors.bad_files",
          "missing, malformed, short, mismatched and escaping packs and artifacts are refused",
          ("import_parameter_pack_path", "load_model_artifact_path", WORKER), errors.bad_files),
    Check("protocol.apply_patch_outcome",
          "apply_patch answers a valid PatchOutcome for Hot, Warm, Cold and empty patches",
          ("apply_patch",), protocol.apply_patch_outcome),
    Check("protocol.shutdown_after_hooks",
          "after every hook has run, shutdown still ends the worker with status 0, promptly",
          (WORKER, "no non-daemon threads started by hooks"), protocol.shutdown_after_hooks),
)  # fmt: skip

BY_ID: dict[str, Check] = {check.id: check for check in CHECKS}


def resolve(patterns: Iterable[str], option: str = "check id") -> list[str]:
    """Ids matching each pattern (exact id or shell glob), in registry order.

    Raises :class:`UsageError` naming a pattern that matches nothing.
    """
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [c.id for c in CHECKS if fnmatch.fnmatchcase(c.id, pattern)]
        if not matched:
            raise UsageError(
                f"{option} {pattern!r} matches no check; known ids: {', '.join(BY_ID)}"
            )
        chosen.update(matched)
    return [c.id for c in CHECKS if c.id in chosen]


__all__ = ["BY_ID", "CHECKS", "Check", "resolve"]
