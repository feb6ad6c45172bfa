"""``ctrgcn``: CTR-GCN (Chen et al., ICCV 2021) with the original repository's names.

Keys are those of ``model/ctrgcn.py`` in Uason-Chen/CTR-GCN: ``data_bn.*`` (M·V·C),
``l{1..10}.gcn1.{PA,alpha}``, ``l{i}.gcn1.convs.{k}.conv{1,2,3,4}.*``, ``l{i}.gcn1.down.{0,1}.*``,
``l{i}.gcn1.bn.*``, ``l{i}.tcn1.branches.{j}.*``, ``l{i}.residual.{conv,bn}.*`` and ``fc.*``. The
adjacency is the trained ``PA`` (initialised to identity, inward, outward), so imports use the
file's graph.

Each unit_gcn, for every subset k (``CTRGC``):

    x1, x2 = conv1(x), conv2(x) averaged over frames          (N, R, V)
    topology = conv4(tanh(x1[u] - x2[v])) · alpha + PA_k        (N, C, V, V): one per channel
    y += Σ_v topology[c, u, v] · conv3(x)[c, t, v]

then ``bn(y) + down(x)`` and a ReLU. The temporal part is a multi-scale TCN: four branches of
C/4 channels (1×1 conv + BN + ReLU + 5-tap conv with dilation 1 or 2 + BN; 1×1 conv + BN + ReLU +
max-pool + BN; 1×1 conv with the stride + BN), concatenated; then the residual and a ReLU.

The unit graph: ``conv1``/``conv2`` write the relation space ``rel{k}`` (R units; relation r
combines dimension r of both), ``conv4`` lifts it to ``topo{k}``, a topology per output channel,
which *steers* the aggregation of the graph-conv output channel by channel (a ``channel_steer``
link: topology c steers channel c, and the two keep the same units; unnormalised, since a tanh
topology makes even a constant channel depend on the input, so it carries signal too); ``conv3``
carries the channels. The four branches write their own segments of the block's output space, so
compaction removes output channels branch by branch (rewriting the concatenation), and the
compacted config records every branch's width.

pyskl's ``CTRGCN`` backbone (``pyskl: true``) has the same layers and shapes with two differences
in what it computes: its CTRGC aggregates with the transposed topology (``einsum('ncuv,nctu->nctv')``
where CTR-GCN has ``'ncuv,nctv->nctu'``) and its ``MSTCN`` applies a ReLU to the concatenation. Its
files (``backbone.net.{i}.*``, the adjacency as ``gcn1.A``, ``cls_head.fc_cls.*``) are renamed onto
these keys. Neither difference changes the unit graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import Layout
from gcnshrink.models import upstream
from gcnshrink.models.agcn import GcnTcnUnit, UpstreamStack
from gcnshrink.models.base import (
    MAX_COUNT,
    MAX_WIDTH,
    ModelConfig,
    check_dict,
    check_float,
    check_int,
    check_list,
)
from gcnshrink.models.registry import register_model
from gcnshrink.models.upstream import bn_binding, direct, weight_binding

SUBSETS = 3
BLOCK_KEYS = ("in", "mid", "out", "stride", "residual", "down", "rel", "tcn")
KERNEL = 5
DILATIONS = (1, 2)


def relation_width(c_in: int) -> int:
    """CTRGC's R: 8 for 3 or 9 input channels, else in // 8."""
    return 8 if c_in in (3, 9) else c_in // 8


def default_branches(out: int) -> list[dict]:
    if out % 4:
        raise GcnshrinkError(f"CTR-GCN's temporal branches need a width divisible by 4, got {out}")
    width = out // 4
    branches = [
        {"kind": "conv", "kernel": KERNEL, "dilation": d, "mid": width, "out": width}
        for d in DILATIONS
    ]
    return branches + [{"kind": "max", "out": width}, {"kind": "1x1", "out": width}]


def default_blocks(in_channels: int, base: int) -> list[dict]:
    blocks = []
    for i, (c_in, c_out, stride) in enumerate(upstream.stage_plan(in_channels, base)):
        blocks.append(
            {
                "in": c_in,
                "mid": c_out,
                "out": c_out,
                "stride": stride,
                "residual": upstream.residual_kind(i, c_in, c_out, stride),
                "down": "identity" if c_in == c_out else "conv",
                "rel": [max(relation_width(c_in), 1)] * SUBSETS,
                "tcn": default_branches(c_out),
            }
        )
    return blocks


