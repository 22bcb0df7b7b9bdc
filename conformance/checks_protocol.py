"""Protocol checks: what the hooks answer decodes as the Rust coordinator decodes it,
and what the coordinator does with it (placement, overwritten metrics, patches)."""

from __future__ import annotations

import math

from fakecoord import spec

from .errors import CheckFailed, CheckSkipped, one_line
from .session import Session
from .training import COORDINATOR_METRICS


def hello(s: Session) -> str:
    hello = s.hello()
    return (
        f"protocol {hello['protocol_version']}, workload {hello['workload_name']!r}, "
        f"capabilities {hello['capabilities']}"
    )


def capability_probe(s: Session) -> str:
    obj = s.capability()
    cap = obj["capability"]
    override = s.device_override()
    if override is not None:
        s.warn(override)
    return (
        f"device {obj['runtime_device']!r}, backends {cap['preferred_backends']}, "
        f"window {cap['target_window_seconds']} s"
    )


def capability_placement(s: Session) -> str:
    cap = s.capability()["capability"]
    rate, window = cap["work_units_per_second"], cap["target_window_seconds"]
    # crates/burn_p2p/src/training/planning.rs, with our own window as the experiment's estimate.
    budget = math.floor(max(rate, 0.0) * max(window, 1))
    if budget < 1:
        raise CheckFailed(
            "a capability the coordinator can place: floor(max(work_units_per_second, 0) * "
            "max(target_window_seconds, 1)) >= 1 work unit (below it: 'training placement "
            "rejected', the peer never gets work)",
            f"{rate!r} work units/s * {max(window, 1)} s = {budget} work units",
            "capability_probe(): report your measured throughput in work units per second",
        )
    return f"a window budget of {budget} work units ({rate:g} work units/s * {max(window, 1)} s)"


def init_model(s: Session) -> str:
    first, second = s.new_model(), s.new_model()
    if first == second:
        raise CheckFailed(
            "two init_model calls to return two different handles",
            f"{first!r} twice",
            "the worker (model handles)",
        )
    return f"handles {first!r} and {second!r}"


def train_window_metrics(s: Session) -> str:
    probe = s.train_probe()
    what = 'train_window to answer {"metrics": {str: MetricValue}}'
    if probe.skip and probe.error:  # it raised on refs it cannot read
        raise CheckSkipped(probe.skip)
    if probe.error:
        raise CheckFailed(what + f" for {probe.source}", probe.error, "train_window()")
    metrics = s.decode("train_window", probe.metrics, what=what, hook="train_window()")
    replaced = [key for key in COORDINATOR_METRICS if key in metrics]
    if replaced:
        s.warn(
            f"train_window reports {replaced}: the coordinator sets these itself on every "
            "window (batch_count always), replacing your values; use other names"
        )
    zero = " (0 training steps: see semantics.train_window_updates_model)" if probe.skip else ""
    return f"metrics {sorted(metrics)} for {probe.source}{zero}"


def portable_results(s: Session) -> str:
    """Hook results this project's worker repairs but the protocol does not allow.

    The wire shows only what the hosting worker made of a result; the layout
    probe (the suite's own process) sees what the hooks returned.  The
    coordinator's bundled worker (the default deployment) sends
    ``workload_name`` as it is (the node decodes a String) and calls
    ``.items()`` on ``train_window``'s result.
    """
    result = s.probe()
    raw = result.raw
    if not raw and result.setup_failed:
        raise CheckSkipped(f"cannot build the workload outside the worker ({result.error})")
    seen = []
    name = raw.get("workload_name")
    if name is not None:
        if name.get("type") != "str":
            raise CheckFailed(
                "workload_name to be a str (hello.workload_name is a String in the protocol)",
                f"{name.get('type')} {name.get('repr')}: this worker repairs it with the class "
                "name, the coordinator's bundled worker sends it as it is and the node refuses "
                "the hello",
                "workload_name: a string attribute (or none: every worker then uses the class name)",
            )
        seen.append("workload_name is a str")
    train = raw.get("train_window") or {}
    if "dict" in train:
        if not train["dict"]:
            raise CheckFailed(
                "train_window to return a metrics dict (protocol §4: Metrics)",
                f"{train.get('type')}: this worker answers {{}} for None, the coordinator's "
                "bundled worker fails the window (it calls .items() on the result)",
                "train_window(): return a dict of metrics (at least {'steps': n})",
            )
        seen.append("train_window returns a dict")
    elif "raised" in train:
        seen.append(f"train_window not judged (it raised {one_line(train['raised'], 120)})")
    if not seen:
        raise CheckSkipped("the layout probe saw no hook result to judge")
    return "; ".join(seen) + " (as the hooks return them, outside any worker)"


