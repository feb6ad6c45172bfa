"""Conformance checks that every registered architecture passes, built from its ``tiny_config()``.

gcnshrink runs them for each of its architectures (tests/test_conformance.py); a package that
registers its own model runs them the same way::

    import pytest
    from gcnshrink.testing import CONFORMANCE_CHECKS

    @pytest.mark.parametrize("check", CONFORMANCE_CHECKS.values(), ids=list(CONFORMANCE_CHECKS))
    def test_toy_conforms(check, tmp_path):
        reason = check("toy", tmp_path)
        if reason:
            pytest.skip(reason)

Each check takes the architecture's name and a scratch folder, raises AssertionError (or the
GcnshrinkError of the step that failed) when the model breaks the contract, and returns None, or
why it does not apply to this architecture. Importing this module needs neither pytest nor
onnx.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import masks_from_weights, topology_summary
from gcnshrink.layouts import LAYOUTS
from gcnshrink.models import (
    SkeletonModel,
    create_model,
    model_class,
    register_model,
    unregister_model,
)

FRAMES = 16
Check = Callable[[str, Path], "str | None"]


# ---------------------------------------------------------------------------- test models
@contextmanager
def temporarily_registered(name: str, cls: type[SkeletonModel]) -> Iterator[str]:
    """``cls`` is the architecture ``name`` inside the block only, so that test modules that
    parametrize over available_models() when they are collected never see it."""
    register_model(name)(cls)
    try:
        yield name
    finally:
        unregister_model(name)


def conformance_model(arch: str, seed: int = 0) -> SkeletonModel:
    """The architecture at its ``tiny_config()`` with random weights, in eval mode."""
    torch.manual_seed(seed)
    model = create_model(arch, **model_class(arch).tiny_config())
    return randomize(model, seed)


def randomize(model: SkeletonModel, seed: int = 0) -> SkeletonModel:
    """Random weights, biases and batch-norm statistics that keep the signal's size.

    Fresh batch norms are identities and default initialisations make the logits of a deep tiny
    model nearly independent of the input, which would let a tensor loaded into the wrong slot, a
    wrong constant fold or a wrong unit cut go unnoticed.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    params = dict(model.named_parameters())
    done = set()
    with torch.no_grad():
        for binding in model.unit_graph().prunable:
            weight = params[binding.name]
            fan_in = max(weight.numel() // max(weight.shape[binding.target_axis], 1), 1)
            weight.copy_(normal(weight.shape, math.sqrt(2.0 / fan_in)))
            done.add(binding.name)
            if binding.bias in params:
                params[binding.bias].copy_(normal(params[binding.bias].shape, 0.1))
                done.add(binding.bias)
        for name, param in params.items():
            if name not in done and param.is_floating_point():
                # scale and shift: ones (norm weights, edge importance) stay near one
                param.mul_(1.0 + normal(param.shape, 0.2)).add_(normal(param.shape, 0.1))
        for module in model.modules():
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.running_var is not None
            ):
                module.running_mean.copy_(normal(module.running_mean.shape, 0.3))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _inputs(model: SkeletonModel, batch: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return model.example_input(batch, FRAMES)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, relative: float, what: str) -> None:
    scale = max(float(expected.abs().max()), 1e-12)
    diff = float((got.double() - expected.double()).abs().max()) / scale
    assert diff <= relative, f"{what}: relative logit difference {diff:.3g} > {relative:g}"


# ---------------------------------------------------------------------------- the checks
def check_config(arch: str, folder: Path) -> str | None:
    """``tiny_config()`` is complete, the config is plain JSON that rebuilds the same config, and
    bad values are one GcnshrinkError line before anything is built."""
    cls = model_class(arch)
    tiny = cls.tiny_config()
    assert {"layout", "num_classes"} <= set(tiny), "tiny_config() must name layout and num_classes"
    model = create_model(arch, **tiny)
    assert model.arch == arch and isinstance(model, cls)
    text = json.dumps(model.config)
    rebuilt = create_model(arch, **json.loads(text))
    assert json.dumps(rebuilt.config) == text, "config does not rebuild itself through JSON"
    for bad in ({"num_classes": -1}, {"num_classes": "5"}, {"no_such_key": 1}):
        try:
            create_model(arch, **{**tiny, **bad})
        except GcnshrinkError as exc:
            assert "\n" not in str(exc), f"{bad}: error spans several lines"
        else:
            raise AssertionError(f"{arch} accepted the config override {bad}")
    return None


