"""FLOPs count the graph aggregation and the attention; measurements of exported files agree."""

import torch

from gcnshrink.checkpoint import Checkpoint, save_checkpoint
from gcnshrink.export import export_model
from gcnshrink.flops import forward_flop_counts
from gcnshrink.layouts import get_layout
from gcnshrink.measure import (
    DEPLOYABLE_KEYS,
    count_flops,
    flops_by_operator,
    measure_deployable,
    measure_model,
)
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

    # per operator (benchmarks/ctf.py --profile): the convolutions, and the einsum as bmm, with
    # block 0's aggregation among the bmm FLOPs; the parts add up to the total
    parts = flops_by_operator(model, frames=16)
    assert set(parts) >= {"convolution", "bmm"} and parts["bmm"] >= block0_aggregation
    assert sum(parts.values()) == total


def test_flops_per_module_price_one_convolution_and_leave_the_training_mode():
    """The counter behind the reports and ctf's FLOP prices: per module, exact, side-effect free."""
    model = create_model("stgcn", num_classes=3, layout=get_layout("sbu15"), base_width=4)
    model.train()
    counts = forward_flop_counts(model, frames=16)
    assert model.training
    # block 0's 1x1 graph convolution, 3 -> K·C = 3·4 channels on M=2 persons, 16 frames, 15 joints
    assert counts["st_gcn_networks.0.gcn.conv"] == {"convolution": 2 * 2 * 3 * 12 * 16 * 15}
    assert counts["Global"] == flops_by_operator(model, frames=16)


def test_the_sweep_and_inspect_measure_a_shipped_model_alike(tiny_data, tmp_path):
    """The sweep measures a model compacted in memory; inspect and gate measure the exported file.
    Both go through the same functions, so the same key is the same number."""
    torch.manual_seed(0)
    model = create_model(
        "gcn",
        num_classes=tiny_data.num_classes,
        layout=tiny_data.layout,
        in_channels=tiny_data.in_channels,
        heads=2,
        head_width=4,
        hidden=8,
    ).eval()
    calibration = tiny_data.x_val[:64]
    deployable = measure_deployable(model, tiny_data, calibration)
    assert set(deployable) == {*DEPLOYABLE_KEYS, "compaction_relative_diff"}
    ckpt = Checkpoint.from_model(model, tiny_data.class_names, {})
    export_model(ckpt, tmp_path, calibration=calibration, onnx=False, sparse=True)
    shipped = measure_model(tmp_path / "model.sparse.safetensors", tiny_data)
    same = ("params", "nonzero", "flops", "bytes_dense", "bytes_sparse", "accuracy")
    assert {k: deployable[k] for k in same} == {k: shipped[k] for k in same}
    assert deployable["latency_ms"] > 0 and deployable["bytes_onnx"] > 0


def test_checkpoint_latency_is_onnx_runtime_latency(tmp_path):
    """A checkpoint's latency_ms is timed on its ONNX export, like the sweep's and an ONNX file's."""
    model = create_model(
        "gcn", num_classes=3, layout=get_layout("sbu15"), heads=1, head_width=4, hidden=8
    )
    path = save_checkpoint(Checkpoint.from_model(model, [], {}), tmp_path / "m.pt")
    measured = measure_model(path, latency=True, flops=False)
    assert measured["latency_ms"] > 0 and measured["bytes_onnx"] > 0
    assert measured["flops"] is None
