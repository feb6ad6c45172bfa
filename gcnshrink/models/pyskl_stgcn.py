"""``pyskl_stgcn``: pyskl's ``STGCN`` backbone with its ``GCNHead``, in every variant; STGCN++ by
default.

pyskl builds ST-GCN from options: ``gcn_adaptive`` (``importance``: a parameter PA multiplies the
adjacency, initialised to 1; ``offset``: PA is added, initialised near 0; ``init``: the adjacency
itself is a parameter; ``none``: it is fixed), ``gcn_with_res`` (a ``down`` branch, 1×1 conv + BN
when the width changes, identity otherwise, added inside the graph conv before its ReLU) and
``tcn_type`` (``unit_tcn``: a 9-tap temporal conv + BN; ``mstcn``: the multi-scale temporal conv).
STGCN++ is ``init`` + ``with_res`` + ``mstcn`` with the identity/inward/outward graph.

Keys are pyskl's once the ``backbone.`` prefix is stripped: ``data_bn.*``, ``gcn.{i}.gcn.{A,PA}``,
``gcn.{i}.gcn.{conv,bn,down.0,down.1}.*``, ``gcn.{i}.tcn.{conv,bn}.*`` or
``gcn.{i}.tcn.{branches.{j}...,transform.{0,2},bn}.*``, ``gcn.{i}.residual.{conv,bn}.*`` and
``cls_head.fc_cls.*``, so pyskl's ``{meta, state_dict, optimizer}`` files load as they are. pyskl
saves the adjacency of every block (a buffer, or a parameter with ``init``), so imports use the
file's graph whatever the layout's edges are.

The multi-scale TCN (``mstcn``) has branches whose outputs are concatenated, then ``transform``
(BN, ReLU, 1×1 conv) and ``bn``. By default six branches: four of 1×1 conv + BN + ReLU + a 3-tap
conv with dilation 1..4, one of 1×1 conv + BN + ReLU + max-pool over 3 frames, one 1×1 conv with
the stride; each has out // 6 channels, the first takes the remainder. In the unit graph the
concatenation is one space (``block{i}.cat``): each branch's last layer writes its own segment of
it, so compaction removes concatenated channels branch by branch and the compacted config records
every branch's width (a branch may end up with none).

pyskl's original default (``importance`` + ``unit_tcn``, no ``down``) is also what ``stgcn``
imports under ST-GCN's own key names; such files are recognised as ``stgcn`` and the others as
``pyskl_stgcn`` (``--arch pyskl_stgcn`` imports any of them). ``importance`` and ``offset`` files
have the same keys; :func:`pyskl_adaptive` tells them apart by the values of PA where the
adjacency is 0 (see there).
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
from gcnshrink.models.registry import register_model

ADAPTIVE = ("importance", "offset", "init", "none")
GRAPHS = ("spatial", "stgcn_spatial")
TCN_TYPES = ("unit_tcn", "mstcn")
BLOCK_KEYS = ("in", "mid", "out", "stride", "residual", "down", "tcn")
UNIT_KERNEL = 9
# pyskl's default ms_cfg: [(3, 1), (3, 2), (3, 3), (3, 4), ('max', 3), '1x1']
DEFAULT_MS_CFG = (
    ("conv", 3, 1),
    ("conv", 3, 2),
    ("conv", 3, 3),
    ("conv", 3, 4),
    ("max", 3),
    ("1x1",),
)


def mstcn_branches(out: int) -> list[dict]:
    """The default branches of an ``mstcn`` with ``out`` channels (the first takes the remainder)."""
    mid = out // len(DEFAULT_MS_CFG)
    first = out - mid * (len(DEFAULT_MS_CFG) - 1)
    branches = []
    for j, cfg in enumerate(DEFAULT_MS_CFG):
        width = first if j == 0 else mid
        if cfg[0] == "conv":
            branches.append(
                {"kind": "conv", "kernel": cfg[1], "dilation": cfg[2], "mid": width, "out": width}
            )
        elif cfg[0] == "max":
            branches.append({"kind": "max", "kernel": cfg[1], "out": width})
        else:
            branches.append({"kind": "1x1", "out": width})
    return branches


def default_blocks(in_channels: int, base: int, tcn: str, with_res: bool) -> list[dict]:
    """pyskl's ten stages; the first only when the input width differs from ``base`` (as pyskl)."""
    blocks = []
    for i, (c_in, c_out, stride) in enumerate(upstream.stage_plan(in_channels, base)):
        if i == 0 and c_in == c_out:
            continue  # pyskl starts with stage 2 when in_channels == base_channels
        if with_res:
            down = "identity" if c_in == c_out else "conv"
        else:
            down = "none"
        blocks.append(
            {
                "in": c_in,
                "mid": c_out,
                "out": c_out,
                "stride": stride,
                "residual": upstream.residual_kind(i, c_in, c_out, stride),
                "down": down,
                "tcn": "unit" if tcn == "unit_tcn" else mstcn_branches(c_out),
            }
        )
    return blocks


