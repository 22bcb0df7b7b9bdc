"""Parameter pack and layout checks (docs/protocol.md §3), seen from outside the worker."""

from __future__ import annotations

from typing import Any

from fakecoord import packs
from fakecoord.errors import PackError

from .errors import CheckFailed, CheckSkipped, describe
from .layout import selects
from .properties import for_examples
from .session import Session
from .values import describe_difference, exact_values, same_bits

INIT = "init_model() (the layout comes from its state)"
LAYOUT = "the worker's layout computation (docs/protocol.md §3), or init_model() state"
NO_FILTER: dict[str, list[str]] = {"include_globs": [], "exclude_globs": []}


def plan_shape(s: Session) -> str:
    plan = s.plan()
    if plan["layout_hash"] is None:
        if not plan["uses_custom_parameter_pack_hooks"]:
            raise CheckFailed("a layout_hash (null only with custom pack hooks)", "null", INIT)
        return f"no generic layout (custom pack hooks): {plan['generic_plan_error'] or ''}"
    if not plan["uses_custom_parameter_pack_hooks"]:
        template = s.template()
        if template.parameter_count != plan["parameter_count"]:
            raise CheckFailed(
                f"an exported pack of parameter_count {plan['parameter_count']} (the plan's)",
                f"{template.parameter_count}",
                LAYOUT,
            )
    return (
        f"{len(plan['included_keys'])} float keys ({plan['parameter_count']} values), "
        f"{len(plan['ignored_non_float_keys'])} non-float keys ignored"
    )


WORKER_PLANS = 8
"""parameter_pack_plan calls (each on a fresh init_model state) packs.layout_stable makes."""
UNSTABLE = "init_model() (it must build the same architecture on every call, in every process)"


def _distinct(layouts: list[tuple[str, int]]) -> str:
    counts: dict[tuple[str, int], int] = {}
    for layout in layouts:
        counts[layout] = counts.get(layout, 0) + 1
    return "; ".join(f"{n}x {h} ({c} values)" for (h, c), n in counts.items())


def layout_stable(s: Session) -> str:
    first = s.plan()
    plans = [first] + [s.plan(fresh=True) for _ in range(WORKER_PLANS - 1)]
    seen = [(p["layout_hash"], p["parameter_count"]) for p in plans]
    if len(set(seen)) > 1 or any(p["included_keys"] != first["included_keys"] for p in plans):
        raise CheckFailed(
            f"{len(plans)} parameter_pack_plan calls (each on a fresh init_model state) with "
            "one layout",
            _distinct(seen),
            UNSTABLE,
        )
    a, b = s.export(s.new_model()), s.export(s.new_model())
    if (a.layout_hash, a.parameter_count) != (b.layout_hash, b.parameter_count):
        raise CheckFailed(
            "two init_model models to export the same layout",
            f"{a.layout_hash} ({a.parameter_count} values) then "
            f"{b.layout_hash} ({b.parameter_count} values)",
            UNSTABLE,
        )
    calls = len(plans) + 2
    note = ""
    probe = s.probe()
    generic = first["layout_hash"] is not None
    if probe.layouts and generic:
        elsewhere = [(layout.hash, layout.parameter_count) for layout in probe.layouts]
        if len(set(elsewhere)) > 1:
            raise CheckFailed(
                f"{len(elsewhere)} init_model calls in another process (the suite's layout "
                "probe) with one layout",
                _distinct(elsewhere),
                UNSTABLE,
            )
        if not first["uses_custom_parameter_pack_hooks"] and elsewhere[0] != seen[0]:
            raise CheckFailed(
                "init_model in another process (the suite's layout probe) to build the "
                f"worker's layout {seen[0][0]} ({seen[0][1]} values)",
                _distinct(elsewhere),
                UNSTABLE,
            )
        calls += len(elsewhere)
        note = f", {len(elsewhere)} of them in a second process"
        _warn_if_values_differ(s, probe.values, first)
    elif probe.error:
        note = f" (the second process could not build the workload: {probe.error})"
    return f"one layout {first['layout_hash'] or a.layout_hash} over {calls} init_model calls{note}"


def _warn_if_values_differ(s: Session, values: Any, plan: dict) -> None:
    if values is None or plan["uses_custom_parameter_pack_hooks"]:
        return
    template = s.template().values
    if values.shape == template.shape and not same_bits(values, template):
        s.warn(
            "init_model builds different parameter values in different processes (the worker "
            "and the suite's layout probe): seed it (e.g. torch.manual_seed(config seed)) so "
            "that every peer starts from the same model and runs are reproducible"
        )


