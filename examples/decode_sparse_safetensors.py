"""Decode a gcnshrink sparse .safetensors file with nothing but numpy and safetensors.

    python examples/decode_sparse_safetensors.py model.safetensors

Prints every tensor's name, dtype, shape and number of nonzeros. The format is described in
docs/formats.md; this script is deliberately independent of gcnshrink so it doubles as a
reference decoder. (numpy has no bfloat16, so files saved in bfloat16 need the torch loader.)
"""

from __future__ import annotations

import json
import sys

import numpy as np
from safetensors.numpy import load_file

SPARSE_KEY = "gcnshrink.sparse"


def read_metadata(path: str) -> dict[str, str]:
    """The header's ``__metadata__``: 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    return header.get("__metadata__") or {}


def decode_bitmask(values: np.ndarray, bitmask: np.ndarray, shape: list[int]) -> np.ndarray:
    numel = int(np.prod(shape))
    # One bit per element in row-major order; the first element is the high bit of byte 0.
    mask = np.unpackbits(bitmask, count=numel, bitorder="big").astype(bool)
    dense = np.zeros(numel, dtype=values.dtype)
    dense[mask] = values
    return dense.reshape(shape)


def decode_csr(
    values: np.ndarray, indptr: np.ndarray, indices: np.ndarray, shape: list[int]
) -> np.ndarray:
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    dense = np.zeros((rows, cols), dtype=values.dtype)
    # Row r owns values[indptr[r]:indptr[r + 1]], at columns indices[indptr[r]:indptr[r + 1]].
    row_of_value = np.repeat(np.arange(rows), np.diff(indptr.astype(np.int64)))
    dense[row_of_value, indices.astype(np.int64)] = values
    return dense.reshape(shape)


def main(path: str) -> dict[str, np.ndarray]:
    arrays = load_file(path)
    metadata = read_metadata(path)
    described = {}
    if SPARSE_KEY in metadata:
        description = json.loads(metadata[SPARSE_KEY])
        if description["version"] != 1:
            raise SystemExit(f"unsupported sparse format version {description['version']}")
        described = description["tensors"]

    tensors = {}
    for name, (encoding, shape) in described.items():
        values = arrays.pop(f"{name}::values")
        if encoding == "bitmask":
            tensors[name] = decode_bitmask(values, arrays.pop(f"{name}::bitmask"), shape)
        elif encoding == "csr":
            indptr = arrays.pop(f"{name}::indptr")
            indices = arrays.pop(f"{name}::indices")
            tensors[name] = decode_csr(values, indptr, indices, shape)
        else:
            raise SystemExit(f"{name}: unknown encoding {encoding!r}")
    tensors.update(arrays)  # everything left was stored dense

    for name in sorted(tensors):
        t = tensors[name]
        print(f"{name}\t{t.dtype}\t{list(t.shape)}\tnonzeros={np.count_nonzero(t)}")
    return tensors


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: decode_sparse_safetensors.py FILE.safetensors")
    main(sys.argv[1])
