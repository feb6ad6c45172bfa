"""``gcnshrink sweep``: every method at every rate (and seed), measured the same way, resumable.

Each finished cell is written to ``DIR/cells/<method>-r<rate>-s<seed>.json`` (with its pruned
checkpoint beside it) the moment it finishes; rerunning the same command skips those cells, so an
interrupted sweep resumes where it stopped. A multi-rate method is fine-tuned once per seed for all
the rates of the grid (``DIR/cells/<method>-multi-s<seed>.pt``) and every cell is extracted from
that one checkpoint; its cells record the shared fine-tune time. ``DIR/results.json`` (format ``gcnshrink.sweep/1``,
docs/gate-and-reports.md) is rebuilt from the cells, then the reports are rendered.

Every cell is measured on its *compacted* model by :func:`gcnshrink.measure.measure_deployable`
(the numbers ``inspect`` and ``gate`` report, under the same names): params, nonzeros and FLOPs
after structural removal, sparse-safetensors bytes, ONNX bytes and onnxruntime latency (one sample,
median), test accuracy. Selection inside each fine-tune uses the validation split only.

Under ``torchrun`` every process runs the same plan (the missing cells, decided from the files
present when the sweep starts, before anything is written) and takes its share of every fine-tune;
rank 0 alone measures, writes and shows progress.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gcnshrink import distributed
from gcnshrink.arguments import MAX_SEED, check_int, check_unique
from gcnshrink.checkpoint import (
    file_sha256,
    load_checkpoint,
    provenance,
    save_checkpoint,
)
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_EPOCHS
from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write, check_folder_writable
from gcnshrink.measure import measure_deployable
from gcnshrink.prune import extract, prune
from gcnshrink.pruning import method_class
from gcnshrink.pruning.budget import check_rate
from gcnshrink.report import write_reports
from gcnshrink.results import RESULTS_FILE, load_results, results_document, write_results
from gcnshrink.train import pick_device


def cell_name(method: str, rate: float, seed: int) -> str:
    return f"{method}-r{rate:g}-s{seed}"


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
    load_options: dict | None = None,
) -> dict[str, Path]:
    """Run the grid, write results.json and the reports; returns the written paths.
    ``load_options``: how to read a foreign checkpoint (``load_checkpoint``'s keywords)."""
    for m in methods:
        method_class(m)  # an unknown name is refused before any work
    for r in rates:
        check_rate(r, "each rate of --rates")
    if not methods or not rates or not seeds:
        raise GcnshrinkError("--methods, --rates and --seeds must each name at least one value")
    for flag, values in (("--methods", methods), ("--rates", rates), ("--seeds", seeds)):
        check_unique(flag, values)
    check_int("--epochs", epochs, 0)
    for seed in seeds:
        check_int("--seeds", seed, 0, MAX_SEED)

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GcnshrinkError(f"{out_dir} exists and is not a folder")
    check_folder_writable(out_dir)
    cells_dir = out_dir / "cells"
    # everything that can be refused is refused before the output folder is created
    ckpt = load_checkpoint(model_path, **(load_options or {}))
    data = load_data(data_spec, seed=0)
    ckpt.check_compatible(data)
    data.check_trainable()  # fine-tuning selects on validation; its samples calibrate compaction
    main = distributed.is_main()  # under torchrun, rank 0 measures and writes
    grid = [(m, r, s) for m in methods for r in rates for s in seeds]
    # the plan: the cells still to do and the multi-rate fine-tunes already done, as rank 0 finds
    # them before anything is written (every rank follows it: the fine-tunes are collective)
    done = {cell for cell in grid if (cells_dir / f"{cell_name(*cell)}.json").exists()}
    trained = {
        (m, s) for m in methods for s in seeds if (cells_dir / f"{m}-multi-s{s}.pt").exists()
    }
    if distributed.is_distributed():
        with distributed.peer_failures():
            distributed.setup(pick_device(None))
            done, trained = distributed.from_main((done, trained))
    if main:
        cells_dir.mkdir(parents=True, exist_ok=True)
    calibration = data.x_val[:64]
    source_hash = file_sha256(model_path)
    columns = (
        TextColumn("[bold]sweep[/] {task.fields[cell]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )

    def write_cell(method, rate, seed, outcome, seconds, started) -> None:
        name = cell_name(method, rate, seed)
        save_checkpoint(outcome.checkpoint, cells_dir / f"{name}.pt", force=True)
        record = {
            "method": method,
            "rate": rate,
            "realized_rate": outcome.summary["realized_rate"],
            "seed": seed,
            "finetune_seconds": seconds,
            "inconsistent_connections": outcome.summary["inconsistent_connections"],
            "dead_units": outcome.summary["dead_units"],
            **measure_deployable(outcome.model, data, calibration),
            "provenance": provenance(
                seed=seed,
                data=data_spec,
                source_sha256=source_hash,
                epochs=epochs,
                seconds=time.perf_counter() - started,
            ),
        }
        atomic_write(cells_dir / f"{name}.json", json.dumps(record, indent=2), force=True)

    def prune_cell(method: str, seed: int, cell_rates: list[float]):
        return prune(
            ckpt,
            data,
            method=method,
            rates=cell_rates,
            epochs=epochs,
            seed=seed,
            progress=False,
            allow_collapse=True,
            **(method_options or {}).get(method, {}),
        )

    with Progress(*columns, disable=not (progress and main)) as bar:
        task = bar.add_task("sweep", total=len(grid) + 1, cell="dense")
        dense_file = cells_dir / "dense.json"
        if main and not dense_file.exists():
            dense = {
                "method": "dense",
                "rate": 0.0,
                "realized_rate": 0.0,
                **measure_deployable(ckpt.build_model(), data, calibration),
            }
            atomic_write(dense_file, json.dumps(dense, indent=2), force=True)
        bar.advance(task)
        for method in methods:
            multi_rate = method_class(method).multi_rate and len(rates) > 1
            for seed in seeds:
                missing = [r for r in rates if (method, r, seed) not in done]
                bar.advance(task, len(rates) - len(missing))
                if not missing:
                    continue
                if multi_rate:
                    # one fine-tune serves every rate of the grid: train once, extract each rate
                    bar.update(task, cell=f"{method}-s{seed} (all rates)")
                    started = time.perf_counter()
                    multi_file = cells_dir / f"{method}-multi-s{seed}.pt"
                    # checkpoints keep no timings (same command, same bytes): the fine-tune's
                    # time goes to a note beside the multi-rate checkpoint
                    timing_file = multi_file.with_suffix(".seconds.json")
                    if (method, seed) in trained:
                        if not main:  # nothing to train: rank 0 extracts and measures
                            continue
                        multi = load_checkpoint(multi_file)
                        seconds = None
                        if timing_file.exists():
                            seconds = json.loads(timing_file.read_text())["finetune_seconds"]
                    else:
                        fine_tuned = prune_cell(method, seed, list(rates))
                        if not main:
                            continue
                        multi, seconds = (
                            fine_tuned.checkpoint,
                            fine_tuned.summary["finetune_seconds"],
                        )
                        note = json.dumps({"finetune_seconds": seconds})
                        atomic_write(timing_file, note, force=True)
                        save_checkpoint(multi, multi_file, force=True)
                    for rate in missing:
                        bar.update(task, cell=cell_name(method, rate, seed))
                        write_cell(method, rate, seed, extract(multi, rate), seconds, started)
                        bar.advance(task)
                    continue
                for rate in missing:
                    bar.update(task, cell=cell_name(method, rate, seed))
                    started = time.perf_counter()
                    outcome = prune_cell(method, seed, [rate])
                    if not main:
                        continue
                    seconds = outcome.summary["finetune_seconds"]
                    write_cell(method, rate, seed, outcome, seconds, started)
                    bar.advance(task)
    if not main:
        return {}
    records = [
        json.loads((cells_dir / f"{cell_name(m, r, s)}.json").read_text()) for m, r, s in grid
    ]
    document = results_document(model_path, data_spec, json.loads(dense_file.read_text()), records)
    results_path = write_results(out_dir / RESULTS_FILE, document, force=True)
    written = write_reports(load_results([results_path]), out_dir, force=True)
    return {"results": results_path, **written}
