"""The model zoo: registry, every built-in layout, ST-GCN's original parameters, unit graphs,
determinism, sequence lengths and configs that round-trip through JSON."""

from __future__ import annotations

import json

import pytest
import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.layouts import LAYOUTS, get_layout
from gcnshrink.models import available_models, create_model, model_class

ARCHS = available_models()


def small_config(arch: str, **overrides) -> dict:
    # ST-GCN at its default width is 3 M parameters; the behaviour under test does not need that
    return {**model_class(arch).tiny_config(), **overrides}


def forward(model, x):
    with torch.no_grad():
        return model(x)


def all_tensors(model) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


# ---------------------------------------------------------------------------- registry
def test_registry_lists_the_zoo():
    assert {"gcn", "stgcn"} <= set(available_models())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_every_layout_builds_and_runs(arch, layout_name):
    layout = get_layout(layout_name)
    model = create_model(arch, **small_config(arch, num_classes=7, layout=layout)).eval()
    assert model.arch == arch
    assert model.layout == layout and model.num_classes == 7
    x = torch.randn(2, model.in_channels, 12, layout.num_joints, layout.persons)
    logits = forward(model, x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    # the example input the tools use has the layout's V and M
    ex = model.example_input(1, 8)
    assert ex.shape == (1, model.in_channels, 8, layout.num_joints, layout.persons)
    assert tuple(ex.shape) == model.input_shape(1, 8)


def test_unknown_architecture_lists_the_available_ones():
    with pytest.raises(GcnshrinkError) as info:
        create_model("resnet50", num_classes=5, layout=get_layout("ntu25"))
    message = str(info.value)
    assert "resnet50" in message
    for arch in ARCHS:
        assert arch in message


BAD_CONFIGS = {
    "negative-width": ("gcn", {"hidden": -3}, "hidden must be between 0 and"),
    "absurd-width": ("gcn", {"head_width": 10**9}, "head_width must be between 1 and"),
    "float-width": ("gcn", {"head_width": 16.0}, "head_width must be an integer, got 16.0"),
    "bool-width": ("stgcn", {"base_width": True}, "base_width must be an integer"),
    "string-count": ("gcn", {"heads": "8"}, "heads must be an integer, got '8'"),
    "zero-classes": ("stgcn", {"num_classes": 0}, "num_classes must be between 1 and"),
    "mix-range": ("gcn", {"mix": 1.5}, "mix must be between 0 and 1"),
    "nan-dropout": ("stgcn", {"dropout": float("nan")}, "dropout must be between 0 and 1"),
    "unknown-key": ("gcn", {"hiden": 32}, "unknown config key 'hiden'; known: "),
    "layout-type": ("stgcn", {"layout": 25}, "layout must be a layout name"),
    "layout-dict": ("gcn", {"layout": {"name": "x"}}, "layout is not a valid skeleton layout"),
    "layout-name": ("gcn", {"layout": "ntu26"}, "unknown skeleton layout 'ntu26'"),
    "gcn-block-keys": ("gcn", {"blocks": [{"value_widths": [4]}]}, "missing key_widths"),
    "gcn-heads-differ": (
        "gcn",
        {"blocks": [{"value_widths": [4, 4], "key_widths": [2]}]},
        "one value and one key width per head",
    ),
    "stgcn-chain": (
        "stgcn",
        {"blocks": [{"in": 3, "mid": 8, "out": 8, "stride": 1, "residual": "none"}] * 2},
        r"blocks\[1\].in is 3, the width before it is 8",
    ),
    "stgcn-identity": (
        "stgcn",
        {"blocks": [{"in": 3, "mid": 8, "out": 8, "stride": 1, "residual": "identity"}]},
        "identity residual but changes the width",
    ),
    "stgcn-data-bn": ("stgcn", {"data_bn": "CV"}, "data_bn must be one of 'VC', 'MVC'"),
    "stgcn-importance": ("stgcn", {"edge_importance": "yes"}, "edge_importance must be true"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_the_architecture_and_key(case):
    arch, override, message = BAD_CONFIGS[case]
    with pytest.raises(GcnshrinkError, match=message) as info:
        # an absurd width must fail here, not after allocating a terabyte of weights
        create_model(arch, **small_config(arch, **override))
    assert str(info.value).startswith(f"{arch} config: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_needs_classes_and_layout(arch):
    with pytest.raises(GcnshrinkError, match="config needs num_classes and layout"):
        create_model(arch)


def test_config_accepts_a_layout_object_its_dict_or_its_name():
    built = [
        create_model("gcn", **small_config("gcn", layout=layout))
        for layout in (get_layout("ntu25"), get_layout("ntu25").to_dict(), "ntu25")
    ]
    assert built[0].config == built[1].config == built[2].config
    assert built[0].config["layout"] == get_layout("ntu25").to_dict()
    assert built[0].layout == get_layout("ntu25")


def test_unknown_layout_is_a_clear_error():
    with pytest.raises(GcnshrinkError, match="ntu25"):
        get_layout("ntu26")


# ---------------------------------------------------------------------------- ST-GCN as published
def original_stgcn_keys() -> set[str]:
    """The state-dict keys of the original ST-GCN (mmskeleton's st_gcn.Model, spatial strategy,
    edge_importance_weighting=True) for 10 blocks with residual convolutions in blocks 4 and 7."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"A", *(f"data_bn.{p}" for p in bn), "fcn.weight", "fcn.bias"}
    for i in range(10):
        pre = f"st_gcn_networks.{i}"
        keys |= {
            f"{pre}.gcn.conv.weight",
            f"{pre}.gcn.conv.bias",
            f"{pre}.tcn.2.weight",
            f"{pre}.tcn.2.bias",
        }
        keys |= {f"{pre}.tcn.0.{p}" for p in bn} | {f"{pre}.tcn.3.{p}" for p in bn}
        if i in (4, 7):
            keys |= {f"{pre}.residual.0.weight", f"{pre}.residual.0.bias"}
            keys |= {f"{pre}.residual.1.{p}" for p in bn}
        keys.add(f"edge_importance.{i}")
    return keys


def test_stgcn_ntu60_matches_the_original_parameters():
    model = create_model("stgcn", num_classes=60, layout=get_layout("ntu25"))
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 3_098_832
    assert len(state) == 172
    assert set(state) == original_stgcn_keys()
    expected_shapes = {
        "A": (3, 25, 25),
        "data_bn.weight": (75,),
        "st_gcn_networks.0.gcn.conv.weight": (192, 3, 1, 1),
        "st_gcn_networks.0.tcn.2.weight": (64, 64, 9, 1),
        "st_gcn_networks.4.residual.0.weight": (128, 64, 1, 1),
        "st_gcn_networks.7.gcn.conv.weight": (768, 128, 1, 1),
        "st_gcn_networks.9.tcn.3.running_var": (256,),
        "edge_importance.9": (3, 25, 25),
        "fcn.weight": (60, 256, 1, 1),
        "fcn.bias": (60,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key


def test_stgcn_adjacency_is_the_spatial_partitioning():
    model = create_model("stgcn", num_classes=5, layout=get_layout("ntu25"), base_width=8)
    a = model.A
    # column-normalised: every joint's partitions together sum to 1 over its neighbourhood
    assert torch.allclose(a.sum(dim=(0, 1)), torch.ones(25))
    # partition 0 is the root itself, on the diagonal only
    assert torch.equal(a[0], torch.diag(torch.diagonal(a[0])))
    assert (torch.diagonal(a[0]) > 0).all()


# ---------------------------------------------------------------------------- unit graphs
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout_name", ["hand21", "ntu25"])
def test_unit_graph_matches_the_model_tensors(arch, layout_name):
    model = create_model(arch, **small_config(arch, num_classes=6, layout=layout_name))
    graph = model.unit_graph()
    graph.check_against(all_tensors(model))
    names = {b.name for b in graph.prunable}
    assert names, "no prunable tensors"
    assert names <= dict(model.named_parameters()).keys()
    # every weight matrix/kernel of the model is declared prunable
    weights = {n for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() >= 2}
    assert weights == names


@pytest.mark.parametrize("arch", ARCHS)
def test_unit_graph_check_catches_a_different_model(arch):
    model = create_model(arch, **small_config(arch, num_classes=6, layout="sbu15"))
    other = create_model(arch, **small_config(arch, num_classes=9, layout="sbu15"))
    with pytest.raises(ValueError):
        model.unit_graph().check_against(all_tensors(other))


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("arch", ARCHS)
def test_eval_mode_is_deterministic(arch, make_model):
    model = make_model(arch)
    model.train()  # dropout active: two passes differ ...
    x = model.example_input(3, 16)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.equal(a, b)
    model.eval()  # ... and in eval mode they never do
    first = forward(model, x)
    torch.manual_seed(3)
    assert torch.equal(first, forward(model, x))
    # a sample's logits do not depend on the rest of the batch
    assert torch.allclose(forward(model, x[:1]), first[:1], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("frames", [4, 5, 7, 33])
def test_any_sequence_length_at_least_chunks(arch, frames, make_model):
    model = make_model(arch)
    chunks = model.config.get("chunks", 4)
    assert frames >= chunks
    logits = forward(model, model.example_input(2, frames))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_gcn_refuses_fewer_frames_than_chunks(make_model):
    model = make_model("gcn")
    with pytest.raises(ValueError, match="chunks"):
        forward(model, torch.randn(1, 3, model.config["chunks"] - 1, 15, 2))


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trips_through_json(arch, make_model):
    model = make_model(arch, layout="ntu25", num_classes=11)
    text = json.dumps(model.config)
    config = json.loads(text)
    rebuilt = create_model(arch, **config).eval()
    assert rebuilt.config == config
    assert json.dumps(rebuilt.config) == text
    own = model.state_dict()
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    rebuilt.load_state_dict(own, strict=True)
    x = model.example_input(2, 16)
    assert torch.equal(forward(rebuilt, x), forward(model, x))


def test_config_overrides_change_the_architecture():
    layout = get_layout("sbu15")
    narrow = create_model("gcn", num_classes=5, layout=layout, heads=2, head_width=4)
    assert narrow.config["blocks"][0]["value_widths"] == [4, 4]
    assert narrow.blocks[0].value.weight.shape[0] == 8
    wide = create_model("stgcn", num_classes=5, layout=layout, base_width=16)
    assert wide.fcn.weight.shape[1] == 64  # 4 x base width in the last blocks
