"""The skeleton GCN zoo and the contract every architecture meets (:mod:`gcnshrink.models.base`).

Importing this package registers the built-in architectures; others come from installed packages
through the ``gcnshrink.models`` entry-point group (:mod:`gcnshrink.models.registry`).
"""

from gcnshrink.models import aagcn, agcn, ctrgcn, gcn, pyskl_stgcn, stgcn  # noqa: F401  (registration side effect)
from gcnshrink.models.base import ModelConfig, SkeletonModel
from gcnshrink.models.registry import (
    available_models,
    create_model,
    model_class,
    recognizing_models,
    register_model,
    unregister_model,
)

__all__ = [
    "ModelConfig",
    "SkeletonModel",
    "available_models",
    "create_model",
    "model_class",
    "recognizing_models",
    "register_model",
    "unregister_model",
]
