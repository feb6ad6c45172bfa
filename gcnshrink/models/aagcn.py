"""``aagcn``: MS-AAGCN (Shi et al., TIP 2020), one stream, with the original repository's names.

Keys are those of ``model/aagcn.py`` in lshiwjx/2s-AGCN: 2s-AGCN's (``l{1..10}``, ``data_bn`` of
M·V·C, ``fc``) plus, in each ``gcn1``, ``alpha``, ``conv_sa``, ``conv_ta``, ``fc1c`` and ``fc2c``. The
adjacency is the trained ``PA`` (initialised to identity, inward, outward), so imports use the
file's graph.

Each unit_gcn, for every subset k:

    y += conv_d.k(x · (PA_k + alpha · tanh(conv_a.k(x)ᵀ · conv_b.k(x) / (inter · T))))

then ``relu(bn(y) + down(x))`` and three gates, each ``y = y · g + y``: spatial (``conv_sa`` over
the mean over frames, one value per joint), temporal (``conv_ta`` over the mean over joints, one
per frame) and channel (``fc1c``, ReLU, ``fc2c`` on the mean over frames and joints, one per
channel), each through a sigmoid.

The unit graph is 2s-AGCN's (:mod:`gcnshrink.models.agcn`: ``conv_a``/``conv_b`` steer the
aggregation ``agg{k}`` that ``conv_d`` carries) with two differences. The scores go through a tanh,
not a softmax: the steering is unnormalised (a constant channel aggregated by it depends on the
input, so it carries signal and co-accessibility comes back from every co-accessible target, and
a constant key dimension is not ignorable: only zero dimensions go). And the gates: the graph-conv output
``gcn`` is joined to the gated output ``att`` (an identity link: channel c stays channel c,
multiplied by factors between 1 and 2); ``conv_sa`` and ``conv_ta`` write one-unit spaces
``sa``/``ta`` that steer every channel of ``att`` (unnormalised too); ``fc1c`` writes the squeeze
space ``se`` and ``fc2c`` the per-channel gate ``gate``, which steers ``att`` channel by channel (a
``channel_steer`` link, so gate c and channel c are kept together). ``conv_sa``/``conv_ta``/
``fc1c`` read the gated activations, whose constants are not ``gcn``'s, so they never absorb a
removed constant.

pyskl's ``AAGCN`` backbone computes the same (``unit_aagcn`` is MS-AAGCN's ``unit_gcn``, its blocks
and ``GCNHead`` pool and classify alike) under other names: ``backbone.gcn.{i}.gcn.*`` with the
trained adjacency as ``A``, ``backbone.gcn.{i}.tcn.*``, ``backbone.gcn.{i}.residual.*`` and
``cls_head.fc_cls.*``; its files are renamed onto these keys. Supported: pyskl's defaults
(``data_bn_type='MVC'``, ``tcn_type='unit_tcn'``, adaptive graph), with or without the gates.
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
from gcnshrink.models.agcn import (
    BLOCK_KEYS as AGCN_BLOCK_KEYS,
)
from gcnshrink.models.agcn import (
    GcnTcnUnit,
    TemporalConv,
    UpstreamStack,
    check_block,
    infer_agcn_config,
)
from gcnshrink.models.agcn import default_blocks as agcn_blocks
from gcnshrink.models.base import (
    MAX_WIDTH,
    ModelConfig,
    check_float,
    check_int,
)
from gcnshrink.models.registry import register_model
from gcnshrink.models.upstream import bn_binding, direct, weight_binding

BLOCK_KEYS = (*AGCN_BLOCK_KEYS, "gate")
TEMPORAL_GATE_KERNEL = 9
GATE_RATIO = 2  # fc1c: C -> C // 2


def default_blocks(in_channels: int, base: int) -> list[dict]:
    return [
        {**spec, "gate": max(spec["mid"] // GATE_RATIO, 1)}
        for spec in agcn_blocks(in_channels, base)
    ]


def joint_kernel(joints: int) -> int:
    """``conv_sa``'s kernel: the joint count, minus one when it is even (same-size output)."""
    return joints if joints % 2 else joints - 1


