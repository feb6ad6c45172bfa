"""``stgcn``: ST-GCN (Yan et al., AAAI 2018) with the original repository's parameter names.

Keys are ``A``, ``data_bn.*``, ``st_gcn_networks.{i}.gcn.conv.*``, ``st_gcn_networks.{i}.tcn.{0,2,3}.*``
(BN, temporal conv, BN), ``st_gcn_networks.{i}.residual.{0,1}.*``, ``edge_importance.{i}`` and ``fcn.*``,
so the released ST-GCN checkpoints load as they are (pyskl's STGCN is renamed onto these keys by
gcnshrink.checkpoint).

Each block's widths are explicit (``in``, ``mid`` = graph-conv output, ``out``), so a compacted model
whose graph convolution lost channels is described by the same config.
"""

from __future__ import annotations

import torch
from torch import nn

from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import Layout
from gcnshrink.models.registry import SkeletonModel, register

TEMPORAL_KERNEL = 9


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


@register("stgcn")
class STGCN(SkeletonModel):
    """ST-GCN, spatial partitioning (K = 3), learnable edge importance."""

    @staticmethod
    def complete_config(config: dict) -> dict:
        cfg = {
            "in_channels": 3,
            "base_width": 64,
            "dropout": 0.5,
            "data_bn": "VC",
            "edge_importance": True,
            **config,
        }
        if "num_classes" not in cfg or "layout" not in cfg:
            raise ValueError("stgcn needs num_classes and layout")
        if isinstance(cfg["layout"], Layout):
            cfg["layout"] = cfg["layout"].to_dict()
        cfg.setdefault("blocks", default_blocks(cfg["in_channels"], cfg["base_width"]))
        return cfg

    def __init__(self, config: dict):
        super().__init__(config)
        layout = Layout.from_dict(config["layout"])
        partitions = torch.from_numpy(layout.spatial_partitions())
        self.register_buffer("A", partitions)
        k, v = partitions.shape[0], partitions.shape[1]
        c, m = config["in_channels"], layout.persons
        self.bn_persons = m if config["data_bn"] == "MVC" else 1
        self.data_bn = nn.BatchNorm1d(self.bn_persons * v * c)
        self.st_gcn_networks = nn.ModuleList(
            STGCNBlock(spec, k, 0.0 if i == 0 else config["dropout"])
            for i, spec in enumerate(config["blocks"])
        )
        if config["edge_importance"]:
            self.edge_importance = nn.ParameterList(
                nn.Parameter(torch.ones(k, v, v)) for _ in config["blocks"]
            )
        else:
            self.edge_importance = [1.0] * len(config["blocks"])
        self.fcn = nn.Conv2d(config["blocks"][-1]["out"], config["num_classes"], kernel_size=1)

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
        cfg = self.config
        k = int(self.A.shape[0])
        spaces = [UnitSpace("input", cfg["in_channels"], "input")]
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

        prev, prev_w = "input", cfg["in_channels"]
        for i, spec in enumerate(cfg["blocks"]):
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
        spaces.append(UnitSpace("classes", cfg["num_classes"], "output"))
        conv(
            "fcn",
            prev,
            AxisMap.direct(prev, prev_w),
            AxisMap.direct("classes", cfg["num_classes"]),
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
