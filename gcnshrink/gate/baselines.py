"""Baselines: the metrics a gated model is compared with, from a sweep's results.json or from
another model file measured exactly like the gated one."""

from __future__ import annotations

import os
from pathlib import Path

from gcnshrink.errors import GcnshrinkError
from gcnshrink.results import load_results

BYTES_FIELDS = ("bytes_sparse", "bytes_dense", "bytes_onnx")


def baseline_from_results(
    path: str | os.PathLike,
    method: str | None = None,
    rate: float | None = None,
    bytes_field: str = "bytes_sparse",
) -> dict[str, int | float | None]:
    """Baseline metrics from a sweep results.json: the dense reference, or the record of ``method``
    (and ``rate`` when the method was swept at several rates).

    ``bytes_field`` says which stored size stands in for "bytes": bytes_sparse (default, the sparse
    safetensors file), bytes_dense or bytes_onnx; pick the one matching the gated model's format.
    """
    if bytes_field not in BYTES_FIELDS:
        raise GcnshrinkError(f"unknown bytes field {bytes_field!r}")
    (results,) = load_results([path])
    record = results.find_record(method, rate)
    return {
        "params": record.params,
        "nonzero": record.nonzero,
        "flops": record.flops,
        "bytes": getattr(record, bytes_field),
        "latency_ms": record.latency_ms,
        "accuracy": record.accuracy,
    }


def is_results_baseline(path: str | os.PathLike) -> bool:
    """A results.json (or a sweep folder holding one), as opposed to a model file."""
    path = Path(path)
    return path.suffix == ".json" or path.is_dir()


def bytes_field_for(model: str | os.PathLike) -> str:
    """The stored sweep size that compares with the gated file: ONNX bytes for an ONNX model, the
    sparse safetensors bytes otherwise."""
    return "bytes_onnx" if Path(model).suffix == ".onnx" else "bytes_sparse"
