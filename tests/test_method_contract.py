"""The method contract: a method written and registered in this file alone runs through every
command (prune from the API and the CLI with its own generated flag, multi-rate checkpoints and
extract, sweep, compact, export), plug-ins load through the entry-point group, and an interrupted
fine-tune resumes to the same result."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass

import pytest
import torch

from gcnshrink import api
from gcnshrink.checkpoint import load_checkpoint
from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning import (
    HardMask,
    PruneSpec,
    PruningMethod,
    available_methods,
    create_method,
    option,
    register_method,
    unregister_method,
)
from gcnshrink.pruning import registry as method_registry
from gcnshrink.pruning.budget import topk_masks
from gcnshrink.train import (
    Callback,
    MethodHooks,
    PeriodicState,
    TrainConfig,
    TrainingLoop,
    ValidationSelection,
    fit,
)


@dataclass
class PowerOptions:
    power: float = option(1.0, "Rank weights by |w| to this power.")


class PowerMagnitude(PruningMethod):
    """A toy multi-rate method: keep the largest |w|^power at whatever rate is asked."""

    name = "toy-power"
    Options = PowerOptions
    multi_rate = True

    def setup(self) -> None:
        self.steps = 0
        first = topk_masks(self.scores(), min(self.spec.rates), self.spec.scope)
        self.parametrizations = {}
        for name, mask in first.items():
            self.parametrizations[name] = HardMask(mask)
            self.register(name, self.parametrizations[name])

    def scores(self):
        return {n: w.detach().abs() ** self.options.power for n, w in self.latent().items()}

    def on_step(self, progress: float) -> None:
        self.steps += 1

    def compute_masks(self, rate: float):
        return topk_masks(self.scores(), rate, self.spec.scope)

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


@pytest.fixture
def toy_method():
    register_method(PowerMagnitude)
    yield PowerMagnitude
    unregister_method(PowerMagnitude.name)


def test_registered_method_is_available_with_its_options(toy_method):
    assert "toy-power" in available_methods()
    method = create_method("toy-power", PruneSpec((0.5, 0.9)), {"power": 2})
    assert method.options.power == 2.0
    assert method.describe() == {"method": "toy-power", "power": 2.0}
    with pytest.raises(GcnshrinkError, match="--power applies to toy-power only"):
        create_method("mp", PruneSpec((0.9,)), {"power": 2.0})


def test_toy_method_prunes_from_the_cli_with_its_own_flag(
    toy_method, cli, tmp_path, tiny_spec, trained_gcn
):
    out = tmp_path / "toy.pt"
    result = cli(
        "prune", trained_gcn[0], "--data", tiny_spec, "--method", "toy-power", "--power", "2",
        "--rate", "0.8", "--epochs", "1", "--batch-size", "32", "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "toy-power" and summary["options"] == {
        "method": "toy-power",
        "power": 2.0,
    }
    assert summary["realized_rate"] == pytest.approx(0.8, abs=1e-4)
    help_text = cli("prune", "--help").stdout
    assert "--power" in help_text
    refused = cli(
        "prune", trained_gcn[0], "--data", tiny_spec, "--method", "mp", "--power", "2",
        "-o", tmp_path / "no.pt",
    )  # fmt: skip
    assert refused.exit_code == 2 and "--power applies to toy-power only" in refused.stderr
    assert not (tmp_path / "no.pt").exists()


def test_multi_rate_checkpoint_serves_any_rate_and_goes_through_compact_and_export(
    toy_method, cli, tmp_path, tiny_spec, tiny_data, trained_gcn
):
    outcome = api.prune(
        trained_gcn[0], tiny_data, method="toy-power", rates=[0.5, 0.9], epochs=1,
        batch_size=32, progress=False,
    )  # fmt: skip
    ckpt = outcome.checkpoint
    assert ckpt.pruning["multi_rate"] and ckpt.pruning["rates"] == [0.5, 0.9]
    steps = -(-len(tiny_data.x_train) // 32)  # one epoch of batches of 32
    assert ckpt.method_state == {"steps": steps}
    assert set(outcome.summary["accuracy_by_rate"]) == {"0.5", "0.9"}
    multi = tmp_path / "multi.pt"
    from gcnshrink.checkpoint import save_checkpoint

    save_checkpoint(ckpt, multi)
    assert load_checkpoint(multi).method_state == {"steps": steps}
    # a rate it was not trained for, extracted without data or training
    extracted = tmp_path / "r0.7.pt"
    result = cli("extract", multi, "--rate", "0.7", "-o", extracted, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["realized_rate"] == pytest.approx(0.7, abs=1e-4)
    several = cli("extract", multi, "--rates", "0.6,0.95", "-o", tmp_path / "many", "--json")
    assert several.exit_code == 0, several.output
    assert [s["rate"] for s in json.loads(several.stdout)] == [0.6, 0.95]
    compacted = tmp_path / "small.pt"
    result = cli("compact", extracted, "--data", tiny_spec, "-o", compacted, "--json")
    assert result.exit_code == 0, result.output
    result = cli(
        "export", extracted, "--data", tiny_spec, "--onnx", "--sparse", "-o", tmp_path / "x"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "model.onnx").is_file()


def test_extract_refuses_a_single_rate_checkpoint(pruned_gcn):
    with pytest.raises(GcnshrinkError, match="not a multi-rate checkpoint"):
        api.extract(pruned_gcn[0], 0.5)


def test_sweep_trains_a_multi_rate_method_once(
    toy_method, tmp_path, tiny_spec, trained_gcn, monkeypatch
):
    import gcnshrink.prune

    fine_tunes = []
    original_fit = gcnshrink.prune.fit

    def counting_fit(model, data, config, method=None, *args, **kwargs):
        fine_tunes.append(method.spec.rates)
        return original_fit(model, data, config, method, *args, **kwargs)

    monkeypatch.setattr(gcnshrink.prune, "fit", counting_fit)
    # what is measured per cell is test_sweep's business; here only what is trained matters
    from gcnshrink.measure import DEPLOYABLE_KEYS

    quick = {key: 0.5 if "accuracy" in key else 1 for key in DEPLOYABLE_KEYS}
    monkeypatch.setattr("gcnshrink.sweep.measure_deployable", lambda *a: dict(quick))
    paths = api.sweep(
        trained_gcn[0], tiny_spec, tmp_path / "sweep", methods=["toy-power"],
        rates=[0.5, 0.9], epochs=1, progress=False,
    )  # fmt: skip
    results = json.loads(paths["results"].read_text())
    assert sorted(r["rate"] for r in results["records"]) == [0.5, 0.9]
    assert fine_tunes == [(0.5, 0.9)]  # one fine-tune serves both rates
    # rerunning finds every cell done: nothing is trained again
    api.sweep(
        trained_gcn[0], tiny_spec, tmp_path / "sweep", methods=["toy-power"],
        rates=[0.5, 0.9], epochs=1, progress=False,
    )  # fmt: skip
    assert fine_tunes == [(0.5, 0.9)]


def test_entry_point_plugins_are_loaded(monkeypatch):
    class Entry:
        name = "ep-method"
        value = "somewhere:EpMethod"

        def load(self):
            class EpMethod(PowerMagnitude):
                name = "ep-method"

            return EpMethod

    class Broken(Entry):
        name = "broken"

        def load(self):
            raise ImportError("no module named somewhere")

    def fake_entry_points(group):
        assert group == "gcnshrink.methods"
        return [Entry()]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(method_registry, "_entry_points_loaded", False)
    try:
        assert "ep-method" in available_methods()
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Broken()])
        monkeypatch.setattr(method_registry, "_entry_points_loaded", False)
        with pytest.raises(GcnshrinkError, match="plug-in 'broken'.*failed to load"):
            available_methods()
    finally:
        unregister_method("ep-method")
        method_registry._entry_points_loaded = True


class StopAfter(Callback):
    """Ctrl-C after the given epoch (once its state is written)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, loop, record) -> None:
        if loop.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("name", "rates", "options"),
    # mrmp averaging the last 3 of 3 epochs: the resumed run needs the states of epochs 1-2
    [("tcp", (0.9,), {}), ("mrmp", (0.5, 0.9), {"average": 3})],
)
def test_interrupted_fine_tune_resumes_to_the_same_result(
    tmp_path, tiny_data, trained_gcn, name, rates, options
):
    state = tmp_path / "state.pt"

    def attached():
        model = load_checkpoint(trained_gcn[0]).build_model().train()
        method = create_method(name, PruneSpec(rates), options)
        method.attach(model, model.unit_graph())
        return model, method

    def config():
        return TrainConfig(epochs=3, batch_size=32, seed=1, progress=False)

    model, method = attached()
    whole = fit(model, tiny_data, config(), method)

    model, method = attached()
    callbacks = [
        MethodHooks(method),
        ValidationSelection(tiny_data, method),
        PeriodicState(state),
        StopAfter(2),
    ]
    with pytest.raises(KeyboardInterrupt):
        TrainingLoop(model, tiny_data, config(), method, callbacks).run()

    model, method = attached()
    resumed = fit(model, tiny_data, config(), method, resume_from=state)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.best_val_accuracy == whole.best_val_accuracy
    assert resumed.averaged_epochs == whole.averaged_epochs
    for rate in rates:
        for key, mask in whole.masks[rate].items():
            assert torch.equal(mask, resumed.masks[rate][key]), key
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
