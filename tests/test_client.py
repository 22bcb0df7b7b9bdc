"""fakecoord's client against the real worker and against fake workers that misbehave."""

from __future__ import annotations

import gc
import io
import json
import signal
import sys
from pathlib import Path

import pytest

from fakecoord import (
    ClientClosed,
    FakecoordError,
    InvalidParams,
    PlanRefused,
    ProtocolViolation,
    RemoteError,
    WorkerClient,
    WorkerExited,
    WorkerTimeout,
    handling,
    spec,
)

ROOT = Path(__file__).resolve().parent.parent
FAKE_WORKER = Path(__file__).resolve().parent / "fakeworkers" / "misbehave.py"

pytestmark = pytest.mark.timeout(60)

NO_FILTER = {"include_globs": [], "exclude_globs": []}
PATCH = {
    "patch_id": "p1",
    "class": "Hot",
    "summary": "lr",
    "values": {"lr": 0.1},
    "required_client_capabilities": [],
}


def batch_ref(*ids: str, **extra: object) -> dict:
    ref = {
        "kind": "cached_microshard_group",
        "shard_paths": [],
        "microshard_ids": list(ids),
        "ordinals": list(range(len(ids))),
        "bytes_len": 10,
    }
    ref.update(extra)
    return ref


def fake(mode: str = "ok", on: str | None = None, **config: object) -> WorkerClient:
    """A client on tests/fakeworkers/misbehave.py with short timeouts."""
    config = {"mode": mode, **({"on": on} if on else {}), **config}
    # Generous where the worker only has to start or exit (the box is shared
    # and loaded); the tests that wait out a grace period shorten it.
    kwargs = {"call_timeout": 30.0, "accept_timeout": 30.0}
    kwargs.update(config.pop("client", {}))  # type: ignore[arg-type]
    return WorkerClient.spawn(
        "fake:worker", config, worker_cmd=[sys.executable, str(FAKE_WORKER)], **kwargs
    )


@pytest.fixture(scope="module")
def tiny():
    with WorkerClient.spawn(
        "tests.workloads:make_tiny",
        {"hidden": 4},
        pythonpath=[ROOT],
        call_timeout=60.0,
        accept_timeout=60.0,  # torch imports slowly on a loaded machine
    ) as client:
        yield client


# ---------------------------------------------------------------------------
# The real worker: every typed method


def test_hello_and_capability_probe(tiny):
    hello = tiny.hello()
    assert hello["protocol_version"] == 2
    assert hello["workload_name"] == "tiny"
    assert "diloco_checkpoint_job" in hello["capabilities"]
    probe = tiny.capability_probe()
    assert probe["runtime_device"] == "python-torch-cpu"
    assert probe["capability"]["target_window_seconds"] == 1


def test_train_evaluate_and_patches(tiny):
    model = tiny.init_model("cpu")
    metrics = tiny.train_window(model, [batch_ref("a"), batch_ref("b")])
    assert metrics["steps"] == 2 and isinstance(metrics["loss"], float)
    assert tiny.evaluate(model, "Validation")["split"] == '"Validation"'
    assert tiny.evaluate(model, {"Custom": "holdout"})["split"] == '{"Custom": "holdout"}'
    assert tiny.apply_patch(PATCH) == "Applied"
    assert tiny.apply_patch({**PATCH, "class": "Cold"}) == "RequiresRestart"
    tiny.release_model(model)


def test_parameter_pack_plan(tiny):
    plan = tiny.parameter_pack_plan("cpu")
    assert plan["uses_custom_parameter_pack_hooks"] is False
    assert plan["layout_hash"].startswith("torch-layout-")
    assert "1.num_batches_tracked" in plan["ignored_non_float_keys"]
    only_first = tiny.parameter_pack_plan("cpu", {"include_globs": ["0.*"], "exclude_globs": []})
    assert only_first["included_keys"] == ["0.bias", "0.weight"]
    assert only_first["parameter_count"] == 4 * 4 + 4
    assert handling.plan_or_none(tiny, "cpu") == plan


