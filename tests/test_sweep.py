"""Sweeps: results.json contract, resume skips finished cells, reports and plots written."""

import json

import pytest

from gcnshrink.errors import GcnshrinkError
from gcnshrink.sweep import run_sweep

TINY = "synthetic:hands?train=120&test=60"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, trained_gcn):
    trained_checkpoint = trained_gcn[0]
    out = tmp_path_factory.mktemp("sweep")
    paths = run_sweep(
        trained_checkpoint,
        TINY,
        out,
        methods=["mp", "tcp"],
        rates=[0.9],
        epochs=1,
        seeds=[0],
        progress=False,
    )
    return out, paths


def test_results_json_has_a_record_per_cell(swept):
    out, paths = swept
    results = json.loads(paths["results"].read_text())
    assert results["format"] == "gcnshrink.sweep/1"
    assert [r["method"] for r in results["records"]] == ["mp", "tcp"]
    for record in results["records"]:
        for key in (
            "rate",
            "realized_rate",
            "accuracy",
            "mean_class_accuracy",
            "params",
            "nonzero",
            "flops",
            "bytes_dense",
            "bytes_sparse",
            "bytes_onnx",
            "latency_ms",
            "finetune_seconds",
            "seed",
            "provenance",
        ):
            assert key in record, key
        assert record["realized_rate"] == pytest.approx(0.9, abs=1e-3)
        assert record["compaction_relative_diff"] <= 1e-5
    # compaction makes the pruned models smaller than the dense one
    assert all(r["params"] < results["dense"]["params"] for r in results["records"])
    for name in (
        "report.md",
        "report.html",
        "accuracy_vs_params.png",
        "accuracy_vs_params.svg",
        "accuracy_vs_bytes.png",
        "accuracy_vs_bytes.svg",
    ):
        assert (out / name).stat().st_size > 0, name


def test_rerun_skips_finished_cells(swept, trained_gcn):
    trained_checkpoint = trained_gcn[0]
    out, paths = swept
    cell = out / "cells" / "mp-r0.9-s0.json"
    before = cell.read_text()
    stamp = cell.stat().st_mtime_ns
    run_sweep(
        trained_checkpoint,
        TINY,
        out,
        methods=["mp", "tcp"],
        rates=[0.9],
        epochs=1,
        seeds=[0],
        progress=False,
    )
    assert cell.stat().st_mtime_ns == stamp and cell.read_text() == before


def test_interrupted_sweep_resumes_missing_cells(swept, trained_gcn):
    trained_checkpoint = trained_gcn[0]
    out, _ = swept
    (out / "cells" / "tcp-r0.9-s0.json").unlink()
    paths = run_sweep(
        trained_checkpoint,
        TINY,
        out,
        methods=["mp", "tcp"],
        rates=[0.9],
        epochs=1,
        seeds=[0],
        progress=False,
    )
    assert (out / "cells" / "tcp-r0.9-s0.json").exists()
    assert len(json.loads(paths["results"].read_text())["records"]) == 2


def test_bad_grid_is_refused_before_work(tmp_path, trained_gcn):
    trained_checkpoint = trained_gcn[0]
    with pytest.raises(GcnshrinkError, match="unknown method"):
        run_sweep(trained_checkpoint, TINY, tmp_path, methods=["nope"], rates=[0.9], progress=False)
    with pytest.raises(GcnshrinkError, match="--rate"):
        run_sweep(trained_checkpoint, TINY, tmp_path, methods=["mp"], rates=[1.2], progress=False)
    assert not (tmp_path / "results.json").exists()
