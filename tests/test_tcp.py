"""TCP: the consistency guarantee at exact rates, the trainable reparametrization, the post-hoc oracle."""

import copy

import pytest
import torch
from tiny_zoo import tiny_builders, tiny_gcn

from gcnshrink.graph import (
    accessible,
    coaccessible,
    consistent,
    consistent_budget_masks,
    masks_from_weights,
    topology_summary,
)
from gcnshrink.pruning import PruneSpec, bake, create_method
from gcnshrink.pruning.budget import global_budget, score_weights


def method_on(model, name, rate, **options):
    method = create_method(name, PruneSpec((rate,), allow_collapse=True), options)
    method.attach(model, model.unit_graph())
    return method


def project(g, scores, rate, **kw):
    budget = global_budget({n: s.numel() for n, s in scores.items()}, rate)
    return consistent_budget_masks(g, scores, budget, **kw)


def gcn(seed=0):
    return tiny_gcn(seed, num_classes=6)


def prunable_scores(model):
    g = model.unit_graph()
    named = dict(model.named_parameters())
    return g, {b.name: named[b.name].detach().abs() for b in g.prunable}


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("build", tiny_builders(num_classes=6))
def test_projection_is_consistent_and_exact(build, rate):
    model = build()
    g, scores = prunable_scores(model)
    masks = project(g, scores, rate)
    sizes = {n: s.numel() for n, s in scores.items()}
    assert sum(int(m.sum()) for m in masks.values()) == global_budget(sizes, rate)
    summary = topology_summary(g, masks)
    assert summary["inconsistent_connections"] == 0


@pytest.mark.parametrize("build", tiny_builders(num_classes=6))
def test_magnitude_pruning_is_inconsistent_where_tcp_is_not(build):
    """The papers' observation on these models: MP at 0.99 keeps weights that lead nowhere."""
    model = build()
    g, scores = prunable_scores(model)
    mp = method_on(build(), "mp", 0.99)
    assert topology_summary(g, mp.masks_at(0.99))["inconsistent_connections"] > 0
    tcp = project(g, scores, 0.99)
    assert topology_summary(g, tcp)["inconsistent_connections"] == 0


def test_projection_keeps_the_consistent_part_of_mp_when_it_fits():
    """Post-hoc TCP is MP minus inconsistent weights plus refills: kept MP weights stay kept."""
    model = gcn(1)
    g, scores = prunable_scores(model)
    mp_masks = method_on(gcn(1), "mp", 0.95).masks_at(0.95)
    consistent_mp = consistent(g, mp_masks)
    tcp = project(g, scores, 0.95)
    for name in tcp:
        # every consistent MP weight survives; inconsistent ones are replaced by consistent ones
        assert bool((tcp[name] | ~consistent_mp[name].view_as(tcp[name])).all()), name


@pytest.mark.parametrize("rate", [0.9, 0.99, 0.999])
@pytest.mark.parametrize("build", tiny_builders(num_classes=6))
def test_tcp_deliverable_is_consistent_at_rate(build, rate):
    model = build()
    method = method_on(model, "tcp", rate)
    method.on_step(0.0)
    model(model.example_input(4, 12))  # one training-time forward pass
    delivered = bake(model, method.masks_at(rate))
    g = delivered.unit_graph()
    named = dict(delivered.named_parameters())
    summary = topology_summary(g, masks_from_weights(g, named))
    assert summary["inconsistent_connections"] == 0
    kept = sum(int((named[b.name] != 0).sum()) for b in g.prunable)
    sizes = {b.name: named[b.name].numel() for b in g.prunable}
    assert kept == global_budget(sizes, rate)
    # no dead unit keeps a weight: every kept entry joins two live units
    acc = accessible(g, masks_from_weights(g, named))
    coacc = coaccessible(g, masks_from_weights(g, named))
    for b in g.prunable:
        src, dst = g.entry_units(b, named[b.name].shape)
        kept_entries = named[b.name].reshape(-1) != 0
        assert bool(acc[b.source][src[kept_entries]].all()) and bool(
            coacc[b.target][dst[kept_entries]].all()
        )


def test_gradients_flow_through_the_reparametrization():
    model = gcn()
    method = method_on(model, "tcp", 0.9)
    method.on_step(0.0)
    x = model.example_input(8, 12)
    loss = model(x).logsumexp(dim=1).mean() + method.loss()
    loss.backward()
    latent = method.latent()["blocks.1.value.weight"]
    mask = method.controller.current["blocks.1.value.weight"].detach().bool()
    assert latent.grad is not None
    assert bool((latent.grad[mask] != 0).any())
    # pruned entries near the threshold get gradient too (through the sigmoid surrogate), which is
    # what lets training move connections in and out of the topology
    assert bool((latent.grad[~mask] != 0).any())


