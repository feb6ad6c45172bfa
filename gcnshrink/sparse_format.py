"""Dense and sparse safetensors files for (pruned) state dicts.

A sparse file is an ordinary safetensors file: every tensor is stored as one or more plain arrays
plus a small JSON description in the header's ``__metadata__``, so it can be decoded with nothing
but ``safetensors`` and numpy (see docs/formats.md and examples/decode_sparse_safetensors.py).

Per floating tensor the writer picks whichever encoding makes the smallest file:

* ``dense``: the tensor as-is under its own name.
* ``bitmask``: ``<name>::values`` (the nonzero entries, row-major) and ``<name>::bitmask``
  (one bit per element, ``np.packbits`` big-endian bit order).
* ``csr``: the tensor viewed as ``(shape[0], numel // shape[0])``; ``<name>::values``,
  ``<name>::indptr`` (row pointers) and ``<name>::indices`` (column of each value).

"Nonzero" means "bit pattern not all zero", so ``-0.0`` and NaN are kept as values and a decoded
tensor is bit-identical to the original.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from gcnshrink.errors import GcnshrinkError

# Key in ``__metadata__`` holding our JSON description; user metadata may not use it.
SPARSE_KEY = "gcnshrink.sparse"
FORMAT_VERSION = 1
PART_SEP = "::"

# Rough header cost of one stored array: its JSON entry is the key plus about this many bytes
# ({"dtype":"F32","shape":[655],"data_offsets":[12345,14965]}). Only used to break near-ties
# between encodings for small tensors, so it does not need to be exact.
_HEADER_BYTES_PER_ARRAY = 60
# Rough cost of one tensor's entry in our metadata JSON, on top of its name (escaped inside the
# header JSON, so quotes count twice).
_METADATA_BYTES_PER_TENSOR = 30

# Integer dtypes to hold index arrays, narrowest first; safetensors supports all of them.
_INDEX_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
# Integer dtype with the same width as a float dtype. Encoding and decoding work on these bit
# views in numpy: bit-exact by construction, fast, and it covers bfloat16, which numpy lacks.
_BITS_DTYPE_BY_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def write_file_atomic(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``.

    Readers never see a half-written file, and an existing file is only replaced with ``force``.
    """
    path = Path(path)
    if path.is_dir():
        raise GcnshrinkError(f"{path} is a directory, expected a file path")
    if not path.parent.is_dir():
        raise GcnshrinkError(f"directory {path.parent} does not exist")
    if path.exists() and not force:
        raise GcnshrinkError(f"{path} already exists; use --force to overwrite it")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open with mode 0o666 lets the umask decide permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _index_dtype(max_value: int) -> torch.dtype:
    """Narrowest unsigned dtype that holds ``max_value``."""
    for dtype in _INDEX_DTYPES:
        if max_value <= torch.iinfo(dtype).max:
            return dtype
    raise GcnshrinkError(f"index value {max_value} does not fit in 64 bits")


def _index_bytes(max_value: int, count: int) -> int:
    return count * _index_dtype(max_value).itemsize


def _bits(t: torch.Tensor) -> np.ndarray:
    """The elements of a floating tensor as integers with the same bits, flattened."""
    return t.reshape(-1).view(_BITS_DTYPE_BY_SIZE[t.element_size()]).numpy()


