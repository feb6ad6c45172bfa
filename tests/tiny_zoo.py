"""Tiny zoo models with their default initialisation, built from each architecture's
``tiny_config()``; conftest's ``make_model`` fixture gives randomized ones instead.

Tests about every architecture parametrize over builders,
``@pytest.mark.parametrize("build", tiny_builders())``: a new registered architecture joins them.
"""

from collections.abc import Callable

import torch

from gcnshrink.models import SkeletonModel, available_models, create_model, model_class


def tiny_model(arch: str, seed: int = 0, num_classes: int | None = None) -> SkeletonModel:
    torch.manual_seed(seed)
    config = model_class(arch).tiny_config()
    if num_classes is not None:
        config["num_classes"] = num_classes
    return create_model(arch, **config)


def tiny_builder(arch: str, num_classes: int | None = None) -> Callable[..., SkeletonModel]:
    """``build(seed=0)`` for one architecture; named after it, so pytest ids read ``[gcn]``."""

    def build(seed: int = 0) -> SkeletonModel:
        return tiny_model(arch, seed, num_classes)

    build.__name__ = build.__qualname__ = arch
    return build


def tiny_builders(num_classes: int | None = None) -> list[Callable[..., SkeletonModel]]:
    return [tiny_builder(arch, num_classes) for arch in available_models()]


def tiny_gcn(seed: int = 0, num_classes: int = 5) -> SkeletonModel:
    """Two wide heads (not gcn's tiny config of eight narrow ones): the gcn-specific pruning and TCP
    tests were tuned on this model."""
    torch.manual_seed(seed)
    return create_model(
        "gcn",
        num_classes=num_classes,
        layout="hand21",
        heads=2,
        head_width=8,
        key_width=4,
        hidden=16,
    )
