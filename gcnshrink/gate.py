"""The model gate: budgets, where they come from, how a measured model is checked against them, and
what the result looks like in a terminal, in JSON and on GitHub Actions.

This module is pure logic. The ``gcnshrink gate`` command is a thin wrapper: it resolves targets
(:func:`resolve_targets`), measures each model (``gcnshrink.measure.measure_model``, imported by the
CLI, never here), calls :func:`evaluate` and renders the checks. Exit codes follow size-limit:
0 = within budget, 1 = a budget is exceeded (0 with ``warn_only``), 2 = bad input (any
:class:`GcnshrinkError`, mapped by the CLI).

Units (the same in flags and config files, case-insensitive):

- sizes: ``KB``/``MB``/``GB`` (and bare ``k``/``m``/``g``) are 1000-based, ``KiB``/``MiB``/``GiB``
  are 1024-based, a bare number is bytes. ``max_bytes`` checks the size on disk of the model file as
  given to the gate (no compression, no sidecar files).
- counts (params, nonzero, FLOPs): ``k`` = 10^3, ``M`` = 10^6, ``G`` = 10^9, ``T`` = 10^12.
- latency: milliseconds; ``ms``, ``s`` and ``us`` suffixes are accepted.
- accuracy: a fraction (``0.8``) or a percentage (``80%``); ``max_accuracy_drop`` is absolute
  accuracy points vs the baseline (``0.01``, ``1pp`` or ``1%`` all mean one point).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO

from rich.table import Table

from gcnshrink.errors import GcnshrinkError

# A passing max-budget check above this share of its limit is reported as a warning ("near limit").
NEAR_LIMIT_FRACTION = 0.9

# Float metrics (accuracy, drop, latency) are compared with this slack so that, e.g., a drop of
# 0.85 - 0.84 = 0.010000000000000009 does not fail a 0.01 budget through rounding noise.
FLOAT_TOLERANCE = 1e-9

# The metric keys measure_model() returns and evaluate() reads.
METRIC_KEYS = ("params", "nonzero", "flops", "bytes", "latency_ms", "accuracy")

CONFIG_FILES = ("gcnshrink.toml", "pyproject.toml")

# --------------------------------------------------------------------------------------- units

_NUMBER_RE = re.compile(
    r"^\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z%]*)\s*$"
)

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
LATENCY_UNITS_MS = {"": Decimal(1), "ms": Decimal(1), "s": Decimal(1000), "us": Decimal("0.001")}

# No budget needs more than 10^18 (an exabyte, a quintillion FLOPs); bigger is a typo, and refusing
# it early keeps "1e999999999" from building a gigantic integer.
_MAX_MAGNITUDE_DIGITS = 18


def _split_quantity(text: object, what: str) -> tuple[Decimal, str]:
    """Split "1.5MB" into (Decimal("1.5"), "mb"). Numbers from TOML (int/float) have no unit."""
    if isinstance(text, bool):  # bool is an int subclass: `max_bytes = true` is a mistake
        raise GcnshrinkError(f"{what}: expected a number, got {text!r}")
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise GcnshrinkError(f"{what}: {text!r} is not a finite number")
        if text < 0:
            raise GcnshrinkError(f"{what}: must not be negative, got {text!r}")
        return Decimal(str(text)), ""
    if not isinstance(text, str):
        raise GcnshrinkError(f"{what}: expected a number or a string, got {type(text).__name__}")
    if text.strip().startswith("-"):
        raise GcnshrinkError(f"{what}: must not be negative, got {text!r}")
    match = _NUMBER_RE.match(text)
    if match is None:
        raise GcnshrinkError(f"{what}: cannot read {text!r} as a number with an optional unit")
    try:
        value = Decimal(match["number"])
    except InvalidOperation:  # the regex should make this unreachable; keep the one-line contract
        raise GcnshrinkError(f"{what}: cannot read {text!r} as a number") from None
    if value != 0 and value.adjusted() > _MAX_MAGNITUDE_DIGITS:
        raise GcnshrinkError(f"{what}: {text!r} is implausibly large")
    return value, match["unit"].lower()


def _floor_int(value: Decimal) -> int:
    # Budgets are upper bounds on integer quantities: "n <= 1000.7" is exactly "n <= 1000".
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Bytes from "64KB", "1.5MB", "2 MiB", "800k" or "123".

    KB/MB/GB and bare k/m/g are 1000-based (as in size-limit and SI), KiB/MiB/GiB 1024-based; a bare
    number is bytes. Case-insensitive. Fractions of a byte are floored (the limit stays exact).
    """
    value, unit = _split_quantity(text, what)
    if unit not in SIZE_UNITS:
        raise GcnshrinkError(
            f"{what}: unknown size unit in {text!r}; use B, KB, MB, GB (1000-based) "
            "or KiB, MiB, GiB (1024-based)"
        )
    return _floor_int(value * SIZE_UNITS[unit])