def _check_branch(where: str, spec: object) -> dict:
    if not isinstance(spec, Mapping) or spec.get("kind") not in ("conv", "max", "1x1"):
        raise GcnshrinkError(f"{where} must be a dict with kind conv, max or 1x1")
    keys = {
        "conv": ("kind", "kernel", "dilation", "mid", "out"),
        "max": ("kind", "kernel", "out"),
        "1x1": ("kind", "out"),
    }[spec["kind"]]
    spec = check_dict(where, spec, keys)
    branch = {"kind": spec["kind"]}
    for key in keys[1:]:
        low = 1 if key in ("kernel", "dilation") else 0
        branch[key] = check_int(f"{where}.{key}", spec[key], low, MAX_WIDTH)
    if branch["kind"] == "conv" and branch["mid"] == 0:
        raise GcnshrinkError(f"{where}.mid must be at least 1")
    return branch


def _check_block(i: int, spec: object, prev: int) -> dict:
    spec = check_dict(f"blocks[{i}]", spec, BLOCK_KEYS)
    block = upstream.check_block_widths(i, spec, ("none", "identity", "conv"))
    if spec["tcn"] == "unit":
        block["tcn"] = "unit"
    else:
        branches = check_list(f"blocks[{i}].tcn", spec["tcn"])
        if not 1 <= len(branches) <= MAX_COUNT:
            raise GcnshrinkError(f"blocks[{i}].tcn must be 'unit' or a list of branches")
        block["tcn"] = [_check_branch(f"blocks[{i}].tcn[{j}]", b) for j, b in enumerate(branches)]
        if sum(b["out"] for b in block["tcn"]) == 0:
            raise GcnshrinkError(f"blocks[{i}].tcn: the branches have no output channel")
    upstream.check_block_couplings(i, block, prev)
    return {key: block[key] for key in BLOCK_KEYS}


