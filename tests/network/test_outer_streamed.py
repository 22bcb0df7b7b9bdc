"""The simulation's streamed outer step (fakecoord.sim.outer) gives the network's bytes: the
golden vectors again, through chunks (odd sizes, so chunks split the pack between values and,
for QSGD, between the norm pass and the step), in memory and through packs on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fakecoord import packs
from fakecoord.errors import NetworkStepError, PolicyError
from fakecoord.sim.outer import OuterSGD, outer_step_arrays, outer_step_packs

from . import golden

CASES = golden.cases()
# every long case, every case with an error, and every 7th of the rest through packs
PACK_CASES = [
    c for i, c in enumerate(CASES) if "gen-" in c["name"] or c["error"] is not None or i % 7 == 0
]


def _policy(case) -> dict:
    return {
        "codec": case["codec"],
        "aggregation_policy": case["aggregation"],
        "outer_optimizer_policy": case["outer"],
    }


def _expected_error(case):
    error = case["error"]
    return None if error is None else (error["stage"], error["message"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_streamed_arrays_match_the_golden_case(case):
    base = golden.values(case["base"])
    locals_ = [golden.values(v) for v in case["locals"]]
    chunk = 7 if base.shape[0] < 5000 else 4099
    want = _expected_error(case)
    if want is not None:
        with pytest.raises((NetworkStepError, PolicyError)) as info:
            outer_step_arrays(base, locals_, _policy(case), chunk=chunk)
        assert (info.value.stage, info.value.reason) == want
        return
    new_base, velocity = outer_step_arrays(base, locals_, _policy(case), chunk=chunk)
    assert velocity is None
    assert golden.same(new_base, case["new_base"]), golden.describe_diff(new_base, case["new_base"])


def _pack(path: Path, values: np.ndarray) -> Path:
    return packs.write_pack(path, values, layout_hash="h", model_schema_hash="s")


@pytest.mark.parametrize("case", PACK_CASES, ids=[c["name"] for c in PACK_CASES])
def test_streamed_packs_match_the_golden_case(case, tmp_path):
    base = _pack(tmp_path / "base", golden.values(case["base"]))
    locals_ = [_pack(tmp_path / f"l{i}", golden.values(v)) for i, v in enumerate(case["locals"])]
    n = golden.values(case["base"]).shape[0]
    chunk = 5 if n < 5000 else 3001
    want = _expected_error(case)
    if want is not None:
        with pytest.raises((NetworkStepError, PolicyError)) as info:
            outer_step_packs(base, locals_, tmp_path / "new", _policy(case), chunk=chunk)
        assert (info.value.stage, info.value.reason) == want
        assert not (tmp_path / "new").exists()
        return
    stats = outer_step_packs(
        base, locals_, tmp_path / "new", _policy(case), chunk=chunk, digests=True
    )
    got = np.asarray(packs.open_pack(tmp_path / "new").values)
    assert golden.same(got, case["new_base"]), golden.describe_diff(got, case["new_base"])
    assert [
        {"len": s, "sha256": h}
        for s, h in zip(stats.encoded_bytes, stats.encoded_sha256, strict=True)
    ] == case["encoded"]
    agg = golden.values(case["aggregate"]) if "f32le" in case["aggregate"] else None
    if agg is not None and np.all(np.isfinite(agg)):
        want_norm = float(np.sqrt(np.sum(agg.astype(np.float64) ** 2)))
        assert stats.pseudo_gradient_norm == pytest.approx(want_norm, rel=1e-12)
    assert stats.non_finite == int(np.count_nonzero(~np.isfinite(got)))


def test_the_beyond_network_optimizer_is_refused_without_the_opt_in(tmp_path):
    base = _pack(tmp_path / "base", np.ones(4, dtype=np.float32))
    local = _pack(tmp_path / "l0", np.zeros(4, dtype=np.float32))
    policy = {
        "outer_optimizer_policy": {
            "Sgd": {"learning_rate_micros": 700000, "momentum_micros": 900000, "nesterov": True}
        }
    }
    with pytest.raises(PolicyError, match="requires a workload-specific implementation"):
        outer_step_packs(base, [local], tmp_path / "new", policy)
    with pytest.raises(PolicyError, match=r"momentum_micros: Some\(900000\)"):
        outer_step_packs(base, [local], tmp_path / "new", None, optimizer=OuterSGD(0.7, 0.9, True))
    assert not (tmp_path / "new").exists()
    stats = outer_step_packs(
        base, [local], tmp_path / "new", policy, beyond_network=True,
        new_velocity=tmp_path / "v",
    )  # fmt: skip
    # fp16(1.0) = 1; v = 1; Nesterov step 0.9 * 1 + 1 = 1.9; base 1 - 0.7 * 1.9
    got = np.asarray(packs.open_pack(tmp_path / "new").values)
    assert got.tolist() == [np.float32(1) - np.float32(0.7) * (np.float32(0.9) + np.float32(1))] * 4
    assert np.asarray(packs.open_pack(tmp_path / "v").values).tolist() == [1.0] * 4
    assert stats.update_norm == pytest.approx(2 * 0.7 * 1.9, rel=1e-6)
