"""``agcn``: 2s-AGCN (Shi et al., CVPR 2019), one stream, with the original repository's names.

Keys are those of ``model/agcn.py`` in lshiwjx/2s-AGCN: ``data_bn.*`` (M·V·C), ``l{1..10}.gcn1.PA``,
``l{i}.gcn1.conv_{a,b,d}.{k}.*``, ``l{i}.gcn1.down.{0,1}.*``, ``l{i}.gcn1.bn.*``, ``l{i}.tcn1.{conv,bn}.*``,
``l{i}.residual.{conv,bn}.*`` and ``fc.*``, so the files its ``main.py`` saves (with or without
``module.``) load as they are. The fixed adjacency (identity, inward, outward; column-normalised) is
not in those files: it is rebuilt from the layout.

Each unit_gcn, for every subset k of the adjacency:

    S_k = softmax over source joints of (conv_a.k(x)ᵀ · conv_b.k(x)) / (inter · T)
    y  += conv_d.k(x · (S_k + A_k + PA_k))

then ``bn(y) + down(x)`` and a ReLU; the block adds a 9-tap temporal conv + BN and a residual.

The unit graph says what each tensor does. ``conv_a.k``/``conv_b.k`` produce a subset's embedding
dimensions (an attention pair: dimension i of both go together); they *steer* the aggregation of
subset k, the space ``agg{k}``, which is the block's input channels re-weighted over joints (an
identity link joins it to the input: channel c stays channel c). ``conv_d.k`` carries ``agg{k}``
into the graph-conv output; ``down`` and the residual couple units (a conv, or an identity link).
The softmax normalises over the source joints, which ``conv_a`` indexes: ``conv_a`` is the key
(a constant key dimension adds the same score to every source joint, which the softmax ignores),
``conv_b`` the query.

Widths are explicit per block (``in``, ``mid`` = graph-conv output, ``out``, the embedding width of
each subset ``inter`` and the ``inter_scale`` the scores are divided by), so a compacted model is
described by the same config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import ActivationProbe, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import Layout
from gcnshrink.models import upstream
from gcnshrink.models.base import (
    MAX_WIDTH,
    ModelConfig,
    SkeletonModel,
    check_dict,
    check_float,
    check_int,
    check_list,
)
from gcnshrink.models.registry import register_model
from gcnshrink.models.upstream import bn_binding, direct, weight_binding

SUBSETS = 3  # identity, inward, outward
TEMPORAL_KERNEL = 9
EMBED_RATIO = 4  # inter = out // 4 (coff_embedding)
BLOCK_KEYS = ("in", "mid", "out", "stride", "residual", "down", "inter", "inter_scale")


def default_blocks(in_channels: int, base: int) -> list[dict]:
    blocks = []
    for i, (c_in, c_out, stride) in enumerate(upstream.stage_plan(in_channels, base)):
        inter = c_out // EMBED_RATIO
        blocks.append(
            {
                "in": c_in,
                "mid": c_out,
                "out": c_out,
                "stride": stride,
                "residual": upstream.residual_kind(i, c_in, c_out, stride),
                "down": "identity" if c_in == c_out else "conv",
                "inter": [inter] * SUBSETS,
                "inter_scale": max(inter, 1),
            }
        )
    return blocks


def check_block(i: int, spec: object, prev: int, keys: tuple[str, ...] = BLOCK_KEYS) -> dict:
    """One block of an agcn/aagcn config (``keys`` may add architecture-specific ones)."""
    spec = check_dict(f"blocks[{i}]", spec, keys)
    block = upstream.check_block_widths(i, spec)
    inter = check_list(f"blocks[{i}].inter", spec["inter"])
    if len(inter) != SUBSETS:
        raise GcnshrinkError(f"blocks[{i}].inter must list {SUBSETS} widths, got {len(inter)}")
    block["inter"] = [check_int(f"blocks[{i}].inter", w, 0, MAX_WIDTH) for w in inter]
    block["inter_scale"] = check_int(f"blocks[{i}].inter_scale", spec["inter_scale"], 1, MAX_WIDTH)
    upstream.check_block_couplings(i, block, prev)
    for key in keys:
        if key not in block:
            block[key] = spec[key]  # validated by the caller
    return block


@dataclass(kw_only=True)
class AGCNConfig(ModelConfig):
    """``blocks`` is 2s-AGCN's ten-block plan at ``base_width`` when not given; imported and
    compacted models give it explicitly. ``dropout`` before ``fc`` (2s-AGCN has none; MS-AAGCN and
    CTR-GCN call it ``drop_out``)."""

    base_width: int = 64
    dropout: float = 0.0
    blocks: list[dict] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_width = check_int("base_width", self.base_width, 1, MAX_WIDTH // 4)
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        if self.blocks is None:
            self.blocks = default_blocks(self.in_channels, self.base_width)
        self.blocks = upstream.check_blocks(self.blocks, self.in_channels, check_block)


# ---------------------------------------------------------------------------- layers
class Conv1x1Residual(nn.Module):
    """``unit_tcn`` used as a residual: a 1×1 conv with the block's stride, then BN."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, stride=(stride, 1))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class TemporalConv(nn.Module):
    """``unit_tcn``: a (9, 1) conv with zero padding and the block's stride, then BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int = TEMPORAL_KERNEL):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), (pad, 0))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class AdaptiveGraphConv(nn.Module):
    """2s-AGCN's ``unit_gcn`` (names as upstream: PA, conv_a, conv_b, conv_d, down, bn)."""

    def __init__(self, spec: dict, adjacency: torch.Tensor):
        super().__init__()
        c_in, mid = spec["in"], spec["mid"]
        self.inter = list(spec["inter"])
        self.inter_scale = spec["inter_scale"]
        self.register_buffer("A", adjacency.clone(), persistent=False)  # not in upstream files
        self.PA = nn.Parameter(torch.full_like(adjacency, 1e-6))
        self.conv_a = nn.ModuleList(nn.Conv2d(c_in, w, 1) for w in self.inter)
        self.conv_b = nn.ModuleList(nn.Conv2d(c_in, w, 1) for w in self.inter)
        self.conv_d = nn.ModuleList(nn.Conv2d(c_in, mid, 1) for _ in self.inter)
        if spec["down"] == "conv":
            self.down = nn.Sequential(nn.Conv2d(c_in, mid, 1), nn.BatchNorm2d(mid))
        else:
            self.down = nn.Identity()
        self.bn = nn.BatchNorm2d(mid)
        self.act = nn.ReLU()

    def attention(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(N, V, V) scores of subset k, normalised over the source joints (dim -2)."""
        n, _, t, v = x.shape
        if self.inter[k] == 0:
            scores = x.new_zeros(n, v, v)  # no embedding left: uniform attention
        else:
            a = self.conv_a[k](x).permute(0, 3, 1, 2).reshape(n, v, self.inter[k] * t)
            b = self.conv_b[k](x).reshape(n, self.inter[k] * t, v)
            scores = torch.matmul(a, b) / (self.inter_scale * t)
        return torch.softmax(scores, dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        adjacency = self.A + self.PA
        y = None
        for k in range(len(self.inter)):
            weights = self.attention(x, k) + adjacency[k]
            aggregated = torch.matmul(x.reshape(n, c * t, v), weights).reshape(n, c, t, v)
            z = self.conv_d[k](aggregated)
            y = z if y is None else y + z
        return self.act(self.bn(y) + self.down(x))


class GcnTcnUnit(nn.Module):
    """``TCN_GCN_unit`` of 2s-AGCN, MS-AAGCN and CTR-GCN: ReLU(tcn1(gcn1(x)) + residual(x)), the
    residual a 1×1 conv + BN, the identity or none (``spec["residual"]``)."""

    def __init__(self, gcn1: nn.Module, tcn1: nn.Module, spec: dict):
        super().__init__()
        self.gcn1 = gcn1
        self.tcn1 = tcn1
        self.residual_kind = spec["residual"]
        if self.residual_kind == "conv":
            self.residual = Conv1x1Residual(spec["in"], spec["out"], spec["stride"])
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn1(self.gcn1(x))
        if self.residual_kind == "identity":
            y = y + x
        elif self.residual_kind == "conv":
            y = y + self.residual(x)
        return self.act(y)


class AGCNBlock(GcnTcnUnit):
    """2s-AGCN's unit: adaptive graph convolution, (9, 1) temporal convolution."""

    def __init__(self, spec: dict, adjacency: torch.Tensor):
        gcn1 = AdaptiveGraphConv(spec, adjacency)
        super().__init__(gcn1, TemporalConv(spec["mid"], spec["out"], spec["stride"]), spec)


class UpstreamStack(SkeletonModel):
    """What 2s-AGCN, MS-AAGCN and CTR-GCN share: ``data_bn`` over M·V·C, blocks ``l1``..``lN``,
    pooling over frames, joints and persons, dropout (``config.dropout``) and ``fc``."""

    def build_stack(self, blocks: list[nn.Module]) -> None:
        cfg = self.arch_config
        v, c, m = cfg.layout.num_joints, cfg.in_channels, cfg.layout.persons
        self.data_bn = nn.BatchNorm1d(m * v * c)
        self.block_names = []
        for i, block in enumerate(blocks):
            self.add_module(f"l{i + 1}", block)
            self.block_names.append(f"l{i + 1}")
        self.drop_out = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.blocks[-1]["out"], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)
        x = self.data_bn(x)
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for name in self.block_names:
            x = getattr(self, name)(x)
        x = x.reshape(n, m, x.shape[1], -1).mean(dim=3).mean(dim=1)
        return self.fc(self.drop_out(x))


