"""FLOPs count the graph aggregation and the attention; measurements of exported files agree."""

import torch

from gcnshrink.layouts import get_layout
from gcnshrink.measure import count_flops
from gcnshrink.models import create_model


def test_gcn_flops_count_attention_and_aggregation_exactly():
    layout = get_layout("hand21")
    nodes, c, t, chunks, k, f, hidden, classes = 21, 3, 8, 4, 2, 3, 5, 4
    model = create_model(
        "gcn",
        num_classes=classes,
        layout=layout,
        chunks=chunks,
        num_blocks=1,
        heads=1,
        head_width=f,
        key_width=k,
        hidden=hidden,
    )
    d_in = c * chunks
    expected = (
        2 * nodes * t * c * chunks  # chunk means (einsum over frames)
        + 2 * (2 * nodes * d_in * k)  # query and key projections
        + 2 * nodes * d_in * f  # value projection
        + 2 * nodes * nodes * k  # attention scores Q·Kᵀ
        + 2 * nodes * nodes * f  # aggregation A·Z
        + 2 * nodes * f * hidden  # fully connected layer
        + 2 * hidden * classes  # classifier
    )
    assert count_flops(model, frames=t) == expected


def test_stgcn_flops_include_the_graph_einsum():
    torch.manual_seed(0)
    model = create_model("stgcn", num_classes=3, layout=get_layout("sbu15"), base_width=4)
    total = count_flops(model, frames=16)
    # the einsum (N·M, K, C, T, V) x (K, V, V) of block 0 alone: 2·M·K·C·T·V·V
    block0_aggregation = 2 * 2 * 3 * 4 * 16 * 15 * 15
    assert total > block0_aggregation
    # every cost but the tiny classifier grows with the number of frames
    assert 1.99 * total <= count_flops(model, frames=32) <= 2 * total