def _check_branch(where: str, spec: object) -> dict:
    if not isinstance(spec, Mapping) or spec.get("kind") not in ("conv", "max", "1x1"):
        raise GcnshrinkError(f"{where} must be a dict with kind conv, max or 1x1")
    keys = {
        "conv": ("kind", "kernel", "dilation", "mid", "out"),
        "max": ("kind", "out"),
        "1x1": ("kind", "out"),
    }[spec["kind"]]
    spec = check_dict(where, spec, keys)
    branch = {"kind": spec["kind"]}
    for key in keys[1:]:
        low = 1 if key in ("kernel", "dilation", "mid") else 0
        branch[key] = check_int(f"{where}.{key}", spec[key], low, MAX_WIDTH)
    return branch


def _check_block(i: int, spec: object, prev: int) -> dict:
    spec = check_dict(f"blocks[{i}]", spec, BLOCK_KEYS)
    block = upstream.check_block_widths(i, spec)
    rel = check_list(f"blocks[{i}].rel", spec["rel"])
    if len(rel) != SUBSETS:
        raise GcnshrinkError(f"blocks[{i}].rel must list {SUBSETS} widths, got {len(rel)}")
    block["rel"] = [check_int(f"blocks[{i}].rel", w, 1, MAX_WIDTH) for w in rel]
    branches = check_list(f"blocks[{i}].tcn", spec["tcn"])
    if not 1 <= len(branches) <= MAX_COUNT:
        raise GcnshrinkError(f"blocks[{i}].tcn must list 1 to {MAX_COUNT} branches")
    block["tcn"] = [_check_branch(f"blocks[{i}].tcn[{j}]", b) for j, b in enumerate(branches)]
    total = sum(b["out"] for b in block["tcn"])
    if total != block["out"]:
        raise GcnshrinkError(
            f"blocks[{i}]: the temporal branches concatenate {total} channels, out is "
            f"{block['out']}"
        )
    upstream.check_block_couplings(i, block, prev)
    return {key: block[key] for key in BLOCK_KEYS}


@dataclass(kw_only=True)
class CTRGCNConfig(ModelConfig):
    """``blocks`` is CTR-GCN's ten-block plan at ``base_width`` (a multiple of 4) when not given;
    imported and compacted models give it explicitly. ``dropout`` is applied before ``fc``.
    ``pyskl`` computes as pyskl's CTRGCN (transposed topology, ReLU after the temporal concat)."""

    base_width: int = 64
    dropout: float = 0.0
    pyskl: bool = False
    blocks: list[dict] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_width = check_int("base_width", self.base_width, 1, MAX_WIDTH // 4)
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        if not isinstance(self.pyskl, bool):
            raise GcnshrinkError(f"pyskl must be true or false, got {self.pyskl!r}")
        if self.blocks is None:
            self.blocks = default_blocks(self.in_channels, self.base_width)
        self.blocks = upstream.check_blocks(self.blocks, self.in_channels, _check_block)


# ---------------------------------------------------------------------------- layers
class ChannelTopology(nn.Module):
    """``CTRGC``: a topology per output channel, refined from the shared adjacency."""

    def __init__(self, c_in: int, c_out: int, rel: int, transposed: bool = False):
        super().__init__()
        # pyskl aggregates joint v from joints u with topology[u, v]; CTR-GCN with topology[v, u]
        self.equation = "ncuv,nctu->nctv" if transposed else "ncuv,nctv->nctu"
        self.conv1 = nn.Conv2d(c_in, rel, 1)
        self.conv2 = nn.Conv2d(c_in, rel, 1)
        self.conv3 = nn.Conv2d(c_in, c_out, 1)
        self.conv4 = nn.Conv2d(rel, c_out, 1)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor, alpha: torch.Tensor):
        x1, x2, x3 = self.conv1(x).mean(-2), self.conv2(x).mean(-2), self.conv3(x)
        relation = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))  # (N, R, V, V)
        topology = self.conv4(relation) * alpha + adjacency[None, None]  # (N, C, V, V)
        return torch.einsum(self.equation, topology, x3)


