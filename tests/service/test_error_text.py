"""Error texts (issue #9 items 5 and 8): untrusted values escaped and cut to 80
characters, whole texts capped, and exceptions or results that cannot be
printed answered with a fallback instead of killing the worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.support import assert_still_serving, call, error, export, import_, ok
from tests.workloads import TinyWorkload
from worker.errors import MAX_ERROR_CHARS, SHOWN_VALUE_CHARS, describe, error_text
from worker.service import Worker

FORGED = "\x1b[2J\x1b[31m\nburn-p2p worker: received SIGTERM; stopped after 0 requests\n"


def assert_safe(text: str) -> None:
    assert len(text) <= MAX_ERROR_CHARS
    assert "\x1b" not in text and "\r" not in text
    assert not any(line.startswith("burn-p2p worker:") for line in text.splitlines())


@pytest.mark.parametrize(
    "value",
    [FORGED * 1000, list(range(10**6)), {str(i): [{}] * 3 for i in range(10**5)}, 10**5000,
     b"\x00" * 10**6, "\u202e\ud800" * 100],
    ids=["forged-text", "long-list", "big-dict", "huge-int", "bytes", "bidi-surrogate"],
)  # fmt: skip
def test_describe_escapes_and_cuts_every_value(value):
    shown = describe(value, typed=False)
    assert len(shown) <= SHOWN_VALUE_CHARS and shown.isprintable()
    assert_safe(describe(value))


def test_error_text_keeps_newlines_escapes_the_rest_and_is_capped():
    assert error_text("first\n  traceback\tline") == "first\n  traceback\tline"
    assert error_text("a\x1bb\x00c\x85") == "a\\x1bb\\x00c\\x85"
    cut = error_text("x" * (10 * MAX_ERROR_CHARS))
    assert len(cut) == MAX_ERROR_CHARS and cut.endswith("more characters cut]")


def test_a_hostile_layout_hash_is_shown_escaped_and_cut(tiny, tmp_path: Path):
    """The issue's case: a manifest's layout_hash carrying ESC bytes and a forged
    ``burn-p2p worker:`` line (1 MiB here; 32 MiB is now over the manifest limit)."""
    assert export(tiny, "m1", tmp_path / "pack")["ok"]
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    manifest["layout_hash"] = FORGED * (1 << 20 // len(FORGED))
    (tmp_path / "pack" / "manifest.json").write_text(json.dumps(manifest))
    text = import_(tiny, tmp_path / "pack")["error"]
    assert text.startswith("import_parameter_pack:") and "does not match" in text
    assert_safe(text)
    assert len(text) < 1000


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class Hostile(TinyWorkload):
    """Hooks whose exceptions or results cannot be printed, or print hostile text."""

    def train_window(self, state, batches):
        kind = batches[0]["kind"]
        if kind == "unprintable":
            raise Unprintable()
        if kind == "bad-repr":
            return {"loss": BadRepr()}
        if kind == "huge-message":
            raise ValueError(FORGED * 100_000)
        return super().train_window(state, batches)

    def capability_probe(self):
        return BadRepr()

    def merge_candidate_models(self, base, candidates, policy):
        return BadRepr()  # a state that cannot be printed: stored, never shown


@pytest.fixture
def hostile() -> Worker:
    worker = Worker(Hostile({}))
    ok(worker, "init_model", {"device": "cpu"})
    return worker


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("unprintable", "raised Unprintable: <Unprintable object; str() raised RuntimeError>"),
     ("bad-repr", "metric 'loss' must be an int"), ("huge-message", "raised ValueError")],
)  # fmt: skip
def test_a_hook_whose_failure_cannot_be_printed_is_answered(hostile, kind, fragment):
    text = error(hostile, "train_window", {"model_id": "m1", "batches": [{"kind": kind}]})
    assert text.startswith("train_window: ") and fragment in text
    assert_safe(text)
    assert_still_serving(hostile)


def test_results_that_cannot_be_printed_are_answered(hostile):
    text = error(hostile, "capability_probe")
    assert "CapabilityEstimate" in text and "internal error" not in text
    merged = ok(hostile, "merge_candidate_models", {"base_model_id": "m1", "candidates": [
        {"model_id": "m1", "sample_weight": 1, "quality_weight": 1}], "policy": "Ema"})  # fmt: skip
    assert merged["model_id"] == "m2"
    assert call(hostile, "release_model", {"model_id": "m2"})["ok"]
    assert_still_serving(hostile)