def evaluate_metrics(s: Session) -> str:
    model_id = s.new_model()
    seen = []
    custom = {"Custom": s.options.custom_split}
    units = [v.name for v in spec.EVAL_SPLIT.variants if v.payload is None]
    for split in (*units, custom):
        what = f'evaluate(split={split!r}) to answer {{"metrics": {{str: MetricValue}}}}'
        hook = "evaluate()"
        if split is custom:
            hook += (
                " (serve any custom split name, e.g. by scoring unknown names on a default "
                f"split, or pass {s.options.flag('custom-split')} NAME with a name it serves)"
            )
        params = {"model_id": model_id, "split": split}
        seen.append(s.request("evaluate", params, expected=what, hook=hook))
    if all(metrics == seen[0] for metrics in seen) and any(
        isinstance(v, float) for v in seen[0].values()
    ):
        s.warn(
            "evaluate answered identical metrics for Train, Validation, Test and Custom: it "
            "seems to ignore its split (every split is then scored on the same data)"
        )
    return f"valid metrics for Train, Validation, Test and Custom ({[len(m) for m in seen]} keys)"


PATCHES = [
    {
        "patch_id": "conformance-hot-learning-rate",
        "class": "Hot",
        "summary": "lower the learning rate",
        "values": {"learning_rate": 0.001},
        "required_client_capabilities": [],
    },
    {
        "patch_id": "conformance-warm-mixed",
        "class": "Warm",
        "summary": "every PatchValue type",
        "values": {
            "batch_size": 32,
            "use_amp": False,
            "schedule": "cosine",
            "tags": ["conformance", "warm"],
            "warmup_fraction": 0.05,
        },
        "required_client_capabilities": ["cuda"],
    },
    {
        "patch_id": "conformance-cold-architecture",
        "class": "Cold",
        "summary": "a change that needs a restart",
        "values": {"architecture": "wider"},
        "required_client_capabilities": [],
    },
    {
        "patch_id": "conformance-empty",
        "class": "Hot",
        "summary": "no values",
        "values": {},
        "required_client_capabilities": [],
    },
]


NO_PATCH_HOOK = "does not support runtime patches"
"""The worker's rejection when the workload has no apply_patch hook (docs/protocol.md §2)."""


def apply_patch_outcome(s: Session) -> str:
    outcomes = []
    rejections = []
    for patch in PATCHES:
        what = f"a PatchOutcome for patch {patch['patch_id']!r}"
        outcome = s.request("apply_patch", patch, expected=what, hook="apply_patch()")
        if isinstance(outcome, str):
            outcomes.append(outcome)
        else:
            reason = one_line(outcome["Rejected"], 60)
            outcomes.append(f"Rejected: {reason}")
            if patch["values"]:
                rejections.append(f"{patch['class']} {sorted(patch['values'])}: {reason}")
    realistic = sum(1 for p in PATCHES if p["values"])
    no_hook = all(NO_PATCH_HOOK in r for r in rejections)
    if len(rejections) == realistic and not no_hook:
        hint = "accept the keys and value types your deployment sends"
        if any("float" in r.lower() for r in rejections):
            hint = 'PatchValues arrive untagged: a learning rate is 0.001, never {"Float": 0.001}'
        s.warn(f"apply_patch rejected every realistic patch ({hint}): " + "; ".join(rejections))
    return f"outcomes {outcomes} for Hot/Warm/Cold/empty patches"


def shutdown_after_hooks(s: Session) -> str:
    import subprocess

    client = s.client()
    ran = []
    model_id = s.new_model()
    ran.append("init_model")
    ok, _ = s.attempt("evaluate", {"model_id": model_id, "split": "Validation"},
                      expected="evaluate to answer", hook="evaluate()")  # fmt: skip
    if ok:
        ran.append("evaluate")
    try:
        batches, _ = s.training_batches(2)
    except CheckSkipped:
        batches = None
    if batches is not None:
        ok, _ = s.attempt("train_window", {"model_id": model_id, "batches": batches},
                          expected="train_window to answer", hook="train_window()")  # fmt: skip
        if ok:
            ran.append("train_window")
    expected = (
        f"the worker to exit with status 0 within {s.options.exit_timeout:g} s of "
        "acknowledging shutdown, after every hook this run called"
    )
    hook = (
        "the hooks that ran (" + ", ".join(ran) + " and earlier checks'): a non-daemon thread "
        "(data loader, logger) or a blocking atexit handler keeps the process alive; make "
        "threads daemons or stop them"
    )
    s.request("shutdown", None, expected="shutdown to be acknowledged", hook="the worker")
    try:
        status: int | None = client.process.wait(s.options.exit_timeout)
    except subprocess.TimeoutExpired:
        status = None
    s.drop_client()
    if status is None:
        raise CheckFailed(expected, f"still running {s.options.exit_timeout:g} s later", hook)
    if status != 0:
        raise CheckFailed(expected, f"exit status {status}", hook)
    return f"exit status 0 after shutdown, once {', '.join(ran)} (and every earlier check) ran"


__all__ = [
    "apply_patch_outcome",
    "capability_placement",
    "capability_probe",
    "evaluate_metrics",
    "hello",
    "init_model",
    "shutdown_after_hooks",
    "train_window_metrics",
]
