"""The generic torch layout of a model state (docs/protocol.md §3) and its hash.

A state is a ``torch.nn.Module``, ``{"model": module, ...}`` or
``{"modules": {name: module, ...}}``.  Modules are walked in sorted name
order and, in each, ``state_dict()`` keys in sorted order; float tensors are
kept unless filtered out.  The hash must be byte-identical to the reference
worker's, which hashes ``json.dumps(entries, sort_keys=True, separators=(",", ":"))``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import LayoutError, describe
from .protocol import NO_FILTER, StateFilter

LAYOUT_HASH_PREFIX = "torch-layout-"


def is_module_like(obj: Any) -> bool:
    return hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")


def state_modules(state: Any) -> list[tuple[str, Any]]:
    """Return ``[(name, module), ...]`` in layout order; a single model is named "".

    Raises :class:`LayoutError` when ``state`` is none of the supported shapes.
    """
    if isinstance(state, dict) and "model" in state:
        model = state["model"]
        if not is_module_like(model):
            raise LayoutError(f"state['model'] must be a torch.nn.Module, got {describe(model)}")
        return [("", model)]
    if isinstance(state, dict) and "modules" in state:
        modules = state["modules"]
        if not isinstance(modules, dict) or not modules:
            raise LayoutError(
                f"state['modules'] must be a non-empty dict of name -> module, got {describe(modules)}"
            )
        out = []
        for name in sorted(modules, key=_name_key):
            if not isinstance(name, str) or not name or "." in name:
                raise LayoutError(
                    f"state['modules'] names must be non-empty strings without '.', got {name!r}"
                )
            if not is_module_like(modules[name]):
                raise LayoutError(
                    f"state['modules'][{name!r}] must be a torch.nn.Module, got {describe(modules[name])}"
                )
            out.append((name, modules[name]))
        return out
    if is_module_like(state):
        return [("", state)]
    raise LayoutError(
        "the generic torch layout needs a torch.nn.Module, {'model': module} or "
        f"{{'modules': {{name: module}}}} state, got {describe(state)}; "
        "return one from init_model or give the workload custom pack/artifact hooks"
    )


def _name_key(name: Any) -> tuple[int, str]:
    # Non-string names sort (and are then refused) without a TypeError.
    return (0, name) if isinstance(name, str) else (1, repr(name))


@dataclass
class Layout:
    """The flattened view of a state under a filter.

    ``tensors[i]`` is the live tensor (detached, sharing memory with the
    model) behind ``entries[i]``.
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    tensors: list[Any] = field(default_factory=list)
    excluded_float_keys: list[str] = field(default_factory=list)
    ignored_non_float_keys: list[str] = field(default_factory=list)
    state_dicts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def included_keys(self) -> list[str]:
        return [e["name"] for e in self.entries]

    @property
    def parameter_count(self) -> int:
        return sum(e["numel"] for e in self.entries)

    @property
    def hash(self) -> str:
        return layout_hash(self.entries)

    def plan(self) -> dict[str, Any]:
        return {
            "uses_custom_parameter_pack_hooks": False,
            "layout_hash": self.hash,
            "included_keys": self.included_keys,
            "excluded_float_keys": list(self.excluded_float_keys),
            "ignored_non_float_keys": list(self.ignored_non_float_keys),
            "parameter_count": self.parameter_count,
        }


def layout_hash(entries: list[dict[str, Any]]) -> str:
    encoded = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return LAYOUT_HASH_PREFIX + hashlib.sha256(encoded).hexdigest()


def compute_layout(state: Any, state_filter: StateFilter = NO_FILTER) -> Layout:
    """Flatten ``state`` into its layout; raises :class:`LayoutError`."""
    import torch

    layout = Layout()
    for module_name, module in state_modules(state):
        state_dict = module.state_dict()
        layout.state_dicts.append((module_name, state_dict))
        prefix = f"{module_name}." if module_name else ""
        for key in sorted(state_dict, key=_name_key):
            if not isinstance(key, str):
                raise LayoutError(f"state_dict keys must be strings, got {key!r}")
            full_name = prefix + key
            tensor = state_dict[key]
            if not isinstance(tensor, torch.Tensor) or not torch.is_floating_point(tensor):
                layout.ignored_non_float_keys.append(full_name)
                continue
            if not state_filter.selects(full_name):
                layout.excluded_float_keys.append(full_name)
                continue
            tensor = tensor.detach()
            layout.entries.append(
                {
                    "name": full_name,
                    "shape": [int(d) for d in tensor.shape],
                    "dtype": str(tensor.dtype),
                    "numel": int(tensor.numel()),
                }
            )
            layout.tensors.append(tensor)
    return layout
