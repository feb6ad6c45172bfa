"""Methods by name: the built-in ones register with :func:`register_method`; other packages add
theirs through the ``gcnshrink.methods`` entry-point group, e.g. in their pyproject.toml::

    [project.entry-points."gcnshrink.methods"]
    mymethod = "mypackage.pruning:MyMethod"

The entry point names a :class:`~gcnshrink.pruning.method.PruningMethod` subclass (or a module that
registers one when imported). Entry points are loaded the first time the registry is asked.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import types
import typing

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning.budget import PruneSpec
from gcnshrink.pruning.method import PruningMethod

ENTRY_POINT_GROUP = "gcnshrink.methods"
_METHODS: dict[str, type[PruningMethod]] = {}
_entry_points_loaded = False


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    _METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken plug-in must not take gcnshrink down with a traceback
            raise GcnshrinkError(
                f"pruning method plug-in {entry.name!r} ({entry.value}) failed to load: {exc}"
            ) from None
        if isinstance(loaded, type) and issubclass(loaded, PruningMethod):
            _METHODS.setdefault(loaded.name or entry.name, loaded)


def available_methods() -> list[str]:
    _load_entry_points()
    return sorted(_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    _load_entry_points()
    try:
        return _METHODS[name]
    except KeyError:
        raise GcnshrinkError(
            f"unknown method {name!r}; available: {', '.join(available_methods())}"
        ) from None


# ---------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option as the CLI shows it: a ``--flag`` shared by every method that has the field."""

    name: str
    type: type
    help: str
    choices: tuple | None
    methods: tuple[str, ...]
    defaults: tuple  # the default of each method in ``methods``

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _plain_type(annotation) -> type:
    """``float``, ``int``, ``str`` or ``bool`` from a field's annotation (``X | None`` allowed)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # noqa: S307 - our own dataclass annotations only
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    if annotation not in (float, int, str, bool):
        raise TypeError(f"option type {annotation!r} is not float, int, str or bool")
    return annotation


def options_of(cls: type[PruningMethod]) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls.Options))


def option_table() -> list[OptionInfo]:
    """Every option of every registered method, merged by name (``--score`` serves mp and tcp)."""
    merged: dict[str, OptionInfo] = {}
    for method in available_methods():
        for f in options_of(_METHODS[method]):
            known = merged.get(f.name)
            if known is None:
                merged[f.name] = OptionInfo(
                    f.name,
                    _plain_type(f.type),
                    f.metadata.get("help", ""),
                    tuple(f.metadata["choices"]) if "choices" in f.metadata else None,
                    (method,),
                    (f.default,),
                )
            else:
                merged[f.name] = dataclasses.replace(
                    known, methods=(*known.methods, method), defaults=(*known.defaults, f.default)
                )
    return sorted(merged.values(), key=lambda o: o.name)


def build_options(cls: type[PruningMethod], values: dict) -> object:
    """The method's Options from ``values`` (None = the default), checked: an option the method
    does not have, a value of the wrong type or outside its choices is one clear line."""
    fields = {f.name: f for f in options_of(cls)}
    given = {k: v for k, v in values.items() if v is not None}
    for key in given:
        if key not in fields:
            owners = [
                m for m in available_methods() if key in {f.name for f in options_of(_METHODS[m])}
            ]
            where = f"applies to {', '.join(owners)} only" if owners else "is not an option"
            raise GcnshrinkError(f"--{key.replace('_', '-')} {where}, not --method {cls.name}")
    for key, value in given.items():
        f = fields[key]
        kind = _plain_type(f.type)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            given[key] = value
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise GcnshrinkError(
                f"--{key.replace('_', '-')} must be {kind.__name__}, got {value!r}"
            )
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise GcnshrinkError(
                f"--{key.replace('_', '-')} must be one of {', '.join(map(str, choices))}, "
                f"got {value!r}"
            )
    return cls.Options(**given)


def create_method(
    name: str, spec: PruneSpec, options: dict | object | None = None, seed: int = 0
) -> PruningMethod:
    """A method ready to ``attach``; ``options`` is a dict of option values or an Options object."""
    cls = method_class(name)
    if options is None or isinstance(options, dict):
        options = build_options(cls, options or {})
    return cls(spec, options, seed=seed)
