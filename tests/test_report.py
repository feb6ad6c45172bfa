"""Reports from hand-written sweep results: Markdown, HTML, plots, comparisons, bad files."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pytest

from gcnshrink import report
from gcnshrink.errors import GcnshrinkError
from gcnshrink.results import ResultSet, load_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DENSE = {
    "method": "dense",
    "rate": 0,
    "realized_rate": 0.0,
    "accuracy": 0.85,
    "mean_class_accuracy": 0.83,
    "params": 100_000,
    "nonzero": 100_000,
    "flops": 400_000_000,
    "bytes_dense": 400_000,
    "bytes_sparse": 400_000,
    "bytes_onnx": 410_000,
    "latency_ms": 2.0,
    "finetune_seconds": None,
    "seed": 0,
    "provenance": {"gcnshrink": "0.1.0"},
}

# (method, rate, accuracy, nonzero, sparse bytes)
SWEEP = [
    ("magnitude", 0.5, 0.848, 50_000, 210_000),
    ("magnitude", 0.7, 0.840, 30_000, 130_000),
    ("magnitude", 0.9, 0.800, 10_000, 50_000),
    ("taylor", 0.5, 0.849, 50_000, 200_000),
    ("taylor", 0.7, 0.835, 30_000, 120_000),
    ("taylor", 0.9, 0.780, 10_000, 45_000),
]


def make_results(accuracy_shift: float = 0.0) -> dict:
    records = []
    for method, rate, accuracy, nonzero, size in SWEEP:
        records.append(
            {
                "method": method,
                "rate": rate,
                "realized_rate": rate,
                "accuracy": round(accuracy + accuracy_shift, 6),
                "mean_class_accuracy": None,
                "params": 100_000,
                "nonzero": nonzero,
                "flops": 400_000_000,
                "bytes_dense": 400_000,
                "bytes_sparse": size,
                "bytes_onnx": 410_000,
                "latency_ms": 1.9,
                "finetune_seconds": 42.0,
                "seed": 0,
                "provenance": {},
            }
        )
    return {
        "format": "gcnshrink.sweep/1",
        "model": "stgcn.safetensors",
        "data": "ntu-xsub-val.npz",
        "dense": DENSE,
        "records": records,
    }


def write_run(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


@pytest.fixture
def one_run(tmp_path) -> list[ResultSet]:
    return load_results([write_run(tmp_path / "run-a", make_results())])


@pytest.fixture
def two_runs(tmp_path) -> list[ResultSet]:
    a = write_run(tmp_path / "run-a", make_results())
    b = write_run(tmp_path / "run-b", make_results(accuracy_shift=0.01))
    return load_results([a, b])


# ---------------------------------------------------------------------------------- loading


def test_load_results_validates_and_labels(tmp_path, one_run):
    (rs,) = one_run
    assert rs.label == "run-a"
    assert rs.dense.accuracy == 0.85 and len(rs.records) == 6
    assert rs.records[0].finetune_seconds == 42.0
    # a folder stands for the results.json inside it
    (again,) = load_results([tmp_path / "run-a"])
    assert again.records == rs.records


def corrupt(change) -> dict:
    results = make_results()
    change(results)
    return results


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (corrupt(lambda r: r.update(format="other/1")), "not a gcnshrink sweep results file"),
        (corrupt(lambda r: r.update(format="gcnshrink.sweep/2")), "not supported"),
        (corrupt(lambda r: r.pop("dense")), "missing the 'dense'"),
        (corrupt(lambda r: r.update(records={})), "'records' must be a list"),
        (corrupt(lambda r: r["records"][1].update(accuracy=84.0)), r"records\[1\].accuracy"),
        (corrupt(lambda r: r["records"][2].update(params="many")), r"records\[2\].params"),
        (corrupt(lambda r: r["records"][0].update(nonzero=-5)), "must not be negative"),
        (corrupt(lambda r: r["records"][0].update(nonzero=1.5)), "whole number"),
        (corrupt(lambda r: r["records"][0].pop("rate")), r"records\[0\].rate is required"),
        (corrupt(lambda r: r["records"][0].pop("method")), "method must be a non-empty string"),
        (corrupt(lambda r: r.update(model=None)), "'model' must be a string"),
        ([1, 2, 3], "expected a JSON object"),
    ],
)
def test_bad_results_are_refused(tmp_path, results, message):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    with pytest.raises(GcnshrinkError, match=message) as info:
        load_results([path])
    assert "\n" not in str(info.value)


def test_unreadable_results_are_refused(tmp_path):
    with pytest.raises(GcnshrinkError, match="not found"):
        load_results([tmp_path / "missing.json"])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(GcnshrinkError, match="invalid JSON"):
        load_results([broken])
    with pytest.raises(GcnshrinkError, match="no results files"):
        load_results([])


# --------------------------------------------------------------------------------- markdown


def test_markdown_rows_and_numbers(one_run):
    text = report.render_markdown(one_run)
    # the per-method × rate table, dense first
    assert (
        "| Method | Rate | Realized | Accuracy | Δ vs dense | Mean class acc. | Params | Nonzero "
        "| FLOPs | Sparse size | ONNX size | Latency | Fine-tune |" in text
    )
    assert (
        "| dense | — | — | 85.00 % | — | 83.00 % | 100k | 100k | 400M | 400 KB | 410 KB |" in text
    )
    assert (
        "| magnitude | 50 % | 50.0 % | 84.80 % | -0.20 pp | — | 100k | 50k | 400M | 210 KB "
        "| 410 KB | 1.9 ms | 42 s |" in text
    )
    assert "| taylor | 90 % | 90.0 % | 78.00 % | -7.00 pp |" in text
    assert text.count("| magnitude |") >= 3 and text.count("| taylor |") >= 3
    assert "`stgcn.safetensors`" in text and "`ntu-xsub-val.npz`" in text


def table_after(text: str, heading_cell: str) -> list[str]:
    """The rows of the Markdown table whose header starts with ``heading_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_best_per_size_is_the_pareto_front(one_run):
    text = report.render_markdown(one_run)
    front = table_after(text, "Size")
    assert front == [
        "| 45 KB | 78.00 % | -7.00 pp | taylor | 90 % |",
        "| 50 KB | 80.00 % | -5.00 pp | magnitude | 90 % |",
        "| 120 KB | 83.50 % | -1.50 pp | taylor | 70 % |",
        "| 130 KB | 84.00 % | -1.00 pp | magnitude | 70 % |",
        "| 200 KB | 84.90 % | -0.10 pp | taylor | 50 % |",
        # magnitude 50 % (210 KB, 84.80 %) is dominated by taylor 50 %
        "| 400 KB | 85.00 % | — | dense | — |",
    ]
    within = table_after(text, "Max drop")
    assert within == [
        "| 0.5 pp | 200 KB | 84.90 % | -0.10 pp | taylor | 50 % |",
        "| 1 pp | 130 KB | 84.00 % | -1.00 pp | magnitude | 70 % |",
        "| 2 pp | 120 KB | 83.50 % | -1.50 pp | taylor | 70 % |",
        "| 5 pp | 50 KB | 80.00 % | -5.00 pp | magnitude | 90 % |",
    ]


