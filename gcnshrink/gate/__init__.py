"""The model gate: check models against size, speed and accuracy budgets, for people and for CI.

- :mod:`~gcnshrink.gate.budgets`: the budgets and how flags and config values are parsed;
- :mod:`~gcnshrink.gate.config`: gcnshrink.toml / pyproject.toml and which models to check;
- :mod:`~gcnshrink.gate.baselines`: metrics to compare with, from results.json or a model file;
- :mod:`~gcnshrink.gate.checks`: evaluation of measured metrics and the exit code;
- :mod:`~gcnshrink.gate.render`: the terminal table and the ``--json`` array;
- :mod:`~gcnshrink.gate.github`: GitHub annotations and the job summary.

:func:`run_gate` is the whole ``gcnshrink gate`` command without its rendering. Exit codes follow
size-limit: 0 = within budget, 1 = a budget is exceeded (0 with ``warn_only``), 2 = bad input (any
:class:`~gcnshrink.errors.GcnshrinkError`, mapped by the CLI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gcnshrink.gate.baselines import baseline_from_results, bytes_field_for, is_results_baseline
from gcnshrink.gate.budgets import Budgets, budgets_from_options
from gcnshrink.gate.checks import (
    FLOAT_TOLERANCE,
    METRIC_KEYS,
    NEAR_LIMIT_FRACTION,
    Check,
    evaluate,
    exit_code,
)
from gcnshrink.gate.config import GateConfig, GateTarget, find_config, load_config, resolve_targets
from gcnshrink.gate.github import emit_github, github_annotations, step_summary_markdown
from gcnshrink.gate.render import render_table, to_json

__all__ = [
    "FLOAT_TOLERANCE",
    "METRIC_KEYS",
    "NEAR_LIMIT_FRACTION",
    "Budgets",
    "Check",
    "GateConfig",
    "GateRun",
    "GateTarget",
    "GatedModel",
    "baseline_from_results",
    "budgets_from_options",
    "emit_github",
    "evaluate",
    "exit_code",
    "find_config",
    "github_annotations",
    "load_config",
    "render_table",
    "resolve_targets",
    "run_gate",
    "step_summary_markdown",
    "to_json",
]


@dataclass(frozen=True)
class GatedModel:
    """One configured or given model, its checks and its own exit code."""

    target: GateTarget
    checks: list[Check]
    exit_code: int


@dataclass(frozen=True)
class GateRun:
    """Every model the gate checked, in order."""

    models: list[GatedModel]

    @property
    def checks(self) -> list[Check]:
        return [check for gated in self.models for check in gated.checks]

    @property
    def exit_code(self) -> int:
        return max((gated.exit_code for gated in self.models), default=0)

    def to_json(self) -> str:
        return to_json(self.checks)


def run_gate(
    model: str | os.PathLike | None,
    overrides: Budgets,
    *,
    data: str | os.PathLike | None = None,
    config_dir: str | os.PathLike = ".",
    load_options: dict | None = None,
) -> GateRun:
    """Resolve the models to check (``model`` and ``overrides`` over the config in
    ``config_dir``), measure each as ``gcnshrink.measure.measure_model`` does, and evaluate it
    against its budgets (``load_options``: how to read a foreign checkpoint, as
    ``load_checkpoint`` takes them). Measures only what a budget needs: accuracy with an
    accuracy budget and data, FLOPs with a FLOP budget, latency with a latency budget.
    """
    # Lazy: measuring needs torch and onnxruntime; reading budgets and configs must stay cheap.
    from gcnshrink.data import load_data
    from gcnshrink.measure import measure_model

    targets = resolve_targets(load_config(config_dir), model, overrides, data)
    datasets: dict[str, object] = {}
    gated = []
    for target in targets:
        budgets = target.budgets
        needs_accuracy = budgets.min_accuracy is not None or budgets.max_accuracy_drop is not None
        dataset = None
        if target.data and needs_accuracy:
            spec = str(target.data)
            if spec not in datasets:
                datasets[spec] = load_data(spec)
            dataset = datasets[spec]
        options = {
            "latency": budgets.max_latency_ms is not None,
            "flops": budgets.max_flops is not None,
            "load_options": load_options,
        }
        metrics = measure_model(target.model, dataset, **options)
        baseline = None
        if budgets.baseline:
            if is_results_baseline(budgets.baseline):
                baseline = baseline_from_results(
                    budgets.baseline, bytes_field=bytes_field_for(target.model)
                )
            else:  # a model file, measured exactly like the gated one
                baseline = measure_model(Path(budgets.baseline), dataset, **options)
        checks = evaluate(metrics, budgets, baseline, model=target.name)
        gated.append(GatedModel(target, checks, exit_code(checks, budgets.warn_only)))
    return GateRun(gated)