def test_budget_term_drives_the_consistent_count_to_the_budget():
    torch.manual_seed(0)
    model = gcn()
    method = method_on(model, "tcp", 0.9, budget_weight=1.0)
    controller = method.controller
    # start far off: thresholds that keep about twice the budget (20 % of every tensor at rate 0.9)
    for name, w in method.latent().items():
        controller.thresholds[name] = float(w.detach().abs().reshape(-1).quantile(0.8))
    controller.compute()
    start = method.consistent_count()
    assert start > 1.5 * method.target_budget
    optimizer = torch.optim.Adam(method.latent().values(), lr=2e-3)
    for _ in range(300):
        controller.compute()
        loss = method.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    controller.compute()
    end = method.consistent_count()
    budget = method.target_budget
    assert abs(end - budget) < 0.1 * budget, (start, end, budget)


@pytest.mark.parametrize("threshold_quantile", [0.85, 0.95])
def test_final_masks_are_the_projection_of_the_trained_subnetwork(threshold_quantile):
    """What tcp ships is the subnetwork it trained, trimmed or filled to the budget at the margin,
    not a re-ranking of every latent weight (which lost 20 points at 0.99 on hands)."""
    model = gcn(3)
    method = method_on(model, "tcp", 0.9)
    controller = method.controller
    # move the training-time mask away from the initial projection: keep ~15 % (more than the
    # 10 % budget) or ~5 % (less) of every tensor
    for name, w in method.latent().items():
        controller.thresholds[name] = float(
            w.detach().abs().reshape(-1).quantile(threshold_quantile)
        )
    trained = {k: v.detach() > 0 for k, v in controller.compute().items()}
    trained_count = sum(int(m.sum()) for m in trained.values())
    final = method.masks_at(0.9)
    budget = method.target_budget
    assert sum(int(m.sum()) for m in final.values()) == budget
    inside = sum(int((final[k] & trained[k]).sum()) for k in trained)
    if trained_count >= budget:  # trimmed: everything shipped was trained
        assert inside == budget
    else:  # filled: everything trained is shipped
        assert inside == trained_count
    g = model.unit_graph()
    assert topology_summary(g, final)["inconsistent_connections"] == 0


def test_status_reports_the_trained_mask_against_the_budget():
    model = gcn()
    method = method_on(model, "tcp", 0.9)
    method.on_step(0.0)
    assert method.status() == (
        f"trained mask {method.consistent_count():,} / budget {method.target_budget:,}"
    )


@pytest.mark.parametrize("build", tiny_builders(num_classes=6))
def test_projection_with_a_k_hint_is_the_same_projection(build):
    model = build(4)
    g, scores = prunable_scores(model)
    plain = project(g, scores, 0.98)
    budget = global_budget({k: v.numel() for k, v in scores.items()}, 0.98)
    total = sum(v.numel() for v in scores.values())
    for hint in (0, budget - 5, budget, budget + 3, 2 * budget, total - 1, total + 10):
        hinted = project(g, scores, 0.98, k_hint=hint)
        assert all(torch.equal(hinted[k], plain[k]) for k in plain), hint


def test_posthoc_variant_is_the_projection_of_the_dense_weights():
    model = gcn(2)
    g, scores = prunable_scores(model)
    expected = project(g, score_weights(scores, "lamp"), 0.98)
    got = method_on(model, "tcp-posthoc", 0.98).masks_at(0.98)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("score", ["lamp", "magnitude"])
def test_projection_is_exact_across_seeds_and_scores(seed, score):
    for build in tiny_builders(num_classes=6):
        model = build(seed)
        g, raw = prunable_scores(model)
        scores = score_weights(raw, score)
        for rate in (0.98, 0.995, 0.999):
            masks = project(g, scores, rate)
            sizes = {n: s.numel() for n, s in scores.items()}
            assert sum(int(m.sum()) for m in masks.values()) == global_budget(sizes, rate), (
                build.__name__,
                rate,
            )
            assert topology_summary(g, masks)["inconsistent_connections"] == 0


