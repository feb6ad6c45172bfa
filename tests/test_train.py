"""The training loop: precision, the refusals that come before any work, batch-norm
recalibration, and the selection of the weights kept (best epoch, or the last epochs averaged)."""

from types import SimpleNamespace

import pytest
import torch
from tiny_zoo import tiny_model

from gcnshrink.checkpoint import read_torch_file
from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning import PruneSpec, create_method
from gcnshrink.train import (
    TrainConfig,
    ValidationSelection,
    average_states,
    fit,
    recalibrate_batchnorm,
)


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


class _AveragingStub:
    """The parts of the method contract that ValidationSelection uses: one rate, no masks."""

    multi_rate, recalibrate_batchnorm = True, False
    spec = SimpleNamespace(rates=(0.5,))

    def __init__(self, window: int):
        self.window = window

    def averaged_epochs(self) -> int:
        return self.window

    def ready(self) -> bool:
        return True

    def selection_rates(self) -> tuple[float, ...]:
        return (0.5,)

    def selection_start(self) -> float:
        return 0.0

    def masks_at(self, rate: float) -> dict:
        return {}

    def scales_at(self, rate: float) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _select(
    weights: list[torch.Tensor], window: int, *, stop_after: int | None = None, state=None
) -> tuple[ValidationSelection, torch.nn.Module]:
    """Run the selection over epochs whose linear 2-class model has these weights; x = the
    identity, so a weight matrix is right on a sample when its diagonal entry wins its column.
    ``stop_after``: stop there without ending the fit; ``state``: resume from this state dict."""
    data = SimpleNamespace(x_val=torch.eye(2), y_val=torch.tensor([0, 1]), num_classes=2)
    model = torch.nn.Linear(2, 2, bias=False)
    loop = SimpleNamespace(model=model, epoch=0, config=SimpleNamespace(epochs=len(weights)))
    selection = ValidationSelection(data, _AveragingStub(window))
    if state is not None:
        selection.load_state_dict(state)
        loop.epoch = state["best"]["epoch"]  # (in these runs the last epoch is the best so far)
    for weight in weights[loop.epoch : stop_after]:
        with torch.no_grad():
            model.weight.copy_(weight)
        loop.epoch += 1
        selection.on_epoch_end(loop, {})
    if stop_after is None:
        selection.on_fit_end(loop)
    return selection, model


# each wrong on one sample (50 %), their average right on both (100 %)
LEFT = torch.eye(2) + torch.tensor([[0.0, 0.0], [1.5, 0.0]])
RIGHT = torch.eye(2) + torch.tensor([[0.0, 1.5], [0.0, 0.0]])


def test_the_average_of_the_last_epochs_is_kept_when_it_beats_every_epoch():
    selection, model = _select([RIGHT, LEFT, RIGHT, LEFT], window=2)
    assert selection.best["val_accuracy"] == 1.0
    assert (selection.best["epoch"], selection.best["averaged_epochs"]) == (4, 2)
    torch.testing.assert_close(model.weight.detach(), (LEFT + RIGHT) / 2)
    # without averaging the same epochs give the last of the 50 % ones
    selection, model = _select([RIGHT, LEFT, RIGHT, LEFT], window=1)
    assert (selection.best["val_accuracy"], selection.best["averaged_epochs"]) == (0.5, 1)
    torch.testing.assert_close(model.weight.detach(), LEFT)


def test_an_average_that_only_ties_the_best_epoch_is_not_kept():
    # epoch 2 is right on both samples; the average of epochs 1-2 is too, and loses the tie
    selection, model = _select([LEFT, torch.eye(2)], window=2)
    assert (selection.best["epoch"], selection.best["averaged_epochs"]) == (2, 1)
    torch.testing.assert_close(model.weight.detach(), torch.eye(2))
    # fewer epochs than the window: nothing to average
    selection, _ = _select([LEFT], window=3)
    assert selection.best["averaged_epochs"] == 1


def test_average_states_averages_floats_and_keeps_counters_from_the_last():
    first = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    last = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    mean = average_states([first, last])
    torch.testing.assert_close(mean["w"], torch.tensor([2.0, 4.0]))
    assert mean["n"].item() == 7 and mean["n"].dtype == torch.int64


def test_a_resumed_selection_averages_the_epochs_before_the_interruption(tmp_path):
    epochs = [RIGHT, LEFT, RIGHT, LEFT]
    interrupted, _ = _select(epochs, window=2, stop_after=3)
    torch.save(interrupted.state_dict(), tmp_path / "state.pt")  # what PeriodicState writes
    state = read_torch_file(tmp_path / "state.pt")
    resumed, model = _select(epochs, window=2, state=state)
    assert (resumed.best["epoch"], resumed.best["averaged_epochs"]) == (4, 2)
    torch.testing.assert_close(model.weight.detach(), (LEFT + RIGHT) / 2)
