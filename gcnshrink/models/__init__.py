"""The skeleton GCN zoo. Importing this package registers every architecture."""

from gcnshrink.models import gcn, stgcn  # noqa: F401  (registration side effect)
from gcnshrink.models.registry import (
    SkeletonModel,
    available_models,
    create_model,
    model_class,
    register,
)

__all__ = ["SkeletonModel", "available_models", "create_model", "model_class", "register"]