def test_artifacts_and_packs_round_trip(tiny, tmp_path):
    source = tiny.init_model("cpu")
    tiny.train_window(source, [batch_ref("a")])
    artifact = tmp_path / "artifact.safetensors"
    tiny.materialize_model_artifact(source, artifact)
    assert artifact.stat().st_size > 0
    loaded = tiny.init_model("cpu")
    tiny.load_model_artifact(loaded, artifact)
    assert tiny.evaluate(loaded, "Test")["loss"] == tiny.evaluate(source, "Test")["loss"]

    manifest = handling.export_checked(tiny, source, tmp_path / "pack", "schema-1")
    assert manifest["model_schema_hash"] == "schema-1"
    imported = tiny.import_parameter_pack("cpu", tmp_path / "pack")
    assert imported not in (source, loaded)
    assert tiny.evaluate(imported, "Test")["loss"] == pytest.approx(
        tiny.evaluate(source, "Test")["loss"]
    )
    tiny.export_parameter_pack(source, tmp_path / "first", "schema-1", {"include_globs": ["0.*"]})
    partial = tiny.import_parameter_pack("cpu", tmp_path / "first", {"include_globs": ["0.*"]})
    for model in (source, loaded, imported, partial):
        tiny.release_model(model)


def test_run_inner_loop(tiny, tmp_path):
    model = tiny.init_model("cpu")
    job = {
        "model_id": model,
        "batches": [batch_ref("a")],
        "num_inner_steps": 2,
        "inner_optimizer_state_path": str(tmp_path / "opt.json"),
        "output_parameter_pack_path": str(tmp_path / "out"),
        "model_schema_hash": "schema-1",
        "require_exact_steps": True,
        "state_dict_filter": NO_FILTER,
    }
    result = tiny.run_inner_loop(job)
    assert result["steps_completed"] == 2
    assert result["metrics"]["steps"] == 2
    assert result["inner_optimizer_state_encoding"] == "json"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["parameter_count"] > 0


def test_merge_ema_and_reconcile(tiny):
    base, a, b = (tiny.init_model("cpu") for _ in range(3))
    candidates = [
        {"peer_id": p, "head_id": "h", "artifact_id": "x", "model_id": m,
         "sample_weight": 1.0, "quality_weight": 1.0}
        for p, m in (("p1", a), ("p2", b))
    ]  # fmt: skip
    merged = tiny.merge_candidate_models(base, candidates, "WeightedMean")
    assert isinstance(merged, str) and merged not in (base, a, b)
    assert tiny.merge_candidate_models(base, [], {"Custom": "none"}) is None
    assert tiny.apply_single_root_ema(base, merged, "Ema") == merged
    assert tiny.reconcile_canonical_model(a, merged, "Replace") == merged
    strategy = {"RootEma": {"canonical_weight": 0.25}}
    assert tiny.reconcile_canonical_model(a, b, strategy) == b
    for model in (base, a, b, merged):
        tiny.release_model(model)


def test_remote_errors_carry_the_worker_text(tiny):
    model = tiny.init_model("cpu")
    tiny.release_model(model)
    with pytest.raises(RemoteError) as info:
        tiny.train_window(model, [])
    assert info.value.method == "train_window"
    assert "unknown model id" in info.value.message and repr(model) in info.value.message
    assert str(info.value).startswith("train_window: ")
    # The stream stays in step after ok:false.
    assert tiny.hello()["workload_name"] == "tiny"


def test_handling_against_the_real_worker(tiny):
    model = tiny.init_model("cpu")
    refs = [batch_ref("a", "b", examples=3), batch_ref("c", payload={"examples": 4})]
    metrics = handling.train_window_metrics(tiny, model, refs)
    assert metrics["batch_count"] == 2 and metrics["microshard_count"] == 3
    assert metrics["examples_processed"] == 7 and "tokens_processed" not in metrics
    assert metrics["steps"] == 2

    failed = handling.evaluate_metrics(tiny, model, "Sideways")
    assert set(failed) == {"python_error"} and "params.split" in failed["python_error"]
    outcome = handling.apply_patch_outcome(tiny, {**PATCH, "class": "Lukewarm"})
    assert set(outcome) == {"Rejected"} and "params.class" in outcome["Rejected"]
    assert handling.apply_patch_outcome(tiny, PATCH) == "Applied"

    nothing = tiny.parameter_pack_plan("cpu", {"include_globs": [], "exclude_globs": ["*"]})
    with pytest.raises(PlanRefused, match="zero parameters"):
        handling.check_diloco_plan(nothing)
    handling.check_diloco_plan(tiny.parameter_pack_plan("cpu"))
    tiny.release_model(model)


