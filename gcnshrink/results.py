"""The sweep results file, ``results.json`` (format ``gcnshrink.sweep/1``): its schema, reading
and validating it, and writing it.

The sweep writes it, ``gcnshrink report`` renders it and the gate reads baselines from it; the
schema is documented in docs/gate-and-reports.md. Every writer goes through :func:`write_results`,
which validates with the same parser the readers use, so gcnshrink never writes a results file it
would refuse to read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write

RESULTS_FORMAT = "gcnshrink.sweep/1"
RESULTS_FILE = "results.json"

_COUNT_FIELDS = ("params", "nonzero", "flops", "bytes_dense", "bytes_sparse", "bytes_onnx", "seed")
_FRACTION_FIELDS = ("realized_rate", "accuracy", "mean_class_accuracy")
_FLOAT_FIELDS = ("latency_ms", "finetune_seconds")


@dataclass(frozen=True)
class Record:
    """One model of a sweep (or the dense reference). Any measurement may be None (not measured)."""

    method: str
    rate: float  # target pruning rate, fraction of prunable weights removed (0 for dense)
    realized_rate: float | None = None  # fraction actually removed
    accuracy: float | None = None  # test accuracy, 0..1
    mean_class_accuracy: float | None = None
    params: int | None = None  # parameters after compaction
    nonzero: int | None = None  # nonzero weights
    flops: int | None = None
    bytes_dense: int | None = None
    bytes_sparse: int | None = None
    bytes_onnx: int | None = None
    latency_ms: float | None = None
    finetune_seconds: float | None = None
    seed: int | None = None
    provenance: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ResultSet:
    """One results.json: a sweep of one model on one data set."""

    path: Path
    label: str  # short run name for tables and legends
    model: str
    data: str
    dense: Record
    records: list[Record]

    def find_record(self, method: str | None = None, rate: float | None = None) -> Record:
        """The dense record (no method, or method "dense"), else the one record of ``method`` at
        ``rate``; ``rate`` may be omitted when the method has a single record."""
        if method is None or method == self.dense.method or method == "dense":
            if rate is not None and method is None:
                raise GcnshrinkError(f"{self.path}: a baseline rate needs a method")
            return self.dense
        candidates = [r for r in self.records if r.method == method]
        if not candidates:
            known = sorted({r.method for r in self.records})
            raise GcnshrinkError(
                f"{self.path}: no method {method!r} (have: {', '.join(known) or 'none'})"
            )
        if rate is not None:
            candidates = [r for r in candidates if math.isclose(r.rate, rate, abs_tol=1e-9)]
        if len(candidates) != 1:
            rates = ", ".join(f"{r.rate:g}" for r in self.records if r.method == method)
            what = "no record" if not candidates else "several records"
            raise GcnshrinkError(
                f"{self.path}: {what} for method {method!r}"
                + (f" at rate {rate:g}" if rate is not None else "")
                + f"; pick a rate among {rates}"
            )
        return candidates[0]


# ------------------------------------------------------------------------------------ parsing


def _number(value: object, where: str, integer: bool = False) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GcnshrinkError(f"{where} must be a number or null, got {value!r}")
    if not math.isfinite(value):
        raise GcnshrinkError(f"{where} must be finite, got {value!r}")
    if value < 0:
        raise GcnshrinkError(f"{where} must not be negative, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise GcnshrinkError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _parse_record(obj: object, where: str, default_method: str | None = None) -> Record:
    if not isinstance(obj, dict):
        raise GcnshrinkError(f"{where} must be an object")
    method = obj.get("method", default_method)
    if not isinstance(method, str) or not method:
        raise GcnshrinkError(f"{where}.method must be a non-empty string")
    # The dense record may leave its rate out (it is 0); a pruned record must state it.
    values: dict[str, object] = {"method": method}
    for key in ("rate", *_FRACTION_FIELDS):
        default = 0 if key == "rate" and default_method else None
        number = _number(obj.get(key, default), f"{where}.{key}")
        if number is not None and number > 1:
            raise GcnshrinkError(f"{where}.{key} must be a fraction in 0..1, got {number!r}")
        values[key] = number
    if values["rate"] is None:
        raise GcnshrinkError(f"{where}.rate is required")
    for key in _COUNT_FIELDS:
        values[key] = _number(obj.get(key), f"{where}.{key}", integer=True)
    for key in _FLOAT_FIELDS:
        values[key] = _number(obj.get(key), f"{where}.{key}")
    provenance = obj.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise GcnshrinkError(f"{where}.provenance must be an object or null")
    values["provenance"] = provenance
    # Unknown keys are ignored on purpose: newer sweeps may add measurements.
    return Record(**values)


def parse_results(document: object, path: Path, label: str) -> ResultSet:
    """Validate a decoded results.json; ``path`` and ``label`` name it in messages and reports."""
    name = str(path)
    if not isinstance(document, dict):
        raise GcnshrinkError(f"{name}: not a gcnshrink sweep results file (expected a JSON object)")
    tag = document.get("format")
    if tag != RESULTS_FORMAT:
        if isinstance(tag, str) and tag.startswith("gcnshrink.sweep/"):
            raise GcnshrinkError(
                f"{name}: results format {tag!r} is not supported (this version reads "
                f"{RESULTS_FORMAT!r})"
            )
        raise GcnshrinkError(f"{name}: not a gcnshrink sweep results file (format is {tag!r})")
    for key in ("model", "data"):
        if not isinstance(document.get(key), str):
            raise GcnshrinkError(f"{name}: '{key}' must be a string")
    if "dense" not in document:
        raise GcnshrinkError(f"{name}: missing the 'dense' reference record")
    dense = _parse_record(document["dense"], f"{name}: dense", default_method="dense")
    records = document.get("records")
    if not isinstance(records, list):
        raise GcnshrinkError(f"{name}: 'records' must be a list")
    parsed = [_parse_record(r, f"{name}: records[{i}]") for i, r in enumerate(records)]
    return ResultSet(path, label, document["model"], document["data"], dense, parsed)


def _run_labels(paths: Sequence[Path]) -> list[str]:
    """Short, unique run names: the folder of a results.json, else the file's stem."""
    labels = []
    for path in paths:
        base = path.resolve().parent.name if path.name == RESULTS_FILE else path.stem
        label = base or path.stem
        unique, n = label, 2
        while unique in labels:
            unique, n = f"{label}#{n}", n + 1
        labels.append(unique)
    return labels


