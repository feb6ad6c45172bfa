"""Budgets: the limits a model must meet, and how each budget key is written, parsed and compared.

The same keys are flags (``--max-bytes``) and config keys (``max_bytes``); values use the units of
:mod:`gcnshrink.quantities`. ``max_bytes`` checks the size on disk of the model file as given to
the gate (no compression, no sidecar files); ``max_accuracy_drop`` is absolute accuracy points vs
the baseline (``0.01``, ``1pp`` or ``1%`` all mean one point).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from gcnshrink.errors import GcnshrinkError
from gcnshrink.quantities import parse_count, parse_fraction, parse_latency_ms, parse_size


@dataclass(frozen=True)
class BudgetSpec:
    """How one budget key is written, parsed, compared and shown."""

    key: str  # config key / Budgets field, e.g. "max_bytes"
    metric: str  # name of the check and of the metric it reads ("accuracy_drop" is derived)
    bound: str  # "max": value <= limit passes; "min": value >= limit passes
    kind: str  # quantity kind for formatting, see gcnshrink.quantities.format_quantity
    parse: Callable[[object, str], int | float]
    needs: str  # what the user must provide when the metric is missing

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


BUDGET_SPECS = (
    BudgetSpec("max_bytes", "bytes", "max", "bytes", parse_size, "a model file"),
    BudgetSpec("max_params", "params", "max", "count", parse_count, "a parameter count"),
    BudgetSpec("max_nonzero", "nonzero", "max", "count", parse_count, "a nonzero count"),
    BudgetSpec("max_flops", "flops", "max", "count", parse_count, "a FLOP count"),
    BudgetSpec(
        "max_latency_ms", "latency_ms", "max", "ms", parse_latency_ms, "a latency measurement"
    ),
    BudgetSpec("min_accuracy", "accuracy", "min", "fraction", parse_fraction, "--data"),
    BudgetSpec("max_accuracy_drop", "accuracy_drop", "max", "points", parse_fraction, "--baseline"),
)
_SPEC_BY_KEY = {s.key: s for s in BUDGET_SPECS}


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
        return {
            s.key: getattr(self, s.key) for s in BUDGET_SPECS if getattr(self, s.key) is not None
        }

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


BUDGET_KEYS = tuple(f.name for f in fields(Budgets))


def parse_budget_value(key: str, value: object, shown_key: str) -> object:
    """One value of a Budgets field from a flag or config; errors start with ``shown_key``."""
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
    parsed = {
        key: parse_budget_value(key, value, "--" + key.replace("_", "-"))
        for key, value in raw.items()
        if value is not None
    }
    return Budgets(**parsed)
