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
the node-major flatten before a fully connected layer (``channel c -> flat (v, c)``), attention
steering (query/key dimensions of head ``h`` steer the aggregation of head ``h``'s output units), or
a per-channel steer (CTR-GCN's channel-wise topology: unit c steers how unit c is aggregated, and
both spaces keep the same units).
Softmax-normalised steering links carry no signal forward (the attention only re-weights
neighbours, constants stay constants), so they count for co-accessibility but not for
accessibility; unnormalised ones (tanh topologies, sigmoid gates) modulate their target and count
for both (:class:`LinkKind`).

Joint-indexed tensors (adjacency, edge importance, attention scores) have no binding: nothing ever
prunes or cuts them along a joint axis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LinkKind:
    """What a kind of link means, stated once; every consumer asks these questions, never the name.

    - ``carries_signal``: the source's activation flows to the target (accessibility goes forward);
    - ``joins_units``: source unit i and target unit i are kept or removed together (a residual
      adds them; a per-channel steer pairs them);
    - ``derives_target``: the target space is made of the source's units (the flatten before a
      fully connected layer); it is never decided on its own;
    - ``steers``: the source re-weights how the target is aggregated without carrying channels;
    - ``normalised``: the steering goes through a softmax over the neighbours it weighs, so an
      aggregated constant stays input-independent and a constant key dimension changes nothing.
      Such a link carries no signal and carries co-accessibility back only from targets that
      carry signal. An unnormalised one (a tanh topology, a sigmoid gate) modulates its target:
      even a constant channel aggregated or gated by it depends on the input, so it carries
      signal forward and co-accessibility back from every co-accessible target.
    """

    name: str
    carries_signal: bool
    joins_units: bool = False
    derives_target: bool = False
    steers: bool = False
    normalised: bool = False

    @property
    def coaccessible_through_signal_only(self) -> bool:
        """Co-accessibility comes back only from targets that carry signal (normalised steering)."""
        return self.steers and self.normalised


LINK_KINDS = {
    kind.name: kind
    for kind in (
        LinkKind("identity", carries_signal=True, joins_units=True),
        LinkKind("flatten", carries_signal=True, derives_target=True),
        LinkKind("steer", carries_signal=False, steers=True, normalised=True),
        # tanh attention (MS-AAGCN), spatial and temporal gates
        LinkKind("unnormalised_steer", carries_signal=True, steers=True),
        # a per-channel topology or gate: source unit c re-weights how target unit c is
        # aggregated (CTR-GCN's conv4 output, MS-AAGCN's channel gate), so the two spaces keep the
        # same units
        LinkKind("channel_steer", carries_signal=True, joins_units=True, steers=True),
    )
}


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

    @property
    def source_units(self) -> torch.Tensor:
        return self.axes[self.source_axis].units

    @property
    def target_units(self) -> torch.Tensor:
        return self.axes[self.target_axis].units


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

    @property
    def semantics(self) -> LinkKind:
        return LINK_KINDS[self.kind]

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
        cls,
        source: str,
        source_units: Iterable[int],
        target: str,
        target_units: Iterable[int],
        normalised: bool = True,
    ) -> Link:
        """Every source unit steers every target unit (attention dims of a head -> its outputs);
        ``normalised``: through a softmax over the neighbours (see :class:`LinkKind`)."""
        s = torch.as_tensor(list(source_units), dtype=torch.long)
        t = torch.as_tensor(list(target_units), dtype=torch.long)
        kind = "steer" if normalised else "unnormalised_steer"
        return cls(source, target, s.repeat_interleave(len(t)), t.repeat(len(s)), kind)

    @classmethod
    def channel_steer(cls, source: str, target: str, width: int) -> Link:
        """Source unit c steers target unit c only, and the two are kept or removed together."""
        units = torch.arange(width)
        return cls(source, target, units, units, "channel_steer")


@dataclass
class ActivationProbe:
    """Where to observe a space's activation: the output of ``module`` (a dotted module path),
    with the unit axis at ``channel_dim``. Used by compaction to measure constant units."""

    module: str
    channel_dim: int
    input_of: bool = False  # observe the module's input instead of its output


