"""Accessibility and co-accessibility on the unit graph, hard (boolean) and differentiable.

A unit is *accessible* when a kept path from the input reaches it, *co-accessible* when a kept path
from it reaches the output; a kept entry is *consistent* when its source unit is accessible and its
target unit co-accessible. TCP trains with the differentiable version and projects with the
boolean one, compaction and the reports read the boolean one: both are :func:`propagate`, which
holds the link semantics in one place.

The propagation works per tensor axis, not per entry: a tensor's mask is summed over the axes that
index no unit (kernel taps), giving a (target positions × source positions) matrix, so a unit's
pre-activation is a matrix-vector product followed by a scatter from positions to units (ST-GCN's
interleaved rows map several positions to one unit).

- forward, in space order: input units are 1; a unit's pre-activation z sums its incoming signal
  links' sources and M·a over its incoming weights; a = step(z);
- backward, in reverse order: output units are 1; a unit's pre-activation sums what its outgoing
  weights (Mᵀ·c) and links carry back; a normalised steering link carries back only from targets
  that are accessible (softmax attention over constants re-weights constants: it needs no
  steering), an unnormalised one from every target; c = step(z).

``step`` is 1[z > 0] for the boolean answer; TCP passes a straight-through version of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gcnshrink.graph.units import TensorBinding, UnitGraph

Step = Callable[[torch.Tensor], torch.Tensor]


def hard_step(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


def position_matrix(mask: torch.Tensor, binding: TensorBinding) -> torch.Tensor:
    """(target positions, source positions): the mask summed over every other axis."""
    moved = mask.movedim((binding.target_axis, binding.source_axis), (0, 1))
    rest = math.prod(moved.shape[2:])  # explicit, not -1: a compacted tensor may have no entries
    return moved.reshape(moved.shape[0], moved.shape[1], rest).sum(dim=2)


class AxisUnits:
    """The unit of every target and source position of each prunable tensor and link, on one
    device, so a training step does not copy index tensors to the GPU again."""

    def __init__(self, graph: UnitGraph, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.weights = {
            b.name: (b.target_units.to(device), b.source_units.to(device)) for b in graph.prunable
        }
        self.links = [
            (link.source_units.to(device), link.target_units.to(device)) for link in graph.links
        ]
        self.link_index = {id(link): i for i, link in enumerate(graph.links)}

    def of_link(self, link) -> tuple[torch.Tensor, torch.Tensor]:
        return self.links[self.link_index[id(link)]]


def propagate(
    graph: UnitGraph,
    matrices: dict[str, torch.Tensor],
    step: Step = hard_step,
    units: AxisUnits | None = None,
    backward: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(accessibility, co-accessibility) per space from per-tensor position matrices.

    ``matrices`` has one entry per prunable tensor (see :func:`position_matrix`). With
    ``backward=False`` only accessibility is computed (the second dict is empty).
    """
    reference = next(iter(matrices.values()))
    device, dtype = reference.device, reference.dtype
    units = units if units is not None and units.device == device else AxisUnits(graph, device)

    acc: dict[str, torch.Tensor] = {}
    for space in graph.spaces:
        if space.role == "input":
            acc[space.name] = torch.ones(space.width, device=device, dtype=dtype)
            continue
        z = torch.zeros(space.width, device=device, dtype=dtype)
        for link in graph.incoming_links[space.name]:
            if link.semantics.carries_signal:
                source_units, target_units = units.of_link(link)
                z = z.index_add(0, target_units, acc[link.source][source_units])
        for b in graph.incoming_weights[space.name]:
            target_units, source_units = units.weights[b.name]
            z = z.index_add(0, target_units, matrices[b.name] @ acc[b.source][source_units])
        acc[space.name] = step(z)
    if not backward:
        return acc, {}

    coacc_z = {s.name: torch.zeros(s.width, device=device, dtype=dtype) for s in graph.spaces}
    coacc: dict[str, torch.Tensor] = {}
    for space in reversed(graph.spaces):
        here = (
            torch.ones(space.width, device=device, dtype=dtype)
            if space.role == "output"
            else step(coacc_z[space.name])
        )
        coacc[space.name] = here
        for link in graph.incoming_links[space.name]:
            source_units, target_units = units.of_link(link)
            carried = here[target_units]
            if link.semantics.coaccessible_through_signal_only:
                carried = carried * acc[space.name][target_units]
            coacc_z[link.source] = coacc_z[link.source].index_add(0, source_units, carried)
        for b in graph.incoming_weights[space.name]:
            target_units, source_units = units.weights[b.name]
            back = matrices[b.name].t() @ here[target_units]
            coacc_z[b.source] = coacc_z[b.source].index_add(0, source_units, back)
    return acc, coacc


def gate(
    mask: torch.Tensor,
    binding: TensorBinding,
    acc: dict[str, torch.Tensor],
    coacc: dict[str, torch.Tensor],
    units: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``mask`` times a_source and c_target broadcast along the tensor's source and target axes."""
    target_units, source_units = units
    src_shape = [1] * mask.dim()
    dst_shape = [1] * mask.dim()
    src_shape[binding.source_axis] = -1
    dst_shape[binding.target_axis] = -1
    return mask * (
        acc[binding.source][source_units].view(src_shape)
        * coacc[binding.target][target_units].view(dst_shape)
    )


# ---------------------------------------------------------------------------- boolean answers
def _hard(graph: UnitGraph, masks: dict[str, torch.Tensor], backward: bool = True):
    missing = [b.name for b in graph.prunable if b.name not in masks]
    if missing:
        raise KeyError(f"no mask given for {missing[0]}; pass a mask for every prunable tensor")
    matrices = {b.name: position_matrix(masks[b.name].to(torch.float32), b) for b in graph.prunable}
    acc, coacc = propagate(graph, matrices, hard_step, backward=backward)
    return {k: v > 0 for k, v in acc.items()}, {k: v > 0 for k, v in coacc.items()}


def accessible(graph: UnitGraph, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Units reachable from the input through kept weights and signal links (bool per unit).

    ``masks`` maps every prunable tensor name to a boolean keep-mask of the tensor's shape.
    """
    return _hard(graph, masks, backward=False)[0]


def coaccessible(graph: UnitGraph, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Units from which a kept path (weights or any link) reaches the output (bool per unit)."""
    return _hard(graph, masks)[1]


def reachability(
    graph: UnitGraph, masks: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(accessible, co-accessible) in one pass."""
    return _hard(graph, masks)


def consistent(graph: UnitGraph, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per prunable tensor, of its shape: kept entries whose source is accessible and target
    co-accessible."""
    acc, coacc = _hard(graph, masks)
    out = {}
    for b in graph.prunable:
        units = (b.target_units, b.source_units)
        out[b.name] = gate(masks[b.name].bool(), b, acc, coacc, units)
    return out


def topology_summary(graph: UnitGraph, masks: dict[str, torch.Tensor]) -> dict:
    """Counts for reports: kept, inconsistent connections and dead units, per tensor and space."""
    acc, coacc = _hard(graph, masks)
    per_tensor = {}
    inconsistent_total = 0
    for b in graph.prunable:
        kept_mask = masks[b.name].bool()
        kept = int(kept_mask.sum())
        good = int(gate(kept_mask, b, acc, coacc, (b.target_units, b.source_units)).sum())
        inconsistent_total += kept - good
        per_tensor[b.name] = {"kept": kept, "inconsistent": kept - good}
    per_space = {}
    dead_total = 0
    for s in graph.spaces:
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
