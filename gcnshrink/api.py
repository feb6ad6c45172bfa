"""gcnshrink's verbs as Python functions; the CLI is a thin layer over these.

``train``, ``prune``, ``evaluate``, ``inspect``, ``compact``, ``export``, ``sweep``, ``report`` and
``gate`` each take models as a :class:`~gcnshrink.checkpoint.Checkpoint` or a path and data as a
:class:`~gcnshrink.data.SkeletonData` or a spec string, return plain data (dicts and dataclasses),
and raise :class:`~gcnshrink.errors.GcnshrinkError` on bad input before any slow work.

For people with their own training loop: ``method = gcnshrink.pruning.create_method(name, spec)``,
``method.attach(model, model.unit_graph())``, train as you like calling ``method.on_step(progress)``
before each forward pass and adding ``method.loss()``, then
``gcnshrink.pruning.bake(model, method.masks_at(rate))`` is the pruned model at the exact rate
(docs/architecture.md).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gcnshrink.arguments import check_training
from gcnshrink.checkpoint import Checkpoint, provenance
from gcnshrink.compact import check_align, compact_model
from gcnshrink.data import SkeletonData
from gcnshrink.defaults import COMPACT_ALIGN, FINETUNE_EPOCHS
from gcnshrink.errors import GcnshrinkError, GcnshrinkNotice
from gcnshrink.export import export_model
from gcnshrink.gate import GateRun, budgets_from_options, run_gate
from gcnshrink.measure import (
    measure_accuracy,
    measure_model,
    model_accuracy,
    model_frames,
    multi_rate_record,
    refuse_multi_rate,
)
from gcnshrink.models import SkeletonModel, create_model
from gcnshrink.prune import (
    PruneOutcome,
    as_checkpoint,
    as_data,
    check_resume_state,
    extract,
    prune,
)
from gcnshrink.pruning.budget import check_rate
from gcnshrink.report import write_reports
from gcnshrink.results import load_results
from gcnshrink.sweep import run_sweep
from gcnshrink.train import TrainConfig, fit
from gcnshrink.train import evaluate as test_metrics  # the name evaluate is the API verb


# ---------------------------------------------------------------------------- train / eval
def train(
    data: SkeletonData | str,
    arch: str = "gcn",
    *,
    config: TrainConfig | None = None,
    model_config: dict | None = None,
    state_path: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
) -> tuple[Checkpoint, dict]:
    """Train a zoo model from scratch; returns the best-on-validation checkpoint and a summary.
    ``state_path`` writes resumable state every epoch; ``resume_from`` continues an interrupted
    run from it (the result is the uninterrupted run's)."""
    config = config or TrainConfig()
    check_training(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        device=config.device,
    )
    data = as_data(data, config.seed)
    data.check_trainable()
    torch.manual_seed(config.seed)
    model = create_model(
        arch,
        num_classes=data.num_classes,
        layout=data.layout,
        in_channels=data.in_channels,
        **(model_config or {}),
    )
    if resume_from is not None:
        check_resume_state(resume_from, model, config)
    result = fit(
        model,
        data,
        config,
        description=f"train {arch}",
        state_path=state_path,
        resume_from=resume_from,
    )
    test = test_metrics(result.model, data.x_test, data.y_test, data.num_classes)
    prov = provenance(
        seed=config.seed, data=data.spec, epochs=config.epochs, best_epoch=result.best_epoch
    )
    ckpt = Checkpoint.from_model(result.model, data.class_names, prov)
    summary = {
        "arch": arch,
        "epochs": config.epochs,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "accuracy": test["accuracy"],
        "mean_class_accuracy": test["mean_class_accuracy"],
        "params": sum(p.numel() for p in result.model.parameters()),
        "seconds": result.seconds,
    }
    return ckpt, summary


def _model_name(model: Checkpoint | str | os.PathLike) -> str | None:
    return None if isinstance(model, Checkpoint) else str(model)


def _load_options(arch: str | None, layout: str | None, arch_config: dict | None = None) -> dict:
    """How to read a foreign checkpoint; ignored for gcnshrink's own files. ``arch_config``: the
    keywords of a user's ``package.module:callable`` arch, or a zoo architecture's config."""
    return {"arch": arch, "layout": layout, "config": arch_config}


def evaluate(
    model: Checkpoint | str | os.PathLike,
    data: SkeletonData | str,
    *,
    seed: int = 0,
    arch: str | None = None,
    layout: str | None = None,
    rates: Sequence[float] | None = None,
    arch_config: dict | None = None,
) -> dict:
    """Top-1 and mean per-class accuracy on the test split of a checkpoint, safetensors export or
    ONNX file: ``{"model", "data", "accuracy", "mean_class_accuracy", "samples"}``. For a
    multi-rate checkpoint, ``rates`` evaluates the model extracted at each:
    ``{"model", "data", "multi_rate": True, "by_rate": [{"rate", "realized_rate", "accuracy",
    ...}]}``."""
    if rates:
        # all of them before the first extraction
        rates = [check_rate(r, "each rate of --rates") for r in rates]
    dataset = as_data(data, seed)
    if rates:
        ckpt = as_checkpoint(model, **_load_options(arch, layout, arch_config))
        if multi_rate_record(ckpt) is None:
            raise GcnshrinkError(
                "--rates evaluates extractions of a multi-rate checkpoint; this is one model "
                "(drop --rates)"
            )
        ckpt.check_compatible(dataset)
        by_rate = []
        for rate in rates:
            extracted = extract(ckpt, rate)
            by_rate.append(
                {
                    "rate": rate,
                    "realized_rate": extracted.summary["realized_rate"],
                    **model_accuracy(extracted.model, dataset),
                }
            )
        return {
            "model": _model_name(model),
            "data": data if isinstance(data, str) else dataset.spec,
            "multi_rate": True,
            "by_rate": by_rate,
        }
    if isinstance(model, Checkpoint):
        model.check_compatible(dataset)
        refuse_multi_rate(model, None, "eval without --rates")
        metrics = model_accuracy(model.build_model(), dataset)
    else:
        metrics = measure_accuracy(
            model, dataset, load_options=_load_options(arch, layout, arch_config)
        )
    return {
        "model": _model_name(model),
        "data": data if isinstance(data, str) else dataset.spec,
        **metrics,
    }


def inspect(
    model: str | os.PathLike,
    *,
    latency: bool = False,
    arch: str | None = None,
    layout: str | None = None,
    arch_config: dict | None = None,
) -> dict:
    """Everything :func:`gcnshrink.measure.measure_model` says about a model file, plus the
    per-tensor table (``layers``) of a checkpoint or safetensors file; ``latency`` adds the ONNX
    Runtime time of one sample."""
    return measure_model(
        model,
        latency=latency,
        layers=True,
        load_options=_load_options(arch, layout, arch_config),
        multi_rate_ok=True,
    )


# ---------------------------------------------------------------------------- compact / export
def calibration_inputs(
    ckpt: Checkpoint, data: SkeletonData | str | None = None, seed: int = 0, count: int = 64
) -> tuple[torch.Tensor, SkeletonData | None]:
    """Inputs for compaction and parity checks: the validation split of ``data``, or of the data
    the model was trained on (recorded in its provenance). A model without either (a foreign
    checkpoint) gets ``count`` standard-normal inputs of its own shape (C, T, V, M), T = the
    config's ``frames`` or 32, drawn with ``seed``, and a :class:`GcnshrinkNotice` saying so.

    Made-up inputs are enough for compaction to be exact: the units it removes are those whose
    activations do not depend on the input at all (docs/compaction.md). They only make the logit
    and ONNX parity checks weaker than checks on real inputs, and fix T for the ONNX file."""
    prov = ckpt.provenance or {}
    data = data or prov.get("data") or (prov.get("source") or {}).get("data")
    if not data:
        shape = ckpt.arch_config.input_shape(count, model_frames(ckpt.config))
        warnings.warn(
            GcnshrinkNotice(
                f"no --data and none recorded in the checkpoint: checking on {count} random "
                f"inputs of the model's shape (C, T, V, M) = {shape[1:]}; pass --data to check on "
                "real inputs and take their frame count"
            ),
            stacklevel=2,
        )
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=generator), None
    dataset = as_data(data, seed)
    x = dataset.x_val if len(dataset.x_val) else dataset.x_train
    return x[:count], dataset


