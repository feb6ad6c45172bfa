"""ONNX export of a small GCN-like model: parity, dynamic batch, fp16, int8, metadata."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxRunner,
    check_parity,
    export_onnx,
    onnx_latency_ms,
    quantize_int8,
)

C, T, V, M, CLASSES = 3, 16, 6, 2, 5


class ToyGCN(nn.Module):
    """Uses every op the real models do: einsum over a (K, V, V) adjacency buffer, softmax
    attention, 1x1 and (9, 1) convs, batch norm, view/reshape/permute, index_select, mean."""

    def __init__(self, hidden: int = 16, k: int = 3):
        super().__init__()
        self.k, self.hidden = k, hidden
        self.register_buffer("adjacency", torch.rand(k, V, V))
        self.register_buffer("kept_joints", torch.tensor([0, 2, 3, 5]))
        self.data_bn = nn.BatchNorm1d(C * V)
        self.spatial = nn.Conv2d(C, hidden * k, 1)
        self.query = nn.Conv2d(hidden, 8, 1)
        self.temporal = nn.Conv2d(hidden, hidden, (9, 1), padding=(4, 0))
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden * 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)
        x = self.data_bn(x).view(n * m, v, c, t).permute(0, 2, 3, 1)
        y = self.spatial(x).view(n * m, self.k, self.hidden, t, v)
        y = torch.einsum("nkctv,kvw->nctw", y, self.adjacency)
        q = self.query(y).mean(2)
        attention = torch.softmax(torch.matmul(q.transpose(1, 2), q), dim=-1)
        y = y + torch.einsum("nctv,nvw->nctw", y, attention)
        y = torch.relu(self.bn(self.temporal(y)))
        y = torch.index_select(y, 3, self.kept_joints).mean(2)
        y = y.reshape(n, m, -1).mean(1)
        return self.fc(torch.flatten(y, 1))


def make_model() -> ToyGCN:
    torch.manual_seed(0)
    model = ToyGCN()
    # Non-trivial batch-norm statistics, so that eval mode really differs from training mode.
    with torch.no_grad():
        for bn in (model.data_bn, model.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model


def skeletons(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, C, T, V, M, generator=torch.Generator().manual_seed(seed))


METADATA = {"arch": "toy-gcn", "classes": '["a","b","c","d","e"]', "config": "{}"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fp32 and fp16 exports, done once: each export takes a few seconds."""
    out = tmp_path_factory.mktemp("onnx")
    model = make_model()
    model.train()  # export must switch to eval itself and switch back afterwards
    export_onnx(model, skeletons(1), out / "model.onnx", metadata=METADATA)
    assert model.training
    export_onnx(model, skeletons(3), out / "model-fp16.onnx", fp16=True, metadata=METADATA)
    return model, out


def test_graph_is_valid_with_dynamic_batch(exported):
    _, out = exported
    proto = onnx.load(out / "model.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # no stack traces or source paths in the file
    assert all(not node.metadata_props for node in proto.graph.node)
    assert b"test_onnx_export.py" not in (out / "model.onnx").read_bytes()


@pytest.mark.parametrize("batch", [1, 7])
def test_parity(exported, batch):
    model, out = exported
    diff = check_parity(model, out / "model.onnx", skeletons(batch, seed=batch))
    assert diff < 1e-4
    assert model.training  # check_parity restores the caller's mode too


def test_runner_batches_and_casts(exported):
    model, out = exported
    runner = OnnxRunner(out / "model.onnx", batch_size=4)
    x = skeletons(10)
    logits = runner(x.numpy().astype(np.float64))  # cast to the model's float32
    assert logits.shape == (10, CLASSES) and logits.dtype == np.float32
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    model.train()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    with pytest.raises(GcnshrinkError, match="axis 3"):
        runner(torch.randn(2, C, T, V + 1, M))
    with pytest.raises(GcnshrinkError, match=r"\(N, C, T, V, M\)"):
        runner(torch.randn(2, C, T, V))


def test_metadata_round_trip(exported):
    _, out = exported
    assert OnnxRunner(out / "model.onnx").metadata == METADATA
    assert OnnxRunner(out / "model-fp16.onnx").metadata == METADATA


def test_fp16_file_is_half_size_and_close(exported):
    model, out = exported
    fp32, fp16 = onnx.load(out / "model.onnx"), onnx.load(out / "model-fp16.onnx")
    assert all(i.data_type != onnx.TensorProto.FLOAT for i in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Every weight byte halves; the graph structure around them stays the same size.
    weight_bytes = sum(len(i.raw_data) for i in fp32.graph.initializer if i.data_type == 1)
    fp32_size = (out / "model.onnx").stat().st_size
    fp16_size = (out / "model-fp16.onnx").stat().st_size
    assert fp16_size < fp32_size - 0.4 * weight_bytes
    x = skeletons(5)
    logits = OnnxRunner(out / "model-fp16.onnx")(x)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    model.train()
    relative = np.abs(logits - expected).max() / np.abs(expected).max()
    assert relative < 1e-2
    with pytest.raises(GcnshrinkError, match="differs from PyTorch"):
        check_parity(model, out / "model-fp16.onnx", x, atol=1e-9)


def test_int8_file_runs(exported):
    model, out = exported
    quantize_int8(out / "model.onnx", out / "model-int8.onnx")
    proto = onnx.load(out / "model-int8.onnx")
    assert any(init.data_type == onnx.TensorProto.INT8 for init in proto.graph.initializer)
    runner = OnnxRunner(out / "model-int8.onnx")
    assert runner.metadata == METADATA
    x = skeletons(7)
    logits = runner(x)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    model.train()
    assert logits.shape == (7, CLASSES)
    assert np.abs(logits - expected).max() < 0.1 * np.abs(expected).max()
    with pytest.raises(GcnshrinkError, match="float16"):
        quantize_int8(out / "model-fp16.onnx", out / "never.onnx")


def test_latency_is_positive(exported):
    _, out = exported
    assert onnx_latency_ms(out / "model.onnx", skeletons(2), repeats=3, warmup=1) > 0


def test_refuses_to_overwrite(exported, tmp_path):
    model, out = exported
    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(GcnshrinkError, match="already exists"):
        export_onnx(model, skeletons(2), target)
    with pytest.raises(GcnshrinkError, match="already exists"):
        quantize_int8(out / "model.onnx", target)
    assert target.read_bytes() == b"keep me"
    quantize_int8(out / "model.onnx", target, force=True)
    assert OnnxRunner(target).metadata == METADATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left


def test_bad_inputs(tmp_path):
    model = make_model()
    with pytest.raises(GcnshrinkError, match="opset"):
        export_onnx(model, skeletons(2), tmp_path / "m.onnx", opset=13)
    with pytest.raises(GcnshrinkError, match=r"\(N, C, T, V, M\)"):
        export_onnx(model, torch.randn(2, C, T, V), tmp_path / "m.onnx")
    with pytest.raises(GcnshrinkError, match="strings"):
        export_onnx(model, skeletons(2), tmp_path / "m.onnx", metadata={"epochs": 3})
    with pytest.raises(GcnshrinkError, match="does not exist"):
        OnnxRunner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"this is not protobuf")
    with pytest.raises(GcnshrinkError):
        OnnxRunner(tmp_path / "junk.onnx")
    with pytest.raises(GcnshrinkError):
        quantize_int8(tmp_path / "junk.onnx", tmp_path / "q.onnx")
    assert not (tmp_path / "m.onnx").exists()
