"""``gcn``: the backbone of Sahbi's lightweight-GCN papers, readable top to bottom.

A sample is a skeleton sequence (N, C, T, V, M). Each joint of each person is a graph node; its
trajectory is cut into ``chunks`` equal temporal chunks whose mean coordinates are concatenated into
the node descriptor (C·chunks values). No temporal convolution.

Each block is multi-head: head h computes a data-dependent attention S_h = softmax(Q_h K_hᵀ · scale)
over the nodes, mixes it with the row-normalised skeleton adjacency Â,
A_h = mix·Â + (1 − mix)·S_h, and applies a graph convolution shared by all nodes, A_h X W_h. The
heads' outputs are concatenated and passed through a ReLU. After the blocks the node features are
flattened node-major (index v·width + c) into a fully connected layer and the classifier.

Because A_h is row-stochastic, a constant input channel stays constant after aggregation, which lets
compaction fold removed constant units into the next bias exactly.

Widths are per head and per block (``value_widths``, ``key_widths``) so that a compacted model, whose
heads lost different numbers of units, is described by the same config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import LAYOUTS, Layout
from gcnshrink.models.base import (
    MAX_COUNT,
    MAX_WIDTH,
    ModelConfig,
    SkeletonModel,
    check_dict,
    check_float,
    check_int,
    check_list,
)
from gcnshrink.models.registry import register_model


@dataclass(kw_only=True)
class GCNConfig(ModelConfig):
    """``blocks`` (per block, the width of every head's values and queries/keys) is derived from
    ``num_blocks``, ``heads``, ``head_width`` and ``key_width`` when not given; a compacted model
    gives it explicitly. ``attention_scale`` is derived from ``key_width`` once and then recorded,
    so that it survives compaction."""

    chunks: int = 4
    num_blocks: int = 3
    heads: int = 8
    head_width: int = 16
    key_width: int = 8
    hidden: int = 128
    mix: float = 0.5
    dropout: float = 0.1
    blocks: list[dict] | None = None
    attention_scale: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.chunks = check_int("chunks", self.chunks, 1, MAX_COUNT)
        check_int("in_channels × chunks", self.in_channels * self.chunks, 1, MAX_WIDTH)
        self.num_blocks = check_int("num_blocks", self.num_blocks, 1, MAX_COUNT)
        self.heads = check_int("heads", self.heads, 1, MAX_COUNT)
        self.head_width = check_int("head_width", self.head_width, 1, MAX_WIDTH)
        self.key_width = check_int("key_width", self.key_width, 0, MAX_WIDTH)
        self.hidden = check_int("hidden", self.hidden, 0, MAX_WIDTH)  # 0: compacted away
        self.mix = check_float("mix", self.mix, 0.0, 1.0)
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        if self.blocks is None:
            self.blocks = [
                {
                    "value_widths": [self.head_width] * self.heads,
                    "key_widths": [self.key_width] * self.heads,
                }
                for _ in range(self.num_blocks)
            ]
        blocks = check_list("blocks", self.blocks)
        if not 1 <= len(blocks) <= MAX_COUNT:
            raise GcnshrinkError(f"blocks must list 1 to {MAX_COUNT} blocks, got {len(blocks)}")
        self.blocks = [_check_block(b, spec) for b, spec in enumerate(blocks)]
        if self.attention_scale is None:
            self.attention_scale = 1.0 / math.sqrt(max(self.key_width, 1))
        self.attention_scale = check_float("attention_scale", self.attention_scale, 0.0, 1e6)


def _check_block(b: int, spec: object) -> dict:
    spec = check_dict(f"blocks[{b}]", spec, ("value_widths", "key_widths"))
    widths = {}
    for key in ("value_widths", "key_widths"):
        values = check_list(f"blocks[{b}].{key}", spec[key])
        widths[key] = [check_int(f"blocks[{b}].{key}", w, 0, MAX_WIDTH) for w in values]
        check_int(f"blocks[{b}] total {key}", sum(widths[key]), 0, MAX_WIDTH)
    if len(widths["value_widths"]) != len(widths["key_widths"]) or not widths["key_widths"]:
        raise GcnshrinkError(
            f"blocks[{b}] needs one value and one key width per head, got "
            f"{len(widths['value_widths'])} and {len(widths['key_widths'])}"
        )
    return {"value_widths": widths["value_widths"], "key_widths": widths["key_widths"]}


def node_adjacency(layout: Layout) -> torch.Tensor:
    """Row-normalised adjacency over all V·M nodes (node m·V + v); persons are not linked."""
    per_person = torch.from_numpy(layout.adjacency(self_loops=True))
    full = torch.block_diag(*([per_person] * layout.persons))
    return full / full.sum(dim=1, keepdim=True)


class AttentionGraphBlock(nn.Module):
    """Multi-head attention + shared graph convolution; heads may have different widths."""

    def __init__(
        self,
        in_width: int,
        value_widths: list[int],
        key_widths: list[int],
        mix: float,
        scale: float,
    ):
        super().__init__()
        self.value_widths = list(value_widths)
        self.key_widths = list(key_widths)
        self.mix = mix
        self.scale = scale
        self.query = nn.Linear(in_width, sum(key_widths))
        self.key = nn.Linear(in_width, sum(key_widths))
        self.value = nn.Linear(in_width, sum(value_widths))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        # x: (N, nodes, in_width)
        q, k, z = self.query(x), self.key(x), self.value(x)
        outputs = []
        q_start = v_start = 0
        for key_w, value_w in zip(self.key_widths, self.value_widths, strict=True):
            q_h, k_h = q[..., q_start : q_start + key_w], k[..., q_start : q_start + key_w]
            z_h = z[..., v_start : v_start + value_w]
            q_start += key_w
            v_start += value_w
            if value_w == 0:
                continue  # a head pruned away entirely
            if key_w > 0:
                scores = torch.softmax(q_h @ k_h.transpose(1, 2) * self.scale, dim=-1)
                mixed = self.mix * adjacency + (1.0 - self.mix) * scores  # (N, nodes, nodes)
                outputs.append(mixed @ z_h)
            else:
                # no query/key dims left: the attention is uniform, 1/nodes everywhere
                uniform_part = (1.0 - self.mix) * z_h.mean(dim=1, keepdim=True)
                outputs.append(self.mix * (adjacency @ z_h) + uniform_part)
        if not outputs:
            return x.new_zeros(x.shape[0], x.shape[1], 0)
        return self.act(torch.cat(outputs, dim=-1))


@register_model("gcn")
class AttentionGCN(SkeletonModel):
    """The papers' multi-head attention GCN (default architecture)."""

    config_class = GCNConfig
    arch_config: GCNConfig

    def __init__(self, config: GCNConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        self.nodes = cfg.layout.num_joints * cfg.layout.persons
        self.chunks = cfg.chunks
        self.register_buffer("adjacency", node_adjacency(cfg.layout), persistent=False)
        in_width = cfg.in_channels * cfg.chunks
        self.blocks = nn.ModuleList()
        for spec in cfg.blocks:
            self.blocks.append(
                AttentionGraphBlock(
                    in_width,
                    spec["value_widths"],
                    spec["key_widths"],
                    cfg.mix,
                    cfg.attention_scale,
                )
            )
            in_width = sum(spec["value_widths"])
        self.fc = nn.Linear(self.nodes * in_width, cfg.hidden)
        self.fc_act = nn.ReLU()
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, cfg.num_classes)

    @classmethod
    def tiny_config(cls) -> dict:
        # eight heads as by default, which is what the import of a bare state dict assumes; two
        # blocks, so that units cross from one block to the next
        return {
            "layout": "hand21",
            "num_classes": 5,
            "num_blocks": 2,
            "heads": 8,
            "head_width": 2,
            "key_width": 1,
            "hidden": 16,
        }

    def node_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) -> (N, V·M, chunks·C): mean coordinates of each temporal chunk."""
        n, c, t, v, m = x.shape
        if t < self.chunks:
            raise ValueError(f"sequences have {t} frames, fewer than chunks={self.chunks}")
        nodes = x.permute(0, 4, 3, 2, 1).reshape(n, m * v, t, c)  # node index m·V + v
        # averaging matrix (T, chunks): frame t belongs to chunk floor(t·chunks / T)
        chunk_of_frame = torch.arange(t, device=x.device) * self.chunks // t
        weights = nn.functional.one_hot(chunk_of_frame, self.chunks).to(x.dtype)
        weights = weights / weights.sum(dim=0, keepdim=True)
        means = torch.einsum("bitc,tk->bikc", nodes, weights)  # (N, nodes, chunks, C)
        return means.reshape(n, m * v, self.chunks * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.node_descriptors(x)
        for block in self.blocks:
            h = block(h, self.adjacency)
        h = h.reshape(h.shape[0], -1)  # node-major flatten: v·width + c
        h = self.dropout(self.fc_act(self.fc(h)))
        return self.classifier(h)

    # ------------------------------------------------------------------ unit graph
    def unit_graph(self) -> UnitGraph:
        cfg = self.arch_config
        in_width = cfg.in_channels * cfg.chunks
        spaces = [UnitSpace("input", in_width, "input")]
        bindings: list[TensorBinding] = []
        links: list[Link] = []
        probes: dict[str, ActivationProbe] = {}
        prev = "input"
        prev_width = in_width

        def linear(name: str, source: str, source_w: int, target: str, target_w: int) -> None:
            bindings.append(
                TensorBinding(
                    f"{name}.weight",
                    {0: AxisMap.direct(target, target_w), 1: AxisMap.direct(source, source_w)},
                    prunable=True,
                    source_axis=1,
                    target_axis=0,
                    bias=f"{name}.bias",
                )
            )
            bindings.append(TensorBinding(f"{name}.bias", {0: AxisMap.direct(target, target_w)}))

        attention_pairs = []
        for b, spec in enumerate(cfg.blocks):
            qk_w, out_w = sum(spec["key_widths"]), sum(spec["value_widths"])
            q_space, k_space, out_space = f"block{b}.query", f"block{b}.key", f"block{b}.out"
            spaces += [
                UnitSpace(q_space, qk_w),
                UnitSpace(k_space, qk_w),
                UnitSpace(out_space, out_w),
            ]
            linear(f"blocks.{b}.query", prev, prev_width, q_space, qk_w)
            linear(f"blocks.{b}.key", prev, prev_width, k_space, qk_w)
            linear(f"blocks.{b}.value", prev, prev_width, out_space, out_w)
            q0 = v0 = 0
            for key_w, value_w in zip(spec["key_widths"], spec["value_widths"], strict=True):
                head_q, head_v = range(q0, q0 + key_w), range(v0, v0 + value_w)
                links.append(Link.steer(q_space, head_q, out_space, head_v))
                links.append(Link.steer(k_space, head_q, out_space, head_v))
                q0 += key_w
                v0 += value_w
            attention_pairs.append((q_space, k_space))
            probes[q_space] = ActivationProbe(f"blocks.{b}.query", -1)
            probes[k_space] = ActivationProbe(f"blocks.{b}.key", -1)
            probes[out_space] = ActivationProbe(f"blocks.{b}", -1)
            prev, prev_width = out_space, out_w
        flat_w = self.nodes * prev_width
        spaces.append(UnitSpace("flat", flat_w))
        links.append(Link.flatten(prev, "flat", prev_width, self.nodes))
        spaces.append(UnitSpace("hidden", cfg.hidden))
        linear("fc", "flat", flat_w, "hidden", cfg.hidden)
        probes["hidden"] = ActivationProbe("fc_act", -1)
        spaces.append(UnitSpace("classes", cfg.num_classes, "output"))
        linear("classifier", "hidden", cfg.hidden, "classes", cfg.num_classes)
        return UnitGraph(spaces, bindings, links, probes, attention_pairs)

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        cfg = {**self.config, "blocks": []}
        for b, spec in enumerate(self.config["blocks"]):
            q_keep, out_keep = kept[f"block{b}.query"], kept[f"block{b}.out"]
            key_widths, value_widths = [], []
            q0 = v0 = 0
            for key_w, value_w in zip(spec["key_widths"], spec["value_widths"], strict=True):
                key_widths.append(int(q_keep[q0 : q0 + key_w].sum()))
                value_widths.append(int(out_keep[v0 : v0 + value_w].sum()))
                q0 += key_w
                v0 += value_w
            cfg["blocks"].append({"value_widths": value_widths, "key_widths": key_widths})
        cfg["hidden"] = int(kept["hidden"].sum())
        return cfg

    # ------------------------------------------------------------------ foreign checkpoints
    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        return any(k.startswith("blocks.") and k.endswith("query.weight") for k in state)

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        return infer_gcn_config(state, layout)


def infer_gcn_config(
    state: Mapping[str, torch.Tensor], layout: Layout | None, heads: int = 8, chunks: int = 4
) -> dict:
    """A bare ``gcn`` state dict: widths from shapes; heads are assumed equal-width (8, the default).

    How a block's widths split into heads is not in the shapes, and neither are ``chunks`` nor the
    attention scale: a model trained with other values needs its config passed explicitly.
    """
    blocks, b = [], 0
    while f"blocks.{b}.value.weight" in state:
        value_w = int(state[f"blocks.{b}.value.weight"].shape[0])
        key_w = int(state[f"blocks.{b}.query.weight"].shape[0])
        if value_w % heads or key_w % heads:
            raise GcnshrinkError(
                f"block {b} widths ({value_w}, {key_w}) do not split into {heads} equal heads; pass --config"
            )
        blocks.append(
            {"value_widths": [value_w // heads] * heads, "key_widths": [key_w // heads] * heads}
        )
        b += 1
    if not blocks or "fc.weight" not in state or "classifier.weight" not in state:
        raise GcnshrinkError("gcn checkpoint lacks blocks.0.value, fc or classifier weights")
    in_width = int(state["blocks.0.value.weight"].shape[1])
    last_width = sum(blocks[-1]["value_widths"])
    nodes = int(state["fc.weight"].shape[1]) // last_width if last_width else 0
    if layout is None:
        candidates = [lay for lay in LAYOUTS.values() if lay.num_joints * lay.persons == nodes]
        if len(candidates) != 1:
            raise GcnshrinkError(
                f"cannot tell the skeleton layout of a {nodes}-node gcn; pass --layout"
            )
        layout = candidates[0]
    return {
        "num_classes": int(state["classifier.weight"].shape[0]),
        "layout": layout.to_dict(),
        "in_channels": in_width // chunks,
        "chunks": chunks,
        "heads": heads,
        "key_width": blocks[0]["key_widths"][0],
        "hidden": int(state["fc.weight"].shape[0]),
        "blocks": blocks,
    }
