"""Workload semantics, judged on parameter values exported over the protocol:
artifacts, merging, EMA, reconciliation, the DiLoCo inner loop, releasing handles."""

from __future__ import annotations

from typing import Any

from fakecoord.packs import Pack

from .errors import CheckFailed, CheckSkipped, describe, one_line
from .options import candidate
from .session import Session
from .values import describe_difference, same_bits, tolerance

MERGE = "merge_candidate_models()"
EMA = "apply_single_root_ema()"
RECONCILE = "reconcile_canonical_model()"
INNER = "run_inner_loop()"
ARTIFACTS = (
    "load_model_artifact_path() / load_model_artifact() "
    "(or materialize_model_artifact_path() / materialize_model_artifact())"
)


def _outside(values: Any, low: Any, high: Any, slack: Any) -> int:
    import numpy as np

    lo, hi = np.minimum(low, high), np.maximum(low, high)
    return int(((values < lo - slack) | (values > hi + slack)).sum())


def _slack(s: Session, *packs: Pack) -> Any:
    import numpy as np

    reference = np.max(np.abs(np.stack([p.values for p in packs])), axis=0)
    return tolerance(reference, s.low_precision())


def _within(got: Any, want: Any, slack: Any) -> bool:
    import numpy as np

    return bool((np.abs(got.astype(np.float64) - want.astype(np.float64)) <= slack).all())


def _first_outside(values: Any, low: Any, high: Any, slack: Any) -> str:
    import numpy as np

    lo, hi = np.minimum(low, high), np.maximum(low, high)
    bad = (values < lo - slack) | (values > hi + slack)
    i = int(np.argmax(bad))
    return (
        f"{int(bad.sum())} of {values.size} values outside (first at index {i}: "
        f"{float(values[i])!r} not in [{float(lo[i])!r}, {float(hi[i])!r}])"
    )


def _merge(s: Session, base: str, candidates: list[dict], policy: Any = "WeightedMean") -> str:
    what = 'merge_candidate_models to answer {"model_id": str} (a new merged model)'
    model_id = s.request(
        "merge_candidate_models",
        {"base_model_id": base, "candidates": candidates, "policy": policy},
        expected=what,
        hook=MERGE,
    )
    if model_id is None:
        raise CheckFailed(what, "model_id null (no merge)", MERGE)
    if not model_id:
        raise CheckFailed(what, "model_id '' (an empty handle)", MERGE)
    return s.track(model_id)


# -- artifacts ---------------------------------------------------------------


def artifacts_roundtrip(s: Session) -> str:
    source, expected = s.crafted(101)
    target = s.new_model()
    before = s.export(target)
    if same_bits(before.values, expected.values):
        raise CheckSkipped(
            "could not make a model that differs from a fresh one (the crafted pack imported "
            "as init values; see packs.import_exact)"
        )
    path = s.path("artifact") / "artifact.safetensors"
    path.parent.mkdir()
    for method, model_id in (
        ("materialize_model_artifact", source),
        ("load_model_artifact", target),
    ):
        what = f"{method} to answer an ack object"
        params = {"model_id": model_id, "artifact_path": str(path)}
        s.request(method, params, expected=what, hook=ARTIFACTS)
        if method == "materialize_model_artifact" and not path.exists():
            raise CheckFailed(f"an artifact file at {path}", "no file", ARTIFACTS)
    after = s.export(target)
    if not same_bits(after.values, expected.values):
        raise CheckFailed(
            "a fresh model loaded from the artifact to hold every parameter of its source",
            describe_difference(after.values, expected.values),
            ARTIFACTS,
        )
    return f"materialize -> load into a fresh model restored all {after.parameter_count} values"


# -- merging -----------------------------------------------------------------


def merge_identical_copies(s: Session) -> str:
    model_id, pack = s.crafted(201)
    copies = [s.import_pack(pack.path) for _ in range(2)]
    base, _ = s.crafted(202)
    merged = _merge(s, base, [candidate(copies[0], 1.0), candidate(copies[1], 3.0)])
    got = s.export(merged)
    slack = tolerance(pack.values, s.low_precision())
    if not _within(got.values, pack.values, slack):
        raise CheckFailed(
            "merging two copies of one model (weights 1 and 3) to give that model",
            describe_difference(got.values, pack.values, slack),
            MERGE,
        )
    return "two copies of one model (weights 1, 3) merge into that model"


