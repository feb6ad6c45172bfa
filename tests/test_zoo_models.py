"""The upstream architectures of the zoo: 2s-AGCN (``agcn``), MS-AAGCN (``aagcn``), CTR-GCN
(``ctrgcn``) and pyskl's STGCN variants (``pyskl_stgcn``, STGCN++ by default).

Their conformance (graph, compaction, ONNX, checkpoint, every method) is tests/test_conformance.py;
here: the published sizes and key layouts, small cases worked out by hand, files written in each
project's own layout, ``--arch``, and what compaction does to their attention and concatenations.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gcnshrink.checkpoint import load_checkpoint
from gcnshrink.compact import compact_model
from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import masks_from_weights, topology_summary
from gcnshrink.layouts import Layout
from gcnshrink.models import create_model, model_class, recognizing_models
from gcnshrink.models.agcn import AdaptiveGraphConv
from gcnshrink.models.ctrgcn import ChannelTopology
from gcnshrink.models.pyskl_stgcn import mstcn_branches, pyskl_adaptive
from gcnshrink.models.upstream import directed_partitions
from gcnshrink.testing import randomize

# pyskl's STGCN++ config: gcn_adaptive='init', gcn_with_res=True, tcn_type='mstcn', mode 'spatial'
STGCNPP = {"adaptive": "init", "with_res": True, "tcn": "mstcn", "graph": "spatial"}


def ntu(arch: str, **config) -> torch.nn.Module:
    """The architecture at its published NTU-60 size, on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return create_model(
            arch, layout="ntu25", num_classes=config.pop("num_classes", 60), **config
        )


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(arch: str, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize(create_model(arch, **{**model_class(arch).tiny_config(), **config}), seed)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def sample(model, batch: int = 3, frames: int = 16, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return model.example_input(batch, frames)


# ---------------------------------------------------------------------------- published sizes
@pytest.mark.parametrize(
    ("arch", "config", "expected"),
    [
        ("agcn", {}, 3_469_510),
        ("aagcn", {}, 3_781_668),
        ("ctrgcn", {}, 1_446_672),
        ("ctrgcn", {"num_classes": 120}, 1_462_092),
        ("pyskl_stgcn", STGCNPP, 1_403_144),
        # pyskl's original default is ST-GCN itself: importance PA = edge importance
        (
            "pyskl_stgcn",
            {"adaptive": "importance", "with_res": False, "tcn": "unit_tcn"},
            3_098_832,
        ),
    ],
    ids=["agcn", "aagcn", "ctrgcn-60", "ctrgcn-120", "stgcn++", "pyskl-default"],
)
def test_parameter_counts_are_the_published_ones(arch, config, expected):
    assert params(ntu(arch, **config)) == expected


def test_per_layer_sizes_and_tensor_counts():
    agcn = ntu("agcn")
    per_layer = [params(getattr(agcn, f"l{i}")) for i in range(1, 11)]
    # formats.md: 41k, 58k ×3, 205k, 224k ×2, 809k, 889k ×2
    assert [round(n / 1000) for n in per_layer] == [41, 58, 58, 58, 205, 224, 224, 809, 889, 889]
    assert len(agcn.state_dict()) == 352
    ctr = ntu("ctrgcn")
    per_layer = [params(getattr(ctr, f"l{i}")) for i in range(1, 11)]
    assert [round(n / 1000) for n in per_layer] == [12, 26, 26, 26, 78, 98, 98, 302, 382, 382]
    assert len(ctr.state_dict()) == 822
    # l1 by hand: 3 subsets × (conv1, conv2: 3→8; conv3: 3→64; conv4: 8→64), PA, alpha,
    # down (3→64 + BN), bn, 4 branches of 16 channels
    gcn = 3 * (2 * (3 * 8 + 8) + (3 * 64 + 64) + (8 * 64 + 64)) + 3 * 25 * 25 + 1
    gcn += (3 * 64 + 64) + 2 * 64 + 2 * 64
    branch_conv = (64 * 16 + 16) + 2 * 16 + (16 * 16 * 5 + 16) + 2 * 16
    tcn = 2 * branch_conv + (64 * 16 + 16 + 4 * 16) + (64 * 16 + 16 + 2 * 16)
    assert per_layer[0] == gcn + tcn == 12_052


def test_key_layouts_are_the_upstream_ones():
    agcn = ntu("agcn").state_dict()
    for key in (
        "data_bn.running_var",
        "l5.gcn1.PA",
        "l5.gcn1.conv_a.2.weight",
        "l5.gcn1.conv_b.0.bias",
        "l5.gcn1.conv_d.1.weight",
        "l5.gcn1.down.1.running_mean",
        "l5.gcn1.bn.weight",
        "l5.tcn1.conv.weight",
        "l5.residual.conv.weight",
        "l5.residual.bn.bias",
        "fc.weight",
    ):
        assert key in agcn, key
    assert "l1.gcn1.A" not in agcn  # the fixed graph is not saved upstream
    assert tuple(agcn["l5.gcn1.conv_a.0.weight"].shape) == (32, 64, 1, 1)
    assert tuple(agcn["data_bn.weight"].shape) == (150,)  # M·V·C
    aagcn = ntu("aagcn").state_dict()
    assert {"l1.gcn1.alpha", "l1.gcn1.conv_sa.weight", "l1.gcn1.fc2c.bias"} <= set(aagcn)
    assert tuple(aagcn["l1.gcn1.conv_sa.weight"].shape) == (1, 64, 25)  # kernel V (V odd)
    assert tuple(aagcn["l1.gcn1.conv_ta.weight"].shape) == (1, 64, 9)
    assert tuple(aagcn["l10.gcn1.fc1c.weight"].shape) == (128, 256)
    ctr = ntu("ctrgcn").state_dict()
    for key in (
        "l5.gcn1.alpha",
        "l5.gcn1.convs.2.conv4.weight",
        "l5.tcn1.branches.0.3.conv.weight",
        "l5.tcn1.branches.2.4.running_mean",
        "l5.tcn1.branches.3.1.weight",
    ):
        assert key in ctr, key
    assert tuple(ctr["l1.gcn1.convs.0.conv1.weight"].shape) == (8, 3, 1, 1)  # R = 8 for 3 channels
    assert tuple(ctr["l5.gcn1.convs.0.conv1.weight"].shape) == (8, 64, 1, 1)  # R = 64 / 8
    assert tuple(ctr["l5.tcn1.branches.1.3.conv.weight"].shape) == (32, 32, 5, 1)
    pp = ntu("pyskl_stgcn").state_dict()
    for key in (
        "gcn.0.gcn.A",
        "gcn.0.gcn.down.0.weight",
        "gcn.4.tcn.branches.0.3.conv.weight",
        "gcn.4.tcn.branches.4.1.running_var",
        "gcn.4.tcn.branches.5.weight",
        "gcn.4.tcn.transform.2.weight",
        "gcn.4.residual.conv.weight",
        "cls_head.fc_cls.weight",
    ):
        assert key in pp, key
    assert "gcn.0.gcn.PA" not in pp  # init: the adjacency itself is the parameter
    assert tuple(pp["gcn.0.gcn.conv.weight"].shape) == (192, 3, 1, 1)  # K·C rows
    assert tuple(pp["data_bn.weight"].shape) == (75,)  # pyskl's default 'VC'


def test_mstcn_branch_widths_give_the_remainder_to_the_first():
    assert [b["out"] for b in mstcn_branches(64)] == [14, 10, 10, 10, 10, 10]
    assert [b["out"] for b in mstcn_branches(256)] == [46, 42, 42, 42, 42, 42]
    assert [b.get("dilation") for b in mstcn_branches(6)] == [1, 2, 3, 4, None, None]


# ---------------------------------------------------------------------------- small cases by hand
def test_directed_partitions_of_a_chain():
    # 0 -> 1 -> 2 (child, parent): joint 2 is the root
    layout = Layout("chain", 3, ((0, 1), (1, 2)), center=2)
    a = directed_partitions(layout)
    assert np.array_equal(a[0], np.eye(3))
    inward = np.zeros((3, 3))
    inward[1, 0] = inward[2, 1] = 1.0  # [parent, child], each column sums to 1 or 0
    assert np.array_equal(a[1], inward)
    assert np.array_equal(a[2], inward.T)
    # the NTU graph: every inward column sums to 1 but the centre's (spine-shoulder, joint 21)
    ntu_graph = directed_partitions(create_model("agcn", layout="ntu25", num_classes=2).layout)
    sums = ntu_graph[1].sum(axis=0)
    assert sums[20] == 0 and np.allclose(np.delete(sums, 20), 1.0)


def test_agcn_aggregation_by_hand():
    """Embeddings all zero: the softmax is uniform, so subset k aggregates with 1/V + A_k + PA_k."""
    v, t = 4, 2
    adjacency = torch.rand(3, v, v)
    spec = {"in": 1, "mid": 1, "inter": [2, 2, 2], "inter_scale": 2, "down": "identity"}
    unit = AdaptiveGraphConv(spec, adjacency).eval()
    with torch.no_grad():
        for conv in (*unit.conv_a, *unit.conv_b):
            conv.weight.zero_()
            conv.bias.zero_()
        for k, conv in enumerate(unit.conv_d):
            conv.weight.fill_(k + 1.0)  # subset k scaled by k + 1
            conv.bias.zero_()
        unit.PA.fill_(0.25)
    x = torch.rand(1, 1, t, v)
    expected = torch.zeros(t, v)
    for k in range(3):
        weights = 1.0 / v + adjacency[k] + 0.25
        for w in range(v):
            expected[:, w] += (k + 1.0) * sum(x[0, 0, :, u] * weights[u, w] for u in range(v))
    bn = unit.bn  # fresh BN in eval: divides by sqrt(1 + eps)
    expected = torch.relu(expected / torch.sqrt(torch.tensor(1.0 + bn.eps)) + x[0, 0])
    assert torch.allclose(unit(x)[0, 0], expected, atol=1e-5)


def test_agcn_softmax_runs_over_source_joints():
    """conv_a indexes the normalised (source) axis: each column of the attention sums to 1."""
    unit = AdaptiveGraphConv(
        {"in": 2, "mid": 2, "inter": [3, 3, 3], "inter_scale": 3, "down": "identity"},
        torch.zeros(3, 5, 5),
    )
    attention = unit.attention(torch.randn(2, 2, 4, 5), 0)
    assert torch.allclose(attention.sum(dim=1), torch.ones(2, 5))


def test_ctrgc_with_alpha_zero_aggregates_with_the_adjacency():
    """alpha = 0: every channel's topology is A_k, so the output is conv3(x) · A_k."""
    layer = ChannelTopology(2, 3, rel=1)
    adjacency = torch.rand(4, 4)
    x = torch.randn(1, 2, 3, 4)
    y = layer(x, adjacency, torch.zeros(1))
    x3 = layer.conv3(x)
    expected = torch.einsum("uv,nctv->nctu", adjacency, x3)  # out[u] = Σ_v A[u, v] x3[v]
    assert torch.allclose(y, expected, atol=1e-6)
    # alpha = 1 and conv4 = 0 with bias b: topology A + b_c for channel c
    with torch.no_grad():
        layer.conv4.weight.zero_()
        layer.conv4.bias.copy_(torch.tensor([0.0, 1.0, -2.0]))
    y = layer(x, adjacency, torch.ones(1))
    for c, b in enumerate((0.0, 1.0, -2.0)):
        expected = torch.einsum("uv,ntv->ntu", adjacency + b, x3[:, c])
        assert torch.allclose(y[:, c], expected, atol=1e-5)


def test_pyskl_adaptive_is_read_off_pa():
    a = torch.from_numpy(
        directed_partitions(create_model("agcn", layout="ntu25", num_classes=2).layout)
    )
    state = {"gcn.0.gcn.A": a, "gcn.0.gcn.conv.weight": torch.zeros(3, 3, 1, 1)}
    assert pyskl_adaptive(state) == "init"
    trained = torch.full_like(a, 0.8)  # importance: untouched where A = 0, decayed alike
    trained[a != 0] = torch.rand(int((a != 0).sum())) + 0.5
    assert pyskl_adaptive({**state, "gcn.0.gcn.PA": trained}) == "importance"
    offset = torch.randn(a.shape) * 0.01
    assert pyskl_adaptive({**state, "gcn.0.gcn.PA": offset}) == "offset"
    assert pyskl_adaptive({**state, "gcn.0.gcn.PA": torch.rand(a.shape) + 0.5}) == "importance"


# ---------------------------------------------------------------------------- upstream files
def save(obj, path):
    torch.save(obj, path)
    return path


def pyskl_file(model: torch.nn.Module) -> dict:
    """What pyskl's trainer saves: backbone keys under ``backbone.``, the head's under
    ``cls_head.``, with meta and optimizer state."""
    state = {
        (key if key.startswith("cls_head.") else f"backbone.{key}"): value
        for key, value in model.state_dict().items()
    }
    return {
        "meta": {"epoch": 16, "mmcv_version": "1.5.0", "CLASSES": None},
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
    }


@pytest.mark.parametrize("arch", ["agcn", "aagcn", "ctrgcn"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_original_repository_files_load_with_identical_logits(arch, prefix, tmp_path):
    model = tiny(arch, layout="ntu25", num_classes=7)
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    ckpt = load_checkpoint(save(state, tmp_path / "runs-42-1234.pt"))
    assert ckpt.arch == arch
    assert ckpt.config["num_classes"] == 7 and ckpt.config["layout"]["name"] == "ntu25"
    assert ckpt.config["blocks"] == model.config["blocks"]
    x = sample(model)
    assert torch.equal(logits(ckpt.build_model(), x), logits(model, x))


@pytest.mark.parametrize(
    ("variant", "config"),
    [
        ("stgcn++", {}),
        ("offset-unit_tcn", {"adaptive": "offset", "with_res": False, "tcn": "unit_tcn"}),
        ("importance-with_res", {"adaptive": "importance", "tcn": "unit_tcn"}),
        ("init-mvc", {"data_bn": "MVC"}),
    ],
)
def test_pyskl_files_load_with_identical_logits(variant, config, tmp_path):
    overrides = {**config, "layout": "ntu25", "num_classes": 6}
    if config:  # rebuild the blocks for the variant
        tiny_blocks = model_class("pyskl_stgcn").tiny_config()["blocks"]
        overrides["blocks"] = _variant_blocks(tiny_blocks, config)
    model = tiny("pyskl_stgcn", **overrides)
    if config.get("adaptive") == "offset":
        with torch.no_grad():  # trained offsets: small and all different
            for block in model.gcn:
                block.gcn.PA.copy_(torch.randn(block.gcn.PA.shape) * 0.05)
    ckpt = load_checkpoint(save(pyskl_file(model), tmp_path / "epoch_16.pth"))
    assert ckpt.arch == "pyskl_stgcn"
    for key in ("adaptive", "with_res", "data_bn", "blocks"):
        assert ckpt.config[key] == model.config[key], key
    x = sample(model)
    assert torch.equal(logits(ckpt.build_model(), x), logits(model, x))


def _variant_blocks(blocks: list[dict], config: dict) -> list[dict]:
    out = []
    for spec in blocks:
        spec = dict(spec)
        if config.get("tcn") == "unit_tcn":
            spec["tcn"] = "unit"
        if config.get("with_res") is False:
            spec["down"] = "none"
        out.append(spec)
    return out


def test_pyskl_default_variant_stays_stgcn_and_arch_overrides(tmp_path):
    """pyskl's original default imports as ``stgcn`` (ST-GCN's keys); ``--arch pyskl_stgcn``
    reads the same file with pyskl's own keys and gives the same logits."""
    blocks = _variant_blocks(
        model_class("pyskl_stgcn").tiny_config()["blocks"], {"tcn": "unit_tcn", "with_res": False}
    )
    model = tiny(
        "pyskl_stgcn",
        adaptive="importance",
        with_res=False,
        tcn="unit_tcn",
        graph="stgcn_spatial",
        blocks=blocks,
        layout="ntu25",
    )
    with torch.no_grad():
        for block in model.gcn:  # trained importance: equal wherever A is 0
            a, pa = block.gcn.A, block.gcn.PA
            pa.copy_(torch.where(a == 0, torch.full_like(pa, 0.9), torch.rand(pa.shape) + 0.5))
    path = save(pyskl_file(model), tmp_path / "stgcn.pth")
    as_stgcn = load_checkpoint(path)
    assert as_stgcn.arch == "stgcn"
    as_pyskl = load_checkpoint(path, arch="pyskl_stgcn")
    assert as_pyskl.arch == "pyskl_stgcn" and as_pyskl.config["adaptive"] == "importance"
    x = sample(model)
    expected = logits(model, x)
    assert torch.equal(logits(as_pyskl.build_model(), x), expected)
    torch.testing.assert_close(logits(as_stgcn.build_model(), x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- pyskl AAGCN, CTRGCN
def to_pyskl_keys(state: dict, blocks: str, inner: dict[str, str]) -> dict:
    """The original repository's keys -> pyskl's (``l{i}`` -> ``{blocks}.{i-1}``, ``fc`` ->
    ``cls_head.fc_cls``), as pyskl's model would name the same tensors; plus pyskl's
    backbone-level ``A`` buffer (the initial graph)."""
    out = {"A": torch.rand(3, 25, 25)}
    for key, value in state.items():
        if key.startswith("fc."):
            out["cls_head.fc_cls." + key[3:]] = value
            continue
        if not key.startswith("l"):
            out[key] = value
            continue
        block, rest = key.split(".", 1)
        for ours, theirs in inner.items():
            if rest == ours or rest.startswith(ours + "."):
                rest = theirs + rest[len(ours) :]
                break
        out[f"{blocks}.{int(block[1:]) - 1}.{rest}"] = value
    return out


def pyskl_checkpoint(state: dict) -> dict:
    """pyskl's trainer output: backbone keys under ``backbone.``, meta and optimizer state."""
    return {
        "meta": {"epoch": 16, "mmcv_version": "1.5.0", "CLASSES": None},
        "state_dict": {
            (k if k.startswith("cls_head.") else f"backbone.{k}"): v for k, v in state.items()
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
    }


def test_pyskl_aagcn_file_loads_as_aagcn_with_identical_logits(tmp_path):
    """pyskl's unit_aagcn is MS-AAGCN's unit_gcn (its trained graph named A): same logits."""
    model = tiny("aagcn", layout="ntu25", num_classes=6)
    inner = {"gcn1.PA": "gcn.A", "gcn1": "gcn", "tcn1": "tcn"}
    state = to_pyskl_keys(model.state_dict(), "gcn", inner)
    assert "gcn.1.gcn.conv_sa.weight" in state and "gcn.0.gcn.A" in state
    ckpt = load_checkpoint(save(pyskl_checkpoint(state), tmp_path / "aagcn_epoch_16.pth"))
    assert ckpt.arch == "aagcn" and ckpt.config["blocks"] == model.config["blocks"]
    x = sample(model)
    assert torch.equal(logits(ckpt.build_model(), x), logits(model, x))
    # in_channels == base_channels: pyskl drops its first stage, the first block has a residual
    from gcnshrink.models.aagcn import default_blocks

    same = tiny("aagcn", layout="ntu25", in_channels=8, blocks=default_blocks(8, 8)[1:3])
    assert same.config["blocks"][0]["residual"] == "identity"
    path = save(
        pyskl_checkpoint(to_pyskl_keys(same.state_dict(), "gcn", inner)), tmp_path / "b.pth"
    )
    x = torch.randn(2, 8, 16, 25, 2)
    assert torch.equal(logits(load_checkpoint(path).build_model(), x), logits(same, x))
    # tcn_type='mstcn' is a different temporal unit: refused, one line
    state["gcn.1.tcn.branches.0.0.weight"] = torch.ones(2, 8, 1, 1)
    with pytest.raises(GcnshrinkError, match="mstcn") as info:
        load_checkpoint(save(pyskl_checkpoint(state), tmp_path / "mstcn.pth"))
    assert "\n" not in str(info.value)


def pyskl_ctrgcn_reference(state: dict, x: torch.Tensor) -> torch.Tensor:
    """pyskl's CTRGCN + GCNHead written out from its published definition (eval mode), on a
    state dict with pyskl's keys: CTRGC aggregates ``einsum('ncuv,nctu->nctv', topology, x3)``
    and MSTCN ends with a ReLU; strides 2 where the width grows after the first block."""
    import torch.nn.functional as F

    def bn(t, key):
        return F.batch_norm(
            t, state[f"{key}.running_mean"], state[f"{key}.running_var"],
            state[f"{key}.weight"], state[f"{key}.bias"], False, 0.0, 1e-5,
        )  # fmt: skip

    def conv(t, key, stride=1, dilation=1):
        w = state[f"{key}.weight"]
        pad = (w.shape[2] + (w.shape[2] - 1) * (dilation - 1) - 1) // 2
        return F.conv2d(t, w, state[f"{key}.bias"], (stride, 1), (pad, 0), (dilation, 1))

    n, c, t, v, m = x.shape
    h = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)  # pyskl: (N, M, T, V, C), MVC
    h = bn(h, "data_bn").reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
    i = 0
    while f"net.{i}.gcn1.A" in state:
        b = f"net.{i}"
        c_in = h.shape[1]
        y = 0
        for k in range(3):
            p = f"{b}.gcn1.convs.{k}"
            x1, x2 = conv(h, f"{p}.conv1").mean(-2), conv(h, f"{p}.conv2").mean(-2)
            rel = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))
            topology = conv(rel, f"{p}.conv4") * state[f"{b}.gcn1.alpha"] + state[f"{b}.gcn1.A"][k]
            y = y + torch.einsum("ncuv,nctu->nctv", topology, conv(h, f"{p}.conv3"))
        down = (
            bn(conv(h, f"{b}.gcn1.down.0"), f"{b}.gcn1.down.1")
            if f"{b}.gcn1.down.0.weight" in state
            else h
        )
        g = F.relu(bn(y, f"{b}.gcn1.bn") + down)
        out = state[f"{b}.tcn1.branches.0.0.weight"].shape[0] * 4
        stride = 2 if i > 0 and out > c_in else 1
        outs = []
        for j, d in enumerate((1, 2)):
            a = f"{b}.tcn1.branches.{j}"
            z = F.relu(bn(conv(g, f"{a}.0"), f"{a}.1"))
            outs.append(bn(conv(z, f"{a}.3.conv", stride, d), f"{a}.3.bn"))
        a = f"{b}.tcn1.branches.2"
        z = F.max_pool2d(F.relu(bn(conv(g, f"{a}.0"), f"{a}.1")), (3, 1), (stride, 1), (1, 0))
        outs.append(bn(z, f"{a}.4"))
        outs.append(bn(conv(g, f"{b}.tcn1.branches.3.0", stride), f"{b}.tcn1.branches.3.1"))
        tcn = F.relu(torch.cat(outs, dim=1))
        if f"{b}.residual.conv.weight" in state:
            res = bn(conv(h, f"{b}.residual.conv", stride), f"{b}.residual.bn")
        else:
            res = 0 if i == 0 else h
        h = F.relu(tcn + res)
        i += 1
    pooled = h.reshape(n, m, h.shape[1], -1).mean(dim=3).mean(dim=1)
    return F.linear(pooled, state["cls_head.fc_cls.weight"], state["cls_head.fc_cls.bias"])


def test_pyskl_ctrgcn_file_loads_with_pyskls_logits(tmp_path):
    """pyskl's CTRGCN differs from CTR-GCN in what it computes (transposed topology, a ReLU after
    the temporal concat): the file imports as ``ctrgcn`` with ``pyskl: true`` and gives the logits
    of pyskl's definition, which CTR-GCN's on the same weights does not."""
    weights = tiny("ctrgcn", layout="ntu25", num_classes=6)
    with torch.no_grad():  # a trained alpha: the refined topology matters
        for name in ("l1", "l2", "l3"):
            getattr(weights, name).gcn1.alpha.fill_(0.7)
    state = to_pyskl_keys(weights.state_dict(), "net", {"gcn1.PA": "gcn1.A"})
    ckpt = load_checkpoint(save(pyskl_checkpoint(state), tmp_path / "ctrgcn_best.pth"))
    assert ckpt.arch == "ctrgcn" and ckpt.config["pyskl"] is True
    assert ckpt.config["blocks"] == weights.config["blocks"]
    x = sample(weights)
    with torch.no_grad():
        expected = pyskl_ctrgcn_reference(state, x)
    imported = ckpt.build_model()
    torch.testing.assert_close(logits(imported, x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(weights, x), expected, atol=1e-3)  # CTR-GCN's differ
    # and TCP prunes it consistently, and it compacts with unchanged logits
    from gcnshrink.pruning import PruneSpec, bake, create_method

    method = create_method("tcp", PruneSpec((0.9,)))
    working = ckpt.build_model().train()
    method.attach(working, working.unit_graph())
    method.on_step(0.0)
    baked = bake(working, method.masks_at(0.9)).eval()
    result = compact_model(baked, sample(baked, batch=8))  # raises if the logits change
    assert result.params_after < result.params_before and result.model.config["pyskl"] is True
    graph = result.model.unit_graph()
    masks = masks_from_weights(graph, dict(result.model.named_parameters()))
    assert topology_summary(graph, masks)["inconsistent_connections"] == 0


def test_arch_override_and_its_refusals(tmp_path):
    agcn = tiny("agcn", layout="ntu25")
    path = save(agcn.state_dict(), tmp_path / "agcn.pt")
    assert recognizing_models(agcn.state_dict()) == ["agcn"]
    with pytest.raises(GcnshrinkError) as info:
        load_checkpoint(path, arch="ctrgcn")
    assert "CTR-GCN" in str(info.value) and "\n" not in str(info.value)
    # a layout with another joint count than the file's adjacency is one line
    with pytest.raises(GcnshrinkError, match="joints") as info:
        load_checkpoint(path, layout="hand21")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- compaction
def test_emptied_mstcn_branch_is_rewritten_out_of_the_concat():
    model = tiny("pyskl_stgcn")
    with torch.no_grad():  # the 1×1 branch of block 1 outputs its bias 0: a constant segment
        model.gcn[1].tcn.branches[5].weight.zero_()
        model.gcn[1].tcn.branches[5].bias.zero_()
    x = sample(model, batch=8)
    result = compact_model(model, x)
    branches = result.model.config["blocks"][1]["tcn"]
    assert branches[5] == {"kind": "1x1", "out": 0}
    assert [b["out"] for b in branches[:5]] == [4, 4, 4, 4, 4]
    other = sample(model, seed=7)
    torch.testing.assert_close(
        logits(result.model, other), logits(model, other), rtol=1e-5, atol=1e-4
    )


def test_emptied_ctrgcn_branch_and_attention_subset():
    model = tiny("ctrgcn")
    with torch.no_grad():  # block 0 has no residual: a dead branch leaves constant channels
        model.l1.tcn1.branches[3][0].weight.zero_()
    result = compact_model(model, sample(model, batch=8))
    assert result.model.config["blocks"][0]["tcn"][3]["out"] == 0
    removed = result.spaces["block0.out"].removed  # constant folded (or zero after the ReLU)
    assert sorted(u for units in removed.values() for u in units) == [9, 10, 11]
    agcn = tiny("agcn")
    with torch.no_grad():  # subset 1's keys constant: the softmax over source joints ignores them
        agcn.l2.gcn1.conv_a[1].weight.zero_()
    result = compact_model(agcn, sample(agcn, batch=8))
    assert result.model.config["blocks"][1]["inter"] == [4, 0, 4]
    assert result.spaces["block1.a1"].removed == {"constant key": [0, 1, 2, 3]}


def test_aagcn_keeps_constant_keys_but_drops_zero_ones():
    """tanh attention: a constant key dimension changes the scores; a zero one does not."""
    model = tiny("aagcn")
    with torch.no_grad():
        model.l2.gcn1.conv_a[0].weight.zero_()  # constant (its bias): kept
        model.l2.gcn1.conv_a[1].weight.zero_()
        model.l2.gcn1.conv_a[1].bias.zero_()  # zero: removable
    result = compact_model(model, sample(model, batch=8))
    assert result.model.config["blocks"][1]["inter"] == [4, 0, 4]
    assert result.spaces["block1.a0"].removed == {}


@pytest.mark.parametrize("arch", ["agcn", "aagcn", "ctrgcn", "pyskl_stgcn"])
def test_tcp_masks_are_consistent_and_compact_exactly(arch):
    from gcnshrink.pruning import PruneSpec, bake, create_method

    model = tiny(arch).train()
    method = create_method("tcp", PruneSpec((0.9,)))
    graph = model.unit_graph()
    method.attach(model, graph)
    method.on_step(0.0)
    masks = method.masks_at(0.9)
    assert topology_summary(graph, masks)["inconsistent_connections"] == 0
    baked = bake(model, masks).eval()
    summary = topology_summary(graph, masks_from_weights(graph, dict(baked.named_parameters())))
    assert summary["inconsistent_connections"] == 0
    result = compact_model(baked, sample(baked, batch=8))  # raises if the logits change
    assert result.params_after < result.params_before


# ---------------------------------------------------------------------------- their data folders
def write_arrays(folder, names: dict[str, np.ndarray], labels: dict[str, list[int]]) -> None:
    """Arrays and label pickles as the gendata scripts write them (np.save, pickle of a pair)."""
    import pickle

    folder.mkdir(exist_ok=True)
    for name, x in names.items():
        np.save(folder / name, x)
    for split, y in labels.items():
        sample_names = [f"S001C001P001R001A{i + 1:03d}.skeleton" for i in range(len(y))]
        with open(folder / f"{split}_label.pkl", "wb") as f:
            pickle.dump((sample_names, y), f)


def arrays(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 10, 25, 2)).astype(np.float32)


def test_stgcn_gendata_folder_names_its_arrays_train_data(tmp_path):
    from gcnshrink.data import load_data

    folder = tmp_path / "NTU-RGB-D" / "xsub"
    folder.parent.mkdir()
    x_train, x_val = arrays(6, 0), arrays(3, 1)
    write_arrays(
        folder,
        {"train_data.npy": x_train, "val_data.npy": x_val},
        {"train": [0, 1, 2, 0, 1, 2], "val": [2, 1, 0]},
    )
    for spec in (str(folder), f"stgcn:{folder}"):
        data = load_data(spec, val_fraction=0.0)
        np.testing.assert_array_equal(data.x_train.numpy(), x_train)
        np.testing.assert_array_equal(data.x_test.numpy(), x_val)
        assert data.layout.name == "ntu25" and data.y_test.tolist() == [2, 1, 0]


def test_2s_agcn_streams_are_chosen_with_stream(tmp_path):
    from gcnshrink.data import load_data

    folder = tmp_path / "ntu" / "xview"
    folder.parent.mkdir()
    names = ("joint", "bone", "joint_motion")
    streams = {name: (arrays(4, i), arrays(2, 10 + i)) for i, name in enumerate(names)}
    files = {}
    for name, (train, val) in streams.items():
        files[f"train_data_{name}.npy"], files[f"val_data_{name}.npy"] = train, val
    write_arrays(folder, files, {"train": [0, 1, 0, 1], "val": [1, 0]})
    joint = load_data(str(folder), val_fraction=0.0)  # joint by default
    np.testing.assert_array_equal(joint.x_train.numpy(), streams["joint"][0])
    bone = load_data(f"stgcn:{folder}?stream=bone", val_fraction=0.0)
    np.testing.assert_array_equal(bone.x_test.numpy(), streams["bone"][1])
    motion = load_data(f"stgcn:{folder}?stream=joint_motion", val_fraction=0.0)
    np.testing.assert_array_equal(motion.x_train.numpy(), streams["joint_motion"][0])
    with pytest.raises(GcnshrinkError, match="train_data_bone_motion.npy: file not found"):
        load_data(f"stgcn:{folder}?stream=bone_motion")
    with pytest.raises(GcnshrinkError, match="unknown stream 'velocity'") as info:
        load_data(f"stgcn:{folder}?stream=velocity")
    assert "joint_motion" in str(info.value)


def test_pyskl_file_with_several_splits_takes_xsub_and_says_so(tmp_path):
    import pickle

    from gcnshrink.data import load_data
    from gcnshrink.errors import GcnshrinkNotice

    rng = np.random.default_rng(0)
    anns = [
        {"frame_dir": f"S001C001P00{i}R001A001", "label": i % 2, "total_frames": 20,
         "keypoint": rng.normal(size=(2, 20, 25, 3)).astype(np.float16)}
        for i in range(6)
    ]  # fmt: skip
    names = [a["frame_dir"] for a in anns]
    split = {"xsub_train": names[:4], "xsub_val": names[4:], "xview_train": names[:5],
             "xview_val": names[5:]}  # fmt: skip
    path = tmp_path / "ntu60_3danno.pkl"
    with open(path, "wb") as f:
        pickle.dump({"split": split, "annotations": anns}, f, protocol=2)
    with pytest.warns(GcnshrinkNotice, match="using xsub") as notes:
        data = load_data(str(path), val_fraction=0.0)
    assert len(notes) == 1 and "?split=NAME" in str(notes[0].message)
    assert len(data.y_train) == 4 and len(data.y_test) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", GcnshrinkNotice)  # a named split: nothing to say
        assert len(load_data(f"{path}?split=xview", val_fraction=0.0).y_test) == 1


def test_foreign_checkpoint_exports_in_one_command(make_model, cli, tmp_path):
    """The README's quick tour on an ST-GCN file that records no data: compaction checks on random
    inputs of the model's shape, and a note says so. (``--onnx`` runs its parity check on the same
    inputs; left out here because exporting takes a minute on a busy machine.)"""
    model = make_model("stgcn", layout="ntu25")
    path = save(model.state_dict(), tmp_path / "st_gcn.ntu-xsub.pt")
    out = tmp_path / "exported"
    result = cli("export", path, "--sparse", "-o", out)
    assert result.exit_code == 0, result.output[-2000:]
    assert "note: no --data and none recorded" in result.stderr
    assert "(3, 32, 25, 2)" in result.stderr
    assert (out / "model.sparse.safetensors").is_file()
