"""Compaction removes dead units and leaves the logits unchanged (docs/compaction.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gcnshrink.compact import (
    CONSTANT_FOLDED,
    CONSTANT_KEY,
    KEPT_ALIGNED,
    KEPT_COUPLED,
    KEPT_NOT_FOLDABLE,
    USELESS,
    ZERO,
    CompactionError,
    compact_model,
    kept_units,
)
from gcnshrink.errors import GcnshrinkError
from gcnshrink.layouts import get_layout
from gcnshrink.models import available_models, create_model
from gcnshrink.testing import conformance_model

FRAMES = 16


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These models are tiny: on a busy machine, OpenMP threads waiting for each other made one
    ST-GCN forward pass take 1.5 s instead of 10 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def signal_preserving_init(model) -> None:
    """He-normal weights and small random biases: with PyTorch's default init the logits of a
    three-block model hardly depend on the input, which would make the logit checks vacuous."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for binding in model.unit_graph().prunable:
            weight = params[binding.name]
            fan_in = weight.numel() // weight.shape[binding.target_axis]
            weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            params[binding.bias].normal_(0.0, 0.1)


def small_gcn(layout: str = "sbu15"):
    torch.manual_seed(0)
    model = create_model("gcn", layout=get_layout(layout), num_classes=5, heads=4, hidden=32)
    signal_preserving_init(model)
    return model.eval()


def small_stgcn():
    torch.manual_seed(0)
    model = create_model("stgcn", layout=get_layout("sbu15"), num_classes=5, base_width=8)
    # fresh batch norms are identities; trained ones shift and scale, which is what folding meets
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    signal_preserving_init(model)
    return model.eval()


def small_model(arch: str, layout: str = "sbu15"):
    """The zoo models above; any other registered architecture at its tiny config."""
    if arch == "gcn":
        return small_gcn(layout)
    if arch == "stgcn":
        return small_stgcn()
    return conformance_model(arch)


def calibration(model, batch: int = 4):
    torch.manual_seed(1)
    return model.example_input(batch, FRAMES)


