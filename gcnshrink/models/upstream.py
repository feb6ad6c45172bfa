"""Pieces shared by the upstream architectures of the zoo (2s-AGCN, MS-AAGCN, CTR-GCN, pyskl).

- :func:`directed_partitions`: the "spatial" labelling of 2s-AGCN, CTR-GCN and pyskl's
  ``mode='spatial'``: identity, inward and outward adjacency, each column-normalised;
- :func:`stage_plan`: the ten-stage width/stride plan all of them share;
- :func:`conv`, a zero-width-safe convolution: compaction may empty a whole branch of a
  concatenation; upstream layers cannot run with zero channels, this returns what a zero-channel
  layer would;
- shape checks of foreign state dicts (:func:`shape_of`, :func:`layout_for`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.layouts import LAYOUT_BY_JOINTS, Layout, get_layout


# ---------------------------------------------------------------------------- graphs
def directed_partitions(layout: Layout) -> np.ndarray:
    """(3, V, V): identity, inward and outward adjacency, each divided by its column sums.

    ``layout.edges`` are (child, parent) pairs, i.e. pointing towards the centre ("inward"); the
    inward matrix has a 1 at [parent, child], the outward one at [child, parent].
    """
    v = layout.num_joints
    inward = np.zeros((v, v), dtype=np.float64)
    for child, parent in layout.edges:
        inward[parent, child] = 1.0
    outward = inward.T.copy()

    def column_normalised(a: np.ndarray) -> np.ndarray:
        degree = a.sum(axis=0)
        return a / np.where(degree > 0, degree, 1.0)[None, :]

    stack = np.stack([np.eye(v), column_normalised(inward), column_normalised(outward)])
    return stack.astype(np.float32)


# ---------------------------------------------------------------------------- plans
def stage_plan(in_channels: int, base: int) -> list[tuple[int, int, int]]:
    """(in, out, stride) of the ten stages: base ×4, 2·base ×3 (stride 2 first), 4·base ×3
    (stride 2 first)."""
    plan = [(base, 1)] * 4 + [(2 * base, 2)] + [(2 * base, 1)] * 2
    plan += [(4 * base, 2)] + [(4 * base, 1)] * 2
    stages, prev = [], in_channels
    for width, stride in plan:
        stages.append((prev, width, stride))
        prev = width
    return stages


def residual_kind(index: int, c_in: int, c_out: int, stride: int) -> str:
    """The upstream rule: none in the first stage, identity when nothing changes, else a conv."""
    if index == 0:
        return "none"
    return "identity" if c_in == c_out and stride == 1 else "conv"


# ---------------------------------------------------------------------------- zero-width layers
def out_length(length: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv(layer: nn.Conv2d | nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, also when it has no output or no input channels (a compacted-away branch)."""
    if layer.out_channels > 0 and layer.in_channels > 0:
        return layer(x)
    spatial = [
        out_length(size, k, s, p, d)
        for size, k, s, p, d in zip(
            x.shape[2:], layer.kernel_size, layer.stride, layer.padding, layer.dilation, strict=True
        )
    ]
    shape = (x.shape[0], layer.out_channels, *spatial)
    if layer.bias is None or layer.out_channels == 0:
        return x.new_zeros(shape)
    view = (1, -1) + (1,) * len(spatial)
    return layer.bias.view(view).expand(shape)


# ---------------------------------------------------------------------------- foreign state dicts
def shape_of(state: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    """The shape of ``state[key]``, or one line saying which checkpoint lacks it."""
    if key not in state:
        raise GcnshrinkError(f"{what} checkpoint lacks {key!r}")
    return tuple(int(s) for s in state[key].shape)


def layout_for(
    joints: int,
    persons: int | None,
    layout: Layout | None,
    what: str,
) -> Layout:
    """The layout named by the user, else the built-in one with ``joints`` joints, checked
    against the joint (and, where the checkpoint tells it, person) count."""
    if layout is None:
        name = LAYOUT_BY_JOINTS.get(joints)
        if name is None:
            raise GcnshrinkError(f"no built-in layout has {joints} joints; pass --layout")
        layout = get_layout(name)
    if layout.num_joints != joints:
        raise GcnshrinkError(
            f"layout {layout.name} has {layout.num_joints} joints, the {what} checkpoint {joints}"
        )
    if persons is not None and persons != layout.persons:
        raise GcnshrinkError(
            f"the {what} checkpoint's data_bn is for {persons} persons, layout {layout.name} has "
            f"{layout.persons}; pass a --layout with {persons} persons"
        )
    return layout


def check_classes(classes: int, num_classes: int | None) -> int:
    if num_classes is not None and num_classes != classes:
        raise GcnshrinkError(f"checkpoint has {classes} classes, --num-classes says {num_classes}")
    return classes


def persons_from_data_bn(length: int, joints: int, channels: int, what: str) -> int:
    per_person = joints * channels
    if length % per_person:
        raise GcnshrinkError(
            f"{what} data_bn has {length} entries, not a multiple of V·C = {per_person}"
        )
    return length // per_person
