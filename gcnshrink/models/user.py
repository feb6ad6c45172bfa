"""``--arch PACKAGE.MODULE:CALLABLE``: a user's own GCN, its unit graph derived by tracing.

The callable (a class or a function, importable from the user's environment, like torchrun's module
argument) is called with the keywords of ``--arch-config JSON`` and returns an ``nn.Module`` that
takes (N, C, T, V, M) skeleton sequences and returns (N, classes) logits. Its checkpoint is the
module's usual ``state_dict``.

The model behind the contract is the user's module itself: :class:`UserModel` gives it a class
that derives from both :class:`UserModel` and the user's class, so its forward, its submodules and
its state-dict keys are the user's, and gcnshrink's tools see a :class:`SkeletonModel`. The config
records the callable, its keywords, the skeleton layout, the classes and, once compacted, the
shape of every cut tensor, so gcnshrink's own files rebuild the model with the same flags.
Reading such a file needs the same ``--arch``: the user names the code, the file only records it
(:func:`check_recorded_callable`, docs/security.md); nothing is ever executed from the file.

The unit graph is the module's own ``unit_graph()`` when it defines one, else it is derived by
:func:`gcnshrink.graph.tracing.derive_unit_graph`, and in both cases checked before it is used:
the tensor shapes, a dense model without dead units, and a copy whose random units were zeroed
compacts without changing its logits.

A compacted model runs the user's forward on smaller tensors: the forward must read widths off
its tensors (``x.shape``, ``-1`` in a view), not from integers stored at construction. One that
does not fails the logit check of compaction, in one line.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import UnitGraph, masks_from_weights, topology_summary
from gcnshrink.models.base import MAX_WIDTH, ModelConfig, SkeletonModel, check_int

USER_ARCH = "user"
TRACE_FRAMES = 16
_SPEC = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def is_callable_spec(arch: object) -> bool:
    """Whether ``--arch`` names a callable (``package.module:callable``) rather than a zoo model."""
    return isinstance(arch, str) and ":" in arch


def import_callable(spec: str):
    """The object ``package.module:attribute`` names, or one clear line."""
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise GcnshrinkError(
            f"--arch {spec!r} is not PACKAGE.MODULE:CALLABLE (for example my_models.shift:ShiftGCN)"
        )
    module_name, attribute = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise GcnshrinkError(
            f"--arch {spec}: cannot import {module_name!r} ({exc.msg}); is it on PYTHONPATH?"
        ) from None
    except Exception as exc:  # the user's import can fail in any way: one line, not a traceback
        raise GcnshrinkError(
            f"--arch {spec}: importing {module_name!r} failed: {_one_line(exc)}"
        ) from None
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise GcnshrinkError(f"--arch {spec}: {module_name!r} has no {attribute!r}") from None
    if not callable(obj):
        raise GcnshrinkError(
            f"--arch {spec}: {attribute!r} is a {type(obj).__name__}, not callable"
        )
    return obj


# The callables the user named in this process (``--arch``, ``arch=`` in the API, or
# :func:`user_config`). A gcnshrink file only *records* which callable built its model: one read
# from a file is built only once the user has named it, so a crafted file cannot make gcnshrink
# call, say, ``os:system`` with arguments of the file's choosing.
_NAMED_BY_USER: set[str] = set()


def name_callable(spec: str) -> None:
    """The user names ``spec`` (``--arch``): files recording it as their model's may be read."""
    import_callable(spec)  # a bad spec is refused here, in one line
    _NAMED_BY_USER.add(spec)


def check_recorded_callable(arch: object, config: object, path) -> None:
    """Refuse a file whose model is a user's own callable the user has not named (see above)."""
    if arch != USER_ARCH:
        return
    spec = config.get("callable") if isinstance(config, Mapping) else None
    if spec not in _NAMED_BY_USER:
        raise GcnshrinkError(
            f"{path}: its model was built by your own code {spec!r}; gcnshrink imports and calls "
            f"that only when you name it: pass --arch {spec} (docs/security.md)"
        )