def magnitude_prune(model, rate: float) -> None:
    """Set the smallest ``rate`` of every prunable weight to exact zero (masks baked in), and
    scale the survivors by 1/sqrt(1 - rate) so the signal keeps its size."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for binding in model.unit_graph().prunable:
            weight = params[binding.name]
            count = int(rate * weight.numel())
            if count:
                threshold = weight.abs().flatten().kthvalue(count).values
                weight[weight.abs() <= threshold] = 0.0
            weight.mul_(1.0 / math.sqrt(1.0 - rate))


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_logits(original, compacted, x, tolerance: float = 1e-5):
    before, after = logits(original, x), logits(compacted, x)
    relative = (after - before).abs().max() / before.abs().max()
    assert relative <= tolerance, f"relative logit difference {relative:.3g}"


def removed(result, space: str, reason: str) -> list[int]:
    return result.spaces[space].removed.get(reason, [])


# ---------------------------------------------------------------------------- random pruning
@pytest.mark.parametrize("arch", available_models())
@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # rebuilding empty heads
def test_random_pruning_compacts_without_changing_logits(arch, rate):
    model = small_model(arch)
    magnitude_prune(model, rate)
    x = calibration(model)

    if rate < 0.99:  # at 99 % the whole network may be dead: constant logits are then right
        assert logits(model, x).std(dim=0).max() > 1e-2, "logits do not depend on the input"

    result = compact_model(model, x)

    assert result.relative_diff <= 1e-5
    assert_same_logits(model, result.model, x)
    assert result.params_after <= result.params_before
    if rate == 0.99:  # this sparse, whole units are certainly dead
        assert result.params_after < result.params_before
        assert any(s.width_after < s.width_before for s in result.spaces.values())
    for name, space in result.spaces.items():
        if space.role != "hidden":
            assert space.width_after == space.width_before, name

    # the compacted model is described by its config alone (a checkpoint can rebuild it)
    config = json.loads(json.dumps(result.model.config))
    rebuilt = create_model(arch, **config)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    assert torch.equal(logits(rebuilt, x), logits(result.model, x))


@pytest.mark.parametrize("arch", available_models())
def test_compaction_is_idempotent(arch):
    model = small_model(arch, "hand21")
    magnitude_prune(model, 0.97)
    x = calibration(model)
    once = compact_model(model, x).model

    twice = compact_model(once, x)

    assert twice.params_after == twice.params_before
    assert all(not space.removed for space in twice.spaces.values())
    assert twice.max_abs_logit_diff == 0.0


@pytest.mark.parametrize("arch", available_models())
def test_dense_model_loses_nothing(arch):
    model = small_model(arch)
    x = calibration(model)

    result = compact_model(model, x)

    assert result.params_after == result.params_before
    assert result.model.config == model.config
    assert result.max_abs_logit_diff == 0.0


# ---------------------------------------------------------------------------- constant folding
def test_gcn_constant_units_are_folded_into_the_next_biases():
    model = small_gcn()
    first, last, hidden = [3, 17, 40], [5, 33], [7]
    with torch.no_grad():
        # no incoming weight, positive bias: after the row-stochastic aggregation and the ReLU
        # these units are nonzero constants
        for block, units in ((0, first), (2, last)):
            value = model.blocks[block].value
            value.weight[units] = 0.0
            value.bias[units] = torch.tensor([0.5, 1.0, 1.5][: len(units)])
        model.fc.weight[hidden] = 0.0
        model.fc.bias[hidden] = 0.8
    x = calibration(model)

    result = compact_model(model, x)

    assert removed(result, "block0.out", CONSTANT_FOLDED) == first
    # the last block reaches the FC layer through the node-major flatten: Σ_v W[:, v·C + c]·const
    assert removed(result, "block2.out", CONSTANT_FOLDED) == last
    assert removed(result, "hidden", CONSTANT_FOLDED) == hidden
    assert result.model.fc.in_features == model.fc.in_features - len(last) * model.nodes
    assert result.relative_diff <= 1e-5
    assert_same_logits(model, result.model, x)


def test_stgcn_constant_graph_conv_output_stays_unless_zero():
    model = small_stgcn()
    block = model.st_gcn_networks[1]
    width = model.config["blocks"][1]["mid"]
    constant_unit, zero_unit = 2, 5
    with torch.no_grad():
        for unit in (constant_unit, zero_unit):
            rows = [k * width + unit for k in range(block.gcn.partitions)]  # interleaved k·C + c
            block.gcn.conv.weight[rows] = 0.0
            block.gcn.conv.bias[rows] = 0.0
            block.tcn[0].running_mean[unit] = 0.0
        # batch norm of the zero graph-conv output: its bias, then the ReLU
        block.tcn[0].bias[constant_unit] = 0.7
        block.tcn[0].bias[zero_unit] = -0.7
    x = calibration(model)

    result = compact_model(model, x)

    # the temporal conv pads with zeros, so a constant input is not a constant bias at the borders
    report = result.spaces["block1.gcn"]
    assert report.kept_notes[KEPT_NOT_FOLDABLE] == [constant_unit]
    assert removed(result, "block1.gcn", ZERO) == [zero_unit]
    assert result.model.config["blocks"][1]["mid"] == width - 1
    assert_same_logits(model, result.model, x)


def test_a_wrong_fold_is_caught_by_the_logit_check(monkeypatch):
    model = small_stgcn()
    block = model.st_gcn_networks[1]
    width = model.config["blocks"][1]["mid"]
    with torch.no_grad():
        rows = [k * width + 2 for k in range(block.gcn.partitions)]
        block.gcn.conv.weight[rows] = 0.0
        block.gcn.conv.bias[rows] = 0.0
        block.tcn[0].running_mean[2] = 0.0
        block.tcn[0].bias[2] = 0.7
    declared = model.unit_graph

    def graph_claiming_the_padded_conv_folds():
        graph = declared()
        for binding in graph.bindings:
            binding.folds_constant = True
        return graph

    monkeypatch.setattr(model, "unit_graph", graph_claiming_the_padded_conv_folds)
    with pytest.raises(CompactionError, match="changes the logits"):
        compact_model(model, calibration(model))
    assert issubclass(CompactionError, GcnshrinkError)


# ---------------------------------------------------------------------------- attention
def test_gcn_dead_head_takes_its_query_and_key_dims():
    model = small_gcn()
    head_width, key_width = model.config["head_width"], model.config["key_width"]
    with torch.no_grad():
        model.blocks[0].value.weight[:head_width] = 0.0
        model.blocks[0].value.bias[:head_width] = 0.0
    x = calibration(model)

    result = compact_model(model, x)

    assert removed(result, "block0.out", ZERO) == list(range(head_width))
    assert removed(result, "block0.query", USELESS) == list(range(key_width))
    assert removed(result, "block0.key", USELESS) == list(range(key_width))
    spec = result.model.config["blocks"][0]
    assert spec["value_widths"] == [0, head_width, head_width, head_width]
    assert spec["key_widths"] == [0, key_width, key_width, key_width]
    assert_same_logits(model, result.model, x)


def test_gcn_constant_keys_leave_the_softmax_unchanged():
    model = small_gcn()
    key_width = model.config["key_width"]
    head_keys = list(range(key_width, 2 * key_width))  # every key dimension of head 1
    with torch.no_grad():
        # k_i constant over nodes: q_i·k_i is constant along each softmax row, which softmax ignores
        model.blocks[1].key.weight[head_keys] = 0.0
    x = calibration(model)

    result = compact_model(model, x)

    assert removed(result, "block1.key", CONSTANT_KEY) == head_keys
    spec = result.model.config["blocks"][1]
    assert spec["key_widths"][1] == 0  # the head now attends uniformly, as before
    assert spec["value_widths"][1] == model.config["head_width"]
    assert_same_logits(model, result.model, x)


def test_gcn_zero_query_dimension_goes_with_its_key():
    model = small_gcn()
    dimension = 2 * model.config["key_width"] + 1  # a dimension of head 2
    with torch.no_grad():
        model.blocks[0].query.weight[dimension] = 0.0
        model.blocks[0].query.bias[dimension] = 0.0
    x = calibration(model)

    result = compact_model(model, x)

    assert removed(result, "block0.query", ZERO) == [dimension]
    assert removed(result, "block0.key", ZERO) == [dimension]
    assert result.model.config["blocks"][0]["key_widths"][2] == model.config["key_width"] - 1
    assert_same_logits(model, result.model, x)


# ---------------------------------------------------------------------------- identity residuals
def silence_temporal_output(model, block_index: int, unit: int, level: float) -> None:
    """Make ``unit`` of a block's temporal branch the constant ``level`` (0 = exact zero)."""
    block = model.st_gcn_networks[block_index]
    with torch.no_grad():
        block.tcn[2].weight[unit] = 0.0
        block.tcn[2].bias[unit] = 0.0
        block.tcn[3].running_mean[unit] = 0.0
        block.tcn[3].bias[unit] = level


