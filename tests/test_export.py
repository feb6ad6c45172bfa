"""`export`: compacted stgcn and gcn files that reload, run in onnxruntime and match PyTorch."""

import torch

from gcnshrink.checkpoint import Checkpoint, load_checkpoint
from gcnshrink.export import export_model
from gcnshrink.layouts import get_layout
from gcnshrink.models import create_model
from gcnshrink.onnx_export import OnnxRunner
from gcnshrink.pruning import PruneSpec, bake, create_method


def pruned_checkpoint(arch: str, rate: float, **config) -> Checkpoint:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, layout=get_layout("sbu15"), **config)
    method = create_method("tcp", PruneSpec((rate,)))
    method.attach(model, model.unit_graph())
    method.on_step(1.0)
    model(model.example_input(2, 16))
    pruned = bake(model, method.masks_at(rate)).eval()
    return Checkpoint.from_model(pruned, ["a", "b", "c", "d"], {"data": None})


def test_stgcn_export_everything_and_reload(tmp_path):
    ckpt = pruned_checkpoint("stgcn", 0.9, base_width=4)
    calibration = torch.randn(6, 3, 16, 15, 2)
    summary = export_model(
        ckpt, tmp_path, calibration=calibration, onnx=True, safetensors=True, sparse=True, int8=True
    )
    kinds = {f["kind"] for f in summary["files"]}
    assert kinds == {"safetensors", "sparse safetensors", "onnx", "onnx int8"}
    onnx_entry = next(f for f in summary["files"] if f["kind"] == "onnx")
    assert onnx_entry["max_abs_diff"] <= 1e-4
    reference = ckpt.build_model()
    with torch.no_grad():
        expected = reference(calibration)
    for name in ("model.safetensors", "model.sparse.safetensors"):
        reloaded = load_checkpoint(tmp_path / name).build_model()
        with torch.no_grad():
            got = reloaded(calibration)
        # compaction may reorder nothing but removes units; logits stay within float tolerance
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())), (
            name
        )
    assert (tmp_path / "model.sparse.safetensors").stat().st_size < (
        tmp_path / "model.safetensors"
    ).stat().st_size
    onnx_logits = torch.from_numpy(OnnxRunner(tmp_path / "model.onnx")(calibration))
    assert torch.allclose(onnx_logits, expected, atol=1e-4 * max(1.0, float(expected.abs().max())))
    int8_logits = OnnxRunner(tmp_path / "model.int8.onnx")(calibration)
    assert int8_logits.shape == (6, 4)


def test_gcn_fp16_export_is_smaller_and_close(tmp_path):
    ckpt = pruned_checkpoint("gcn", 0.5, heads=2, head_width=8, key_width=4, hidden=16)
    calibration = torch.randn(5, 3, 16, 15, 2)
    export_model(ckpt, tmp_path / "fp32", calibration=calibration, onnx=True, sparse=True)
    export_model(
        ckpt, tmp_path / "fp16", calibration=calibration, onnx=True, sparse=True, fp16=True
    )
    for name in ("model.onnx", "model.sparse.safetensors"):
        assert (tmp_path / "fp16" / name).stat().st_size < (tmp_path / "fp32" / name).stat().st_size
    with torch.no_grad():
        expected = ckpt.build_model()(calibration)
    half = torch.from_numpy(OnnxRunner(tmp_path / "fp16" / "model.onnx")(calibration))
    assert torch.allclose(half, expected, atol=2e-2 * max(1.0, float(expected.abs().max())))


def test_sparse_onnx_is_smaller_and_matches_pytorch(tmp_path):
    """--sparse-onnx: mostly-zero weights as ONNX sparse initializers, same logits, smaller file,
    counted right by inspect, and refused by the int8 quantizer (which needs dense weights)."""
    import onnx
    import pytest

    from gcnshrink.errors import GcnshrinkError
    from gcnshrink.measure import onnx_counts
    from gcnshrink.onnx_export import quantize_int8

    ckpt = pruned_checkpoint("gcn", 0.98, heads=2, head_width=8, key_width=4, hidden=16)
    calibration = torch.randn(5, 3, 16, 15, 2)
    summary = export_model(ckpt, tmp_path, calibration=calibration, onnx=True, sparse_onnx=True)
    entry = next(f for f in summary["files"] if f["path"].endswith("model.sparse.onnx"))
    assert entry["max_abs_diff"] <= 1e-4
    dense_path, sparse_path = tmp_path / "model.onnx", tmp_path / "model.sparse.onnx"
    proto = onnx.load(sparse_path)
    assert len(proto.graph.sparse_initializer) > 0
    # the weights that moved took at least half their dense bytes with them (graph unchanged)
    moved = {t.values.name for t in proto.graph.sparse_initializer}
    moved_bytes = sum(
        len(i.raw_data) for i in onnx.load(dense_path).graph.initializer if i.name in moved
    )
    assert sparse_path.stat().st_size < dense_path.stat().st_size - 0.5 * moved_bytes
    with torch.no_grad():
        expected = ckpt.build_model()(calibration)
    got = torch.from_numpy(OnnxRunner(sparse_path)(calibration))
    assert torch.allclose(got, expected, atol=1e-4 * max(1.0, float(expected.abs().max())))
    dense_counts, sparse_counts = onnx_counts(dense_path), onnx_counts(sparse_path)
    assert sparse_counts["params"] == dense_counts["params"]
    assert sparse_counts["nonzero"] == dense_counts["nonzero"]
    with pytest.raises(GcnshrinkError, match="sparse weights"):
        quantize_int8(sparse_path, tmp_path / "never.onnx")
    # fp16 weights can be sparse too (values float16, behind the same Cast nodes; on a model
    # this small the Cast nodes cost more than the 2 bytes saved per kept weight)
    half = export_model(
        ckpt, tmp_path / "fp16", calibration=calibration, onnx=False, sparse_onnx=True, fp16=True
    )
    half_entry = next(f for f in half["files"] if f["path"].endswith("model.sparse.onnx"))
    assert half_entry["max_abs_diff"] < 2e-2 * max(1.0, float(expected.abs().max()))
