"""Parameter packs: export and import against moving the same bytes directly.

Per model size (default 2e7 and 1e8 float32 parameters, ``bench.workloads``):

- export: ``worker.packs.export_pack`` vs numpy ``tofile`` of the same tensors
  into one file in the same directory (page cache; files deleted between
  runs, outside the timing).  Target: <= 1.25x.  safetensors ``save_file`` and
  an ``export_parameter_pack`` RPC to a real worker process are informative.
- import: ``worker.packs.import_pack`` into a prebuilt model (so: net of the
  workload's ``init_model``) vs ``readinto`` a memoryview of each of the same
  tensors from the same file.  Target: <= 1.25x.  safetensors ``load_file``
  and the RPC (``import_parameter_pack`` minus ``init_model``) are informative.
- import peak extra memory, each figure in a fresh process (peak RSS reset
  through ``/proc/self/clear_refs``), relative to the pack size.  Target: < 0.1x.

Run: ``python -m bench.bench_packs [--sizes 2e7,1e8] [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .common import (
    PYTHON,
    BenchError,
    Row,
    Stats,
    add_common_arguments,
    fmt_count,
    interleaved,
    parse_sizes,
    peak_rss,
    reference_path,
    reset_peak_rss,
    run_and_report,
    run_json_child,
    spawn_worker,
)

SCHEMA = "bench-schema"
FACTORY = "bench.workloads:make_workload"
EXPORT_TARGET = 1.25
IMPORT_TARGET = 1.25
MEMORY_TARGET = 0.1
SMALL_PARAMS = 50_000_000  # below this, operations are short: more repeats
REFERENCE_MAX_PARAMS = 20_000_000  # the reference needs ~50 B/param and ~0.1 us/param
MEMORY_KINDS = ("ours", "readinto", "safetensors", "reference")


# ---------------------------------------------------------------------------
# The operations measured


def float_tensors(state: dict) -> list[Any]:
    """The state's float tensors in pack layout order (sorted state_dict keys)."""
    state_dict = state["model"].state_dict()
    return [
        state_dict[key].detach()
        for key in sorted(state_dict)
        if state_dict[key].is_floating_point()
    ]