def test_invalid_params_are_refused_before_sending(tiny):
    with pytest.raises(InvalidParams, match="evaluate: params cannot be sent"):
        tiny.call("evaluate", {"split": float("nan")})
    assert tiny.hello()["protocol_version"] == 2


# ---------------------------------------------------------------------------
# Transport: ids, shutdown, close


def test_ids_count_from_one_and_params_are_sent_verbatim():
    with fake("echo") as client:
        first = client.call("hello")
        assert first == {"id": 1, "method": "hello", "params": None}
        with pytest.raises(InvalidParams):
            client.call("x", {"bad": {1, 2}})
        assert client.call("x", {"a": [1]}) == {"id": 2, "method": "x", "params": {"a": [1]}}


def test_close_sends_shutdown_and_reaps():
    client = fake("ok")
    assert client.hello()["workload_name"] == "fake"
    client.close()
    assert client.process.returncode == 0  # exited by itself after shutdown
    client.close()  # idempotent
    with pytest.raises(ClientClosed, match="hello: the client is closed"):
        client.hello()


def test_shutdown_then_calls_are_refused():
    with fake("ok") as client:
        client.shutdown()
        assert client.returncode == 0
        with pytest.raises(ClientClosed, match="already sent shutdown"):
            client.hello()


def test_close_kills_a_worker_that_ignores_shutdown_and_sigterm():
    client = fake("stubborn", client={"exit_grace": 0.3})
    client.close()
    assert client.process.returncode == -signal.SIGKILL


def test_kill_and_garbage_collection_reap_the_worker():
    client = fake("ok")
    client.kill()
    assert client.process.returncode == -signal.SIGKILL
    with pytest.raises(ClientClosed, match="kill"):
        client.hello()
    client.close()

    client = fake("ok")
    process = client.process
    del client
    gc.collect()
    assert process.returncode is not None


# ---------------------------------------------------------------------------
# Misbehaving workers


def violation(client: WorkerClient, method: str, call, field: str) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        call(client)
    exc = info.value
    assert exc.method == method and exc.field == field
    assert str(exc).startswith(f"{method}: ") and field in str(exc)
    return exc


def test_wrong_response_id_breaks_the_client():
    with fake("wrong_id", on="init_model") as client:
        assert client.hello()["protocol_version"] == 2
        exc = violation(client, "init_model", lambda c: c.init_model(), "response.id")
        assert "expected 2" in str(exc) and "got 3" in str(exc)
        with pytest.raises(ClientClosed, match="earlier error"):
            client.hello()


def test_garbage_frame():
    with fake("raw_frame", on="hello", body="this is not json") as client:
        exc = violation(client, "hello", lambda c: c.hello(), "response")
        assert "not standard JSON" in str(exc)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"id": 1, "ok": "yes", "result": {}}', "response.ok"),
        ('{"id": -1, "ok": true}', "response.id"),
        ('{"id": 1, "ok": false}', "response.error"),
        ("[1]", "response"),
    ],
)
def test_malformed_envelopes(body, field):
    with fake("raw_frame", on="hello", body=body) as client:
        violation(client, "hello", lambda c: c.hello(), field)


def test_nan_in_a_result_names_the_field():
    with fake("raw_result", on="train_window", result_json='{"metrics": {"loss": NaN}}') as c:
        exc = violation(
            c, "train_window", lambda c: c.train_window("m1", []), "result.metrics.loss"
        )
        assert "NaN" in str(exc)