def _from_bits(bits: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(bits).view(dtype)


def _entry_cost(name: str, part: str | None = None) -> int:
    key = name if part is None else f"{name}{PART_SEP}{part}"
    return len(key) + _HEADER_BYTES_PER_ARRAY


class _Plan:
    """Sizes of every candidate encoding of one tensor and the one we pick."""

    def __init__(self, name: str, tensor: torch.Tensor):
        self.name = name
        self.tensor = tensor
        item = tensor.element_size()
        self.numel = tensor.numel()
        self.dense_bytes = self.numel * item
        self.bits: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.nnz = self.numel
        self.encoding = "dense"
        self.payload = self.dense_bytes
        self.bound = self.dense_bytes
        # Scalars and empty tensors have nothing to gain and no row axis for CSR.
        if not tensor.is_floating_point() or tensor.ndim == 0 or self.numel == 0:
            return

        self.bits = _bits(tensor)
        # Nonzero means "some bit set", so -0.0 and NaN are kept and decoding is bit-exact.
        self.mask = self.bits != 0
        self.nnz = int(np.count_nonzero(self.mask))
        value_bytes = self.nnz * item
        rows = tensor.shape[0]
        cols = self.numel // rows
        bitmask_bytes = math.ceil(self.numel / 8)
        max_col = int(np.nonzero(self.mask.reshape(rows, cols))[1].max()) if self.nnz else 0
        csr_bytes = _index_bytes(self.nnz, rows + 1) + _index_bytes(max_col, self.nnz)
        self.bound = min(self.dense_bytes, value_bytes + min(bitmask_bytes, csr_bytes))

        meta = len(name) + _METADATA_BYTES_PER_TENSOR
        file_cost = {
            "dense": self.dense_bytes + _entry_cost(name),
            "bitmask": value_bytes
            + bitmask_bytes
            + _entry_cost(name, "values")
            + _entry_cost(name, "bitmask")
            + meta,
            "csr": value_bytes
            + csr_bytes
            + _entry_cost(name, "values")
            + _entry_cost(name, "indptr")
            + _entry_cost(name, "indices")
            + meta,
        }
        # min() keeps the first of equal costs, so ties go to the simplest encoding.
        self.encoding = min(file_cost, key=file_cost.get)
        self.payload = {
            "dense": self.dense_bytes,
            "bitmask": value_bytes + bitmask_bytes,
            "csr": value_bytes + csr_bytes,
        }[self.encoding]

    def arrays(self) -> dict[str, torch.Tensor]:
        """The arrays to store for the chosen encoding, keyed by their safetensors names."""
        name, t = self.name, self.tensor
        if self.encoding == "dense":
            return {name: t}
        # Boolean indexing keeps row-major order, the order both encodings promise.
        values = _from_bits(self.bits[self.mask], t.dtype)
        if self.encoding == "bitmask":
            packed = np.packbits(self.mask, bitorder="big")
            return {
                f"{name}{PART_SEP}values": values,
                f"{name}{PART_SEP}bitmask": torch.from_numpy(packed),
            }
        rows = t.shape[0]
        mask2d = self.mask.reshape(rows, self.numel // rows)
        cols = np.nonzero(mask2d)[1]  # row-major too, so column i belongs to values[i]
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(mask2d, axis=1), out=indptr[1:])
        max_col = int(cols.max()) if cols.size else 0
        return {
            f"{name}{PART_SEP}values": values,
            f"{name}{PART_SEP}indptr": torch.from_numpy(indptr).to(_index_dtype(self.nnz)),
            f"{name}{PART_SEP}indices": torch.from_numpy(cols).to(_index_dtype(max_col)),
        }


def _prepare(
    tensors: dict[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Detached, contiguous, CPU copies (optionally cast), so saving never touches the caller's."""
    if dtype is not None and not dtype.is_floating_point:
        raise GcnshrinkError(f"dtype must be a floating type such as torch.float16, got {dtype}")
    out = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise GcnshrinkError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise GcnshrinkError(f"{name!r} is a {type(t).__name__}, expected a torch.Tensor")
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        # clone() so that tensors sharing storage (tied weights) can be saved side by side.
        out[name] = t.contiguous().clone()
    return out


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise GcnshrinkError(f"metadata must map strings to strings; bad entry {key!r}")
    if SPARSE_KEY in metadata:
        raise GcnshrinkError(f"metadata key {SPARSE_KEY!r} is reserved for the sparse format")
    return metadata


def _encode(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, sparse: bool
) -> tuple[bytes, dict]:
    """Serialize to safetensors bytes; return them with the size report."""
    metadata = _check_metadata(metadata)
    plans = [_Plan(name, t) for name, t in tensors.items()]
    arrays: dict[str, torch.Tensor] = {}
    described: dict[str, list] = {}
    for plan in plans:
        if not sparse:
            plan.encoding, plan.payload = "dense", plan.dense_bytes
        if sparse and PART_SEP in plan.name:
            raise GcnshrinkError(
                f"tensor name {plan.name!r} contains {PART_SEP!r}, which the sparse format reserves"
            )
        arrays.update(plan.arrays())
        if plan.encoding != "dense":
            described[plan.name] = [plan.encoding, list(plan.tensor.shape)]
    if sparse:
        description = {"version": FORMAT_VERSION, "tensors": described}
        metadata[SPARSE_KEY] = json.dumps(description, separators=(",", ":"))
    data = safetensors.torch.save(arrays, metadata=metadata or None)

    payload = sum(p.payload for p in plans)
    bound = sum(p.bound for p in plans)
    report = {
        "format": "sparse" if sparse else "dense",
        "tensors": {
            p.name: {
                "encoding": p.encoding,
                "dtype": str(p.tensor.dtype).removeprefix("torch."),
                "shape": list(p.tensor.shape),
                "nonzeros": p.nnz,
                "bytes": p.payload,
                "bytes_bound": p.bound,
            }
            for p in plans
        },
        "bytes_file": len(data),
        "bytes_payload": payload,
        "bytes_overhead": len(data) - payload,
        "bytes_bound": bound,
        # file / bound; the size goal for sparse files is <= 1.10.
        "bound_ratio": len(data) / bound if bound else float("inf"),
    }
    return data, report


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    *,
    sparse: bool,
    dtype: torch.dtype | None = None,
    force: bool = False,
) -> dict:
    """Write ``tensors`` to a safetensors file, sparse-encoded if ``sparse``.

    ``dtype`` (e.g. ``torch.float16``) casts every floating tensor first; integer tensors are
    never cast. Returns a report: per tensor ``encoding``/``bytes``/``bytes_bound``, and totals
    ``bytes_file``, ``bytes_payload``, ``bytes_overhead``, ``bytes_bound`` and ``bound_ratio``.
    The bound is, per tensor, the cheaper of dense bytes and kept-value bytes plus the cheaper
    index encoding (bitmask or CSR); the file adds only the header on top.
    """
    data, report = _encode(_prepare(tensors, dtype), metadata, sparse)
    report["path"] = str(write_file_atomic(path, data, force=force))
    return report


def _read_header(data: bytes, path: Path) -> dict:
    """The safetensors JSON header; checked here so that bad files give one clear line."""
    if len(data) < 8:
        raise GcnshrinkError(f"{path} is not a safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise GcnshrinkError(f"{path} is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GcnshrinkError(f"{path} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise GcnshrinkError(f"{path} is not a safetensors file (header is not an object)")
    return header


def _as_int64(t: torch.Tensor, what: str) -> np.ndarray:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim != 1:
        raise ValueError(f"{what} must be a 1-D integer array")
    return t.to(torch.int64).numpy()


def _decode_one(encoding: str, shape: list, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild one dense tensor; raises ValueError on inconsistent data."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"bad shape {shape!r}")
    numel = math.prod(shape)
    values = parts["values"]
    if values.ndim != 1 or not values.is_floating_point():
        raise ValueError("values must be a 1-D floating array")
    value_bits = _bits(values)
    out = np.zeros(numel, dtype=value_bits.dtype)
    if encoding == "bitmask":
        packed = parts["bitmask"]
        if packed.dtype != torch.uint8 or packed.shape != (math.ceil(numel / 8),):
            raise ValueError("bitmask has the wrong dtype or length")
        mask = np.unpackbits(packed.numpy(), count=numel, bitorder="big").astype(bool)
        if np.count_nonzero(mask) != value_bits.size:
            raise ValueError("bitmask and values disagree on the number of nonzeros")
        out[mask] = value_bits
    else:  # csr
        if not shape or shape[0] == 0:
            raise ValueError("csr needs a non-empty first dimension")
        rows, cols = shape[0], numel // shape[0]
        indptr = _as_int64(parts["indptr"], "indptr")
        indices = _as_int64(parts["indices"], "indices")
        if (
            indptr.size != rows + 1
            or indptr[0] != 0
            or indptr[-1] != value_bits.size
            or np.any(np.diff(indptr) < 0)
            or indices.size != value_bits.size
            or (indices.size and (indices.min() < 0 or indices.max() >= cols))
        ):
            raise ValueError("indptr/indices/values are inconsistent")
        row_of_value = np.repeat(np.arange(rows), np.diff(indptr))
        out[row_of_value * cols + indices] = value_bits
    return _from_bits(out, values.dtype).reshape(shape)


_PARTS_BY_ENCODING = {"bitmask": ("values", "bitmask"), "csr": ("values", "indptr", "indices")}


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a dense or sparse file written by :func:`save_tensors` (or any safetensors file).

    Returns dense tensors (bit-exact, same dtype and shape as saved) and the user metadata.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GcnshrinkError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise GcnshrinkError(f"{path} is a directory, expected a safetensors file") from None
    header = _read_header(data, path)
    try:
        stored = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error type and sometimes others
        raise GcnshrinkError(f"{path} is not a valid safetensors file ({exc})") from None
    metadata = dict(header.get("__metadata__") or {})

    described: dict = {}
    if SPARSE_KEY in metadata:
        try:
            description = json.loads(metadata.pop(SPARSE_KEY))
            version = description["version"]
            described = description["tensors"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GcnshrinkError(f"{path}: sparse-format description is corrupt") from None
        if version != FORMAT_VERSION:
            raise GcnshrinkError(
                f"{path} uses sparse format version {version}; this gcnshrink reads "
                f"version {FORMAT_VERSION}"
            )
        if not isinstance(described, dict):
            raise GcnshrinkError(f"{path}: sparse-format description is corrupt")

    tensors = {}
    for name, entry in described.items():
        try:
            encoding, shape = entry
            if encoding not in _PARTS_BY_ENCODING:
                raise ValueError(f"unknown encoding {encoding!r}")
            parts = {}
            for part in _PARTS_BY_ENCODING[encoding]:
                key = f"{name}{PART_SEP}{part}"
                if key not in stored:
                    raise ValueError(f"missing array {key!r}")
                parts[part] = stored.pop(key)
            tensors[name] = _decode_one(encoding, shape, parts)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise GcnshrinkError(f"{path}: tensor {name!r} is corrupt ({exc})") from None
    for key, t in stored.items():
        if described and PART_SEP in key:
            raise GcnshrinkError(f"{path}: stray sparse part {key!r}")
        tensors[key] = t
    return tensors, metadata


def size_report(tensors: dict[str, torch.Tensor]) -> dict:
    """Sizes of ``tensors`` as a dense file, a sparse file, gzip -9 of the dense file, the bound.

    Everything is computed in memory; nothing is written.
    """
    prepared = _prepare(tensors, None)
    dense, _ = _encode(prepared, None, sparse=False)
    sparse, report = _encode(prepared, None, sparse=True)
    return {
        "bytes_dense": len(dense),
        "bytes_sparse": len(sparse),
        # mtime=0 keeps the gzip output (and so its size) reproducible.
        "bytes_gzip": len(gzip.compress(dense, compresslevel=9, mtime=0)),
        "bytes_bound": report["bytes_bound"],
    }
