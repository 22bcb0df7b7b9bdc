"""What ``python -m fakecoord run`` takes from its inputs: a ``--batches`` directory (what is
taken, what skipped and why), relative paths (one rule: the current directory), output files
under a directory that does not exist yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakecoord.errors import SettingsError
from fakecoord.sim.cli import read_toml
from fakecoord.sim.data import load_batches, select_batch_files


def make_data_dir(root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    for name in ("shard-0.npz", "shard-1.npz", "val.npz", "test.npz", "Validation_set.npz",
                 "eval-small.npz", "testing.npz", ".DS_Store"):  # fmt: skip
        (data / name).write_bytes(b"x")
    (data / "extra").mkdir()
    (data / "extra" / "shard-9.npz").write_bytes(b"x")
    return data


def test_a_batches_directory_takes_training_files_and_says_what_it_skipped(tmp_path) -> None:
    data = make_data_dir(tmp_path)
    selection = select_batch_files(data)
    assert [p.name for p in selection.taken] == ["shard-0.npz", "shard-1.npz", "testing.npz"]
    assert selection.note() == (
        "3 file(s) taken as training refs; skipped: .DS_Store (hidden); "
        "Validation_set.npz, eval-small.npz, test.npz, val.npz (an evaluation split by its "
        "name); extra/ (a sub-directory: not searched)"
    )
    per_peer = load_batches(data, 1)
    assert [ref["microshard_ids"] for ref in per_peer[0]] == [
        ["shard-0.npz"],
        ["shard-1.npz"],
        ["testing.npz"],
    ]


def test_an_empty_selection_is_refused_naming_what_was_skipped(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.npz").write_bytes(b"x")
    (data / "train").mkdir()
    with pytest.raises(SettingsError) as info:
        load_batches(data, 2)
    assert "no training files in the directory; 0 file(s) taken" in str(info.value)
    assert "val.npz (an evaluation split by its name)" in str(info.value)
    assert "train/ (a sub-directory: not searched)" in str(info.value)


def test_relative_paths_in_a_toml_file_follow_the_command_lines_rule(tmp_path) -> None:
    """One rule: relative to the current directory, like the workload's own config."""
    toml = tmp_path / "conf" / "run.toml"
    toml.parent.mkdir()
    toml.write_text('batches = "data/refs.json"\nout = "runs/a"\n[config-json]\nroot = "data"\n')
    options = read_toml(toml)
    assert options["batches"] == "data/refs.json" and options["out"] == "runs/a"
    assert json.loads(options["config_json"]) == {"root": "data"}