def parse_count(text: str | int | float, what: str = "count") -> int:
    """A count (parameters, nonzeros, FLOPs) from "50k", "1.2M", "3G", "2T" or "12345"."""
    value, unit = _split_quantity(text, what)
    if unit not in COUNT_UNITS:
        raise GcnshrinkError(f"{what}: unknown count suffix in {text!r}; use k, M, G or T")
    return _floor_int(value * COUNT_UNITS[unit])


def parse_latency_ms(text: str | int | float, what: str = "latency") -> float:
    """Milliseconds from "12", "12ms", "0.5s" or "800us"."""
    value, unit = _split_quantity(text, what)
    if unit not in LATENCY_UNITS_MS:
        raise GcnshrinkError(f"{what}: unknown time unit in {text!r}; use ms, s or us")
    return float(value * LATENCY_UNITS_MS[unit])


def parse_fraction(text: str | int | float, what: str = "accuracy") -> float:
    """A fraction in 0..1 from "0.8", "80%" or "80pp" (percent and points divide by 100).

    A bare number above 1 is refused rather than guessed at: "80" is almost surely 80 %, but a gate
    should not pass or fail on a guess.
    """
    value, unit = _split_quantity(text, what)
    if unit in ("%", "pp"):
        value = value / 100
    elif unit != "":
        raise GcnshrinkError(f"{what}: unknown unit in {text!r}; write a fraction (0.8) or 80%")
    elif value > 1:
        raise GcnshrinkError(f"{what}: {text!r} is not a fraction in 0..1; write 0.8 or 80%")
    if value > 1:
        raise GcnshrinkError(f"{what}: {text!r} is more than 100 %")
    return float(value)


# ----------------------------------------------------------------------------------- formatting


def _trim(number: float, digits: int) -> str:
    """Up to ``digits`` significant-ish decimals, without trailing zeros ("64", "1.5", "12.3")."""
    text = f"{number:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, steps: list[tuple[float, str]], unit_sep: str) -> str:
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    for factor, suffix in steps:
        if magnitude >= factor:
            scaled = magnitude / factor
            digits = 0 if scaled >= 100 else 1 if scaled >= 10 else 2
            return f"{sign}{_trim(scaled, digits)}{unit_sep}{suffix}"
    return f"{sign}{_trim(magnitude, 2)}"


def format_bytes(n: float | None) -> str:
    """Human-readable size with 1000-based units, matching :func:`parse_size` ("63.5 KB")."""
    if n is None:
        return "—"
    if abs(n) < 1000:
        return f"{int(n)} B" if float(n).is_integer() else f"{n:.1f} B"
    steps = [(1000.0**3, "GB"), (1000.0**2, "MB"), (1000.0, "KB")]
    return _scaled(float(n), steps, " ")


def format_count(n: float | None) -> str:
    """Human-readable count ("812", "20.5k", "1.2M", "3.4G")."""
    if n is None:
        return "—"
    steps = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
    if abs(n) < 1000:
        return str(int(n)) if float(n).is_integer() else _trim(float(n), 2)
    return _scaled(float(n), steps, "")


def _format_quantity(kind: str, value: float, exact: bool = False) -> str:
    """One metric value for people. ``exact`` shows full precision (used when rounding hides a gap)."""
    if kind == "bytes":
        return f"{int(value):,} B" if exact else format_bytes(value)
    if kind == "count":
        return f"{int(value):,}" if exact else format_count(value)
    if kind == "ms":
        return f"{value:.6g} ms" if exact else f"{value:.3g} ms"
    if kind == "fraction":
        return f"{value * 100:.6g} %" if exact else f"{value * 100:.2f} %"
    if kind == "points":
        return f"{value * 100:.6g} pp" if exact else f"{value * 100:.2f} pp"
    raise ValueError(f"unknown quantity kind {kind!r}")


