"""Training and evaluation: the parameters move when the workload says it trained,
and only then; evaluation leaves them alone; the DiLoCo inner loop does what it reports.

Zero training steps on the run's batches (the workload cannot read them, and
says so in its metrics or by raising) is a SKIP with the hint to pass
``--batches``: never a PASS "trained", never a FAIL.
"""

from __future__ import annotations

from typing import Any

from .errors import CheckFailed, CheckSkipped
from .options import generated_batches
from .session import Session
from .training import describe_work, reported_work
from .values import describe_difference, same_bits

TRAIN = "train_window()"
EVALUATE = "evaluate()"
INNER = "run_inner_loop()"


def train_window_updates_model(s: Session) -> str:
    import numpy as np

    probe = s.train_probe()
    if probe.skip:
        raise CheckSkipped(probe.skip)
    what = f"train_window on {probe.source} to answer its metrics"
    if probe.error:
        raise CheckFailed(what, probe.error, TRAIN, details=probe.details)
    changed = probe.changed
    if changed is None:
        raise CheckFailed(
            "the model exported before and after train_window",
            probe.pack_error or "no pack",
            s.export_hook,
        )
    work = probe.work
    assert probe.after is not None
    if changed == 0:
        if work:
            raise CheckFailed(
                f"train_window on {probe.source} to change the parameters it reports "
                f"training ({describe_work(work)})",
                "every parameter unchanged (a silent no-op)",
                TRAIN + ": train the model behind the handle, in place",
            )
        raise CheckFailed(
            f"train_window on {probe.source} to change the parameters (or to report "
            "steps=0 when it could not train, which makes this a SKIP)",
            "every parameter unchanged, with no work reported (a silent no-op)",
            TRAIN + ": train the model behind the handle in place, or raise on refs it cannot read",
        )
    if work and all(v == 0 for v in work.values()):
        raise CheckFailed(
            f"train_window's reported work to match what it did on {probe.source}",
            f"{describe_work(work)} while {changed} of {probe.after.parameter_count} values changed",
            TRAIN + ": report the steps and examples it really trained on",
        )
    if not bool(np.isfinite(probe.after.values).all()):
        raise CheckFailed(
            f"finite parameters after train_window on {probe.source}",
            "NaN or infinity in the trained model",
            TRAIN,
        )
    reported = f"; reported {describe_work(work)}" if work else ""
    return (
        f"{changed} of {probe.after.parameter_count} values changed by training on "
        f"{probe.source}{reported}"
    )


def evaluate_preserves_model(s: Session) -> str:
    from fakecoord import spec

    model_id = s.new_model()
    before = s.export(model_id)
    splits = [v.name for v in spec.EVAL_SPLIT.variants if v.payload is None]
    served = []
    for split in (*splits, {"Custom": s.options.custom_split}):
        params = {"model_id": model_id, "split": split}
        ok, _ = s.attempt("evaluate", params, expected="evaluate to answer", hook=EVALUATE)
        if ok:
            served.append(split if isinstance(split, str) else "Custom")
    if not served:
        raise CheckSkipped("evaluate refused every split (protocol.evaluate_metrics says why)")
    after = s.export(model_id)
    if not same_bits(after.values, before.values):
        raise CheckFailed(
            f"evaluate ({', '.join(served)}) to leave the model's parameters unchanged",
            describe_difference(after.values, before.values),
            EVALUATE + ": no optimizer steps, no running-statistics updates (model.eval(), "
            "torch.no_grad())",
        )
    return f"parameters bit-identical after evaluating {', '.join(served)}"


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
    # Without require_exact_steps first: zero steps then shows as a count, not a refusal.
    for exact in (False, True):
        model_id = s.new_model()
        before = s.export(model_id) if not exact else None
        result = _run_inner(s, _inner_job(s, model_id, batches, exact))
        steps = result["steps_completed"]
        if before is not None and steps == 0:
            after = s.export(model_id)
            if same_bits(after.values, before.values):
                raise CheckSkipped(
                    f"run_inner_loop did 0 steps on {source} and left the model unchanged; "
                    f"pass {s.options.flag('batches')} FILE with refs it can read"
                )
            raise CheckFailed(
                "run_inner_loop's steps_completed to match what it did",
                "steps_completed 0 while the parameters changed",
                INNER,
            )
        if steps != 2:
            raise CheckFailed(f"steps_completed 2 (require_exact_steps {exact})", str(steps), INNER)
    return f"2 steps requested, 2 reported, with and without require_exact_steps ({source})"


def _other_batches(s: Session, batches: list) -> list | None:
    """Different batches for the same number of steps (None when there is no other choice)."""
    if s.options.batches is None:
        return generated_batches(len(batches), seed=100)
    if len(batches) >= 2 and batches[::-1] != batches:
        return batches[::-1]
    return None


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
    _warn_if_batches_ignored(s, before, out.values, batches)
    changed = int((out.bits != before.bits).sum())
    return f"{changed} of {out.parameter_count} values changed; output pack valid ({source})"


def _warn_if_batches_ignored(s: Session, before: Any, result: Any, batches: list) -> None:
    """WARN when the same start and other batches give a bit-identical inner-loop result."""
    other = _other_batches(s, batches)
    if other is None:
        return
    model_id = s.import_pack(before.path)
    job = _inner_job(s, model_id, other, False)
    ok, answer = s.attempt("run_inner_loop", job, expected="run_inner_loop to answer", hook=INNER)
    if not ok:
        return
    again = s.read(s.root / job["output_parameter_pack_path"], INNER)
    steps = answer.get("steps_completed") if isinstance(answer, dict) else None
    if steps and same_bits(again.values, result):
        s.warn(
            "run_inner_loop gave a bit-identical result from the same start with other batches: "
            "it ignores job['batches'] (training on data of its own choosing)"
        )


__all__ = [
    "evaluate_preserves_model",
    "inner_loop_exact_steps",
    "inner_loop_updates_pack",
    "reported_work",
    "train_window_updates_model",
]
