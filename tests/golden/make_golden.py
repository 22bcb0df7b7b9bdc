"""Generate the golden parameter-pack vectors from the REFERENCE worker.

Run once by hand (from the repository root)::

    /work/venv/bin/python tests/golden/make_golden.py --reference /work/shared/reference/seed_worker.py

It imports the reference worker by path and, for every case of
``tests/golden/models.py`` (``cases()``), writes:

* ``tests/golden/vectors.json``: per case the layout hash, parameter count,
  layout entries, sha256 of ``values.f32le``, the manifest text and the
  ``source`` of those values:

  - ``"reference"``: single-module, unfiltered states.  Layout from the
    reference's ``_torch_float_layout``, pack (values and manifest) written by
    the reference's ``_write_parameter_pack``.
  - ``"spec"``: multi-module states and filtered layouts, which the reference
    worker does not support.  Computed by the small independent
    implementation of docs/protocol.md §3 below (``spec_layout`` /
    ``spec_write_pack``), which is first checked against the reference on
    every reference case (same entries, hash and values bytes).  For filtered
    cases the manifest holds only the five fields every writer must emit.

* ``tests/golden/packs/<case>/{manifest.json,values.f32le}``: the pack
  itself, written by the reference (``source == "reference"``) or by
  ``spec_write_pack`` (``source == "spec"``).

Nothing here is imported by the tests, and nothing in this file uses the
project's ``worker`` package: the vectors are independent of the code they
check.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.util
import json
import platform
import shutil
import struct
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PACK_FORMAT = "burn-p2p-python-flattened-parameter-pack-v1"


def load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = load_by_path("golden_models", HERE / "models.py")


def schema_hash(case: str) -> str:
    return f"golden-schema-{case}"


# ---------------------------------------------------------------------------
# Independent implementation of docs/protocol.md §3 (for multi-module and filters)


def spec_modules(state):
    if isinstance(state, dict) and "model" in state:
        return [("", state["model"])]
    if isinstance(state, dict) and "modules" in state:
        return [(name, state["modules"][name]) for name in sorted(state["modules"])]
    return [("", state)]


def spec_selects(name: str, flt: dict | None) -> bool:
    if not flt:
        return True
    include = flt.get("include_globs") or []
    exclude = flt.get("exclude_globs") or []
    if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in exclude)


def spec_layout(state, flt: dict | None):
    """-> (hash, entries, tensors, excluded_float_keys, ignored_non_float_keys)."""
    entries, tensors, excluded, ignored = [], [], [], []
    for module_name, module in spec_modules(state):
        state_dict = module.state_dict()
        for key in sorted(state_dict):
            full = f"{module_name}.{key}" if module_name else key
            tensor = state_dict[key].detach()
            if not torch.is_floating_point(tensor):
                ignored.append(full)
                continue
            if not spec_selects(full, flt):
                excluded.append(full)
                continue
            entries.append(
                {
                    "name": full,
                    "shape": [int(d) for d in tensor.shape],
                    "dtype": str(tensor.dtype),
                    "numel": int(tensor.numel()),
                }
            )
            tensors.append(tensor)
    encoded = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return (
        "torch-layout-" + hashlib.sha256(encoded).hexdigest(),
        entries,
        tensors,
        excluded,
        ignored,
    )


def spec_write_pack(path: Path, state, flt: dict | None, model_schema_hash: str) -> None:
    layout_hash, entries, tensors, _, _ = spec_layout(state, flt)
    path.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path / "values.f32le", "wb") as f:
        for tensor in tensors:
            values = tensor.to(device="cpu", dtype=torch.float32).contiguous().reshape(-1).tolist()
            count += len(values)
            f.write(struct.pack(f"<{len(values)}f", *values))
    manifest = {
        "format": PACK_FORMAT,
        "model_schema_hash": model_schema_hash,
        "layout_hash": layout_hash,
        "parameter_count": count,
        "values_f32_le": "values.f32le",
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference", required=True, type=Path, help="path to the reference seed_worker.py"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="output directory (default: tests/golden)"
    )
    args = parser.parse_args()

    reference = load_by_path("reference_seed_worker", args.reference.resolve())
    packs_root = args.out / "packs"
    if packs_root.exists():
        shutil.rmtree(packs_root)
    packs_root.mkdir(parents=True)

    out_cases = {}
    for case, (builder, flt) in models.cases().items():
        state = models.BUILDERS[builder]()
        layout_hash, entries, _, excluded, ignored = spec_layout(state, flt)
        pack_dir = packs_root / case
        use_reference = flt is None and builder not in models.SPEC_ONLY_BUILDERS
        if use_reference:
            model = reference._torch_model_from_state(state)
            ref_hash, ref_entries = reference._torch_float_layout(model)
            reference._write_parameter_pack(pack_dir, model, schema_hash(case))
            # The spec implementation must agree with the reference wherever both apply.
            check_dir = args.out / ".spec-check"
            shutil.rmtree(check_dir, ignore_errors=True)
            spec_write_pack(check_dir, state, None, schema_hash(case))
            agree = (
                ref_hash == layout_hash
                and ref_entries == entries
                and (check_dir / "values.f32le").read_bytes()
                == (pack_dir / "values.f32le").read_bytes()
                and (check_dir / "manifest.json").read_bytes()
                == (pack_dir / "manifest.json").read_bytes()
            )
            shutil.rmtree(check_dir)
            if not agree:
                raise SystemExit(f"{case}: the spec implementation disagrees with the reference")
            # And the reference must load its own pack.
            fresh = models.BUILDERS[builder]()
            reference._load_parameter_pack(pack_dir, reference._torch_model_from_state(fresh))
        else:
            spec_write_pack(pack_dir, state, flt, schema_hash(case))
        manifest_text = (pack_dir / "manifest.json").read_text(encoding="utf-8")
        manifest = json.loads(manifest_text)
        assert manifest["layout_hash"] == layout_hash
        assert manifest["parameter_count"] == sum(e["numel"] for e in entries)
        out_cases[case] = {
            "builder": builder,
            "filter": flt,
            "source": "reference" if use_reference else "spec",
            "model_schema_hash": schema_hash(case),
            "layout_hash": layout_hash,
            "parameter_count": manifest["parameter_count"],
            "entries": entries,
            "excluded_float_keys": excluded,
            "ignored_non_float_keys": ignored,
            "values_sha256": sha256_file(pack_dir / "values.f32le"),
            "manifest": manifest_text,
        }
        print(
            f"{case:45s} {out_cases[case]['source']:9s} {manifest['parameter_count']:5d} values  {layout_hash}"
        )

    vectors = {
        "about": (
            "Golden parameter-pack vectors (docs/protocol.md section 3). source=reference: computed and "
            "written by the reference worker (_torch_float_layout, _write_parameter_pack). "
            "source=spec: multi-module or filtered cases the reference does not support, computed by "
            "the independent spec implementation in make_golden.py (checked against the reference on "
            "every reference case). Regenerate with: /work/venv/bin/python tests/golden/make_golden.py "
            "--reference /work/shared/reference/seed_worker.py"
        ),
        "generated_with": {
            "reference_sha256": sha256_file(args.reference),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "cases": out_cases,
    }
    (args.out / "vectors.json").write_text(
        json.dumps(vectors, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    total = sum(
        p.stat().st_size
        for p in args.out.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    print(f"{len(out_cases)} cases; tests/golden holds {total} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