def load_results(paths: Iterable[str | os.PathLike]) -> list[ResultSet]:
    """Read and validate results.json files (a folder means its results.json).

    Several files are several runs to compare, labelled by their folder names.
    """
    resolved = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.is_file():
            raise GcnshrinkError(f"results file not found: {path}")
        resolved.append(path)
    if not resolved:
        raise GcnshrinkError("no results files given")
    result_sets = []
    for path, label in zip(resolved, _run_labels(resolved), strict=True):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GcnshrinkError(f"{path}: invalid JSON: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise GcnshrinkError(f"{path}: cannot read: {e}") from None
        result_sets.append(parse_results(document, path, label))
    return result_sets


# ------------------------------------------------------------------------------------ writing


def results_document(
    model: str | os.PathLike, data: str, dense: Mapping, records: Sequence[Mapping]
) -> dict:
    """A results.json document. Records may carry more keys than the schema names (the sweep adds
    compaction and topology facts); readers ignore them."""
    return {
        "format": RESULTS_FORMAT,
        "model": str(model),
        "data": data,
        "dense": dict(dense),
        "records": [dict(r) for r in records],
    }


def write_results(path: str | os.PathLike, document: Mapping, *, force: bool = False) -> Path:
    """Validate ``document`` as readers will, then write it atomically to ``path``."""
    path = Path(path)
    # default=str: provenance may hold paths; the round trip below checks what readers will see
    text = json.dumps(document, indent=2, default=str)
    parse_results(json.loads(text), path, path.stem)
    return atomic_write(path, text, force=force)