def _format_pair(kind: str, value: float, limit: float) -> tuple[str, str]:
    """Value and limit as text; if rounding makes different numbers look equal, show them exactly."""
    shown = _format_quantity(kind, value), _format_quantity(kind, limit)
    if shown[0] == shown[1] and value != limit:
        shown = _format_quantity(kind, value, exact=True), _format_quantity(kind, limit, exact=True)
    return shown


def _format_delta(kind: str, delta: float | None) -> str:
    if delta is None:
        return "—"
    if kind == "fraction":  # an accuracy difference reads best in points
        kind = "points"
    text = _format_quantity(kind, abs(delta))
    return ("+" if delta > 0 else "-" if delta < 0 else "±") + text


# ---------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class _BudgetSpec:
    """How one budget key is written, parsed, compared and shown."""

    key: str  # config key / dataclass field, e.g. "max_bytes"
    metric: str  # name of the check and of the metric it reads ("accuracy_drop" is derived)
    bound: str  # "max": value <= limit passes; "min": value >= limit passes
    kind: str  # formatting kind, see _format_quantity
    parse: Callable[[object, str], int | float]
    needs: str  # what the user must provide when the metric is missing

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


_SPECS = (
    _BudgetSpec("max_bytes", "bytes", "max", "bytes", parse_size, "a model file"),
    _BudgetSpec("max_params", "params", "max", "count", parse_count, "a parameter count"),
    _BudgetSpec("max_nonzero", "nonzero", "max", "count", parse_count, "a nonzero count"),
    _BudgetSpec("max_flops", "flops", "max", "count", parse_count, "a FLOP count"),
    _BudgetSpec(
        "max_latency_ms", "latency_ms", "max", "ms", parse_latency_ms, "a latency measurement"
    ),
    _BudgetSpec("min_accuracy", "accuracy", "min", "fraction", parse_fraction, "--data"),
    _BudgetSpec(
        "max_accuracy_drop", "accuracy_drop", "max", "points", parse_fraction, "--baseline"
    ),
)
_SPEC_BY_KEY = {s.key: s for s in _SPECS}


@dataclass(frozen=True)
class Budgets:
    """Limits one model must meet. ``None`` means "not set" (no check, and no override on merge)."""

    max_bytes: int | None = None  # size on disk of the model file as given, in bytes
    max_params: int | None = None  # parameter count of the (compacted) model
    max_nonzero: int | None = None  # nonzero weights
    max_flops: int | None = None  # FLOPs of one forward pass, as measure_model counts them
    max_latency_ms: float | None = None  # ONNX Runtime latency, as measure_model reports it
    min_accuracy: float | None = None  # fraction 0..1 on --data
    max_accuracy_drop: float | None = None  # baseline accuracy - accuracy, fraction (0.01 = 1 pp)
    baseline: str | None = None  # results.json or a model file to compare against
    warn_only: bool | None = None  # report failures but exit 0 (None = not set, i.e. False)

    def limits(self) -> dict[str, int | float]:
        """The budget keys that are set, with their limits."""
        return {s.key: getattr(self, s.key) for s in _SPECS if getattr(self, s.key) is not None}

    def is_empty(self) -> bool:
        return not self.limits()

    def merged(self, overrides: Budgets) -> Budgets:
        """These budgets with every field that ``overrides`` sets replacing ours (CLI over config)."""
        changes = {
            f.name: getattr(overrides, f.name)
            for f in fields(self)
            if getattr(overrides, f.name) is not None
        }
        return replace(self, **changes)


_BUDGET_KEYS = tuple(f.name for f in fields(Budgets))


def _parse_budget_value(key: str, value: object, shown_key: str) -> object:
    if key == "baseline":
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise GcnshrinkError(f"{shown_key}: expected a path, got {value!r}")
        return str(value)
    if key == "warn_only":
        if not isinstance(value, bool):
            raise GcnshrinkError(f"{shown_key}: expected true or false, got {value!r}")
        return value
    return _SPEC_BY_KEY[key].parse(value, shown_key)


