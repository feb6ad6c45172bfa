"""Pruning methods by name, on one contract (:mod:`gcnshrink.pruning.method`).

Importing this package imports every module in it, so a built-in method is one new file that
registers itself with ``@register_method``; :func:`available_methods` also lists the methods other
packages add through the ``gcnshrink.methods`` entry-point group.
"""

import importlib
import pkgutil

from gcnshrink.pruning.budget import PruneSpec, realized_rate
from gcnshrink.pruning.method import (
    HardMask,
    MaskParametrization,
    NoOptions,
    PruningMethod,
    bake,
    delivering,
    option,
    remove_masks,
)
from gcnshrink.pruning.registry import (
    available_methods,
    create_method,
    method_class,
    option_table,
    register_method,
    unregister_method,
)

__all__ = [
    "HardMask",
    "MaskParametrization",
    "NoOptions",
    "PruneSpec",
    "PruningMethod",
    "available_methods",
    "bake",
    "create_method",
    "delivering",
    "method_class",
    "option",
    "option_table",
    "realized_rate",
    "register_method",
    "remove_masks",
    "unregister_method",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration side effects
