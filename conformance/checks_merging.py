"""Merging, EMA and reconciliation, judged on parameter values exported over the protocol.

Models with distinct, crafted parameter values are made by importing packs;
results are read back by exporting packs.  Comparisons allow for rounding in
the model's own dtype.  What the Rust coordinator relies on (docs/protocol.md §7):
candidates weighted by ``sample_weight * quality`` with the quality the
policy says, and results that keep the base's layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakecoord.packs import Pack

from .errors import CheckFailed, describe, one_line
from .options import candidate
from .session import Session
from .values import (
    count_outside,
    describe_difference,
    first_outside,
    fraction_along,
    same_bits,
    tolerance,
    within,
)

MERGE = "merge_candidate_models()"
EMA = "apply_single_root_ema()"
RECONCILE = "reconcile_canonical_model()"


def _slack(s: Session, *packs: Pack) -> Any:
    import numpy as np

    reference = np.max(np.abs(np.stack([p.values for p in packs])), axis=0)
    return tolerance(reference, s.low_precision())


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


def merge_identical_copies(s: Session) -> str:
    model_id, pack = s.crafted(201)
    copies = [s.import_pack(pack.path) for _ in range(2)]
    base, _ = s.crafted(202)
    merged = _merge(s, base, [candidate(copies[0], 1.0), candidate(copies[1], 3.0)])
    got = s.result(merged, MERGE, "the merge result")
    slack = tolerance(pack.values, s.low_precision())
    if not within(got.values, pack.values, slack):
        raise CheckFailed(
            "merging two copies of one model (weights 1 and 3) to give that model",
            describe_difference(got.values, pack.values, slack),
            MERGE,
        )
    return "two copies of one model (weights 1, 3) merge into that model"


def merge_weighted_mean(s: Session) -> str:
    a, pa = s.crafted(301)
    b, pb = s.crafted(302)
    base, _ = s.crafted(303)
    merged = _merge(s, base, [candidate(a, 3.0), candidate(b, 1.0)])
    got = s.result(merged, MERGE, "the merge result")
    slack = _slack(s, pa, pb)
    if count_outside(got.values, pa.values, pb.values, slack):
        raise CheckFailed(
            "a WeightedMean merge inside the candidates' convex hull (each value between A's and B's)",
            first_outside(got.values, pa.values, pb.values, slack),
            MERGE,
        )
    t = fraction_along(got.values, pb.values, pa.values)
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
        after = s.result(model_id, MERGE, f"the {name} after merging")
        if not same_bits(after.values, pack.values):
            raise CheckFailed(
                f"merging to leave the {name} model unchanged",
                describe_difference(after.values, pack.values),
                MERGE + " (build a new state; do not modify base or candidates)",
            )
    return "base and candidates unchanged by merging"


# The quality each policy applies to a candidate in the Rust reference merge
# (crates/burn_p2p/src/burn.rs): weight = sample_weight * quality.
POLICY_QUALITY: dict[str, tuple[str, Callable[[float], float]]] = {
    "WeightedMean": ("1 (quality_weight ignored)", lambda q: 1.0),
    "NormClippedWeightedMean": (
        "quality_weight clamped to [0, 1]",
        lambda q: min(max(q, 0.0), 1.0),
    ),
    "TrimmedMean": ("quality_weight", lambda q: q),
    "Ema": ("quality_weight", lambda q: q),
    "QualityWeightedEma": ("quality_weight", lambda q: q),
}
QUALITY_A, QUALITY_B = 4.0, 0.25
"""Unequal quality weights (sample weights are equal): every rule gives a distinct merge."""


def _weighting_seen(t: float) -> str:
    """Which known weighting a merge ``t`` of the way from B to A matches."""
    known = {
        "sample_weight only (quality ignored)": 0.5,
        "sample_weight * clamp(quality_weight, 0, 1)": 0.8,
        "sample_weight * quality_weight": QUALITY_A / (QUALITY_A + QUALITY_B),
    }
    for name, value in known.items():
        if abs(t - value) <= 0.02:
            return f"{t:.1%} of the way, as if weighted by {name}"
    return f"{t:.1%} of the way"


def merge_policy_weights(s: Session) -> str:
    import numpy as np

    # A = base + d and B = base - d: equal distances from the base, so clipping
    # deltas to a common norm or trimming two candidates leaves the mean alone.
    base_values = s.template().values
    rng = np.random.default_rng(811)
    start = (base_values + rng.standard_normal(base_values.size).astype(np.float32) * 0.05).astype(
        np.float32
    )
    delta = (rng.standard_normal(base_values.size) * 0.05).astype(np.float32)
    base, _ = s.holding(start, "policy-base")
    a, pa = s.holding((start + delta).astype(np.float32), "policy-a")
    b, pb = s.holding((start - delta).astype(np.float32), "policy-b")
    seen = []
    for policy, (rule, quality) in POLICY_QUALITY.items():
        qa, qb = quality(QUALITY_A), quality(QUALITY_B)
        want = qa / (qa + qb)
        candidates = [candidate(a, 1.0, QUALITY_A), candidate(b, 1.0, QUALITY_B)]
        params = {"base_model_id": base, "candidates": candidates, "policy": policy}
        what = f'a {policy} merge to answer {{"model_id": str}}'
        ok, result = s.attempt("merge_candidate_models", params, expected=what, hook=MERGE)
        if ok:
            result = s.decode("merge_candidate_models", result, what=what, hook=MERGE)
        if policy != "WeightedMean" and (not ok or result is None):
            refusal = f"ok:false: {one_line(result, 120)}" if not ok else "no merge (model_id null)"
            s.warn(
                f"merge_candidate_models answered {refusal} for policy {policy}: a deployment "
                "configured with it cannot merge"
            )
            continue
        if not ok or not result:
            raise CheckFailed(what, f"ok:false: {one_line(result)}" if not ok else "null", MERGE)
        got = s.result(s.track(result), MERGE, f"the {policy} merge result")
        t = fraction_along(got.values, pb.values, pa.values)
        if abs(t - want) > 0.02:
            raise CheckFailed(
                f"a {policy} merge of A and B (sample weights 1, 1; quality weights "
                f"{QUALITY_A:g}, {QUALITY_B:g}) weighting each by sample_weight * {rule}, as the "
                f"Rust reference merge does (docs/protocol.md §7): {want:.1%} of the way from B to A",
                _weighting_seen(t),
                MERGE + ": weigh candidates by the policy's rule",
            )
        seen.append(f"{policy} {t:.0%}")
    return "candidates weighted as the Rust reference merge does: " + ", ".join(seen)


def ema_between(s: Session) -> str:
    base, pbase = s.crafted(501)
    merged, pmerged = s.crafted(502)
    what = f'apply_single_root_ema to answer {{"model_id": {merged!r}}} (the merged handle)'
    params = {"base_model_id": base, "merged_model_id": merged, "policy": "Ema"}
    answered = s.handle("apply_single_root_ema", params, what=what, hook=EMA)
    if answered != merged:
        raise CheckFailed(what, describe(answered), EMA)
    got = s.result(merged, EMA, "the EMA result")
    slack = _slack(s, pbase, pmerged)
    if count_outside(got.values, pbase.values, pmerged.values, slack):
        raise CheckFailed(
            "the EMA result between base and merged (no extrapolation)",
            first_outside(got.values, pbase.values, pmerged.values, slack),
            EMA,
        )
    if same_bits(got.values, pmerged.values):
        s.warn(
            "apply_single_root_ema left the merged model unchanged for policy Ema (no pull "
            "towards the base): fine if your deployment runs without root EMA, suspicious otherwise"
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
            if not within(got.values, want.values, slack):
                raise CheckFailed(
                    f"RootEma with canonical_weight {weight} to give the {name} parameters",
                    describe_difference(got.values, want.values, slack),
                    RECONCILE,
                )
        elif count_outside(got.values, plocal.values, pcanonical.values, slack):
            raise CheckFailed(
                f"RootEma with canonical_weight {weight} between local and canonical",
                first_outside(got.values, plocal.values, pcanonical.values, slack),
                RECONCILE,
            )
    return "RootEma with canonical_weight 1 gives canonical, 0 gives local, 0.25 lies between"


def _reconcile(s: Session, local: str, canonical: str, strategy: Any) -> Pack:
    what = f'reconcile_canonical_model({strategy}) to answer {{"model_id": {canonical!r}}}'
    params = {"local_model_id": local, "canonical_model_id": canonical, "strategy": strategy}
    answered = s.handle("reconcile_canonical_model", params, what=what, hook=RECONCILE)
    if answered != canonical:
        raise CheckFailed(what, describe(answered), RECONCILE)
    return s.result(canonical, RECONCILE, f"the {strategy} result")


def results_keep_layout(s: Session) -> str:
    want = s.template()
    base, _ = s.crafted(1001)
    a, _ = s.crafted(1002)
    b, _ = s.crafted(1003)

    def keeps(operation: str, pack: Pack, hook: str) -> None:
        if (pack.layout_hash, pack.parameter_count) != (want.layout_hash, want.parameter_count):
            raise CheckFailed(
                f"the {operation} result to keep the base's layout {want.layout_hash} "
                f"({want.parameter_count} values): a changed key, shape or dtype (e.g. float64) "
                "makes every later pack's layout hash differ from the peers'",
                f"layout {pack.layout_hash} with {pack.parameter_count} values",
                hook + ": keep every tensor's name, shape and dtype",
            )

    merged = _merge(s, base, [candidate(a, 1.0), candidate(b, 2.0)])
    keeps("merge", s.export(merged), MERGE)
    params = {"base_model_id": base, "merged_model_id": merged, "policy": "Ema"}
    s.handle("apply_single_root_ema", params, what="apply_single_root_ema to answer", hook=EMA)
    keeps("EMA", s.export(merged), EMA)
    keeps(
        "RootEma reconcile", _reconcile(s, a, b, {"RootEma": {"canonical_weight": 0.5}}), RECONCILE
    )
    keeps("Replace reconcile", _reconcile(s, base, a, "Replace"), RECONCILE)
    return f"merge, EMA and reconcile results keep the layout {want.layout_hash[:29]}..."


__all__ = [
    "ema_between",
    "merge_identical_copies",
    "merge_policy_weights",
    "merge_preserves_base",
    "merge_weighted_mean",
    "reconcile_replace",
    "reconcile_root_ema",
    "results_keep_layout",
]