def layout_hash_independent(s: Session) -> str:
    plan = s.plan()
    if plan["layout_hash"] is None:
        raise CheckSkipped("the plan has no generic layout (opaque state with custom pack hooks)")
    if not plan["uses_custom_parameter_pack_hooks"]:
        manifest_hash = s.template().layout_hash
        if manifest_hash != plan["layout_hash"]:
            raise CheckFailed(
                f"the exported manifest's layout_hash to equal the plan's {plan['layout_hash']}",
                manifest_hash,
                LAYOUT,
            )
    try:
        local = s.local_layout()
    except CheckSkipped as exc:
        raise CheckSkipped(f"the plan and the manifest agree, but {exc.reason}") from None
    except CheckFailed as exc:
        raise CheckFailed(
            "init_model to build a model in the suite's layout probe (for the independent "
            "recomputation)",
            exc.got,
            exc.hook,
            details=exc.details,
        ) from None
    recomputed: tuple[tuple[str, Any], ...] = (
        ("included_keys", local.names),
        ("ignored_non_float_keys", local.ignored),
        ("parameter_count", local.parameter_count),
    )
    for key, mine in recomputed:
        theirs = plan[key]
        if key != "parameter_count":
            theirs, mine = sorted(theirs), sorted(mine)
        if theirs != mine:
            raise CheckFailed(
                f"plan {key} {describe(mine)} (recomputed by the suite's layout probe)",
                describe(theirs),
                LAYOUT,
            )
    if plan["layout_hash"] != local.hash:
        raise CheckFailed(
            f"layout hash {local.hash} (recomputed by the suite's layout probe per docs/protocol.md §3)",
            plan["layout_hash"],
            LAYOUT,
        )
    return f"plan, manifest and independent recomputation agree on {local.hash[:29]}..."


def roundtrip_bit_identical(s: Session) -> str:
    model_id = s.new_model()
    how = "a fresh model"
    try:
        batches, source = s.training_batches(2)
    except CheckSkipped:
        batches = None
    if batches is not None and s.train_probe().changed:
        ok, _ = s.attempt(
            "train_window",
            {"model_id": model_id, "batches": batches},
            expected="train_window to answer",
            hook="train_window()",
        )
        how = f"a model trained on {source}" if ok else how
    first = s.export(model_id)
    again = s.export(model_id)
    if not same_bits(first.values, again.values):
        raise CheckFailed(
            "two exports of one model to hold the same values",
            describe_difference(again.values, first.values),
            s.export_hook,
        )
    copy = s.import_pack(first.path)
    second = s.export(copy)
    if (second.layout_hash, second.parameter_count) != (first.layout_hash, first.parameter_count):
        raise CheckFailed(
            f"the re-exported pack to keep layout {first.layout_hash}",
            f"{second.layout_hash} with {second.parameter_count} values",
            s.import_hook,
        )
    if not same_bits(second.values, first.values):
        raise CheckFailed(
            "export -> import -> export to be bit-identical",
            describe_difference(second.values, first.values),
            s.import_hook,
        )
    return f"{first.parameter_count} values bit-identical after export -> import -> export ({how})"


def import_exact(s: Session) -> str:
    from hypothesis import strategies as st

    template = s.template()
    spans = None
    dtypes = "dtype-agnostic values (exact in float32, float16 and bfloat16)"
    try:
        local = s.local_layout().spans
    except (CheckSkipped, CheckFailed):
        local = None  # packs.layout_hash_independent reports why
    if local and sum(n for n, _ in local) == template.parameter_count:
        kinds = sorted({d for _, d in local})
        if not s.custom_packs:
            spans = local
        elif len(kinds) == 1:
            # Custom packs may order values their own way; one dtype makes order moot.
            spans = [(template.parameter_count, kinds[0])]
        if spans is not None:
            names = ", ".join(k.removeprefix("torch.") for k in kinds)
            dtypes = f"values exact in each tensor's dtype ({names})"

    def body(seed: int) -> None:
        values = exact_values(spans, template.parameter_count, seed)
        if spans is local:
            values = s.tied(values)  # one tensor under two names holds one set of values
        model_id = s.import_pack(s.write(values, f"exact-{seed}"))
        back = s.export(model_id)
        if not same_bits(back.values, values):
            raise CheckFailed(
                "imported values (signed zeros, subnormals, format extremes) exported bit-exactly",
                describe_difference(back.values, values),
                s.import_hook,
            )

    seeds = st.integers(min_value=0, max_value=2**32 - 1)
    count = for_examples(seeds, body, min(s.options.max_examples, 5), explicit=[0])
    return f"{count} packs of {dtypes} survived import -> export exactly"


