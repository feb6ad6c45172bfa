"""Sparse safetensors: bit-exact round trips, encoding choice, index widths, size vs bound."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.sparse_format import SPARSE_KEY, load_tensors, save_tensors, size_report

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "decode_sparse_safetensors.py"


def sparse_tensor(shape, density, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Random tensor with exactly round(density * numel) nonzeros at random positions."""
    gen = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape))
    nnz = round(density * numel)
    flat = torch.zeros(numel)
    positions = torch.randperm(numel, generator=gen)[:nnz]
    # Values away from zero so that casting to float16 cannot turn a "nonzero" into zero.
    flat[positions] = torch.rand(nnz, generator=gen) + 0.5
    return flat.reshape(shape).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        # Compare bit patterns so that -0.0 and NaN count too.
        assert torch.equal(bits(a[name]), bits(b[name])), name


def manifest(path: Path) -> dict:
    return json.loads(safetensors.safe_open(path, "pt").metadata()[SPARSE_KEY])


def manifest_entries(path: Path) -> dict[str, list]:
    """name -> [dtype, shape, encoding, *index dtypes]"""
    return {entry[0]: entry[1:] for entry in manifest(path)["tensors"]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(37,), (16, 24), (8, 3, 5), (4, 6, 9, 2)])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.5, 1.0])
def test_round_trip_bit_exact(tmp_path, density, shape, dtype):
    tensors = {"w": sparse_tensor(shape, density, dtype), "b": sparse_tensor((5,), 0.4, dtype)}
    path = tmp_path / "m.safetensors"
    save_tensors(path, tensors, {"arch": "toy"}, sparse=True)
    loaded, metadata = load_tensors(path)
    assert_same(loaded, tensors)
    assert metadata == {"arch": "toy"}


def test_round_trip_awkward_values(tmp_path):
    special = torch.zeros(6, 10)
    special[0, 0] = -0.0  # all-zero bits except the sign: must survive as -0.0
    special[1, 3] = float("nan")
    special[2, 9] = float("inf")
    tensors = {
        "special": special,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "bf16": sparse_tensor((32, 32), 0.02, torch.bfloat16),
        "f64": sparse_tensor((3, 50), 0.3, torch.float64),
        "steps": torch.tensor(7),
        "index": torch.arange(12, dtype=torch.int32).reshape(3, 4),
        "flags": torch.tensor([True, False, True]),
        "unsigned": torch.arange(6).to(torch.uint16),
    }
    path = tmp_path / "m.safetensors"
    report = save_tensors(path, tensors, {}, sparse=True)
    loaded, metadata = load_tensors(path)
    assert_same(loaded, tensors)
    assert metadata == {}
    assert torch.signbit(loaded["special"][0, 0])
    for name in ("steps", "index", "flags", "unsigned", "scalar", "empty"):
        assert report["tensors"][name]["encoding"] == "dense"


def test_dense_mode_is_plain_safetensors(tmp_path):
    tensors = {"w": sparse_tensor((20, 20), 0.01), "n": torch.tensor(3)}
    path = tmp_path / "m.safetensors"
    report = save_tensors(path, tensors, {"k": "v"}, sparse=False)
    assert {t["encoding"] for t in report["tensors"].values()} == {"dense"}
    assert_same(safetensors.torch.load_file(path), tensors)
    loaded, metadata = load_tensors(path)
    assert_same(loaded, tensors)
    assert metadata == {"k": "v"}


def test_fp16_cast_applies_to_floats_only(tmp_path):
    tensors = {"w": sparse_tensor((64, 64), 0.02), "n": torch.tensor(3)}
    path = tmp_path / "m.safetensors"
    save_tensors(path, tensors, {}, sparse=True, dtype=torch.float16)
    loaded, _ = load_tensors(path)
    assert loaded["w"].dtype == torch.float16
    assert loaded["n"].dtype == torch.int64
    assert torch.equal(loaded["w"], tensors["w"].half())
    with pytest.raises(GcnshrinkError):
        save_tensors(tmp_path / "x.safetensors", tensors, {}, sparse=True, dtype=torch.int8)


def test_encoding_choice(tmp_path):
    tensors = {
        "very_sparse": sparse_tensor((256, 256), 0.001),
        "half_full": sparse_tensor((64, 64), 0.5),
        "full": sparse_tensor((64, 64), 1.0),
    }
    report = save_tensors(tmp_path / "m.safetensors", tensors, {}, sparse=True)
    encodings = {name: t["encoding"] for name, t in report["tensors"].items()}
    assert encodings["very_sparse"] == "csr"
    assert encodings["half_full"] in ("bitmask", "dense")
    assert encodings["full"] == "dense"


