"""Measure a model file (checkpoint, safetensors or ONNX): size, counts, FLOPs, latency, accuracy.

One function for ``inspect``, ``gate`` and the sweep reports, so the same number means the same
thing everywhere. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one sample
(matrix products, convolutions and the einsum/bmm of the graph aggregation and attention; each
multiply-add counts as 2 FLOPs); they are a property of the architecture and its widths, so a
compacted model has fewer, while zeros inside a dense tensor still count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gcnshrink.checkpoint import Checkpoint, load_checkpoint
from gcnshrink.errors import GcnshrinkError
from gcnshrink.export import exportable_state
from gcnshrink.graph import masks_from_weights
from gcnshrink.models import SkeletonModel, create_model
from gcnshrink.sparse_format import size_report

DEFAULT_FRAMES = 32


def model_frames(config: dict) -> int:
    return int(config.get("frames", DEFAULT_FRAMES))


def count_flops(model: SkeletonModel, frames: int | None = None) -> int:
    """FLOPs of one forward pass on one sample of ``frames`` frames."""
    x = model.example_input(1, frames or model_frames(model.config))
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def weight_counts(model: SkeletonModel) -> dict:
    """Parameters, nonzeros and the unit-graph topology of a plain model."""
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    masks = masks_from_weights(graph, named)
    topo = graph.topology_summary(masks)
    prunable = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in model.parameters()),
        "prunable": prunable,
        "prunable_nonzero": kept,
        "sparsity": 1.0 - kept / max(prunable, 1),
        "inconsistent_connections": topo["inconsistent_connections"],
        "dead_units": topo["dead_units"],
        "topology": topo,
    }


def layer_table(model: SkeletonModel) -> list[dict]:
    """Per prunable tensor: shape, size, nonzeros and inconsistent entries."""
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    topo = graph.topology_summary(masks_from_weights(graph, named))["tensors"]
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


def measure_checkpoint(ckpt: Checkpoint, *, flops: bool = True) -> dict:
    model = ckpt.build_model()
    counts = weight_counts(model)
    sizes = size_report(exportable_state(ckpt.state_dict))
    out = {
        "arch": ckpt.arch,
        **counts,
        "flops": count_flops(model) if flops else None,
        "bytes_dense": sizes["bytes_dense"],
        "bytes_sparse": sizes["bytes_sparse"],
        "bytes_gzip": sizes["bytes_gzip"],
        "pruning": ckpt.pruning,
    }
    return out


def onnx_counts(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    params = nonzero = 0
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind in "fc":
            params += arr.size
            nonzero += int(np.count_nonzero(arr))
    for sparse in proto.graph.sparse_initializer:  # written by export --sparse-onnx
        values = numpy_helper.to_array(sparse.values)
        if values.dtype.kind in "fc":
            params += int(np.prod(sparse.dims))
            nonzero += int(np.count_nonzero(values))
    meta = {p.key: p.value for p in proto.metadata_props}
    return {"params": params, "nonzero": nonzero, "metadata": meta}


def measure_model(
    path: str | Path,
    data=None,
    *,
    latency: bool = False,
    flops: bool = True,
    load_options: dict | None = None,
) -> dict:
    """Everything gcnshrink can say about one model file. ``data`` adds test accuracy."""
    path = Path(path)
    if not path.is_file():
        raise GcnshrinkError(f"{path}: no such file")
    out: dict = {
        "path": str(path),
        "format": path.suffix.lstrip(".") or "pt",
        "bytes": path.stat().st_size,
    }
    if path.suffix == ".onnx":
        counts = onnx_counts(path)
        meta = counts.pop("metadata")
        out.update(counts)
        out["flops"] = None
        if flops and "config" in meta and "arch" in meta:
            # FLOPs depend only on the architecture and widths recorded in the metadata
            model = create_model(meta["arch"], **json.loads(meta["config"]))
            out["flops"] = count_flops(model)
        if latency or data is not None:
            from gcnshrink.onnx_export import OnnxRunner, onnx_latency_ms

            runner = OnnxRunner(path)
            if data is not None:
                from gcnshrink.train import accuracy_metrics

                logits = torch.from_numpy(runner(data.x_test))
                out.update(accuracy_metrics(logits, data.y_test, data.num_classes))
            if latency:
                frames = model_frames(json.loads(meta["config"])) if "config" in meta else 32
                shape = runner.input_shape
                example = torch.randn(1, *[s if isinstance(s, int) else frames for s in shape[1:]])
                out["latency_ms"] = onnx_latency_ms(path, example)
        return out
    ckpt = load_checkpoint(path, **(load_options or {}))
    out.update(measure_checkpoint(ckpt, flops=flops))
    if data is not None:
        from gcnshrink.train import evaluate

        ckpt.check_compatible(data)
        out.update(evaluate(ckpt.build_model(), data.x_test, data.y_test, data.num_classes))
    if latency:
        out["latency_ms"] = torch_latency_ms(ckpt.build_model())
    return out


def torch_latency_ms(model: SkeletonModel, repeats: int = 20) -> float:
    import statistics
    import time

    x = model.example_input(1, model_frames(model.config))
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