def components(names: list[str], joins: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Connected components of ``names`` under ``joins`` (pairs outside ``names`` are ignored),
    each in the order of ``names``, components ordered by their first member."""
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for a, b in joins:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(root(name), []).append(name)
    return list(groups.values())


@dataclass
class UnitGraph:
    """Unit spaces in forward order, the tensors that index them, and the links between them.

    What follows from the declaration is worked out once, here: the prunable tensors, the edges
    entering each space, the spaces derived by a flatten, the residual groups and the coupled unit
    groups. Mask-dependent questions (accessibility, consistency) are in
    :mod:`gcnshrink.graph.propagation`.
    """

    spaces: list[UnitSpace]
    bindings: list[TensorBinding]
    links: list[Link] = field(default_factory=list)
    probes: dict[str, ActivationProbe] = field(default_factory=dict)
    # (query space, key space) of each attention block: dimension i of both goes together
    attention_pairs: list[tuple[str, str]] = field(default_factory=list)
    # every weight keeps at least one of the units it writes and reads (a traced model's layers
    # cannot shrink to zero channels; zoo models rebuild from their configs and handle empty
    # heads)
    writers_stay: bool = False

    def __post_init__(self) -> None:
        self.space_by_name = {s.name: s for s in self.spaces}
        self.order = {s.name: i for i, s in enumerate(self.spaces)}
        self.binding_by_name = {b.name: b for b in self.bindings}
        for b in self.bindings:
            for axis, amap in b.axes.items():
                if amap.space not in self.space_by_name:
                    raise ValueError(f"{b.name}: axis {axis} names unknown space {amap.space!r}")
        self.prunable: list[TensorBinding] = [b for b in self.bindings if b.prunable]
        self.incoming_weights: dict[str, list[TensorBinding]] = {s.name: [] for s in self.spaces}
        for b in self.prunable:
            self.incoming_weights[b.target].append(b)
        self.incoming_links: dict[str, list[Link]] = {s.name: [] for s in self.spaces}
        for link in self.links:
            self.incoming_links[link.target].append(link)
        self.derived: dict[str, Link] = {}
        for link in self.links:
            if link.semantics.derives_target:
                if link.target in self.derived:
                    raise ValueError(f"space {link.target} is the target of two flatten links")
                self.derived[link.target] = link
        for link in self.links:
            if link.semantics.joins_units:
                width = self.width(link.source)
                units = torch.arange(width)
                if self.width(link.target) != width or not (
                    torch.equal(link.source_units, units) and torch.equal(link.target_units, units)
                ):
                    raise ValueError(
                        f"{link.kind} link {link.source} -> {link.target} is not unit-by-unit"
                    )
        joins = [(link.source, link.target) for link in self.links if link.semantics.joins_units]
        # residual chains over every space (compaction decides each chain as one)
        self.residual_groups = components([s.name for s in self.spaces], joins)
        # hidden units kept or removed together: residual chains and attention query/key pairs
        # (derived spaces follow their source and belong to no group)
        self.unit_groups = components(
            [s.name for s in self.spaces if s.role == "hidden" and s.name not in self.derived],
            joins + list(self.attention_pairs),
        )
        self._entry_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ structure
    def width(self, space: str) -> int:
        return self.space_by_name[space].width

    def derived_source(self, space: str) -> tuple[str, torch.Tensor]:
        """A derived space's source space and the source unit of each of its units."""
        link = self.derived[space]
        source_unit = torch.empty(self.width(space), dtype=torch.long)
        source_unit[link.target_units] = link.source_units
        return link.source, source_unit

    def with_derived(self, kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``kept`` (bool per unit) completed for derived spaces: unit (v, c) follows channel c."""
        out = dict(kept)
        for space in self.derived:
            source, source_unit = self.derived_source(space)
            out[space] = out[source][source_unit]
        return out

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

    def shortest_path_weights(self) -> int:
        """The fewest kept weights that can connect the input to the output (one per tensor on
        the shortest chain; links are free). No budget below this yields a working network."""
        dist: dict[str, float] = {}
        for space in self.spaces:
            if space.role == "input":
                dist[space.name] = 0
                continue
            best = float("inf")
            for link in self.incoming_links[space.name]:
                if link.semantics.carries_signal:
                    best = min(best, dist.get(link.source, float("inf")))
            for b in self.incoming_weights[space.name]:
                best = min(best, dist.get(b.source, float("inf")) + 1)
            dist[space.name] = best
        return int(min(dist[s.name] for s in self.spaces if s.role == "output"))


def masks_from_weights(graph: UnitGraph, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Boolean keep-masks read off the weights themselves (a pruned weight is an exact zero)."""
    return {b.name: named[b.name].detach() != 0 for b in graph.prunable}
