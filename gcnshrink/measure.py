"""Measure models: size, counts, FLOPs, latency and accuracy, each by one function.

``inspect``, ``eval``, ``gate`` (:func:`measure_model`, a model file as given) and the sweep
(:func:`measure_deployable`, a model compacted first) call the same functions for each number, so
a key means the same quantity everywhere:

- ``params`` / ``nonzero``: parameters and nonzero parameters of the model;
- ``flops``: counted by ``torch.utils.flop_counter.FlopCounterMode`` (:mod:`gcnshrink.flops`) on
  one sample (matrix products, convolutions and the einsum/bmm of the graph aggregation and
  attention; a multiply-add is 2 FLOPs). A property of the architecture and its widths: a
  compacted model has fewer, zeros inside a dense tensor still count;
- ``bytes_dense`` / ``bytes_sparse`` / ``bytes_gzip``: the state as a dense safetensors file, a
  sparse safetensors file and gzip -9 of the dense file (computed in memory);
- ``bytes_onnx``: the model exported to ONNX; ``latency_ms``: the median ONNX Runtime (CPU) time of
  one sample, after warm-up;
- ``accuracy`` / ``mean_class_accuracy`` / ``samples``: on the test split of the data.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from gcnshrink.checkpoint import (
    FORMAT,
    Checkpoint,
    load_checkpoint,
    meta_parameter_count,
    parse_metadata,
)
from gcnshrink.compact import compact_model
from gcnshrink.data import SkeletonData
from gcnshrink.errors import GcnshrinkError
from gcnshrink.export import exportable_state
from gcnshrink.flops import forward_flop_counts
from gcnshrink.graph import masks_from_weights
from gcnshrink.graph.propagation import topology_summary
from gcnshrink.models import SkeletonModel, create_model, model_class
from gcnshrink.onnx_export import OnnxRunner, export_onnx, onnx_latency_ms, read_onnx
from gcnshrink.pruning.ctf import removed_by_granularity
from gcnshrink.sparse_format import MAX_DECODE_RATIO, MAX_DECODED_BYTES_FLOOR, size_report
from gcnshrink.train import accuracy_metrics, evaluate

DEFAULT_FRAMES = 32

# What a sweep records of each compacted model (results.json, docs/gate-and-reports.md).
DEPLOYABLE_KEYS = (
    "accuracy",
    "mean_class_accuracy",
    "params",
    "nonzero",
    "flops",
    "bytes_dense",
    "bytes_sparse",
    "bytes_onnx",
    "latency_ms",
)


def model_frames(config: dict) -> int:
    return int(config.get("frames", DEFAULT_FRAMES))


# ------------------------------------------------------------------------------- one number each


def flops_by_operator(model: SkeletonModel, frames: int | None = None) -> dict[str, int]:
    """FLOPs of one forward pass on one sample of ``frames`` frames, per aten operator
    (``convolution``, ``bmm`` for the einsums, ``addmm``/``mm`` for the linear layers, ...)."""
    counts = forward_flop_counts(model, frames or model_frames(model.config))
    return counts.get("Global", {})


def count_flops(model: SkeletonModel, frames: int | None = None) -> int:
    """FLOPs of one forward pass on one sample of ``frames`` frames."""
    return sum(flops_by_operator(model, frames).values())


def parameter_counts(model: SkeletonModel) -> dict:
    """Parameters and nonzero parameters of a plain model."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in model.parameters()),
    }


def weight_counts(model: SkeletonModel) -> dict:
    """Parameters, nonzeros and the unit-graph topology of a plain model."""
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    masks = masks_from_weights(graph, named)
    topo = topology_summary(graph, masks)
    prunable = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {
        **parameter_counts(model),
        "prunable": prunable,
        "prunable_nonzero": kept,
        "sparsity": 1.0 - kept / max(prunable, 1),
        "inconsistent_connections": topo["inconsistent_connections"],
        "dead_units": topo["dead_units"],
        "topology": topo,
        # the removed weights split into whole channels, rows, columns and single entries
        "removed_by": removed_by_granularity(graph, masks)["shares"],
    }


