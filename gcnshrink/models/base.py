"""The model contract: what every architecture of the zoo provides.

An architecture is two classes in one file:

- a config dataclass (a :class:`ModelConfig` subclass) holding every hyper-parameter with its
  default. It validates types and ranges when it is built, before any tensor is allocated, and
  turns into plain JSON data (``to_dict``) for checkpoints and file metadata;
- the module (a :class:`SkeletonModel` subclass): input (N, C, T, V, M) skeleton sequences, output
  (N, classes) logits, its unit graph, the config of its compacted self, a tiny config for tests
  and, where there is one, the import of upstream checkpoints.

Skeleton::

    @dataclass(kw_only=True)
    class ToyConfig(ModelConfig):
        hidden: int = 8

        def __post_init__(self) -> None:
            super().__post_init__()
            self.hidden = check_int("hidden", self.hidden, 0, MAX_WIDTH)

    @register_model("toy")
    class Toy(SkeletonModel):
        config_class = ToyConfig

        def __init__(self, config):
            super().__init__(config)
            cfg = self.arch_config  # the ToyConfig; self.config is its JSON dict
            ...

        def unit_graph(self) -> UnitGraph: ...
        def compacted_config(self, kept) -> dict: ...
        @classmethod
        def tiny_config(cls) -> dict: return {"layout": "hand21", "num_classes": 3}
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import UnitGraph
from gcnshrink.layouts import Layout, get_layout

# Limits that only catch typos and unit mix-ups (a width of 1e6 is a 4 TB weight matrix): every
# real skeleton model is orders of magnitude below them.
MAX_WIDTH = 1 << 16
MAX_CLASSES = 1 << 20
MAX_JOINTS = 1 << 12
MAX_PERSONS = 64
MAX_COUNT = 1 << 10  # blocks, heads, chunks, partitions

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


# ---------------------------------------------------------------------------- validation
def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or one clear line."""
    if isinstance(value, bool):
        raise GcnshrinkError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # ints, numpy and 0-d torch integers; never floats
    except TypeError:
        raise GcnshrinkError(f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise GcnshrinkError(f"{name} must be between {low} and {high}, got {number}")
    return number


def check_float(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a finite number in [low, high], or one clear line. Ints stay ints (as given)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy and 0-d torch floats
        except (TypeError, ValueError):
            raise GcnshrinkError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise GcnshrinkError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple) -> Any:
    if value not in choices:
        raise GcnshrinkError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def check_layout(value: object) -> Layout:
    """A Layout from a Layout, its dict (as stored in checkpoints) or a built-in layout name."""
    if isinstance(value, str):
        layout = get_layout(value)
    elif isinstance(value, Layout):
        layout = value
    elif isinstance(value, Mapping):
        try:
            layout = Layout.from_dict(value)
        except (KeyError, TypeError, ValueError) as exc:
            raise GcnshrinkError(f"layout is not a valid skeleton layout ({exc!r})") from None
    else:
        raise GcnshrinkError(
            f"layout must be a layout name, a Layout or its dict, got {type(value).__name__}"
        )
    check_int("layout num_joints", layout.num_joints, 1, MAX_JOINTS)
    check_int("layout persons", layout.persons, 1, MAX_PERSONS)
    return layout


def check_list(name: str, value: object) -> list:
    if not isinstance(value, list | tuple):
        raise GcnshrinkError(f"{name} must be a list, got {type(value).__name__}")
    return list(value)


def check_dict(name: str, value: object, keys: tuple[str, ...]) -> dict:
    """A mapping with exactly ``keys``."""
    if not isinstance(value, Mapping):
        raise GcnshrinkError(f"{name} must be a dict with keys {', '.join(keys)}")
    missing = [k for k in keys if k not in value]
    extra = [k for k in value if k not in keys]
    if missing or extra:
        raise GcnshrinkError(
            f"{name} must have the keys {', '.join(keys)}"
            + (f"; missing {', '.join(map(str, missing))}" if missing else "")
            + (f"; unknown {', '.join(map(str, extra))}" if extra else "")
        )
    return dict(value)


# ---------------------------------------------------------------------------- config
@dataclass(kw_only=True)
class ModelConfig:
    """Every hyper-parameter of one architecture, validated on construction.

    Subclasses add their fields (with defaults) and extend ``__post_init__`` to validate them and to
    fill derived values (calling ``super().__post_init__()`` first). Checkpoints store ``to_dict()``,
    and ``from_dict(to_dict())`` gives the same config back.
    """

    num_classes: int
    layout: Layout
    in_channels: int = 3

    def __post_init__(self) -> None:
        self.num_classes = check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        self.layout = check_layout(self.layout)
        self.in_channels = check_int("in_channels", self.in_channels, 1, MAX_WIDTH)

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
        """The config from plain data (``create_model``'s keywords, a checkpoint's ``config``)."""
        if not isinstance(values, Mapping):
            raise GcnshrinkError(f"config must be a dict, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [str(k) for k in values if k not in fields]
        if unknown:
            raise GcnshrinkError(
                f"unknown config key {unknown[0]!r}; known: {', '.join(sorted(fields))}"
            )
        missing = [
            name
            for name, f in fields.items()
            if name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise GcnshrinkError(f"config needs {' and '.join(missing)}")
        # deep copy: later edits of the caller's lists must not reach a built model's config
        return cls(**copy.deepcopy(dict(values)))

    def to_dict(self) -> dict:
        """Plain JSON data, the form checkpoints and safetensors/ONNX metadata hold."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Layout) else copy.deepcopy(value)
        return out

    def input_shape(self, batch: int, frames: int) -> tuple[int, int, int, int, int]:
        """(N, C, T, V, M) of a batch this model takes."""
        return (batch, self.in_channels, frames, self.layout.num_joints, self.layout.persons)


# ---------------------------------------------------------------------------- model
class SkeletonModel(nn.Module):
    """Base of every zoo model: input (N, C, T, V, M) skeleton sequences, output (N, classes) logits.

    A subclass sets ``config_class``, builds its layers from ``self.arch_config`` (the validated
    dataclass) and implements :meth:`unit_graph`, :meth:`compacted_config` and :meth:`tiny_config`.
    ``self.config`` is the same config as plain JSON data: what checkpoints record, and what
    ``create_model(arch, **config)`` rebuilds the model from. Registration
    (:func:`gcnshrink.models.register_model`) sets ``arch``.
    """

    arch: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            config = self.make_config(config)
        self.arch_config = config
        self.config = config.to_dict()

    @classmethod
    def make_config(cls, values: Mapping[str, Any]) -> ModelConfig:
        """The validated config with every default filled in; errors name the architecture."""
        try:
            return cls.config_class.from_dict(values)
        except GcnshrinkError as exc:
            raise GcnshrinkError(f"{cls.arch or cls.__name__} config: {exc}") from None

    # ------------------------------------------------------------------ what the tools ask
    @property
    def num_classes(self) -> int:
        return self.arch_config.num_classes

    @property
    def in_channels(self) -> int:
        return self.arch_config.in_channels

    @property
    def layout(self) -> Layout:
        return self.arch_config.layout

    def input_shape(self, batch: int = 2, frames: int = 32) -> tuple[int, int, int, int, int]:
        return self.arch_config.input_shape(batch, frames)

    def example_input(self, batch: int = 2, frames: int = 32) -> torch.Tensor:
        """A random input batch of the right shape (for tracing, FLOPs, latency)."""
        return torch.randn(self.input_shape(batch, frames))

    # ------------------------------------------------------------------ every architecture
    def unit_graph(self) -> UnitGraph:  # pragma: no cover - abstract
        """The units each tensor connects (docs/architecture.md), for this instance's widths."""
        raise NotImplementedError

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:  # pragma: no cover
        """The config of this model after keeping only ``kept[space]`` units of each space."""
        raise NotImplementedError

    @classmethod
    def tiny_config(cls) -> dict:  # pragma: no cover - abstract
        """A small config for tests (layout and classes included): builds and runs in milliseconds."""
        raise NotImplementedError

    # ------------------------------------------------------------------ foreign checkpoints
    # An architecture that has upstream checkpoints (released weights, other code bases) overrides
    # recognizes() and infer_config(), and rename_foreign() where upstream key names differ.

    @classmethod
    def recognizes(cls, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether a foreign state dict's keys are this architecture's signature."""
        return False

    @classmethod
    def rename_foreign(cls, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Upstream key names (and layouts) onto this model's state-dict keys."""
        return dict(state)

    @classmethod
    def infer_config(
        cls, state: Mapping[str, torch.Tensor], layout: Layout | None, num_classes: int | None
    ) -> dict:
        """The config of a renamed foreign state dict, from its key and shape signatures."""
        raise GcnshrinkError(
            f"gcnshrink cannot infer a {cls.arch} config from a state dict; pass the config "
            "(load_checkpoint(..., config=...))"
        )

    @classmethod
    def import_state(
        cls,
        state: Mapping[str, torch.Tensor],
        layout: Layout | None = None,
        num_classes: int | None = None,
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """(config, state dict with our keys) of a foreign, unwrapped state dict."""
        renamed = cls.rename_foreign(state)
        return cls.infer_config(renamed, layout, num_classes), renamed

    @classmethod
    def imports_foreign(cls) -> bool:
        """Whether this architecture recognizes upstream checkpoints."""
        return getattr(cls.recognizes, "__func__", None) is not SkeletonModel.recognizes.__func__