class CTRGraphConv(nn.Module):
    """CTR-GCN's ``unit_gcn``: one ChannelTopology per subset, BN, ``down``, ReLU."""

    def __init__(self, spec: dict, adjacency: torch.Tensor, pyskl: bool = False):
        super().__init__()
        c_in, mid = spec["in"], spec["mid"]
        self.convs = nn.ModuleList(ChannelTopology(c_in, mid, r, pyskl) for r in spec["rel"])
        if spec["down"] == "conv":
            self.down = nn.Sequential(nn.Conv2d(c_in, mid, 1), nn.BatchNorm2d(mid))
        else:
            self.down = nn.Identity()
        self.PA = nn.Parameter(adjacency.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(mid)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        # without gradients, parameters go in detached: module hooks (FLOP counting) cannot hook
        # a tensor that requires gradients but has no gradient function
        grad = torch.is_grad_enabled()
        adjacency = self.PA if grad else self.PA.detach()
        alpha = self.alpha if grad else self.alpha.detach()
        for k, conv in enumerate(self.convs):
            z = conv(x, adjacency[k], alpha)
            y = z if y is None else y + z
        return self.act(self.bn(y) + self.down(x))


class BranchTemporalConv(nn.Module):
    """``TemporalConv``: a dilated (kernel, 1) conv with the stride, then BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int):
        super().__init__()
        pad = (kernel + (kernel - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), (pad, 0), (dilation, 1))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MultiScaleTemporalConv(nn.Module):
    """``MultiScale_TemporalConv`` without its own residual: branches, concatenated (then a ReLU
    with ``act``, as pyskl's ``MSTCN``)."""

    def __init__(self, c_in: int, branches: list[dict], stride: int, act: bool = False):
        super().__init__()
        self.specs = branches
        self.stride = stride
        self.act = nn.ReLU() if act else nn.Identity()
        self.branches = nn.ModuleList()
        for spec in branches:
            w = spec["out"]
            if spec["kind"] == "conv":
                branch = nn.Sequential(
                    nn.Conv2d(c_in, spec["mid"], 1),
                    nn.BatchNorm2d(spec["mid"]),
                    nn.ReLU(),
                    BranchTemporalConv(spec["mid"], w, spec["kernel"], stride, spec["dilation"]),
                )
            elif spec["kind"] == "max":
                branch = nn.Sequential(
                    nn.Conv2d(c_in, w, 1),
                    nn.BatchNorm2d(w),
                    nn.ReLU(),
                    nn.MaxPool2d((3, 1), (stride, 1), (1, 0)),
                    nn.BatchNorm2d(w),
                )
            else:
                branch = nn.Sequential(nn.Conv2d(c_in, w, 1, stride=(stride, 1)), nn.BatchNorm2d(w))
            self.branches.append(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        frames = upstream.out_length(t, 1, self.stride, 0)  # every branch keeps ceil(T / stride)
        outs = [
            branch(x) if spec["out"] > 0 else x.new_zeros(n, 0, frames, v)
            for spec, branch in zip(self.specs, self.branches, strict=True)
        ]
        return self.act(torch.cat(outs, dim=1))


class CTRGCNBlock(GcnTcnUnit):
    """``TCN_GCN_unit``: gcn1, tcn1 (multi-scale), residual, ReLU."""

    def __init__(self, spec: dict, adjacency: torch.Tensor, pyskl: bool = False):
        for branch in spec["tcn"]:
            if branch["kind"] == "conv" and branch["kernel"] % 2 == 0:
                raise GcnshrinkError("CTR-GCN temporal branches need odd kernels")
        gcn1 = CTRGraphConv(spec, adjacency, pyskl)
        tcn1 = MultiScaleTemporalConv(spec["mid"], spec["tcn"], spec["stride"], pyskl)
        super().__init__(gcn1, tcn1, spec)


@register_model("ctrgcn")
class CTRGCN(UpstreamStack):
    """CTR-GCN (one stream): channel-wise topology refinement, multi-scale temporal convs."""

    config_class = CTRGCNConfig
    arch_config: CTRGCNConfig

    def __init__(self, config: CTRGCNConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        adjacency = torch.from_numpy(upstream.directed_partitions(cfg.layout))
        self.build_stack([CTRGCNBlock(spec, adjacency, cfg.pyskl) for spec in cfg.blocks])

    @classmethod
    def tiny_config(cls) -> dict:
        # base 12 (branches of 3 channels): an input block (down conv), a stride-2 block doubling
        # the width, an identity block; enough weights that 0.999 still connects input and output
        blocks = default_blocks(3, 12)
        return {
            "layout": "sbu15",
            "num_classes": 5,
            "blocks": [blocks[0], blocks[4], blocks[5]],
            "dropout": 0.1,
        }

    # ------------------------------------------------------------------ unit graph
    def unit_graph(self) -> UnitGraph:
        cfg = self.arch_config
        spaces = [UnitSpace("input", cfg.in_channels, "input")]
        bindings: list[TensorBinding] = []
        links: list[Link] = []
        probes: dict[str, ActivationProbe] = {}
        prev, prev_w = "input", cfg.in_channels
        for i, spec in enumerate(cfg.blocks):
            pre, name = f"l{i + 1}", f"block{i}"
            gcn, out, mid = f"{name}.gcn", f"{name}.out", spec["mid"]
            for k, rel in enumerate(spec["rel"]):
                rel_space, at = f"{name}.rel{k}", f"{pre}.gcn1.convs.{k}"
                spaces.append(UnitSpace(rel_space, rel))
                for conv in ("conv1", "conv2"):  # 1×1 convs before the mean over frames: fold
                    weight_binding(
                        bindings, f"{at}.{conv}", direct(prev, prev_w), direct(rel_space, rel), True
                    )
                probes[rel_space] = ActivationProbe(f"{at}.conv4", 1, input_of=True)
            for k, rel in enumerate(spec["rel"]):
                topo, at = f"{name}.topo{k}", f"{pre}.gcn1.convs.{k}"
                spaces.append(UnitSpace(topo, mid))
                weight_binding(
                    bindings, f"{at}.conv4", direct(f"{name}.rel{k}", rel), direct(topo, mid), True
                )
                probes[topo] = ActivationProbe(f"{at}.conv4", 1)
                links.append(Link.channel_steer(topo, gcn, mid))
            spaces.append(UnitSpace(gcn, mid))
            for k in range(len(spec["rel"])):
                # conv3 comes before the aggregation: a constant input folds into its bias
                weight_binding(
                    bindings,
                    f"{pre}.gcn1.convs.{k}.conv3",
                    direct(prev, prev_w),
                    direct(gcn, mid),
                    True,
                )
            if spec["down"] == "conv":
                weight_binding(
                    bindings, f"{pre}.gcn1.down.0", direct(prev, prev_w), direct(gcn, mid), True
                )
                bn_binding(bindings, f"{pre}.gcn1.down.1", direct(gcn, mid))
            else:
                links.append(Link.identity(prev, gcn, prev_w))
            bn_binding(bindings, f"{pre}.gcn1.bn", direct(gcn, mid))
            probes[gcn] = ActivationProbe(f"{pre}.gcn1", 1)
            start = 0
            for j, branch in enumerate(spec["tcn"]):
                segment = AxisMap(out, torch.arange(start, start + branch["out"]))
                start += branch["out"]
                at = f"{pre}.tcn1.branches.{j}"
                if branch["kind"] == "conv":
                    inner = f"{name}.branch{j}"
                    spaces.append(UnitSpace(inner, branch["mid"]))
                    weight_binding(
                        bindings, f"{at}.0", direct(gcn, mid), direct(inner, branch["mid"]), True
                    )
                    bn_binding(bindings, f"{at}.1", direct(inner, branch["mid"]))
                    # zero padding in time: a constant does not fold into a temporal conv
                    weight_binding(
                        bindings, f"{at}.3.conv", direct(inner, branch["mid"]), segment, False
                    )
                    bn_binding(bindings, f"{at}.3.bn", segment)
                    probes[inner] = ActivationProbe(f"{at}.3.conv", 1, input_of=True)
                elif branch["kind"] == "max":
                    # conv, BN, ReLU, max-pool, BN: channel c stays channel c
                    weight_binding(bindings, f"{at}.0", direct(gcn, mid), segment, True)
                    bn_binding(bindings, f"{at}.1", segment)
                    bn_binding(bindings, f"{at}.4", segment)
                else:
                    weight_binding(bindings, f"{at}.0", direct(gcn, mid), segment, True)
                    bn_binding(bindings, f"{at}.1", segment)
            spaces.append(UnitSpace(out, spec["out"]))
            prev, prev_w = upstream.end_block(
                bindings, links, probes, pre, spec, (prev, prev_w), out
            )
        spaces.append(UnitSpace("classes", cfg.num_classes, "output"))
        weight_binding(
            bindings, "fc", direct(prev, prev_w), direct("classes", cfg.num_classes), True
        )
        return UnitGraph(spaces, bindings, links, probes)

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        blocks, prev = [], self.config["in_channels"]
        for i, spec in enumerate(self.config["blocks"]):
            name = f"block{i}"
            out_kept = kept[f"{name}.out"]
            branches, start = [], 0
            for j, branch in enumerate(spec["tcn"]):
                new = {**branch, "out": int(out_kept[start : start + branch["out"]].sum())}
                start += branch["out"]
                if branch["kind"] == "conv":
                    new["mid"] = int(kept[f"{name}.branch{j}"].sum())
                branches.append(new)
            out = int(out_kept.sum())
            blocks.append(
                {
                    **spec,
                    "in": prev,
                    "mid": int(kept[f"{name}.gcn"].sum()),
                    "out": out,
                    "rel": [int(kept[f"{name}.rel{k}"].sum()) for k in range(len(spec["rel"]))],
                    "tcn": branches,
                }
            )
            prev = out
        return {**self.config, "blocks": blocks}

    # ------------------------------------------------------------------ foreign checkpoints
    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        original = (
            "l1.gcn1.convs.0.conv1.weight" in state and "l1.tcn1.branches.0.0.weight" in state
        )
        return original or is_pyskl_ctrgcn(state)

    @classmethod
    def rename_foreign(cls, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not is_pyskl_ctrgcn(state):
            return dict(state)
        # pyskl keeps the trained adjacency as gcn1.A (CTR-GCN: gcn1.PA)
        return upstream.rename_pyskl(state, "net", {"gcn1.A": "gcn1.PA"}, "pyskl CTRGCN")

    @classmethod
    def import_state(
        cls,
        state: Mapping[str, torch.Tensor],
        layout: Layout | None = None,
        num_classes: int | None = None,
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        config, renamed = super().import_state(state, layout, num_classes)
        return {**config, "pyskl": is_pyskl_ctrgcn(state)}, renamed

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        return infer_ctrgcn_config(state, layout, num_classes)


def is_pyskl_ctrgcn(state: Mapping[str, torch.Tensor]) -> bool:
    """pyskl's CTRGCN backbone with its GCNHead, once ``backbone.`` is stripped."""
    return "net.0.gcn1.convs.0.conv1.weight" in state and "cls_head.fc_cls.weight" in state


def _branches(state: Mapping[str, torch.Tensor], at: str, what: str) -> list[dict]:
    branches, j = [], 0
    while f"{at}.branches.{j}.0.weight" in state:
        b = f"{at}.branches.{j}"
        first = upstream.shape_of(state, f"{b}.0.weight", what)
        if f"{b}.3.conv.weight" in state:
            shape = upstream.shape_of(state, f"{b}.3.conv.weight", what)
            # dilations are not in the shapes: CTR-GCN's are 1 and 2, in this order
            dilation = DILATIONS[j] if j < len(DILATIONS) else 1
            branches.append(
                {
                    "kind": "conv",
                    "kernel": shape[2],
                    "dilation": dilation,
                    "mid": first[0],
                    "out": shape[0],
                }
            )
        elif f"{b}.4.weight" in state:
            branches.append({"kind": "max", "out": first[0]})
        else:
            branches.append({"kind": "1x1", "out": first[0]})
        j += 1
    return branches


def infer_ctrgcn_config(
    state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
) -> dict:
    """Blocks ``l1``..``lN`` of a CTR-GCN state dict, from the shapes. Strides (2 exactly where
    the width grows after the first block) and dilations (1, 2) are CTR-GCN's, not in the file."""
    what = "CTR-GCN"
    blocks, i = [], 1
    while f"l{i}.gcn1.convs.0.conv3.weight" in state:
        pre = f"l{i}"
        mid, c_in = upstream.shape_of(state, f"{pre}.gcn1.convs.0.conv3.weight", what)[:2]
        rel = [
            upstream.shape_of(state, f"{pre}.gcn1.convs.{k}.conv1.weight", what)[0]
            for k in range(SUBSETS)
        ]
        tcn = _branches(state, f"{pre}.tcn1", what)
        if not tcn:
            raise GcnshrinkError(f"{what} checkpoint lacks '{pre}.tcn1.branches.0.0.weight'")
        out = sum(b["out"] for b in tcn)
        if f"{pre}.residual.conv.weight" in state:
            residual = "conv"
        else:
            residual = "none" if i == 1 else "identity"
        stride = 2 if blocks and out > blocks[-1]["out"] else 1
        blocks.append(
            {
                "in": c_in,
                "mid": mid,
                "out": out,
                "stride": stride,
                "residual": residual,
                "down": "conv" if f"{pre}.gcn1.down.0.weight" in state else "identity",
                "rel": rel,
                "tcn": tcn,
            }
        )
        i += 1
    return upstream.stack_config(state, blocks, layout, num_classes, what)
