"""`export`: compacted stgcn and gcn files that reload, run in onnxruntime and match PyTorch."""

import torch

from gcnshrink.checkpoint import Checkpoint, load_checkpoint
from gcnshrink.export import export_model
from gcnshrink.layouts import get_layout
from gcnshrink.models import create_model
from gcnshrink.onnx_export import OnnxRunner
from gcnshrink.pruning import PruneSpec, make_method


def pruned_checkpoint(arch: str, rate: float, **config) -> Checkpoint:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, layout=get_layout("sbu15"), **config)
    method = make_method("tcp", PruneSpec(rate))
    method.attach(model)
    model(model.example_input(2, 16))
    pruned = method.deliverable().eval()
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