@dataclass(kw_only=True)
class AAGCNConfig(ModelConfig):
    """``blocks`` is the ten-block plan at ``base_width`` when not given (per block 2s-AGCN's
    widths and ``gate``, the width of ``fc1c``); ``attention`` switches the three gates (upstream's
    ``attention=True``); ``dropout`` is applied before ``fc``."""

    base_width: int = 64
    attention: bool = True
    dropout: float = 0.0
    blocks: list[dict] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_width = check_int("base_width", self.base_width, 1, MAX_WIDTH // 4)
        if not isinstance(self.attention, bool):
            raise GcnshrinkError(f"attention must be true or false, got {self.attention!r}")
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        if self.blocks is None:
            self.blocks = default_blocks(self.in_channels, self.base_width)
        self.blocks = upstream.check_blocks(self.blocks, self.in_channels, _check_block)


def _check_block(i: int, spec: object, prev: int) -> dict:
    block = check_block(i, spec, prev, BLOCK_KEYS)
    block["gate"] = check_int(f"blocks[{i}].gate", block["gate"], 1, MAX_WIDTH)
    return {key: block[key] for key in BLOCK_KEYS}


class AttentionGraphConv(nn.Module):
    """MS-AAGCN's ``unit_gcn`` (adaptive, with or without the three gates)."""

    def __init__(self, spec: dict, adjacency: torch.Tensor, attention: bool):
        super().__init__()
        c_in, mid = spec["in"], spec["mid"]
        self.inter = list(spec["inter"])
        self.inter_scale = spec["inter_scale"]
        self.conv_d = nn.ModuleList(nn.Conv2d(c_in, mid, 1) for _ in self.inter)
        self.PA = nn.Parameter(adjacency.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.conv_a = nn.ModuleList(nn.Conv2d(c_in, w, 1) for w in self.inter)
        self.conv_b = nn.ModuleList(nn.Conv2d(c_in, w, 1) for w in self.inter)
        self.attention = attention
        if attention:
            joints = adjacency.shape[-1]
            kernel = joint_kernel(joints)
            self.conv_ta = nn.Conv1d(mid, 1, TEMPORAL_GATE_KERNEL, padding=4)
            self.conv_sa = nn.Conv1d(mid, 1, kernel, padding=(kernel - 1) // 2)
            self.fc1c = nn.Linear(mid, spec["gate"])
            self.fc2c = nn.Linear(spec["gate"], mid)
            self.act_gate = nn.ReLU()
        if spec["down"] == "conv":
            self.down = nn.Sequential(nn.Conv2d(c_in, mid, 1), nn.BatchNorm2d(mid))
        else:
            self.down = nn.Identity()
        self.bn = nn.BatchNorm2d(mid)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        y = None
        for k, width in enumerate(self.inter):
            if width == 0:
                scores = x.new_zeros(n, v, v)  # no embedding left: tanh(0) = 0
            else:
                a = self.conv_a[k](x).permute(0, 3, 1, 2).reshape(n, v, width * t)
                b = self.conv_b[k](x).reshape(n, width * t, v)
                scores = torch.matmul(a, b) / (self.inter_scale * t)
            weights = self.PA[k] + torch.tanh(scores) * self.alpha
            z = self.conv_d[k](torch.matmul(x.reshape(n, c * t, v), weights).reshape(n, c, t, v))
            y = z if y is None else y + z
        y = self.act(self.bn(y) + self.down(x))
        if self.attention:
            spatial = torch.sigmoid(self.conv_sa(y.mean(-2)))  # (N, 1, V)
            y = y * spatial.unsqueeze(-2) + y
            temporal = torch.sigmoid(self.conv_ta(y.mean(-1)))  # (N, 1, T)
            y = y * temporal.unsqueeze(-1) + y
            squeezed = self.act_gate(self.fc1c(y.mean(-1).mean(-1)))
            channel = torch.sigmoid(self.fc2c(squeezed))  # (N, C)
            y = y * channel.unsqueeze(-1).unsqueeze(-1) + y
        return y


class AAGCNBlock(GcnTcnUnit):
    def __init__(self, spec: dict, adjacency: torch.Tensor, attention: bool):
        gcn1 = AttentionGraphConv(spec, adjacency, attention)
        super().__init__(gcn1, TemporalConv(spec["mid"], spec["out"], spec["stride"]), spec)


@register_model("aagcn")
class AAGCN(UpstreamStack):
    """MS-AAGCN (one stream): adaptive graph with tanh attention, spatial/temporal/channel gates."""

    config_class = AAGCNConfig
    arch_config: AAGCNConfig

    def __init__(self, config: AAGCNConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        adjacency = torch.from_numpy(upstream.directed_partitions(cfg.layout))
        self.build_stack([AAGCNBlock(spec, adjacency, cfg.attention) for spec in cfg.blocks])

    @classmethod
    def tiny_config(cls) -> dict:
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
            pre, name, mid = f"l{i + 1}", f"block{i}", spec["mid"]
            at = f"{pre}.gcn1"
            gcn, out = f"{name}.gcn", f"{name}.out"
            for k, width in enumerate(spec["inter"]):
                key, query, agg = f"{name}.a{k}", f"{name}.b{k}", f"{name}.agg{k}"
                spaces += [UnitSpace(key, width), UnitSpace(query, width), UnitSpace(agg, prev_w)]
                for conv, space in ((f"conv_a.{k}", key), (f"conv_b.{k}", query)):
                    weight_binding(
                        bindings, f"{at}.{conv}", direct(prev, prev_w), direct(space, width), True
                    )
                    probes[space] = ActivationProbe(f"{at}.{conv}", 1)
                    # tanh, no softmax: constants aggregated by it depend on the input
                    links.append(Link.steer(space, range(width), agg, range(prev_w), False))
                links.append(Link.identity(prev, agg, prev_w))
                probes[agg] = ActivationProbe(f"{at}.conv_d.{k}", 1, input_of=True)
                pairs.append((query, key))
            spaces.append(UnitSpace(gcn, mid))
            for k in range(len(spec["inter"])):
                weight_binding(
                    bindings,
                    f"{at}.conv_d.{k}",
                    direct(f"{name}.agg{k}", prev_w),
                    direct(gcn, mid),
                    True,
                )
            if spec["down"] == "conv":
                weight_binding(
                    bindings, f"{at}.down.0", direct(prev, prev_w), direct(gcn, mid), True
                )
                bn_binding(bindings, f"{at}.down.1", direct(gcn, mid))
            else:
                links.append(Link.identity(prev, gcn, prev_w))
            bn_binding(bindings, f"{at}.bn", direct(gcn, mid))
            carried = gcn
            if cfg.attention:
                sa, ta, se, gate, att = (f"{name}.{s}" for s in ("sa", "ta", "se", "gate", "att"))
                spaces += [
                    UnitSpace(sa, 1),
                    UnitSpace(ta, 1),
                    UnitSpace(se, spec["gate"]),
                    UnitSpace(gate, mid),
                    UnitSpace(att, mid),
                ]
                # the gates read gated activations (and conv_sa/conv_ta pad with zeros): no fold
                weight_binding(bindings, f"{at}.conv_sa", direct(gcn, mid), direct(sa, 1), False)
                weight_binding(bindings, f"{at}.conv_ta", direct(gcn, mid), direct(ta, 1), False)
                weight_binding(
                    bindings, f"{at}.fc1c", direct(gcn, mid), direct(se, spec["gate"]), False
                )
                weight_binding(
                    bindings, f"{at}.fc2c", direct(se, spec["gate"]), direct(gate, mid), True
                )
                links.append(Link.identity(gcn, att, mid))
                links.append(Link.steer(sa, [0], att, range(mid), normalised=False))
                links.append(Link.steer(ta, [0], att, range(mid), normalised=False))
                links.append(Link.channel_steer(gate, att, mid))
                probes[gcn] = ActivationProbe(f"{at}.act", 1)
                probes[sa] = ActivationProbe(f"{at}.conv_sa", 1)
                probes[ta] = ActivationProbe(f"{at}.conv_ta", 1)
                probes[se] = ActivationProbe(f"{at}.act_gate", 1)
                probes[gate] = ActivationProbe(f"{at}.fc2c", 1)
                probes[att] = ActivationProbe(at, 1)
                carried = att
            else:
                probes[gcn] = ActivationProbe(at, 1)
            spaces.append(UnitSpace(out, spec["out"]))
            # zero padding in time: border frames see fewer taps, a constant does not fold
            weight_binding(
                bindings, f"{pre}.tcn1.conv", direct(carried, mid), direct(out, spec["out"]), False
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
            block = {
                **spec,
                "in": prev,
                "mid": int(kept[f"{name}.gcn"].sum()),
                "out": out,
                "inter": [int(kept[f"{name}.a{k}"].sum()) for k in range(len(spec["inter"]))],
            }
            if self.config["attention"]:
                block["gate"] = int(kept[f"{name}.se"].sum())
            blocks.append(block)
            prev = out
        return {**self.config, "blocks": blocks}

    # ------------------------------------------------------------------ foreign checkpoints
    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        original = "l1.gcn1.conv_a.0.weight" in state and "l1.gcn1.alpha" in state
        return original or is_pyskl_aagcn(state)

    @classmethod
    def rename_foreign(cls, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not is_pyskl_aagcn(state):
            return dict(state)
        if any(".tcn.branches." in key for key in state):
            raise GcnshrinkError(
                "pyskl AAGCN with tcn_type='mstcn' is not supported (gcnshrink's aagcn has "
                "pyskl's default unit_tcn)"
            )
        inner = {"gcn.A": "gcn1.PA", "gcn.": "gcn1.", "tcn.": "tcn1."}
        return upstream.rename_pyskl(state, "gcn", inner, "pyskl AAGCN")

    @classmethod
    def import_state(
        cls,
        state: Mapping[str, torch.Tensor],
        layout: Layout | None = None,
        num_classes: int | None = None,
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        config, renamed = super().import_state(state, layout, num_classes)
        first = config["blocks"][0]
        if is_pyskl_aagcn(state) and first["residual"] == "none" and first["in"] == first["out"]:
            # pyskl skips its first stage when in_channels == base_channels: the first block
            # present is a later stage, with an identity residual
            first["residual"] = "identity"
        return config, renamed

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        what = "MS-AAGCN"
        config = infer_agcn_config(state, layout, num_classes, what)
        attention = "l1.gcn1.fc1c.weight" in state
        for i, block in enumerate(config["blocks"]):
            if attention:
                gate = upstream.shape_of(state, f"l{i + 1}.gcn1.fc1c.weight", what)[0]
            else:
                gate = max(block["mid"] // GATE_RATIO, 1)
            block["gate"] = gate
        return {**config, "attention": attention}


def is_pyskl_aagcn(state: Mapping[str, torch.Tensor]) -> bool:
    """pyskl's AAGCN backbone with its GCNHead, once ``backbone.`` is stripped."""
    return "gcn.0.gcn.conv_a.0.weight" in state and "cls_head.fc_cls.weight" in state
