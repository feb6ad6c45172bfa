"""The unit graph: accessibility, co-accessibility, inconsistent connections, dead units.

Hand-made cases with answers worked out by hand, on a toy chain and on both zoo models.
"""

import torch

from gcnshrink.graph import (
    AxisMap,
    Link,
    TensorBinding,
    UnitGraph,
    UnitSpace,
    accessible,
    coaccessible,
    masks_from_weights,
    topology_summary,
)
from gcnshrink.graph import consistent as consistent_masks
from gcnshrink.layouts import get_layout
from gcnshrink.models import create_model


def linear(name, source, s_w, target, t_w):
    return TensorBinding(
        name,
        {0: AxisMap.direct(target, t_w), 1: AxisMap.direct(source, s_w)},
        prunable=True,
        source_axis=1,
        target_axis=0,
    )


def toy_graph():
    spaces = [
        UnitSpace("in", 2, "input"),
        UnitSpace("h1", 3),
        UnitSpace("h2", 2),
        UnitSpace("out", 1, "output"),
    ]
    bindings = [
        linear("w1", "in", 2, "h1", 3),
        linear("w2", "h1", 3, "h2", 2),
        linear("w3", "h2", 2, "out", 1),
    ]
    return UnitGraph(spaces, bindings)


def toy_masks():
    w1 = torch.zeros(3, 2, dtype=torch.bool)
    w1[0, 0] = w1[1, 1] = True  # in0 -> h1_0, in1 -> h1_1
    w2 = torch.zeros(2, 3, dtype=torch.bool)
    w2[0, 0] = w2[1, 2] = True  # h1_0 -> h2_0, h1_2 -> h2_1 (h1_2 has no input)
    w3 = torch.zeros(1, 2, dtype=torch.bool)
    w3[0, 0] = True  # h2_0 -> out
    return {"w1": w1, "w2": w2, "w3": w3}


def test_toy_chain_known_answers():
    g, masks = toy_graph(), toy_masks()
    acc, coacc = accessible(g, masks), coaccessible(g, masks)
    assert acc["h1"].tolist() == [True, True, False]
    assert acc["h2"].tolist() == [True, False]
    assert coacc["h1"].tolist() == [True, False, False]
    assert coacc["h2"].tolist() == [True, False]
    consistent = consistent_masks(g, masks)
    # in1 -> h1_1 leads nowhere; h1_2 -> h2_1 starts nowhere
    assert consistent["w1"].view(3, 2).tolist() == [[True, False], [False, False], [False, False]]
    assert consistent["w2"].view(2, 3).sum() == 1
    summary = topology_summary(g, masks)
    assert summary["inconsistent_connections"] == 2
    assert summary["dead_units"] == 3  # h1_1, h1_2, h2_1


def test_identity_link_carries_accessibility():
    spaces = [
        UnitSpace("in", 2, "input"),
        UnitSpace("a", 2),
        UnitSpace("b", 2),
        UnitSpace("out", 1, "output"),
    ]
    bindings = [
        linear("w1", "in", 2, "a", 2),
        linear("w2", "a", 2, "b", 2),
        linear("w3", "b", 2, "out", 1),
    ]
    g = UnitGraph(spaces, bindings, [Link.identity("a", "b", 2)])
    masks = {
        "w1": torch.ones(2, 2, dtype=torch.bool),
        "w2": torch.zeros(2, 2, dtype=torch.bool),
        "w3": torch.ones(1, 2, dtype=torch.bool),
    }
    assert accessible(g, masks)["b"].all()  # through the residual alone
    assert topology_summary(g, masks)["inconsistent_connections"] == 0


def small_gcn(layout="hand21"):
    torch.manual_seed(0)
    return create_model(
        "gcn",
        num_classes=5,
        layout=get_layout(layout),
        heads=2,
        head_width=4,
        key_width=3,
        hidden=8,
    )


def small_stgcn():
    torch.manual_seed(0)
    return create_model("stgcn", num_classes=5, layout=get_layout("sbu15"), base_width=4)


def topology(model):
    g = model.unit_graph()
    return g, topology_summary(g, masks_from_weights(g, dict(model.named_parameters())))


def test_dense_models_are_consistent():
    for model in (small_gcn(), small_gcn("sbu15"), small_stgcn()):
        g, summary = topology(model)
        g.check_against({**dict(model.named_parameters()), **dict(model.named_buffers())})
        assert summary["inconsistent_connections"] == 0
        assert summary["dead_units"] == 0


def test_gcn_cut_fc_makes_everything_inconsistent():
    model = small_gcn()
    with torch.no_grad():
        model.fc.weight.zero_()
    g, summary = topology(model)
    prunable_nonzero = sum(
        int((dict(model.named_parameters())[b.name] != 0).sum()) for b in g.prunable
    )
    # blocks lead nowhere (no kept fc weight), the classifier reads units nothing reaches
    assert summary["inconsistent_connections"] == prunable_nonzero


def test_gcn_dead_head_makes_its_attention_inconsistent():
    model = small_gcn()
    cfg = model.config["blocks"][0]
    head_w, key_w = cfg["value_widths"][0], cfg["key_widths"][0]
    with torch.no_grad():
        model.blocks[0].value.weight[:head_w].zero_()
    _, summary = topology(model)
    in_width = model.config["in_channels"] * model.config["chunks"]
    # the query and key weights of head 0 steer a head whose outputs are all gone
    assert summary["tensors"]["blocks.0.query.weight"]["inconsistent"] == key_w * in_width
    assert summary["tensors"]["blocks.0.key.weight"]["inconsistent"] == key_w * in_width
    # and block 1 reads head 0's outputs, which now carry no signal: those columns are inconsistent
    block1_width = sum(model.config["blocks"][1]["value_widths"])
    assert summary["tensors"]["blocks.1.value.weight"]["inconsistent"] == head_w * block1_width


def test_stgcn_identity_residual_keeps_block_accessible():
    model = small_stgcn()
    with torch.no_grad():
        model.st_gcn_networks[1].tcn[2].weight.zero_()  # block 1 is an identity-residual block
    _, summary = topology(model)
    # the graph conv of block 1 feeds only that temporal conv: all of it is useless now
    w = model.st_gcn_networks[1].gcn.conv.weight
    assert summary["tensors"]["st_gcn_networks.1.gcn.conv.weight"]["inconsistent"] == w.numel()
    # but block 1's output is still reached through the residual: block 2 stays consistent
    assert summary["tensors"]["st_gcn_networks.2.gcn.conv.weight"]["inconsistent"] == 0


def test_stgcn_interleaved_rows_map_to_one_channel():
    model = small_stgcn()
    conv = model.st_gcn_networks[2].gcn.conv
    mid = model.config["blocks"][2]["mid"]
    with torch.no_grad():
        for k in range(3):
            conv.weight[k * mid + 1].zero_()  # every partition's row of channel 1
    _, summary = topology(model)
    out_w = model.config["blocks"][2]["out"]
    # channel 1 of the graph conv is unreachable: its column of the temporal conv (9 taps) is inconsistent
    assert summary["tensors"]["st_gcn_networks.2.tcn.2.weight"]["inconsistent"] == out_w * 9
    assert summary["spaces"]["block2.gcn"]["not_accessible"] == 1
