"""Reports from sweep results: Markdown to paste into a PR, a self-contained HTML page, and
accuracy-vs-size plots.

Rendering only: results.json is read and validated by :mod:`gcnshrink.results` (schema in
docs/gate-and-reports.md); this module renders one or several result sets. Markdown and HTML are
built from the same sections, so both always show the same numbers.

matplotlib is imported inside the plotting functions, through ``matplotlib.figure.Figure`` and the
Agg canvas, never pyplot: rendering does not change the user's backend or open windows, and
``import gcnshrink.report`` stays cheap for the gate.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write
from gcnshrink.quantities import format_bytes, format_count
from gcnshrink.results import Record, ResultSet

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# (file stem, record field on the x axis, axis label, title)
PLOTS = (
    (
        "accuracy_vs_params",
        "nonzero",
        "Kept nonzero parameters (log scale)",
        "Accuracy vs kept nonzero parameters",
    ),
    (
        "accuracy_vs_bytes",
        "bytes_sparse",
        "Sparse file size (log scale)",
        "Accuracy vs sparse file size",
    ),
)
PLOT_FORMATS = ("png", "svg")

# "Smallest model within N points of dense" rows of the summary, as accuracy fractions.
DROP_THRESHOLDS = (0.005, 0.01, 0.02, 0.05)

# ------------------------------------------------------------------------- report sections


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]
    right_aligned: set[int] = field(default_factory=set)  # column indexes holding numbers


@dataclass
class _Section:
    """A heading with optional facts ("Model: x"), a note, and tables: rendered to MD and HTML.

    A fact is (label, text, is_code); code facts (paths) are shown verbatim in a code span.
    """

    title: str
    level: int
    facts: list[tuple[str, str, bool]] = field(default_factory=list)
    note: str = ""
    tables: list[_Table] = field(default_factory=list)


def _pct(fraction: float | None, digits: int = 2) -> str:
    return "—" if fraction is None else f"{fraction * 100:.{digits}f} %"


def _rate(rate: float) -> str:
    return f"{rate * 100:.4g} %"


def _points(delta: float | None) -> str:
    if delta is None:
        return "—"
    points = round(delta * 100, 2)
    return "±0.00 pp" if points == 0 else f"{points:+.2f} pp"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g} ms"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g} s" if value < 120 else f"{value / 60:.3g} min"


def _drop(record: Record, dense: Record) -> float | None:
    """Accuracy minus dense accuracy (negative = worse), as a fraction."""
    if record.accuracy is None or dense.accuracy is None:
        return None
    return record.accuracy - dense.accuracy


def _sorted_records(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.method, r.rate, r.seed if r.seed is not None else -1))


def _size_field(result_sets: Sequence[ResultSet]) -> str:
    """What "size" means in the summaries: sparse bytes when measured, else kept nonzeros."""
    every = [r for rs in result_sets for r in (rs.dense, *rs.records)]
    return "bytes_sparse" if any(r.bytes_sparse is not None for r in every) else "nonzero"


def _format_size(size_field: str, value: float | None) -> str:
    return format_bytes(value) if size_field == "bytes_sparse" else format_count(value)


def _results_table(rs: ResultSet) -> _Table:
    everything = [rs.dense, *rs.records]
    with_mca = any(r.mean_class_accuracy is not None for r in everything)
    with_finetune = any(r.finetune_seconds is not None for r in everything)
    keys = [(r.method, r.rate) for r in rs.records]
    with_seed = len(keys) != len(set(keys))  # several seeds per method and rate

    headers = ["Method", "Rate", "Realized", "Accuracy", "Δ vs dense"]
    if with_mca:
        headers.append("Mean class acc.")
    headers += ["Params", "Nonzero", "FLOPs", "Sparse size", "ONNX size", "Latency"]
    if with_finetune:
        headers.append("Fine-tune")
    if with_seed:
        headers.append("Seed")

    rows = []
    for record in (rs.dense, *_sorted_records(rs.records)):
        is_dense = record is rs.dense
        row = [
            record.method,
            "—" if is_dense else _rate(record.rate),
            "—" if is_dense else _pct(record.realized_rate, 1),
            _pct(record.accuracy),
            "—" if is_dense else _points(_drop(record, rs.dense)),
        ]
        if with_mca:
            row.append(_pct(record.mean_class_accuracy))
        row += [
            format_count(record.params),
            format_count(record.nonzero),
            format_count(record.flops),
            format_bytes(record.bytes_sparse),
            format_bytes(record.bytes_onnx),
            _ms(record.latency_ms),
        ]
        if with_finetune:
            row.append(_seconds(record.finetune_seconds))
        if with_seed:
            row.append("—" if record.seed is None else str(record.seed))
        rows.append(row)
    return _Table(headers, rows, right_aligned=set(range(1, len(headers))))


def _candidates(result_sets: Sequence[ResultSet], size_field: str):
    """(run, record) pairs with both an accuracy and a size, dense included."""
    for rs in result_sets:
        for record in (rs.dense, *rs.records):
            if record.accuracy is not None and getattr(record, size_field) is not None:
                yield rs, record


def _best_per_size_table(result_sets: Sequence[ResultSet]) -> _Table:
    """The Pareto front: every model that is more accurate than all smaller ones."""
    size_field = _size_field(result_sets)
    show_run = len(result_sets) > 1
    ordered = sorted(
        _candidates(result_sets, size_field),
        key=lambda c: (getattr(c[1], size_field), -c[1].accuracy),
    )
    headers = ["Size" if size_field == "bytes_sparse" else "Nonzero", "Accuracy", "Δ vs dense"]
    headers += ["Method", "Rate"] + (["Run"] if show_run else [])
    rows, best = [], -1.0
    for rs, record in ordered:
        if record.accuracy <= best:
            continue
        best = record.accuracy
        row = [
            _format_size(size_field, getattr(record, size_field)),
            _pct(record.accuracy),
            "—" if record is rs.dense else _points(_drop(record, rs.dense)),
            record.method,
            "—" if record is rs.dense else _rate(record.rate),
        ]
        rows.append(row + ([rs.label] if show_run else []))
    return _Table(headers, rows, right_aligned={0, 1, 2, 4})


def _within_drop_table(result_sets: Sequence[ResultSet]) -> _Table:
    """For each tolerated drop, the smallest model that stays within it (vs its own run's dense)."""
    size_field = _size_field(result_sets)
    show_run = len(result_sets) > 1
    headers = ["Max drop", "Size" if size_field == "bytes_sparse" else "Nonzero", "Accuracy"]
    headers += ["Δ vs dense", "Method", "Rate"] + (["Run"] if show_run else [])
    rows = []
    candidates = list(_candidates(result_sets, size_field))
    for threshold in DROP_THRESHOLDS:
        within = [
            (rs, r)
            for rs, r in candidates
            if rs.dense.accuracy is not None and rs.dense.accuracy - r.accuracy <= threshold + 1e-12
        ]
        if not within:
            continue
        rs, record = min(within, key=lambda c: (getattr(c[1], size_field), -c[1].accuracy))
        row = [
            f"{threshold * 100:g} pp",
            _format_size(size_field, getattr(record, size_field)),
            _pct(record.accuracy),
            "—" if record is rs.dense else _points(_drop(record, rs.dense)),
            record.method,
            "—" if record is rs.dense else _rate(record.rate),
        ]
        rows.append(row + ([rs.label] if show_run else []))
    return _Table(headers, rows, right_aligned={0, 1, 2, 3, 5})


def _mean_accuracy(records: Iterable[Record]) -> float | None:
    values = [r.accuracy for r in records if r.accuracy is not None]
    return sum(values) / len(values) if values else None


def _comparison_table(result_sets: Sequence[ResultSet]) -> _Table:
    """Accuracy of each method × rate side by side across runs (mean over seeds)."""
    keys = sorted({(r.method, round(r.rate, 9)) for rs in result_sets for r in rs.records})
    headers = ["Method", "Rate"] + [f"Accuracy ({rs.label})" for rs in result_sets]
    headers.append(f"Δ {result_sets[-1].label} − {result_sets[0].label}")
    rows = []

    def add_row(method: str, rate_text: str, accuracies: list[float | None]) -> None:
        first, last = accuracies[0], accuracies[-1]
        delta = None if first is None or last is None else last - first
        rows.append([method, rate_text, *(_pct(a) for a in accuracies), _points(delta)])

    add_row("dense", "—", [rs.dense.accuracy for rs in result_sets])
    for method, rate in keys:
        accuracies = [
            _mean_accuracy(r for r in rs.records if r.method == method and round(r.rate, 9) == rate)
            for rs in result_sets
        ]
        add_row(method, _rate(rate), accuracies)
    return _Table(headers, rows, right_aligned=set(range(1, len(headers))))


def _run_facts(rs: ResultSet) -> list[tuple[str, str, bool]]:
    dense = rs.dense
    summary = [
        f"accuracy {_pct(dense.accuracy)}",
        f"{format_count(dense.params)} params",
        f"{format_count(dense.flops)} FLOPs",
    ]
    if dense.bytes_dense is not None:
        summary.append(f"{format_bytes(dense.bytes_dense)} on disk")
    return [
        ("Model", rs.model, True),
        ("Data", rs.data, True),
        ("Dense reference", ", ".join(summary), False),
        ("Results", str(rs.path), True),
    ]


_NOTE = (
    "Accuracy is test accuracy; Δ is the difference to the dense model in percentage points. "
    "Params are kept parameters after compaction, Nonzero the nonzero weights. Sizes use "
    "1 KB = 1000 B. Latency is the median ONNX Runtime time per sample (batch of 1), as recorded "
    "by the sweep."
)


def _sections(result_sets: Sequence[ResultSet]) -> list[_Section]:
    if not result_sets:
        raise GcnshrinkError("no results to report")
    compare = len(result_sets) > 1
    sections = [_Section("gcnshrink sweep report", 1, note=_NOTE)]
    if compare:
        sections.append(
            _Section(
                "Comparison of runs",
                2,
                note="Mean accuracy over seeds for each method and rate.",
                tables=[_comparison_table(result_sets)],
            )
        )
    summary_note = (
        "Best per size: each row is more accurate than every smaller model. Smallest within a "
        "drop: the smallest model whose accuracy is at most that many points below its dense "
        "reference."
    )
    sections.append(
        _Section(
            "Best per size" + (" (all runs)" if compare else ""),
            2,
            note=summary_note,
            tables=[_best_per_size_table(result_sets), _within_drop_table(result_sets)],
        )
    )
    for rs in result_sets:
        title = f"Run {rs.label}" if compare else "All results"
        sections.append(_Section(title, 2, facts=_run_facts(rs), tables=[_results_table(rs)]))
    return sections


# ---------------------------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    # A code span survives any characters except its own delimiter; widen it if needed.
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def _md_table(table: _Table) -> list[str]:
    align = ["---:" if i in table.right_aligned else "---" for i in range(len(table.headers))]
    lines = ["| " + " | ".join(_md_escape(h) for h in table.headers) + " |"]
    lines.append("| " + " | ".join(align) + " |")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    return lines


def render_markdown(result_sets: Sequence[ResultSet], plots: Sequence[Path] = ()) -> str:
    """Markdown for a PR or README: per-run tables, best-per-size summaries, run comparison.

    ``plots`` (paths written by :func:`render_plots`) are linked by file name, so report.md shows
    them when it sits next to them; leave it empty for text to paste elsewhere.
    """
    lines: list[str] = []
    for section in _sections(result_sets):
        lines += ["#" * section.level + " " + section.title, ""]
        for label, value, is_code in section.facts:
            shown = _md_code(value) if is_code else _md_escape(value)
            lines.append(f"- **{label}:** {shown}")
        if section.facts:
            lines.append("")
        if section.note:
            lines += [section.note, ""]
        for table in section.tables:
            lines += _md_table(table) + [""]
    pngs = [p for p in plots if Path(p).suffix == ".png"]
    if pngs:
        lines += ["## Plots", ""]
        for path in pngs:
            lines += [f"![{_plot_title(Path(path).stem)}]({Path(path).name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------- plots


def _plot_title(stem: str) -> str:
    return next((title for s, _, _, title in PLOTS if s == stem), stem)


def _points_by_method(rs: ResultSet, x_field: str) -> dict[str, list[tuple[float, float]]]:
    """Per method, (x, accuracy %) points sorted by x, averaging seeds of the same rate."""
    groups: dict[tuple[str, float], list[Record]] = {}
    for record in rs.records:
        x = getattr(record, x_field)
        if record.accuracy is None or x is None or x <= 0:  # log axis: x must be positive
            continue
        groups.setdefault((record.method, round(record.rate, 9)), []).append(record)
    lines: dict[str, list[tuple[float, float]]] = {}
    for (method, _), records in sorted(groups.items()):
        x = sum(getattr(r, x_field) for r in records) / len(records)
        y = 100 * sum(r.accuracy for r in records) / len(records)
        lines.setdefault(method, []).append((x, y))
    return {method: sorted(points) for method, points in lines.items()}


def _accuracy_figure(result_sets: Sequence[ResultSet], x_field: str, x_label: str, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no pyplot, no global backend
    # Fixed margins rather than constrained layout: the labels are short and known, and the
    # layout engine more than doubled the time to save each file.
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    compare = len(result_sets) > 1
    methods = sorted({r.method for rs in result_sets for r in rs.records})
    palette = [f"C{i % 10}" for i in range(len(methods))]
    color_of = dict(zip(methods, palette, strict=True))
    line_styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D"]
    plotted = False
    for index, rs in enumerate(result_sets):
        style = line_styles[index % len(line_styles)]
        marker = markers[index % len(markers)]
        for method, points in _points_by_method(rs, x_field).items():
            xs, ys = zip(*points, strict=True)
            label = f"{method} ({rs.label})" if compare else method
            ax.plot(xs, ys, linestyle=style, marker=marker, color=color_of[method], label=label)
            plotted = True
        if rs.dense.accuracy is not None:
            label = f"dense ({rs.label})" if compare else "dense"
            ax.axhline(
                100 * rs.dense.accuracy, color="0.35", linestyle=style, linewidth=1, label=label
            )
            dense_x = getattr(rs.dense, x_field)
            if dense_x:
                ax.plot(
                    [dense_x], [100 * rs.dense.accuracy], marker="*", markersize=10, color="0.35"
                )
            plotted = True
    if any(
        getattr(r, x_field) for rs in result_sets for r in (rs.dense, *rs.records)
    ):  # a log axis needs at least one positive x
        ax.set_xscale("log")
        _human_log_ticks(ax, format_bytes if x_field.startswith("bytes") else format_count)
    else:
        ax.text(
            0.5,
            0.5,
            f"no {x_field} measured",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if plotted:
        ax.legend(fontsize="small", loc="lower right")
    return fig


def _human_log_ticks(ax, fmt) -> None:
    """Label a log x axis "10k", "1 MB" instead of 10^4. Minor ticks at 2× and 5× get labels
    only when the axis spans little more than a decade, where majors alone would be too few."""
    from matplotlib.ticker import FuncFormatter

    def major(x: float, _pos: int) -> str:
        return fmt(x)

    def minor(x: float, _pos: int) -> str:
        low, high = ax.get_xlim()
        if x <= 0 or low <= 0 or high / low > 30:
            return ""
        # Within one decade there is room for more labels than across two or three.
        labelled = (2, 3, 4, 5, 7) if high / low <= 10 else (2, 5)
        mantissa = x / 10 ** math.floor(math.log10(x) + 1e-9)
        return fmt(x) if round(mantissa) in labelled else ""

    ax.xaxis.set_major_formatter(FuncFormatter(major))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def render_plots(
    result_sets: Sequence[ResultSet], out_dir: str | os.PathLike, force: bool = True
) -> list[Path]:
    """Write accuracy_vs_params and accuracy_vs_bytes as PNG and SVG into ``out_dir``, each
    atomically; with ``force=False`` an existing plot is an error.

    One line per method (and per run when comparing), the dense accuracy as a horizontal line.
    Output is byte-for-byte reproducible: fixed SVG hash salt, no dates, fixed software tags.
    """
    import matplotlib

    if not result_sets:
        raise GcnshrinkError("no results to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "svg": {"Date": None, "Creator": "gcnshrink"},
        "png": {"Software": "gcnshrink"},
    }
    written = []
    # rc_context restores the user's rcParams afterwards; the salt makes SVG element ids stable.
    with matplotlib.rc_context({"svg.hashsalt": "gcnshrink", "svg.fonttype": "path"}):
        for stem, x_field, x_label, title in PLOTS:
            fig = _accuracy_figure(result_sets, x_field, x_label, title)
            for fmt in PLOT_FORMATS:
                path = out / f"{stem}.{fmt}"
                atomic_write(
                    path,
                    lambda f, fig=fig, fmt=fmt: fig.savefig(
                        f, format=fmt, dpi=100, metadata=metadata[fmt]
                    ),
                    force=force,
                )
                written.append(path)
    return written


# -------------------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f3f5f7; padding: 0.1em 0.3em; border-radius: 3px; }
.note { color: #57606a; max-width: 80ch; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""

_MIME = {".svg": "image/svg+xml", ".png": "image/png"}


def _html_table(table: _Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>'
            if i in table.right_aligned
            else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _embedded_plots(plots: Sequence[str | os.PathLike]) -> list[str]:
    """<figure> elements with each plot inlined as a data: URI (SVG preferred over PNG)."""
    by_stem: dict[str, Path] = {}
    for p in plots:
        path = Path(p)
        if path.suffix not in _MIME:
            continue
        if path.stem not in by_stem or path.suffix == ".svg":
            by_stem[path.stem] = path
    figures = []
    for stem, path in by_stem.items():
        try:
            payload = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as e:
            raise GcnshrinkError(f"cannot read plot {path}: {e.strerror or e}") from None
        title = html.escape(_plot_title(stem))
        figures.append(
            f'<figure><img alt="{title}" src="data:{_MIME[path.suffix]};base64,{payload}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    return figures


def render_html(result_sets: Sequence[ResultSet], plots: Sequence[str | os.PathLike] = ()) -> str:
    """One self-contained HTML page (inline CSS, plots as data: URIs, no external URLs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>gcnshrink sweep report</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    sections = _sections(result_sets)
    for index, section in enumerate(sections):
        level = section.level
        parts.append(f"<h{level}>{html.escape(section.title)}</h{level}>")
        if section.facts:
            items = "".join(
                f"<li><strong>{html.escape(label)}:</strong> "
                + (f"<code>{html.escape(value)}</code>" if is_code else html.escape(value))
                + "</li>"
                for label, value, is_code in section.facts
            )
            parts.append(f"<ul>{items}</ul>")
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        parts += [_html_table(t) for t in section.tables]
        if index == 0:  # plots right under the title: they are what people look at first
            parts += _embedded_plots(plots)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ writing


def write_reports(
    result_sets: Sequence[ResultSet], out_dir: str | os.PathLike, force: bool = True
) -> dict[str, Path]:
    """Write report.md, report.html and the plots into ``out_dir``; returns {file name: path}.

    Every file is written atomically. With ``force=False``, an existing report file is an error,
    raised before anything is written, instead of being replaced.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GcnshrinkError(f"report output {out} exists and is not a folder")
    names = [REPORT_MD, REPORT_HTML] + [f"{s}.{fmt}" for s, *_ in PLOTS for fmt in PLOT_FORMATS]
    if not force:
        existing = [n for n in names if (out / n).exists()]
        if existing:
            raise GcnshrinkError(f"{out / existing[0]} already exists (use --force to replace it)")
    try:
        plots = render_plots(result_sets, out, force=force)
        atomic_write(out / REPORT_MD, render_markdown(result_sets, plots), force=force)
        atomic_write(out / REPORT_HTML, render_html(result_sets, plots), force=force)
    except OSError as e:
        raise GcnshrinkError(f"cannot write reports to {out}: {e.strerror or e}") from None
    written = {REPORT_MD: out / REPORT_MD, REPORT_HTML: out / REPORT_HTML}
    written.update({p.name: p for p in plots})
    return written
