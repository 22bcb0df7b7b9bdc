"""The coordinator side's pack reader/writer and layout hash (fakecoord.packs, fakecoord.files),
checked against the golden vectors made with the reference worker (tests/golden/README.md)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fakecoord import files, packs
from fakecoord.errors import PackError

GOLDEN = Path(__file__).parent / "golden"
VECTORS = json.loads((GOLDEN / "vectors.json").read_text())["cases"]


@pytest.mark.parametrize("case", sorted(VECTORS))
def test_golden_layout_hash_and_pack_read_as_the_reference_wrote_them(case: str) -> None:
    vector = VECTORS[case]
    assert packs.layout_hash(vector["entries"]) == vector["layout_hash"]
    pack = packs.open_pack(GOLDEN / "packs" / case)
    assert pack.layout_hash == vector["layout_hash"]
    assert pack.parameter_count == vector["parameter_count"] == pack.values.size
    assert pack.manifest.model_schema_hash == vector["model_schema_hash"]
    digest = hashlib.sha256(pack.values.astype("<f4").tobytes()).hexdigest()
    assert digest == vector["values_sha256"]


@pytest.mark.parametrize("case", sorted(VECTORS))
def test_written_pack_matches_the_golden_bytes(case: str, tmp_path: Path) -> None:
    vector = VECTORS[case]
    source = packs.open_pack(GOLDEN / "packs" / case, in_memory=True)
    out = packs.write_pack(
        tmp_path / "pack",
        source.values,
        layout_hash=vector["layout_hash"],
        model_schema_hash=vector["model_schema_hash"],
    )
    values = (out / packs.VALUES_NAME).read_bytes()
    assert hashlib.sha256(values).hexdigest() == vector["values_sha256"]
    written = json.loads((out / packs.MANIFEST_NAME).read_text())
    golden = json.loads(vector["manifest"])
    assert {k: written[k] for k in written} == {k: golden[k] for k in written}


def _pack(tmp_path: Path, values: list[float] | None = None) -> Path:
    data = np.array(values if values is not None else [1.0, -0.0, 2.5], dtype=np.float32)
    return packs.write_pack(
        tmp_path / "p", data, layout_hash="torch-layout-x", model_schema_hash="s"
    )


def _manifest(path: Path) -> dict:
    return json.loads((path / packs.MANIFEST_NAME).read_text())


def _set_manifest(path: Path, text: str) -> None:
    (path / packs.MANIFEST_NAME).write_text(text)


def test_memory_mapped_values_are_read_only_and_bit_exact(tmp_path: Path) -> None:
    path = _pack(tmp_path, [1.0, -0.0, float("inf")])
    pack = packs.open_pack(path)
    assert pack.bits.tolist() == [0x3F800000, 0x80000000, 0x7F800000]
    with pytest.raises(ValueError):
        pack.values[0] = 3.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.update(parameter_count=4), "needs exactly 16"),
        (lambda m: m.update(parameter_count=-1), "parameter_count"),
        (lambda m: m.update(parameter_count=True), "parameter_count"),
        (lambda m: m.update(layout_hash=5), "layout_hash must be a string"),
        (lambda m: m.update(values_f32_le="../escape"), "must not contain '..'"),
        (lambda m: m.update(values_f32_le="/etc/passwd"), "relative path"),
        (lambda m: m.pop("model_schema_hash"), "model_schema_hash"),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(tmp_path: Path, edit, message) -> None:
    path = _pack(tmp_path)
    manifest = _manifest(path)
    edit(manifest)
    _set_manifest(path, json.dumps(manifest))
    with pytest.raises(PackError, match=message):
        packs.open_pack(path)


def test_duplicate_manifest_keys_and_nan_are_refused(tmp_path: Path) -> None:
    path = _pack(tmp_path)
    text = (path / packs.MANIFEST_NAME).read_text()
    _set_manifest(path, text.replace('"layout_hash"', '"layout_hash": "a", "layout_hash"', 1))
    with pytest.raises(PackError, match="duplicate key 'layout_hash'"):
        packs.open_pack(path)
    _set_manifest(path, text.replace('"parameter_count": 3', '"parameter_count": NaN'))
    with pytest.raises(PackError, match="NaN"):
        packs.open_pack(path)


def test_links_fifos_and_missing_files_are_refused(tmp_path: Path) -> None:
    path = _pack(tmp_path)
    values = path / packs.VALUES_NAME
    outside = tmp_path / "outside.f32le"
    os.replace(values, outside)
    values.symlink_to(outside)
    with pytest.raises(PackError, match="link"):
        packs.open_pack(path)
    values.unlink()
    os.mkfifo(values)
    with pytest.raises(PackError, match="not a regular file"):
        packs.open_pack(path)  # must not block on the FIFO
    values.unlink()
    with pytest.raises(PackError, match="cannot open"):
        packs.open_pack(path)
    with pytest.raises(PackError, match="cannot open the directory"):
        packs.open_pack(tmp_path / "absent")


def test_read_manifest_does_not_need_the_values(tmp_path: Path) -> None:
    path = _pack(tmp_path)
    (path / packs.VALUES_NAME).unlink()
    assert packs.read_manifest(path).parameter_count == 3


def test_pack_writer_publishes_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with packs.pack_writer(target, 4, layout_hash="h", model_schema_hash="s") as values:
            values[:] = 1.0
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with packs.pack_writer(target, 4, layout_hash="h", model_schema_hash="s") as values:
        values[:2] = 7.0
    pack = packs.open_pack(target)
    assert pack.values.tolist() == [7.0, 7.0, 0.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(PackError, match="already exists"):
        packs.write_pack(target, np.zeros(4), layout_hash="h", model_schema_hash="s")


def test_empty_pack_round_trips(tmp_path: Path) -> None:
    path = packs.write_pack(
        tmp_path / "e", np.zeros(0, dtype=np.float32), layout_hash="h", model_schema_hash="s"
    )
    assert packs.open_pack(path).values.size == 0


def test_check_compatible_names_the_differing_field(tmp_path: Path) -> None:
    base = packs.open_pack(_pack(tmp_path)).manifest
    other = packs.Manifest("s", "torch-layout-y", 3)
    packs.check_compatible(base, base, "peer 1")
    with pytest.raises(PackError, match="peer 1: layout_hash"):
        packs.check_compatible(other, base, "peer 1")


def test_staged_file_never_follows_a_planted_link_and_cleans_up(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "report.json"
    # Whatever temporary name is used, it is created exclusively: a link
    # planted under a guessable name is neither followed nor reused.
    (tmp_path / f".report.json{files.PARTIAL_MARK}{os.getpid()}").symlink_to(victim)
    files.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert victim.read_text() == "keep"
    with pytest.raises(ValueError):
        files.write_json(target, {"a": float("nan")})
    with pytest.raises(KeyboardInterrupt):
        with files.staged_file(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1}
    leftovers = [p.name for p in tmp_path.iterdir() if files.PARTIAL_MARK in p.name]
    assert leftovers == [f".report.json{files.PARTIAL_MARK}{os.getpid()}"]


def test_staged_directory_removes_its_staging_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        with files.staged_directory(tmp_path / "d") as staging:
            (staging / "x").write_text("1")
            raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "d").mkdir()
    with pytest.raises(FileExistsError):
        with files.staged_directory(tmp_path / "d"):
            pass


# -- a full disk (issue 16 item 14) -------------------------------------------------------


def _write_each_way(target: Path, count: int) -> list[str]:
    """Write a ``count``-value pack at ``target`` with each writer; the PackError texts."""
    values = np.arange(count, dtype=np.float32)
    errors = []
    for how in ("write_pack", "write_pack-float64", "pack_writer", "pack_stream_writer"):
        hashes = {"layout_hash": "h", "model_schema_hash": "s"}
        try:
            if how == "write_pack":
                packs.write_pack(target, values, **hashes)
            elif how == "write_pack-float64":
                packs.write_pack(target, values.astype(np.float64), **hashes)
            elif how == "pack_writer":
                with packs.pack_writer(target, count, **hashes) as out:
                    out[:] = values
            else:
                with packs.pack_stream_writer(target, count, **hashes) as sink:
                    for start in range(0, count, 1000):
                        sink.write(values[start : start + 1000])
        except PackError as exc:
            errors.append(f"{how}: {exc}")
        else:
            errors.append(f"{how}: no error")
    return errors


def test_a_full_disk_is_a_pack_error_naming_the_pack_and_leaves_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every writer writes with os.write: ENOSPC there is the documented PackError (this
    runs everywhere; the next test fills a real file system)."""
    real_write = os.write
    calls = []

    def full_after_one_write(fd: int, data: memoryview) -> int:
        calls.append(fd)
        if len(calls) % 2 == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[: len(data) // 2 or 1])

    target = tmp_path / "pack"
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", full_after_one_write)
        errors = _write_each_way(target, 5000)
    assert errors == [
        f"{how}: cannot write parameter pack {str(target)!r}: {os.strerror(errno.ENOSPC)}"
        for how in ("write_pack", "write_pack-float64", "pack_writer", "pack_stream_writer")
    ]
    assert list(tmp_path.iterdir()) == []


_FULL_DISK_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
from tests.test_coord_packs import _write_each_way
from pathlib import Path
from fakecoord import packs
target = Path(sys.argv[1]) / "pack"
errors = _write_each_way(target, 1 << 20)  # 4 MiB of values on a 1 MiB file system
packs._fallocate = False  # as where the file system cannot reserve: write() meets ENOSPC
errors += _write_each_way(target, 1 << 20)
print(json.dumps({"errors": errors, "left": os.listdir(sys.argv[1])}))
"""


def test_a_really_full_file_system_is_a_pack_error_not_a_sigbus(tmp_path: Path) -> None:
    """A 1 MiB tmpfs in a private mount namespace (``unshare -rm``: root, or an unprivileged
    user where user namespaces are enabled) filled by each writer."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs; the monkeypatched test covers it")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    root = Path(__file__).resolve().parent.parent
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" || exit 77; exec "$2" -c "$3" "$1" "$4"'
    run = subprocess.run(
        [unshare, "-rm", "sh", "-c", script, "sh", str(mount_point), sys.executable,
         _FULL_DISK_SCRIPT, str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if run.returncode == 77 or "unshare failed" in run.stderr:
        pytest.skip(f"cannot mount a tmpfs here ({run.stderr.strip()[-200:]})")
    assert run.returncode == 0, f"status {run.returncode} (-7 is SIGBUS): {run.stderr[-2000:]}"
    result = json.loads(run.stdout)
    target = mount_point / "pack"
    assert result == {
        "errors": [
            f"{how}: cannot write parameter pack {str(target)!r}: {os.strerror(errno.ENOSPC)}"
            for how in ("write_pack", "write_pack-float64", "pack_writer", "pack_stream_writer")
        ]
        * 2,
        "left": [],
    }


_FSIZE_SCRIPT = """
import json, os, resource, signal, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from tests.test_coord_packs import _write_each_way
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = _write_each_way(Path(sys.argv[1]) / "pack", 1 << 20)  # 4 MiB of values
print(json.dumps({"errors": errors, "left": os.listdir(sys.argv[1])}))
"""


def test_a_file_size_limit_is_a_pack_error_naming_the_pack(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (unprivileged, everywhere): the kernel's EFBIG from write() is the
    documented PackError too (pack_stream_writer's write() let the raw OSError out)."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", _FSIZE_SCRIPT, str(tmp_path), str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    target = tmp_path / "pack"
    assert json.loads(run.stdout) == {
        "errors": [
            f"{how}: cannot write parameter pack {str(target)!r}: {os.strerror(errno.EFBIG)}"
            for how in ("write_pack", "write_pack-float64", "pack_writer", "pack_stream_writer")
        ],
        "left": [],
    }


# -- outputs the user names: streams in place, files by rename (issue 16 item 16) ----------


class FifoReader:
    """The read end of a FIFO, opened before any writer (non-blocking, so it never hangs)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def read_all(self, timeout: float = 10.0) -> bytes:
        """What writers sent until the last one closed (or ``timeout`` passed)."""
        chunks, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                break
            chunk = os.read(self.fd, 65536)
            if not chunk:
                if chunks:
                    break
                time.sleep(0.01)  # no writer has opened it yet
                continue
            chunks.append(chunk)
        os.close(self.fd)
        return b"".join(chunks)


def test_an_output_into_a_fifo_is_written_into_it_not_renamed_over_it(tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    reader = FifoReader(fifo)
    files.write_output(fifo, b'{"report": 1}\n')
    assert reader.read_all() == b'{"report": 1}\n'
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the FIFO was not replaced
    assert entries(tmp_path) == ["report.fifo"]


def test_an_output_through_a_link_to_stdout_is_written_through_it(tmp_path: Path) -> None:
    """As ``--json /dev/stdout`` (a link to /proc/self/fd/1): the rename replaced the link
    and nothing reached stdout; as root it would have replaced /dev/stdout itself."""
    read_end, write_end = os.pipe()
    try:
        stdout_like = tmp_path / "stdout"
        stdout_like.symlink_to(f"/proc/self/fd/{write_end}")
        files.write_output(stdout_like, b"line 1\n")
        files.write_output(stdout_like, b"line 2\n")
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            assert pipe.read() == b"line 1\nline 2\n"
        assert stdout_like.is_symlink()
        devnull = tmp_path / "null"
        devnull.symlink_to(os.devnull)
        files.write_output(devnull, b"discarded")
        assert devnull.is_symlink() and os.readlink(devnull) == os.devnull
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_an_output_through_a_link_to_a_socket_is_refused_not_renamed_over(tmp_path: Path) -> None:
    """``/dev/stdout`` when stdout is a socket: it cannot be opened by name; say so rather
    than replace the link."""
    one, other = socket.socketpair()
    with one, other:
        stdout_like = tmp_path / "stdout"
        stdout_like.symlink_to(f"/proc/self/fd/{one.fileno()}")
        with pytest.raises(OSError, match="socket") as refused:
            files.write_output(stdout_like, b"report")
        assert refused.value.errno == errno.ENXIO
        assert stdout_like.is_symlink()
        assert entries(tmp_path) == ["stdout"]


def test_an_output_onto_a_file_or_a_link_to_one_is_published_by_rename(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "r.json"
    link.symlink_to(victim)
    files.write_output(link, b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert victim.read_text() == "keep"
    files.write_output(tmp_path / "fresh" / "r.json", b"made")
    assert (tmp_path / "fresh" / "r.json").read_bytes() == b"made"
    assert not [p for p in tmp_path.rglob("*") if files.PARTIAL_MARK in p.name]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a link and a FIFO as nobody")
def test_a_link_or_fifo_another_user_planted_never_receives_the_output(tmp_path: Path) -> None:
    planted_fifo = tmp_path / "theirs.fifo"
    reader = FifoReader(planted_fifo)
    os.chown(planted_fifo, 65534, 65534)
    files.write_output(planted_fifo, b"secret")
    assert planted_fifo.read_bytes() == b"secret"  # replaced by our own file
    assert reader.read_all(timeout=0.2) == b""
    ours = tmp_path / "ours.fifo"
    reader = FifoReader(ours)
    link = tmp_path / "r.json"
    link.symlink_to(ours)
    os.lchown(link, 65534, 65534)
    files.write_output(link, b"secret")
    assert not link.is_symlink() and link.read_bytes() == b"secret"
    assert reader.read_all(timeout=0.2) == b""


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_fakecoord_run_report_into_a_fifo_is_written_into_it(tmp_path: Path) -> None:
    """``python -m fakecoord run --report`` goes through the same rule: a FIFO is written
    into, a regular file (or a link to one) is published by rename, never followed."""
    from fakecoord.sim.cli import _outputs

    fifo = tmp_path / "report.fifo"
    reader = FifoReader(fifo)
    report = {"completed_rounds": 0, "rounds": [], "timings": {}}
    assert _outputs(report, {"report": str(fifo)}) is None
    assert json.loads(reader.read_all()) == report
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "r.json"
    link.symlink_to(victim)
    assert _outputs(report, {"report": str(link)}) is None
    assert json.loads(link.read_text()) == report and not link.is_symlink()
    assert victim.read_text() == "keep"