@dataclass(kw_only=True)
class PysklSTGCNConfig(ModelConfig):
    """pyskl's STGCN options (``adaptive``, ``with_res``, ``tcn``, ``graph`` = the graph mode a
    fresh model starts from, ``data_bn`` = ``VC``, ``MVC`` or ``none``, ``dropout`` = the head's);
    defaults are STGCN++.
    ``blocks`` (per block ``in``, ``mid`` = graph-conv output, ``out``, ``stride``, ``residual``,
    ``down`` and ``tcn``: ``"unit"`` or the list of mstcn branches) follows from them when not
    given; imported and compacted models give it explicitly."""

    base_width: int = 64
    adaptive: str = "init"
    with_res: bool = True
    tcn: str = "mstcn"
    graph: str = "spatial"
    data_bn: str = "VC"
    dropout: float = 0.0
    blocks: list[dict] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_width = check_int("base_width", self.base_width, 1, MAX_WIDTH // 4)
        self.adaptive = check_choice("adaptive", self.adaptive, ADAPTIVE)
        if not isinstance(self.with_res, bool):
            raise GcnshrinkError(f"with_res must be true or false, got {self.with_res!r}")
        self.tcn = check_choice("tcn", self.tcn, TCN_TYPES)
        self.graph = check_choice("graph", self.graph, GRAPHS)
        self.data_bn = check_choice("data_bn", self.data_bn, ("VC", "MVC", "none"))
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        if self.blocks is None:
            self.blocks = default_blocks(self.in_channels, self.base_width, self.tcn, self.with_res)
        self.blocks = upstream.check_blocks(self.blocks, self.in_channels, _check_block)


# ---------------------------------------------------------------------------- layers
class ConvBN(nn.Module):
    """pyskl's ``unit_tcn``: (kernel, 1) conv with the stride and zero padding, then BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1), (pad, 0))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DilatedConv(nn.Module):
    """pyskl's ``unit_tcn(..., norm=None)`` inside an mstcn branch: a dilated temporal conv."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int, dilation: int
    ):
        super().__init__()
        pad = (kernel + (kernel - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(
            channels_in, channels_out, (kernel, 1), (stride, 1), (pad, 0), (dilation, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upstream.conv(self.conv, x)


class MultiScaleTCN(nn.Module):
    """pyskl's ``mstcn``: branches, concatenated, then transform (BN, ReLU, 1×1 conv) and bn."""

    def __init__(self, c_in: int, c_out: int, branches: list[dict], stride: int):
        super().__init__()
        self.specs = branches
        self.stride = stride
        self.branches = nn.ModuleList()
        for spec in branches:
            if spec["kind"] == "conv":
                self.branches.append(
                    nn.Sequential(
                        nn.Conv2d(c_in, spec["mid"], 1),
                        nn.BatchNorm2d(spec["mid"]),
                        nn.ReLU(),
                        DilatedConv(
                            spec["mid"], spec["out"], spec["kernel"], stride, spec["dilation"]
                        ),
                    )
                )
            elif spec["kind"] == "max":
                self.branches.append(
                    nn.Sequential(
                        nn.Conv2d(c_in, spec["out"], 1),
                        nn.BatchNorm2d(spec["out"]),
                        nn.ReLU(),
                        nn.MaxPool2d((spec["kernel"], 1), (stride, 1), (1, 0)),
                    )
                )
            else:
                self.branches.append(nn.Conv2d(c_in, spec["out"], 1, stride=(stride, 1)))
        total = sum(spec["out"] for spec in branches)
        self.transform = nn.Sequential(nn.BatchNorm2d(total), nn.ReLU(), nn.Conv2d(total, c_out, 1))
        self.bn = nn.BatchNorm2d(c_out)

    def _frames(self, spec: dict, frames: int) -> int:
        if spec["kind"] == "1x1":
            return upstream.out_length(frames, 1, self.stride, 0)
        if spec["kind"] == "max":
            return upstream.out_length(frames, spec["kernel"], self.stride, 1)
        dilation = spec["dilation"]
        pad = (spec["kernel"] + (spec["kernel"] - 1) * (dilation - 1) - 1) // 2
        return upstream.out_length(frames, spec["kernel"], self.stride, pad, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        outs = []
        for spec, branch in zip(self.specs, self.branches, strict=True):
            if spec["out"] == 0:  # a branch compacted away: it adds no channel
                outs.append(x.new_zeros(n, 0, self._frames(spec, t), v))
            else:
                outs.append(branch(x))
        return self.bn(self.transform(torch.cat(outs, dim=1)))


class PysklGraphConv(nn.Module):
    """pyskl's ``unit_gcn`` (conv_pos 'pre'): 1×1 conv to K·C rows (row k·C + c), aggregation
    with the (adaptive) adjacency, BN, the optional ``down`` branch, ReLU."""

    def __init__(self, spec: dict, adjacency: torch.Tensor, adaptive: str):
        super().__init__()
        self.adaptive = adaptive
        self.subsets = adjacency.shape[0]
        if adaptive == "init":
            self.A = nn.Parameter(adjacency.clone())
        else:
            self.register_buffer("A", adjacency.clone())
        if adaptive == "importance":
            self.PA = nn.Parameter(torch.ones_like(adjacency))
        elif adaptive == "offset":
            self.PA = nn.Parameter(torch.zeros_like(adjacency))
        self.conv = nn.Conv2d(spec["in"], spec["mid"] * self.subsets, 1)
        self.bn = nn.BatchNorm2d(spec["mid"])
        self.down_kind = spec["down"]
        if self.down_kind == "conv":
            self.down = nn.Sequential(
                nn.Conv2d(spec["in"], spec["mid"], 1), nn.BatchNorm2d(spec["mid"])
            )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        if self.adaptive == "importance":
            adjacency = self.A * self.PA
        elif self.adaptive == "offset":
            adjacency = self.A + self.PA
        else:
            adjacency = self.A
        y = self.conv(x).reshape(n, self.subsets, -1, t, v)
        y = self.bn(torch.einsum("nkctv,kvw->nctw", y, adjacency))
        if self.down_kind == "conv":
            y = y + self.down(x)
        elif self.down_kind == "identity":
            y = y + x
        return self.act(y)


class PysklBlock(nn.Module):
    """pyskl's ``STGCNBlock``: gcn, tcn, residual, ReLU."""

    def __init__(self, spec: dict, adjacency: torch.Tensor, adaptive: str):
        super().__init__()
        self.gcn = PysklGraphConv(spec, adjacency, adaptive)
        if spec["tcn"] == "unit":
            self.tcn = ConvBN(spec["mid"], spec["out"], UNIT_KERNEL, spec["stride"])
        else:
            self.tcn = MultiScaleTCN(spec["mid"], spec["out"], spec["tcn"], spec["stride"])
        self.residual_kind = spec["residual"]
        if self.residual_kind == "conv":
            self.residual = ConvBN(spec["in"], spec["out"], 1, spec["stride"])
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn(self.gcn(x))
        if self.residual_kind == "identity":
            y = y + x
        elif self.residual_kind == "conv":
            y = y + self.residual(x)
        return self.act(y)


class GCNHead(nn.Module):
    """pyskl's ``GCNHead``: dropout and the classifier ``fc_cls`` (the model pools)."""

    def __init__(self, width: int, classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(x))


def initial_adjacency(layout: Layout, graph: str) -> torch.Tensor:
    if graph == "spatial":
        return torch.from_numpy(upstream.directed_partitions(layout))
    return torch.from_numpy(layout.spatial_partitions())


@register_model("pyskl_stgcn")
class PysklSTGCN(SkeletonModel):
    """pyskl's STGCN + GCNHead (STGCN++ by default)."""

    config_class = PysklSTGCNConfig
    arch_config: PysklSTGCNConfig

    def __init__(self, config: PysklSTGCNConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        adjacency = initial_adjacency(cfg.layout, cfg.graph)
        v, c, m = cfg.layout.num_joints, cfg.in_channels, cfg.layout.persons
        self.bn_persons = m if cfg.data_bn == "MVC" else 1
        if cfg.data_bn == "none":
            self.data_bn = nn.Identity()
        else:
            self.data_bn = nn.BatchNorm1d(self.bn_persons * v * c)
        self.gcn = nn.ModuleList(PysklBlock(spec, adjacency, cfg.adaptive) for spec in cfg.blocks)
        self.cls_head = GCNHead(cfg.blocks[-1]["out"], cfg.num_classes, cfg.dropout)

    @classmethod
    def tiny_config(cls) -> dict:
        # STGCN++ at base 12 (mstcn branches of 2 channels), three blocks: the input block with a
        # down conv, a stride-2 block that doubles the width, an identity block
        blocks = default_blocks(3, 12, "mstcn", True)
        return {
            "layout": "sbu15",
            "num_classes": 5,
            "blocks": [blocks[0], blocks[4], blocks[5]],
            "dropout": 0.1,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        # pyskl takes (N, M, T, V, C) and normalises (N·M, V·C, T) ('VC') or (N, M·V·C, T) ('MVC')
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m // self.bn_persons, self.bn_persons * v * c, t)
        x = self.data_bn(x)
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block in self.gcn:
            x = block(x)
        x = x.mean(dim=(2, 3)).reshape(n, m, -1).mean(dim=1)  # GCNHead: pool, mean over persons
        return self.cls_head(x)

    # ------------------------------------------------------------------ unit graph
    def unit_graph(self) -> UnitGraph:
        cfg = self.arch_config
        k = int(self.gcn[0].gcn.A.shape[0])
        spaces = [UnitSpace("input", cfg.in_channels, "input")]
        bindings: list[TensorBinding] = []
        links: list[Link] = []
        probes: dict[str, ActivationProbe] = {}

        def norm(prefix: str, amap: AxisMap) -> None:
            upstream.bn_binding(bindings, prefix, amap)

        def weight(name: str, source: AxisMap, target: AxisMap, folds: bool) -> None:
            upstream.weight_binding(bindings, name, source, target, folds)

        direct = upstream.direct
        prev, prev_w = "input", cfg.in_channels
        for i, spec in enumerate(cfg.blocks):
            pre, name = f"gcn.{i}", f"block{i}"
            gcn, out, mid = f"{name}.gcn", f"{name}.out", spec["mid"]
            spaces.append(UnitSpace(gcn, mid))
            # the 1×1 conv comes before the aggregation: a constant input folds into its bias
            weight(f"{pre}.gcn.conv", direct(prev, prev_w), AxisMap.interleaved(gcn, mid, k), True)
            norm(f"{pre}.gcn.bn", direct(gcn, mid))
            if spec["down"] == "conv":
                weight(f"{pre}.gcn.down.0", direct(prev, prev_w), direct(gcn, mid), True)
                norm(f"{pre}.gcn.down.1", direct(gcn, mid))
            elif spec["down"] == "identity":
                links.append(Link.identity(prev, gcn, prev_w))
            probes[gcn] = ActivationProbe(f"{pre}.gcn", 1)
            if spec["tcn"] == "unit":
                # zero padding in time: border frames see fewer taps, a constant does not fold
                weight(f"{pre}.tcn.conv", direct(gcn, mid), direct(out, spec["out"]), False)
            else:
                cat = f"{name}.cat"
                total = sum(b["out"] for b in spec["tcn"])
                inner = []
                start = 0
                for j, branch in enumerate(spec["tcn"]):
                    segment = AxisMap(cat, torch.arange(start, start + branch["out"]))
                    start += branch["out"]
                    at = f"{pre}.tcn.branches.{j}"
                    if branch["kind"] == "conv":
                        b_space = f"{name}.branch{j}"
                        inner.append(UnitSpace(b_space, branch["mid"]))
                        weight(f"{at}.0", direct(gcn, mid), direct(b_space, branch["mid"]), True)
                        norm(f"{at}.1", direct(b_space, branch["mid"]))
                        weight(f"{at}.3.conv", direct(b_space, branch["mid"]), segment, False)
                        probes[b_space] = ActivationProbe(f"{at}.3.conv", 1, input_of=True)
                    elif branch["kind"] == "max":
                        # conv, BN, ReLU and max-pool all keep channel c in channel c
                        weight(f"{at}.0", direct(gcn, mid), segment, True)
                        norm(f"{at}.1", segment)
                    else:
                        weight(at, direct(gcn, mid), segment, True)
                spaces += inner
                spaces.append(UnitSpace(cat, total))
                norm(f"{pre}.tcn.transform.0", direct(cat, total))
                weight(f"{pre}.tcn.transform.2", direct(cat, total), direct(out, spec["out"]), True)
                probes[cat] = ActivationProbe(f"{pre}.tcn.transform.2", 1, input_of=True)
            norm(f"{pre}.tcn.bn", direct(out, spec["out"]))
            spaces.append(UnitSpace(out, spec["out"]))
            prev, prev_w = upstream.end_block(
                bindings, links, probes, pre, spec, (prev, prev_w), out
            )
        spaces.append(UnitSpace("classes", cfg.num_classes, "output"))
        weight("cls_head.fc_cls", direct(prev, prev_w), direct("classes", cfg.num_classes), True)
        return UnitGraph(spaces, bindings, links, probes)

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        blocks, prev = [], self.config["in_channels"]
        for i, spec in enumerate(self.config["blocks"]):
            name = f"block{i}"
            out = int(kept[f"{name}.out"].sum())
            block = {**spec, "in": prev, "mid": int(kept[f"{name}.gcn"].sum()), "out": out}
            if spec["tcn"] != "unit":
                cat = kept[f"{name}.cat"]
                branches, start = [], 0
                for j, branch in enumerate(spec["tcn"]):
                    new = {**branch, "out": int(cat[start : start + branch["out"]].sum())}
                    start += branch["out"]
                    if branch["kind"] == "conv":
                        new["mid"] = int(kept[f"{name}.branch{j}"].sum())
                    branches.append(new)
                block["tcn"] = branches
            blocks.append(block)
            prev = out
        return {**self.config, "blocks": blocks}

    # ------------------------------------------------------------------ foreign checkpoints
    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        return is_pyskl_stgcn(state) and not stgcn_imports(state)

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        return infer_pyskl_config(state, layout, num_classes)


# ---------------------------------------------------------------------------- foreign import
def is_pyskl_stgcn(state: Mapping[str, torch.Tensor]) -> bool:
    """pyskl's STGCN + GCNHead once ``backbone.`` is stripped (not its AAGCN or CTRGCN)."""
    return "gcn.0.gcn.conv.weight" in state and "cls_head.fc_cls.weight" in state


def stgcn_imports(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``stgcn`` imports this pyskl STGCN file onto ST-GCN's keys: pyskl's original
    default, ``importance`` with ``unit_tcn`` and no ``down`` branch."""
    return (
        is_pyskl_stgcn(state)
        and not any(".gcn.down." in key or ".tcn.branches." in key for key in state)
        and pyskl_adaptive(state) == "importance"
    )


def pyskl_adaptive(state: Mapping[str, torch.Tensor]) -> str:
    """``gcn_adaptive`` of a pyskl STGCN state dict: ``init`` without PA (a fixed graph, ``None``,
    has the same keys and computes the same), else ``importance`` or ``offset``.

    Their keys are the same. With ``importance`` the adjacency is A·PA, so PA gets no gradient
    where A is 0: those entries keep their initial 1, scaled alike by weight decay, and stay equal
    to each other. With ``offset`` (A + PA, PA starting within ±1e-6) they train freely and stay
    small. So: importance when, in every block, PA is the same everywhere A is 0 or its mean
    magnitude there is above 0.5; offset otherwise.
    """
    if "gcn.0.gcn.PA" not in state:
        return "init"
    i = 0
    while f"gcn.{i}.gcn.PA" in state:
        pa, a = state[f"gcn.{i}.gcn.PA"], state.get(f"gcn.{i}.gcn.A")
        i += 1
        if a is None or a.shape != pa.shape or not bool((a == 0).any()):
            continue
        off = pa[a == 0].double()
        spread = float(off.max() - off.min())
        largest = float(off.abs().max())
        equal = largest > 0 and spread <= 1e-6 * largest
        if not (equal or float(off.abs().mean()) > 0.5):
            return "offset"
    return "importance"


def _branches(state: Mapping[str, torch.Tensor], at: str, what: str) -> list[dict]:
    branches, j = [], 0
    while any(key.startswith(f"{at}.branches.{j}.") for key in state):
        b = f"{at}.branches.{j}"
        if f"{b}.3.conv.weight" in state:
            shape = upstream.shape_of(state, f"{b}.3.conv.weight", what)
            mid = upstream.shape_of(state, f"{b}.0.weight", what)[0]
            # dilations are not in the shapes: pyskl's default ms_cfg has 1, 2, 3, 4
            default = DEFAULT_MS_CFG[j] if j < len(DEFAULT_MS_CFG) else None
            dilation = default[2] if default and default[0] == "conv" else 1
            branches.append(
                {
                    "kind": "conv",
                    "kernel": shape[2],
                    "dilation": dilation,
                    "mid": mid,
                    "out": shape[0],
                }
            )
        elif f"{b}.1.weight" in state:
            out = upstream.shape_of(state, f"{b}.0.weight", what)[0]
            branches.append({"kind": "max", "kernel": 3, "out": out})
        elif f"{b}.weight" in state:
            branches.append(
                {"kind": "1x1", "out": upstream.shape_of(state, f"{b}.weight", what)[0]}
            )
        else:
            raise GcnshrinkError(f"unsupported pyskl mstcn branch {b!r}")
        j += 1
    return branches


def infer_pyskl_config(
    state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
) -> dict:
    """The config of a pyskl STGCN state dict (keys without ``backbone.``), from its shapes.

    Not in the shapes, and taken from pyskl's defaults: strides (2 exactly where the width grows
    after the first block), mstcn dilations (1, 2, 3, 4) and max-pool kernel (3). ``with_res`` is
    read off the ``down`` convs: a file with none has no ``down`` branches (pyskl gives identity
    ones to blocks that keep their width only when ``gcn_with_res`` is set, which the shapes then
    show on the blocks that change it).
    """
    what = "pyskl STGCN"
    known = ("data_bn.", "gcn.", "cls_head.fc_cls.")
    for key in state:
        if not key.startswith(known):
            raise GcnshrinkError(f"unsupported pyskl STGCN key {key!r}")
    adaptive = pyskl_adaptive(state)
    with_res = any(".gcn.down." in key for key in state)
    blocks, i = [], 0
    while f"gcn.{i}.gcn.conv.weight" in state:
        pre = f"gcn.{i}"
        rows, c_in = upstream.shape_of(state, f"{pre}.gcn.conv.weight", what)[:2]
        subsets, joints = upstream.shape_of(state, f"{pre}.gcn.A", what)[:2]
        if subsets != 3:
            raise GcnshrinkError(f"{what} {pre}.gcn.A has {subsets} subsets; gcnshrink needs 3")
        mid = rows // subsets
        if f"{pre}.tcn.conv.weight" in state:
            shape = upstream.shape_of(state, f"{pre}.tcn.conv.weight", what)
            if shape[2:] != (UNIT_KERNEL, 1):
                raise GcnshrinkError(f"{what} {pre}.tcn.conv has kernel {shape[2:]}, not (9, 1)")
            tcn, out = "unit", shape[0]
        else:
            tcn = _branches(state, f"{pre}.tcn", what)
            if not tcn:
                raise GcnshrinkError(f"{what} block {i} has neither tcn.conv nor tcn.branches")
            out = upstream.shape_of(state, f"{pre}.tcn.transform.2.weight", what)[0]
        if f"{pre}.gcn.down.0.weight" in state:
            down = "conv"
        else:
            down = "identity" if with_res else "none"
        if f"{pre}.residual.conv.weight" in state:
            residual = "conv"
        else:
            residual = "none" if i == 0 and c_in != out else "identity"
        stride = 2 if blocks and out > blocks[-1]["out"] else 1
        blocks.append(
            {
                "in": c_in,
                "mid": mid,
                "out": out,
                "stride": stride,
                "residual": residual,
                "down": down,
                "tcn": tcn,
            }
        )
        i += 1
    if not blocks:
        raise GcnshrinkError(f"no gcn.0.gcn.conv in the {what} checkpoint")
    in_channels = blocks[0]["in"]
    joints = upstream.shape_of(state, "gcn.0.gcn.A", what)[-1]
    if "data_bn.weight" not in state:
        data_bn, persons = "none", None
    else:
        length = upstream.shape_of(state, "data_bn.weight", what)[0]
        if length == joints * in_channels:
            data_bn, persons = "VC", None
        else:
            data_bn = "MVC"
            persons = upstream.persons_from_data_bn(length, joints, in_channels, what)
    layout = upstream.layout_for(joints, persons, layout, what)
    classes = upstream.shape_of(state, "cls_head.fc_cls.weight", what)[0]
    return {
        "num_classes": upstream.check_classes(classes, num_classes),
        "layout": layout.to_dict(),
        "in_channels": in_channels,
        "adaptive": adaptive,
        "with_res": with_res,
        "tcn": "unit_tcn" if all(b["tcn"] == "unit" for b in blocks) else "mstcn",
        "data_bn": data_bn,
        "blocks": blocks,
    }
