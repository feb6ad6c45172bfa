"""What a gate run looks like for people and programs: a rich table for the terminal, the JSON
array of ``--json`` (size-limit's style), and the one-line messages the annotations reuse."""

from __future__ import annotations

import json

from rich.table import Table

from gcnshrink.gate.checks import Check
from gcnshrink.quantities import format_delta, format_pair


def status_text(check: Check) -> str:
    """The verdict of one check in words ("FAIL", "pass, near limit (95%)")."""
    if not check.passed:
        return "over budget (warn-only)" if check.severity == "warning" else "FAIL"
    if check.near_limit:
        return f"pass, near limit ({check.value / check.limit:.0%})"
    return "pass"


def limit_text(check: Check) -> str:
    """The limit with its direction ("≤ 64 KB", "≥ 80.00 %")."""
    _, limit = format_pair(check.kind, check.value, check.limit)
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
        value, _ = format_pair(check.kind, check.value, check.limit)
        row = [
            check.name,
            value,
            limit_text(check),
            format_delta(check.kind, check.delta_vs_baseline),
            f"[{styles[check.severity]}]{status_text(check)}[/]",
        ]
        table.add_row(*([check.model or ""] if show_model else []), *row)
    return table


def to_json(checks: list[Check]) -> str:
    """A JSON array, one object per check, in the size-limit style: name, value, limit, passed,
    delta_vs_baseline, plus severity, budget, bound and model."""
    return json.dumps([c.to_dict() for c in checks], indent=2)


def check_message(check: Check) -> str:
    """One sentence on one check, for annotations ("bytes 70 KB exceeds the limit 64 KB ...")."""
    value, limit = format_pair(check.kind, check.value, check.limit)
    if not check.passed:
        relation = "exceeds the limit" if check.bound == "max" else "is below the minimum"
        text = f"{check.name} {value} {relation} {limit} ({check.budget})"
    else:
        text = f"{check.name} {value} is {check.value / check.limit:.0%} of the limit {limit}"
    if check.delta_vs_baseline is not None:
        text += f"; {format_delta(check.kind, check.delta_vs_baseline)} vs baseline"
    return text
