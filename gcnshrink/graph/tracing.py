"""Derive a model's unit graph by running it once and reading what every torch operation does.

A zoo model declares its unit graph beside its layers; a user's own model has none, so gcnshrink
derives it. The model runs once on an example input under a :class:`torch.overrides.TorchFunctionMode`
that sees every torch function and tensor method with its arguments, its result and the path of
the module that called it. Python control flow and shapes are those of the example run (like
``torch.export``), but the rules work on torch functions (``F.conv2d``, ``torch.einsum``,
``Tensor.view``), where a graph convolution is still recognisable.

What is tracked
---------------
Every tensor that carries units holds a *position tensor* of its own shape: element ``e`` holds the
raw position (a row of the weight that produced it, or an input channel) it belongs to. Shape
operations (view, reshape, permute, slicing, cat, split, roll, gather, padding) are run on the
position tensor itself, so the K·C interleave of a partitioned graph convolution, a node-major
flatten or a channel shift need no rule of their own. Raw positions become units at the end:

- a weight (``F.conv*d``, ``F.linear``) reads units on its channel axis and writes a fresh block
  of raw positions, one per row (prunable; source axis 1, target axis 0, its bias beside it);
- a contraction (``einsum``, ``matmul``, a sum) that adds positions up makes them one unit (the
  K partitions of ST-GCN's ``k·C + c`` rows become unit ``c``); a contraction of two unit-carrying
  tensors over their unit axes makes attention scores: they carry no units and *steer* what they
  aggregate (softmax: normalised; tanh or none: unnormalised); their operands form an attention
  pair (the key is the one the softmax normalises over);
- joint- and frame-indexed tensors (adjacency, edge importance, scores) get no unit axis;
- adding two fresh weight outputs merges them unit by unit (one space); adding a tensor whose
  space is already read by a weight is a residual: an identity link into the other;
- a tensor aggregated by scores is steered; when its space is already read by a weight
  elsewhere, the aggregation is a new space joined to it by an identity link;
- a product of two unit-carrying tensors is a gate: one unit broadcast over all (unnormalised
  steer) or unit by unit (channel steer);
- a parameter or buffer combined with a unit-carrying tensor (batch norm, a per-channel scale, a
  shift index) is bound on the axis that follows the units;
- a weight whose input axis repeats units (a flatten before a linear layer) reads a derived
  space joined by a flatten link.

Anything else that touches units is refused with one line naming the operation, the module path
and the way out (detach that tensor from the units, or declare ``unit_graph()`` on the model,
which then takes precedence). The derived graph is not trusted: :mod:`gcnshrink.models.user`
checks it like a declared one before any pruning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph.units import (
    ActivationProbe,
    AxisMap,
    Link,
    TensorBinding,
    UnitGraph,
    UnitSpace,
)

WAY_OUT = (
    "exclude that tensor from the units (compute it without them) or declare the graph by hand "
    "in a unit_graph() method on the model, which then takes precedence"
)


class TracingError(GcnshrinkError):
    """The unit graph cannot be derived: one line naming the operation and the module path."""


# ---------------------------------------------------------------------------- annotations
@dataclass
class Units:
    """A tensor that carries units: the raw position of each element (-1: padding)."""

    pos: torch.Tensor


@dataclass
class Scores:
    """A tensor without units computed from units (attention scores, topologies, gates)."""

    sources: dict[int, set[int]]  # provisional space -> raw positions that steer
    pair: tuple[torch.Tensor, torch.Tensor] | None  # (left, right) raw positions paired
    free_axis_of: dict[int, str]  # result axis -> "left" / "right" operand it came from
    normalised: bool = False
    key: str | None = None  # "left"/"right": the operand a softmax normalised over


@dataclass
class Origin:
    """A tensor made from one parameter or buffer by shape operations: element -> flat index."""

    name: str
    index: torch.Tensor


SHAPE_OPS = {
    "view", "reshape", "permute", "transpose", "t", "flatten", "unflatten", "unsqueeze",
    "squeeze", "expand", "expand_as", "repeat", "contiguous", "clone", "__getitem__", "narrow",
    "select", "chunk", "split", "unbind", "cat", "concat", "stack", "roll", "flip", "movedim",
    "gather", "index_select", "detach", "pad", "tensor_split", "swapaxes", "mT", "repeat_interleave",
    "view_as", "reshape_as", "split_with_sizes",
}  # fmt: skip
# elementwise on one tensor, units unchanged
UNARY = {
    "relu", "relu_", "gelu", "silu", "elu", "leaky_relu", "hardswish", "mish", "dropout",
    "dropout2d", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "clamp", "clip", "__neg__",
    "float", "double", "half", "to", "type_as", "sign", "square", "relu6", "hardtanh",
    "softplus", "erf", "__pow__", "pow", "bfloat16",
}  # fmt: skip
STEERING_NONLINEAR = {"tanh", "sigmoid", "softmax", "log_softmax"}
BINARY = {
    "add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "rsub",
    "__isub__", "mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__",
    "__rtruediv__", "__itruediv__", "true_divide", "remainder", "__mod__", "where",
}  # fmt: skip
REDUCE = {"mean", "sum", "amax", "max", "amin", "min", "logsumexp"}
POOL = {
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "max_pool2d_with_indices", "max_pool1d_with_indices", "_max_pool2d", "_max_pool1d",
    "boolean_dispatch",
}  # fmt: skip
IGNORED = {"size", "dim", "shape", "__len__", "numel", "__get__", "device", "dtype", "is_floating_point",
           "requires_grad", "ndim", "__format__", "__bool__", "__index__", "__int__", "__float__",
           "is_grad_enabled", "new_zeros", "new_ones", "new_empty", "new_full", "arange",
           "zeros", "ones", "full", "one_hot", "eye", "zeros_like", "ones_like", "is_contiguous",
           "stride", "__repr__", "__hash__", "__eq__", "__ne__", "__lt__", "__gt__", "__le__",
           "__ge__", "__setstate__", "grad_fn", "data", "_is_view", "__contains__", "__iter__"}  # fmt: skip


def _op_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


class _Space:
    """A provisional space: a block of raw positions written by one weight or link."""

    def __init__(self, sid: int, start: int, width: int, name: str, module: str):
        self.sid, self.start, self.width, self.name, self.module = sid, start, width, name, module
        self.read = False  # a weight (or an aggregation) reads it
        self.by_link = False  # made by an aggregation or a gate, not by a weight


@dataclass
class _Weight:
    name: str
    source: torch.Tensor  # raw positions along the source axis
    target: torch.Tensor  # raw positions along the target axis
    bias: str | None
    folds: bool
    step: int = 0  # when it read its input (see _Trace.steered)
    rewired: bool = False  # reads the space its input was copied from (see _assemble)


@dataclass
class _Trace:
    spaces: list[_Space] = field(default_factory=list)
    parent_pos: list[int] = field(default_factory=list)  # union-find over raw positions
    space_of_pos: list[int] = field(default_factory=list)
    parent_space: list[int] = field(default_factory=list)
    weights: list[_Weight] = field(default_factory=list)
    per_unit: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    identity: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    steer: list[tuple[int, set[int], torch.Tensor, bool]] = field(default_factory=list)
    channel_steer: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    seen: list[tuple[str, bool, int, torch.Tensor]] = field(default_factory=list)
    # (step, raw positions) of every steering: a weight that read a space before it was steered
    # in place saw other values than the space's probe, so a constant cannot fold into it
    steered: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    # raw positions ------------------------------------------------------------
    def new_space(self, width: int, name: str, module: str) -> _Space:
        space = _Space(len(self.spaces), len(self.parent_pos), width, name, module)
        self.spaces.append(space)
        self.parent_space.append(space.sid)
        for _ in range(width):
            self.parent_pos.append(len(self.parent_pos))
            self.space_of_pos.append(space.sid)
        return space

    def find(self, p: int) -> int:
        while self.parent_pos[p] != p:
            self.parent_pos[p] = self.parent_pos[self.parent_pos[p]]
            p = self.parent_pos[p]
        return p

    def find_space(self, s: int) -> int:
        while self.parent_space[s] != s:
            self.parent_space[s] = self.parent_space[self.parent_space[s]]
            s = self.parent_space[s]
        return s

    def merge(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent_pos[max(ra, rb)] = min(ra, rb)
        self.merge_spaces(self.space_of_pos[a], self.space_of_pos[b])

    def merge_spaces(self, a: int, b: int) -> None:
        ra, rb = self.find_space(a), self.find_space(b)
        if ra != rb:
            self.parent_space[max(ra, rb)] = min(ra, rb)

    def space(self, p: int) -> _Space:
        return self.spaces[self.space_of_pos[p]]


def _positions(pos: torch.Tensor) -> torch.Tensor:
    flat = pos.reshape(-1)
    return torch.unique(flat[flat >= 0])


def _channel_axis(pos: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    """The raw position of each index along ``dim``; refused unless constant along other axes."""
    moved = pos.movedim(dim, -1).reshape(-1, pos.shape[dim])
    if moved.shape[0] == 0:
        raise TracingError(f"{what}: an empty tensor")
    first = moved[0]
    if not bool((moved == first).all()) or bool((first < 0).any()):
        raise TracingError(f"{what}: its input mixes units across joints or frames")
    return first


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: _Trace, params: dict[int, str], stack: list[str]):
        super().__init__()
        self.t = trace
        self.params = params
        self.stack = stack
        self.ann: dict[int, tuple[torch.Tensor, object]] = {}

    # annotations --------------------------------------------------------------
    def get(self, x):
        if isinstance(x, torch.Tensor):
            entry = self.ann.get(id(x))
            if entry is not None and entry[0] is x:
                return entry[1]
            name = self.params.get(id(x))
            if name is not None:
                return Origin(name, torch.arange(x.numel()).view(x.shape))
        return None

    def put(self, x, ann) -> None:
        if ann is not None and isinstance(x, torch.Tensor):
            self.ann[id(x)] = (x, ann)

    @property
    def where(self) -> str:
        return self.stack[-1] if self.stack else "<model>"

    def refuse(self, op: str, why: str) -> TracingError:
        return TracingError(f"cannot derive the unit graph: {op} at {self.where} {why}; {WAY_OUT}")

    # dispatch -----------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = _op_name(func)
        tensors = [a for a in _flatten((args, kwargs)) if isinstance(a, torch.Tensor)]
        anns = [self.get(a) for a in tensors]
        if not any(isinstance(a, Units | Scores) for a in anns):
            if name in SHAPE_OPS and any(isinstance(a, Origin) for a in anns):
                self._shape_origin(func, args, kwargs, result)
            return result
        if name in IGNORED:
            return result
        handler = getattr(self, f"op_{name.strip('_')}", None)
        if handler is not None:
            handler(func, args, kwargs, result)
        elif name in SHAPE_OPS:
            self._shape(func, name, args, kwargs, result)
        elif name in UNARY:
            self._unary(name, args, result)
        elif name in STEERING_NONLINEAR:
            self._steering_nonlinear(name, args, kwargs, result)
        elif name in BINARY:
            self._binary(name, args, kwargs, result)
        elif name in REDUCE:
            self._reduce(name, args, kwargs, result)
        elif name in POOL:
            self._pool(name, args, result)
        else:
            raise self.refuse(name, "touches units and gcnshrink has no rule for it")
        return result

    # shape operations ---------------------------------------------------------
    def _swap(self, args, kwargs, pick):
        def sub(x):
            if isinstance(x, torch.Tensor):
                return pick(x)
            if isinstance(x, list | tuple):
                return type(x)(sub(v) for v in x)
            return x

        return sub(args), {k: sub(v) for k, v in kwargs.items()}

    def _shape(self, func, name, args, kwargs, result) -> None:
        anns = [self.get(a) for a in _flatten(args) if isinstance(a, torch.Tensor)]
        if any(isinstance(a, Scores) for a in anns):
            self._scores_shape(func, name, args, kwargs, result)
            return

        def pick(x):
            ann = self.get(x)
            if isinstance(ann, Units):
                return ann.pos
            if isinstance(ann, Origin) and name == "gather":
                return ann.index  # an index buffer: bound where it meets the units
            if name in ("cat", "concat", "stack"):
                raise self.refuse(name, "joins a tensor with units to one without")
            return x.cpu()  # an index: positions live on the CPU whatever the model's device

        if name == "gather":
            index = args[2] if len(args) > 2 else kwargs.get("index")
            origin = self.get(index)
            if isinstance(origin, Origin):
                self._bind_along(origin, self.get(args[0]).pos, f"{name} index")
            args = (args[0], args[1], index) + tuple(args[3:])
            kwargs = {k: v for k, v in kwargs.items() if k != "index"}
        new_args, new_kwargs = self._swap(args, kwargs, pick)
        if name == "gather":
            new_args = (new_args[0], new_args[1], args[2].cpu()) + tuple(new_args[3:])
        if name == "pad":
            new_kwargs["value"] = -1
            new_kwargs.pop("mode", None)
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            if mode != "constant":
                raise self.refuse(name, f"pads in {mode!r} mode")
            new_args = new_args[:2]
        with torch.no_grad():
            pos = func(*new_args, **new_kwargs)
        if name in ("cat", "concat") and isinstance(result, torch.Tensor):
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            parts = [_positions(self.get(x).pos) for x in args[0]]
            spaces = {self.t.space_of_pos[int(p[0])] for p in parts if len(p)}
            first = next(iter(spaces))
            for sid in spaces:
                self.t.merge_spaces(first, sid)
            del dim
        self._put_like(result, pos, Units)

    def _put_like(self, result, pos, kind) -> None:
        if isinstance(result, torch.Tensor):
            self.put(result, kind(pos))
        elif isinstance(result, list | tuple):
            for r, p in zip(result, pos, strict=True):
                self._put_like(r, p, kind)

    def _shape_origin(self, func, args, kwargs, result) -> None:
        origins = [self.get(a) for a in _flatten(args) if isinstance(a, torch.Tensor)]
        if len({o.name for o in origins if isinstance(o, Origin)}) != 1 or not all(
            isinstance(o, Origin) for o in origins
        ):
            return
        name = origins[0].name
        new_args, new_kwargs = self._swap(args, kwargs, lambda x: self.get(x).index)
        if _op_name(func) == "pad":
            return
        with torch.no_grad():
            index = func(*new_args, **new_kwargs)
        self._put_like(result, index, lambda i: Origin(name, i))

    def _scores_shape(self, func, name, args, kwargs, result) -> None:
        # scores keep what steers them; their axes no longer say which operand they came from
        source = next(self.get(a) for a in _flatten(args) if isinstance(self.get(a), Scores))
        plain = Scores(source.sources, source.pair, {}, source.normalised, source.key)
        if name in (
            "__getitem__",
            "select",
            "contiguous",
            "clone",
            "detach",
            "expand",
            "unsqueeze",
        ):
            plain.free_axis_of = dict(source.free_axis_of) if name != "__getitem__" else {}
        if isinstance(result, torch.Tensor):
            self.put(result, plain)
        else:
            for r in result:
                self.put(r, plain)

    # elementwise --------------------------------------------------------------
    def _unary(self, name, args, result) -> None:
        ann = self.get(args[0])
        if isinstance(ann, Units) and isinstance(result, torch.Tensor):
            if result.shape != ann.pos.shape:
                raise self.refuse(name, "changes the shape of a tensor with units")
            self.put(result, ann)
        elif isinstance(ann, Scores):
            self.put(result, ann)
        else:
            raise self.refuse(name, "is applied to units in an unexpected way")

    def _steering_nonlinear(self, name, args, kwargs, result) -> None:
        ann = self.get(args[0])
        if isinstance(ann, Units):
            self.put(result, ann)  # an activation (tanh, sigmoid) of units: units unchanged
            return
        if name in ("softmax", "log_softmax"):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            dim = dim % result.dim() if isinstance(dim, int) else dim
            key = ann.free_axis_of.get(dim) if isinstance(dim, int) else None
            self.put(result, Scores(ann.sources, ann.pair, ann.free_axis_of, True, key))
        else:
            self.put(
                result, Scores(ann.sources, ann.pair, ann.free_axis_of, ann.normalised, ann.key)
            )

    def _binary(self, name, args, kwargs, result) -> None:
        if name == "where":
            operands = list(args[1:3])
        else:
            operands = [args[0], args[1] if len(args) > 1 else kwargs.get("other")]
        anns = [self.get(x) if isinstance(x, torch.Tensor) else None for x in operands]
        units = [a for a in anns if isinstance(a, Units)]
        scores = [a for a in anns if isinstance(a, Scores)]
        origins = [a for a in anns if isinstance(a, Origin)]
        shape = result.shape
        if not units:
            # scores with constants (adjacency, a mixing weight): they still steer
            merged = scores[0]
            for other in scores[1:]:
                merged = _join_scores(merged, other)
            self.put(
                result,
                Scores(
                    merged.sources, merged.pair, merged.free_axis_of, merged.normalised, merged.key
                ),
            )
            return
        if scores:
            # units times scores elementwise: a gate computed from other units
            target = units[0].pos.expand(shape)
            for s in scores:
                self._steer_into(s, target, name)
            self.put(result, Units(target.clone()))
            return
        for origin in origins:
            self._bind_along(origin, units[0].pos.expand(shape), name)
        if len(units) == 1:
            self.put(result, Units(units[0].pos.expand(shape).clone()))
            return
        if units[1].pos.numel() > units[0].pos.numel():
            units = units[::-1]  # the gate (broadcast over more axes) second
        a, b = (u.pos.expand(shape) for u in units)
        if name in (
            "add",
            "__add__",
            "__radd__",
            "__iadd__",
            "add_",
            "sub",
            "__sub__",
            "__rsub__",
            "rsub",
            "__isub__",
            "where",
        ):
            self.put(result, Units(self._sum(a, b, name)))
        else:
            self.put(result, Units(self._gate(a, b, name)))

    def _pairs(self, a: torch.Tensor, b: torch.Tensor, name: str) -> list[tuple[int, int]]:
        ok = (a >= 0) & (b >= 0)
        pairs = _unique_pairs(a[ok], b[ok])
        if len(torch.unique(pairs[:, 0])) != len(pairs) or len(torch.unique(pairs[:, 1])) != len(
            pairs
        ):
            raise self.refuse(name, "combines units that do not correspond one to one")
        return [(int(x), int(y)) for x, y in pairs]

    def _sum(self, a: torch.Tensor, b: torch.Tensor, name: str) -> torch.Tensor:
        pairs = self._pairs(a, b, name)
        if all(x == y for x, y in pairs):
            return a.clone()
        sa, sb = self.t.space(pairs[0][0]), self.t.space(pairs[0][1])
        if not sa.read and not sb.read:
            for x, y in pairs:
                self.t.merge(x, y)  # two fresh weight outputs: one space
            return a.clone()
        if sa.read and sb.read:
            # two spaces read elsewhere: their sum is a new space joined to both
            fresh = self.t.new_space(len(pairs), f"{sa.name}+", self.where)
            new = torch.arange(fresh.start, fresh.start + len(pairs))
            lookup = {x: i for i, (x, _) in enumerate(pairs)}
            self.t.identity.append((torch.tensor([x for x, _ in pairs]), new))
            self.t.identity.append((torch.tensor([y for _, y in pairs]), new))
            return _remap(a, lookup, new)
        if sa.read:  # b is the fresh one: a joins b
            self.t.identity.append(
                (torch.tensor([x for x, _ in pairs]), torch.tensor([y for _, y in pairs]))
            )
            return b.clone()
        self.t.identity.append(
            (torch.tensor([y for _, y in pairs]), torch.tensor([x for x, _ in pairs]))
        )
        return a.clone()

    def _gate(self, a: torch.Tensor, b: torch.Tensor, name: str) -> torch.Tensor:
        ua, ub = _positions(a), _positions(b)
        if len(ua) == 1 and len(ub) > 1:
            a, b, ua, ub = b, a, ub, ua
        if self._needs_copy(ua):
            fresh = self.t.new_space(len(ua), f"{self.where}:gated", self.where)
            fresh.by_link = True
            new = torch.arange(fresh.start, fresh.start + len(ua))
            self.t.identity.append((ua, new))
            a = _remap(a, {int(p): i for i, p in enumerate(ua)}, new)
            ua = new
        if len(ub) == 1:
            # one unit gates every unit of a: it modulates them (unnormalised steer)
            self.t.steer.append((self.t.space_of_pos[int(ub[0])], {int(ub[0])}, ua, False))
            self.t.steered.append((len(self.t.steered) + 1, ua))
            return a.clone()
        pairs = self._pairs(a, b, name)
        # unit by unit: b steers a, the two keep the same units
        self.t.steered.append((len(self.t.steered) + 1, _positions(a)))
        self.t.channel_steer.append(
            (torch.tensor([y for _, y in pairs]), torch.tensor([x for x, _ in pairs]))
        )
        return a.clone()

    def _bind_along(self, origin: Origin, pos: torch.Tensor, what: str) -> None:
        """Bind each axis of a parameter/buffer whose index follows the units of ``pos``."""
        index = origin.index.expand(pos.shape) if origin.index.shape != pos.shape else origin.index
        shape = self._shape_of(origin.name)
        coords = torch.stack(torch.unravel_index(index.reshape(-1), shape), dim=1)
        flat = pos.reshape(-1)
        for axis, size in enumerate(shape):
            if size <= 1:
                continue
            units = torch.full((size,), -1, dtype=torch.long)
            c = coords[:, axis]
            pairs = _unique_pairs(c, flat)
            if len(torch.unique(pairs[:, 0])) != len(pairs) or bool((pairs[:, 1] < 0).any()):
                continue  # this axis does not follow the units (joints, frames)
            units[pairs[:, 0]] = pairs[:, 1]
            if bool((units < 0).any()):
                continue
            self.t.per_unit.setdefault(origin.name, {})[axis] = units

    def _shape_of(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    # weights ------------------------------------------------------------------
    def _weight(self, op, x, weight, bias, dim, folds, result, what) -> None:
        ann = self.get(x)
        wname = self.params.get(id(weight))
        if not isinstance(ann, Units):
            raise self.refuse(op, "reads a tensor without units")
        if wname is None:
            raise self.refuse(op, "has a weight that is not a parameter of the model")
        if any(w.name == wname for w in self.t.weights):
            raise self.refuse(op, f"uses the weight {wname} twice")
        source = _channel_axis(ann.pos, dim, f"{op} at {self.where}")
        for p in torch.unique(source).tolist():
            self.t.space(p).read = True
        rows = weight.shape[0]
        space = self.t.new_space(rows, self.where, self.where)
        target = torch.arange(space.start, space.start + rows)
        bname = self.params.get(id(bias)) if isinstance(bias, torch.Tensor) else None
        step = len(self.t.steered)
        self.t.weights.append(_Weight(wname, source, target, bname, folds, step))
        view = [1] * result.dim()
        view[dim] = rows
        self.put(result, Units(target.view(view).expand(result.shape).clone()))

    def op_conv2d(self, func, args, kwargs, result) -> None:
        self._conv("conv2d", args, kwargs, result)

    def op_conv1d(self, func, args, kwargs, result) -> None:
        self._conv("conv1d", args, kwargs, result)

    def _conv(self, op, args, kwargs, result) -> None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        a = dict(zip(names, args, strict=False)) | kwargs
        if a.get("groups", 1) != 1:
            raise self.refuse(op, f"is a grouped convolution (groups={a['groups']})")
        weight = a["weight"]
        padding = a.get("padding", 0)
        kernel = weight.shape[2:]
        pads = [padding] * len(kernel) if isinstance(padding, int) else list(padding)
        if isinstance(padding, str):
            pads = [0 if padding == "valid" else 1] * len(kernel)
        folds = all(k == 1 or p == 0 for k, p in zip(kernel, pads, strict=True))
        self._weight(op, a["input"], weight, a.get("bias"), 1, folds, result, op)

    def op_linear(self, func, args, kwargs, result) -> None:
        names = ("input", "weight", "bias")
        a = dict(zip(names, args, strict=False)) | kwargs
        self._weight(
            "linear",
            a["input"],
            a["weight"],
            a.get("bias"),
            a["input"].dim() - 1,
            True,
            result,
            "linear",
        )

    def op_batch_norm(self, func, args, kwargs, result) -> None:
        names = ("input", "running_mean", "running_var", "weight", "bias")
        a = dict(zip(names, args, strict=False)) | kwargs
        ann = self.get(a["input"])
        if not isinstance(ann, Units):
            raise self.refuse("batch_norm", "normalises scores")
        channels = _channel_axis(ann.pos, 1, f"batch_norm at {self.where}")
        for key in names[1:]:
            tensor = a.get(key)
            name = self.params.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
            if name is not None:
                self.t.per_unit.setdefault(name, {})[0] = channels
        self.put(result, Units(ann.pos.clone()))

    def op_layer_norm(self, func, args, kwargs, result) -> None:
        names = ("input", "normalized_shape", "weight", "bias")
        a = dict(zip(names, args, strict=False)) | kwargs
        ann = self.get(a["input"])
        dims = len(a["normalized_shape"])
        pos = ann.pos
        if not isinstance(ann, Units) or bool(
            (
                pos.reshape(*pos.shape[: pos.dim() - dims], -1)
                != pos.reshape(*pos.shape[: pos.dim() - dims], -1)[..., :1]
            ).any()
        ):
            raise self.refuse(
                "layer_norm", "normalises across units (removing one would change the others)"
            )
        self.put(result, Units(pos.clone()))

    # contractions -------------------------------------------------------------
    def op_einsum(self, func, args, kwargs, result) -> None:
        equation = args[0]
        operands = (
            list(args[1])
            if len(args) == 2 and isinstance(args[1], list | tuple)
            else list(args[1:])
        )
        lhs, out = equation.replace(" ", "").split("->")
        subs = lhs.split(",")
        if len(operands) != 2 or any("." in s for s in subs):
            raise self.refuse("einsum", f"{equation!r} (only two operands, no ellipsis)")
        self._contract(subs[0], subs[1], out, operands[0], operands[1], result, "einsum")

    def op_matmul(self, func, args, kwargs, result) -> None:
        a, b = args[0], args[1]
        if a.dim() < 2 or b.dim() < 2:
            raise self.refuse("matmul", "with a vector")
        letters = "abcdefgh"
        batch = max(a.dim(), b.dim()) - 2
        sa = letters[batch - (a.dim() - 2) : batch] + "ij"
        sb = letters[batch - (b.dim() - 2) : batch] + "jk"
        self._contract(sa, sb, letters[:batch] + "ik", a, b, result, "matmul")

    op_bmm = op_matmul
    op_rmatmul = None

    def op_mm(self, func, args, kwargs, result) -> None:
        self._contract("ij", "jk", "ik", args[0], args[1], result, "mm")

    def _contract(self, sa, sb, out, a, b, result, op) -> None:
        aa, ab = self.get(a), self.get(b)
        steering = None
        if isinstance(aa, Units) and isinstance(ab, Units):
            contracted = {ch for ch in sa if ch in sb and ch not in out}
            ua, ub = _unit_letters(aa.pos, sa, contracted), _unit_letters(ab.pos, sb, contracted)
            if (ua & ub) - set(out):
                self._scores_from(sa, sb, out, aa.pos, ab.pos, result, op)
                return
            # the same units on both sides, kept: a per-channel topology (joints × joints) that
            # steers channel c of the other operand
            topology = [
                self._joint_axes(x.pos, subs, units) >= 2
                for x, subs, units in ((aa, sa, ua), (ab, sb, ub))
            ]
            if not (ua & ub & set(out)) or topology.count(True) != 1:
                raise self.refuse(op, "multiplies two tensors with units in a way without a rule")
            if topology[0]:
                sa, sb, a, b, aa, ab = sb, sa, b, a, ab, aa
            letter = next(iter(ua & ub & set(out)))
            steering = (
                _channel_axis(ab.pos, sb.index(letter), f"{op} at {self.where}"),
                _channel_axis(aa.pos, sa.index(letter), f"{op} at {self.where}"),
            )
        elif isinstance(ab, Units):
            sa, sb, a, b, aa, ab = sb, sa, b, a, ab, aa
        # aa: units; ab: constants, a parameter or scores
        pos = aa.pos
        contracted = [i for i, ch in enumerate(sa) if ch not in out]
        for dim in contracted:
            base = pos.select(dim, 0)
            for i in range(1, pos.shape[dim]):
                other = pos.select(dim, i)
                ok = (base >= 0) & (other >= 0)
                for x, y in _unique_pairs(base[ok], other[ok]).tolist():
                    self.t.merge(x, y)
        reduced = pos
        for dim in sorted(contracted, reverse=True):
            reduced = reduced.select(dim, 0)
        kept = "".join(ch for ch in sa if ch in out)
        perm = [kept.index(ch) for ch in out if ch in kept]
        reduced = reduced.permute(perm)
        view = [result.shape[i] if ch in kept else 1 for i, ch in enumerate(out)]
        target = reduced.reshape(view).expand(result.shape).clone()
        if isinstance(ab, Scores):
            target = self._aggregate(target, ab, op)
        if steering is not None:
            source, steered = steering
            if self._needs_copy(_positions(steered)):
                raise self.refuse(op, "steers units that a weight already reads elsewhere")
            self.t.channel_steer.append((source, steered))
            self.t.steered.append((len(self.t.steered) + 1, steered))
        self.put(result, Units(target))

    def _joint_axes(self, pos: torch.Tensor, subs: str, units: set[str]) -> int:
        """How many axes of a tensor index joints (not units, as long as the skeleton)."""
        return sum(
            1 for i, ch in enumerate(subs) if ch not in units and pos.shape[i] == self.joints
        )

    def _aggregate(self, target: torch.Tensor, scores: Scores, op: str) -> torch.Tensor:
        """``target`` aggregated by scores: steered; a new space when its units are read elsewhere."""
        units = _positions(target)
        if self._needs_copy(units):
            fresh = self.t.new_space(len(units), f"{self.where}:aggregated", self.where)
            fresh.by_link = True
            new = torch.arange(fresh.start, fresh.start + len(units))
            self.t.identity.append((units, new))
            target = _remap(target, {int(p): i for i, p in enumerate(units)}, new)
            units = new
        self._steer_into(scores, target, op)
        return target

    def _needs_copy(self, units: torch.Tensor) -> bool:
        """Steering re-weights a copy of a space that a weight already reads elsewhere (joined by
        an identity link); a space made by steering is steered in place."""
        spaces = {self.t.space(int(p)) for p in units}
        return all(s.read and not s.by_link for s in spaces)

    def _steer_into(self, scores: Scores, target: torch.Tensor, op: str) -> None:
        units = _positions(target)
        for sid, raw in scores.sources.items():
            self.t.steer.append((sid, raw, units, scores.normalised))
        self.t.steered.append((len(self.t.steered) + 1, units))
        if scores.pair is not None:
            left, right = scores.pair
            if scores.key in ("left", None):  # no softmax: the left operand, as in x·Aᵀ·B
                left, right = right, left
            self.t.pairs.append((left, right))  # (query, key)

    def _scores_from(self, sa, sb, out, pa, pb, result, op) -> None:
        shared = [ch for ch in sa if ch in sb and ch not in out]
        if not shared:
            raise self.refuse(op, "multiplies two tensors with units without contracting them")

        # the contracted axes of both operands, in the same order: dimension i pairs with i
        def along(pos, subs):
            dims = [subs.index(ch) for ch in shared]
            rest = [i for i in range(pos.dim()) if i not in dims]
            moved = pos.permute(rest + dims)
            return moved.reshape(-1, math.prod(pos.shape[d] for d in dims))

        # one row per head (or one row): rows that repeat across joints and frames are one
        la, lb = _unique_rows(along(pa, sa)), _unique_rows(along(pb, sb))
        if len(la) != len(lb) or bool((la < 0).any()) or bool((lb < 0).any()):
            raise self.refuse(op, "contracts units that differ across joints or frames")
        left, right = la.reshape(-1), lb.reshape(-1)
        pairs = _unique_pairs(left, right)
        sources: dict[int, set[int]] = {}
        for p in torch.cat([left, right]).tolist():
            sources.setdefault(self.t.space_of_pos[p], set()).add(p)
            self.t.space(p).read = True
        free = {}
        for i, ch in enumerate(out):
            free[i] = "left" if ch in sa else "right"
        self.put(result, Scores(sources, (pairs[:, 0], pairs[:, 1]), free))

    # reductions and pooling ---------------------------------------------------
    def _reduce(self, name, args, kwargs, result) -> None:
        ann = self.get(args[0])
        if isinstance(ann, Scores):
            self.put(result, ann)
            return
        pos = ann.pos
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(result, tuple):  # max(dim) -> (values, indices)
            result = result[0]
        if dim is None:
            raise self.refuse(name, "reduces every axis, units included")
        dims = [dim] if isinstance(dim, int) else list(dim)
        dims = sorted({d % pos.dim() for d in dims}, reverse=True)
        keepdim = kwargs.get(
            "keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False
        )
        reduced = pos
        for d in dims:
            for i in range(1, reduced.shape[d]):
                a, b = reduced.select(d, 0), reduced.select(d, i)
                if not torch.equal(a, b):
                    raise self.refuse(name, "adds different units up")
            reduced = reduced.narrow(d, 0, 1) if keepdim else reduced.select(d, 0)
        self.put(result, Units(reduced.clone()))

    def _pool(self, name, args, result) -> None:
        ann = self.get(args[0])
        if isinstance(result, tuple):
            result = result[0]
        channels = _channel_axis(ann.pos, 1, f"{name} at {self.where}")
        view = [1] * result.dim()
        view[1] = len(channels)
        self.put(result, Units(channels.view(view).expand(result.shape).clone()))


def _unique_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The distinct (a[i], b[i]) pairs, sorted, as a (k, 2) tensor (entries >= -1)."""
    a, b = a.reshape(-1) + 1, b.reshape(-1) + 1
    base = int(b.max()) + 1 if len(b) else 1
    keys = torch.unique(a * base + b)
    return torch.stack([keys // base - 1, keys % base - 1], dim=1)


def _unique_rows(rows: torch.Tensor) -> torch.Tensor:
    """The distinct rows of a 2-d tensor, sorted."""
    distinct = sorted(set(map(tuple, rows.tolist())))
    return torch.tensor(distinct, dtype=torch.long).reshape(len(distinct), rows.shape[1])


def _unit_letters(pos: torch.Tensor, subs: str, contracted: set[str]) -> set[str]:
    """The einsum letters along which a tensor's units change; a tensor of a single unit has its
    units on its length-1 axes (those contracted with the other operand, if any)."""
    out = set()
    for i, ch in enumerate(subs):
        if pos.shape[i] > 1 and not bool((pos == pos.narrow(i, 0, 1)).all()):
            out.add(ch)
    if not out:
        single = {ch for i, ch in enumerate(subs) if pos.shape[i] == 1}
        out = (single & contracted) or single
    return out


def _remap(pos: torch.Tensor, lookup: dict[int, int], new: torch.Tensor) -> torch.Tensor:
    out = pos.clone()
    for old, i in lookup.items():
        out[pos == old] = int(new[i])
    return out


def _join_scores(a: Scores, b: Scores) -> Scores:
    sources = {k: set(v) for k, v in a.sources.items()}
    for k, v in b.sources.items():
        sources.setdefault(k, set()).update(v)
    return Scores(sources, a.pair or b.pair, a.free_axis_of, a.normalised and b.normalised, a.key)


def _flatten(obj):
    if isinstance(obj, list | tuple):
        for x in obj:
            yield from _flatten(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _flatten(x)
    else:
        yield obj


# ---------------------------------------------------------------------------- the graph
def _space_name(raw: str, used: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.:+-]", "_", raw) or "space"
    candidate, i = name, 1
    while candidate in used:
        i += 1
        candidate = f"{name}#{i}"
    used.add(candidate)
    return candidate


def derive_unit_graph(model: nn.Module, example: torch.Tensor) -> UnitGraph:
    """The unit graph of ``model`` read off one run on ``example`` (N, C, T, V, M), in eval mode.

    Raises :class:`TracingError` (one line: operation, module path, way out) when an operation
    touching units has no rule."""
    trace = _Trace()
    params = {id(t): n for n, t in model.named_parameters()}
    params.update({id(t): n for n, t in model.named_buffers()})
    shapes = {n: tuple(t.shape) for n, t in model.named_parameters()}
    shapes.update({n: tuple(t.shape) for n, t in model.named_buffers()})
    stack: list[str] = []
    recorder = _Recorder(trace, params, stack)
    recorder.shapes = shapes
    recorder.joints = example.shape[3]
    handles = []

    def pre(path):
        def hook(module, args):
            stack.append(path)
            _seen(recorder, path, True, args[0] if args else None)

        return hook

    def post(path):
        def hook(module, args, output):
            _seen(recorder, path, False, output)
            stack.pop()

        return hook

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(pre(path)))
            handles.append(module.register_forward_hook(post(path)))
    channels = example.shape[1]
    inp = trace.new_space(channels, "input", "")
    inp.read = True
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            x = example.clone()
            view = [1] * x.dim()
            view[1] = channels
            recorder.put(x, Units(torch.arange(channels).view(view).expand(x.shape).clone()))
            output = model(x)
    except TracingError:
        raise
    except GcnshrinkError:
        raise
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    ann = recorder.get(output) if isinstance(output, torch.Tensor) else None
    if not isinstance(ann, Units) or output.dim() != 2:
        raise TracingError(
            "cannot derive the unit graph: the model's output is not (N, classes) logits written "
            f"by a weight; {WAY_OUT}"
        )
    out_units = _channel_axis(ann.pos, 1, "the output")
    return _assemble(trace, out_units, shapes)


def _seen(recorder: _Recorder, path: str, input_of: bool, value) -> None:
    ann = recorder.get(value) if isinstance(value, torch.Tensor) else None
    if not isinstance(ann, Units) or value.dim() < 2:
        return
    for dim in range(1, value.dim()):
        moved = ann.pos.movedim(dim, -1).reshape(-1, value.shape[dim])
        if moved.shape[0] and bool((moved == moved[:1]).all()) and bool((moved[0] >= 0).all()):
            recorder.t.seen.append((path, input_of, dim, moved[0].clone()))
            return


def _assemble(trace: _Trace, out_units: torch.Tensor, shapes) -> UnitGraph:
    # final spaces: groups of provisional spaces; units: classes of raw positions
    groups: dict[int, list[_Space]] = {}
    for space in trace.spaces:
        groups.setdefault(trace.find_space(space.sid), []).append(space)
    unit_of: dict[int, tuple[int, int]] = {}  # raw position -> (group, unit index)
    widths: dict[int, int] = {}
    for gid, members in groups.items():
        roots: dict[int, int] = {}
        for space in members:
            for p in range(space.start, space.start + space.width):
                r = trace.find(p)
                if r not in roots:
                    roots[r] = len(roots)
                unit_of[p] = (gid, roots[r])
        widths[gid] = len(roots)
    output_gid = unit_of[int(out_units[0])][0]
    # A weight that reads a space made by steering (a gated copy) before that space is steered
    # again would close a cycle (the gate reads what it steers): like the zoo's declarations, it
    # reads the space the copy was made from (the same units: the identity link joins them).
    copied_from = {}
    for src, dst in trace.identity:
        if trace.space(int(dst[0])).by_link:
            copied_from.update(zip(dst.tolist(), src.tolist(), strict=True))
    for w in trace.weights:
        later = [raw for step, raw in trace.steered if step > w.step and len(raw)]
        source_gid = unit_of[int(w.source[0])][0]
        if trace.space(int(w.source[0])).by_link and any(
            unit_of[int(raw[0])][0] == source_gid for raw in later
        ):
            w.source = torch.tensor([copied_from.get(int(p), int(p)) for p in w.source])
            w.rewired = True
    # edges between groups, for a topological order (stable by creation)
    edges: dict[int, set[int]] = {gid: set() for gid in groups}

    def edge(src_raw, dst_raw):
        a, b = unit_of[int(src_raw)][0], unit_of[int(dst_raw)][0]
        if a != b:
            edges[b].add(a)

    for w in trace.weights:
        for p in torch.unique(w.source).tolist():
            edge(p, int(w.target[0]))
    for src, dst in trace.identity:
        edge(src[0], dst[0])
    for _, raw, target, _ in trace.steer:
        edge(next(iter(raw)), target[0])
    for src, dst in trace.channel_steer:
        edge(src[0], dst[0])
    order, done = [], set()

    def visit(gid):
        if gid in done:
            return
        done.add(gid)
        for d in sorted(edges[gid]):
            visit(d)
        order.append(gid)

    for gid in sorted(groups):
        visit(gid)
    position = {gid: i for i, gid in enumerate(order)}
    for target, sources in edges.items():
        for source in sources:
            if position[source] > position[target]:
                raise TracingError(
                    f"cannot derive the unit graph: the units of {groups[target][0].module or 'the input'} "
                    f"feed back into themselves (through {groups[source][0].module}); {WAY_OUT}"
                )
    used: set[str] = set()
    names: dict[int, str] = {}
    spaces: list[UnitSpace] = []
    for gid in order:
        if gid == 0:
            name, role = _space_name("input", used), "input"
        elif gid == output_gid:
            name, role = _space_name("classes", used), "output"
        else:
            name, role = _space_name(groups[gid][0].name, used), "hidden"
        names[gid] = name
        spaces.append(UnitSpace(name, widths[gid], role))
    flat_spaces: list[UnitSpace] = []

    def amap(raw: torch.Tensor) -> tuple[str, torch.Tensor]:
        gids = {unit_of[int(p)][0] for p in raw.tolist()}
        if len(gids) != 1:
            raise TracingError(
                "cannot derive the unit graph: a weight reads units of several spaces at once; "
                + WAY_OUT
            )
        gid = gids.pop()
        return names[gid], torch.tensor(
            [unit_of[int(p)][1] for p in raw.tolist()], dtype=torch.long
        )

    bindings: list[TensorBinding] = []
    links: list[Link] = []
    bound: set[str] = set()
    flats: dict[tuple, str] = {}
    for w in trace.weights:
        source_gid = unit_of[int(w.source[0])][0]
        if w.rewired or any(
            step > w.step and unit_of[int(raw[0])][0] == source_gid
            for step, raw in trace.steered
            if len(raw)
        ):
            w.folds = False  # read before the space was steered in place: not what its probe sees
        target, t_units = amap(w.target)
        source, s_units = amap(w.source)
        if len(torch.unique(s_units)) != len(s_units):
            # a flatten (node-major or any other order): a derived space, one per distinct order
            key = (source, tuple(s_units.tolist()))
            if key not in flats:
                flat = _space_name(f"{source}:flat", used)
                flats[key] = flat
                flat_spaces.append(UnitSpace(flat, len(s_units)))
                links.append(Link(source, flat, s_units, torch.arange(len(s_units)), "flatten"))
            source, s_units = flats[key], torch.arange(len(s_units))
        bindings.append(
            TensorBinding(
                w.name,
                {0: AxisMap(target, t_units), 1: AxisMap(source, s_units)},
                prunable=True,
                source_axis=1,
                target_axis=0,
                bias=w.bias,
                folds_constant=w.folds,
            )
        )
        bound.add(w.name)
        if w.bias is not None:
            bindings.append(TensorBinding(w.bias, {0: AxisMap(target, t_units)}))
            bound.add(w.bias)
    roles = {s.name: s.role for s in spaces}
    for name, axes in trace.per_unit.items():
        if name in bound:
            continue
        maps = {}
        for axis, raw in axes.items():
            space, units = amap(raw)
            if roles[space] != "input":  # the input never shrinks: nothing to cut
                maps[axis] = AxisMap(space, units)
        if maps:
            bindings.append(TensorBinding(name, maps))
    for src, dst in trace.identity:
        s_space, s_units = amap(src)
        d_space, d_units = amap(dst)
        order_ = torch.argsort(d_units)
        links.append(Link(s_space, d_space, s_units[order_], d_units[order_], "identity"))
    for _, raw, target, normalised in trace.steer:
        s_space, s_units = amap(torch.tensor(sorted(raw)))
        d_space, d_units = amap(target)
        links.append(Link.steer(s_space, s_units.tolist(), d_space, d_units.tolist(), normalised))
    for src, dst in trace.channel_steer:
        s_space, s_units = amap(src)
        d_space, d_units = amap(dst)
        order_ = torch.argsort(d_units)
        links.append(Link(s_space, d_space, s_units[order_], d_units[order_], "channel_steer"))
    pairs = []
    for query, key in trace.pairs:
        q_space, _ = amap(query)
        k_space, _ = amap(key)
        if (q_space, k_space) not in pairs:
            pairs.append((q_space, k_space))
    input_name = names[0]
    input_flats = [
        f
        for f in flat_spaces
        if (input_name, f.name)
        in {(link.source, link.target) for link in links if link.kind == "flatten"}
    ]
    if len(input_flats) == 1 and all(b.source != input_name for b in bindings if b.prunable):
        # the model rearranges its input (chunk descriptors, a flatten) before any weight reads
        # it: the rearranged input is the input space, which never shrinks
        flat = input_flats[0]
        flat_spaces.remove(flat)
        links = [link for link in links if link.target != flat.name]
        spaces = [
            UnitSpace(input_name, flat.width, "input") if s.name == input_name else s
            for s in spaces
        ]
        bindings = [
            b
            for b in bindings
            if input_name not in {m.space for m in b.axes.values()} or b.prunable
        ]
        for b in bindings:
            for amap in b.axes.values():
                if amap.space == flat.name:
                    amap.space = input_name
    # flatten spaces right after their source
    for flat in flat_spaces:
        source = next(link.source for link in links if link.target == flat.name)
        spaces.insert([s.name for s in spaces].index(source) + 1, flat)
    probes = _probes(trace, spaces, unit_of, names)
    return UnitGraph(spaces, bindings, _dedupe(links), probes, pairs, writers_stay=True)


def _dedupe(links: list[Link]) -> list[Link]:
    out, seen = [], set()
    for link in links:
        key = (
            link.source,
            link.target,
            link.kind,
            tuple(link.source_units.tolist()),
            tuple(link.target_units.tolist()),
        )
        if key not in seen:
            seen.add(key)
            out.append(link)
    return out


def _probes(trace, spaces, unit_of, names) -> dict[str, ActivationProbe]:
    """Where each hidden space's activation can be observed: the last module boundary whose
    tensor holds exactly its units, in order, on one axis."""
    by_name = {s.name: s for s in spaces}
    probes: dict[str, ActivationProbe] = {}
    for path, input_of, dim, raw in trace.seen:
        units = [unit_of.get(int(p)) for p in raw.tolist()]
        if None in units or len({u[0] for u in units}) != 1:
            continue
        name = names[units[0][0]]
        space = by_name[name]
        if space.role != "hidden" or [u[1] for u in units] != list(range(space.width)):
            continue
        probes[name] = ActivationProbe(path, dim, input_of=input_of)
    return probes


# ---------------------------------------------------------------------------- comparison
def graph_differences(derived: UnitGraph, declared: UnitGraph) -> list[str]:
    """How two unit graphs of the same model differ, up to the names and order of their spaces
    (empty when they are the same graph). Spaces are matched through the tensors bound to them."""
    rename: dict[str, str] = {}
    problems: list[str] = []

    def match(a: str, b: str, why: str) -> None:
        if rename.setdefault(a, b) != b:
            problems.append(f"{why}: derived space {a} is both {rename[a]} and {b}")

    by_name = {b.name: b for b in declared.bindings}
    for b in derived.bindings:
        other = by_name.get(b.name)
        if other is None:
            problems.append(f"{b.name} is bound only in the derived graph")
            continue
        for axis, amap in b.axes.items():
            if axis in other.axes:
                match(amap.space, other.axes[axis].space, b.name)
    for name in by_name:
        if name not in derived.binding_by_name:
            problems.append(f"{name} is bound only in the declared graph")
    # spaces reached only through links: match them through the links into them
    for _ in range(3):
        for link in derived.links:
            if link.source in rename and link.target not in rename:
                for other in declared.links:
                    if (
                        other.kind == link.kind
                        and other.source == rename[link.source]
                        and torch.equal(other.source_units, link.source_units)
                        and other.target not in rename.values()
                        and len(other.target_units) == len(link.target_units)
                    ):
                        rename[link.target] = other.target
                        break
    for s in derived.spaces:
        if s.name not in rename:
            roles = [d.name for d in declared.spaces if d.role == s.role == "input"]
            if roles:
                rename[s.name] = roles[0]
            else:
                problems.append(f"derived space {s.name} has no declared counterpart")
    if problems:
        return problems
    if len(set(rename.values())) != len(rename) or len(rename) != len(declared.spaces):
        problems.append(
            f"spaces differ: {len(derived.spaces)} derived, {len(declared.spaces)} declared"
        )
    for s in derived.spaces:
        d = declared.space_by_name.get(rename[s.name])
        if d is None or d.width != s.width or d.role != s.role:
            problems.append(f"space {s.name} ({s.width}, {s.role}) differs from {rename[s.name]}")
    for b in derived.bindings:
        other = by_name.get(b.name)
        if other is None:
            continue
        same = (
            set(b.axes) == set(other.axes)
            and all(torch.equal(b.axes[a].units, other.axes[a].units) for a in b.axes)
            and (b.prunable, b.source_axis, b.target_axis, b.bias, b.folds_constant)
            == (
                other.prunable,
                other.source_axis,
                other.target_axis,
                other.bias,
                other.folds_constant,
            )
        )
        if not same:
            problems.append(f"binding {b.name} differs")

    def link_set(graph: UnitGraph, names: dict[str, str]) -> set:
        out = set()
        for link in graph.links:
            for s, t in zip(link.source_units.tolist(), link.target_units.tolist(), strict=True):
                out.add(
                    (
                        names.get(link.source, link.source),
                        s,
                        names.get(link.target, link.target),
                        t,
                        link.kind,
                    )
                )
        return out

    ours, theirs = link_set(derived, rename), link_set(declared, {})
    if ours != theirs:
        extra, missing = sorted(ours - theirs)[:3], sorted(theirs - ours)[:3]
        problems.append(f"links differ: only derived {extra}, only declared {missing}")
    pairs = {(rename[q], rename[k]) for q, k in derived.attention_pairs}
    if pairs != set(declared.attention_pairs):
        problems.append(
            f"attention pairs differ: {sorted(pairs)} vs {sorted(declared.attention_pairs)}"
        )
    return problems
