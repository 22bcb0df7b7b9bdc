"""Protocol shape checks: what the hooks answer decodes as the Rust coordinator decodes it."""

from __future__ import annotations

from fakecoord import spec

from .errors import CheckFailed, CheckSkipped
from .session import Session

CAPABILITY_HOOKS = "runtime_device() / capability_probe()"


def hello(s: Session) -> str:
    hello = s.hello()
    return (
        f"protocol {hello['protocol_version']}, workload {hello['workload_name']!r}, "
        f"capabilities {hello['capabilities']}"
    )


def capability_probe(s: Session) -> str:
    what = "a capability_probe result {runtime_device: str, capability: CapabilityEstimate}"
    result = s.call("capability_probe", None, expected=what, hook=CAPABILITY_HOOKS)
    hooks = {"result.runtime_device": "runtime_device()", "result.capability": "capability_probe()"}
    obj = s.decode("capability_probe", result, what=what, hook=CAPABILITY_HOOKS, hooks=hooks)
    cap = obj["capability"]
    return (
        f"device {obj['runtime_device']!r}, backends {cap['preferred_backends']}, "
        f"window {cap['target_window_seconds']} s"
    )


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
    if probe.skip:
        raise CheckSkipped(probe.skip)
    if probe.error:
        raise CheckFailed(what + f" for {probe.source}", probe.error, "train_window()")
    metrics = s.decode("train_window", probe.metrics, what=what, hook="train_window()")
    return f"metrics {sorted(metrics)} for {probe.source}"


def evaluate_metrics(s: Session) -> str:
    model_id = s.new_model()
    seen = []
    custom = {"Custom": s.options.custom_split}
    units = [v.name for v in spec.EVAL_SPLIT.variants if v.payload is None]
    for split in (*units, custom):
        what = f'evaluate(split={split!r}) to answer {{"metrics": {{str: MetricValue}}}}'
        hook = "evaluate()"
        if split is custom:
            hook += " (if it serves only named custom splits, pass --custom-split NAME)"
        params = {"model_id": model_id, "split": split}
        metrics = s.request("evaluate", params, expected=what, hook=hook)
        seen.append(len(metrics))
    return f"valid metrics for Train, Validation, Test and Custom ({seen} keys)"


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


def apply_patch_outcome(s: Session) -> str:
    outcomes = []
    for patch in PATCHES:
        what = f"a PatchOutcome for patch {patch['patch_id']!r}"
        outcome = s.request("apply_patch", patch, expected=what, hook="apply_patch()")
        outcomes.append(outcome if isinstance(outcome, str) else "Rejected")
    return f"outcomes {outcomes} for Hot/Warm/Cold/empty patches"


__all__ = [
    "apply_patch_outcome",
    "capability_probe",
    "evaluate_metrics",
    "hello",
    "init_model",
    "train_window_metrics",
]
