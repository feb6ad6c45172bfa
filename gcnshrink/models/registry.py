"""Architecture names -> model classes: ``create_model(name, **config)``.

Architectures register with ``@register_model("name")`` when their module is imported (the zoo's
own in :mod:`gcnshrink.models`), or come from other installed packages through the entry-point
group ``gcnshrink.models``: the entry point's name is the architecture's name and its object the
model class (``toy = "toy_models.toy:ToyModel"`` under ``[project.entry-points."gcnshrink.models"]``
in that package's pyproject.toml). Entry points are loaded the first time the registry is asked
anything, so that importing gcnshrink stays cheap and a broken plugin only matters when models are
looked up; it is then one clear error naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from importlib import metadata

from gcnshrink.errors import GcnshrinkError
from gcnshrink.models.base import ModelConfig, SkeletonModel

ENTRY_POINT_GROUP = "gcnshrink.models"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

_REGISTRY: dict[str, type[SkeletonModel]] = {}
_plugins_loaded = False

ModelClass = type[SkeletonModel]


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make ``cls`` the architecture ``name`` (sets ``cls.arch``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"architecture name must be letters, digits, '_.+-', got {name!r}")

    def deco(cls: ModelClass) -> ModelClass:
        if not (isinstance(cls, type) and issubclass(cls, SkeletonModel)):
            raise TypeError(f"{name}: {cls!r} is not a SkeletonModel subclass")
        config_class = cls.config_class
        if not (
            isinstance(config_class, type)
            and issubclass(config_class, ModelConfig)
            and dataclasses.is_dataclass(config_class)
            and config_class is not ModelConfig
        ):
            raise TypeError(f"{name}: config_class must be a ModelConfig dataclass of its own")
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing) != _qualified(cls):
            # the same class imported again (a reload) replaces itself; another class is a clash
            raise GcnshrinkError(
                f"architecture {name!r} is registered twice: by {_qualified(existing)} and by "
                f"{_qualified(cls)}"
            )
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister_model(name: str) -> ModelClass:
    """Remove an architecture (tests that register one for a while); returns its class."""
    try:
        cls = _REGISTRY.pop(name)
    except KeyError:
        raise GcnshrinkError(f"architecture {name!r} is not registered") from None
    cls.arch = ""
    return cls


def available_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def model_class(name: str) -> ModelClass:
    if name == "user":  # a user's own module (--arch PACKAGE.MODULE:CALLABLE), not in the zoo
        from gcnshrink.models.user import UserModel

        return UserModel
    _load_plugins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise GcnshrinkError(
            f"unknown architecture {name!r}; available: {', '.join(available_models())}"
        ) from None


def create_model(name: str, **config) -> SkeletonModel:
    """Build a zoo model from its name and config (missing keys take the architecture's defaults).

    The config is validated before any tensor is allocated: an unknown key, a wrong type or an
    out-of-range value is one :class:`GcnshrinkError` line naming the architecture.
    """
    cls = model_class(name)
    return cls(cls.make_config(config))


def recognizing_models(state) -> list[str]:
    """Architectures whose foreign-checkpoint signature matches the keys of ``state``."""
    return [name for name in available_models() if _REGISTRY[name].recognizes(state)]


# ---------------------------------------------------------------------------- plugins
def _plugin_entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    # set before loading: a plugin that looks something up while it is imported must not recurse
    _plugins_loaded = True
    try:
        for entry_point in _plugin_entry_points():
            _load_plugin(entry_point)
    except BaseException:
        # try again on the next lookup, so that a broken plugin is reported every time
        _plugins_loaded = False
        raise


def _load_plugin(entry_point: metadata.EntryPoint) -> None:
    name, where = entry_point.name, entry_point.value
    try:
        loaded = entry_point.load()
    except Exception as exc:  # a plugin's import can fail in any way; it must not be a traceback
        raise GcnshrinkError(
            f"model plugin {name!r} ({where}) failed to load: {_one_line(exc)}"
        ) from None
    if isinstance(loaded, type) and issubclass(loaded, SkeletonModel):
        if loaded.arch and loaded.arch != name:
            raise GcnshrinkError(
                f"model plugin {name!r} ({where}) is registered as {loaded.arch!r}; the entry "
                "point's name must be the architecture's"
            )
        if _REGISTRY.get(name) is not loaded:
            try:
                register_model(name)(loaded)
            except (TypeError, ValueError, GcnshrinkError) as exc:
                raise GcnshrinkError(f"model plugin {name!r} ({where}): {exc}") from None
    elif name not in _REGISTRY:
        raise GcnshrinkError(
            f"model plugin {name!r} ({where}) is not a SkeletonModel subclass and registered no "
            f"architecture {name!r}"
        )


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