def test_null_ack_is_refused_but_the_stream_stays_usable():
    with fake("raw_result", on="release_model", result_json="null") as client:
        exc = violation(client, "release_model", lambda c: c.release_model("m1"), "result")
        assert "JSON object" in str(exc) and "null" in str(exc)
        assert client.init_model() == "m1"


@pytest.mark.parametrize(
    ("method", "result_json", "call", "field"),
    [
        ("apply_patch", '"Maybe"', lambda c: c.apply_patch(PATCH), "result"),
        ("apply_patch", '{"Accepted": "x"}', lambda c: c.apply_patch(PATCH), "result"),
        ("apply_patch", '{"Rejected": 5}', lambda c: c.apply_patch(PATCH), "result.Rejected"),
        ("run_inner_loop", '{"steps_completed": 1.5, "metrics": {}}',
         lambda c: c.run_inner_loop({}), "result.steps_completed"),
        ("run_inner_loop", '{"steps_completed": 4294967296, "metrics": {}}',
         lambda c: c.run_inner_loop({}), "result.steps_completed"),
        ("train_window", '{"metrics": {"loss": [1.0]}}',
         lambda c: c.train_window("m1", []), "result.metrics.loss"),
        ("evaluate", '{"metrics": {"acc": null}}',
         lambda c: c.evaluate("m1", "Train"), "result.metrics.acc"),
        ("init_model", "{}", lambda c: c.init_model(), "result.model_id"),
        ("hello", '{"protocol_version": 3, "workload_name": "x", "capabilities": []}',
         lambda c: c.hello(), "result.protocol_version"),
    ],
)  # fmt: skip
def test_results_that_serde_would_refuse(method, result_json, call, field):
    with fake("raw_result", on=method, result_json=result_json) as client:
        violation(client, method, call, field)


def test_crash_before_connecting():
    with pytest.raises(WorkerExited) as info:
        fake("crash_before")
    assert info.value.returncode == 3
    assert "cannot start: crash_before mode" in info.value.stderr_tail
    assert "before connecting" in str(info.value)


def test_crash_during_a_call_keeps_the_stderr_tail_in_a_text_sink():
    sink = io.StringIO()
    client = fake("crash_after", on="train_window", client={"stderr": sink})
    with client:
        assert client.hello()["protocol_version"] == 2
        with pytest.raises(WorkerExited) as info:
            client.train_window("m1", [])
        assert info.value.returncode == 3 and info.value.method == "train_window"
        assert "crashing during train_window" in info.value.stderr_tail
        with pytest.raises(ClientClosed):
            client.hello()
    assert "crashing during train_window" in sink.getvalue()


def test_crash_with_stderr_to_a_file(tmp_path):
    log = tmp_path / "worker.log"
    with pytest.raises(WorkerExited) as info:
        fake("crash_before", client={"stderr": log})
    assert "crash_before mode" in info.value.stderr_tail
    assert "crash_before mode" in log.read_text()


def test_hung_worker_times_out_and_is_killed():
    with fake("hang", on="evaluate", client={"call_timeout": 0.5}) as client:
        assert client.hello(timeout=30.0)["workload_name"] == "fake"
        with pytest.raises(WorkerTimeout) as info:
            client.evaluate("m1", "Train")
        assert info.value.method == "evaluate" and info.value.timeout == 0.5
        assert "hanging on evaluate" in str(info.value)
        assert client.returncode is not None
    with fake("hang", on="hello") as client, pytest.raises(WorkerTimeout):
        client.hello(timeout=0.3)  # the per-call timeout overrides call_timeout


def test_worker_that_never_connects():
    with pytest.raises(WorkerTimeout, match="did not connect within 0.5 s"):
        fake("no_connect", client={"accept_timeout": 0.5})


def test_huge_and_empty_frames_are_refused():
    with fake("huge_header", on="hello", client={"exit_grace": 0.3}) as client:
        exc = violation(client, "hello", lambda c: c.hello(), "response")
        assert str(1 << 40) in str(exc) and "limit" in str(exc)
    with fake("zero_frame", on="hello") as client:
        violation(client, "hello", lambda c: c.hello(), "response")


