"""Flow checks: what the network does across calls, made as the network makes them.

Single-call checks see one hook at a time; a node runs *flows*: rounds that
follow each other with the inner optimizer state carried between them,
handles made by one call and trained by the next, merges of one candidate or
of candidates that weigh nothing, root EMA under the deployment's policy,
evaluation by a peer that never trained, packs and artifacts moved between
processes.  Every call goes through :mod:`conformance.network_calls` (the
network's call sequence, with the workload's own device); the docstring of
each check names what upstream it mirrors.
"""

from __future__ import annotations

from typing import Any

from fakecoord import packs

from .errors import CheckFailed, CheckSkipped, NetworkRefused, one_line
from .network_calls import MERGE_POLICIES, NetworkPeer, diloco_round
from .options import candidate
from .session import Session
from .session_flows import network_peer, second_workers
from .values import (
    count_outside,
    describe_difference,
    first_outside,
    same_bits,
    tolerance,
    within,
)

INNER = "run_inner_loop()"
TRAIN = "train_window()"
MERGE = "merge_candidate_models()"
EMA = "apply_single_root_ema()"
EVALUATE = "evaluate()"
FIXED_SPLIT = "Validation"
"""The split the functional comparisons evaluate (a fixed set of examples)."""
WINDOWS_ON_ONE_HANDLE = 12


def _pack_of(s: Session, peer: NetworkPeer, model_id: str, hook: str) -> packs.Pack:
    return s.read(peer.export_pack(model_id), hook)


def _new_base(s: Session, base: packs.Pack, local: packs.Pack) -> packs.Pack:
    """The next base of a one-peer round under Fp32, Mean, SGD lr 1 (docs/protocol.md §6):
    ``base - 1.0 * (base - local)`` in float32."""
    import numpy as np

    gradient = (base.values - local.values).astype(np.float32)
    values = (base.values - np.float32(1.0) * gradient).astype(np.float32)
    path = packs.write_pack(
        s.path("next-base"),
        values,
        layout_hash=base.layout_hash,
        model_schema_hash=base.manifest.model_schema_hash,
    )
    return packs.open_pack(path, in_memory=True)


def _needs_inner_loop(s: Session) -> None:
    if "diloco_checkpoint_job" not in s.capabilities():
        raise CheckSkipped(
            "the worker does not advertise diloco_checkpoint_job (no run_inner_loop hook)"
        )


# -- DiLoCo rounds with the inner state carried --------------------------------


def _round(
    s: Session, peer: NetworkPeer, base: packs.Pack, batches: list, state: Any, number: int
) -> tuple[str, Any]:
    """One local round (network_calls.diloco_round); the node's refusals are FAILs."""
    try:
        model_id, inner = diloco_round(peer, base, batches, 2, state)
    except NetworkRefused as exc:
        given = "no state (a first round)" if state is None else "the state it returned"
        raise CheckFailed(
            f"round {number}'s inner_optimizer_state_path to name a readable regular file "
            "(the node reads it with fs::read right after the call, and fails the round "
            "otherwise)",
            f"{exc} (the job carried {given})",
            INNER + ": write the state to a file of your choosing and return its path, "
            "or return null when you keep none",
        ) from None
    s.track(model_id)
    return model_id, inner