def test_stgcn_identity_group_keeps_a_unit_alive_in_one_member():
    model = small_stgcn()
    silence_temporal_output(model, 0, unit=3, level=0.0)  # block 0 has no residual: out[3] == 0
    x = calibration(model)

    kept = kept_units(model, x)
    result = compact_model(model, x)

    # block 1 adds block 0's output back through an identity residual: the chain must agree
    for block in range(4):
        assert kept[f"block{block}.out"][3]
    assert result.spaces["block0.out"].kept_notes[KEPT_COUPLED] == [3]
    assert result.model.config["blocks"][1]["out"] == 8
    assert_same_logits(model, result.model, x)


@pytest.mark.parametrize(("level", "reason"), [(0.0, ZERO), (0.3, CONSTANT_FOLDED)])
def test_stgcn_identity_group_loses_a_unit_dead_in_every_member(level, reason):
    model = small_stgcn()
    chain = [0, 1, 2, 3]  # blocks joined by identity residuals (block 4 changes width)
    for block in chain:
        silence_temporal_output(model, block, unit=3, level=level)
    x = calibration(model)

    result = compact_model(model, x)

    for block in chain:
        assert removed(result, f"block{block}.out", reason) == [3]
        assert result.model.config["blocks"][block]["out"] == 7
    # constants fold into the interleaved K·C bias of the next graph convs and block 4's residual
    assert result.relative_diff <= 1e-5
    assert_same_logits(model, result.model, x)


