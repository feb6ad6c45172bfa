"""``gcnshrink sweep``: every method at every rate (and seed), measured the same way, resumable.

Each finished cell is written to ``DIR/cells/<method>-r<rate>-s<seed>.json`` (with its pruned
checkpoint beside it) the moment it finishes; rerunning the same command skips those cells, so an
interrupted sweep resumes where it stopped. ``DIR/results.json`` (format ``gcnshrink.sweep/1``,
docs/gate-and-reports.md) is rebuilt from the cells, then the reports are rendered.

Every cell is measured on its *compacted* model: params, nonzeros and FLOPs after structural
removal, sparse-safetensors bytes, ONNX bytes and onnxruntime latency (one sample, median), test
accuracy. Selection inside each fine-tune uses the validation split only.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gcnshrink.checkpoint import (
    file_sha256,
    load_checkpoint,
    provenance,
    save_checkpoint,
)
from gcnshrink.compact import compact_model
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_EPOCHS
from gcnshrink.errors import GcnshrinkError
from gcnshrink.export import exportable_state
from gcnshrink.files import atomic_write
from gcnshrink.measure import count_flops
from gcnshrink.onnx_export import export_onnx, onnx_latency_ms
from gcnshrink.pruning import METHODS, PruneSpec
from gcnshrink.report import load_results, write_reports
from gcnshrink.sparse_format import size_report
from gcnshrink.train import evaluate

FORMAT = "gcnshrink.sweep/1"


def cell_name(method: str, rate: float, seed: int) -> str:
    return f"{method}-r{rate:g}-s{seed}"


def measure_deployable(model, data, calibration: torch.Tensor, workdir: Path) -> dict:
    """Compact the model and measure what a user would ship: sizes, FLOPs, latency, accuracy."""
    result = compact_model(model.cpu().eval(), calibration)
    small = result.model.eval()
    sizes = size_report(exportable_state(small.state_dict()))
    onnx_path = workdir / "model.onnx"
    export_onnx(small, calibration[:2], onnx_path, force=True)
    example = calibration[:1]
    metrics = evaluate(small, data.x_test, data.y_test, data.num_classes)
    return {
        "accuracy": metrics["accuracy"],
        "mean_class_accuracy": metrics["mean_class_accuracy"],
        "params": sum(p.numel() for p in small.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in small.parameters()),
        "flops": count_flops(small, example.shape[2]),
        "bytes_dense": sizes["bytes_dense"],
        "bytes_sparse": sizes["bytes_sparse"],
        "bytes_onnx": onnx_path.stat().st_size,
        "latency_ms": onnx_latency_ms(onnx_path, example),
        "compaction_relative_diff": result.relative_diff,
    }


def run_sweep(
    model_path: str | Path,
    data_spec: str,
    out_dir: str | Path,
    *,
    methods: list[str],
    rates: list[float],
    epochs: int = FINETUNE_EPOCHS,
    seeds: list[int] = (0,),
    progress: bool = True,
    method_options: dict[str, dict] | None = None,
) -> dict[str, Path]:
    """Run the grid, write results.json and the reports; returns the written paths."""
    for m in methods:
        if m not in METHODS:
            raise GcnshrinkError(f"unknown method {m!r}; available: {', '.join(sorted(METHODS))}")
    for r in rates:
        PruneSpec(r).validate()
    if not methods or not rates or not seeds:
        raise GcnshrinkError("--methods, --rates and --seeds must each name at least one value")
    from gcnshrink import api

    out_dir = Path(out_dir)
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(model_path)
    data = load_data(data_spec, seed=0)
    ckpt.check_compatible(data)
    calibration = data.x_val[:64]
    source_hash = file_sha256(model_path)
    grid = [(m, r, s) for m in methods for r in rates for s in seeds]
    columns = (
        TextColumn("[bold]sweep[/] {task.fields[cell]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with tempfile.TemporaryDirectory() as tmp, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("sweep", total=len(grid) + 1, cell="dense")
        dense_file = cells_dir / "dense.json"
        if not dense_file.exists():
            dense = {
                "method": "dense",
                "rate": 0.0,
                "realized_rate": 0.0,
                **measure_deployable(ckpt.build_model(), data, calibration, Path(tmp)),
            }
            atomic_write(dense_file, json.dumps(dense, indent=2), force=True)
        bar.advance(task)
        for method, rate, seed in grid:
            name = cell_name(method, rate, seed)
            cell_file = cells_dir / f"{name}.json"
            bar.update(task, cell=name)
            if cell_file.exists():
                bar.advance(task)
                continue
            started = time.perf_counter()
            outcome = api.prune(
                ckpt,
                data,
                method=method,
                rate=rate,
                epochs=epochs,
                seed=seed,
                progress=False,
                allow_collapse=True,
                **(method_options or {}).get(method, {}),
            )
            save_checkpoint(outcome.checkpoint, cells_dir / f"{name}.pt", force=True)
            record = {
                "method": method,
                "rate": rate,
                "realized_rate": outcome.summary["realized_rate"],
                "seed": seed,
                "finetune_seconds": outcome.summary["finetune_seconds"],
                "inconsistent_connections": outcome.summary["inconsistent_connections"],
                "dead_units": outcome.summary["dead_units"],
                **measure_deployable(outcome.model, data, calibration, Path(tmp)),
                "provenance": provenance(
                    seed=seed,
                    data=data_spec,
                    source_sha256=source_hash,
                    epochs=epochs,
                    seconds=time.perf_counter() - started,
                ),
            }
            atomic_write(cell_file, json.dumps(record, indent=2), force=True)
            bar.advance(task)
    records = [
        json.loads((cells_dir / f"{cell_name(m, r, s)}.json").read_text()) for m, r, s in grid
    ]
    results = {
        "format": FORMAT,
        "model": str(model_path),
        "data": data_spec,
        "dense": json.loads(dense_file.read_text()),
        "records": records,
    }
    results_path = out_dir / "results.json"
    atomic_write(results_path, json.dumps(results, indent=2, default=str), force=True)
    written = write_reports(load_results([results_path]), out_dir, force=True)
    return {"results": results_path, **written}
