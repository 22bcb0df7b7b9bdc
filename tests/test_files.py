"""The one atomic-write helper (worker.files): staged files and directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker import files
from worker.errors import WorkerStop


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_temporary_names_are_hidden_unguessable_and_beside_the_target(tmp_path):
    target = tmp_path / "out.bin"
    names = {files.temporary_name(target) for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert name.parent == tmp_path
        prefix = f".out.bin.partial-{os.getpid()}-"
        assert name.name.startswith(prefix) and len(name.name) == len(prefix) + 16


def test_a_file_is_published_whole_or_not_at_all(tmp_path):
    target = tmp_path / "result.json"
    target.write_bytes(b"old")
    files.write_file_atomically(target, b"new contents")
    assert target.read_bytes() == b"new contents" and entries(tmp_path) == ["result.json"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), WorkerStop("SIGTERM")])
def test_a_failure_or_a_stop_while_writing_removes_the_temporary_file(tmp_path, failure):
    target = tmp_path / "artifact"
    target.write_bytes(b"old")
    with pytest.raises(type(failure)), files.staged_file(target) as staged:
        staged.file.write(b"half")
        raise failure
    assert target.read_bytes() == b"old" and entries(tmp_path) == ["artifact"]


def test_multi_byte_memoryviews_are_written_as_bytes(tmp_path):
    target = tmp_path / "ints"
    data = memoryview(bytearray(range(16))).cast("I")
    files.write_file_atomically(target, data)
    assert target.read_bytes() == bytes(range(16))


def test_a_planted_link_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = tmp_path / ".target.partial-planted"
    planted.symlink_to(victim)
    monkeypatch.setattr(files, "temporary_name", lambda target: planted)
    with pytest.raises(FileExistsError):
        files.write_file_atomically(tmp_path / "target", b"attacker-chosen path")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "target").exists()


def test_create_exclusive_refuses_dangling_links_and_existing_files(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_bytes(b"x")
    for name in ("dangling", "file"):
        with pytest.raises(FileExistsError):
            files.create_exclusive(tmp_path / name)
    assert not (tmp_path / "nowhere").exists() and (tmp_path / "file").read_bytes() == b"x"


def test_a_directory_is_published_by_rename(tmp_path):
    target = tmp_path / "pack"
    with files.staged_directory(target) as staged:
        with files.create_exclusive(staged.path / "a") as f:
            f.write(b"1")
        assert staged.publish()
    assert entries(target) == ["a"] and entries(tmp_path) == ["pack"]


def test_a_directory_that_appeared_meanwhile_is_not_replaced(tmp_path):
    target = tmp_path / "pack"
    with files.staged_directory(target) as staged:
        with files.create_exclusive(staged.path / "a") as f:
            f.write(b"1")
        target.mkdir()
        (target / "theirs").write_bytes(b"keep")
        assert not staged.publish()
    assert entries(target) == ["theirs"] and entries(tmp_path) == ["pack"]


def test_a_stop_while_staging_a_directory_removes_it(tmp_path):
    with pytest.raises(WorkerStop), files.staged_directory(tmp_path / "pack") as staged:
        with files.create_exclusive(staged.path / "values") as f:
            f.write(b"half")
        raise WorkerStop("SIGINT")
    assert entries(tmp_path) == []


def test_files_are_created_with_the_umask_applied(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_file_atomically(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
