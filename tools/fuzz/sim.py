"""Target "sim": the inputs of ``python -m fakecoord run`` (the coordinator side).

Three properties (each check returns whether its input was accepted), judged by one rule: an input is either refused
with :class:`~fakecoord.errors.SettingsError` (exit 2, a one-line reason) or
accepted, and then everything downstream that reads it must work:

- ``toml-options``: a TOML config file of option keys (and junk keys) with
  values of every TOML type (NaN, infinities, huge integers, datetimes,
  arrays, tables, hostile strings).  Accepted settings must validate into a
  :class:`~fakecoord.sim.config.SimConfig` whose checkpoint form is standard
  JSON that the checkpoint schema accepts (a run never writes a checkpoint
  its own resume refuses);
- ``checkpoint``: a valid ``fakecoord-sim-checkpoint-v2`` with one to three
  mutations anywhere (a value replaced by an edge value, a key dropped or
  added).  A checkpoint the resume accepts must load, and the report must
  render (summary lines and table, metrics lines, plotted metrics);
- ``output-paths``: ``--report`` / ``--plot`` / ``--out`` paths made of
  hostile components (``..``, NUL, 300-byte names, links to directories,
  dangling links, files, odd extensions).  An accepted report path must be
  writable by the atomic writer, an accepted run directory creatable.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import strategies as st

from fakecoord import schema
from fakecoord.errors import SettingsError
from fakecoord.files import write_json
from fakecoord.sim import cli
from fakecoord.sim.config import SimConfig
from fakecoord.sim.diloco import DiLoCo
from fakecoord.sim.faults import parse_fault
from fakecoord.sim.record import (
    CHECKPOINT_FORMAT,
    REPORT_FORMAT,
    Recorder,
    config_schema,
    metrics_lines,
)
from fakecoord.sim.report import plotted_metrics, summary_lines, summary_table
from fakecoord.sim.rundir import check_out_dir, check_output_file, check_plot_file

from .oracle import FuzzFailure, temporary_root, working_directory
from .values import EDGE_TEXT, JUNK, Raw, dumps_raw

# ---------------------------------------------------------------------------
# toml-options


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}" if code < 0xD800 else "?")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (inline tables for dicts; a ``Raw`` verbatim)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(type(value).__name__)


KEYS = [o.name for o in cli.OPTIONS if not o.hidden] + ["faults", "inner_steps", "nope", "help"]
SCALARS = (
    st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, 2, -1, 2**32 - 1, 2**32, 2**63, 2**64])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, 1.0, 0.5, 1e308, -0.0, 5e-324])
    | st.booleans()
    | st.sampled_from(
        [
            "",
            "false",
            "true",
            "0",
            "diloco",
            "windows",
            "mean",
            "fp16",
            "total",
            "replace",
            "crash@0:1",
            "slow@0=2",
            "slow@0=1e12",
            "drop@*=0.5",
            "python -m worker",
            "{}",
            '{"a": 1}',
            "[1]",
            "NaN",
            "cpu",
            "x.png",
            "a:b",
            "Ema",
            "..",
            "/",
            "a\x00b",
        ]
    )  # fmt: skip
    | st.text(max_size=12)
    | EDGE_TEXT
    | st.sampled_from([Raw("1979-05-27T07:32:00Z"), Raw("07:32:00")])
)
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def toml_inputs() -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(KEYS), TOML_VALUES, max_size=5)


def check_toml(document: dict[str, Any]) -> bool:
    text = "".join(f"{k} = {toml_value(v)}\n" for k, v in document.items())
    with temporary_root() as root, working_directory(root):
        path = root / "run.toml"
        path.write_text(text, encoding="utf-8")
        try:
            options = cli.read_toml(path)
            config = cli.build_config(options)
            config.validate()
            cli.check_outputs(options)
        except SettingsError as exc:
            _one_line(exc)
            return False
        _accepted_config(config)
        return True


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    if not text or "\n" in text.strip() or len(text) > 20_000:
        raise FuzzFailure(f"a refusal is not one readable line: {text[:200]!r}")


def _accepted_config(config: SimConfig) -> None:
    """What a run does with accepted settings: checkpoint them, resume from them."""
    data = config.to_json()
    try:
        text = json.dumps(data, allow_nan=False)
    except ValueError as exc:
        raise FuzzFailure(f"accepted settings the checkpoint cannot hold: {exc}") from None
    schema.decode(config_schema(), json.loads(text), "config")
    again = SimConfig.from_json(json.loads(text))
    again.validate()


# ---------------------------------------------------------------------------
# checkpoint


def valid_checkpoint() -> dict:
    """A checkpoint as a 2-peer, 2-round DiLoCo run with a fault and a baseline writes it."""
    config = SimConfig(peers=2, rounds=3, faults=[parse_fault("crash@1:1")], baseline=True)
    timings = {"round_seconds": 1.0, "worker_call_seconds": 0.9, "coordinator_seconds": 0.1,
               "straggle_seconds": 0.0, "wall_seconds_at_end": 2.0}  # fmt: skip

    def round_record(r: int, failed: list[int]) -> dict:
        peers = {
            str(p): {"status": "failed", "metrics": {}, "worker_seconds": 0.1, "error": "boom"}
            if p in failed
            else {"status": "ok", "metrics": {"loss": 0.5, "note": "x"}, "worker_seconds": 0.5}
            for p in range(2)
        }
        return {
            "round": r, "eval_metric": "loss", "eval_value": 0.5, "eval": {"loss": 0.5, "acc": 1},
            "contributors": [p for p in range(2) if p not in failed], "failed": failed,
            "dropped": [], "peers": peers, "aggregate": {"method": "mean"}, "timings": timings,
            "baseline": {"eval_value": 0.4, "eval": {"loss": 0.4}, "train_metrics": {}},
        }  # fmt: skip

    fault = {"spec": "crash@1:1", "kind": "crash", "peer": 1, "round": 1, "planned": True,
             "injected": "SIGKILL", "error": "boom", "effect": "e", "pid": 7,
             "recovery": {"round": 2, "action": "worker restarted", "worker_restarted": True}}  # fmt: skip
    report = {
        "format": REPORT_FORMAT, "strategy": "diloco", "settings": config.to_json(),
        "workload": {}, "model_schema_hash": "h", "eval_metric": "loss",
        "initial_eval": {"loss": 1.0}, "initial_eval_value": 1.0, "final_eval_value": 0.5,
        "rounds": [round_record(1, [1]), round_record(2, [])], "faults": [fault],
        "baseline": {"steps_per_round": 40, "description": "d", "eval_values": [0.4, 0.4],
                     "final_eval_value": 0.4},
        "timings": {"wall_seconds": 4.0, "startup_seconds": 1.0, "rounds_seconds": 2.0,
                    "worker_call_seconds": 1.8, "coordinator_seconds": 0.2,
                    "coordinator_overhead_share": 0.1, "straggle_seconds": 0.0},
        "threads": {"per_worker": 1, "reason": "r"},
    }  # fmt: skip
    return {
        "format": CHECKPOINT_FORMAT,
        "strategy": "diloco",
        "config": config.to_json(),
        "state": {
            "completed_rounds": 2,
            "strategy": {
                "base": "rounds/0002/base",
                "velocity": None,
                "inner_opt": {"0": "rounds/0002/peer-0/inner_optimizer.pt", "1": None},
            },
            "baseline": {
                "model": {"kind": "pack", "path": "rounds/0002/baseline/pack"},
                "inner_opt": None,
            },
            "failed_streak": 0,
        },  # fmt: skip
        "pending_recovery": {"1": "crash@1:1"},
        "report": report,
    }


EDGE = (
    st.sampled_from(
        [
            None,
            "",
            "x",
            "0",
            -1,
            0,
            1,
            2**32,
            2**64,
            1.5,
            -0.0,
            True,
            False,
            [],
            {},
            [1],
            {"a": 1},
            Raw("NaN"),
            Raw("1e999"),
            Raw('"\\ud800"'),
        ]  # fmt: skip
    )
    | EDGE_TEXT
    | JUNK
)


@st.composite
def _mutation(draw: st.DrawFn) -> tuple[list[int], str, Any]:
    path = draw(st.lists(st.integers(0, 1000), min_size=1, max_size=6))
    op = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    return path, op, draw(EDGE)


def checkpoint_inputs() -> st.SearchStrategy:
    return st.lists(_mutation(), min_size=1, max_size=3)


def _mutate(data: Any, path: list[int], op: str, value: Any) -> None:
    """Walk ``path`` (each index picks a child modulo the count) and apply ``op`` there."""
    node, value = data, copy.deepcopy(value)  # sampled values are shared objects
    for i, pick in enumerate(path):
        if isinstance(node, dict) and node:
            key: Any = sorted(node)[pick % len(node)]
        elif isinstance(node, list) and node:
            key = pick % len(node)
        else:
            return
        last = i == len(path) - 1 or not isinstance(node[key], (dict, list)) or not node[key]
        if last:
            if op == "drop":
                del node[key]
            elif op == "add" and isinstance(node, dict):
                node[f"junk{pick}"] = value
            else:
                node[key] = value
            return
        node = node[key]


def check_checkpoint(mutations: list[tuple[list[int], str, Any]]) -> bool:
    data = copy.deepcopy(VALID_CHECKPOINT)
    for path, op, value in mutations:
        _mutate(data, path, op, value)
    with temporary_root() as root:
        (root / "checkpoint.json").write_bytes(dumps_raw(data))
        try:
            config = cli.resume_config({}, root)
            config.validate()
            engine = SimpleNamespace(out=root, strategy=DiLoCo(), config=config)
            recorder = Recorder(engine)  # type: ignore[arg-type]
            state, report = recorder.load_checkpoint(root / "checkpoint.json")
        except SettingsError as exc:
            _one_line(exc)
            return False
        # Accepted: the resumed run renders and re-writes what it read.
        metrics_lines(report)
        summary_lines(report)
        summary_table(report)
        plotted_metrics(report)
        json.dumps(report, allow_nan=False)
        _accepted_config(config)
        return state.completed_rounds == len(report["rounds"])


# ---------------------------------------------------------------------------
# output-paths

COMPONENTS = st.sampled_from(
    [
        "",
        ".",
        "..",
        "nope",
        "dir",
        "file",
        "dir-link",
        "dangling",
        "x.png",
        "x.png2",
        "r.json",
        "x.PDF",
        "a\x00b",
        "é.svg",
        "n" * 300,
        "fifo",
        "unreadable",
    ]  # fmt: skip
)


def path_inputs() -> st.SearchStrategy:
    return st.tuples(
        st.sampled_from(["--report", "--plot", "--out"]),
        st.booleans(),
        st.lists(COMPONENTS, min_size=1, max_size=3),
    )


def _layout(root: Path) -> None:
    (root / "dir").mkdir()
    (root / "file").write_text("x")
    (root / "dir-link").symlink_to(root / "dir")
    (root / "dangling").symlink_to(root / "gone")
    os.mkfifo(root / "fifo")
    (root / "unreadable").mkdir(mode=0o500)


def check_path(case: tuple[str, bool, list[str]]) -> bool:
    flag, absolute, parts = case
    checks: dict[str, Callable[[str], Path]] = {
        "--report": lambda p: check_output_file("--report", p, beside=".metrics.jsonl"),
        "--plot": check_plot_file,
        "--out": lambda p: check_out_dir("--out", p),
    }
    with temporary_root() as root, working_directory(root):
        _layout(root)
        text = os.path.join(str(root) if absolute else "", *parts)
        try:
            accepted = checks[flag](text)
        except SettingsError as exc:
            _one_line(exc)
            return False
        if os.geteuid() == 0 and "unreadable" in parts:
            return True  # root writes into a 0o500 directory: accepted rightly
        if flag == "--out":
            accepted.mkdir(parents=True, exist_ok=True)
        elif Path(text).name != "fifo":
            write_json(accepted, {"ok": True})
        return True


VALID_CHECKPOINT = valid_checkpoint()

__all__ = [
    "VALID_CHECKPOINT",
    "check_checkpoint",
    "check_path",
    "check_toml",
    "checkpoint_inputs",
    "path_inputs",
    "toml_inputs",
    "toml_value",
    "valid_checkpoint",
]
