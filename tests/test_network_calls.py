"""conformance.network_calls makes the run_inner_loop call as lib.rs makes it, through the
same job builder as the simulation (fakecoord.network.rounds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.errors import NetworkRefused
from conformance.network_calls import NetworkPeer, StateBlob
from fakecoord.network import rounds


def _peer(tmp_path: Path, answer: dict, sent: list[dict]) -> NetworkPeer:
    counter = iter(range(100))

    def call(method: str, params: Any) -> Any:
        assert method == "run_inner_loop"
        sent.append(params)
        return dict(answer)

    return NetworkPeer(
        call=call,
        device="python-torch-cpu",
        scratch=lambda prefix: tmp_path / f"{prefix}-{next(counter)}",
        model_schema_hash="schema",
    )


def test_the_job_is_the_simulations_and_exact_steps_are_required_by_default(tmp_path: Path) -> None:
    sent: list[dict] = []
    state_file = tmp_path / "state.bin"
    state_file.write_bytes(b"adam")
    answer = {"steps_completed": 2, "inner_optimizer_state_path": str(state_file)}
    peer = _peer(tmp_path, answer, sent)
    first = peer.run_inner_loop("m1", [{"ref": 1}], 2, None)
    second = peer.run_inner_loop("m1", [{"ref": 1}], 2, first.state)
    # lib.rs PythonDiLoCoConfig: require_exact_steps is true in every constructor.
    assert sent[0]["require_exact_steps"] is True
    assert sent[0]["inner_optimizer_state_path"] is None  # a peer's first round
    assert first.state == StateBlob(b"adam", rounds.DEFAULT_STATE_ENCODING)
    handed = Path(sent[1]["inner_optimizer_state_path"])
    assert handed.name == rounds.INNER_STATE_INPUT_NAME and handed.read_bytes() == b"adam"
    assert second.given_state_path == str(handed)
    expected = rounds.inner_loop_job(
        model_id="m1",
        batches=[{"ref": 1}],
        num_inner_steps=2,
        inner_optimizer_state_path=handed,
        output_parameter_pack_path=handed.parent / "local-parameters",
        model_schema_hash="schema",
        state_dict_filter_value=peer.state_dict_filter,
    )
    assert sent[1] == expected


def test_a_wrong_step_count_and_steps_without_batches_are_refused(tmp_path: Path) -> None:
    sent: list[dict] = []
    peer = _peer(tmp_path, {"steps_completed": 1}, sent)
    with pytest.raises(NetworkRefused, match="completed 1 step"):
        peer.run_inner_loop("m1", [{"ref": 1}], 2, None)
    with pytest.raises(NetworkRefused, match="requires at least one batch"):
        peer.run_inner_loop("m1", [], 2, None)
    assert len(sent) == 1  # no call without batches