def diloco_rounds(s: Session) -> str:
    """Two local rounds of one peer (diloco/network.rs: import_parameter_pack of the
    current base, run_inner_steps with the state saved last round; lib.rs
    run_worker_inner_loop: no state path on round 1, a fresh copy afterwards, the
    returned path read with fs::read right after the call)."""
    _needs_inner_loop(s)
    batches, source = s.training_batches(2)
    peer = network_peer(
        s,
    )
    base = _pack_of(s, peer, s.track(peer.init_model()), s.export_hook)
    rounds = []
    locals_ = []
    state = None
    round_two_base = base
    for number in (1, 2):
        if number == 2:
            round_two_base = base
        model_id, inner = _round(s, peer, base, batches, state, number)
        local = s.read(inner.local_pack, INNER)
        locals_.append(local)
        if (local.layout_hash, local.parameter_count) != (base.layout_hash, base.parameter_count):
            raise CheckFailed(
                f"round {number}'s local pack in the base's layout ({base.parameter_count} values)",
                f"layout {local.layout_hash} with {local.parameter_count} values",
                INNER,
            )
        rounds.append(inner)
        state = inner.state
        base = _new_base(s, base, local)
    first, second = rounds
    if first.state is None and second.state is None:
        return (
            f"two rounds on {source}; no inner optimizer state returned (the network then "
            "restarts the inner optimizer every round)"
        )
    if first.state is not None and second.state is not None:
        if first.state.data == second.state.data:
            s.warn(
                "run_inner_loop returned an inner optimizer state that a round of training "
                "left byte-identical: it says it keeps a state but carries nothing between "
                "rounds"
            )
    if first.state is not None:
        # Round 2 again without the state: a state given back that changes nothing is
        # saved and never loaded.
        _, fresh = _round(s, peer, round_two_base, batches, None, 2)
        without = s.read(fresh.local_pack, INNER)
        if same_bits(without.values, locals_[1].values):
            s.warn(
                "the inner optimizer state run_inner_loop returned changes nothing: round 2 "
                "with it gives bit-identical parameters to round 2 without it (saved, never "
                "loaded from job['inner_optimizer_state_path'])"
            )
    kept = [str(len(r.state.data)) for r in rounds if r.state is not None]
    return (
        f"two rounds on {source}; inner state carried as the network carries it "
        f"(null, then a fresh copy; {' and '.join(kept)} bytes returned)"
    )


# -- every kind of handle the network trains -------------------------------------


def train_handles(s: Session) -> str:
    """train_window on an init_model handle, a merge result and an imported base
    (lib.rs P2pWorkload::train_window on whatever model the node holds), each with a
    single-ref window, then a dozen windows on one handle."""
    import numpy as np

    batches, source = s.training_batches(2)
    peer = network_peer(
        s,
    )
    initial = s.track(peer.init_model())
    other = s.track(peer.init_model())
    merged = peer.merge(initial, [candidate(initial, 1.0), candidate(other, 1.0)], "WeightedMean")
    if merged is None:
        raise CheckSkipped("merge_candidate_models answered no merge for two candidates")
    s.track(merged)
    imported = s.track(peer.import_pack(s.template()))
    kinds = {
        "an init_model handle": initial,
        "a merge result": merged,
        "an imported base": imported,
    }
    for kind, model_id in kinds.items():
        before = _pack_of(s, peer, model_id, s.export_hook)
        try:
            peer.train_window(model_id, batches[:1])
        except CheckFailed as exc:
            raise CheckFailed(
                f"train_window on {kind} with a window of one BatchRef to answer",
                exc.got,
                TRAIN + ": train any handle the node holds, on any number of refs >= 1",
                details=exc.details,
            ) from None
        after = _pack_of(s, peer, model_id, s.export_hook)
        if same_bits(after.values, before.values):
            raise CheckFailed(
                f"train_window on {kind} ({source}, one ref) to change its parameters",
                "every parameter unchanged",
                TRAIN,
            )
    for window in range(1, WINDOWS_ON_ONE_HANDLE + 1):
        try:
            peer.train_window(imported, batches[(window - 1) % len(batches) :][:1])
        except CheckFailed as exc:
            raise CheckFailed(
                f"{WINDOWS_ON_ONE_HANDLE} train_window calls on one handle to answer",
                f"window {window}: {exc.got}",
                TRAIN + ": a node trains one handle window after window",
                details=exc.details,
            ) from None
    final = _pack_of(s, peer, imported, s.export_hook)
    if not bool(np.isfinite(final.values).all()):
        raise CheckFailed(
            f"finite parameters after {WINDOWS_ON_ONE_HANDLE} windows on one handle",
            "NaN or infinity",
            TRAIN,
        )
    return (
        f"one-ref windows on {', '.join(kinds)} changed each; {WINDOWS_ON_ONE_HANDLE} "
        f"windows on one handle ({source})"
    )