def test_narrowest_index_dtypes(tmp_path):
    small = sparse_tensor((100, 20), 0.02)  # 40 nonzeros, columns < 20
    medium = torch.zeros(300, 1000)
    medium[:, 999] = 1.0  # 300 nonzeros and column 999: both index arrays need 16 bits
    wide = torch.zeros(3, 70_000)
    wide[1, 69_999] = 1.0  # a column past 65535 needs 32 bits
    path = tmp_path / "m.safetensors"
    report = save_tensors(path, {"small": small, "medium": medium, "wide": wide}, {}, sparse=True)
    assert {t["encoding"] for t in report["tensors"].values()} == {"csr"}
    entries = manifest_entries(path)
    assert entries["small"] == ["F32", [100, 20], "csr", "U8", "U8"]
    assert entries["medium"] == ["F32", [300, 1000], "csr", "U16", "U16"]
    assert entries["wide"] == ["F32", [3, 70_000], "csr", "U8", "U32"]
    assert_same(load_tensors(path)[0], {"small": small, "medium": medium, "wide": wide})


def realistic_state_dict() -> dict[str, torch.Tensor]:
    """Heavily pruned 256-channel layers plus their small dense biases."""
    tensors = {}
    for i in range(6):
        tensors[f"blocks.{i}.gcn.conv.weight"] = sparse_tensor((256, 256), 0.01, seed=i)
    for i in range(3):
        tensors[f"blocks.{i}.gcn.conv.bias"] = torch.randn(256)
    return tensors


def test_size_within_ten_percent_of_bound(tmp_path):
    path = tmp_path / "m.safetensors"
    report = save_tensors(path, realistic_state_dict(), {"arch": "stgcn"}, sparse=True)
    assert report["bytes_file"] == path.stat().st_size
    assert report["bytes_file"] <= 1.10 * report["bytes_bound"], report["bound_ratio"]
    # the report separates what the caller's metadata adds from the tensors
    bare = save_tensors(tmp_path / "bare.safetensors", realistic_state_dict(), {}, sparse=True)
    assert bare["bytes_metadata"] == 0
    assert report["bytes_metadata"] == report["bytes_file"] - bare["bytes_file"] > 0
    assert report["bound_ratio_tensors"] == pytest.approx(bare["bound_ratio"])
    # and a lot smaller than the dense file
    assert report["bytes_file"] < 0.1 * size_report(realistic_state_dict())["bytes_dense"]


def test_size_report():
    sizes = size_report(realistic_state_dict())
    assert set(sizes) >= {"bytes_dense", "bytes_sparse", "bytes_gzip", "bytes_bound"}
    assert sizes["bytes_bound"] < sizes["bytes_sparse"] < sizes["bytes_dense"]
    assert sizes["bytes_gzip"] < sizes["bytes_dense"]


def load_example_module():
    spec = importlib.util.spec_from_file_location("decode_sparse_safetensors", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_decoder_matches_load_tensors(tmp_path):
    tensors = {
        "csr": sparse_tensor((200, 5, 10), 0.005),
        "bitmask": sparse_tensor((30, 30), 0.3),
        "dense": torch.randn(8),
        "steps": torch.tensor(5),
        "half": sparse_tensor((40, 40), 0.01, torch.float16),
        "brain": sparse_tensor((16, 16), 0.3, torch.bfloat16),
    }
    path = tmp_path / "m.safetensors"
    report = save_tensors(path, tensors, {"arch": "toy"}, sparse=True)
    assert {t["encoding"] for t in report["tensors"].values()} == {"csr", "bitmask", "dense"}
    expected, _ = load_tensors(path)
    expected["brain"] = expected["brain"].float()  # the example widens bfloat16 to float32

    decoded = load_example_module().main(str(path))
    assert set(decoded) == set(expected)
    for name, array in decoded.items():
        np.testing.assert_array_equal(array, expected[name].numpy())
        assert array.dtype == expected[name].numpy().dtype

    # The script also runs on its own, without gcnshrink on the path.
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(path)], capture_output=True, text=True, check=True
    )
    assert "csr\tfloat32\t[200, 5, 10]\tnonzeros=50" in run.stdout