def budgets_from_options(
    *,
    max_bytes: str | int | None = None,
    max_params: str | int | None = None,
    max_nonzero: str | int | None = None,
    max_flops: str | int | None = None,
    max_latency_ms: str | float | None = None,
    min_accuracy: str | float | None = None,
    max_accuracy_drop: str | float | None = None,
    baseline: str | os.PathLike | None = None,
    warn_only: bool | None = None,
) -> Budgets:
    """Budgets from command-line options (raw strings); errors name the flag ("--max-bytes: ...").

    Pass ``warn_only=None`` (not False) when the flag was not given, so a config's ``warn_only``
    survives the merge.
    """
    raw = {
        "max_bytes": max_bytes,
        "max_params": max_params,
        "max_nonzero": max_nonzero,
        "max_flops": max_flops,
        "max_latency_ms": max_latency_ms,
        "min_accuracy": min_accuracy,
        "max_accuracy_drop": max_accuracy_drop,
        "baseline": baseline,
        "warn_only": warn_only,
    }
    parsed = {}
    for key, value in raw.items():
        if value is not None:
            parsed[key] = _parse_budget_value(key, value, "--" + key.replace("_", "-"))
    return Budgets(**parsed)


# ----------------------------------------------------------------------------------- config


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
        if key in _BUDGET_KEYS:
            shown = f"{where} {key}"
            if key == "baseline":
                parsed[key] = str(_resolve_path(base, value, shown))
            else:
                parsed[key] = _parse_budget_value(key, value, shown)
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
        _check_keys(table, (*_BUDGET_KEYS, "model", "data", "models"), where)
        return GateConfig(source, [_target_from_table("default", table, base, where)])

    _check_keys(table, (*_BUDGET_KEYS, "data", "models"), where)  # "model" belongs in each model
    if not isinstance(models, dict) or not models:
        raise GcnshrinkError(f"{where}: 'models' must contain at least one [models.<name>] table")
    defaults = {k: v for k, v in table.items() if k != "models"}
    targets = []
    for name, entry in models.items():
        entry_where = f"{where[:-1]}.models.{name}]"  # "... [gate]" -> "... [gate.models.x]"
        if not isinstance(entry, dict):
            raise GcnshrinkError(f"{entry_where}: must be a table")
        _check_keys(entry, (*_BUDGET_KEYS, "model", "data"), entry_where)
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


# ------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Check:
    """The outcome of one budget for one model.

    ``severity`` is "error" (failed), "warning" (failed under warn-only, or passed above
    NEAR_LIMIT_FRACTION of a max limit) or "ok". ``delta_vs_baseline`` is value minus the
    baseline's value (None without a baseline, or for accuracy_drop, which is already a delta).
    """

    name: str  # metric: bytes, params, nonzero, flops, latency_ms, accuracy, accuracy_drop
    value: int | float
    limit: int | float
    passed: bool
    delta_vs_baseline: int | float | None
    severity: str
    budget: str  # the budget key, e.g. "max_bytes"
    bound: str  # "max" or "min"
    kind: str  # how to format value/limit: bytes, count, ms, fraction, points
    model: str | None = None

    @property
    def near_limit(self) -> bool:
        return self.passed and self.severity == "warning"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "delta_vs_baseline": self.delta_vs_baseline,
            "severity": self.severity,
            "budget": self.budget,
            "bound": self.bound,
            "model": self.model,
        }


def _metric(metrics: Mapping, key: str, where: str) -> int | float | None:
    value = metrics.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GcnshrinkError(f"{where}: metric {key!r} is not a finite number: {value!r}")
    return value


def _clean(value: int | float) -> int | float:
    # Differences of floats carry noise (0.010000000000000009); 12 decimals is far below any
    # accuracy or latency resolution and keeps JSON and messages tidy.
    return round(value, 12) if isinstance(value, float) else value


