"""Model registry: ``create_model(name, **config)``; configs are plain data recorded in checkpoints."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import UnitGraph

_REGISTRY: dict[str, type[SkeletonModel]] = {}


class SkeletonModel(nn.Module):
    """Base of every zoo model: input (N, C, T, V, M) skeleton sequences, output (N, classes) logits.

    Subclasses set ``arch``, build themselves from a plain-data ``config`` dict (JSON-serialisable,
    stored in checkpoints) and declare their unit graph.
    """

    arch: str = ""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config

    def unit_graph(self) -> UnitGraph:  # pragma: no cover - abstract
        raise NotImplementedError

    def example_input(self, batch: int = 2, frames: int = 32) -> torch.Tensor:
        c = self.config
        return torch.randn(
            batch, c["in_channels"], frames, c["layout"]["num_joints"], c["layout"]["persons"]
        )

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:  # pragma: no cover
        """The config of this model after keeping only ``kept[space]`` units of each space."""
        raise NotImplementedError


def register(name: str) -> Callable[[type[SkeletonModel]], type[SkeletonModel]]:
    def deco(cls: type[SkeletonModel]) -> type[SkeletonModel]:
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[SkeletonModel]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GcnshrinkError(
            f"unknown architecture {name!r}; available: {', '.join(available_models())}"
        ) from None


def create_model(name: str, **config) -> SkeletonModel:
    """Build a zoo model from its name and config (missing keys take the architecture's defaults)."""
    cls = model_class(name)
    return cls(cls.complete_config(config))