def test_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"a": torch.ones(3)}, {}, sparse=True)
    with pytest.raises(GcnshrinkError, match="already exists"):
        save_tensors(path, {"a": torch.zeros(3)}, {}, sparse=True)
    assert torch.equal(load_tensors(path)[0]["a"], torch.ones(3))
    save_tensors(path, {"a": torch.zeros(3)}, {}, sparse=True, force=True)
    assert torch.equal(load_tensors(path)[0]["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_bad_inputs_raise_gcnshrink_error(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(GcnshrinkError, match="reserved"):
        save_tensors(path, {"a": torch.ones(3)}, {SPARSE_KEY: "x"}, sparse=True)
    with pytest.raises(GcnshrinkError, match="strings"):
        save_tensors(path, {"a": torch.ones(3)}, {"epochs": 3}, sparse=True)
    with pytest.raises(GcnshrinkError, match="cannot be saved"):
        save_tensors(path, {"a": torch.ones(3, dtype=torch.complex64)}, {}, sparse=True)
    with pytest.raises(GcnshrinkError, match="does not exist"):
        save_tensors(tmp_path / "nope" / "m.safetensors", {"a": torch.ones(3)}, {}, sparse=True)
    assert not path.exists()


def rewrite(src: Path, dst: Path, change_manifest=None, change_blob=None) -> None:
    """Copy a sparse file with its manifest and/or its data blob edited."""
    arrays = safetensors.torch.load_file(src)
    metadata = dict(safetensors.safe_open(src, "pt").metadata())
    if change_manifest:
        description = json.loads(metadata[SPARSE_KEY])
        change_manifest(description)
        metadata[SPARSE_KEY] = json.dumps(description)
    if change_blob:
        arrays[SPARSE_KEY] = change_blob(arrays[SPARSE_KEY].clone())
    safetensors.torch.save_file(arrays, dst, metadata=metadata)


def test_sparse_file_is_one_array_and_a_short_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tensors(path, realistic_state_dict(), {"arch": "stgcn"}, sparse=True)
    arrays = safetensors.torch.load_file(path)
    assert list(arrays) == [SPARSE_KEY] and arrays[SPARSE_KEY].dtype == torch.uint8
    assert manifest(path)["version"] == 2
    header_bytes = int.from_bytes(path.read_bytes()[:8], "little")
    # about 60 bytes per tensor: the manifest entry is the name, dtype, shape and encoding
    assert header_bytes < 70 * len(realistic_state_dict()) + 200


def test_corrupt_files_raise_gcnshrink_error(tmp_path):
    good = tmp_path / "good.safetensors"
    save_tensors(good, {"w": sparse_tensor((50, 50), 0.01), "b": torch.ones(4)}, {}, sparse=True)
    assert manifest_entries(good)["w"][2] == "csr"
    data = good.read_bytes()

    cases = {
        "missing": None,
        "empty": b"",
        "garbage": b"\x00\x01not a safetensors file at all" * 10,
        "truncated": data[: len(data) - 7],
        "header_too_long": (10**9).to_bytes(8, "little") + data[8:],
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(GcnshrinkError):
            load_tensors(path)

    def bad_version(d):
        d["version"] = 1

    def bad_shape(d):
        d["tensors"][0][2] = [49, 50]  # the row pointers then read one entry short

    def bad_encoding(d):
        d["tensors"][0][3] = "zip"

    def bad_dtype(d):
        d["tensors"][1][1] = "C64"

    def missing_tensor(d):
        del d["tensors"][1]  # the bias's bytes are left over

    def duplicated(d):
        d["tensors"][1][0] = "w"

    def not_a_list(d):
        d["tensors"] = {"w": d["tensors"][0]}

    changes = (bad_version, bad_shape, bad_encoding, bad_dtype, missing_tensor, duplicated)
    for change in (*changes, not_a_list):
        path = tmp_path / f"{change.__name__}.safetensors"
        rewrite(good, path, change_manifest=change)
        with pytest.raises(GcnshrinkError):
            load_tensors(path)

    def past_the_values(blob):
        blob[50] += 1  # the last row pointer (50 rows, U8) now claims one value too many
        return blob

    def short(blob):
        return blob[:-1]

    for change in (past_the_values, short):
        path = tmp_path / f"{change.__name__}.safetensors"
        rewrite(good, path, change_blob=change)
        with pytest.raises(GcnshrinkError, match="corrupt"):
            load_tensors(path)