def build_user_module(spec: str, arguments: Mapping[str, Any]) -> nn.Module:
    factory = import_callable(spec)
    try:
        module = factory(**dict(arguments))
    except Exception as exc:
        raise GcnshrinkError(
            f"--arch {spec} with --arch-config {dict(arguments)}: {_one_line(exc)}"
        ) from None
    if not isinstance(module, nn.Module):
        raise GcnshrinkError(
            f"--arch {spec} returned a {type(module).__name__}, not a torch nn.Module"
        )
    if isinstance(module, SkeletonModel):
        raise GcnshrinkError(f"--arch {spec} returned a gcnshrink model; pass its name as --arch")
    return module


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


@dataclass(kw_only=True)
class UserConfig(ModelConfig):
    """``callable``: ``package.module:callable``; ``callable_config``: its keywords (JSON);
    ``shapes``: the shape of every tensor compaction cut (empty before)."""

    callable: str
    callable_config: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.callable, str) or not _SPEC.fullmatch(self.callable):
            raise GcnshrinkError(f"callable must be PACKAGE.MODULE:CALLABLE, got {self.callable!r}")
        if not isinstance(self.callable_config, Mapping) or not all(
            isinstance(k, str) for k in self.callable_config
        ):
            raise GcnshrinkError("callable_config must be a JSON object of keyword arguments")
        if not isinstance(self.shapes, Mapping):
            raise GcnshrinkError("shapes must map tensor names to shapes")
        for name, shape in self.shapes.items():
            if not isinstance(shape, list | tuple):
                raise GcnshrinkError(f"shapes[{name!r}] must be a list of sizes")
            for size in shape:
                check_int(f"shapes[{name!r}]", size, 0, MAX_WIDTH * MAX_WIDTH)
        self.callable_config = dict(self.callable_config)
        self.shapes = {k: list(v) for k, v in self.shapes.items()}


_CLASSES: dict[tuple[type, type], type] = {}


