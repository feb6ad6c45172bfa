"""Dense and sparse safetensors files for (pruned) state dicts.

A dense file is a plain safetensors file, one array per tensor. A sparse file (format version 2)
is also a valid safetensors file, but it holds a single ``U8`` array named ``gcnshrink.sparse``:
every tensor's parts back to back, in the order of a JSON manifest stored under the same key in
the header's ``__metadata__``. One array and one short manifest entry per tensor keep the header
small, which matters for heavily pruned models: version 1 stored up to three named arrays per
tensor and its header alone was 16 % of a 0.99-pruned gcn's file (docs/formats.md).

Per floating tensor the writer picks whichever encoding needs the fewest bytes:

* ``dense``: the tensor's elements.
* ``bitmask``: one bit per element (``np.packbits``, big-endian bit order), then the nonzero
  elements in row-major order.
* ``csr``: the tensor viewed as ``(shape[0], numel // shape[0])``; row pointers, column indices
  (each in the narrowest unsigned dtype), then the nonzero elements.

"Nonzero" means "bit pattern not all zero", so ``-0.0`` and NaN are kept as values and a decoded
tensor is bit-identical to the original. The format can be decoded with numpy and the standard
library alone (examples/decode_sparse_safetensors.py).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write

# Key in ``__metadata__`` holding the manifest, and name of the one stored array.
SPARSE_KEY = "gcnshrink.sparse"
FORMAT_VERSION = 2
# A csr manifest entry also names its two index dtypes (``,"U8","U16"`` escaped inside the
# header's JSON string): the only difference in header cost between encodings.
_CSR_MANIFEST_BYTES = 16

# safetensors dtype code -> (torch dtype, little-endian numpy dtype with the same bits). bfloat16
# travels as its 16 raw bits because numpy has no bfloat16.
_DTYPES = {
    "F64": (torch.float64, "<f8"),
    "F32": (torch.float32, "<f4"),
    "F16": (torch.float16, "<f2"),
    "BF16": (torch.bfloat16, "<i2"),
    "I64": (torch.int64, "<i8"),
    "I32": (torch.int32, "<i4"),
    "I16": (torch.int16, "<i2"),
    "I8": (torch.int8, "i1"),
    "U8": (torch.uint8, "u1"),
    "BOOL": (torch.bool, "?"),
}
_DTYPES.update(  # torch >= 2.3 has these
    {
        f"U{bits}": (getattr(torch, f"uint{bits}"), f"<u{bits // 8}")
        for bits in (16, 32, 64)
        if hasattr(torch, f"uint{bits}")
    }
)
_CODE_BY_TORCH = {torch_dtype: code for code, (torch_dtype, _) in _DTYPES.items()}
# Unsigned dtypes for index arrays, narrowest first.
_INDEX_DTYPES = {"U8": "<u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}
# Integer dtype with the same width as a float dtype: masks are computed on these bit views, so
# "nonzero" is about bits and the result is exact by construction.
_BITS_DTYPE_BY_SIZE = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def check_output_file(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse, before encoding, a file that exists (without ``force``) or a missing folder: the
    folder of an output is the user's choice, and a typo in it should not create a new tree."""
    path = Path(path)
    if path.is_dir():
        raise GcnshrinkError(f"{path} is a directory, expected a file path")
    if not path.parent.is_dir():
        raise GcnshrinkError(f"directory {path.parent} does not exist")
    if path.exists() and not force:
        raise GcnshrinkError(f"{path} already exists; use --force to overwrite it")
    return path


def _index_code(max_value: int) -> str:
    """Narrowest unsigned dtype code that holds ``max_value``."""
    for code, dtype in _INDEX_DTYPES.items():
        if max_value <= np.iinfo(dtype).max:
            return code
    raise GcnshrinkError(f"index value {max_value} does not fit in 64 bits")