@dataclass
class CompactOutcome:
    checkpoint: Checkpoint  # the compacted model, with the source's classes, provenance, pruning
    summary: dict  # CompactionResult.to_dict(): widths before/after per space, the logit check
    model: SkeletonModel


def compact(
    model: Checkpoint | str | os.PathLike,
    data: SkeletonData | str | None = None,
    *,
    seed: int = 0,
    arch: str | None = None,
    layout: str | None = None,
    source_path: str | os.PathLike | None = None,
    align: int = COMPACT_ALIGN,
    arch_config: dict | None = None,
) -> CompactOutcome:
    """Remove dead and disconnected units structurally; raises if the logits change on real inputs
    (``data``, default: the model's training data). ``align`` N > 1 keeps unit counts at
    multiples of N (restoring the strongest removable units; docs/compaction.md, rule 8)."""
    check_align(align)
    ckpt = as_checkpoint(model, **_load_options(arch, layout, arch_config))
    source = source_path if isinstance(model, Checkpoint) else model
    refuse_multi_rate(ckpt, source, "compact")
    calibration, _ = calibration_inputs(ckpt, data, seed)
    result = compact_model(ckpt.build_model(), calibration, align=align)
    prov = dict(ckpt.provenance)
    if source is not None:
        prov["compacted_from"] = str(source)
    out = Checkpoint.from_model(result.model, ckpt.class_names, prov, ckpt.pruning)
    return CompactOutcome(out, result.to_dict(), result.model)


