"""Workload semantics beyond merging, judged on parameter values exported over the
protocol: artifacts restore a model, releasing handles, and handles that stay
independent of each other (docs/protocol.md §7: the coordinator keeps several alive
at once)."""

from __future__ import annotations

from typing import Any

from fakecoord.packs import Pack

from .errors import CheckFailed, CheckSkipped, describe, one_line
from .session import Session
from .values import describe_difference, same_bits

ARTIFACTS = (
    "load_model_artifact_path() / load_model_artifact() "
    "(or materialize_model_artifact_path() / materialize_model_artifact())"
)
INDEPENDENT = "the workload's states: every init_model / import must build a new, unshared state"


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


def handles_independent(s: Session) -> str:
    a, pa = s.crafted(901)
    b, pb = s.crafted(902)

    def unchanged(name: str, model_id: str, pack: Pack, after: str, hook: str) -> None:
        got = s.export(model_id)
        if not same_bits(got.values, pack.values):
            raise CheckFailed(
                f"the {name} model unchanged after {after}",
                describe_difference(got.values, pack.values),
                hook,
            )

    unchanged("first imported", a, pa, "importing a second model", INDEPENDENT)
    steps = ["a second import"]
    ok, _ = s.attempt(
        "evaluate", {"model_id": a, "split": "Validation"}, expected="evaluate", hook="evaluate()"
    )
    if ok:
        unchanged("other", b, pb, "evaluating one model", INDEPENDENT + "; evaluate()")
        steps.append("evaluate")
    try:
        batches, _ = s.training_batches(2)
    except CheckSkipped:
        batches = None
    if batches is not None:
        ok, _ = s.attempt(
            "train_window", {"model_id": a, "batches": batches}, expected="train_window",
            hook="train_window()",
        )  # fmt: skip
        if ok:
            unchanged("other", b, pb, "training one model", INDEPENDENT + "; train_window()")
            steps.append("train_window")
    base, pbase = s.crafted(903)
    merged, _ = s.crafted(904)
    params: dict[str, Any] = {"base_model_id": base, "merged_model_id": merged, "policy": "Ema"}
    s.handle("apply_single_root_ema", params, what="apply_single_root_ema to answer",
             hook="apply_single_root_ema()")  # fmt: skip
    unchanged("EMA's base", base, pbase, "apply_single_root_ema", "apply_single_root_ema()")
    local, plocal = s.crafted(905)
    canonical, _ = s.crafted(906)
    params = {
        "local_model_id": local,
        "canonical_model_id": canonical,
        "strategy": {"RootEma": {"canonical_weight": 0.5}},
    }
    s.handle("reconcile_canonical_model", params, what="reconcile_canonical_model to answer",
             hook="reconcile_canonical_model()")  # fmt: skip
    unchanged("local", local, plocal, "reconcile_canonical_model", "reconcile_canonical_model()")
    steps += ["an EMA (its base)", "a reconcile (its local model)"]
    return "each handle kept its own parameters across " + ", ".join(steps)


__all__ = ["artifacts_roundtrip", "handles_independent", "release_model"]