def layer_table(model: SkeletonModel) -> list[dict]:
    """Per prunable tensor: shape, size, nonzeros and inconsistent entries."""
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    topo = topology_summary(graph, masks_from_weights(graph, named))["tensors"]
    rows = []
    for b in graph.prunable:
        w = named[b.name]
        rows.append(
            {
                "name": b.name,
                "shape": list(w.shape),
                "params": w.numel(),
                "nonzero": int((w != 0).sum()),
                "inconsistent": topo[b.name]["inconsistent"],
                "source": b.source,
                "target": b.target,
            }
        )
    return rows


def state_sizes(state: dict[str, torch.Tensor]) -> dict:
    """Bytes of ``state`` as the files gcnshrink exports (dense, sparse) and gzip of the dense."""
    sizes = size_report(exportable_state(state))
    return {key: sizes[key] for key in ("bytes_dense", "bytes_sparse", "bytes_gzip")}


def model_accuracy(model: SkeletonModel, data: SkeletonData) -> dict:
    """Accuracy, mean per-class accuracy and sample count of a PyTorch model on the test split."""
    return evaluate(model, data.x_test, data.y_test, data.num_classes)


def onnx_accuracy(path: str | Path, data: SkeletonData) -> dict:
    """The same numbers as :func:`model_accuracy`, computed by onnxruntime from an ONNX file."""
    logits = torch.from_numpy(OnnxRunner(path)(data.x_test))
    if logits.dim() != 2 or len(logits) != len(data.x_test):
        raise GcnshrinkError(f"{path} returns shape {tuple(logits.shape)}, not (N, classes)")
    if logits.shape[1] != data.num_classes:
        raise GcnshrinkError(
            f"{path} scores {logits.shape[1]} classes, data {data.spec!r} has {data.num_classes}"
        )
    return accuracy_metrics(logits, data.y_test, data.num_classes)


def onnx_size_and_latency(
    model: SkeletonModel, example: torch.Tensor, workdir: str | Path | None = None
) -> dict:
    """Export ``model`` to ONNX and time one sample of ``example`` with ONNX Runtime.

    Latency is measured on the exported file, so a PyTorch model and its ONNX export report the
    same quantity under ``latency_ms``.
    """
    with tempfile.TemporaryDirectory(prefix="gcnshrink-measure-", dir=workdir) as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, example[:2], path, force=True)
        return {"bytes_onnx": path.stat().st_size, "latency_ms": onnx_latency_ms(path, example[:1])}


