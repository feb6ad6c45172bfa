"""The masked pruning engine and its baselines: exact rates, torch.nn.utils.prune parity,
determinism, refusals, structured units."""

import copy
import math

import pytest
import torch
from tiny_zoo import tiny_builders, tiny_gcn
from torch.nn.utils import prune as torch_prune

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import masks_from_weights, topology_summary
from gcnshrink.pruning import PruneSpec, bake, create_method, realized_rate
from gcnshrink.pruning.budget import global_budget
from gcnshrink.pruning.method import latent_weight

gcn = tiny_gcn


def attach(model, method, rate, seed=0, **kw):
    spec_kw = {k: kw.pop(k) for k in ("scope", "exclude", "allow_collapse") if k in kw}
    m = create_method(method, PruneSpec((rate,), **spec_kw), kw, seed=seed)
    m.attach(model, model.unit_graph())
    return m


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("build", tiny_builders())
def test_mp_global_rate_is_exact(build, rate):
    model = build()
    m = attach(model, "mp", rate, allow_collapse=True)
    masks = m.masks_at(rate)
    sizes = {n: t.numel() for n, t in masks.items()}
    assert sum(int(t.sum()) for t in masks.values()) == global_budget(sizes, rate)
    named = dict(bake(model, masks).named_parameters())
    kept = sum(int((named[n] != 0).sum()) for n in masks)
    assert kept == global_budget(sizes, rate)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_mp_layer_scope_is_exact_per_tensor(rate):
    model = gcn()
    masks = attach(model, "mp", rate, scope="layer").masks_at(rate)
    for name, mask in masks.items():
        assert int(mask.sum()) == mask.numel() - round(rate * mask.numel()), name


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
def test_mp_masks_match_torch_global_unstructured(rate):
    model = gcn(3)
    reference = copy.deepcopy(model)
    m = attach(model, "mp", rate, allow_collapse=True)
    ours = m.masks_at(rate)
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
    masks = m.masks_at(0.9)
    assert "classifier.weight" not in masks
    assert bool((bake(model, masks).classifier.weight != 0).all())
    assert realized_rate(masks) == pytest.approx(0.9, abs=1e-4)


def test_cubic_schedule_reaches_rate_only_at_the_end_of_the_ramp():
    model = gcn()
    m = attach(model, "mp", 0.9, schedule="cubic", ramp=0.5, allow_collapse=True)
    assert not m.ready()
    m.on_step(0.1)
    partial = 1 - sum(float(p.keep.sum()) for p in m.parametrizations.values()) / sum(
        p.keep.numel() for p in m.parametrizations.values()
    )
    assert 0.0 < partial < 0.9
    m.on_step(0.5)
    assert m.ready()
    assert realized_rate(m.masks_at(0.9)) == pytest.approx(0.9, abs=1e-4)


def test_random_masks_are_seeded_and_at_rate():
    a = attach(gcn(), "random", 0.8, seed=1).masks_at(0.8)
    b = attach(gcn(), "random", 0.8, seed=1).masks_at(0.8)
    c = attach(gcn(), "random", 0.8, seed=2).masks_at(0.8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert realized_rate(a) == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize("build", tiny_builders())
def test_structured_removes_whole_units(build):
    model = build()
    m = attach(model, "structured", 0.7)
    masks = m.masks_at(0.7)
    assert realized_rate(masks) >= 0.7
    g = model.unit_graph()
    delivered = bake(model, masks)
    summary = topology_summary(g, masks_from_weights(g, dict(delivered.named_parameters())))
    # whole units go: no weight is left dangling into or out of a removed unit
    assert summary["inconsistent_connections"] == 0
    assert m.removed_units > 0


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_bad_rates_are_refused(rate):
    with pytest.raises(GcnshrinkError, match="--rate"):
        create_method("mp", PruneSpec((rate,)))


def test_unknown_method_is_refused():
    with pytest.raises(GcnshrinkError, match="unknown method"):
        create_method("magic", PruneSpec((0.5,)))


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
    mask = m.masks_at(0.5)[name]
    assert torch.equal(effective, latent * mask)
    assert bool((latent[~mask] != 0).any())  # the latent weights survive under the mask


def test_single_rate_method_serves_only_its_rate():
    m = attach(gcn(), "mp", 0.9, allow_collapse=True)
    with pytest.raises(GcnshrinkError, match="trained for rate 0.9, not 0.8"):
        m.masks_at(0.8)
    with pytest.raises(GcnshrinkError, match="trains for one rate"):
        create_method("mp", PruneSpec((0.5, 0.9)))


def test_method_options_are_checked_by_the_registry():
    with pytest.raises(GcnshrinkError, match="--schedule applies to mp only, not --method tcp"):
        create_method("tcp", PruneSpec((0.9,)), {"schedule": "cubic"})
    with pytest.raises(GcnshrinkError, match="--schedule must be one of oneshot, cubic"):
        create_method("mp", PruneSpec((0.9,)), {"schedule": "linear"})
    with pytest.raises(GcnshrinkError, match="--budget-weight must be float"):
        create_method("tcp", PruneSpec((0.9,)), {"budget_weight": "lots"})
    with pytest.raises(GcnshrinkError, match="--ramp must be in"):
        create_method("mp", PruneSpec((0.9,)), {"ramp": 1.5})
    assert (
        create_method("tcp", PruneSpec((0.9,)), {"budget_weight": 2}).options.budget_weight == 2.0
    )


def test_bake_leaves_a_plain_model_with_positive_zeros():
    from torch.nn.utils import parametrize

    model = gcn()
    m = attach(model, "tcp", 0.9)
    m.on_step(0.0)
    masks = m.masks_at(0.9)
    latent = {n: latent_weight(model, n).detach().clone() for n in masks}
    baked = bake(model, masks)
    assert not any(parametrize.is_parametrized(module) for module in baked.modules())
    for name, mask in masks.items():
        weight = dict(baked.named_parameters())[name]
        assert torch.equal(weight[mask], latent[name][mask])
        assert not torch.signbit(weight[~mask]).any()  # +0.0: sparse files compare bits