# -- merge edge cases and root EMA under every policy ----------------------------


def merge_edge_cases(s: Session) -> str:
    """A single candidate, and candidates whose weights sum to 0 (burn_p2p_engine
    merge_weighted_mean_modules: ``total_weight <= f64::EPSILON`` gives the base)."""
    peer = network_peer(
        s,
    )
    base, base_pack = s.crafted(501)
    a, pa = s.crafted(502)
    b, _ = s.crafted(503)
    merged = peer.merge(base, [candidate(a, 2.0)], "WeightedMean")
    if merged is None:
        raise CheckFailed(
            "a merge of a single candidate to give that candidate (the reference merge's "
            "weighted mean of one)",
            "model_id null (no merge)",
            MERGE,
        )
    got = s.same_layout(
        s.read(peer.export_pack(s.track(merged)), s.export_hook), MERGE, "the merge result"
    )
    slack = tolerance(pa.values, s.low_precision())
    if not within(got.values, pa.values, slack):
        raise CheckFailed(
            "a merge of a single candidate (weight 2) to give that candidate",
            describe_difference(got.values, pa.values, slack),
            MERGE,
        )
    zero_cases = (
        ("sample weights 0 and 0", [candidate(a, 0.0), candidate(b, 0.0)], "WeightedMean"),
        (
            "quality weights 0 under QualityWeightedEma",
            [candidate(a, 1.0, 0.0), candidate(b, 2.0, 0.0)],
            "QualityWeightedEma",
        ),
    )
    answers = []
    for what, candidates, policy in zero_cases:
        try:
            merged = peer.merge(base, candidates, policy)
        except CheckFailed as exc:
            raise CheckFailed(
                f"a merge of candidates whose weights sum to 0 ({what}) to give the base or "
                "no merge (the reference merge returns the base)",
                exc.got,
                MERGE + ": guard the division by the total weight",
                details=exc.details,
            ) from None
        if merged is None:
            answers.append(f"{what}: no merge")
            continue
        got = s.same_layout(
            s.read(peer.export_pack(s.track(merged)), s.export_hook), MERGE, "the merge result"
        )
        slack = tolerance(base_pack.values, s.low_precision())
        if not within(got.values, base_pack.values, slack):
            raise CheckFailed(
                f"a merge of candidates whose weights sum to 0 ({what}) to give the base "
                "(as the reference merge) or no merge",
                describe_difference(got.values, base_pack.values, slack),
                MERGE + ": guard the division by the total weight",
            )
        answers.append(f"{what}: the base")
    return "a single candidate merges into itself; " + "; ".join(answers)


def _policy_name(policy: Any) -> str:
    return policy if isinstance(policy, str) else f"Custom({policy['Custom']!r})"


def root_ema_policies(s: Session) -> str:
    """apply_single_root_ema with every MergePolicy (the coordinator runs it after every
    merge with the deployment's policy; lib.rs apply_single_root_ema)."""
    import numpy as np

    peer = network_peer(
        s,
    )
    base, pb = s.crafted(601)
    _, pm = s.crafted(602)
    slack = tolerance(np.maximum(np.abs(pb.values), np.abs(pm.values)), s.low_precision())
    for policy in MERGE_POLICIES:
        name = _policy_name(policy)
        merged = s.import_pack(pm.path)
        try:
            returned = peer.root_ema(base, merged, policy)
        except CheckFailed as exc:
            raise CheckFailed(
                f"apply_single_root_ema with policy {name} to answer the merged handle",
                exc.got,
                EMA + ": accept every MergePolicy the coordinator may be deployed with",
                details=exc.details,
            ) from None
        if returned != merged:
            raise CheckFailed(
                f"apply_single_root_ema ({name}) to answer the merged handle {merged!r}",
                repr(returned),
                "the worker",
            )
        got = s.same_layout(
            s.read(peer.export_pack(merged), s.export_hook), EMA, f"the EMA result ({name})"
        )
        if not bool(np.isfinite(got.values).all()):
            raise CheckFailed(f"finite values after root EMA ({name})", "NaN or infinity", EMA)
        if count_outside(got.values, pb.values, pm.values, slack):
            raise CheckFailed(
                f"root EMA ({name}) to land between the base and the merged model",
                first_outside(got.values, pb.values, pm.values, slack),
                EMA,
            )
    return f"root EMA answers between base and merged under {len(MERGE_POLICIES)} policies"