def _glob_strategy(keys: list[str]) -> Any:
    from hypothesis import strategies as st

    variants: list[str] = ["*"]
    for key in keys:
        variants += [key, key[: max(1, len(key) // 2)] + "*", "*" + key[-2:]]
        variants.append("?" + key[1:])
        variants.append(f"[{key[0]}]" + key[1:])
    text = st.text(min_size=1, max_size=6).filter(lambda t: t.strip() and "\x00" not in t)
    return st.sampled_from(sorted(set(variants))) | text


def filters_select_keys(s: Session) -> str:
    from hypothesis import strategies as st

    full = s.plan()
    keys = full["included_keys"]
    if not keys:
        raise CheckSkipped("the plan has no float keys to filter")
    globs = _glob_strategy(keys)
    filters = st.fixed_dictionaries(
        {"include_globs": st.lists(globs, max_size=3), "exclude_globs": st.lists(globs, max_size=3)}
    )
    generic = not full["uses_custom_parameter_pack_hooks"]
    try:
        offsets = s.local_layout().offsets() if generic else None
    except (CheckSkipped, CheckFailed):
        offsets = None  # packs.layout_hash_independent reports why
    model_id = s.new_model() if generic else ""
    whole = s.export(model_id) if generic else None

    def body(f: dict) -> None:
        wanted = [k for k in keys if selects(k, f["include_globs"], f["exclude_globs"])]
        plan = s.plan(f)
        hook = "the worker's filter handling (docs/protocol.md §2, Filter)"
        if plan["included_keys"] != wanted:
            raise CheckFailed(
                f"included_keys {describe(wanted)} for filter {f}",
                describe(plan["included_keys"]),
                hook,
            )
        if sorted(plan["excluded_float_keys"]) != sorted(set(keys) - set(wanted)):
            raise CheckFailed(
                f"excluded_float_keys {describe(sorted(set(keys) - set(wanted)))} for filter {f}",
                describe(plan["excluded_float_keys"]),
                hook,
            )
        if sorted(plan["ignored_non_float_keys"]) != sorted(full["ignored_non_float_keys"]):
            raise CheckFailed(
                "the same ignored_non_float_keys under any filter",
                describe(plan["ignored_non_float_keys"]),
                hook,
            )
        if not generic:
            return
        pack = s.export(model_id, state_dict_filter=f)
        if pack.parameter_count != plan["parameter_count"]:
            raise CheckFailed(
                f"a filtered pack of {plan['parameter_count']} values (the plan's) for filter {f}",
                f"{pack.parameter_count} values",
                s.export_hook,
            )
        if offsets is not None and whole is not None:
            import numpy as np

            parts = [whole.values[slice(*offsets[k])] for k in wanted]
            expected = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
            if not same_bits(pack.values, expected):
                raise CheckFailed(
                    f"the filtered pack to hold exactly the selected tensors for filter {f}",
                    describe_difference(pack.values, expected),
                    s.export_hook,
                )
        back = s.export(s.import_pack(pack.path, state_dict_filter=f), state_dict_filter=f)
        if not same_bits(back.values, pack.values):
            raise CheckFailed(
                f"a filtered pack to import and re-export bit-identically for filter {f}",
                describe_difference(back.values, pack.values),
                s.import_hook,
            )

    explicit = [
        dict(NO_FILTER, include_globs=[keys[0]]),
        dict(NO_FILTER, exclude_globs=[keys[-1]]),
        {"include_globs": ["*"], "exclude_globs": ["*"]},
    ]
    count = for_examples(filters, body, s.options.max_examples, explicit)
    extra = "; packs match the selected slices" if offsets is not None else ""
    return f"{count} filters select exactly the matching keys{extra}"


def manifest_valid(s: Session) -> str:
    model_id = s.new_model()
    path = s.path("manifest-pack")
    for schema in ("conformance-schema-one", "conformance-schema-two"):
        what = f"a pack whose manifest records model_schema_hash {schema!r}"
        params = {
            "model_id": model_id,
            "parameter_pack_path": str(path),
            "model_schema_hash": schema,
        }
        result = s.call("export_parameter_pack", params, expected=what, hook=s.export_hook)
        s.decode(
            "export_parameter_pack",
            result,
            what="export_parameter_pack to answer an ack object",
            hook=s.export_hook,
        )
        try:
            # The five fields, a plain values file inside the pack of 4 * count bytes.
            pack = packs.open_pack(path, in_memory=True)
        except PackError as exc:
            raise CheckFailed(what, str(exc), s.export_hook) from None
        manifest = pack.manifest
        if manifest.model_schema_hash != schema:
            raise CheckFailed(what, repr(manifest.model_schema_hash), s.export_hook)
        if not manifest.layout_hash:
            raise CheckFailed(f"{what} and a non-empty layout_hash", "''", s.export_hook)
        plan = s.plan()
        if not plan["uses_custom_parameter_pack_hooks"] and (
            manifest.layout_hash,
            manifest.parameter_count,
        ) != (plan["layout_hash"], plan["parameter_count"]):
            raise CheckFailed(
                f"manifest layout {plan['layout_hash']} with {plan['parameter_count']} values",
                f"{manifest.layout_hash} with {manifest.parameter_count} values",
                s.export_hook,
            )
    return "manifest fields valid; re-export into the same directory replaced it"


__all__ = [
    "filters_select_keys",
    "import_exact",
    "layout_hash_independent",
    "layout_stable",
    "manifest_valid",
    "plan_shape",
    "roundtrip_bit_identical",
]
