"""Live cross-check against the reference worker (skipped unless it is available).

Set ``BURN_P2P_REFERENCE_WORKER=/path/to/seed_worker.py`` to run: the
reference module is imported by path and its ``_torch_float_layout``,
``_write_parameter_pack`` and ``_load_parameter_pack`` are compared with ours
on every single-module golden builder, in both directions, plus a check that
the committed golden vectors still match what the reference produces.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from worker.layout import compute_layout
from worker.packs import export_pack, import_pack

REFERENCE = os.environ.get("BURN_P2P_REFERENCE_WORKER", "")
if not REFERENCE or not Path(REFERENCE).is_file():
    pytest.skip(
        "set BURN_P2P_REFERENCE_WORKER to the reference seed_worker.py to run the live cross-check",
        allow_module_level=True,
    )

GOLDEN = Path(__file__).resolve().parent / "golden"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load("reference_seed_worker", Path(REFERENCE))
models = _load("golden_models", GOLDEN / "models.py")
VECTORS = json.loads((GOLDEN / "vectors.json").read_text(encoding="utf-8"))["cases"]
BUILDERS = sorted(set(models.BUILDERS) - models.SPEC_ONLY_BUILDERS)


def _model(state):
    return ref._torch_model_from_state(state)


def _assert_same_states(a, b) -> None:
    sa, sb = models.snapshot(a), models.snapshot(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert models.same(sa[key], sb[key]), key


@pytest.mark.parametrize("builder", BUILDERS)
def test_layout_matches_reference(builder):
    state = models.BUILDERS[builder]()
    ref_hash, ref_entries = ref._torch_float_layout(_model(state))
    layout = compute_layout(state)
    assert layout.entries == ref_entries
    assert layout.hash == ref_hash


@pytest.mark.parametrize("builder", BUILDERS)
def test_committed_vectors_match_the_reference(builder, tmp_path):
    """The golden data is not stale with respect to this reference worker."""
    state = models.BUILDERS[builder]()
    ref._write_parameter_pack(tmp_path, _model(state), VECTORS[builder]["model_schema_hash"])
    golden = VECTORS[builder]
    assert golden["source"] == "reference"
    assert (
        hashlib.sha256((tmp_path / "values.f32le").read_bytes()).hexdigest()
        == golden["values_sha256"]
    )
    assert (tmp_path / "manifest.json").read_text(encoding="utf-8") == golden["manifest"]


@pytest.mark.parametrize("builder", BUILDERS)
def test_reference_exports_we_import(builder, tmp_path):
    source = models.BUILDERS[builder]()
    ref._write_parameter_pack(tmp_path / "ref", _model(source), "schema")
    ours = models.zero_floats(models.BUILDERS[builder]())
    theirs = models.zero_floats(models.BUILDERS[builder]())
    import_pack(tmp_path / "ref", lambda: ours)
    ref._load_parameter_pack(tmp_path / "ref", _model(theirs))
    _assert_same_states(ours, theirs)


@pytest.mark.parametrize("builder", BUILDERS)
def test_we_export_reference_imports(builder, tmp_path):
    source = models.BUILDERS[builder]()
    export_pack(source, tmp_path / "ours", "schema")
    ref._write_parameter_pack(tmp_path / "ref", _model(source), "schema")
    for name in ("values.f32le", "manifest.json"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), (
            name
        )
    theirs = models.zero_floats(models.BUILDERS[builder]())
    ours = models.zero_floats(models.BUILDERS[builder]())
    ref._load_parameter_pack(tmp_path / "ours", _model(theirs))
    import_pack(tmp_path / "ours", lambda: ours)
    _assert_same_states(ours, theirs)
    # And a float32 round trip of the source, nothing else.
    original = dict(models.named_tensors(source))
    for key, tensor in models.named_tensors(theirs):
        expected = original[key]
        if torch.is_floating_point(expected):
            expected = expected.to(torch.float32).to(expected.dtype)
        assert models.same(tensor, expected), key


def test_reference_rejects_our_pack_for_another_model(tmp_path):
    export_pack(models.BUILDERS["linear"](), tmp_path / "ours", "schema")
    with pytest.raises(ValueError, match="layout"):
        ref._load_parameter_pack(tmp_path / "ours", models.BUILDERS["mlp"]())


def test_large_pack_both_ways(tmp_path):
    """More than one staging chunk of a float16 tensor and a transposed float32 one."""
    from torch import nn

    def make(fill: bool):
        model = nn.Module()
        count = 5 * 210_001
        half = torch.linspace(-60000, 60000, count, dtype=torch.float64).to(torch.float16)
        f32 = torch.linspace(-1, 1, count).reshape(-1, 5)
        model.register_buffer("big_half", half if fill else torch.zeros_like(half))
        model.register_buffer("big_f32_t", (f32 if fill else torch.zeros_like(f32)).t())
        return model

    export_pack(make(True), tmp_path / "ours", "big")
    ref._write_parameter_pack(tmp_path / "ref", make(True), "big")
    for name in ("values.f32le", "manifest.json"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), (
            name
        )
    theirs, ours = make(False), make(False)
    ref._load_parameter_pack(tmp_path / "ours", theirs)
    import_pack(tmp_path / "ref", lambda: ours)
    _assert_same_states(ours, theirs)
    _assert_same_states(ours, make(True))