# -- fresh workers and exchange between processes ---------------------------------


def _trained_or_crafted(s: Session, peer: NetworkPeer) -> tuple[str, str]:
    """A model with values no init_model gives: trained when the run can train, else crafted."""
    probe = s.train_probe()
    if not probe.skip and not probe.error:
        model_id = s.track(peer.init_model())
        batches = s.options.batch_refs or probe.batches
        peer.train_window(model_id, batches)
        return model_id, "a model trained on " + probe.source
    model_id, _ = s.crafted(701)
    return model_id, "a model of crafted values"


def _metrics_match(a: dict, b: dict) -> str | None:
    """Why two evaluations differ (floats within 1e-5 relative), or None."""
    if set(a) != set(b):
        return f"metric names {sorted(a)} vs {sorted(b)}"
    for key in sorted(a):
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, (int, float)):
            if not abs(x - y) <= 1e-5 * max(abs(x), abs(y), 1e-12):
                return f"{key} {x!r} vs {y!r}"
        elif x != y and not isinstance(x, str):
            return f"{key} {x!r} vs {y!r}"
    return None


def evaluate_fresh_worker(s: Session) -> str:
    """A validator or a late-joining peer: a new worker (hello, capability_probe, as
    lib.rs new_with_data_pipeline) imports a base and evaluates without ever training."""
    from fakecoord import spec

    peer = network_peer(
        s,
    )
    model_id, what = _trained_or_crafted(s, peer)
    pack = s.read(peer.export_pack(model_id), s.export_hook)
    _, client = second_workers(s)
    fresh = network_peer(s, client, name="a fresh worker that never trained")
    fresh.call("hello", None)
    fresh.call("capability_probe", None)
    imported = fresh.import_pack(pack)
    splits = [v.name for v in spec.EVAL_SPLIT.variants if v.payload is None]
    for split in splits:
        try:
            fresh.evaluate(imported, split)
        except CheckFailed as exc:
            raise CheckFailed(
                f"evaluate({split}) in a fresh worker that never trained to answer",
                exc.got,
                EVALUATE + ": build whatever evaluation needs (loss function, data) in the "
                "factory or in evaluate, not in train_window",
                details=exc.details,
            ) from None
    return f"a fresh worker imported {what} and evaluated {', '.join(splits)}"


def exchange_between_processes(s: Session) -> str:
    """Packs and artifacts written by one worker process and read by another after the
    writer exited, with different PYTHONHASHSEED (peers are separate processes on
    separate machines; DiLoCoWorkload::export/import_parameter_pack,
    materialize/load_model_artifact); compared by what the model computes."""
    writer_client, reader_client = second_workers(s)
    writer = network_peer(s, writer_client, name="the writer (PYTHONHASHSEED=1)")
    writer.call("hello", None)
    source = writer.init_model()
    probe = s.train_probe()
    if not probe.skip and not probe.error:
        writer.train_window(source, s.options.batch_refs or probe.batches)
        what = "a model trained on " + probe.source
    else:
        _, crafted = s.crafted(801)
        source = writer.import_pack(crafted)
        what = "a model of crafted values"
    expected = writer.evaluate(source, FIXED_SPLIT)
    pack = s.read(writer.export_pack(source), s.export_hook)
    artifact = writer.materialize(source)
    keep = s.path("exchanged-artifact.safetensors")
    keep.write_bytes(artifact.read_bytes())
    writer_client.shutdown()
    reader = network_peer(s, reader_client, name="the reader (PYTHONHASHSEED=2)")
    reader.call("hello", None)
    imported = reader.import_pack(pack)
    again = s.read(reader.export_pack(imported), s.export_hook)
    if not same_bits(again.values, pack.values) or again.layout_hash != pack.layout_hash:
        raise CheckFailed(
            "a pack imported in another process (another PYTHONHASHSEED) to export the same "
            "values in the same layout",
            describe_difference(again.values, pack.values)
            if again.values.shape == pack.values.shape
            else f"{again.parameter_count} values in layout {again.layout_hash}",
            s.import_hook + " / " + s.export_hook + ": no per-process order (set or hash order)",
        )
    got = reader.evaluate(imported, FIXED_SPLIT)
    differs = _metrics_match(expected, got)
    if differs:
        raise CheckFailed(
            f"evaluate({FIXED_SPLIT}) of the imported pack in another process to give the "
            "writer's metrics",
            one_line(differs),
            s.import_hook + ": restore everything evaluation uses (buffers, tensor order)",
        )
    loaded = reader.init_model()
    reader.load_artifact(loaded, keep)
    got = reader.evaluate(loaded, FIXED_SPLIT)
    differs = _metrics_match(expected, got)
    if differs:
        raise CheckFailed(
            f"evaluate({FIXED_SPLIT}) of the loaded artifact in another process to give the "
            "writer's metrics",
            one_line(differs),
            "load_model_artifact_path() / materialize_model_artifact_path(): save and "
            "restore everything evaluation uses",
        )
    return (
        f"{what}: pack and artifact read by another process after the writer exited give "
        f"the same values and the same {FIXED_SPLIT} metrics"
    )