def merge_weighted_mean(s: Session) -> str:
    import numpy as np

    a, pa = s.crafted(301)
    b, pb = s.crafted(302)
    base, _ = s.crafted(303)
    merged = _merge(s, base, [candidate(a, 3.0), candidate(b, 1.0)])
    got = s.export(merged)
    slack = _slack(s, pa, pb)
    if _outside(got.values, pa.values, pb.values, slack):
        raise CheckFailed(
            "a WeightedMean merge inside the candidates' convex hull (each value between A's and B's)",
            _first_outside(got.values, pa.values, pb.values, slack),
            MERGE,
        )
    span = (pa.values - pb.values).astype(np.float64)
    t = float(np.dot(got.values - pb.values, span) / max(np.dot(span, span), 1e-30))
    if abs(t - 0.75) > 0.02:
        raise CheckFailed(
            "the merge 75% of the way from B to A (sample weights A=3, B=1)",
            f"{t:.1%} of the way",
            MERGE,
        )
    return f"the merge lies in the hull, {t:.1%} of the way to the candidate weighted 3:1"


def merge_preserves_base(s: Session) -> str:
    base, before = s.crafted(401)
    a, pa = s.crafted(402)
    b, pb = s.crafted(403)
    _merge(s, base, [candidate(a, 1.0), candidate(b, 2.0)])
    for name, model_id, pack in (
        ("base", base, before),
        ("candidate A", a, pa),
        ("candidate B", b, pb),
    ):
        after = s.export(model_id)
        if not same_bits(after.values, pack.values):
            raise CheckFailed(
                f"merging to leave the {name} model unchanged",
                describe_difference(after.values, pack.values),
                MERGE + " (build a new state; do not modify base or candidates)",
            )
    return "base and candidates unchanged by merging"


def ema_between(s: Session) -> str:
    base, pbase = s.crafted(501)
    merged, pmerged = s.crafted(502)
    what = f'apply_single_root_ema to answer {{"model_id": {merged!r}}} (the merged handle)'
    params = {"base_model_id": base, "merged_model_id": merged, "policy": "Ema"}
    answered = s.handle("apply_single_root_ema", params, what=what, hook=EMA)
    if answered != merged:
        raise CheckFailed(what, describe(answered), EMA)
    got = s.export(merged)
    slack = _slack(s, pbase, pmerged)
    if _outside(got.values, pbase.values, pmerged.values, slack):
        raise CheckFailed(
            "the EMA result between base and merged (no extrapolation)",
            _first_outside(got.values, pbase.values, pmerged.values, slack),
            EMA,
        )
    return "the EMA result lies between base and merged"


def reconcile_replace(s: Session) -> str:
    local, plocal = s.crafted(601)
    canonical, pcanonical = s.crafted(602)
    got = _reconcile(s, local, canonical, "Replace")
    if not same_bits(got.values, pcanonical.values):
        detail = describe_difference(got.values, pcanonical.values)
        if same_bits(got.values, plocal.values):
            detail = "the local model's parameters"
        raise CheckFailed("Replace to leave the canonical parameters", detail, RECONCILE)
    return "Replace yields the canonical parameters exactly"


def reconcile_root_ema(s: Session) -> str:
    for weight, seed in ((1.0, 701), (0.0, 703), (0.25, 705)):
        local, plocal = s.crafted(seed)
        canonical, pcanonical = s.crafted(seed + 1)
        got = _reconcile(s, local, canonical, {"RootEma": {"canonical_weight": weight}})
        slack = _slack(s, plocal, pcanonical)
        if weight in (0.0, 1.0):
            want = pcanonical if weight == 1.0 else plocal
            name = "canonical" if weight == 1.0 else "local"
            if not _within(got.values, want.values, slack):
                raise CheckFailed(
                    f"RootEma with canonical_weight {weight} to give the {name} parameters",
                    describe_difference(got.values, want.values, slack),
                    RECONCILE,
                )
        elif _outside(got.values, plocal.values, pcanonical.values, slack):
            raise CheckFailed(
                f"RootEma with canonical_weight {weight} between local and canonical",
                _first_outside(got.values, plocal.values, pcanonical.values, slack),
                RECONCILE,
            )
    return "RootEma with canonical_weight 1 gives canonical, 0 gives local, 0.25 lies between"


def _reconcile(s: Session, local: str, canonical: str, strategy: Any) -> Pack:
    what = f'reconcile_canonical_model({strategy}) to answer {{"model_id": {canonical!r}}}'
    params = {"local_model_id": local, "canonical_model_id": canonical, "strategy": strategy}
    answered = s.handle("reconcile_canonical_model", params, what=what, hook=RECONCILE)
    if answered != canonical:
        raise CheckFailed(what, describe(answered), RECONCILE)
    return s.export(canonical)