class UserModel(SkeletonModel):
    """A user's module seen through the model contract (see the module docstring)."""

    config_class = UserConfig
    arch = USER_ARCH
    arch_config: UserConfig

    def __new__(cls, config=None, *args, **kwargs):
        if config is None:  # copy.deepcopy and pickling build an empty instance first
            return super().__new__(cls)
        if not isinstance(config, UserConfig):
            config = cls.make_config(config)
        net = build_user_module(config.callable, config.callable_config)
        _resize(net, config.shapes)
        user_class = type(net)
        combined = _CLASSES.get((cls, user_class))
        if combined is None:
            name = f"{user_class.__name__}AsSkeletonModel"
            combined = type(name, (cls, user_class), {"__module__": cls.__module__})
            _CLASSES[(cls, user_class)] = combined
        model = object.__new__(combined)
        model.__dict__.update(net.__dict__)
        model.__dict__["_user_class"] = user_class
        return model

    def __init__(self, config) -> None:
        # the module was built by the user's callable in __new__; only the contract's part here
        if not isinstance(config, UserConfig):
            config = self.make_config(config)
        self.__dict__["arch_config"] = config
        self.__dict__["config"] = config.to_dict()
        self.__dict__["_unit_graph"] = None

    def __reduce_ex__(self, protocol):
        graph = self.__dict__.get("_unit_graph")
        return (
            _rebuild,
            (type(self).__mro__[1], self.config, self.state_dict(), graph, self.training),
        )

    @classmethod
    def tiny_config(cls) -> dict:
        raise GcnshrinkError("a user's model has no tiny config; pass --arch-config")

    # ------------------------------------------------------------------ unit graph
    def unit_graph(self) -> UnitGraph:
        cached = self.__dict__.get("_unit_graph")
        if cached is not None:
            return cached
        declared = getattr(self._user_class, "unit_graph", None)
        if declared is not None:
            graph = declared(self)
            how = "declared by its unit_graph()"
        else:
            from gcnshrink.graph.tracing import derive_unit_graph

            graph = derive_unit_graph(self, self._trace_input())
            how = "derived by tracing"
        try:
            check_graph_shapes(self, graph)
        except (AssertionError, ValueError, GcnshrinkError) as exc:
            raise GcnshrinkError(
                f"the unit graph of {self.arch_config.callable} ({how}) fails its check: "
                f"{_one_line(exc)}"
            ) from None
        self.__dict__["_unit_graph"] = graph
        return graph

    def _trace_input(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        reference = next(iter(self.parameters()), None)
        # frames and joints differ, so that no rule mistakes one axis for the other
        frames = TRACE_FRAMES if self.layout.num_joints != TRACE_FRAMES else TRACE_FRAMES + 4
        x = torch.randn(self.input_shape(2, frames), generator=gen)
        return x.to(reference.device) if reference is not None else x

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        graph = self.unit_graph()
        kept = graph.with_derived(kept)
        state = self.state_dict()
        shapes = dict(self.config["shapes"])
        for b in graph.bindings:
            shape = list(state[b.name].shape)
            for axis, amap in b.axes.items():
                shape[axis] = int(kept[amap.space][amap.units].sum())
            if shape != list(state[b.name].shape) or b.name in shapes:
                shapes[b.name] = shape
        return {**self.config, "shapes": shapes}


def _rebuild(cls, config, state, graph=None, training=False):
    model = cls(config)
    model.load_state_dict(state)
    model.__dict__["_unit_graph"] = graph  # a copy has the graph its original derived and checked
    return model.train(training)


# attributes that describe a layer's widths, kept in step with the tensors compaction cut
_WIDTH_ATTRIBUTES = {
    nn.Linear: {"weight": (("out_features", 0), ("in_features", 1))},
    nn.modules.conv._ConvNd: {"weight": (("out_channels", 0), ("in_channels", 1))},
    nn.modules.batchnorm._NormBase: {
        "weight": (("num_features", 0),),
        "running_mean": (("num_features", 0),),
    },
}


def _resize(net: nn.Module, shapes: Mapping[str, list[int]]) -> None:
    """Give every named tensor its compacted shape (contents are loaded afterwards)."""
    for name, shape in shapes.items():
        path, _, leaf = name.rpartition(".")
        try:
            owner = net.get_submodule(path)
        except AttributeError:
            raise GcnshrinkError(
                f"config shapes name {name!r}, which the model does not have"
            ) from None
        if leaf in owner._parameters and owner._parameters[leaf] is not None:
            old = owner._parameters[leaf]
            owner._parameters[leaf] = nn.Parameter(old.new_zeros(shape), old.requires_grad)
        elif leaf in owner._buffers and owner._buffers[leaf] is not None:
            owner._buffers[leaf] = owner._buffers[leaf].new_zeros(shape)
        else:
            raise GcnshrinkError(f"config shapes name {name!r}, which the model does not have")
        for kind, attributes in _WIDTH_ATTRIBUTES.items():
            if isinstance(owner, kind):
                for attribute, axis in attributes.get(leaf, ()):
                    size = shape[axis]
                    if attribute == "in_channels" and getattr(owner, "groups", 1) != 1:
                        continue
                    setattr(owner, attribute, size)


def check_graph_shapes(model: UserModel, graph: UnitGraph) -> None:
    """The structural half of the checks (the other half, random dead units compacting away with
    the same logits, is :func:`gcnshrink.testing.check_graph_keeps_logits`, which the prune
    pipeline runs before any pruning): the tensor shapes, and no dead unit in a dense model."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    graph.check_against(tensors)
    params = dict(model.named_parameters())
    summary = topology_summary(graph, masks_from_weights(graph, params))
    dense = all(bool((params[b.name] != 0).all()) for b in graph.prunable)
    if dense and summary["dead_units"]:
        raise GcnshrinkError(f"the dense model has {summary['dead_units']} dead units")


def user_config(
    spec: str, arguments: Mapping[str, Any] | None, layout, num_classes: int | None
) -> dict:
    """The gcnshrink config of ``--arch spec --arch-config arguments``: classes read off one
    forward pass when not given; the layout must be given (the module does not say it)."""
    if layout is None:
        raise GcnshrinkError(f"--arch {spec}: pass --layout (the skeleton the model takes)")
    arguments = dict(arguments or {})
    name_callable(spec)
    net = build_user_module(spec, arguments)
    config = {"callable": spec, "callable_config": arguments, "layout": layout.to_dict()}
    if num_classes is None:
        x = torch.zeros(1, 3, TRACE_FRAMES, layout.num_joints, layout.persons)
        try:
            with torch.no_grad():
                out = net.eval()(x)
        except Exception as exc:
            raise GcnshrinkError(
                f"--arch {spec} does not run on (1, 3, {TRACE_FRAMES}, {layout.num_joints}, "
                f"{layout.persons}) skeletons: {_one_line(exc)}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise GcnshrinkError(f"--arch {spec} must return (N, classes) logits")
        num_classes = int(out.shape[1])
    config["num_classes"] = num_classes
    return config
