"""The generic torch layout (docs/protocol.md §3) and its hash, computed independently here."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from worker.errors import LayoutError
from worker.layout import compute_layout, layout_hash, state_modules
from worker.protocol import NO_FILTER, StateFilter


def spec_hash(entries: list[dict]) -> str:
    """docs/protocol.md §3, written out from the text."""
    blob = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return "torch-layout-" + hashlib.sha256(blob).hexdigest()


def spec_entries(modules: dict[str, nn.Module], flt: StateFilter = NO_FILTER) -> list[dict]:
    entries = []
    for name in sorted(modules):
        state_dict = modules[name].state_dict()
        for key in sorted(state_dict):
            full = f"{name}.{key}" if name else key
            tensor = state_dict[key]
            if tensor.is_floating_point() and flt.selects(full):
                entries.append(
                    {
                        "name": full,
                        "shape": list(tensor.shape),
                        "dtype": str(tensor.dtype),
                        "numel": tensor.numel(),
                    }
                )
    return entries


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_single_module_layout_and_hash():
    model = net()
    layout = compute_layout(model)
    assert layout.entries == spec_entries({"": model})
    assert layout.hash == spec_hash(layout.entries)
    assert layout.ignored_non_float_keys == ["1.num_batches_tracked"]
    assert layout.excluded_float_keys == []
    assert layout.parameter_count == sum(e["numel"] for e in layout.entries) == 16 + 16 + 10
    assert layout.entries[0] == {
        "name": "0.bias",
        "shape": [4],
        "dtype": "torch.float32",
        "numel": 4,
    }


def test_a_known_hash_stays_stable():
    # One float tensor of shape [2] named "w": the hash of a fixed JSON string.
    module = nn.Module()
    module.register_buffer("w", torch.zeros(2))
    expected_json = b'[{"dtype":"torch.float32","name":"w","numel":2,"shape":[2]}]'
    assert (
        compute_layout(module).hash == "torch-layout-" + hashlib.sha256(expected_json).hexdigest()
    )


def test_model_dict_state_is_the_same_layout_as_the_module():
    model = net()
    assert (
        compute_layout({"model": model, "optimizer": object()}).hash == compute_layout(model).hash
    )


def test_modules_state_walks_names_in_sorted_order_with_prefixes():
    modules = {
        "zeta": nn.Linear(1, 1),
        "alpha": nn.Sequential(nn.Linear(2, 1)),
        "Mid": nn.Linear(1, 2),
    }
    layout = compute_layout({"modules": modules})
    assert layout.included_keys == [
        "Mid.bias", "Mid.weight", "alpha.0.bias", "alpha.0.weight", "zeta.bias", "zeta.weight",
    ]  # fmt: skip
    assert layout.entries == spec_entries(modules)
    assert layout.hash == spec_hash(layout.entries)
    assert [name for name, _ in state_modules({"modules": modules})] == ["Mid", "alpha", "zeta"]


def test_filters_move_keys_to_excluded():
    flt = StateFilter(("0.*", "2.*"), ("*.bias",))
    layout = compute_layout(net(), flt)
    assert layout.included_keys == ["0.weight", "2.weight"]
    assert layout.excluded_float_keys == [
        "0.bias", "1.bias", "1.running_mean", "1.running_var", "1.weight", "2.bias",
    ]  # fmt: skip
    assert layout.ignored_non_float_keys == ["1.num_batches_tracked"]
    assert layout.hash == spec_hash(spec_entries({"": net()}, flt))
    assert layout.hash != compute_layout(net()).hash


def test_filters_see_full_names_of_named_modules():
    modules = {"enc": nn.Linear(2, 2), "head": nn.Linear(2, 1)}
    layout = compute_layout({"modules": modules}, StateFilter(("enc.*",), ()))
    assert layout.included_keys == ["enc.bias", "enc.weight"]
    assert layout.excluded_float_keys == ["head.bias", "head.weight"]


def test_dtype_and_shape_change_the_hash():
    base = compute_layout(net()).hash
    assert compute_layout(net().to(torch.float16)).hash != base
    wider = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    assert compute_layout(wider).hash != base


def test_values_do_not_change_the_hash():
    a, b = net(), net()
    with torch.no_grad():
        b[0].weight.add_(1)
    assert compute_layout(a).hash == compute_layout(b).hash


def test_layout_tensors_alias_the_model():
    model = net()
    layout = compute_layout(model)
    first = layout.tensors[layout.included_keys.index("0.weight")]
    with torch.no_grad():
        first.fill_(3.0)
    assert torch.all(model[0].weight == 3.0)
    assert not first.requires_grad


def test_plan_shape():
    plan = compute_layout(net(), StateFilter((), ("1.*",))).plan()
    assert plan == {
        "uses_custom_parameter_pack_hooks": False,
        "layout_hash": plan["layout_hash"],
        "included_keys": ["0.bias", "0.weight", "2.bias", "2.weight"],
        "excluded_float_keys": ["1.bias", "1.running_mean", "1.running_var", "1.weight"],
        "ignored_non_float_keys": ["1.num_batches_tracked"],
        "parameter_count": 16 + 10,
    }
    assert plan["layout_hash"] == layout_hash(
        compute_layout(net(), StateFilter((), ("1.*",))).entries
    )


def test_empty_layout_has_a_hash():
    layout = compute_layout(nn.ReLU())
    assert layout.entries == [] and layout.parameter_count == 0
    assert layout.hash == spec_hash([])


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        (42, "torch.nn.Module"),
        ({"weights": [1.0]}, "torch.nn.Module"),
        ({"model": "not a module"}, "state['model']"),
        ({"modules": {}}, "non-empty"),
        ({"modules": [nn.Linear(1, 1)]}, "non-empty dict"),
        ({"modules": {"": nn.Linear(1, 1)}}, "names must be non-empty"),
        ({"modules": {"a.b": nn.Linear(1, 1)}}, "without '.'"),
        ({"modules": {1: nn.Linear(1, 1)}}, "names must be"),
        ({"modules": {"a": nn.Linear(1, 1), 2: nn.Linear(1, 1)}}, "names must be"),
        ({"modules": {"a": 3}}, "state['modules']['a']"),
    ],
    ids=[
        "int", "plain-dict", "model-not-module", "modules-empty", "modules-list", "empty-name",
        "dotted-name", "int-name", "mixed-names", "value-not-module",
    ],
)  # fmt: skip
def test_unsupported_states_raise_layout_error(state, fragment):
    with pytest.raises(LayoutError) as info:
        compute_layout(state)
    assert fragment in str(info.value)


def test_non_tensor_state_dict_entries_are_ignored():
    class Extra(nn.Linear):
        def state_dict(self, *args, **kwargs):
            out = super().state_dict(*args, **kwargs)
            out["note"] = "not a tensor"
            return out

    layout = compute_layout(Extra(1, 1))
    assert layout.included_keys == ["bias", "weight"]
    assert layout.ignored_non_float_keys == ["note"]