@pytest.mark.parametrize("seed", [3, 4])
def test_projection_is_exact_when_every_trim_drags_more_than_the_excess(seed):
    """A single chain of 8 weights holds the budget of 7 plus one: every entry removed takes the
    whole chain with it. The projection then builds the budget from the best shortest path."""
    from gcnshrink.layouts import get_layout
    from gcnshrink.models import create_model

    blocks = [
        {"in": 3, "mid": 8, "out": 8, "stride": 1, "residual": "none"},
        {"in": 8, "mid": 8, "out": 8, "stride": 1, "residual": "identity"},
        {"in": 8, "mid": 16, "out": 16, "stride": 2, "residual": "conv"},
        {"in": 16, "mid": 16, "out": 16, "stride": 1, "residual": "identity"},
    ]
    torch.manual_seed(seed)
    model = create_model("stgcn", num_classes=6, layout=get_layout("sbu15"), blocks=blocks)
    g, raw = prunable_scores(model)
    scores = score_weights(raw, "lamp")
    masks = project(g, scores, 0.999)
    budget = global_budget({n: s.numel() for n, s in scores.items()}, 0.999)
    assert sum(int(m.sum()) for m in masks.values()) == budget == 7
    assert topology_summary(g, masks)["inconsistent_connections"] == 0


# ---------------------------------------------------------------------------- extreme rates
def test_schedule_shrinks_the_kept_count_to_the_exact_budget():
    """The gradual schedule starts at --gradual-from's budget, only shrinks, reaches the rate's
    budget at --gradual of the fine-tune, and only then may an epoch be selected."""
    model = gcn()
    method = method_on(model, "tcp", 0.99, gradual=0.5, gradual_from=0.9)
    assert method.current_budget == method.budget(0.9) > method.target_budget
    seen = []
    for progress in [0.0, 0.1, 0.2, 0.3, 0.4, 0.49, 0.5, 0.8, 1.0]:
        method.on_step(progress)
        seen.append(method.current_budget)
        assert method.ready() == (progress >= 0.5)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == method.target_budget
    masks = method.masks_at(0.99)
    assert sum(int(m.sum()) for m in masks.values()) == method.target_budget
    assert topology_summary(model.unit_graph(), masks)["inconsistent_connections"] == 0


def test_no_schedule_trains_at_the_rate_from_the_first_step():
    for options in ({}, {"gradual": 0.5, "gradual_from": 0.995}):
        method = method_on(gcn(), "tcp", 0.99, **options)
        assert method.current_budget == method.target_budget and method.ready()


def test_schedule_position_survives_a_checkpoint_of_the_method_state():
    method = method_on(gcn(), "tcp", 0.99, gradual=0.5)
    method.on_step(0.3)
    state = method.state_dict()
    again = method_on(gcn(), "tcp", 0.99, gradual=0.5)
    again.load_state_dict(state)
    assert again.current_budget == method.current_budget < again.budget(0.9)


@pytest.mark.parametrize(
    "options", [{"gradual": 1.5}, {"gradual": float("nan")}, {"gradual_from": 1.0}]
)
def test_bad_schedule_options_are_refused(options):
    from gcnshrink.errors import GcnshrinkError

    with pytest.raises(GcnshrinkError, match="--gradual"):
        create_method("tcp", PruneSpec((0.99,)), options)


@pytest.mark.parametrize(
    "method, options, flag",
    [
        ("tcp", {"budget_weight": float("inf")}, "--budget-weight must be a finite number"),
        ("ctf", {"budget_weight": float("inf")}, "--budget-weight must be a finite number"),
        ("ctf", {"temperature_start": float("nan")}, "--temperature-start must be a finite"),
        ("tcp", {"temperature_end": 1.0}, "--temperature-end .* must be at most"),
        ("ctf", {"temperature_end": 1.0}, "--temperature-end .* must be at most"),
        ("srmp", {"band_temperature_end": float("inf")}, "--band-temperature-end must be a"),
        ("mrmp", {"band_temperature_start": 0.05}, "--band-temperature-end .* must be at most"),
    ],
)
def test_schedules_must_be_finite_and_anneal(method, options, flag):
    """An infinite budget weight or temperature trained on NaN losses and still wrote a model;
    a temperature that rises at the end leaves soft masks where hard ones are delivered."""
    from gcnshrink.errors import GcnshrinkError

    rates = (0.5, 0.9) if method == "mrmp" else (0.9,)
    with pytest.raises(GcnshrinkError, match=flag):
        create_method(method, PruneSpec(rates), options)


@pytest.mark.parametrize("share", [-1.0, float("nan"), float("inf")])
def test_bad_steering_share_is_refused(share):
    from gcnshrink.errors import GcnshrinkError

    with pytest.raises(GcnshrinkError, match="--steering-share"):
        create_method("tcp", PruneSpec((0.99,)), {"steering_share": share})


