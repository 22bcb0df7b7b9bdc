"""Deliberately broken subjects for the conformance suite's own tests.

Each *workload defect* is a small mixin with exactly one defect; the factory
``make_broken({"defect": NAME})`` composes it over a correct base workload
(``conformance.example_workload.ExampleWorkload``, or that plus correct
custom pack hooks, float16/bfloat16 buffers, ...), so the subject differs
from a workload that passes every check by that one defect.  ``DEFECTS`` says
which check must FAIL on each one, ``WARNINGS`` which check must WARN.

Framing, parameter validation and the model table belong to the worker, not
to the workload; the *worker defects* (:mod:`tests.broken.worker_defects`)
break a real worker the way a ``--worker-cmd`` of one's own could.

Modules by concern: :mod:`.stub` (a torch-free workload), :mod:`.bases`
(correct bases), :mod:`.workload_defects` (shapes, packs, merging),
:mod:`.semantic_defects` (what the network relies on; the WARN subjects),
:mod:`.process_defects` (threads, exits, hangs), :mod:`.worker_defects`,
:mod:`.zygote` (the fork server that keeps the family fast).

This package imports neither torch nor the example workload at import time.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from . import flow_defects as flow
from . import process_defects as proc
from . import semantic_defects as sem
from . import workload_defects as wl
from .bases import CustomPacks, MixedPrecision, ShardsOnly, ZeroSteps
from .stub import StubWorkload, make_stub

HANG_TIMEOUT = {"call_timeout": 5.0, "accept_timeout": 60.0}
"""Options for subjects that hang: a short --timeout, a normal worker start."""
REAL_WORKERS = {"worker_cmd": None}
"""Options for subjects whose defect forked workers hide (they share the fork server's
hash seed): real ``python -m worker`` processes."""

# name -> (defect mixin, base, the check that must FAIL[, Options overrides])
DEFECTS: dict[str, tuple[Any, ...]] = {
    "nan_metric": (wl.NanMetric, "example", "protocol.train_window_metrics"),
    "list_metric": (wl.ListMetric, "example", "protocol.train_window_metrics"),
    "float_window": (wl.FloatWindow, "example", "protocol.capability_probe"),
    "tiny_throughput": (sem.TinyThroughput, "example", "protocol.capability_placement"),
    "init_returns_none": (wl.InitReturnsNone, "example", "protocol.init_model"),
    "init_exits": (proc.InitExits, "example", "protocol.init_model"),
    "init_sleeps": (proc.InitSleeps, "example", "protocol.init_model", HANG_TIMEOUT),
    "evaluate_str_split": (wl.EvaluateStrSplit, "example", "protocol.evaluate_metrics"),
    "evaluate_system_exit": (wl.EvaluateSystemExit, "example", "protocol.evaluate_metrics"),
    "bad_patch_outcome": (wl.BadPatchOutcome, "example", "protocol.apply_patch_outcome"),
    "hook_thread": (proc.HookThread, "example", "protocol.shutdown_after_hooks"),
    "unstable_layout": (wl.UnstableLayout, "example", "packs.layout_stable"),
    "random_width": (sem.RandomWidth, "example", "packs.layout_stable"),
    "load_ignores_file": (wl.LoadIgnoresFile, "example", "artifacts.roundtrip_restores"),
    "silent_noop_training": (
        sem.SilentNoOpTraining, "example", "semantics.train_window_updates_model"
    ),
    "claims_no_work": (sem.ClaimsNoWork, "example", "semantics.train_window_updates_model"),
    "evaluate_trains": (sem.EvaluateTrains, "example", "semantics.evaluate_preserves_model"),
    "merge_returns_base": (wl.MergeReturnsBase, "example", "semantics.merge_weighted_mean"),
    "merge_sums": (wl.MergeSums, "example", "semantics.merge_identical_copies"),
    "merge_mutates_base": (wl.MergeMutatesBase, "example", "semantics.merge_preserves_base"),
    "merge_quality_everywhere": (
        sem.MergeQualityEverywhere, "example", "semantics.merge_policy_weights"
    ),
    "merge_ignores_quality": (
        sem.MergeIgnoresQuality, "example", "semantics.merge_policy_weights"
    ),
    "ema_extrapolates": (wl.EmaExtrapolates, "example", "semantics.ema_between"),
    "replace_keeps_local": (wl.ReplaceKeepsLocal, "example", "semantics.reconcile_replace"),
    "root_ema_inverted": (wl.RootEmaInverted, "example", "semantics.reconcile_root_ema"),
    "merge_float64": (sem.MergeFloat64, "example", "semantics.results_keep_layout"),
    "shared_state": (sem.SharedState, "example", "semantics.handles_independent"),
    "inner_loop_miscounts": (wl.InnerLoopMiscounts, "example", "diloco.inner_loop_exact_steps"),
    "inner_loop_does_nothing": (
        wl.InnerLoopDoesNothing, "example", "diloco.inner_loop_updates_pack"
    ),
    "lingering_thread": (proc.LingeringThread, "example", "framing.eof_exits_zero"),
    "lossy_import": (wl.LossyImport, "custom_packs", "packs.import_exact"),
    "import_drops_last": (wl.ImportDropsLast, "custom_packs", "packs.roundtrip_bit_identical"),
    "wrong_schema_hash": (wl.WrongSchemaHash, "custom_packs", "packs.manifest_valid"),
    "import_swallows_errors": (wl.ImportSwallowsErrors, "custom_packs", "errors.bad_files"),
    "merge_widens": (wl.MergeWidens, "example", "semantics.merge_weighted_mean"),
    "name_not_str": (flow.NameNotStr, "example", "protocol.portable_results"),
    "train_returns_none": (flow.TrainReturnsNone, "example", "protocol.portable_results"),
    "inner_state_directory": (flow.InnerStateDirectory, "example", "flows.diloco_rounds"),
    "pairs_refs": (flow.PairsRefs, "example", "flows.train_handles"),
    "merge_divides_by_zero": (flow.MergeDividesByZero, "example", "flows.merge_edge_cases"),
    "ema_only_for_ema": (flow.EmaOnlyForEma, "example", "flows.root_ema_policies"),
    "evaluate_needs_training": (
        flow.EvaluateNeedsTraining, "example", "flows.evaluate_fresh_worker"
    ),
    "hash_ordered_packs": (
        flow.HashOrderedPacks, "custom_packs", "flows.exchange_between_processes", REAL_WORKERS
    ),
    "export_ignores_filter": (
        flow.ExportIgnoresFilter, "custom_packs", "flows.filters_in_jobs"
    ),
}  # fmt: skip

# name -> (mixin, base, the check that must WARN)
WARNINGS: dict[str, tuple[Any, ...]] = {
    "patch_expects_tagged_float": (
        sem.PatchExpectsTaggedFloat, "example", "protocol.apply_patch_outcome"
    ),
    "reports_batch_count": (sem.ReportsBatchCount, "example", "protocol.train_window_metrics"),
    "evaluate_ignores_split": (sem.EvaluateIgnoresSplit, "example", "protocol.evaluate_metrics"),
    "unseeded_init": (sem.UnseededInit, "example", "packs.layout_stable"),
    "ema_noop": (sem.EmaNoop, "example", "semantics.ema_between"),
    "merge_refuses_trimmed_mean": (
        sem.MergeRefusesTrimmedMean, "example", "semantics.merge_policy_weights"
    ),
    "inner_loop_ignores_batches": (
        sem.InnerLoopIgnoresBatches, "example", "diloco.inner_loop_updates_pack"
    ),
    "inner_state_constant": (flow.InnerStateConstant, "example", "flows.diloco_rounds"),
    "inner_state_never_loaded": (
        flow.InnerStateNeverLoaded, "example", "flows.diloco_rounds"
    ),
}  # fmt: skip

BASES = {
    "example": (),
    "custom_packs": (CustomPacks,),
    "mixed_precision": (MixedPrecision,),
    "shards_only": (ShardsOnly,),
    "zero_steps": (ZeroSteps,),
    "train_exits": (flow.TrainExits,),
    "marker": (proc.ImportMarker,),
}


def _entry(defect: str) -> tuple[Any, ...]:
    return DEFECTS[defect] if defect in DEFECTS else WARNINGS[defect]


@functools.cache
def subject_class(defect: str | None, base: str) -> type:
    """``defect`` (or nothing) over ``base``, as one class."""
    from conformance.example_workload import ExampleWorkload

    mixins = (_entry(defect)[0],) if defect else ()
    name = mixins[0].__name__ if defect else f"Correct{base.title().replace('_', '')}"
    return type(name, (*mixins, *BASES[base], ExampleWorkload), {})


def make_broken(config: dict) -> Any:
    """``{"defect": NAME}`` from DEFECTS or WARNINGS, or ``{"base": NAME}`` for a correct base."""
    defect = config.get("defect")
    base = _entry(defect)[1] if defect else config.get("base", "example")
    return subject_class(defect, base)(config)


def make_control(config: dict) -> Any:
    """A legal but unusual workload (:mod:`.controls`, imported on use: it imports torch)."""
    from .controls import make_control as make

    return make(config)


FACTORIES = {
    "stub": "tests.broken:make_stub",
    "example": "tests.broken:make_broken",
    "mixed": "tests.broken:make_broken",
}


def worker_command(defect: str | None = None, zygote: str | None = None) -> list[str]:
    """The ``--worker-cmd`` prefix running our worker with ``defect`` applied
    (or intact), directly or forked by the fork server at ``zygote``."""
    prefix = [sys.executable, "-m", "tests.broken"]
    if zygote:
        prefix += ["--via-zygote", zygote]
    return [*prefix, defect or "-"]


def probe_command(zygote: str) -> list[str]:
    """The layout probe's command, forked by the fork server at ``zygote``."""
    return [sys.executable, "-m", "tests.broken", "--via-zygote", zygote, "--probe"]


__all__ = [
    "BASES",
    "DEFECTS",
    "FACTORIES",
    "WARNINGS",
    "StubWorkload",
    "make_broken",
    "make_control",
    "make_stub",
    "probe_command",
    "subject_class",
    "worker_command",
]
