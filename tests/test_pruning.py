"""The masked pruning engine and its baselines: exact rates, torch.nn.utils.prune parity,
determinism, refusals, structured units."""

import copy
import math

import pytest
import torch
from tiny_zoo import tiny_gcn, tiny_stgcn
from torch.nn.utils import prune as torch_prune

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning import PruneSpec, make_method, realized_rate
from gcnshrink.pruning.base import global_budget, latent_weight

gcn, stgcn = tiny_gcn, tiny_stgcn


def attach(model, method, rate, **kw):
    spec_kw = {k: kw.pop(k) for k in ("scope", "exclude", "allow_collapse") if k in kw}
    m = make_method(method, PruneSpec(rate, **spec_kw), **kw)
    m.attach(model)
    return m


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("build", [gcn, stgcn])
def test_mp_global_rate_is_exact(build, rate):
    model = build()
    m = attach(model, "mp", rate, allow_collapse=True)
    masks = m.final_masks()
    sizes = {n: t.numel() for n, t in masks.items()}
    assert sum(int(t.sum()) for t in masks.values()) == global_budget(sizes, rate)
    deliverable = m.deliverable()
    named = dict(deliverable.named_parameters())
    kept = sum(int((named[n] != 0).sum()) for n in masks)
    assert kept == global_budget(sizes, rate)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_mp_layer_scope_is_exact_per_tensor(rate):
    model = gcn()
    masks = attach(model, "mp", rate, scope="layer").final_masks()
    for name, mask in masks.items():
        assert int(mask.sum()) == mask.numel() - round(rate * mask.numel()), name


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_mp_masks_match_torch_global_unstructured(rate):
    model = gcn(3)
    reference = copy.deepcopy(model)
    m = attach(model, "mp", rate, allow_collapse=True)
    ours = m.final_masks()
    params = []
    for name in ours:
        module_path, _, attr = name.rpartition(".")
        params.append((reference.get_submodule(module_path), attr))
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=rate)
    for name, mask in ours.items():
        module_path, _, attr = name.rpartition(".")
        theirs = getattr(reference.get_submodule(module_path), f"{attr}_mask").bool()
        assert torch.equal(mask, theirs), name


def test_exclude_keeps_tensors_dense_and_out_of_budget():
    model = gcn()
    m = attach(model, "mp", 0.9, exclude=("classifier.*",), allow_collapse=True)
    masks = m.final_masks()
    assert "classifier.weight" not in masks
    assert bool((m.deliverable().classifier.weight != 0).all())
    assert realized_rate(masks) == pytest.approx(0.9, abs=1e-4)


def test_cubic_schedule_reaches_rate_only_at_the_end_of_the_ramp():
    model = gcn()
    m = attach(model, "mp", 0.9, schedule="cubic", ramp=0.5, allow_collapse=True)
    assert not m.selectable()
    m.on_step(0.1)
    partial = 1 - sum(float(p.mask.sum()) for p in m.parametrizations.values()) / sum(
        p.mask.numel() for p in m.parametrizations.values()
    )
    assert 0.0 < partial < 0.9
    m.on_step(0.5)
    assert m.selectable()
    assert realized_rate(m.final_masks()) == pytest.approx(0.9, abs=1e-4)


def test_random_masks_are_seeded_and_at_rate():
    a = attach(gcn(), "random", 0.8, seed=1).final_masks()
    b = attach(gcn(), "random", 0.8, seed=1).final_masks()
    c = attach(gcn(), "random", 0.8, seed=2).final_masks()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert realized_rate(a) == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize("build", [gcn, stgcn])
def test_structured_removes_whole_units(build):
    model = build()
    m = attach(model, "structured", 0.7)
    masks = m.final_masks()
    assert realized_rate(masks) >= 0.7
    g = model.unit_graph()
    from gcnshrink.units import masks_from_weights

    delivered = m.deliverable()
    summary = g.topology_summary(masks_from_weights(g, dict(delivered.named_parameters())))
    # whole units go: no weight is left dangling into or out of a removed unit
    assert summary["inconsistent_connections"] == 0
    assert m.removed_units > 0


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_bad_rates_are_refused(rate):
    with pytest.raises(GcnshrinkError, match="--rate"):
        make_method("mp", PruneSpec(rate))


def test_unknown_method_is_refused():
    with pytest.raises(GcnshrinkError, match="unknown method"):
        make_method("magic", PruneSpec(0.5))


def test_layer_scope_rate_that_empties_a_tensor_is_refused():
    model = gcn()
    with pytest.raises(GcnshrinkError, match="removes every weight of"):
        attach(model, "mp", 0.999, scope="layer")


def test_mp_that_empties_a_layer_is_refused_unless_allowed():
    def shrunk_classifier():
        model = gcn()
        with torch.no_grad():
            model.classifier.weight.mul_(1e-6)  # the smallest magnitudes: global MP takes them all
        return model

    with pytest.raises(GcnshrinkError, match="removes every weight of classifier.weight"):
        attach(shrunk_classifier(), "mp", 0.5)
    attach(shrunk_classifier(), "mp", 0.5, allow_collapse=True)  # allowed: no error
    # TCP never empties a layer the output needs, whatever the magnitudes
    attach(shrunk_classifier(), "tcp", 0.99)


def test_parametrized_weight_is_masked_and_latent_kept():
    model = gcn()
    m = attach(model, "mp", 0.5)
    name = "fc.weight"
    latent = latent_weight(model, name)
    effective = model.fc.weight
    mask = m.final_masks()[name]
    assert torch.equal(effective, latent * mask)
    assert bool((latent[~mask] != 0).any())  # the latent weights survive under the mask