@register_model("agcn")
class AGCN(UpstreamStack):
    """2s-AGCN (one stream: joint or bone), adaptive graph with softmax attention per subset."""

    config_class = AGCNConfig
    arch_config: AGCNConfig

    def __init__(self, config: AGCNConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        adjacency = torch.from_numpy(upstream.directed_partitions(cfg.layout))
        self.build_stack([AGCNBlock(spec, adjacency) for spec in cfg.blocks])

    @classmethod
    def tiny_config(cls) -> dict:
        # three blocks: an input block with a down conv, one with identity down and residual,
        # one that doubles the width with stride 2 (down and residual convs)
        blocks = default_blocks(3, 8)[3:6]
        blocks[0] = {**blocks[0], "in": 3, "residual": "none", "down": "conv"}
        return {"layout": "sbu15", "num_classes": 5, "blocks": blocks, "dropout": 0.1}

    # ------------------------------------------------------------------ unit graph
    def unit_graph(self) -> UnitGraph:
        cfg = self.arch_config
        spaces = [UnitSpace("input", cfg.in_channels, "input")]
        bindings: list[TensorBinding] = []
        links: list[Link] = []
        probes: dict[str, ActivationProbe] = {}
        pairs: list[tuple[str, str]] = []
        prev, prev_w = "input", cfg.in_channels
        for i, spec in enumerate(cfg.blocks):
            pre, name = f"l{i + 1}", f"block{i}"
            gcn, out = f"{name}.gcn", f"{name}.out"
            for k, width in enumerate(spec["inter"]):
                key, query, agg = f"{name}.a{k}", f"{name}.b{k}", f"{name}.agg{k}"
                spaces += [UnitSpace(key, width), UnitSpace(query, width), UnitSpace(agg, prev_w)]
                for conv, space in ((f"conv_a.{k}", key), (f"conv_b.{k}", query)):
                    weight_binding(
                        bindings,
                        f"{pre}.gcn1.{conv}",
                        direct(prev, prev_w),
                        direct(space, width),
                        True,
                    )
                    probes[space] = ActivationProbe(f"{pre}.gcn1.{conv}", 1)
                    links.append(Link.steer(space, range(width), agg, range(prev_w)))
                links.append(Link.identity(prev, agg, prev_w))
                probes[agg] = ActivationProbe(f"{pre}.gcn1.conv_d.{k}", 1, input_of=True)
                pairs.append((query, key))
            spaces += [UnitSpace(gcn, spec["mid"]), UnitSpace(out, spec["out"])]
            for k in range(len(spec["inter"])):
                # conv_d reads the aggregated channels (measured at its input): folds exactly
                weight_binding(
                    bindings,
                    f"{pre}.gcn1.conv_d.{k}",
                    direct(f"{name}.agg{k}", prev_w),
                    direct(gcn, spec["mid"]),
                    True,
                )
            if spec["down"] == "conv":
                weight_binding(
                    bindings,
                    f"{pre}.gcn1.down.0",
                    direct(prev, prev_w),
                    direct(gcn, spec["mid"]),
                    True,
                )
                bn_binding(bindings, f"{pre}.gcn1.down.1", direct(gcn, spec["mid"]))
            else:
                links.append(Link.identity(prev, gcn, prev_w))
            bn_binding(bindings, f"{pre}.gcn1.bn", direct(gcn, spec["mid"]))
            probes[gcn] = ActivationProbe(f"{pre}.gcn1", 1)
            # zero padding in time: border frames see fewer taps, a constant does not fold
            weight_binding(
                bindings,
                f"{pre}.tcn1.conv",
                direct(gcn, spec["mid"]),
                direct(out, spec["out"]),
                False,
            )
            bn_binding(bindings, f"{pre}.tcn1.bn", direct(out, spec["out"]))
            prev, prev_w = upstream.end_block(
                bindings, links, probes, pre, spec, (prev, prev_w), out
            )
        spaces.append(UnitSpace("classes", cfg.num_classes, "output"))
        weight_binding(
            bindings, "fc", direct(prev, prev_w), direct("classes", cfg.num_classes), True
        )
        return UnitGraph(spaces, bindings, links, probes, pairs)

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        blocks, prev = [], self.config["in_channels"]
        for i, spec in enumerate(self.config["blocks"]):
            name = f"block{i}"
            out = int(kept[f"{name}.out"].sum())
            inter = [int(kept[f"{name}.a{k}"].sum()) for k in range(len(spec["inter"]))]
            blocks.append(
                {
                    **spec,
                    "in": prev,
                    "mid": int(kept[f"{name}.gcn"].sum()),
                    "out": out,
                    "inter": inter,
                }
            )
            prev = out
        return {**self.config, "blocks": blocks}

    # ------------------------------------------------------------------ foreign checkpoints
    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        return (
            "l1.gcn1.conv_a.0.weight" in state
            and "l1.gcn1.conv_d.0.weight" in state
            and "l1.gcn1.alpha" not in state  # MS-AAGCN
        )

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        return infer_agcn_config(state, layout, num_classes, "2s-AGCN")


def infer_agcn_config(
    state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None, what: str
) -> dict:
    """Blocks ``l1``..``lN`` of a 2s-AGCN-style state dict, from the shapes.

    Shapes do not record strides: like upstream, a block downsamples (stride 2) exactly where the
    width grows after the first block. The scores are divided by inter·T where inter is the
    embedding width upstream computed (out // 4), i.e. the width conv_a has in the file.
    """
    blocks, i = [], 1
    while f"l{i}.gcn1.conv_d.0.weight" in state:
        pre = f"l{i}"
        mid, c_in = upstream.shape_of(state, f"{pre}.gcn1.conv_d.0.weight", what)[:2]
        inter = []
        for k in range(SUBSETS):
            inter.append(upstream.shape_of(state, f"{pre}.gcn1.conv_a.{k}.weight", what)[0])
        tcn = upstream.shape_of(state, f"{pre}.tcn1.conv.weight", what)
        if tcn[2:] != (TEMPORAL_KERNEL, 1):
            raise GcnshrinkError(f"{what} {pre}.tcn1.conv has kernel {tcn[2:]}, not (9, 1)")
        out = tcn[0]
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
                "inter": inter,
                "inter_scale": max(inter[0], 1),
            }
        )
        i += 1
    return upstream.stack_config(state, blocks, layout, num_classes, what)
