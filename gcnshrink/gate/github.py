"""GitHub Actions output: workflow-command annotations and the Markdown job summary.

Only emitted when ``GITHUB_ACTIONS=true``. Annotations do not fail a job by themselves; the exit
code does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TextIO

from gcnshrink.gate.checks import Check
from gcnshrink.gate.render import check_message, limit_text, status_text
from gcnshrink.quantities import format_delta, format_pair


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
        lines.append(f"::{level} {','.join(props)}::{_escape_data(check_message(check))}")
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
        value, _ = format_pair(check.kind, check.value, check.limit)
        cells = [
            check.name,
            value,
            limit_text(check),
            format_delta(check.kind, check.delta_vs_baseline),
            f"{icons[check.severity]} {status_text(check)}",
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
            # appended in place, not replaced atomically: the runner owns this file and other
            # steps' summaries are already in it
            with open(summary_path, "a", encoding="utf-8") as f:
                f.write(step_summary_markdown(checks, model_path) + "\n")
        except OSError as e:
            print(
                f"gcnshrink: could not write the step summary to {summary_path}: {e}",
                file=sys.stderr,
            )
    return True
