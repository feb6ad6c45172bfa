"""``stgcn``: ST-GCN (Yan et al., AAAI 2018) with the original repository's parameter names.

Keys are ``A``, ``data_bn.*``, ``st_gcn_networks.{i}.gcn.conv.*``, ``st_gcn_networks.{i}.tcn.{0,2,3}.*``
(BN, temporal conv, BN), ``st_gcn_networks.{i}.residual.{0,1}.*``, ``edge_importance.{i}`` and ``fcn.*``,
so the released ST-GCN checkpoints load as they are; pyskl's STGCN is renamed onto these keys
(:func:`rename_pyskl_stgcn`) and the config of either is read off the shapes
(:func:`infer_stgcn_config`).

Each block's widths are explicit (``in``, ``mid`` = graph-conv output, ``out``), so a compacted model
whose graph convolution lost channels is described by the same config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import LAYOUT_BY_JOINTS, Layout, get_layout
from gcnshrink.models.base import (
    MAX_COUNT,
    MAX_WIDTH,
    ModelConfig,
    SkeletonModel,
    check_choice,
    check_dict,
    check_float,
    check_int,
    check_list,
)
from gcnshrink.models.pyskl_stgcn import stgcn_imports
from gcnshrink.models.registry import register_model

TEMPORAL_KERNEL = 9
RESIDUALS = ("none", "identity", "conv")
BLOCK_KEYS = ("in", "mid", "out", "stride", "residual")


def default_blocks(in_channels: int, base: int) -> list[dict]:
    """The 10 ST-GCN blocks: base, base×3, 2·base (stride 2), 2·base×2, 4·base (stride 2), 4·base×2."""
    plan = (
        [(base, 1)] * 4
        + [(2 * base, 2)]
        + [(2 * base, 1)] * 2
        + [(4 * base, 2)]
        + [(4 * base, 1)] * 2
    )
    blocks, prev = [], in_channels
    for i, (width, stride) in enumerate(plan):
        if i == 0:
            residual = "none"
        elif prev == width and stride == 1:
            residual = "identity"
        else:
            residual = "conv"
        blocks.append(
            {"in": prev, "mid": width, "out": width, "stride": stride, "residual": residual}
        )
        prev = width
    return blocks


@dataclass(kw_only=True)
class STGCNConfig(ModelConfig):
    """``blocks`` (per block: ``in``, ``mid`` = graph-conv output, ``out`` widths, temporal
    ``stride`` and ``residual`` kind) is ST-GCN's 10-block plan at ``base_width`` when not given;
    imported and compacted models give it explicitly. ``data_bn`` normalises per joint and channel
    ("VC", the NTU checkpoints) or per person, joint and channel ("MVC", Kinetics)."""

    base_width: int = 64
    dropout: float = 0.5
    data_bn: str = "VC"
    edge_importance: bool = True
    blocks: list[dict] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_width = check_int("base_width", self.base_width, 1, MAX_WIDTH // 4)
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        self.data_bn = check_choice("data_bn", self.data_bn, ("VC", "MVC"))
        if not isinstance(self.edge_importance, bool):
            raise GcnshrinkError(
                f"edge_importance must be true or false, got {self.edge_importance!r}"
            )
        if self.blocks is None:
            self.blocks = default_blocks(self.in_channels, self.base_width)
        blocks = check_list("blocks", self.blocks)
        if not 1 <= len(blocks) <= MAX_COUNT:
            raise GcnshrinkError(f"blocks must list 1 to {MAX_COUNT} blocks, got {len(blocks)}")
        self.blocks, prev = [], self.in_channels
        for i, spec in enumerate(blocks):
            self.blocks.append(_check_block(i, spec, prev))
            prev = self.blocks[-1]["out"]


def _check_block(i: int, spec: object, prev: int) -> dict:
    spec = check_dict(f"blocks[{i}]", spec, BLOCK_KEYS)
    block = {
        key: check_int(f"blocks[{i}].{key}", spec[key], 0, MAX_WIDTH)
        for key in ("in", "mid", "out")
    }
    block["stride"] = check_int(f"blocks[{i}].stride", spec["stride"], 1, 64)
    block["residual"] = check_choice(f"blocks[{i}].residual", spec["residual"], RESIDUALS)
    if block["in"] != prev:
        raise GcnshrinkError(f"blocks[{i}].in is {block['in']}, the width before it is {prev}")
    if block["residual"] == "identity" and (block["in"] != block["out"] or block["stride"] != 1):
        raise GcnshrinkError(
            f"blocks[{i}] has an identity residual but changes the width or the frame rate"
        )
    return {key: block[key] for key in BLOCK_KEYS}


class GraphConv(nn.Module):
    """1×1 conv to K·C channels (row k·C + c), then per-partition aggregation over joints."""

    def __init__(self, in_channels: int, out_channels: int, partitions: int):
        super().__init__()
        self.partitions = partitions
        self.conv = nn.Conv2d(in_channels, out_channels * partitions, kernel_size=1)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        n, kc, t, v = x.shape
        x = x.view(n, self.partitions, kc // self.partitions, t, v)
        return torch.einsum("nkctv,kvw->nctw", x, adjacency)


class STGCNBlock(nn.Module):
    def __init__(self, spec: dict, partitions: int, dropout: float):
        super().__init__()
        c_in, mid, out, stride = spec["in"], spec["mid"], spec["out"], spec["stride"]
        self.gcn = GraphConv(c_in, mid, partitions)
        pad = (TEMPORAL_KERNEL - 1) // 2
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=False),
            nn.Conv2d(mid, out, (TEMPORAL_KERNEL, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out),
            nn.Dropout(dropout),
        )
        self.residual_kind = spec["residual"]
        if self.residual_kind == "conv":
            self.residual = nn.Sequential(nn.Conv2d(c_in, out, 1, (stride, 1)), nn.BatchNorm2d(out))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        y = self.tcn(self.gcn(x, adjacency))
        if self.residual_kind == "identity":
            y = y + x
        elif self.residual_kind == "conv":
            y = y + self.residual(x)
        return self.act(y)


@register_model("stgcn")
class STGCN(SkeletonModel):
    """ST-GCN, spatial partitioning (K = 3), learnable edge importance."""

    config_class = STGCNConfig
    arch_config: STGCNConfig

    def __init__(self, config: STGCNConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        partitions = torch.from_numpy(cfg.layout.spatial_partitions())
        self.register_buffer("A", partitions)
        k, v = partitions.shape[0], partitions.shape[1]
        c, m = cfg.in_channels, cfg.layout.persons
        self.bn_persons = m if cfg.data_bn == "MVC" else 1
        self.data_bn = nn.BatchNorm1d(self.bn_persons * v * c)
        self.st_gcn_networks = nn.ModuleList(
            STGCNBlock(spec, k, 0.0 if i == 0 else cfg.dropout) for i, spec in enumerate(cfg.blocks)
        )
        if cfg.edge_importance:
            self.edge_importance = nn.ParameterList(
                nn.Parameter(torch.ones(k, v, v)) for _ in cfg.blocks
            )
        else:
            self.edge_importance = [1.0] * len(cfg.blocks)
        self.fcn = nn.Conv2d(cfg.blocks[-1]["out"], cfg.num_classes, kernel_size=1)

    @classmethod
    def tiny_config(cls) -> dict:
        return {"layout": "sbu15", "num_classes": 5, "base_width": 4}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        # data_bn normalises each (person,) joint, channel over time: layout (N·M, V·C, T) or (N, M·V·C, T)
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m // self.bn_persons, self.bn_persons * v * c, t)
        x = self.data_bn(x)
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block, importance in zip(self.st_gcn_networks, self.edge_importance, strict=True):
            x = block(x, self.A * importance)
        x = x.mean(dim=(2, 3))  # global average over (T, V): (N·M, C)
        x = x.reshape(n, m, -1).mean(dim=1)  # average persons
        return self.fcn(x[:, :, None, None]).reshape(n, -1)

    # ------------------------------------------------------------------ unit graph
    def unit_graph(self) -> UnitGraph:
        cfg = self.arch_config
        k = int(self.A.shape[0])
        spaces = [UnitSpace("input", cfg.in_channels, "input")]
        bindings: list[TensorBinding] = []
        links: list[Link] = []
        probes: dict[str, ActivationProbe] = {}

        def norm(prefix: str, space: str, width: int) -> None:
            for p in ("weight", "bias", "running_mean", "running_var"):
                bindings.append(TensorBinding(f"{prefix}.{p}", {0: AxisMap.direct(space, width)}))

        def conv(
            name: str, source: str, source_map: AxisMap, target_map: AxisMap, folds: bool
        ) -> None:
            bindings.append(
                TensorBinding(
                    f"{name}.weight",
                    {0: target_map, 1: source_map},
                    prunable=True,
                    source_axis=1,
                    target_axis=0,
                    bias=f"{name}.bias",
                    folds_constant=folds,
                )
            )
            bindings.append(TensorBinding(f"{name}.bias", {0: target_map}))

        prev, prev_w = "input", cfg.in_channels
        for i, spec in enumerate(cfg.blocks):
            pre = f"st_gcn_networks.{i}"
            gcn_space, out_space = f"block{i}.gcn", f"block{i}.out"
            spaces += [UnitSpace(gcn_space, spec["mid"]), UnitSpace(out_space, spec["out"])]
            conv(
                f"{pre}.gcn.conv",
                prev,
                AxisMap.direct(prev, prev_w),
                AxisMap.interleaved(gcn_space, spec["mid"], k),
                True,
            )
            norm(f"{pre}.tcn.0", gcn_space, spec["mid"])
            # zero padding in time: a constant input does not reach border frames through all taps
            conv(
                f"{pre}.tcn.2",
                gcn_space,
                AxisMap.direct(gcn_space, spec["mid"]),
                AxisMap.direct(out_space, spec["out"]),
                False,
            )
            norm(f"{pre}.tcn.3", out_space, spec["out"])
            if spec["residual"] == "conv":
                conv(
                    f"{pre}.residual.0",
                    prev,
                    AxisMap.direct(prev, prev_w),
                    AxisMap.direct(out_space, spec["out"]),
                    True,
                )
                norm(f"{pre}.residual.1", out_space, spec["out"])
            elif spec["residual"] == "identity":
                links.append(Link.identity(prev, out_space, spec["out"]))
            probes[gcn_space] = ActivationProbe(f"{pre}.tcn.2", 1, input_of=True)
            probes[out_space] = ActivationProbe(pre, 1)
            prev, prev_w = out_space, spec["out"]
        spaces.append(UnitSpace("classes", cfg.num_classes, "output"))
        conv(
            "fcn",
            prev,
            AxisMap.direct(prev, prev_w),
            AxisMap.direct("classes", cfg.num_classes),
            True,
        )
        return UnitGraph(spaces, bindings, links, probes)

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        blocks, prev = [], self.config["in_channels"]
        for i, spec in enumerate(self.config["blocks"]):
            out = int(kept[f"block{i}.out"].sum())
            blocks.append({**spec, "in": prev, "mid": int(kept[f"block{i}.gcn"].sum()), "out": out})
            prev = out
        return {**self.config, "blocks": blocks}

    # ------------------------------------------------------------------ foreign checkpoints
    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        if any(k.startswith("st_gcn_networks.") for k in state):
            return True
        # pyskl's other STGCN variants (down branches, mstcn, adaptive init/offset) are
        # pyskl_stgcn's
        return stgcn_imports(state)

    @classmethod
    def rename_foreign(cls, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if any(k.startswith("gcn.") for k in state):
            return rename_pyskl_stgcn(state)
        return dict(state)

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        return infer_stgcn_config(state, layout, num_classes)


def rename_pyskl_stgcn(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pyskl's STGCN (gcn_adaptive='importance', unit_tcn) onto the original ST-GCN keys.

    pyskl puts the BN+ReLU after the graph aggregation inside ``gcn`` and its temporal unit is
    conv+BN; the original puts that BN first in ``tcn``. The computation is the same, so the
    parameters map one to one: gcn.bn -> tcn.0, tcn.conv -> tcn.2, tcn.bn -> tcn.3,
    residual.{conv,bn} -> residual.{0,1}, gcn.PA -> edge_importance.i, cls_head.fc_cls -> fcn.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "gcn" and len(parts) > 3:
            i, unit, rest = parts[1], parts[2], ".".join(parts[3:])
            if unit == "gcn" and rest == "PA":
                out[f"edge_importance.{i}"] = value
            elif unit == "gcn" and rest == "A":
                out.setdefault("A", value)
            elif unit == "gcn" and rest.startswith("bn."):
                out[f"st_gcn_networks.{i}.tcn.0.{rest[3:]}"] = value
            elif unit == "gcn" and rest.startswith("conv."):
                out[f"st_gcn_networks.{i}.gcn.conv.{rest[5:]}"] = value
            elif unit == "tcn" and rest.startswith("conv."):
                out[f"st_gcn_networks.{i}.tcn.2.{rest[5:]}"] = value
            elif unit == "tcn" and rest.startswith("bn."):
                out[f"st_gcn_networks.{i}.tcn.3.{rest[3:]}"] = value
            elif unit == "residual" and rest.startswith("conv."):
                out[f"st_gcn_networks.{i}.residual.0.{rest[5:]}"] = value
            elif unit == "residual" and rest.startswith("bn."):
                out[f"st_gcn_networks.{i}.residual.1.{rest[3:]}"] = value
            else:
                raise GcnshrinkError(
                    f"unsupported pyskl STGCN key {'backbone.' + key!r} (only the default importance/unit_tcn variant imports as stgcn; "
                    "pass --arch pyskl_stgcn)"
                )
        elif key.startswith("cls_head.fc_cls."):
            param = key.rsplit(".", 1)[1]
            out[f"fcn.{param}"] = value[:, :, None, None] if param == "weight" else value
        else:
            out[key] = value
    return out


def infer_stgcn_config(
    state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
) -> dict:
    """The config of an ST-GCN state dict with the original keys, from its shapes."""
    if "A" not in state:
        raise GcnshrinkError("ST-GCN checkpoint has no adjacency buffer 'A'")
    k, v = int(state["A"].shape[0]), int(state["A"].shape[1])
    if k != 3:
        raise GcnshrinkError(f"only ST-GCN with spatial partitioning (K=3) imports; 'A' has K={k}")
    i, blocks = 0, []
    while f"st_gcn_networks.{i}.gcn.conv.weight" in state:
        w = state[f"st_gcn_networks.{i}.gcn.conv.weight"]
        t = state.get(f"st_gcn_networks.{i}.tcn.2.weight")
        if t is None:
            raise GcnshrinkError(f"ST-GCN checkpoint lacks 'st_gcn_networks.{i}.tcn.2.weight'")
        mid, c_in, out = w.shape[0] // k, w.shape[1], t.shape[0]
        stride = _stride_guess(blocks, i, out)
        if f"st_gcn_networks.{i}.residual.0.weight" in state:
            residual = "conv"
        else:
            residual = "none" if i == 0 else "identity"
        blocks.append(
            {
                "in": int(c_in),
                "mid": int(mid),
                "out": int(out),
                "stride": stride,
                "residual": residual,
            }
        )
        i += 1
    if not blocks:
        raise GcnshrinkError("no st_gcn_networks.* blocks in the checkpoint")
    for key in ("data_bn.weight", "fcn.weight"):
        if key not in state:
            raise GcnshrinkError(f"ST-GCN checkpoint lacks {key!r}")
    in_channels = blocks[0]["in"]
    bn_len = int(state["data_bn.weight"].shape[0])
    if layout is None:
        name = LAYOUT_BY_JOINTS.get(v)
        if name is None:
            raise GcnshrinkError(f"no built-in layout has {v} joints; pass --layout")
        layout = get_layout(name)
    if layout.num_joints != v:
        raise GcnshrinkError(
            f"layout {layout.name} has {layout.num_joints} joints but the checkpoint's 'A' has {v}"
        )
    if bn_len == v * in_channels:
        data_bn = "VC"
    elif bn_len == layout.persons * v * in_channels:
        data_bn = "MVC"
    else:
        raise GcnshrinkError(
            f"data_bn has {bn_len} entries; expected V·C={v * in_channels} or M·V·C"
        )
    classes = int(state["fcn.weight"].shape[0])
    if num_classes is not None and num_classes != classes:
        raise GcnshrinkError(f"checkpoint has {classes} classes, --num-classes says {num_classes}")
    return {
        "num_classes": classes,
        "layout": layout.to_dict(),
        "in_channels": in_channels,
        "blocks": blocks,
        "data_bn": data_bn,
        "edge_importance": "edge_importance.0" in state,
    }


def _stride_guess(blocks: list[dict], i: int, out: int) -> int:
    # Shapes do not record strides; ST-GCN downsamples exactly where the width grows after block 0.
    return 2 if blocks and i > 0 and out > blocks[-1]["out"] else 1