# -- handles -----------------------------------------------------------------


def release_model(s: Session) -> str:
    gone, kept = s.new_model(), s.new_model()
    hook = "the worker's model table (release_model)"
    for model_id in (gone, gone, "conformance-never-issued"):
        what = f"release_model({model_id!r}) to answer an ack object (unknown ids included)"
        s.request("release_model", {"model_id": model_id}, expected=what, hook=hook)
    for model_id, live in ((gone, False), (kept, True)):
        params = {
            "model_id": model_id,
            "parameter_pack_path": str(s.path("release-probe")),
            "model_schema_hash": s.options.model_schema_hash,
        }
        expected = (
            f"export_parameter_pack of the live handle {kept!r} to succeed after releasing {gone!r}"
            if live
            else f"export_parameter_pack of the released handle {gone!r} refused, naming it"
        )
        ok, result = s.attempt("export_parameter_pack", params, expected=expected, hook=hook)
        if ok != live:
            got = f"ok:true with {one_line(describe(result))}" if ok else f"ok:false: {result}"
            raise CheckFailed(expected, got, hook)
        if not live and gone not in result:
            raise CheckFailed(expected, f"the message {one_line(result, 160)!r}", hook)
    return (
        "a released handle is refused, the other stays; releasing twice or an unknown id is acked"
    )


# -- DiLoCo inner loop ---------------------------------------------------------


def _inner_job(s: Session, model_id: str, batches: list, exact: bool) -> dict:
    return {
        "model_id": model_id,
        "batches": batches,
        "num_inner_steps": 2,
        "inner_optimizer_state_path": None,
        "output_parameter_pack_path": str(s.path("inner-out")),
        "model_schema_hash": s.options.model_schema_hash,
        "require_exact_steps": exact,
    }


def _needs_inner_loop(s: Session) -> None:
    if "diloco_checkpoint_job" not in s.capabilities():
        raise CheckSkipped(
            "the worker does not advertise diloco_checkpoint_job (no run_inner_loop hook)"
        )


def _run_inner(s: Session, job: dict) -> dict:
    what = "run_inner_loop to answer an InnerLoopResult reporting num_inner_steps=2"
    return s.request("run_inner_loop", job, expected=what, hook=INNER)


def inner_loop_exact_steps(s: Session) -> str:
    _needs_inner_loop(s)
    batches, source = s.training_batches(2)
    for exact in (True, False):
        result = _run_inner(s, _inner_job(s, s.new_model(), batches, exact))
        if result["steps_completed"] != 2:
            raise CheckFailed(
                f"steps_completed 2 (require_exact_steps {exact})",
                str(result["steps_completed"]),
                INNER,
            )
    return f"2 steps requested, 2 reported, with and without require_exact_steps ({source})"


def inner_loop_updates_pack(s: Session) -> str:
    import numpy as np

    _needs_inner_loop(s)
    batches, source = s.training_batches(2)
    model_id = s.new_model()
    before = s.export(model_id)
    job = _inner_job(s, model_id, batches, True)
    _run_inner(s, job)
    out = s.read(s.root / job["output_parameter_pack_path"], INNER)
    what = "the output pack to have the model's layout and the job's model_schema_hash"
    if (out.layout_hash, out.parameter_count) != (before.layout_hash, before.parameter_count):
        raise CheckFailed(
            what, f"layout {out.layout_hash} with {out.parameter_count} values", INNER
        )
    if out.manifest.model_schema_hash != job["model_schema_hash"]:
        raise CheckFailed(what, f"model_schema_hash {out.manifest.model_schema_hash!r}", INNER)
    if not bool(np.isfinite(out.values).all()):
        raise CheckFailed("finite parameters after the inner loop", "NaN or infinity", INNER)
    if same_bits(out.values, before.values):
        raise CheckFailed(
            "the inner loop to change the parameters", "an output pack equal to the input", INNER
        )
    after = s.export(model_id)
    if not same_bits(after.values, out.values):
        raise CheckFailed(
            "the model handle to hold the output pack's parameters after the inner loop",
            describe_difference(after.values, out.values),
            INNER + " (return the new state, or update it in place)",
        )
    changed = int((out.bits != before.bits).sum())
    return f"{changed} of {out.parameter_count} values changed; output pack valid ({source})"


__all__ = [
    "artifacts_roundtrip",
    "ema_between",
    "inner_loop_exact_steps",
    "inner_loop_updates_pack",
    "merge_identical_copies",
    "merge_preserves_base",
    "merge_weighted_mean",
    "reconcile_replace",
    "reconcile_root_ema",
    "release_model",
]
