"""Every registered architecture meets the model contract (gcnshrink.testing), and so does a toy
architecture that this file alone defines and registers: a new model gets these tests by
registering, with no edit to the library or to other tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

import pytest
import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import ActivationProbe, AxisMap, Link, TensorBinding, UnitGraph, UnitSpace
from gcnshrink.layouts import Layout
from gcnshrink.models import (
    ModelConfig,
    SkeletonModel,
    available_models,
    create_model,
    model_class,
    register_model,
    registry,
)
from gcnshrink.models.base import MAX_WIDTH, check_float, check_int
from gcnshrink.testing import CONFORMANCE_CHECKS, temporarily_registered

CHECKS = pytest.mark.parametrize("check", CONFORMANCE_CHECKS.values(), ids=list(CONFORMANCE_CHECKS))


def run(check, arch: str, folder) -> None:
    reason = check(arch, folder)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("arch", available_models())
@CHECKS
def test_every_registered_model_conforms(arch, check, tmp_path):
    run(check, arch, tmp_path)


# ---------------------------------------------------------------------------- a toy architecture
@dataclass(kw_only=True)
class ToyConfig(ModelConfig):
    hidden: int = 32
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden = check_int("hidden", self.hidden, 0, MAX_WIDTH)
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)


class ToyModel(SkeletonModel):
    """Two linear layers over the joints' coordinates averaged across frames."""

    config_class = ToyConfig
    arch_config: ToyConfig

    def __init__(self, config: ToyConfig | Mapping):
        super().__init__(config)
        cfg = self.arch_config
        self.nodes = cfg.layout.num_joints * cfg.layout.persons
        self.fc1 = nn.Linear(self.nodes * cfg.in_channels, cfg.hidden)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, T, V, M) -> (N, M, V, C) -> node-major features, index (m·V + v)·C + c
        pooled = x.mean(dim=2).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        return self.fc2(self.dropout(self.act(self.fc1(pooled))))

    def unit_graph(self) -> UnitGraph:
        cfg = self.arch_config
        widths = {
            "input": cfg.in_channels,
            "flat": self.nodes * cfg.in_channels,
            "hidden": cfg.hidden,
            "classes": cfg.num_classes,
        }
        bindings = []
        for layer, source, target in (("fc1", "flat", "hidden"), ("fc2", "hidden", "classes")):
            rows = AxisMap.direct(target, widths[target])
            bindings.append(
                TensorBinding(
                    f"{layer}.weight",
                    {0: rows, 1: AxisMap.direct(source, widths[source])},
                    prunable=True,
                    source_axis=1,
                    target_axis=0,
                    bias=f"{layer}.bias",
                )
            )
            bindings.append(TensorBinding(f"{layer}.bias", {0: rows}))
        spaces = [
            UnitSpace("input", widths["input"], "input"),
            UnitSpace("flat", widths["flat"]),
            UnitSpace("hidden", widths["hidden"]),
            UnitSpace("classes", widths["classes"], "output"),
        ]
        links = [Link.flatten("input", "flat", cfg.in_channels, self.nodes)]
        probes = {"hidden": ActivationProbe("act", -1)}
        return UnitGraph(spaces, bindings, links, probes)

    def compacted_config(self, kept: dict[str, torch.Tensor]) -> dict:
        return {**self.config, "hidden": int(kept["hidden"].sum())}

    @classmethod
    def tiny_config(cls) -> dict:
        return {"layout": "sbu15", "num_classes": 3}

    @classmethod
    def recognizes(cls, state) -> bool:
        return set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}

    @classmethod
    def infer_config(cls, state, layout: Layout | None, num_classes: int | None) -> dict:
        if layout is None:
            raise GcnshrinkError("a toy checkpoint does not say its layout; pass --layout")
        hidden, features = state["fc1.weight"].shape
        return {
            "layout": layout,
            "num_classes": int(state["fc2.weight"].shape[0]),
            "in_channels": int(features) // (layout.num_joints * layout.persons),
            "hidden": int(hidden),
        }


@pytest.fixture
def toy():
    with temporarily_registered("toy", ToyModel):
        yield "toy"


@CHECKS
def test_a_model_defined_outside_the_library_conforms(toy, check, tmp_path):
    assert toy in available_models()
    run(check, toy, tmp_path)


def test_registering_does_not_leak():
    with temporarily_registered("toy", ToyModel):
        assert create_model("toy", **ToyModel.tiny_config()).arch == "toy"
    assert "toy" not in available_models()
    assert ToyModel.arch == ""
    with pytest.raises(GcnshrinkError, match="unknown architecture 'toy'"):
        create_model("toy", **ToyModel.tiny_config())


# ---------------------------------------------------------------------------- the registry
def test_available_models_lists_the_zoo():
    assert {"gcn", "stgcn"} <= set(available_models())
    assert available_models() == sorted(available_models())


def test_a_second_class_under_a_taken_name_is_refused():
    class Impostor(ToyModel):
        pass

    with pytest.raises(GcnshrinkError, match="registered twice"):
        register_model("gcn")(Impostor)
    assert model_class("gcn").__name__ == "AttentionGCN"


def test_registration_needs_a_model_with_its_own_config_dataclass():
    class NoConfig(SkeletonModel):
        pass

    with pytest.raises(TypeError, match="config_class"):
        register_model("noconfig")(NoConfig)
    with pytest.raises(TypeError, match="SkeletonModel"):
        register_model("linear")(nn.Linear)
    with pytest.raises(ValueError, match="name"):
        register_model("has space")
    assert "noconfig" not in available_models()


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as before its first lookup (plugins not loaded yet), restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    ToyModel.arch = ""


@pytest.fixture
def plugins(fresh_registry, monkeypatch):
    """``plugins(*entry_points)``: the registry as if these were the installed entry points."""

    def install(*entry_points: metadata.EntryPoint) -> None:
        monkeypatch.setattr(registry, "_plugin_entry_points", lambda: entry_points)

    return install


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)


def test_entry_points_register_architectures_when_first_asked(plugins):
    plugins(entry_point("toy", f"{__name__}:ToyModel"))
    assert "toy" in available_models()
    assert model_class("toy") is ToyModel
    model = create_model("toy", **ToyModel.tiny_config())
    assert model.arch == "toy" and model.config["hidden"] == 32


def test_an_installed_distribution_provides_an_architecture(fresh_registry, monkeypatch, tmp_path):
    # what pip leaves for a package declaring [project.entry-points."gcnshrink.models"]
    dist_info = tmp_path / "toy_models-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-models\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\ntoy = {__name__}:ToyModel\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_class("toy") is ToyModel


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("no_such_module_for_gcnshrink:Model", "failed to load: ModuleNotFoundError"),
        (f"{__name__}:NotThere", "failed to load: AttributeError"),
        (f"{__name__}:entry_point", "not a SkeletonModel subclass"),
    ],
    ids=["missing-module", "missing-attribute", "not-a-model"],
)
def test_a_broken_entry_point_is_one_line_naming_it(plugins, value, why):
    plugins(entry_point("broken", value))
    for _ in range(2):  # reported on every lookup, not only the first
        with pytest.raises(GcnshrinkError, match=f"model plugin 'broken' .*{why}") as info:
            model_class("gcn")
        assert "\n" not in str(info.value)


def test_an_entry_point_cannot_take_a_zoo_name(plugins):
    plugins(entry_point("gcn", f"{__name__}:ToyModel"))
    with pytest.raises(GcnshrinkError, match="model plugin 'gcn'.*registered twice"):
        available_models()