def _elements(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements, flattened, as the little-endian numpy dtype of its code."""
    flat = t.reshape(-1)
    if t.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().astype(_DTYPES[_CODE_BY_TORCH[t.dtype]][1], copy=False)


class _Plan:
    """Sizes of every candidate encoding of one tensor and the one we pick."""

    def __init__(self, name: str, tensor: torch.Tensor):
        if tensor.dtype not in _CODE_BY_TORCH:
            raise GcnshrinkError(f"{name!r} has dtype {tensor.dtype}, which cannot be saved")
        self.name = name
        self.tensor = tensor
        self.code = _CODE_BY_TORCH[tensor.dtype]
        self.elements = _elements(tensor)
        item = tensor.element_size()
        self.numel = tensor.numel()
        self.dense_bytes = self.numel * item
        self.mask: np.ndarray | None = None
        self.nnz = self.numel
        self.encoding = "dense"
        self.payload = self.dense_bytes
        self.bound = self.dense_bytes
        # Scalars and empty tensors have nothing to gain and no row axis for CSR.
        if not tensor.is_floating_point() or tensor.ndim == 0 or self.numel == 0:
            return

        # Nonzero means "some bit set", so -0.0 and NaN are kept and decoding is bit-exact.
        self.mask = self.elements.view(_BITS_DTYPE_BY_SIZE[item]) != 0
        self.nnz = int(np.count_nonzero(self.mask))
        value_bytes = self.nnz * item
        rows = tensor.shape[0]
        cols = self.numel // rows
        bitmask_bytes = math.ceil(self.numel / 8)
        max_col = int(np.nonzero(self.mask.reshape(rows, cols))[1].max()) if self.nnz else 0
        self.indptr_code, self.indices_code = _index_code(self.nnz), _index_code(max_col)
        csr_bytes = (rows + 1) * np.dtype(_INDEX_DTYPES[self.indptr_code]).itemsize
        csr_bytes += self.nnz * np.dtype(_INDEX_DTYPES[self.indices_code]).itemsize
        payloads = {
            "dense": self.dense_bytes,
            "bitmask": value_bytes + bitmask_bytes,
            "csr": value_bytes + csr_bytes,
        }
        self.bound = min(payloads.values())
        file_cost = dict(payloads, csr=payloads["csr"] + _CSR_MANIFEST_BYTES)
        # min() keeps the first of equal costs, so ties go to the simplest encoding.
        self.encoding = min(file_cost, key=file_cost.get)
        self.payload = payloads[self.encoding]

    def manifest_entry(self) -> list:
        entry = [self.name, self.code, list(self.tensor.shape), self.encoding]
        if self.encoding == "csr":
            entry += [self.indptr_code, self.indices_code]
        return entry

    def parts(self) -> list[bytes]:
        """The bytes to store, in order: index arrays first (they give the number of values)."""
        if self.encoding == "dense":
            return [self.elements.tobytes()]
        values = self.elements[self.mask].tobytes()  # boolean indexing keeps row-major order
        if self.encoding == "bitmask":
            return [np.packbits(self.mask, bitorder="big").tobytes(), values]
        rows = self.tensor.shape[0]
        mask2d = self.mask.reshape(rows, self.numel // rows)
        cols = np.nonzero(mask2d)[1]  # row-major too, so column i belongs to value i
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(mask2d, axis=1), out=indptr[1:])
        return [
            indptr.astype(_INDEX_DTYPES[self.indptr_code]).tobytes(),
            cols.astype(_INDEX_DTYPES[self.indices_code]).tobytes(),
            values,
        ]


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


def _canonical_header(data: bytes) -> bytes:
    """The same file with its metadata keys sorted: the safetensors library writes them in hash
    order, which changes from run to run, so identical exports would differ in their bytes. Data
    offsets are relative to the end of the header, so only the header and its length change."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the library pads the header to a multiple of 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def _encode(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, sparse: bool
) -> tuple[bytes, dict]:
    """Serialize to safetensors bytes; return them with the size report."""
    metadata = _check_metadata(metadata)
    plans = [_Plan(name, t) for name, t in tensors.items()]
    if sparse:
        blob = b"".join(part for plan in plans for part in plan.parts())
        manifest = {"version": FORMAT_VERSION, "tensors": [p.manifest_entry() for p in plans]}
        metadata[SPARSE_KEY] = json.dumps(manifest, separators=(",", ":"))
        arrays = {SPARSE_KEY: torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy())}
    else:
        for plan in plans:
            plan.encoding, plan.payload = "dense", plan.dense_bytes
        arrays = {plan.name: plan.tensor for plan in plans}
    data = _canonical_header(safetensors.torch.save(arrays, metadata=metadata or None))
    # what the caller's metadata (gcnshrink's config, classes, provenance) adds to a sparse file:
    # the size goal is about tensors, so the report separates the two. Measured by serializing
    # the (small) sparse file again without it; dense files have no size goal and skip this.
    metadata_bytes = None
    if sparse:
        manifest_only = {SPARSE_KEY: metadata[SPARSE_KEY]}
        stripped = _canonical_header(safetensors.torch.save(arrays, manifest_only))
        metadata_bytes = len(data) - len(stripped)

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
        "bytes_metadata": metadata_bytes,
        # file / bound, with and without the caller's metadata; the size goal for the tensors of
        # a sparse file is <= 1.10
        "bound_ratio": len(data) / bound if bound else float("inf"),
        "bound_ratio_tensors": (
            None
            if metadata_bytes is None
            else (len(data) - metadata_bytes) / bound
            if bound
            else float("inf")
        ),
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
    ``bytes_file``, ``bytes_payload``, ``bytes_overhead``, ``bytes_bound``, ``bound_ratio``, and
    for sparse files ``bytes_metadata`` (what ``metadata`` adds) and ``bound_ratio_tensors``
    (without it; both None for dense files).
    The bound is, per tensor, the cheaper of dense bytes and kept-value bytes plus the cheaper
    index encoding (bitmask or CSR); the file adds only the header on top.
    """
    path = check_output_file(path, force)
    data, report = _encode(_prepare(tensors, dtype), metadata, sparse)
    report["path"] = str(atomic_write(path, data, force=force))
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise GcnshrinkError(f"{path} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise GcnshrinkError(f"{path} is not a safetensors file (header is not an object)")
    return header


class _Reader:
    """Reads the parts of a sparse blob in order; raises ValueError past its end."""

    def __init__(self, blob: np.ndarray):
        self.blob = blob
        self.offset = 0

    def take(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.offset + size > self.blob.size:
            raise ValueError("data ends before the manifest does")
        part = self.blob[self.offset : self.offset + size].view(dtype).copy()
        self.offset += size
        return part


def _decode_one(entry: list, reader: _Reader) -> tuple[str, torch.Tensor]:
    """Rebuild one tensor from its manifest entry; raises ValueError on inconsistent data."""
    if not isinstance(entry, list) or len(entry) < 4:
        raise ValueError(f"bad manifest entry {entry!r}")
    name, code, shape, encoding, *index_codes = entry
    if not isinstance(name, str) or code not in _DTYPES:
        raise ValueError(f"bad name or dtype in {entry[:2]!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"{name!r}: bad shape {shape!r}")
    torch_dtype, np_dtype = _DTYPES[code]
    numel = math.prod(shape)
    if encoding == "dense":
        elements = reader.take(np_dtype, numel)
    elif encoding == "bitmask" and torch_dtype.is_floating_point:
        packed = reader.take("u1", math.ceil(numel / 8))
        mask = np.unpackbits(packed, count=numel, bitorder="big").astype(bool)
        elements = np.zeros(numel, dtype=np_dtype)
        elements[mask] = reader.take(np_dtype, int(np.count_nonzero(mask)))
    elif encoding == "csr" and torch_dtype.is_floating_point:
        if not shape or shape[0] == 0 or len(index_codes) != 2:
            raise ValueError(f"{name!r}: csr needs a first dimension and two index dtypes")
        if not all(c in _INDEX_DTYPES for c in index_codes):
            raise ValueError(f"{name!r}: bad index dtypes {index_codes!r}")
        rows, cols = shape[0], numel // shape[0]
        indptr = reader.take(_INDEX_DTYPES[index_codes[0]], rows + 1).astype(np.int64)
        nnz = int(indptr[-1])
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or nnz > numel:
            raise ValueError(f"{name!r}: row pointers are inconsistent")
        indices = reader.take(_INDEX_DTYPES[index_codes[1]], nnz).astype(np.int64)
        if indices.size and indices.max() >= cols:
            raise ValueError(f"{name!r}: a column index is out of range")
        row_of_value = np.repeat(np.arange(rows), np.diff(indptr))
        elements = np.zeros(numel, dtype=np_dtype)
        elements[row_of_value * cols + indices] = reader.take(np_dtype, nnz)
    else:
        raise ValueError(f"{name!r}: unknown encoding {encoding!r} for {code}")
    tensor = torch.from_numpy(elements)
    if torch_dtype == torch.bfloat16:
        tensor = tensor.view(torch.bfloat16)
    return name, tensor.reshape(shape)


# A sparse file decodes to more bytes than it holds (that is its point), but a few kilobytes that
# claim terabytes of zeros are an attack: decoding is refused beyond this many times the file's
# size, or this floor for small files (a 0.999-pruned model decodes to ~400x its file).
MAX_DECODE_RATIO = 1024
MAX_DECODED_BYTES_FLOOR = 256 * 2**20


def _declared_bytes(entry: object) -> int:
    """Bytes the manifest entry's tensor decodes to; 0 for malformed entries (refused later)."""
    try:
        _, code, shape = entry[:3]
        if code in _DTYPES and all(isinstance(d, int) and d >= 0 for d in shape):
            return math.prod(shape) * np.dtype(_DTYPES[code][1]).itemsize
    except (TypeError, ValueError, KeyError):
        pass
    return 0


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
    if SPARSE_KEY not in metadata:
        return stored, metadata

    try:
        manifest = json.loads(metadata.pop(SPARSE_KEY))
        version, entries = manifest["version"], manifest["tensors"]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
        raise GcnshrinkError(f"{path}: sparse-format manifest is corrupt") from None
    if version != FORMAT_VERSION:
        raise GcnshrinkError(
            f"{path} uses sparse format version {version}; this gcnshrink reads "
            f"version {FORMAT_VERSION} (re-export the model with this version)"
        )
    blob = stored.pop(SPARSE_KEY, None)
    if not isinstance(entries, list) or blob is None or blob.dtype != torch.uint8 or stored:
        raise GcnshrinkError(f"{path}: sparse file must hold one U8 array {SPARSE_KEY!r}")
    reader = _Reader(blob.reshape(-1).numpy())
    declared = sum(_declared_bytes(entry) for entry in entries)
    limit = max(MAX_DECODED_BYTES_FLOOR, MAX_DECODE_RATIO * len(data))
    if declared > limit:
        raise GcnshrinkError(
            f"{path}: sparse data would decode to {declared:,} bytes from a {len(data):,}-byte "
            f"file (more than {MAX_DECODE_RATIO}x); refusing to allocate it"
        )
    tensors = {}
    for entry in entries:
        try:
            name, tensor = _decode_one(entry, reader)
        except (ValueError, TypeError, RuntimeError, MemoryError, OverflowError) as exc:
            raise GcnshrinkError(f"{path}: sparse data is corrupt ({exc})") from None
        if name in tensors:
            raise GcnshrinkError(f"{path}: tensor {name!r} appears twice in the manifest")
        tensors[name] = tensor
    if reader.offset != reader.blob.size:
        raise GcnshrinkError(f"{path}: sparse data is corrupt (bytes left after the manifest)")
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