def test_connection_closed_by_a_worker_that_stays_alive():
    with fake("close_no_exit", on="hello", client={"exit_grace": 0.3}) as client:
        exc = violation(client, "hello", lambda c: c.hello(), "response")
        assert "did not exit" in str(exc)
        assert client.returncode is not None


def test_missing_worker_program():
    with pytest.raises(FakecoordError, match="cannot start the worker"):
        WorkerClient.spawn("x:y", worker_cmd=["/nonexistent/worker-binary"])


# ---------------------------------------------------------------------------
# handling.py against fake workers and plain values


def test_plan_or_none_when_the_worker_predates_the_method():
    error = "unknown method 'parameter_pack_plan'\nTraceback ..."
    with fake("refuse", on="parameter_pack_plan", error=error) as client:
        assert handling.plan_or_none(client, "cpu") is None
    with fake("refuse", on="parameter_pack_plan", error="no such device") as client:
        with pytest.raises(RemoteError, match="no such device"):
            handling.plan_or_none(client, "cuda")


def test_export_checked_rejects_a_foreign_schema_hash(tmp_path):
    pack = tmp_path / "pack"
    with fake("ok") as client:  # acks the export without writing anything
        exc = violation(
            client, "export_parameter_pack",
            lambda c: handling.export_checked(c, "m1", pack, "mine"), "manifest",
        )  # fmt: skip
        assert "manifest.json" in str(exc)
        pack.mkdir()
        (pack / "manifest.json").write_text(json.dumps({"model_schema_hash": "theirs"}))
        exc = violation(
            client, "export_parameter_pack",
            lambda c: handling.export_checked(c, "m1", pack, "mine"), "manifest.model_schema_hash",
        )  # fmt: skip
        assert "'theirs'" in str(exc) and "'mine'" in str(exc)


def test_check_diloco_plan_allows_custom_hooks():
    empty = {"uses_custom_parameter_pack_hooks": False, "included_keys": [], "parameter_count": 0}
    with pytest.raises(PlanRefused, match="no float tensors"):
        handling.check_diloco_plan(empty)
    handling.check_diloco_plan({**empty, "uses_custom_parameter_pack_hooks": True})


def test_batch_counts_only_report_what_every_ref_tells():
    assert handling.batch_counts([]) == {"batch_count": 0}
    refs = [batch_ref("a", tokens=5), {"kind": "custom", "tokens": 2}]
    assert handling.batch_counts(refs) == {"batch_count": 2, "tokens_processed": 7}


# ---------------------------------------------------------------------------
# spec.py: pure decoding


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"n": 2**63}, "result.metrics.n"),
        ({"x": {"nested": 1}}, "result.metrics.x"),
        ({"x": float("inf")}, "result.metrics.x"),
    ],
)
def test_metric_values_outside_the_rust_enum(metrics, field):
    with pytest.raises(ProtocolViolation) as info:
        spec.decode_result("evaluate", {"metrics": metrics})
    assert info.value.field == field


def test_decoders_accept_what_serde_accepts():
    plan = {
        "uses_custom_parameter_pack_hooks": True, "layout_hash": None, "included_keys": [],
        "excluded_float_keys": [], "ignored_non_float_keys": [], "parameter_count": 0,
        "generic_plan_error": "opaque state", "future_field": [1],
    }  # fmt: skip
    assert spec.decode_result("parameter_pack_plan", plan) is plan
    loop = spec.decode_result("run_inner_loop", {"steps_completed": 0, "metrics": {"b": True}})
    assert loop["inner_optimizer_state_path"] is None
    probe = {"runtime_device": "cpu", "capability": {"preferred_backends": [],
             "work_units_per_second": 3, "target_window_seconds": 0}}  # fmt: skip
    assert spec.decode_result("capability_probe", probe) is probe
    assert spec.decode_result("merge_candidate_models", {}) is None
    assert spec.decode_result("shutdown", {"ok": True, "extra": 1}) is None
    with pytest.raises(ProtocolViolation, match="target_window_seconds"):
        spec.decode_result(
            "capability_probe",
            {**probe, "capability": {**probe["capability"], "target_window_seconds": True}},
        )
