"""Deterministic model states for the golden parameter-pack vectors.

Each builder seeds torch (``torch.manual_seed``) before constructing its
modules and then overwrites every floating tensor of the state with values
from a small integer generator (:func:`fill`), so the golden values depend
only on IEEE-754 rounding, not on torch's initialisation algorithms: the
vectors stay valid across torch versions.

``BUILDERS`` maps a builder name to a function returning a *fresh* state
(a module, ``{"model": module, ...}`` or ``{"modules": {...}}``).  ``CASES``
lists the golden cases: a builder, an optional filter and where the expected
vectors come from ("reference": the reference worker computed them;
"spec": the reference cannot express the case (multi-module states,
filters) and an independent implementation of docs/protocol.md §3 in
``make_golden.py`` computed them).

This file must import without /work/shared: tests use it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# ---------------------------------------------------------------------------
# Deterministic values


def _values(count: int, seed: int) -> list[float]:
    """``count`` doubles in about [-8, 8] from a 64-bit LCG; none is exact in float32 by design
    (odd numerators over 1237), so float16/bfloat16/float64 rounding is exercised."""
    out = []
    x = (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF
    for _ in range(count):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append(((x >> 33) % 20001 - 10000) / 1237.0)
    return out


def modules_of(state: Any) -> list[nn.Module]:
    if isinstance(state, dict) and "model" in state:
        return [state["model"]]
    if isinstance(state, dict) and "modules" in state:
        return [state["modules"][name] for name in sorted(state["modules"])]
    return [state]


@torch.no_grad()
def fill(state: Any, seed: int) -> Any:
    """Overwrite every non-empty floating tensor of ``state`` deterministically (in place)."""
    for m_index, module in enumerate(modules_of(state)):
        state_dict = module.state_dict()
        for k_index, key in enumerate(sorted(state_dict)):
            tensor = state_dict[key]
            if not torch.is_floating_point(tensor) or tensor.numel() == 0:
                continue
            values = _values(tensor.numel(), seed * 1_000_003 + m_index * 1009 + k_index)
            source = torch.tensor(values, dtype=torch.float64).reshape(tensor.shape)
            tensor.copy_(source.to(tensor.dtype))
    return state


# ---------------------------------------------------------------------------
# Builders


def _linear() -> Any:
    torch.manual_seed(1)
    return fill(nn.Linear(4, 3), 1)


def _mlp() -> Any:
    torch.manual_seed(2)
    return fill(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), 2)


def _model_optimizer_dict() -> Any:
    torch.manual_seed(3)
    model = fill(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # Other keys are not transported; they must not disturb the layout.
    return {"model": model, "optimizer": optimizer, "step": 7, "notes": "not transported"}


def _batchnorm() -> Any:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Flatten(), nn.BatchNorm1d(12))
    fill(model, 4)
    with torch.no_grad():
        model[1].running_var.abs_()
        model[3].running_var.abs_()
        model[1].num_batches_tracked.fill_(5)  # integer buffer: never transported
        model[3].num_batches_tracked.fill_(11)
    return model


def _lstm() -> Any:
    torch.manual_seed(5)

    class LstmModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 4, num_layers=2)
            self.head = nn.Linear(4, 2)

    return fill(LstmModel(), 5)


def _tied_weights() -> Any:
    torch.manual_seed(6)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.proj = nn.Linear(3, 3)
            self.out = nn.Linear(3, 5)
            self.out.weight = self.embed.weight  # two state_dict keys, one Parameter

    model = Tied()
    assert model.out.weight is model.embed.weight
    return fill(model, 6)


def _scalar_and_empty() -> Any:
    torch.manual_seed(7)

    class ScalarEmpty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.0))
            self.register_parameter("empty", nn.Parameter(torch.empty(0)))
            self.register_parameter("empty_matrix", nn.Parameter(torch.empty(3, 0)))
            self.register_buffer("empty_buffer", torch.empty(0, 2))
            self.register_buffer("scalar_buffer", torch.tensor(0.0, dtype=torch.float64))
            self.linear = nn.Linear(2, 2)

    return fill(ScalarEmpty(), 7)


def _mixed_dtypes() -> Any:
    torch.manual_seed(8)

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.half = nn.Linear(3, 2).to(torch.float16)
            self.bf = nn.Parameter(torch.zeros(2, 3, dtype=torch.bfloat16))
            self.f64 = nn.Parameter(torch.zeros(5, dtype=torch.float64))
            self.f32 = nn.Parameter(torch.zeros(4))
            self.register_buffer("f64_extremes", torch.zeros(6, dtype=torch.float64))
            self.register_buffer("ints", torch.arange(4, dtype=torch.int32))
            self.register_buffer("flags", torch.tensor([True, False]))
            self.register_buffer("complex", torch.ones(2, dtype=torch.complex64))

    model = fill(Mixed(), 8)
    with torch.no_grad():
        # float64 -> float32 overflows to inf, underflows to (signed) zero, rounds to nearest.
        model.f64_extremes.copy_(
            torch.tensor(
                [1e300, -1e300, 1e-300, -1e-300, 1.0 + 2.0**-30, 2.0**-140], dtype=torch.float64
            )
        )
    return model


def _float8() -> Any:
    torch.manual_seed(9)

    class F8(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e4m3 = nn.Parameter(torch.zeros(6, dtype=torch.float8_e4m3fn), requires_grad=False)
            self.register_buffer("e5m2", torch.zeros(2, 3, dtype=torch.float8_e5m2))
            self.w = nn.Parameter(torch.zeros(3))

    return fill(F8(), 9)


def _noncontiguous_buffer() -> Any:
    torch.manual_seed(10)

    class NonContiguous(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 4)
            self.register_buffer("t", torch.zeros(3, 5).t())  # transposed view
            self.register_buffer("strided", torch.zeros(4, 6)[:, ::2])  # step-2 slice
            self.register_buffer("half_t", torch.zeros(2, 3, dtype=torch.float16).t())
            # Contiguous, with a non-zero storage offset.
            self.register_buffer("offset", torch.zeros(7)[2:])
            self.conv = nn.Conv2d(2, 3, 2).to(memory_format=torch.channels_last)

    model = NonContiguous()
    assert not model.conv.weight.is_contiguous() and model.offset.storage_offset() == 2
    assert not model.t.is_contiguous() and not model.strided.is_contiguous()
    assert not model.half_t.is_contiguous()
    return fill(model, 10)


def _deep_sequential() -> Any:
    torch.manual_seed(11)
    # 13 layers: keys "0.", "1.", "10.", "11.", "12.", "2.", ... in text order.
    return fill(nn.Sequential(*[nn.Linear(2, 2) for _ in range(13)]), 11)


def _odd_names() -> Any:
    torch.manual_seed(12)

    class OddNames(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Upper case sorts before lower case, "_" between them, non-ASCII last.
            self.register_parameter("beta", nn.Parameter(torch.zeros(2)))
            self.register_parameter("Alpha", nn.Parameter(torch.zeros(2)))
            self.register_parameter("_private", nn.Parameter(torch.zeros(1)))
            self.register_parameter("zeta", nn.Parameter(torch.zeros(1)))
            self.register_parameter("\u00e9t\u00e9", nn.Parameter(torch.zeros(2)))
            self.register_parameter("w10", nn.Parameter(torch.zeros(1)))
            self.register_parameter("w9", nn.Parameter(torch.zeros(1)))

    return fill(OddNames(), 12)


def _special_values() -> Any:
    torch.manual_seed(13)

    class Special(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(
                torch.tensor(
                    [
                        float("inf"),
                        float("-inf"),
                        -0.0,
                        0.0,
                        1.401298464324817e-45,  # smallest float32 subnormal
                        3.4028234663852886e38,  # float32 max
                        -1.1754943508222875e-38,  # smallest normal, negative
                        float("nan"),
                        -float("nan"),  # sign bit set
                    ]
                )
            )
            self.h = nn.Parameter(
                torch.tensor([65504.0, -0.0, 6e-08, float("inf")], dtype=torch.float16)
            )

    return Special()


def _int_buffers_only() -> Any:
    torch.manual_seed(14)

    class IntsOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("counter", torch.tensor(3, dtype=torch.long))
            self.register_buffer("table", torch.arange(6, dtype=torch.int16).reshape(2, 3))

    return IntsOnly()


def _multi_module() -> Any:
    torch.manual_seed(15)
    modules = {
        "encoder": nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        "decoder": nn.Linear(2, 3),
        # "b10" sorts before "b2" as text.
        "b2": nn.BatchNorm1d(2),
        "b10": nn.Linear(1, 2, bias=False).to(torch.float16),
    }
    state = {"modules": modules}
    fill(state, 15)
    with torch.no_grad():
        modules["b2"].running_var.abs_()
        modules["b2"].num_batches_tracked.fill_(2)
    return state


BUILDERS: dict[str, Callable[[], Any]] = {
    "linear": _linear,
    "mlp": _mlp,
    "model_optimizer_dict": _model_optimizer_dict,
    "batchnorm": _batchnorm,
    "lstm": _lstm,
    "tied_weights": _tied_weights,
    "scalar_and_empty": _scalar_and_empty,
    "mixed_dtypes": _mixed_dtypes,
    "float8": _float8,
    "noncontiguous_buffer": _noncontiguous_buffer,
    "deep_sequential": _deep_sequential,
    "odd_names": _odd_names,
    "special_values": _special_values,
    "int_buffers_only": _int_buffers_only,
    "multi_module": _multi_module,
}

# Builders the reference worker cannot flatten (it has no {"modules": ...} support).
SPEC_ONLY_BUILDERS = frozenset({"multi_module"})


def _filter(include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> dict:
    return {"include_globs": list(include), "exclude_globs": list(exclude)}


# case name -> (builder, filter or None)
FILTERED_CASES: dict[str, tuple[str, dict]] = {
    "deep_sequential__include_0": ("deep_sequential", _filter(include=("0.*",))),
    "deep_sequential__exclude_bias": ("deep_sequential", _filter(exclude=("*.bias",))),
    "deep_sequential__include_1x_exclude_weight": (
        "deep_sequential",
        _filter(include=("1*", "2.*"), exclude=("*.weight",)),
    ),
    "deep_sequential__exclude_all": ("deep_sequential", _filter(exclude=("*",))),
    "batchnorm__exclude_running": ("batchnorm", _filter(exclude=("*running_*",))),
    "mixed_dtypes__include_bracket": (
        "mixed_dtypes",
        _filter(include=("[bf]*",), exclude=("f64*",)),
    ),
    # Globs are case-sensitive (fnmatchcase): "B*" excludes nothing, "A*" keeps only "Alpha".
    "odd_names__case_sensitive": (
        "odd_names",
        _filter(include=("A*", "b*", "\u00e9*", "w?"), exclude=("B*",)),
    ),
    "multi_module__include_encoder_b": (
        "multi_module",
        _filter(include=("encoder.*", "b*"), exclude=("*.bias",)),
    ),
    "multi_module__exclude_running": (
        "multi_module",
        _filter(exclude=("*.running_*", "decoder.*")),
    ),
}


def cases() -> dict[str, tuple[str, dict | None]]:
    """Every golden case: name -> (builder name, filter dict or None)."""
    out: dict[str, tuple[str, dict | None]] = {name: (name, None) for name in BUILDERS}
    out.update(FILTERED_CASES)
    return out


# ---------------------------------------------------------------------------
# Helpers shared by the tests


def named_tensors(state: Any) -> list[tuple[str, torch.Tensor]]:
    """Every state_dict tensor of ``state`` by its full layout name (floats and others)."""
    out = []
    if isinstance(state, dict) and "modules" in state and "model" not in state:
        named = [(name, state["modules"][name]) for name in sorted(state["modules"])]
    else:
        named = [("", modules_of(state)[0])]
    for module_name, module in named:
        for key, tensor in sorted(module.state_dict().items()):
            out.append((f"{module_name}.{key}" if module_name else key, tensor))
    return out


@torch.no_grad()
def zero_floats(state: Any) -> Any:
    """Zero every floating tensor in place (a target that shares no values with the source)."""
    for _, tensor in named_tensors(state):
        if torch.is_floating_point(tensor):
            tensor.zero_()
    return state


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """An integer view of a tensor's bits (NaN == NaN, -0.0 != 0.0) for exact comparisons."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    if tensor.is_floating_point():
        return tensor.view(_INT_VIEW[tensor.element_size()])
    return tensor


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Dtype-, shape- and bit-exact tensor equality."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def snapshot(state: Any) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in named_tensors(state)}