def onnx_counts(path: Path) -> dict:
    from onnx import numpy_helper

    _, proto = read_onnx(path)  # a file that is not a usable ONNX model is refused here
    params = nonzero = 0
    try:
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind in "fc":
                params += arr.size
                nonzero += int(np.count_nonzero(arr))
        for sparse in proto.graph.sparse_initializer:  # written by export --sparse-onnx
            values = numpy_helper.to_array(sparse.values)
            if any(d < 0 for d in sparse.dims):
                raise ValueError(f"negative dimension in {list(sparse.dims)}")
            if values.dtype.kind in "fc":
                params += math.prod(sparse.dims)
                nonzero += int(np.count_nonzero(values))
    except (ValueError, TypeError, KeyError, MemoryError, OverflowError) as exc:
        raise GcnshrinkError(f"{path}: a weight of the graph cannot be decoded ({exc})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    return {"params": params, "nonzero": nonzero, "metadata": meta}


def _onnx_config(meta: dict[str, str], path: Path) -> tuple[str, dict] | None:
    """(arch, config) from a gcnshrink ONNX export's metadata (None for other ONNX files). Broken
    or inconsistent metadata is one line, never a wrong number: a config describing far more
    weights than a file of this size could hold (building it for FLOPs would allocate them) is
    refused by the sparse safetensors reader's rule (:data:`~gcnshrink.sparse_format.MAX_DECODE_RATIO`)."""
    if not ({"format", "arch", "config"} & set(meta)):
        return None  # an ONNX model from elsewhere: counted, but no architecture to speak of
    if meta.get("format") != FORMAT:
        raise GcnshrinkError(f"{path}: metadata format {meta.get('format')!r} is not {FORMAT!r}")
    arch, config, *_ = parse_metadata(meta, path)
    config = model_class(arch).make_config(config).to_dict()
    params = meta_parameter_count(arch, config)
    limit = max(MAX_DECODED_BYTES_FLOOR, MAX_DECODE_RATIO * path.stat().st_size)
    if params is not None and 4 * params > limit:
        raise GcnshrinkError(
            f"{path}: its metadata describes a {arch} of {params:,} parameters, far more than "
            "the file can hold"
        )
    return arch, config


def onnx_flops(arch: str, config: dict) -> int:
    """FLOPs of the architecture an ONNX export's metadata names (checked by _onnx_config)."""
    return count_flops(create_model(arch, **config))


# ------------------------------------------------------------------------------------ models


def measure_module(
    model: SkeletonModel,
    *,
    frames: int,
    data: SkeletonData | None = None,
    flops: bool = True,
    latency: bool = False,
    topology: bool = True,
    example: torch.Tensor | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Every number for a model in memory; ``topology`` adds the unit-graph facts of
    :func:`weight_counts` (prunable weights, inconsistent connections, dead units).

    ``state`` is what the sizes are computed from (default: the model's own state; a checkpoint
    passes its stored tensors, which may be float16). ``latency`` exports to ONNX and adds
    ``bytes_onnx`` and ``latency_ms``, timed on one sample of ``example`` (default: random input of
    ``frames`` frames).
    """
    model = model.cpu().eval()
    out = {
        **(weight_counts(model) if topology else parameter_counts(model)),
        "flops": count_flops(model, frames) if flops else None,
        **state_sizes(model.state_dict() if state is None else state),
    }
    if data is not None:
        out.update(model_accuracy(model, data))
    if latency:
        example = model.example_input(1, frames) if example is None else example
        out.update(onnx_size_and_latency(model, example))
    return out


def measure_deployable(model: SkeletonModel, data: SkeletonData, calibration: torch.Tensor) -> dict:
    """Compact the model and measure what a user would ship: the :data:`DEPLOYABLE_KEYS` and the
    compaction's relative logit change on ``calibration`` (real inputs, also the latency sample)."""
    result = compact_model(model.cpu().eval(), calibration)
    measured = measure_module(
        result.model,
        frames=calibration.shape[2],
        data=data,
        latency=True,
        topology=False,  # the sweep records the topology of the pruned model, before compaction
        example=calibration[:2],
    )
    return {
        **{key: measured[key] for key in DEPLOYABLE_KEYS},
        "compaction_relative_diff": result.relative_diff,
    }


# ------------------------------------------------------------------------------------- files


def _model_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise GcnshrinkError(f"{path}: no such file")
    return path


def _load(path: Path, load_options: dict | None, data: SkeletonData | None) -> Checkpoint:
    ckpt = load_checkpoint(path, **(load_options or {}))
    if data is not None:
        ckpt.check_compatible(data)
    return ckpt


def multi_rate_record(ckpt: Checkpoint) -> dict | None:
    """The pruning record of a multi-rate checkpoint (latent weights, not one model), else None.
    The fields every command reads are checked here, so an edited file is one line wherever it
    is read (inspect printed a traceback for rates that were not numbers)."""
    record = ckpt.pruning or {}
    if not isinstance(record, dict) or not record.get("multi_rate"):
        return None

    def broken(field: str) -> GcnshrinkError:
        value = repr(record.get(field))[:80]
        return GcnshrinkError(
            f"broken multi-rate checkpoint: its pruning record has {field} = {value}"
        )

    rates = record.get("rates")
    if not (
        isinstance(rates, list | tuple)
        and rates
        and all(isinstance(r, int | float) and not isinstance(r, bool) and 0 < r < 1 for r in rates)
    ):
        raise broken("rates")
    if not isinstance(record.get("method"), str):
        raise broken("method")
    if not isinstance(record.get("val_accuracy_by_rate", {}), dict):
        raise broken("val_accuracy_by_rate")
    return record


def refuse_multi_rate(ckpt: Checkpoint, name: str | Path | None, what: str) -> None:
    """Commands that need one model refuse a multi-rate checkpoint, saying how to extract one."""
    record = multi_rate_record(ckpt)
    if record is None:
        return
    name = str(name) if name is not None else "MULTI.pt"
    rates = ", ".join(f"{r:g}" for r in record.get("rates", []))
    raise GcnshrinkError(
        f"{name} is a multi-rate checkpoint ({record.get('method')}, trained for rates {rates}): "
        f"{what} needs one model; extract one first: gcnshrink extract {name} --rate R -o "
        "pruned.pt"
    )


def measure_accuracy(
    path: str | Path, data: SkeletonData, *, load_options: dict | None = None
) -> dict:
    """Accuracy, mean per-class accuracy and sample count of a model file on the test split."""
    path = _model_file(path)
    if path.suffix == ".onnx":
        return onnx_accuracy(path, data)
    ckpt = _load(path, load_options, data)
    refuse_multi_rate(ckpt, path, "eval without --rates")
    return model_accuracy(ckpt.build_model(), data)


def measure_model(
    path: str | Path,
    data: SkeletonData | None = None,
    *,
    latency: bool = False,
    flops: bool = True,
    layers: bool = False,
    load_options: dict | None = None,
    multi_rate_ok: bool = False,
) -> dict:
    """Everything gcnshrink can say about one model file. ``data`` adds test accuracy, ``layers``
    the per-tensor table of a checkpoint or safetensors file. A multi-rate checkpoint is refused
    unless ``multi_rate_ok`` (inspect): its numbers are those of the latent weights, and
    ``multi_rate``/``trained_rates`` say so."""
    path = _model_file(path)
    out: dict = {
        "path": str(path),
        "format": path.suffix.lstrip(".") or "pt",
        "bytes": path.stat().st_size,
    }
    if path.suffix == ".onnx":
        counts = onnx_counts(path)
        described = _onnx_config(counts.pop("metadata"), path)
        config = described[1] if described else {}
        out.update(counts)
        out["flops"] = None
        if flops and described:
            # FLOPs depend only on the architecture and widths recorded in the metadata
            out["flops"] = onnx_flops(*described)
        if data is not None:
            out.update(onnx_accuracy(path, data))
        if latency:
            shape = OnnxRunner(path).input_shape
            frames = model_frames(config)
            example = torch.randn(1, *[s if isinstance(s, int) else frames for s in shape[1:]])
            out["latency_ms"] = onnx_latency_ms(path, example)
        return out
    ckpt = _load(path, load_options, data)
    record = multi_rate_record(ckpt)
    if record is not None:
        if not multi_rate_ok or data is not None:
            refuse_multi_rate(ckpt, path, "this command")
        out.update(
            multi_rate=True,
            method=record.get("method"),
            trained_rates=list(record.get("rates", [])),
            val_accuracy_by_rate=dict(record.get("val_accuracy_by_rate", {})),
        )
    model = ckpt.build_model()
    out["arch"] = ckpt.arch
    out.update(
        measure_module(
            model,
            frames=model_frames(ckpt.config),
            data=data,
            flops=flops,
            latency=latency,
            state=ckpt.state_dict,
        )
    )
    out["pruning"] = ckpt.pruning
    if layers:
        out["layers"] = layer_table(model)
    return out