# ---------------------------------------------------------------------------- alignment (rule 8)
def unit_by_unit_spaces(model) -> list[str]:
    graph = model.unit_graph()
    attention = {space for pair in graph.attention_pairs for space in pair}
    return [
        s.name
        for s in graph.spaces
        if s.role == "hidden" and s.name not in graph.derived and s.name not in attention
    ]


@pytest.mark.parametrize("arch", ["gcn", "stgcn"])
@pytest.mark.parametrize("align", [4, 8])
def test_align_keeps_widths_at_multiples_and_the_logits(arch, align):
    model = small_model(arch)
    magnitude_prune(model, 0.9)
    x = calibration(model)
    plain = compact_model(model, x)
    aligned = compact_model(model, x, align=align)

    restored_somewhere = False
    for space in unit_by_unit_spaces(model):
        report, before = aligned.spaces[space], plain.spaces[space]
        assert report.width_after % align == 0 or report.width_after == report.width_before, space
        # the smallest multiple that holds what compaction keeps: nothing more is restored
        expected = min(-(-before.width_after // align) * align, before.width_before)
        assert report.width_after == expected, space
        restored = report.kept_notes.get(KEPT_ALIGNED, [])
        assert len(restored) == report.width_after - before.width_after
        restored_somewhere |= bool(restored)
    assert restored_somewhere  # at 90 % some width is off the multiple: the test sees a restore
    assert aligned.params_after > plain.params_after
    assert_same_logits(model, aligned.model, x)


def test_align_restores_the_strongest_removed_units():
    model = small_stgcn()
    chain = [0, 1, 2, 3]  # an identity group: a restored unit comes back in every member
    for unit, level in ((3, 0.0), (5, 0.3), (6, 0.0)):
        for block in chain:
            silence_temporal_output(model, block, unit=unit, level=level)
    params = dict(model.named_parameters())
    with torch.no_grad():  # unit 6 sends the most into block 1: the one to restore
        params["st_gcn_networks.1.gcn.conv.weight"][:, 6] *= 10.0
    x = calibration(model)

    plain = compact_model(model, x)
    assert plain.model.config["blocks"][0]["out"] == 5
    aligned = compact_model(model, x, align=2)

    for block in chain:
        report = aligned.spaces[f"block{block}.out"]
        assert report.width_after == 6
        assert report.kept_notes[KEPT_ALIGNED] == [6]
    # the constant unit 5 stays removed (folded); restored unit 6 computes its zero, exactly
    assert removed(aligned, "block0.out", CONSTANT_FOLDED) == [5]
    assert_same_logits(model, aligned.model, x)


def test_align_1_is_plain_compaction():
    model = small_stgcn()
    magnitude_prune(model, 0.9)
    x = calibration(model)
    plain, one = compact_model(model, x), compact_model(model, x, align=1)
    assert one.to_dict() == plain.to_dict()


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_in_one_line():
    model = small_gcn()
    with pytest.raises(GcnshrinkError, match="calibration batch has shape"):
        compact_model(model, torch.zeros(2, 3, FRAMES, 25, 2))
    with pytest.raises(GcnshrinkError, match="NaN"):
        compact_model(model, torch.full((2, 3, FRAMES, 15, 2), float("nan")))
    with pytest.raises(GcnshrinkError, match="tolerance"):
        compact_model(model, calibration(model), tolerance=-1.0)
    with pytest.raises(GcnshrinkError, match="gcnshrink model"):
        compact_model(nn.Linear(2, 2), calibration(model))
    for align in (0, -8, 2.5, True, "8"):
        with pytest.raises(GcnshrinkError, match="align must be a whole number"):
            compact_model(model, calibration(model), align=align)


def test_parametrized_model_must_bake_its_masks_first():
    class Masked(nn.Module):
        def forward(self, weight):
            return weight

    model = small_gcn()
    parametrize.register_parametrization(model.fc, "weight", Masked())
    with pytest.raises(GcnshrinkError, match="bake the masks in"):
        compact_model(model, calibration(model))
