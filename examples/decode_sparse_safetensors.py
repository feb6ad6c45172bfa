"""Decode a gcnshrink sparse .safetensors file with nothing but numpy and safetensors.

    python examples/decode_sparse_safetensors.py model.safetensors

Prints every tensor's name, dtype, shape and number of nonzeros. The format (version 2) is
described in docs/formats.md; this script is deliberately independent of gcnshrink so it doubles
as a reference decoder. bfloat16 tensors come back as float32 (numpy has no bfloat16; the
conversion is exact).
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
from safetensors import safe_open

SPARSE_KEY = "gcnshrink.sparse"
# safetensors dtype code -> little-endian numpy dtype (BF16: its raw 16 bits)
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
    "U16": "<u2", "U32": "<u4", "U64": "<u8",
}  # fmt: skip


class Blob:
    """The one U8 array of a sparse file, read front to back."""

    def __init__(self, data: np.ndarray):
        self.data, self.offset = data, 0

    def take(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        part = self.data[self.offset : self.offset + size].view(dtype)
        self.offset += size
        return part


def decode(entry: list, blob: Blob) -> tuple[str, np.ndarray]:
    name, dtype_code, shape, encoding, *index_codes = entry
    dtype = DTYPES[dtype_code]
    numel = math.prod(shape)
    if encoding == "dense":
        flat = blob.take(dtype, numel)
    elif encoding == "bitmask":
        # One bit per element in row-major order; the first element is the high bit of byte 0.
        mask = np.unpackbits(blob.take("u1", math.ceil(numel / 8)), count=numel, bitorder="big")
        mask = mask.astype(bool)
        flat = np.zeros(numel, dtype=dtype)
        flat[mask] = blob.take(dtype, int(mask.sum()))
    elif encoding == "csr":
        # The tensor as a (rows, cols) matrix: row r owns values[indptr[r]:indptr[r + 1]],
        # at columns indices[indptr[r]:indptr[r + 1]].
        rows = shape[0]
        cols = numel // rows
        indptr = blob.take(DTYPES[index_codes[0]], rows + 1).astype(np.int64)
        indices = blob.take(DTYPES[index_codes[1]], int(indptr[-1])).astype(np.int64)
        values = blob.take(dtype, int(indptr[-1]))
        row_of_value = np.repeat(np.arange(rows), np.diff(indptr))
        flat = np.zeros(numel, dtype=dtype)
        flat[row_of_value * cols + indices] = values
    else:
        raise SystemExit(f"{name}: unknown encoding {encoding!r}")
    if dtype_code == "BF16":  # bfloat16 is the top half of a float32
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return name, flat.reshape(shape)


def main(path: str) -> dict[str, np.ndarray]:
    with safe_open(path, framework="np") as f:
        metadata = f.metadata() or {}
        arrays = {key: f.get_tensor(key) for key in f.keys()}
    if SPARSE_KEY not in metadata:
        tensors = arrays  # a dense file: nothing to decode
    else:
        manifest = json.loads(metadata[SPARSE_KEY])
        if manifest["version"] != 2:
            raise SystemExit(f"unsupported sparse format version {manifest['version']}")
        blob = Blob(arrays[SPARSE_KEY])
        tensors = dict(decode(entry, blob) for entry in manifest["tensors"])
        if blob.offset != blob.data.size:
            raise SystemExit("corrupt file: bytes left after the last tensor")

    for name in sorted(tensors):
        t = tensors[name]
        print(f"{name}\t{t.dtype}\t{list(t.shape)}\tnonzeros={np.count_nonzero(t)}")
    return tensors


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: decode_sparse_safetensors.py FILE.safetensors")
    main(sys.argv[1])
