"""Pieces shared by the upstream architectures of the zoo (2s-AGCN, MS-AAGCN, CTR-GCN, pyskl).

- :func:`directed_partitions`: the "spatial" labelling of 2s-AGCN, CTR-GCN and pyskl's
  ``mode='spatial'``: identity, inward and outward adjacency, each column-normalised;
- :func:`stage_plan`: the ten-stage width/stride plan all of them share;
- :func:`conv`, a zero-width-safe convolution: compaction may empty a whole branch of a
  concatenation; upstream layers cannot run with zero channels, this returns what a zero-channel
  layer would;
- the checks every block config makes (:func:`check_block_couplings`);
- unit-graph bindings of convs and batch norms (:func:`weight_binding`, :func:`bn_binding`), and
  of a block's residual and output probe (:func:`end_block`);
- shape checks of foreign state dicts (:func:`shape_of`, :func:`layout_for`), the stack-level
  config of a 2s-AGCN-style file (:func:`stack_config`) and pyskl's renaming
  (:func:`rename_pyskl`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding
from gcnshrink.layouts import LAYOUT_BY_JOINTS, Layout, get_layout
from gcnshrink.models.base import MAX_COUNT, MAX_WIDTH, check_choice, check_int, check_list


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


def check_blocks(
    blocks: object, in_channels: int, check_one: Callable[[int, object, int], dict]
) -> list[dict]:
    """A config's ``blocks``: 1 to MAX_COUNT of them, block i checked by ``check_one(i, spec,
    prev)`` where ``prev`` is the width before it."""
    blocks = check_list("blocks", blocks)
    if not 1 <= len(blocks) <= MAX_COUNT:
        raise GcnshrinkError(f"blocks must list 1 to {MAX_COUNT} blocks, got {len(blocks)}")
    checked, prev = [], in_channels
    for i, spec in enumerate(blocks):
        checked.append(check_one(i, spec, prev))
        prev = checked[-1]["out"]
    return checked


def check_block_widths(i: int, spec: dict, downs: tuple[str, ...] = ("identity", "conv")) -> dict:
    """``in``, ``mid``, ``out``, ``stride``, ``residual`` and ``down`` of block i, checked."""
    block = {
        key: check_int(f"blocks[{i}].{key}", spec[key], 1, MAX_WIDTH)
        for key in ("in", "mid", "out")
    }
    block["stride"] = check_int(f"blocks[{i}].stride", spec["stride"], 1, 64)
    block["residual"] = check_choice(
        f"blocks[{i}].residual", spec["residual"], ("none", "identity", "conv")
    )
    block["down"] = check_choice(f"blocks[{i}].down", spec["down"], downs)
    return block


def check_block_couplings(i: int, block: dict, prev: int) -> None:
    """What ties a block's widths together: its input is the previous output, an identity
    residual keeps width and frame rate, an identity ``down`` branch keeps the width."""
    if block["in"] != prev:
        raise GcnshrinkError(f"blocks[{i}].in is {block['in']}, the width before it is {prev}")
    if block["residual"] == "identity" and (block["in"] != block["out"] or block["stride"] != 1):
        raise GcnshrinkError(
            f"blocks[{i}] has an identity residual but changes the width or the frame rate"
        )
    if block["down"] == "identity" and block["in"] != block["mid"]:
        raise GcnshrinkError(f"blocks[{i}] has an identity down branch but in != mid")


# ---------------------------------------------------------------------------- unit graphs
def direct(space: str, width: int) -> AxisMap:
    return AxisMap.direct(space, width)


def bn_binding(bindings: list[TensorBinding], prefix: str, amap: AxisMap) -> None:
    """A batch norm's four per-channel tensors."""
    for p in ("weight", "bias", "running_mean", "running_var"):
        bindings.append(TensorBinding(f"{prefix}.{p}", {0: amap}))