def load_reference(path: Path) -> ModuleType:
    """Import the reference seed worker from its file (never from PYTHONPATH)."""
    spec = importlib.util.spec_from_file_location("bench_reference_seed_worker", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot import the reference worker from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tofile(arrays: Sequence[Any], path: Path) -> None:
    with open(path, "wb") as f:
        for array in arrays:
            array.tofile(f)


def readinto(arrays: Sequence[Any], path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        for array in arrays:
            view = memoryview(array).cast("B")
            while view:
                got = f.readinto(view)
                if not got:
                    raise BenchError(f"{path} ended early")
                view = view[got:]


def safetensors_dict(tensors: Sequence[Any]) -> dict[str, Any]:
    return {f"t{i}": tensor for i, tensor in enumerate(tensors)}


def info_repeats(repeats: int) -> int:
    """Rounds for informative comparisons: a third of the targeted ones, at least 3."""
    return max(3, repeats // 3)


def copy_into(tensors: Sequence[Any], loaded: dict[str, Any]) -> None:
    """Copy safetensors' loaded tensors into the model's (``load_file`` alone maps
    the file lazily and would read nothing)."""
    for i, tensor in enumerate(tensors):
        tensor.copy_(loaded[f"t{i}"])


def timed(action: Callable[[], Any], cleanup: Callable[[], Any] | None = None) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    if cleanup is not None:
        cleanup()
    return elapsed


def checksums(tensors: Sequence[Any]) -> list[float]:
    return [float(t.double().sum()) for t in tensors]


def check_fills(
    name: str, tensors: Sequence[Any], load: Callable[[], Any], expected: list[float]
) -> None:
    """Zero the tensors, run ``load`` and check it restored them: a benchmark of a
    no-op would be meaningless.  Raises :class:`BenchError`."""
    for tensor in tensors:
        tensor.zero_()
    load()
    if checksums(tensors) != expected:
        raise BenchError(f"{name} did not restore the tensors' values")


# ---------------------------------------------------------------------------
# In-process export and import


def export_rows(
    n: int, state: dict, tmp: Path, repeats: int, seed_worker: ModuleType | None
) -> list[Row]:
    from safetensors.torch import save_file

    from worker import packs

    tensors = float_tensors(state)
    arrays = [t.numpy() for t in tensors]
    case = f"{fmt_count(n)} params"

    # Same bytes: the limit's file must equal our values file.
    packs.export_pack(state, tmp / "check", SCHEMA)
    tofile(arrays, tmp / "check.f32le")
    if (tmp / "check" / "values.f32le").read_bytes() != (tmp / "check.f32le").read_bytes():
        raise BenchError("numpy tofile did not write the same bytes as export_pack")
    shutil.rmtree(tmp / "check")
    (tmp / "check.f32le").unlink()

    def limit_measure() -> float:
        return timed(lambda: tofile(arrays, tmp / "limit.f32le"), (tmp / "limit.f32le").unlink)

    stats = interleaved(
        {
            "ours": lambda: timed(
                lambda: packs.export_pack(state, tmp / "ours", SCHEMA),
                lambda: shutil.rmtree(tmp / "ours"),
            ),
            "tofile": limit_measure,
        },
        repeats,
    )
    # Informative measures run in their own rounds: mixing them in would
    # add their memory churn to the noise of the targeted pair.
    info = interleaved(
        {
            "safetensors": lambda: timed(
                lambda: save_file(safetensors_dict(tensors), tmp / "st.safetensors"),
                (tmp / "st.safetensors").unlink,
            ),
            "tofile": limit_measure,
        },
        info_repeats(repeats),
    )
    reference = None
    if seed_worker is not None:
        reference = Stats(
            tuple(
                timed(
                    lambda: seed_worker._write_parameter_pack(tmp / "ref", state["model"], SCHEMA),
                    lambda: shutil.rmtree(tmp / "ref"),
                )
                for _ in range(3)
            )
        ).median
    ours, limit = stats["ours"], stats["tofile"]
    st, st_limit = info["safetensors"], info["tofile"]
    mb_s = n * 4 / ours.median / 1e6
    return [
        Row("pack export", case, ours.median, limit.median, "numpy tofile", EXPORT_TARGET,
            ours_spread=ours.spread, limit_spread=limit.spread, reference=reference,
            note=f"ours {mb_s:.0f} MB/s"),
        Row("pack export (safetensors, info)", case, st.median, st_limit.median, "numpy tofile",
            ours_spread=st.spread, limit_spread=st_limit.spread),
    ]  # fmt: skip


def import_rows(
    n: int, state: dict, tmp: Path, repeats: int, seed_worker: ModuleType | None
) -> list[Row]:
    from safetensors.torch import load_file, save_file

    from worker import packs

    tensors = float_tensors(state)
    arrays = [t.numpy() for t in tensors]
    pack = tmp / "pack"
    values = pack / "values.f32le"
    packs.export_pack(state, pack, SCHEMA)
    save_file(safetensors_dict(tensors), tmp / "model.safetensors")
    case = f"{fmt_count(n)} params"

    expected = checksums(tensors)
    check_fills("import_pack", tensors, lambda: packs.import_pack(pack, lambda: state), expected)
    check_fills("readinto", tensors, lambda: readinto(arrays, values), expected)

    def limit_measure() -> float:
        return timed(lambda: readinto(arrays, values))

    stats = interleaved(
        {
            "ours": lambda: timed(lambda: packs.import_pack(pack, lambda: state)),
            "readinto": limit_measure,
        },
        repeats,
    )
    info = interleaved(
        {
            "safetensors": lambda: timed(
                lambda: copy_into(tensors, load_file(tmp / "model.safetensors"))
            ),
            "readinto": limit_measure,
        },
        info_repeats(repeats),
    )
    reference = None
    if seed_worker is not None:
        reference = Stats(
            tuple(
                timed(lambda: seed_worker._load_parameter_pack(pack, state["model"]))
                for _ in range(3)
            )
        ).median
    ours, limit = stats["ours"], stats["readinto"]
    st, st_limit = info["safetensors"], info["readinto"]
    mb_s = n * 4 / ours.median / 1e6
    return [
        Row("pack import", case, ours.median, limit.median, "readinto tensors", IMPORT_TARGET,
            ours_spread=ours.spread, limit_spread=limit.spread, reference=reference,
            note=f"ours {mb_s:.0f} MB/s, net of init_model (prebuilt model)"),
        Row("pack import (safetensors + copy, info)", case, st.median, st_limit.median,
            "readinto tensors", ours_spread=st.spread, limit_spread=st_limit.spread),
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# Through the RPC of a real worker process


def rpc_rows(n: int, state: dict, tmp: Path, repeats: int) -> list[Row]:
    """Export and import through a worker process whose ``init_model`` returns one
    prebuilt model (``reuse_model``), so the import RPC is net of ``init_model``."""
    arrays = [t.numpy() for t in float_tensors(state)]
    pack = tmp / "pack"
    case = f"{fmt_count(n)} params"
    with spawn_worker(FACTORY, {"params": n, "reuse_model": True}) as worker:
        model_id = worker.call("init_model", {"device": "cpu"})["model_id"]
        export_params = {
            "model_id": model_id,
            "parameter_pack_path": str(tmp / "rpc"),
            "model_schema_hash": SCHEMA,
        }
        import_params = {"device": "cpu", "parameter_pack_path": str(pack)}

        def import_rpc() -> float:
            holder: dict = {}
            elapsed = timed(
                lambda: holder.update(worker.call("import_parameter_pack", import_params))
            )
            worker.call("release_model", {"model_id": holder["model_id"]})
            return elapsed

        stats = interleaved(
            {
                "export": lambda: timed(
                    lambda: worker.call("export_parameter_pack", export_params),
                    lambda: shutil.rmtree(tmp / "rpc"),
                ),
                "tofile": lambda: timed(
                    lambda: tofile(arrays, tmp / "limit.f32le"), (tmp / "limit.f32le").unlink
                ),
            },
            repeats,
        )
        stats |= interleaved(
            {
                "import": import_rpc,
                "readinto": lambda: timed(lambda: readinto(arrays, pack / "values.f32le")),
            },
            repeats,
        )
    export, tofile_stats = stats["export"], stats["tofile"]
    imported, read = stats["import"], stats["readinto"]
    return [
        Row("pack export via RPC (info)", case, export.median, tofile_stats.median,
            "numpy tofile", ours_spread=export.spread, limit_spread=tofile_stats.spread,
            note="export_parameter_pack round trip to a worker process"),
        Row("pack import via RPC (info)", case, imported.median, read.median,
            "readinto tensors", ours_spread=imported.spread, limit_spread=read.spread,
            note="import_parameter_pack round trip; the workload's init_model returns a "
            "prebuilt model"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# Peak memory, one fresh process per figure


def memory_child(kind: str, n: int, tmp: Path, reference: Path | None) -> dict:
    """Runs in a child: warm up on a tiny model, then import the size-``n`` pack in
    ``tmp`` and report the peak RSS above the RSS before the import (bytes)."""
    from safetensors.torch import load_file, save_file

    from worker import packs

    from .workloads import make_workload

    workload = make_workload({"params": n})
    seed_worker = load_reference(reference) if kind == "reference" else None

    def load(directory: Path, state: dict) -> Any:
        if kind == "ours":
            return packs.import_pack(directory / "pack", lambda: state)
        if kind == "readinto":
            return readinto(
                [t.numpy() for t in float_tensors(state)], directory / "pack/values.f32le"
            )
        if kind == "safetensors":
            loaded = load_file(directory / "model.safetensors")
            copy_into(float_tensors(state), loaded)
            return loaded
        if kind == "reference":
            assert seed_worker is not None
            return seed_worker._load_parameter_pack(directory / "pack", state["model"])
        raise BenchError(f"unknown memory kind {kind!r}; expected one of {MEMORY_KINDS}")

    with tempfile.TemporaryDirectory(dir=tmp) as warm:
        small = make_workload({"params": 4096}).init_model("cpu")
        packs.export_pack(small, Path(warm) / "pack", SCHEMA)
        save_file(safetensors_dict(float_tensors(small)), Path(warm) / "model.safetensors")
        load(Path(warm), small)
    state = workload.init_model("cpu")
    gc.collect()
    before = reset_peak_rss()
    result = load(tmp, state)
    extra = peak_rss() - before
    del result
    return {"kind": kind, "extra_bytes": extra}


def memory_rows(n: int, tmp: Path, kinds: Sequence[str], reference: Path | None) -> list[Row]:
    pack_bytes = n * 4
    extras = {}
    for kind in kinds:
        argv = [PYTHON, "-m", "bench.bench_packs", "--memory-child", kind,
                "--sizes", str(n), "--dir", str(tmp)]  # fmt: skip
        if kind == "reference" and reference is not None:
            argv += ["--reference", str(reference)]
        extras[kind] = run_json_child(argv)["extra_bytes"]
    case = f"{fmt_count(n)} params"
    rows = [
        Row("import peak extra memory", case, extras["ours"], pack_bytes, "pack size",
            MEMORY_TARGET, unit="B", reference=extras.get("reference"),
            note="peak RSS during import_pack minus RSS before, fresh process"),
    ]  # fmt: skip
    for kind, label in (
        ("readinto", "readinto tensors"),
        ("safetensors", "safetensors load_file + copy"),
    ):
        if kind in extras:
            rows.append(
                Row(f"import peak extra memory ({label}, info)", case, extras[kind],
                    pack_bytes, "pack size", unit="B")
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Row]:
    """Measure every size in ``args.sizes``; returns the result rows."""
    from .workloads import make_workload

    reference = reference_path(args)
    seed_worker = load_reference(reference) if reference is not None else None
    rows: list[Row] = []
    for n in args.sizes:
        repeats = args.repeats or (31 if n <= SMALL_PARAMS else 15)
        use_reference = n <= REFERENCE_MAX_PARAMS or args.reference_large
        ref = seed_worker if use_reference else None
        if seed_worker is not None and not use_reference:
            print(f"note: reference skipped at {fmt_count(n)} params (pass --reference-large)")
        print(f"pack benchmarks at {fmt_count(n)} params ...", flush=True)
        state = make_workload({"params": n}).init_model("cpu")
        tmp = Path(tempfile.mkdtemp(prefix="bench-packs-", dir=args.dir))
        try:
            rows += export_rows(n, state, tmp, repeats, ref)
            rows += import_rows(n, state, tmp, repeats, ref)
            rows += rpc_rows(n, state, tmp, repeats)
            del state
            gc.collect()
            kinds = ["ours"] if args.quick else ["ours", "readinto", "safetensors"]
            if ref is not None:
                kinds.append("reference")
            rows += memory_rows(n, tmp, kinds, reference)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_packs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_common_arguments(parser)
    parser.add_argument(
        "--sizes", type=parse_sizes, default=None,
        help="comma-separated parameter counts (default 2e7,1e8; --quick: 2e5)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed rounds (default 31 up to {fmt_count(SMALL_PARAMS)} params, 15 above)",
    )
    parser.add_argument("--dir", default=None, help="where packs are written (default: $TMPDIR)")
    parser.add_argument(
        "--reference-large", action="store_true",
        help=f"also run the reference above {fmt_count(REFERENCE_MAX_PARAMS)} params (slow, ~50 B/param)",
    )  # fmt: skip
    parser.add_argument("--memory-child", choices=MEMORY_KINDS, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = argument_parser().parse_args(argv)
    if args.sizes is None:
        args.sizes = [200_000] if args.quick else [20_000_000, 100_000_000]
    if args.quick and args.repeats is None:
        args.repeats = 2
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("bench_packs: --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        try:
            reference = Path(args.reference) if args.reference else None
            result = memory_child(args.memory_child, args.sizes[0], Path(args.dir), reference)
        except BenchError as exc:
            print(f"bench_packs: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0
    return run_and_report("bench_packs", "parameter packs", args, run)


if __name__ == "__main__":
    sys.exit(main())
