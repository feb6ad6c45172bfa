"""Pruning methods, by name. Each is a parametrization, loss terms, a schedule and a final mask rule."""

from __future__ import annotations

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning.base import PruneSpec, PruningMethod, realized_rate
from gcnshrink.pruning.magnitude import MagnitudePruning, RandomPruning
from gcnshrink.pruning.structured import StructuredPruning
from gcnshrink.pruning.tcp import PosthocConsistentPruning, TopologicallyConsistentPruning

METHODS: dict[str, type[PruningMethod]] = {
    "mp": MagnitudePruning,
    "random": RandomPruning,
    "structured": StructuredPruning,
    "tcp": TopologicallyConsistentPruning,
    "tcp-posthoc": PosthocConsistentPruning,
}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, spec: PruneSpec, seed: int = 0, **options) -> PruningMethod:
    if name == "tcp" and options.pop("posthoc", False):
        name = "tcp-posthoc"
    options.pop("posthoc", None)
    try:
        cls = METHODS[name]
    except KeyError:
        raise GcnshrinkError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None
    return cls(spec, seed=seed, **options)


__all__ = [
    "METHODS",
    "PruneSpec",
    "PruningMethod",
    "make_method",
    "realized_rate",
    "register_method",
]