def test_rescale_gives_each_unit_back_the_norm_of_its_incoming_weights():
    model = gcn(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = method_on(model, "tcp", 0.99, rescale=True)
    masks = method.masks_at(0.99)
    graph = model.unit_graph()
    for name, w in method.latent().items():
        axis = graph.binding_by_name[name].target_axis
        dims = [d for d in range(w.dim()) if d != axis]
        keep = masks[name]
        full = before[name].pow(2).sum(dim=dims).sqrt()
        kept = (w.detach() * keep).pow(2).sum(dim=dims).sqrt()
        has = keep.sum(dim=dims) > 0
        torch.testing.assert_close(kept[has], full[has])
        # pruned entries are left as they were
        torch.testing.assert_close(w.detach()[~keep], before[name][~keep])


def test_default_gcn_keeps_a_connected_path_at_0_999_through_the_schedule():
    """Structure, not accuracy: on the full-size default gcn, every mask tcp trains with and the
    one it ships at 0.999 connect the input to the output, with nothing inconsistent."""
    from gcnshrink.models import create_model

    torch.manual_seed(0)
    model = create_model("gcn", layout="hand21", num_classes=14)
    method = method_on(model, "tcp", 0.999, gradual=0.5)
    graph = model.unit_graph()
    for progress in [0.0, 0.25, 0.5, 1.0]:
        method.on_step(progress)
        trained = {k: v.detach() > 0 for k, v in method.controller.current.items()}
        assert bool(accessible(graph, trained)["classes"].any()), progress
    masks = method.masks_at(0.999)
    assert sum(int(m.sum()) for m in masks.values()) == method.target_budget
    assert bool(accessible(graph, masks)["classes"].any())
    assert topology_summary(graph, masks)["inconsistent_connections"] == 0


def test_steering_zero_leaves_the_budget_to_the_weights_that_carry_signal():
    """--steering 0: gcn's query/key weights (they only steer attention) are kept only after every
    weight on the signal path, so at 0.99 none is; the masks stay exact and consistent."""
    from gcnshrink.pruning.tcp import steering_tensors

    model = gcn()
    steering = steering_tensors(model.unit_graph())
    assert steering == {f"blocks.{b}.{p}.weight" for b in range(3) for p in ("query", "key")}
    shared = method_on(gcn(), "tcp", 0.99, steering=1.0, steering_share=0.0).masks_at(0.99)
    assert sum(int(shared[n].sum()) for n in steering) > 0
    method = method_on(model, "tcp", 0.99, steering=0.0)
    masks = method.masks_at(0.99)
    assert sum(int(masks[n].sum()) for n in steering) == 0
    assert sum(int(m.sum()) for m in masks.values()) == method.target_budget
    assert topology_summary(model.unit_graph(), masks)["inconsistent_connections"] == 0


@pytest.mark.parametrize("rate", [0.9, 0.998])
def test_steering_share_caps_the_attention_weights_at_their_dense_share(rate):
    """--steering-share 1 (the default): the query/key weights hold at most their share of the
    dense weights in the projection tcp starts from, and none when that share is below one weight
    per query/key dimension (gcn at 0.998: LAMP alone gives them most of the budget there); the
    masks stay exact and consistent; 0 lifts the cap."""
    from gcnshrink.models import create_model
    from gcnshrink.pruning.tcp import steering_tensors

    torch.manual_seed(0)
    model = create_model("gcn", layout="hand21", num_classes=14)
    graph = model.unit_graph()
    steering = steering_tensors(graph)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    dense_share = sum(sizes[n] for n in steering) / sum(sizes[b.name] for b in graph.prunable)
    dimensions = sum(graph.width(graph.binding_by_name[n].target) for n in steering)

    def steering_kept(share):
        method = method_on(copy.deepcopy(model), "tcp", rate, steering_share=share)
        masks = method.masks_at(rate)
        assert sum(int(m.sum()) for m in masks.values()) == method.target_budget
        assert topology_summary(graph, masks)["inconsistent_connections"] == 0
        return sum(int(masks[n].sum()) for n in steering), method.target_budget

    uncapped, budget = steering_kept(0.0)
    capped, _ = steering_kept(1.0)
    assert capped <= dense_share * budget + 1
    if dense_share * budget >= dimensions:  # 0.9: capped, not removed
        assert rate == 0.9 and capped > dimensions
    else:  # 0.998: too few for one weight per query/key dimension, so no attention
        assert rate == 0.998 and capped == 0
        assert uncapped > 3 * dense_share * budget  # what LAMP alone gives them