def test_two_runs_are_compared(two_runs):
    text = report.render_markdown(two_runs)
    assert "## Comparison of runs" in text
    assert "| Method | Rate | Accuracy (run-a) | Accuracy (run-b) | Δ run-b − run-a |" in text
    assert "| magnitude | 50 % | 84.80 % | 85.80 % | +1.00 pp |" in text
    assert "| dense | — | 85.00 % | 85.00 % | ±0.00 pp |" in text
    assert "## Run run-a" in text and "## Run run-b" in text
    # the summary spans both runs and says which run each model comes from
    assert "| Size | Accuracy | Δ vs dense | Method | Rate | Run |" in text


def test_same_folder_names_get_unique_labels(tmp_path):
    a = write_run(tmp_path / "x" / "sweep", make_results())
    b = write_run(tmp_path / "y" / "sweep", make_results())
    assert [rs.label for rs in load_results([a, b])] == ["sweep", "sweep#2"]


# ------------------------------------------------------------------------------------ plots


def test_plots_are_valid_png_and_svg(tmp_path, one_run):
    paths = report.render_plots(one_run, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == [
        "accuracy_vs_bytes.png",
        "accuracy_vs_bytes.svg",
        "accuracy_vs_params.png",
        "accuracy_vs_params.svg",
    ]
    for path in paths:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data.startswith(PNG_SIGNATURE)
        else:
            assert ET.fromstring(data).tag.endswith("svg")
            assert b"<dc:date>" not in data  # no timestamp: reproducible
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left behind


def test_plots_are_reproducible_and_leave_global_state_alone(tmp_path, two_runs):
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    salt = matplotlib.rcParams["svg.hashsalt"]
    first = report.render_plots(two_runs, tmp_path / "one")
    second = report.render_plots(two_runs, tmp_path / "two")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert matplotlib.rcParams["svg.hashsalt"] == salt
    # no pyplot (and so no backend selection or GUI) unless the caller loaded it already;
    # matplotlib.get_backend() would import pyplot itself, so it is not called here
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded


def test_plots_have_one_line_per_method_and_run(two_runs):
    # Text in the SVG is drawn as paths (reproducible across fonts), so inspect the figure.
    fig = report._accuracy_figure(two_runs, "nonzero", "x label", "title")
    (ax,) = fig.axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == [
        "magnitude (run-a)",
        "taylor (run-a)",
        "dense (run-a)",
        "magnitude (run-b)",
        "taylor (run-b)",
        "dense (run-b)",
    ]
    assert ax.get_xscale() == "log"
    magnitude_a = ax.get_lines()[0]
    assert list(magnitude_a.get_xdata()) == [10_000, 30_000, 50_000]
    assert list(magnitude_a.get_ydata()) == pytest.approx([80.0, 84.0, 84.8])


# ------------------------------------------------------------------------------------- HTML


def test_html_is_self_contained_and_embeds_plots(tmp_path, one_run):
    plots = report.render_plots(one_run, tmp_path)
    page = report.render_html(one_run, plots)
    assert page.startswith("<!DOCTYPE html>")
    assert "http" not in page  # no external references of any kind
    assert "<link" not in page and "<script" not in page
    assert page.count('src="data:image/svg+xml;base64,') == 2
    assert "<td>magnitude</td>" in page and "84.80 %" in page
    assert "<code>stgcn.safetensors</code>" in page


def test_html_escapes_user_text(tmp_path):
    results = make_results()
    results["model"] = "<script>alert(1)</script>.pt"
    (rs,) = load_results([write_run(tmp_path, results)])
    page = report.render_html([rs])
    assert "<script>" not in page and "&lt;script&gt;" in page


# ---------------------------------------------------------------------------------- writing


def test_write_reports(tmp_path, two_runs):
    out = tmp_path / "reports"
    written = report.write_reports(two_runs, out)
    assert set(written) == {
        "report.md",
        "report.html",
        "accuracy_vs_params.png",
        "accuracy_vs_params.svg",
        "accuracy_vs_bytes.png",
        "accuracy_vs_bytes.svg",
    }
    assert all(path.is_file() and path.parent == out for path in written.values())
    markdown = written["report.md"].read_text(encoding="utf-8")
    assert "![Accuracy vs kept nonzero parameters](accuracy_vs_params.png)" in markdown
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # nothing else left behind
    # atomic writes must not leave reports with a temporary file's private mode
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    assert written["report.html"].stat().st_mode == plain.stat().st_mode

    with pytest.raises(GcnshrinkError, match="already exists"):
        report.write_reports(two_runs, out, force=False)
    report.write_reports(two_runs, out, force=True)


def test_write_reports_refuses_a_file_as_folder(tmp_path, one_run):
    target = tmp_path / "taken"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(GcnshrinkError, match="not a folder"):
        report.write_reports(one_run, target)


def test_missing_measurements_render_as_dashes(tmp_path):
    results = make_results()
    for record in results["records"]:
        record["bytes_sparse"] = None
        record["latency_ms"] = None
    results["dense"] = {"accuracy": 0.85}  # method and rate default for the dense record
    (rs,) = load_results([write_run(tmp_path, results)])
    text = report.render_markdown([rs])
    # without sparse sizes the summary falls back to nonzero counts
    assert "| Nonzero | Accuracy | Δ vs dense | Method | Rate |" in text
    paths = report.render_plots([rs], tmp_path / "plots")
    assert all(p.stat().st_size > 0 for p in paths)
