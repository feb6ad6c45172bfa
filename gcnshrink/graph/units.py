"""The unit graph: which units (channels, neurons, attention dimensions) each tensor connects.

Every model in the zoo declares its graph next to its layers (``model.unit_graph()``), so nothing
depends on tracing. One structure answers every question gcnshrink asks:

- pruning: which tensors are prunable and, for each entry, its source and target unit;
- TCP: which units are accessible from the input and co-accessible from the output;
- compaction: which positions of which tensors (weights, biases, norms) belong to a unit;
- reports: dead units and inconsistent connections.

Vocabulary
----------
A *unit space* is a named set of ``width`` units (say, the 64 channels of a block's output). Units are
shared by all joints and frames: a unit is a channel, not a (channel, joint) activation.

A *tensor binding* says how the axes of one parameter or buffer index unit spaces: for axis ``a`` an
:class:`AxisMap` gives the unit of every position along it. ST-GCN's graph convolution produces
``K·C`` rows interleaved as ``k·C + c``, so its row axis maps position ``r`` to unit ``r % C``; a plain
linear layer maps position ``i`` to unit ``i``. Prunable weights have a *source* and a *target* axis;
every entry then connects ``source_unit -> target_unit``. Biases and norm parameters bind a single axis.

A *link* is a structural, weight-free connection: an identity residual (``out[i-1][c] -> out[i][c]``),
the node-major flatten before a fully connected layer (``channel c -> flat (v, c)``), or attention
steering (query/key dimensions of head ``h`` steer the aggregation of head ``h``'s output units).
Steering links carry no signal forward (the attention only re-weights neighbours), so they count for
co-accessibility but not for accessibility.

Joint-indexed tensors (adjacency, edge importance, attention scores) have no binding: nothing ever
prunes or cuts them along a joint axis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

SIGNAL_LINKS = ("identity", "flatten")
LINK_KINDS = (*SIGNAL_LINKS, "steer")


@dataclass(frozen=True)
class UnitSpace:
    """A named set of units. ``role`` is "input", "output" or "hidden" (only hidden ones shrink)."""

    name: str
    width: int
    role: str = "hidden"


@dataclass
class AxisMap:
    """Unit of every position along one tensor axis: ``units[p]`` is the unit index of position p."""

    space: str
    units: torch.Tensor  # int64, one entry per position along the axis

    @classmethod
    def direct(cls, space: str, width: int) -> AxisMap:
        return cls(space, torch.arange(width))

    @classmethod
    def interleaved(cls, space: str, width: int, repeats: int) -> AxisMap:
        """Rows ``k·width + c`` for k < repeats all belong to unit c (ST-GCN's K·C output)."""
        return cls(space, torch.arange(width).repeat(repeats))


@dataclass
class TensorBinding:
    """How one named parameter or buffer indexes unit spaces.

    For a prunable weight, ``source_axis``/``target_axis`` name the axes that carry the signal;
    ``bias`` names the tensor indexed by the target units that absorbs constant inputs when a dead
    source unit is removed, and ``folds_constant`` says whether such folding is exact (it is not for a
    temporal convolution with zero padding, whose border frames see fewer taps).
    """

    name: str
    axes: dict[int, AxisMap]
    prunable: bool = False
    source_axis: int | None = None
    target_axis: int | None = None
    bias: str | None = None
    folds_constant: bool = True

    @property
    def source(self) -> str:
        return self.axes[self.source_axis].space

    @property
    def target(self) -> str:
        return self.axes[self.target_axis].space


@dataclass
class Link:
    """A weight-free connection: pairs ``source_units[i] -> target_units[i]``."""

    source: str
    target: str
    source_units: torch.Tensor
    target_units: torch.Tensor
    kind: str = "identity"

    def __post_init__(self) -> None:
        if self.kind not in LINK_KINDS:
            raise ValueError(f"unknown link kind {self.kind!r}")

    @classmethod
    def identity(cls, source: str, target: str, width: int) -> Link:
        units = torch.arange(width)
        return cls(source, target, units, units, "identity")

    @classmethod
    def flatten(cls, source: str, target: str, channels: int, nodes: int) -> Link:
        """Node-major flatten: flat index ``v·channels + c`` carries channel c."""
        flat = torch.arange(nodes * channels)
        return cls(source, target, flat % channels, flat, "flatten")

    @classmethod
    def steer(
        cls, source: str, source_units: Iterable[int], target: str, target_units: Iterable[int]
    ) -> Link:
        """Every source unit steers every target unit (attention dims of a head -> its outputs)."""
        s = torch.as_tensor(list(source_units), dtype=torch.long)
        t = torch.as_tensor(list(target_units), dtype=torch.long)
        return cls(source, target, s.repeat_interleave(len(t)), t.repeat(len(s)), "steer")


@dataclass
class ActivationProbe:
    """Where to observe a space's activation: the output of ``module`` (a dotted module path),
    with the unit axis at ``channel_dim``. Used by compaction to measure constant units."""

    module: str
    channel_dim: int
    input_of: bool = False  # observe the module's input instead of its output


@dataclass
class UnitGraph:
    """Unit spaces in forward order, the tensors that index them, and the links between them."""

    spaces: list[UnitSpace]
    bindings: list[TensorBinding]
    links: list[Link] = field(default_factory=list)
    probes: dict[str, ActivationProbe] = field(default_factory=dict)
    # (query space, key space) of each attention block: dimension i of both goes together
    attention_pairs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.space_by_name = {s.name: s for s in self.spaces}
        self.order = {s.name: i for i, s in enumerate(self.spaces)}
        self.binding_by_name = {b.name: b for b in self.bindings}
        for b in self.bindings:
            for axis, amap in b.axes.items():
                if amap.space not in self.space_by_name:
                    raise ValueError(f"{b.name}: axis {axis} names unknown space {amap.space!r}")
        self._entry_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ structure
    @property
    def prunable(self) -> list[TensorBinding]:
        return [b for b in self.bindings if b.prunable]

    def width(self, space: str) -> int:
        return self.space_by_name[space].width

    def entry_units(
        self, binding: TensorBinding, shape: torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(source unit, target unit) of every entry of a prunable tensor, flattened row-major."""
        cached = self._entry_cache.get(binding.name)
        if cached is not None and cached[0].numel() == shape.numel():
            return cached
        ndim = len(shape)

        def broadcast(axis: int) -> torch.Tensor:
            view = [1] * ndim
            view[axis] = shape[axis]
            return binding.axes[axis].units.view(view).expand(shape).reshape(-1)

        result = (broadcast(binding.source_axis), broadcast(binding.target_axis))
        self._entry_cache[binding.name] = result
        return result

    def check_against(self, named_tensors: dict[str, torch.Tensor]) -> None:
        """Verify every binding against real tensor shapes (the declaration must match the module)."""
        for b in self.bindings:
            if b.name not in named_tensors:
                raise ValueError(f"unit graph names {b.name!r}, which the model does not have")
            shape = named_tensors[b.name].shape
            for axis, amap in b.axes.items():
                if shape[axis] != len(amap.units):
                    raise ValueError(
                        f"{b.name}: axis {axis} has {shape[axis]} positions, graph says {len(amap.units)}"
                    )
                if len(amap.units) and int(amap.units.max()) >= self.width(amap.space):
                    raise ValueError(f"{b.name}: axis {axis} maps beyond space {amap.space}")

    def derived_spaces(self) -> dict[str, Link]:
        """Spaces fed only by a flatten link: their units follow their source channels."""
        return {link.target: link for link in self.links if link.kind == "flatten"}

    def unit_groups(self) -> list[list[str]]:
        """Hidden spaces whose units must be kept or removed together, one list per group.

        Identity links join spaces (a residual adds unit c to unit c), and attention pairs join a
        head's query and key dimensions (q_i meets k_i in the score). Derived (flattened) spaces are
        not in any group: they follow their source.
        """
        derived = self.derived_spaces()
        parent = {
            s.name: s.name for s in self.spaces if s.role == "hidden" and s.name not in derived
        }

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        joins = [(link.source, link.target) for link in self.links if link.kind == "identity"]
        joins += self.attention_pairs
        for a, b in joins:
            if a in parent and b in parent:
                parent[find(a)] = find(b)
        groups: dict[str, list[str]] = {}
        for name in parent:  # forward order
            groups.setdefault(find(name), []).append(name)
        return list(groups.values())

    def shortest_path_weights(self) -> int:
        """The fewest kept weights that can connect the input to the output (one per tensor on
        the shortest chain; links are free). No budget below this yields a working network."""
        dist: dict[str, float] = {}
        for space in self.spaces:
            if space.role == "input":
                dist[space.name] = 0
                continue
            best = float("inf")
            for edge in self._incoming(space.name):
                if isinstance(edge, Link):
                    if edge.kind in SIGNAL_LINKS:
                        best = min(best, dist.get(edge.source, float("inf")))
                else:
                    best = min(best, dist.get(edge.source, float("inf")) + 1)
            dist[space.name] = best
        return int(min(dist[s.name] for s in self.spaces if s.role == "output"))

    # ------------------------------------------------------------------ topology
    def _incoming(self, space: str):
        for b in self.prunable:
            if b.target == space:
                yield b
        for link in self.links:
            if link.target == space:
                yield link

    def accessible(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Units reachable from the input through kept weights and signal links.

        ``masks`` maps prunable tensor names to boolean keep-masks (missing = fully kept).
        """
        reach: dict[str, torch.Tensor] = {}
        for space in self.spaces:
            if space.role == "input":
                reach[space.name] = torch.ones(space.width, dtype=torch.bool)
                continue
            acc = torch.zeros(space.width, dtype=torch.bool)
            for edge in self._incoming(space.name):
                if isinstance(edge, Link):
                    if edge.kind in SIGNAL_LINKS:
                        src = reach[edge.source][edge.source_units]
                        acc[edge.target_units[src]] = True
                    continue
                src_units, dst_units = self._units_for(edge, masks)
                kept = self._kept(edge, masks)
                live = kept & reach[edge.source][src_units]
                acc[dst_units[live]] = True
            reach[space.name] = acc
        return reach

    def coaccessible(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Units from which a kept path (weights or any link) reaches the output.

        A steering link counts only towards target units that are also accessible: attention
        re-weights the head's signal, and a head whose outputs carry no signal from the input
        (row-stochastic attention over constants gives the same constants) needs no steering.
        """
        acc = self.accessible(masks) if any(link.kind == "steer" for link in self.links) else {}
        reach: dict[str, torch.Tensor] = {}
        for space in reversed(self.spaces):
            if space.role == "output":
                reach[space.name] = torch.ones(space.width, dtype=torch.bool)
            else:
                reach.setdefault(space.name, torch.zeros(space.width, dtype=torch.bool))
            # push this space's co-accessibility back to its sources (all sources come earlier)
            here = reach[space.name]
            for edge in self._incoming(space.name):
                src = reach.setdefault(
                    edge.source, torch.zeros(self.width(edge.source), dtype=torch.bool)
                )
                if isinstance(edge, Link):
                    useful = here[edge.target_units]
                    if edge.kind == "steer":
                        useful = useful & acc[space.name][edge.target_units]
                    src[edge.source_units[useful]] = True
                    continue
                src_units, dst_units = self._units_for(edge, masks)
                live = self._kept(edge, masks) & here[dst_units]
                src[src_units[live]] = True
        return reach

    def consistent(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per prunable tensor: kept entries whose source is accessible and target co-accessible."""
        acc = self.accessible(masks)
        coacc = self.coaccessible(masks)
        out = {}
        for b in self.prunable:
            src_units, dst_units = self._units_for(b, masks)
            ok = self._kept(b, masks) & acc[b.source][src_units] & coacc[b.target][dst_units]
            out[b.name] = ok
        return out

    def topology_summary(self, masks: dict[str, torch.Tensor]) -> dict:
        """Counts for reports: kept, inconsistent connections and dead units, per tensor and space."""
        acc = self.accessible(masks)
        coacc = self.coaccessible(masks)
        consistent = self.consistent(masks)
        per_tensor = {}
        inconsistent_total = 0
        for b in self.prunable:
            kept = int(self._kept(b, masks).sum())
            bad = kept - int(consistent[b.name].sum())
            inconsistent_total += bad
            per_tensor[b.name] = {"kept": kept, "inconsistent": bad}
        per_space = {}
        dead_total = 0
        for s in self.spaces:
            if s.role != "hidden":
                continue
            alive = acc[s.name] & coacc[s.name]
            dead = s.width - int(alive.sum())
            dead_total += dead
            per_space[s.name] = {
                "width": s.width,
                "not_accessible": int((~acc[s.name]).sum()),
                "not_coaccessible": int((~coacc[s.name]).sum()),
                "dead": dead,
            }
        return {
            "inconsistent_connections": inconsistent_total,
            "dead_units": dead_total,
            "tensors": per_tensor,
            "spaces": per_space,
        }

    # ------------------------------------------------------------------ helpers
    def _units_for(self, b: TensorBinding, masks: dict[str, torch.Tensor]):
        if b.name not in masks:
            raise KeyError(f"no mask given for {b.name}; pass a mask for every prunable tensor")
        return self.entry_units(b, masks[b.name].shape)

    @staticmethod
    def _kept(b: TensorBinding, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        return masks[b.name].reshape(-1).bool()


def masks_from_weights(graph: UnitGraph, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Boolean keep-masks read off the weights themselves (a pruned weight is an exact zero)."""
    return {b.name: named[b.name].detach() != 0 for b in graph.prunable}