def weight_binding(
    bindings: list[TensorBinding],
    name: str,
    source: AxisMap,
    target: AxisMap,
    folds: bool,
    bias: bool = True,
) -> None:
    """A prunable conv/linear weight (target axis 0, source axis 1) and its bias."""
    bindings.append(
        TensorBinding(
            f"{name}.weight",
            {0: target, 1: source},
            prunable=True,
            source_axis=1,
            target_axis=0,
            bias=f"{name}.bias" if bias else None,
            folds_constant=folds,
        )
    )
    if bias:
        bindings.append(TensorBinding(f"{name}.bias", {0: target}))


def end_block(
    bindings: list[TensorBinding],
    links: list[Link],
    probes: dict[str, ActivationProbe],
    prefix: str,
    spec: Mapping,
    source: tuple[str, int],
    out: str,
) -> tuple[str, int]:
    """The end of block ``prefix`` whose units are space ``out`` (``spec["out"]`` wide): its
    residual from ``source`` ((name, width)), a 1×1 conv + BN (``{prefix}.residual.conv`` /
    ``.bn``) that folds constants, an identity link, or none (``spec["residual"]``), and the probe
    on the block's output. Returns ``(out, width)``, the next block's source."""
    target = (out, spec["out"])
    if spec["residual"] == "conv":
        weight_binding(bindings, f"{prefix}.residual.conv", direct(*source), direct(*target), True)
        bn_binding(bindings, f"{prefix}.residual.bn", direct(*target))
    elif spec["residual"] == "identity":
        links.append(Link.identity(source[0], out, source[1]))
    probes[out] = ActivationProbe(prefix, 1)
    return target


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


def rename_pyskl(
    state: Mapping[str, torch.Tensor], blocks: str, inner: Mapping[str, str], what: str
) -> dict[str, torch.Tensor]:
    """A pyskl backbone + GCNHead state dict (``backbone.`` stripped) onto the original
    repository's keys: block ``{blocks}.{i}.*`` becomes ``l{i+1}.*`` with the key prefixes in
    ``inner`` replaced (the longest first), ``cls_head.fc_cls.*`` becomes ``fc.*``, ``data_bn``
    stays; the backbone's own ``A`` (the initial graph, unused by the forward pass) is dropped.
    Any other key is one line naming it."""
    renamed = {}
    for key, value in state.items():
        if key == "A":
            continue
        if key.startswith("data_bn."):
            renamed[key] = value
        elif key.startswith("cls_head.fc_cls."):
            renamed["fc." + key.removeprefix("cls_head.fc_cls.")] = value
        elif key.startswith(f"{blocks}.") and key.split(".")[1].isdigit():
            _, index, rest = key.split(".", 2)
            for old in sorted(inner, key=len, reverse=True):
                if rest == old or rest.startswith(old if old.endswith(".") else old + "."):
                    rest = inner[old] + rest[len(old) :]
                    break
            renamed[f"l{int(index) + 1}.{rest}"] = value
        else:
            raise GcnshrinkError(f"unsupported {what} key {'backbone.' + key!r}")
    return renamed


def stack_config(
    state: Mapping[str, torch.Tensor],
    blocks: list[dict],
    layout: Layout | None,
    num_classes: int | None,
    what: str,
) -> dict:
    """The config of a 2s-AGCN-style stack (``data_bn`` of M·V·C, ``l1.gcn1.PA``, ``fc``) whose
    blocks were read off the shapes: input channels, layout (persons from ``data_bn``), classes."""
    if not blocks:
        raise GcnshrinkError(f"no l1.gcn1.* block in the {what} checkpoint")
    in_channels = blocks[0]["in"]
    joints = shape_of(state, "l1.gcn1.PA", what)[-1]
    length = shape_of(state, "data_bn.weight", what)[0]
    persons = persons_from_data_bn(length, joints, in_channels, what)
    return {
        "num_classes": check_classes(shape_of(state, "fc.weight", what)[0], num_classes),
        "layout": layout_for(joints, persons, layout, what).to_dict(),
        "in_channels": in_channels,
        "blocks": blocks,
    }


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
