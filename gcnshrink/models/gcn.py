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

import torch
from torch import nn

from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import Layout
from gcnshrink.models.registry import SkeletonModel, register

DEFAULTS = {
    "in_channels": 3,
    "chunks": 4,
    "num_blocks": 3,
    "heads": 8,
    "head_width": 16,
    "key_width": 8,
    "hidden": 128,
    "mix": 0.5,
    "dropout": 0.1,
}


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


@register("gcn")
class AttentionGCN(SkeletonModel):
    """The papers' multi-head attention GCN (default architecture)."""

    @staticmethod
    def complete_config(config: dict) -> dict:
        cfg = {**DEFAULTS, **config}
        if "num_classes" not in cfg or "layout" not in cfg:
            raise ValueError("gcn needs num_classes and layout")
        if isinstance(cfg["layout"], Layout):
            cfg["layout"] = cfg["layout"].to_dict()
        if "blocks" not in cfg:
            cfg["blocks"] = [
                {
                    "value_widths": [cfg["head_width"]] * cfg["heads"],
                    "key_widths": [cfg["key_width"]] * cfg["heads"],
                }
                for _ in range(cfg["num_blocks"])
            ]
        # the attention temperature stays what it was at training time, even after compaction
        cfg.setdefault("attention_scale", 1.0 / math.sqrt(max(cfg["key_width"], 1)))
        return cfg

    def __init__(self, config: dict):
        super().__init__(config)
        layout = Layout.from_dict(config["layout"])
        self.nodes = layout.num_joints * layout.persons
        self.chunks = config["chunks"]
        self.register_buffer("adjacency", node_adjacency(layout), persistent=False)
        in_width = config["in_channels"] * config["chunks"]
        self.blocks = nn.ModuleList()
        for spec in config["blocks"]:
            self.blocks.append(
                AttentionGraphBlock(
                    in_width,
                    spec["value_widths"],
                    spec["key_widths"],
                    config["mix"],
                    config["attention_scale"],
                )
            )
            in_width = sum(spec["value_widths"])
        self.fc = nn.Linear(self.nodes * in_width, config["hidden"])
        self.fc_act = nn.ReLU()
        self.dropout = nn.Dropout(config["dropout"])
        self.classifier = nn.Linear(config["hidden"], config["num_classes"])

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
        cfg = self.config
        in_width = cfg["in_channels"] * cfg["chunks"]
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
        for b, spec in enumerate(cfg["blocks"]):
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
        spaces.append(UnitSpace("hidden", cfg["hidden"]))
        linear("fc", "flat", flat_w, "hidden", cfg["hidden"])
        probes["hidden"] = ActivationProbe("fc_act", -1)
        spaces.append(UnitSpace("classes", cfg["num_classes"], "output"))
        linear("classifier", "hidden", cfg["hidden"], "classes", cfg["num_classes"])
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
