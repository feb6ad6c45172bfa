"""The training loop's options: precision, and the refusals that come before any work."""

import pytest
import torch
from tiny_zoo import tiny_model

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning import PruneSpec, create_method
from gcnshrink.train import TrainConfig, fit


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