def evaluate(
    metrics: Mapping[str, int | float | None],
    budgets: Budgets,
    baseline_metrics: Mapping[str, int | float | None] | None = None,
    *,
    model: str | os.PathLike | None = None,
) -> list[Check]:
    """Check measured ``metrics`` (keys among METRIC_KEYS) against every budget that is set.

    A budget whose metric was not measured is an error, not a pass ("--min-accuracy needs
    --data"). ``model`` is copied into each check for multi-model JSON.
    """
    if budgets.is_empty():
        raise GcnshrinkError(
            "no budgets to check: pass e.g. --max-bytes 64KB or configure the gate"
        )
    model_name = str(model) if model is not None else None
    checks = []
    for spec in _SPECS:
        limit = getattr(budgets, spec.key)
        if limit is None:
            continue
        delta = None
        if spec.metric == "accuracy_drop":
            if baseline_metrics is None:
                raise GcnshrinkError(f"{spec.flag} needs --baseline")
            base_accuracy = _metric(baseline_metrics, "accuracy", "baseline")
            if base_accuracy is None:
                raise GcnshrinkError(
                    f"{spec.flag} needs the baseline's accuracy (a results.json baseline with "
                    "accuracy, or a baseline model measured with --data)"
                )
            accuracy = _metric(metrics, "accuracy", "model")
            if accuracy is None:
                raise GcnshrinkError(f"{spec.flag} needs --data")
            value = _clean(base_accuracy - accuracy)
        else:
            value = _metric(metrics, spec.metric, "model")
            if value is None:
                raise GcnshrinkError(f"{spec.flag} needs {spec.needs} ({spec.metric} not measured)")
            if baseline_metrics is not None:
                base = _metric(baseline_metrics, spec.metric, "baseline")
                delta = _clean(value - base) if base is not None else None

        tolerance = FLOAT_TOLERANCE if isinstance(value, float) or isinstance(limit, float) else 0
        if spec.bound == "max":
            passed = value <= limit + tolerance
        else:
            passed = value >= limit - tolerance
        near = spec.bound == "max" and passed and limit > 0 and value > NEAR_LIMIT_FRACTION * limit
        if not passed:
            severity = "warning" if budgets.warn_only else "error"
        else:
            severity = "warning" if near else "ok"
        checks.append(
            Check(
                name=spec.metric,
                value=value,
                limit=limit,
                passed=passed,
                delta_vs_baseline=delta,
                severity=severity,
                budget=spec.key,
                bound=spec.bound,
                kind=spec.kind,
                model=model_name,
            )
        )
    return checks


def exit_code(checks: Iterable[Check], warn_only: bool | None = False) -> int:
    """0 when every check passed, 1 when one failed; 0 regardless under ``warn_only``."""
    if warn_only:
        return 0
    return 0 if all(c.passed for c in checks) else 1


def baseline_from_results(
    path: str | os.PathLike,
    method: str | None = None,
    rate: float | None = None,
    bytes_field: str = "bytes_sparse",
) -> dict[str, int | float | None]:
    """Baseline metrics from a sweep results.json: the dense reference, or the record of ``method``
    (and ``rate`` when the method was swept at several rates).

    ``bytes_field`` says which stored size stands in for "bytes": bytes_sparse (default, the sparse
    safetensors file), bytes_dense or bytes_onnx; pick the one matching the gated model's format.
    """
    from gcnshrink import report  # lazy: report is only needed for results.json baselines

    if bytes_field not in ("bytes_sparse", "bytes_dense", "bytes_onnx"):
        raise GcnshrinkError(f"unknown bytes field {bytes_field!r}")
    (results,) = report.load_results([path])
    record = results.find_record(method, rate)
    return {
        "params": record.params,
        "nonzero": record.nonzero,
        "flops": record.flops,
        "bytes": getattr(record, bytes_field),
        "latency_ms": record.latency_ms,
        "accuracy": record.accuracy,
    }


# -------------------------------------------------------------------------------- rendering


def _status_text(check: Check) -> str:
    if not check.passed:
        return "over budget (warn-only)" if check.severity == "warning" else "FAIL"
    if check.near_limit:
        return f"pass, near limit ({check.value / check.limit:.0%})"
    return "pass"


def _limit_text(check: Check) -> str:
    _, limit = _format_pair(check.kind, check.value, check.limit)
    return ("≤ " if check.bound == "max" else "≥ ") + limit


