"""The generic torch layout of a state, recomputed independently of the worker.

Independent of the worker's code on purpose (docs/protocol.md §3): walk the
modules in sorted name order, their ``state_dict()`` keys in sorted order,
keep float tensors the filter selects; the hash is :func:`fakecoord.packs.layout_hash`
over ``{"name", "shape", "dtype", "numel"}`` entries.  The states come from
the layout probe (:mod:`conformance.probe`), the suite's own subprocess: no
workload code runs in the suite's process.  torch is imported on use.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fakecoord.packs import layout_hash

from .errors import LayoutUnavailable


@dataclass
class LocalLayout:
    """The generic layout of a state, computed in the conformance process."""

    entries: list[dict] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    shared: list[list[str]] = field(default_factory=list)
    """Groups of entry names that are one tensor (tied weights: one storage, same view).
    No pack a peer exports holds different values under two names of one group."""

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.entries]

    @property
    def parameter_count(self) -> int:
        return sum(e["numel"] for e in self.entries)

    @property
    def hash(self) -> str:
        return layout_hash(self.entries)

    @property
    def spans(self) -> list[tuple[int, str]]:
        return [(e["numel"], e["dtype"]) for e in self.entries]

    def offsets(self) -> dict[str, tuple[int, int]]:
        out, start = {}, 0
        for e in self.entries:
            out[e["name"]] = (start, start + e["numel"])
            start += e["numel"]
        return out

    def filtered(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> LocalLayout:
        """The layout under a filter (the unfiltered float keys it drops become ``excluded``)."""
        kept = [e for e in self.entries if selects(e["name"], include, exclude)]
        dropped = [e["name"] for e in self.entries if not selects(e["name"], include, exclude)]
        names = {e["name"] for e in kept}
        shared = [g for g in ([n for n in group if n in names] for group in self.shared)]
        return LocalLayout(
            kept,
            sorted([*self.excluded, *dropped]),
            list(self.ignored),
            [g for g in shared if len(g) > 1],
        )

    def tie(self, values: Any) -> Any:
        """``values`` (in this layout's order) with every shared group holding one tensor's
        values: what any peer's export of a tied model holds (a copy; the first name wins)."""
        import numpy as np

        if not self.shared or values.size != self.parameter_count:
            return values
        out = np.array(values, dtype=np.float32)
        offsets = self.offsets()
        for group in self.shared:
            start, end = offsets[group[0]]
            for name in group[1:]:
                a, b = offsets[name]
                out[a:b] = out[start:end]
        return out

    def to_json(self) -> dict:
        return {
            "entries": self.entries,
            "excluded": self.excluded,
            "ignored": self.ignored,
            "shared": self.shared,
        }

    @classmethod
    def from_json(cls, value: Any) -> LocalLayout:
        """Rebuild a layout the probe reported; raises ``ValueError`` for a malformed one."""
        try:
            entries = [
                {
                    "name": str(e["name"]),
                    "shape": [int(d) for d in e["shape"]],
                    "dtype": str(e["dtype"]),
                    "numel": int(e["numel"]),
                }
                for e in value["entries"]
            ]
            return cls(
                entries,
                [str(n) for n in value["excluded"]],
                [str(n) for n in value["ignored"]],
                [[str(n) for n in group] for group in value.get("shared", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed layout report ({exc})") from None


def selects(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """The Filter rule: kept when some include glob matches (or there are none) and no exclude glob.

    Globs match as :func:`fnmatch.fnmatchcase`; each list is compiled once
    (fnmatch's own cache holds 32,768 patterns, so longer lists recompiled
    every glob for every name).
    """
    if include and not _glob_matcher(tuple(include))(name):
        return False
    return not exclude or not _glob_matcher(tuple(exclude))(name)


@functools.lru_cache(maxsize=16)
def _glob_matcher(globs: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a name matches one of ``globs`` (not empty: an empty pattern matches all)."""
    match = re.compile("|".join(map(fnmatch.translate, dict.fromkeys(globs)))).match
    return lambda name: match(name) is not None


def named_modules(state: Any) -> list[tuple[str, Any]]:
    """``[(name, module)]`` in walk order: a module, ``{"model": m}`` or ``{"modules": {...}}``."""
    import torch

    if isinstance(state, torch.nn.Module):
        return [("", state)]
    if isinstance(state, dict) and isinstance(state.get("model"), torch.nn.Module):
        return [("", state["model"])]
    if isinstance(state, dict) and isinstance(state.get("modules"), dict) and state["modules"]:
        modules = state["modules"]
        if all(isinstance(k, str) and isinstance(v, torch.nn.Module) for k, v in modules.items()):
            return [(name, modules[name]) for name in sorted(modules)]
    raise LayoutUnavailable(
        f"init_model returned a {type(state).__name__}, not a torch.nn.Module, "
        "{'model': module} or {'modules': {...}}"
    )


def local_layout(
    state: Any,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    tensors: list | None = None,
) -> LocalLayout:
    """The layout of ``state`` under a filter; raises :class:`LayoutUnavailable`.

    When ``tensors`` is a list, the kept tensors are appended to it in layout order.
    """
    import torch

    layout = LocalLayout()
    views: dict[tuple, list[str]] = {}
    for module_name, module in named_modules(state):
        state_dict = module.state_dict()
        for key in sorted(state_dict):
            name = f"{module_name}.{key}" if module_name else key
            tensor = state_dict[key]
            if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
                layout.ignored.append(name)
            elif not selects(name, include, exclude):
                layout.excluded.append(name)
            else:
                layout.entries.append(
                    {
                        "name": name,
                        "shape": list(tensor.shape),
                        "dtype": str(tensor.dtype),
                        "numel": tensor.numel(),
                    }
                )
                if tensors is not None:
                    tensors.append(tensor)
                view = (
                    tensor.untyped_storage().data_ptr(),
                    tensor.storage_offset(),
                    tuple(tensor.shape),
                    tuple(tensor.stride()),
                    str(tensor.dtype),
                )
                views.setdefault(view, []).append(name)
    layout.shared = [names for names in views.values() if len(names) > 1 and names[0]]
    return layout


def float32_values(tensors: Sequence[Any]) -> bytes:
    """``tensors`` flattened and cast to little-endian float32, concatenated (a pack's values)."""
    import torch

    flat = [t.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for t in tensors]
    if not flat:
        return b""
    values = torch.cat(flat).numpy()
    return values.astype("<f4", copy=False).tobytes()


__all__ = ["LocalLayout", "float32_values", "local_layout", "named_modules", "selects"]