def check_forward(arch: str, folder: Path) -> str | None:
    """The declared input shape runs and gives (N, num_classes) finite logits; eval is
    deterministic and a sample's logits do not depend on the rest of the batch."""
    model = conformance_model(arch)
    x = _inputs(model, 3, seed=1)
    assert tuple(x.shape) == model.input_shape(3, FRAMES)
    assert x.shape[1] == model.in_channels
    assert x.shape[3:] == (model.layout.num_joints, model.layout.persons)
    logits = _logits(model, x)
    assert tuple(logits.shape) == (3, model.num_classes), f"logits of shape {tuple(logits.shape)}"
    assert torch.isfinite(logits).all(), "non-finite logits"
    assert torch.equal(_logits(model, x), logits), "eval mode is not deterministic"
    _assert_close(_logits(model, x[:1]), logits[:1], 1e-5, "one sample alone")
    assert float(logits.std(dim=0).max()) > 1e-4, "logits do not depend on the input"
    return None


def check_unit_graph(arch: str, folder: Path) -> str | None:
    """The declared unit graph matches the module's tensors, names real modules in its probes, ends
    in the classes, and connects every unit of the dense model."""
    model = conformance_model(arch)
    graph = model.unit_graph()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    graph.check_against(tensors)
    params = dict(model.named_parameters())
    prunable = [b.name for b in graph.prunable]
    assert prunable, "the unit graph declares no prunable tensor"
    assert set(prunable) <= set(params), "a prunable tensor is not a parameter"
    modules = dict(model.named_modules())
    for space, probe in graph.probes.items():
        assert probe.module in modules, f"probe of {space} names no module {probe.module!r}"
    outputs = [s for s in graph.spaces if s.role == "output"]
    assert [s.width for s in outputs] == [model.num_classes], "the output space is not the classes"
    assert any(s.role == "input" for s in graph.spaces), "no input space"
    # with every weight kept, every unit is on a path from the input to the output
    summary = topology_summary(graph, masks_from_weights(graph, params))
    assert summary["inconsistent_connections"] == 0, "the dense model has inconsistent weights"
    assert summary["dead_units"] == 0, "the dense model has dead units"
    return None


def zero_random_units(model: SkeletonModel, fraction: float = 0.3, seed: int = 0) -> None:
    """Zero every weight into a random ``fraction`` of each hidden space's units (they become
    constant) and every weight out of another random fraction (they become useless)."""
    graph = model.unit_graph()
    gen = torch.Generator().manual_seed(seed)
    dead, useless = {}, {}
    for space in graph.spaces:
        width = space.width
        hidden = space.role == "hidden"
        dead[space.name] = hidden & (torch.rand(width, generator=gen) < fraction)
        useless[space.name] = hidden & (torch.rand(width, generator=gen) < fraction)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for binding in graph.prunable:
            weight = params[binding.name]
            view = [1] * weight.dim()
            view[binding.target_axis] = -1
            into_dead = dead[binding.target][binding.axes[binding.target_axis].units].view(view)
            view = [1] * weight.dim()
            view[binding.source_axis] = -1
            from_useless = useless[binding.source][binding.axes[binding.source_axis].units]
            weight[(into_dead | from_useless.view(view)).expand_as(weight)] = 0.0


def check_graph_keeps_logits(model: SkeletonModel, frames: int = FRAMES) -> None:
    """A copy of ``model`` whose random units were zeroed (:func:`zero_random_units`) compacts
    with the same logits: the unit graph describes the model. Raises CompactionError (one line)
    otherwise. What the prune pipeline runs on a user's model before any pruning."""
    from gcnshrink.compact import compact_model

    probe = copy.deepcopy(model).eval()
    zero_random_units(probe, seed=1)
    gen = torch.Generator().manual_seed(2)
    calibration = torch.randn(model.input_shape(4, frames), generator=gen)
    reference = next(iter(probe.parameters()), None)
    if reference is not None:
        calibration = calibration.to(reference.device, reference.dtype)
    compact_model(probe, calibration, tolerance=1e-4)


def check_compaction(arch: str, folder: Path) -> str | None:
    """After zeroing random units, compaction removes units, keeps the logits (on the calibration
    batch and on another), and the compacted model is described by its config alone."""
    from gcnshrink.compact import compact_model

    model = conformance_model(arch)
    zero_random_units(model, seed=1)
    calibration = _inputs(model, 8, seed=2)
    assert float(_logits(model, calibration).std(dim=0).max()) > 1e-4, (
        "after zeroing, the logits no longer depend on the input: nothing to compare"
    )
    result = compact_model(model, calibration)  # raises CompactionError if the logits change
    assert result.params_after < result.params_before, "compaction removed nothing"
    compacted = result.model
    other = _inputs(model, 4, seed=3)
    _assert_close(_logits(compacted, other), _logits(model, other), 1e-4, "compacted, new inputs")
    rebuilt = create_model(arch, **json.loads(json.dumps(compacted.config)))
    rebuilt.load_state_dict(compacted.state_dict(), strict=True)
    assert torch.equal(_logits(rebuilt, other), _logits(compacted, other)), (
        "the compacted config rebuilds a different model"
    )
    return None


