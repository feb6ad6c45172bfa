"""Where budgets come from: gcnshrink.toml or pyproject.toml, and which models the gate checks.

The gate reads ``[gate]`` in gcnshrink.toml first, then ``[tool.gcnshrink.gate]`` in
pyproject.toml, in one folder only (no walking up), so what applies is easy to predict. Command-line
values override configured ones (:func:`resolve_targets`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from gcnshrink.errors import GcnshrinkError
from gcnshrink.gate.budgets import BUDGET_KEYS, Budgets, parse_budget_value

CONFIG_FILES = ("gcnshrink.toml", "pyproject.toml")


@dataclass(frozen=True)
class GateTarget:
    """One model to gate: its path and data (from config or the command line) and its budgets."""

    name: str  # "default" for a single [gate] table, else the key under gate.models
    model: Path | None
    data: Path | None
    budgets: Budgets


@dataclass(frozen=True)
class GateConfig:
    """What a config file says about the gate. ``source`` is None when no config was found."""

    source: Path | None
    targets: list[GateTarget] = field(default_factory=list)

    @property
    def is_multi_model(self) -> bool:
        return any(t.name != "default" for t in self.targets)


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10 only
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise GcnshrinkError(
                f"{path.name}: reading gate config needs Python 3.11+ or the 'tomli' package"
            ) from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise GcnshrinkError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise GcnshrinkError(f"{path}: cannot read: {e.strerror or e}") from None


def _gate_table(path: Path, document: dict) -> tuple[dict | None, str]:
    """The gate table of a parsed config file and how to name it in messages."""
    keys = ("tool", "gcnshrink", "gate") if path.name == "pyproject.toml" else ("gate",)
    where = "[" + ".".join(keys) + "]"
    table: object = document
    for key in keys:  # tolerate unrelated shapes such as `tool.gcnshrink = 1` on the way down
        table = table.get(key) if isinstance(table, dict) else None
    if table is not None and not isinstance(table, dict):
        raise GcnshrinkError(f"{path.name}: {where} must be a table")
    return table, where


def find_config(config_dir: str | os.PathLike = ".") -> Path | None:
    """The first file in ``config_dir`` with a gate table: gcnshrink.toml, then pyproject.toml.

    Only ``config_dir`` itself is searched (no walking up), so what applies is easy to predict.
    """
    for name in CONFIG_FILES:
        path = Path(config_dir) / name
        if path.is_file() and _gate_table(path, _load_toml(path))[0] is not None:
            return path
    return None


def _check_keys(table: Mapping, allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(allowed)}"
            )
            raise GcnshrinkError(f"{where}: unknown key {key!r}{hint}")


def _resolve_path(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise GcnshrinkError(f"{where}: expected a path string, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _target_from_table(name: str, table: Mapping, base: Path, where: str) -> GateTarget:
    parsed: dict[str, object] = {}
    for key, value in table.items():
        if key in BUDGET_KEYS:
            shown = f"{where} {key}"
            if key == "baseline":
                parsed[key] = str(_resolve_path(base, value, shown))
            else:
                parsed[key] = parse_budget_value(key, value, shown)
    model = _resolve_path(base, table["model"], f"{where} model") if "model" in table else None
    data = _resolve_path(base, table["data"], f"{where} data") if "data" in table else None
    return GateTarget(name=name, model=model, data=data, budgets=Budgets(**parsed))


def load_config(
    config_dir: str | os.PathLike = ".", path: str | os.PathLike | None = None
) -> GateConfig:
    """Read gate budgets from ``path`` or, if not given, the first config found in ``config_dir``.

    Both files accept the same gate table (``[gate]`` in gcnshrink.toml, ``[tool.gcnshrink.gate]``
    in pyproject.toml) in one of two forms:

    - budgets for one model, optionally with ``model = "path"`` and ``data = "path"``;
    - ``[gate.models.<name>]`` tables, each with ``model`` and its budgets; keys directly in
      ``[gate]`` are then defaults for every model.

    Relative paths are relative to the config file's folder. Unknown keys are errors: a typo such
    as ``max_byte`` must not silently pass a gate.
    """
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise GcnshrinkError(f"gate config not found: {source}")
    else:
        source = find_config(config_dir)
        if source is None:
            return GateConfig(source=None)
    table, where = _gate_table(source, _load_toml(source))
    where = f"{source.name} {where}"
    if table is None:
        raise GcnshrinkError(f"{where}: no such table in {source}")
    base = source.parent

    models = table.get("models")
    if models is None:
        _check_keys(table, (*BUDGET_KEYS, "model", "data", "models"), where)
        return GateConfig(source, [_target_from_table("default", table, base, where)])

    _check_keys(table, (*BUDGET_KEYS, "data", "models"), where)  # "model" belongs in each model
    if not isinstance(models, dict) or not models:
        raise GcnshrinkError(f"{where}: 'models' must contain at least one [models.<name>] table")
    defaults = {k: v for k, v in table.items() if k != "models"}
    targets = []
    for name, entry in models.items():
        entry_where = f"{where[:-1]}.models.{name}]"  # "... [gate]" -> "... [gate.models.x]"
        if not isinstance(entry, dict):
            raise GcnshrinkError(f"{entry_where}: must be a table")
        _check_keys(entry, (*BUDGET_KEYS, "model", "data"), entry_where)
        if "model" not in entry:
            raise GcnshrinkError(f'{entry_where}: missing model = "path/to/model"')
        targets.append(_target_from_table(name, {**defaults, **entry}, base, entry_where))
    return GateConfig(source, targets)


def resolve_targets(
    config: GateConfig,
    model: str | os.PathLike | None,
    overrides: Budgets,
    data: str | os.PathLike | None = None,
) -> list[GateTarget]:
    """The models the gate must check, with command-line values overriding config ones.

    - no MODEL: every configured target (each must name its model);
    - MODEL and a single-model config: that config's budgets, applied to MODEL;
    - MODEL and a multi-model config: the target(s) whose ``model`` is MODEL, else flags only.
    A target without any budget is an error (a gate that checks nothing must not pass).
    """
    if model is None:
        if not config.targets:
            raise GcnshrinkError(
                "no model given and no gate config found (add [tool.gcnshrink.gate] to "
                "pyproject.toml or [gate] to gcnshrink.toml, or pass MODEL and budgets)"
            )
        chosen = list(config.targets)
        for target in chosen:
            if target.model is None:
                raise GcnshrinkError(
                    f'{config.source}: no model to gate; pass MODEL or set model = "path" '
                    "in the gate table"
                )
    else:
        model_path = Path(model)
        if config.is_multi_model:
            chosen = [
                replace(t, model=model_path)
                for t in config.targets
                if t.model is not None and _same_path(t.model, model_path)
            ]
        else:
            chosen = [replace(t, model=model_path) for t in config.targets]
        if not chosen:
            chosen = [GateTarget(name="default", model=model_path, data=None, budgets=Budgets())]

    resolved = []
    for target in chosen:
        budgets = target.budgets.merged(overrides)
        if budgets.is_empty():
            raise GcnshrinkError(
                f"no budgets for {target.model}: pass e.g. --max-bytes 64KB, or configure "
                "[tool.gcnshrink.gate] in pyproject.toml"
            )
        resolved.append(
            replace(target, budgets=budgets, data=Path(data) if data is not None else target.data)
        )
    return resolved


def _same_path(a: Path, b: Path) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))