def export(
    model: Checkpoint | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    data: SkeletonData | str | None = None,
    seed: int = 0,
    onnx: bool = False,
    safetensors: bool = False,
    sparse: bool = False,
    sparse_onnx: bool = False,
    fp16: bool = False,
    int8: bool = False,
    force: bool = False,
    arch: str | None = None,
    layout: str | None = None,
    align: int = COMPACT_ALIGN,
    arch_config: dict | None = None,
) -> dict:
    """Compact (``align``: as in :func:`compact`), then write and verify the chosen files into
    ``out_dir`` (model.onnx and model.sparse.safetensors when none is chosen); returns
    export.json's summary."""
    if not (onnx or sparse_onnx or safetensors or sparse or int8):
        onnx = sparse = True
    check_align(align)
    ckpt = as_checkpoint(model, **_load_options(arch, layout, arch_config))
    refuse_multi_rate(ckpt, _model_name(model), "export")
    calibration, _ = calibration_inputs(ckpt, data, seed)
    return export_model(
        ckpt,
        out_dir,
        calibration=calibration,
        onnx=onnx,
        safetensors=safetensors,
        sparse=sparse,
        fp16=fp16,
        int8=int8,
        sparse_onnx=sparse_onnx,
        force=force,
        align=align,
    )


# ---------------------------------------------------------------------------- sweep / report / gate
def sweep(
    model: str | os.PathLike,
    data: SkeletonData | str,
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = ("mp", "tcp"),
    rates: Sequence[float] = (0.5, 0.9, 0.95, 0.99),
    epochs: int = FINETUNE_EPOCHS,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
    method_options: dict[str, dict] | None = None,
    arch: str | None = None,
    layout: str | None = None,
    arch_config: dict | None = None,
) -> dict[str, Path]:
    """Prune with every method at every rate (and seed), measure each compacted model, write
    results.json and the reports into ``out_dir``; resumable. Returns {name: written path}."""
    return run_sweep(
        model,
        data if isinstance(data, str) else data.spec,
        out_dir,
        methods=list(methods),
        rates=list(rates),
        epochs=epochs,
        seeds=list(seeds),
        progress=progress,
        method_options=method_options,
        load_options=_load_options(arch, layout, arch_config),
    )


def report(
    results: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """Render report.md, report.html and the plots from one or more results.json files (a folder
    means its results.json; several are compared). Returns {file name: path}."""
    paths = [results] if isinstance(results, str | os.PathLike) else list(results)
    return write_reports(load_results(paths), out_dir, force=force)


def gate(
    model: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    config_dir: str | os.PathLike = ".",
    baseline: str | os.PathLike | None = None,
    warn_only: bool | None = None,
    max_bytes: str | int | None = None,
    max_params: str | int | None = None,
    max_nonzero: str | int | None = None,
    max_flops: str | int | None = None,
    max_latency_ms: str | float | None = None,
    min_accuracy: str | float | None = None,
    max_accuracy_drop: str | float | None = None,
    arch: str | None = None,
    layout: str | None = None,
    arch_config: dict | None = None,
) -> GateRun:
    """Check ``model`` (default: the models configured in ``config_dir``) against budgets given
    here (as in the CLI: "64KB", "20k", "80%") over those configured. ``result.exit_code`` is 0
    within budget, 1 over; bad input raises."""
    overrides = budgets_from_options(
        max_bytes=max_bytes,
        max_params=max_params,
        max_nonzero=max_nonzero,
        max_flops=max_flops,
        max_latency_ms=max_latency_ms,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        baseline=baseline,
        warn_only=warn_only,
    )
    return run_gate(
        model,
        overrides,
        data=data,
        config_dir=config_dir,
        load_options=_load_options(arch, layout, arch_config),
    )


__all__ = [
    "CompactOutcome",
    "PruneOutcome",
    "calibration_inputs",
    "compact",
    "evaluate",
    "export",
    "extract",
    "gate",
    "inspect",
    "prune",
    "report",
    "sweep",
    "train",
]
