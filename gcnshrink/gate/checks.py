"""Checking a measured model against its budgets, and the exit code that follows.

Exit codes follow size-limit: 0 = within budget, 1 = a budget is exceeded (0 with ``warn_only``);
bad input (2) is any :class:`GcnshrinkError`, mapped by the CLI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gcnshrink.errors import GcnshrinkError
from gcnshrink.gate.budgets import BUDGET_SPECS, Budgets

# A passing max-budget check above this share of its limit is reported as a warning ("near limit").
NEAR_LIMIT_FRACTION = 0.9

# Float metrics (accuracy, drop, latency) are compared with this slack so that, e.g., a drop of
# 0.85 - 0.84 = 0.010000000000000009 does not fail a 0.01 budget through rounding noise.
FLOAT_TOLERANCE = 1e-9

# The metric keys measure_model() returns and evaluate() reads.
METRIC_KEYS = ("params", "nonzero", "flops", "bytes", "latency_ms", "accuracy")


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
    for spec in BUDGET_SPECS:
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