def render_table(checks: list[Check]) -> Table:
    """A rich table for the terminal: one row per check."""
    show_model = len({c.model for c in checks}) > 1
    table = Table(title="gcnshrink gate")
    if show_model:
        table.add_column("Model")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column("Limit", justify="right")
    table.add_column("Δ vs baseline", justify="right")
    table.add_column("Result")
    styles = {"ok": "green", "warning": "yellow", "error": "bold red"}
    for check in checks:
        value, _ = _format_pair(check.kind, check.value, check.limit)
        row = [
            check.name,
            value,
            _limit_text(check),
            _format_delta(check.kind, check.delta_vs_baseline),
            f"[{styles[check.severity]}]{_status_text(check)}[/]",
        ]
        table.add_row(*([check.model or ""] if show_model else []), *row)
    return table


def to_json(checks: list[Check]) -> str:
    """A JSON array, one object per check, in the size-limit style: name, value, limit, passed,
    delta_vs_baseline, plus severity, budget, bound and model."""
    return json.dumps([c.to_dict() for c in checks], indent=2)


def _message(check: Check) -> str:
    value, limit = _format_pair(check.kind, check.value, check.limit)
    if not check.passed:
        relation = "exceeds the limit" if check.bound == "max" else "is below the minimum"
        text = f"{check.name} {value} {relation} {limit} ({check.budget})"
    else:
        text = f"{check.name} {value} is {check.value / check.limit:.0%} of the limit {limit}"
    if check.delta_vs_baseline is not None:
        text += f"; {_format_delta(check.kind, check.delta_vs_baseline)} vs baseline"
    return text


def _escape_data(text: str) -> str:
    # GitHub workflow-command escaping: the message may not contain raw newlines or '%'.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # Property values (file=, title=) additionally may not contain ':' or ','.
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(checks: list[Check], model_path: str | os.PathLike | None) -> list[str]:
    """Workflow commands: ``::error`` per failed check, ``::warning`` per warn-only failure or
    near-limit pass. Annotations do not fail the job; the exit code does."""
    lines = []
    for check in checks:
        if check.severity == "ok":
            continue
        level = "error" if check.severity == "error" else "warning"
        if not check.passed:
            suffix = " (warn-only)" if level == "warning" else ""
            title = f"gcnshrink gate: {check.name} over budget{suffix}"
        else:
            title = f"gcnshrink gate: {check.name} near budget"
        path = model_path if model_path is not None else check.model
        props = [f"file={_escape_property(str(path))}"] if path is not None else []
        props.append(f"title={_escape_property(title)}")
        lines.append(f"::{level} {','.join(props)}::{_escape_data(_message(check))}")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def step_summary_markdown(checks: list[Check], model_path: str | os.PathLike | None) -> str:
    """A Markdown job summary: a verdict line and a table of checks."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        verdict = "✅ within budget"
    elif all(c.severity == "warning" for c in failed):
        verdict = "⚠️ over budget (warn-only, not blocking)"
    else:
        verdict = "❌ over budget"
    name = f" `{_md_cell(str(model_path))}`" if model_path is not None else ""
    lines = [
        f"### gcnshrink gate{name}: {verdict}",
        "",
        "| Metric | Value | Limit | Δ vs baseline | Result |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    icons = {"ok": "✅", "warning": "⚠️", "error": "❌"}
    for check in checks:
        value, _ = _format_pair(check.kind, check.value, check.limit)
        cells = [
            check.name,
            value,
            _limit_text(check),
            _format_delta(check.kind, check.delta_vs_baseline),
            f"{icons[check.severity]} {_status_text(check)}",
        ]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines += ["", "_Sizes: 1 KB = 1000 B, 1 KiB = 1024 B._", ""]
    return "\n".join(lines)


def emit_github(
    checks: list[Check],
    model_path: str | os.PathLike | None,
    env: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> bool:
    """On GitHub Actions (GITHUB_ACTIONS == "true"): print annotations to ``stream`` (stdout by
    default; the runner reads workflow commands from stdout) and append the Markdown summary to the
    file named by GITHUB_STEP_SUMMARY. Returns whether anything was emitted.

    A summary that cannot be written is reported on stderr but does not change the gate's verdict.
    """
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return False
    stream = sys.stdout if stream is None else stream
    for line in github_annotations(checks, model_path):
        print(line, file=stream)
    summary_path = env.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        try:
            with open(summary_path, "a", encoding="utf-8") as f:
                f.write(step_summary_markdown(checks, model_path) + "\n")
        except OSError as e:
            print(
                f"gcnshrink: could not write the step summary to {summary_path}: {e}",
                file=sys.stderr,
            )
    return True
