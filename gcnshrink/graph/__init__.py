"""The unit graph: which units each tensor connects, and what follows from it.

- :mod:`gcnshrink.graph.units`: the structure (unit spaces, tensor bindings, links) and what is
  derived from it once (coupled groups, flatten-derived spaces, incoming edges);
- :mod:`gcnshrink.graph.propagation`: accessibility and co-accessibility, boolean and
  differentiable, with the link semantics in one place;
- :mod:`gcnshrink.graph.projection`: the exact consistent projection of scores onto a budget.
"""

from gcnshrink.graph.projection import consistent_budget_masks
from gcnshrink.graph.propagation import (
    accessible,
    coaccessible,
    consistent,
    reachability,
    topology_summary,
)
from gcnshrink.graph.units import (
    ActivationProbe,
    AxisMap,
    Link,
    TensorBinding,
    UnitGraph,
    UnitSpace,
    masks_from_weights,
)

__all__ = [
    "accessible",
    "coaccessible",
    "consistent",
    "consistent_budget_masks",
    "reachability",
    "topology_summary",
    "ActivationProbe",
    "AxisMap",
    "Link",
    "TensorBinding",
    "UnitGraph",
    "UnitSpace",
    "masks_from_weights",
]