def check_onnx_export(arch: str, folder: Path) -> str | None:
    """The ONNX export runs in onnxruntime with PyTorch's logits, at another batch size too."""
    from gcnshrink.onnx_export import check_parity, export_onnx

    model = conformance_model(arch)
    path = Path(folder) / f"{arch}.onnx"
    export_onnx(model, _inputs(model, 2, seed=1), path, force=True)
    x = _inputs(model, 3, seed=2)
    scale = max(1.0, float(_logits(model, x).abs().max()))
    check_parity(model, path, x, atol=1e-4 * scale)
    return None


def check_checkpoint_round_trip(arch: str, folder: Path) -> str | None:
    """save_checkpoint then load_checkpoint gives the same config, weights and logits."""
    from gcnshrink.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    model = conformance_model(arch)
    names = [f"class{i}" for i in range(model.num_classes)]
    path = Path(folder) / f"{arch}.pt"
    save_checkpoint(Checkpoint.from_model(model, names, {"seed": 0}), path, force=True)
    loaded = load_checkpoint(path)
    assert loaded.arch == arch and loaded.config == model.config and loaded.class_names == names
    assert loaded.layout == model.layout
    x = _inputs(model, 3, seed=1)
    assert torch.equal(_logits(loaded.build_model(), x), _logits(model, x)), "logits changed"
    return None


def check_foreign_import(arch: str, folder: Path) -> str | None:
    """A bare state dict, saved the way upstream code saves it (``torch.save(model.state_dict())``),
    is recognized as this architecture and loads back with identical logits."""
    from gcnshrink.checkpoint import load_checkpoint
    from gcnshrink.models import recognizing_models

    cls = model_class(arch)
    if not cls.imports_foreign():
        return f"{arch} does not import foreign checkpoints"
    model = conformance_model(arch)
    state = model.state_dict()
    assert recognizing_models(state) == [arch], (
        f"its state dict is recognized by {recognizing_models(state)}, not by {arch} alone"
    )
    path = Path(folder) / f"{arch}-upstream.pth"
    torch.save(state, path)
    # a built-in layout is named on the command line, as users do; another one is inferred
    layout = model.layout.name if LAYOUTS.get(model.layout.name) == model.layout else None
    loaded = load_checkpoint(path, layout=layout)
    assert loaded.arch == arch
    x = _inputs(model, 3, seed=1)
    assert torch.equal(_logits(loaded.build_model(), x), _logits(model, x)), "logits changed"
    return None


def check_methods(arch: str, folder: Path) -> str | None:
    """Every registered pruning method attaches to the model, trains a step, and delivers masks at
    exactly the requested rate (at least the rate for methods that remove whole units), which
    bake into a plain model that runs. A multi-rate method also serves a rate between its two."""
    from torch.nn.utils import parametrize

    from gcnshrink.pruning import PruneSpec, available_methods, bake, create_method, method_class
    from gcnshrink.pruning.budget import budget

    for name in available_methods():
        cls = method_class(name)
        trained = (0.5, 0.9) if cls.multi_rate else (0.9,)
        served = (*trained, 0.7) if cls.multi_rate else trained
        model = conformance_model(arch).train()
        method = create_method(name, PruneSpec(trained, allow_collapse=True))
        method.attach(model, model.unit_graph())
        x = _inputs(model, 2, seed=2)
        method.on_step(0.0)
        loss = model(x).logsumexp(dim=1).mean()
        extra = method.loss()
        (loss + extra if extra is not None else loss).backward()
        for rate in served:
            masks = method.masks_at(rate)
            sizes = {k: m.numel() for k, m in masks.items()}
            kept = sum(int(m.sum()) for m in masks.values())
            wanted = budget(sizes, rate, "global")
            if cls.exact_rate:
                assert kept == wanted, f"{name} at {rate}: {kept} kept, the budget is {wanted}"
            else:
                assert kept <= wanted, f"{name} at {rate}: {kept} kept, more than {wanted}"
        final = method.masks_at(served[0])
        baked = bake(model, final).eval()  # the method is done with the model from here on
        assert not any(parametrize.is_parametrized(m) for m in baked.modules()), name
        named = dict(baked.named_parameters())
        for key, mask in final.items():
            assert not bool((named[key][~mask] != 0).any()), f"{name}: {key} not zero where pruned"
        assert torch.isfinite(_logits(baked, x)).all(), name
    return None


CONFORMANCE_CHECKS: dict[str, Check] = {
    "config": check_config,
    "forward": check_forward,
    "unit_graph": check_unit_graph,
    "compaction": check_compaction,
    "onnx": check_onnx_export,
    "checkpoint": check_checkpoint_round_trip,
    "foreign_import": check_foreign_import,
    "methods": check_methods,
}