# -- state_dict_filter in inner-loop jobs and custom pack hooks ------------------


def filters_in_jobs(s: Session) -> str:
    """The revision's state_dict_filter in every pack call and inner-loop job (lib.rs
    run_worker_inner_loop passes ``state_dict_filter``; export/import_parameter_pack
    use it): packs hold exactly what the plan under that filter says, custom pack
    hooks included."""
    full = s.plan()
    keys = full["included_keys"]
    if len(keys) < 2:
        raise CheckSkipped("the plan has fewer than two float keys to filter")
    f = {"include_globs": [], "exclude_globs": [keys[0]]}
    peer = network_peer(s, state_dict_filter=f)
    plan = peer.plan()
    count = plan["parameter_count"]
    hook = s.export_hook
    model_id = s.track(peer.init_model())
    exported = s.read(peer.export_pack(model_id), hook)
    if exported.parameter_count != count:
        raise CheckFailed(
            f"a pack exported under filter {f} to hold the plan's {count} values",
            f"{exported.parameter_count} values",
            hook + ": honour state_dict_filter",
        )
    checked = ["export"]
    reimported = s.track(peer.import_pack(exported))
    again = s.read(peer.export_pack(reimported), hook)
    if not same_bits(again.values, exported.values):
        raise CheckFailed(
            f"a pack imported and exported again under filter {f} to hold the same values",
            describe_difference(again.values, exported.values)
            if again.values.shape == exported.values.shape
            else f"{again.parameter_count} values instead of {exported.parameter_count}",
            s.import_hook + ": honour state_dict_filter on import",
        )
    checked.append("import")
    if "diloco_checkpoint_job" in s.capabilities():
        try:
            batches, _ = s.training_batches(2)
        except CheckSkipped:
            batches = None
        if batches is not None:
            _, inner = _round(s, peer, exported, batches, None, 1)
            local = s.read(inner.local_pack, INNER)
            if local.parameter_count != count or local.layout_hash != exported.layout_hash:
                raise CheckFailed(
                    f"run_inner_loop under filter {f} to write a local pack of the plan's "
                    f"{count} values in the filtered layout",
                    f"{local.parameter_count} values in layout {local.layout_hash}",
                    INNER + " / " + hook + ": honour job['state_dict_filter']",
                )
            checked.append("inner-loop output pack")
    return (
        f"filter excluding {keys[0]!r}: {', '.join(checked)} hold exactly the plan's {count} values"
    )


__all__ = [
    "diloco_rounds",
    "evaluate_fresh_worker",
    "exchange_between_processes",
    "filters_in_jobs",
    "merge_edge_cases",
    "root_ema_policies",
    "train_handles",
]
