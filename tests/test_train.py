"""The training loop's options: precision, and the refusals that come before any work."""

import pytest
import torch
from tiny_zoo import tiny_model

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning import PruneSpec, create_method
from gcnshrink.train import TrainConfig, fit, recalibrate_batchnorm


def test_bf16_autocast_trains_and_keeps_masks_in_fp32(tiny_data):
    model = tiny_model("gcn", num_classes=tiny_data.num_classes)
    model = type(model)({**model.config, "layout": tiny_data.layout.to_dict()})
    method = create_method("tcp", PruneSpec((0.9,)))
    method.attach(model, model.unit_graph())
    config = TrainConfig(epochs=1, batch_size=32, progress=False, precision="bf16")
    result = fit(model, tiny_data, config, method)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert all(m.dtype == torch.float32 for m in method.controller.current.values())
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


@pytest.mark.parametrize(
    ("precision", "message"),
    [("fp16", "needs --device cuda"), ("int4", "--precision must be one of")],
)
def test_unusable_precision_is_refused(tiny_data, precision, message):
    model = tiny_model("gcn", num_classes=tiny_data.num_classes)
    with pytest.raises(GcnshrinkError, match=message):
        fit(model, tiny_data, TrainConfig(epochs=1, progress=False, precision=precision))


def test_batchnorm_recalibration_recomputes_the_statistics_and_restores_the_model():
    """The running mean becomes the exact mean of each batch norm's input over the samples; the
    mode and momenta come back; a model without batch norm is left alone."""
    model = tiny_model("stgcn", num_classes=5).eval()
    for m in model.modules():  # the statistics are gathered in training mode: no random drops
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:  # statistics that describe some other network
        m.running_mean.fill_(100.0)
        m.running_var.fill_(1e-6)
    x = model.example_input(12, 16)
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0].detach()))
        for m in norms
    ]
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    model.eval()
    assert recalibrate_batchnorm(model, x, batch_size=len(x)) is True
    assert not model.training
    for m in norms:
        assert m.momentum == 0.1
        dims = [d for d in range(inputs[m].dim()) if d != 1]
        assert torch.allclose(m.running_mean, inputs[m].mean(dim=dims), atol=1e-5)
        assert torch.allclose(m.running_var, inputs[m].var(dim=dims), rtol=1e-4, atol=1e-6)
    # in batches: the first batch norm sees the raw input, so its mean is the same average
    first_mean = norms[0].running_mean.clone()
    recalibrate_batchnorm(model, x, batch_size=4)
    assert torch.allclose(norms[0].running_mean, first_mean, atol=1e-5)
    gcn = tiny_model("gcn", num_classes=5)
    before = {k: v.clone() for k, v in gcn.state_dict().items()}
    assert recalibrate_batchnorm(gcn, gcn.example_input(4, 16)) is False
    assert all(torch.equal(v, before[k]) for k, v in gcn.state_dict().items())
