"""Helpers for the service tests: requests through the real sans-IO path, and states.

``respond`` sends one frame body through a :class:`~worker.connection.Connection`
and :meth:`Worker.handle` exactly as ``server.serve`` does, minus the socket.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.workloads import TinyWorkload
from worker.connection import Close, Connection, NeedData, Reply
from worker.framing import HEADER
from worker.protocol import Request
from worker.service import Worker


def exchange(worker: Worker, body: bytes) -> tuple[bytes, bool]:
    """(the frame the worker sends for ``body``, whether the connection then closes)."""
    connection = Connection()
    connection.receive_data(HEADER.pack(len(body)) + body)
    event = connection.next_event()
    if isinstance(event, Reply):
        frame = event.data
    else:
        assert isinstance(event, Request), event
        frame = connection.send_answer(worker.handle(event))
    after = connection.next_event()
    assert isinstance(after, (Close, NeedData)), after
    return frame, isinstance(after, Close)


def respond(worker: Worker, body: bytes) -> bytes:
    """The frame the worker sends for one frame body."""
    return exchange(worker, body)[0]


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"response carries the non-standard JSON constant {name}")


def decode_response(frame: bytes, request_id: int | None = None) -> dict:
    """Check ``frame`` is exactly one standard-JSON response frame; return it."""
    assert len(frame) >= 8, frame
    (length,) = struct.unpack(">Q", frame[:8])
    assert len(frame) == 8 + length, (len(frame), length)
    response = json.loads(frame[8:].decode("utf-8"), parse_constant=_reject_constant)
    assert isinstance(response, dict), response
    assert type(response.get("id")) is int and response["id"] >= 0, response
    assert type(response.get("ok")) is bool, response
    if response["ok"]:
        assert set(response) == {"id", "ok", "result"}, response
    else:
        assert set(response) == {"id", "ok", "error"}, response
        assert isinstance(response["error"], str) and response["error"].strip(), response
    if request_id is not None:
        assert response["id"] == request_id, response
    return response


def call(worker: Worker, method: str, params: Any = None, request_id: int = 1) -> dict:
    """One request; the connection must stay open unless a shutdown was acknowledged."""
    body = json.dumps({"id": request_id, "method": method, "params": params}).encode()
    frame, closes = exchange(worker, body)
    response = decode_response(frame, request_id)
    assert closes == (method == "shutdown" and response["ok"]), response
    return response


def ok(worker: Worker, method: str, params: Any = None) -> Any:
    response = call(worker, method, params)
    assert response["ok"], response["error"]
    return response["result"]


def error(worker: Worker, method: str, params: Any = None, request_id: int = 7) -> str:
    response = call(worker, method, params, request_id)
    assert response["ok"] is False, response
    return response["error"]


def assert_still_serving(worker: Worker) -> None:
    assert ok(worker, "hello")["protocol_version"] == 2


def model_state(worker: Worker, model_id: str) -> dict[str, torch.Tensor]:
    state = worker.models[model_id]
    modules = state["modules"] if "modules" in state else {"": state["model"]}
    out = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}" if name else key] = value.detach().clone()
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def perturb(worker: Worker, model_id: str, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    state = worker.models[model_id]
    modules = state["modules"].values() if "modules" in state else [state["model"]]
    with torch.no_grad():
        for module in modules:
            for value in module.state_dict().values():
                if value.is_floating_point():
                    value.add_(torch.randn(value.shape, generator=generator))


TINY_FLOAT_KEYS = [
    "0.bias", "0.weight", "1.bias", "1.running_mean", "1.running_var", "1.weight", "3.bias",
    "3.weight",
]  # fmt: skip

PATCH = {
    "patch_id": "p1", "class": "Hot", "summary": "lr", "values": {"lr": 0.1, "tags": ["a"]},
    "required_client_capabilities": [],
}  # fmt: skip


def candidate(model_id: str, weight: float = 1.0) -> dict:
    return {
        "peer_id": "peer", "head_id": "h", "artifact_id": "a", "model_id": model_id,
        "sample_weight": weight, "quality_weight": 1,
    }  # fmt: skip


def inner_job(tmp_path: Path, **overrides: Any) -> dict:
    job = {
        "model_id": "m1", "batches": [{"kind": "micro_epoch"}], "num_inner_steps": 2,
        "inner_optimizer_state_path": None, "output_parameter_pack_path": str(tmp_path / "out"),
        "model_schema_hash": "schema-7", "require_exact_steps": True,
    }  # fmt: skip
    job.update(overrides)
    return job


def export(worker: Worker, model_id: str, path: Path, flt: Any = None, schema: str = "schema-1"):
    params = {"model_id": model_id, "parameter_pack_path": str(path), "model_schema_hash": schema}
    if flt is not None:
        params["state_dict_filter"] = flt
    return call(worker, "export_parameter_pack", params)


def import_(worker: Worker, path: Path, flt: Any = None) -> dict:
    params = {"device": "cpu", "parameter_pack_path": str(path)}
    if flt is not None:
        params["state_dict_filter"] = flt
    return call(worker, "import_parameter_pack", params)


class FastWorkload(TinyWorkload):
    """TinyWorkload whose loops cost O(1) whatever the request asks for (for fuzzing)."""

    def train_window(self, state, batches):
        return {"batches": len(batches)}

    def run_inner_loop(self, state, job):
        return {"steps_completed": job["num_inner_steps"], "metrics": {"ok": True}}


class MultiModule(TinyWorkload):
    """A ``{"modules": {...}}`` state: an encoder and a head with a BatchNorm."""

    workload_name = "multi"

    def init_model(self, device):
        torch.manual_seed(0)
        return {
            "modules": {
                "head": nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)),
                "encoder": nn.Linear(3, 2),
            }
        }


class Minimal:
    """Only the required hooks; no run_inner_loop, no apply_patch, no custom I/O."""

    def runtime_device(self):
        return "python-torch-cpu"

    def capability_probe(self):
        return {"preferred_backends": [], "work_units_per_second": 1, "target_window_seconds": 0}

    def init_model(self, device):
        return nn.Linear(2, 2)

    def train_window(self, state, batches):
        return {}

    def evaluate(self, state, split):
        return {}
