"""srmp and mrmp: the prior's quantile map, the KL term, exact and deterministic extraction, and
multi-rate checkpoints (trained once, any rate extracted, round-trip through a file)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gcnshrink import api
from gcnshrink.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import topology_summary
from gcnshrink.pruning import PruneSpec, create_method, delivering, remove_masks
from gcnshrink.pruning.budget import budget_per_tensor, global_budget
from gcnshrink.pruning.method import split_attr
from gcnshrink.pruning.mrmp import HistogramKL, Prior, largest_remainder
from gcnshrink.train import TrainConfig, evaluate, fit
from tests.tiny_zoo import tiny_builders, tiny_gcn

TINY = "synthetic:hands?train=120&test=60"  # conftest's tiny data
RATES = (0.3, 0.5, 0.77, 0.9, 0.95, 0.97, 0.985, 0.99, 0.995)


def prior_samples(family: str, n: int, scale: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if family == "laplace":
        u = torch.rand(n, generator=generator, dtype=torch.float64) - 0.5
        return -scale * torch.sign(u) * torch.log1p(-2 * u.abs())
    return scale * torch.randn(n, generator=generator, dtype=torch.float64)


def attached(method: str, rates, model=None, scope="global", **options):
    model = model if model is not None else tiny_gcn()
    pruner = create_method(method, PruneSpec(tuple(rates), scope), options, seed=0)
    pruner.attach(model.train(), model.unit_graph())
    return model, pruner


def fill_from_prior(model, pruner, family: str, seed: int = 0) -> None:
    """Latent weights drawn from the prior (each tensor its own scale)."""
    with torch.no_grad():
        for i, w in enumerate(pruner.latent().values()):
            w.copy_(prior_samples(family, w.numel(), 0.1 * (i + 1), seed + i).view_as(w))


# ---------------------------------------------------------------------------- the prior
@pytest.mark.parametrize("family", ["laplace", "gaussian"])
def test_quantile_map_hits_the_rate_on_weights_drawn_from_the_prior(family):
    prior = Prior(family)
    n, scale = 400_000, 0.37
    w = prior_samples(family, n, scale)
    assert prior.fit_scale(w) == pytest.approx(scale, rel=0.01)
    for rate in RATES:
        removed = float((w.abs() <= scale * prior.quantile(rate)).double().mean())
        tolerance = 5 * math.sqrt(rate * (1 - rate) / n)  # five binomial standard deviations
        assert removed == pytest.approx(rate, abs=tolerance), rate
        assert prior.kept(prior.quantile(rate)) == pytest.approx(1 - rate, rel=1e-9)


@pytest.mark.parametrize("family", ["laplace", "gaussian"])
def test_band_stop_of_a_model_with_prior_weights_removes_the_rate(family):
    """Through the method: weights from the prior, the prior's band-stop a(r) removes about r of
    them, per tensor (--scope layer) and under the prior's LAMP split of a global rate."""
    for scope, allocation in (("layer", "lamp"), ("global", "lamp"), ("global", "pooled")):
        model, pruner = attached(
            "mrmp", (0.5, 0.9), scope=scope, prior=family, allocation=allocation
        )
        fill_from_prior(model, pruner, family)
        scales = {n: 0.1 * (i + 1) for i, n in enumerate(pruner.scales)}
        pruner.load_state_dict({**pruner.state_dict(), "scales": scales})
        n = sum(pruner.sizes().values())
        for rate in (0.5, 0.9, 0.95):
            tolerance = 5 * math.sqrt(rate * (1 - rate) / n) + 2 * len(pruner.targets) / n
            assert pruner.prior_fraction_removed(rate) == pytest.approx(rate, abs=tolerance)


def test_quantile_fit_puts_each_tensors_band_at_its_budget():
    """--fit quantile (default): at the trained rate, the prior's band-stop of the dense weights
    removes what the allocation removes, tensor by tensor, whatever their shape."""
    model, pruner = attached("srmp", (0.9,))
    counts = pruner.allocation(0.9)
    x = pruner.prior_thresholds(0.9)
    for name, z in pruner.standardized().items():
        kept = int((z > x[name]).sum())
        assert abs(kept - counts[name]) <= 1, name


def test_lamp_allocation_gives_small_tensors_a_larger_share():
    prior = Prior("laplace")
    sizes = {"small": 500, "large": 50_000}
    x = prior.lamp_thresholds(sizes, 0.99)
    kept = {k: n * prior.kept(x[k]) for k, n in sizes.items()}
    assert sum(kept.values()) == pytest.approx(0.01 * 50_500, rel=1e-6)
    assert kept["small"] / 500 > 10 * kept["large"] / 50_000


@pytest.mark.parametrize("family", ["laplace", "gaussian"])
def test_histogram_kl_is_near_zero_on_the_prior_and_positive_elsewhere(family):
    prior = Prior(family)
    kl = HistogramKL(prior, (0.5, 0.9, 0.99))
    z = prior_samples(family, 200_000, 1.0).abs().float()
    assert float(kl(z)) < 2e-3
    assert float(kl(torch.rand(200_000) * 2)) > 0.1  # uniform on [0, 2]: no tail at all
    # the windowed evaluation equals the sigmoid of every weight at every edge
    z = z[:5000].requires_grad_()
    edges = kl.edges.reshape(-1, 1)
    full = torch.sigmoid((z.reshape(1, -1) - edges) / kl.bandwidth).mean(1)
    fast = kl.beyond(z)
    assert torch.allclose(full, fast, atol=1e-4)
    (g_full,) = torch.autograd.grad(full.sum(), z)
    (g_fast,) = torch.autograd.grad(fast.sum(), z)
    assert torch.allclose(g_full, g_fast, atol=0.01 * float(g_full.abs().max()))


# ---------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("build", tiny_builders())
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("allocation", ["lamp", "pooled"])
def test_masks_meet_the_rate_exactly_and_deterministically(build, scope, allocation):
    """Global scope: exactly the global budget; up to the highest trained rate (and past it with
    --beyond magnitude) no tensor emptied while the budget has a weight for each, past it (default
    --beyond consistent) no inconsistent connection. Layer scope: every tensor at exactly its own
    budget (so the total is within one weight per tensor of r·n)."""
    for beyond in ("consistent", "magnitude"):
        model, pruner = attached(
            "mrmp", (0.5, 0.9), build(), scope=scope, allocation=allocation, beyond=beyond
        )
        check_masks_meet_the_rate(model, pruner, scope, projected=beyond == "consistent")


def check_masks_meet_the_rate(model, pruner, scope, projected):
    sizes = pruner.sizes()
    for rate in RATES:
        masks = pruner.masks_at(rate)
        again = pruner.masks_at(rate)
        assert all(torch.equal(masks[k], again[k]) for k in masks)
        kept = {k: int(m.sum()) for k, m in masks.items()}
        if scope == "global":
            assert sum(kept.values()) == global_budget(sizes, rate), rate
            if projected and rate > 0.9:
                summary = topology_summary(model.unit_graph(), masks)
                assert summary["inconsistent_connections"] == 0, rate
            elif global_budget(sizes, rate) >= len(sizes):  # then no tensor is emptied
                assert min(kept.values()) >= 1
        else:
            assert kept == budget_per_tensor(sizes, rate), rate
            assert abs(sum(kept.values()) - (1 - rate) * sum(sizes.values())) <= len(sizes)


@pytest.mark.parametrize("allocation", ["lamp", "pooled"])
def test_trained_band_is_the_delivered_mask(allocation):
    """--threshold empirical (default): the hard band-stop of a training step at a trained rate
    keeps exactly the weights the deliverable keeps."""
    model, pruner = attached("mrmp", (0.5, 0.9), allocation=allocation, distill="none")
    for step, rate in enumerate((0.5, 0.9)):
        pruner.on_step(step / 10)
        assert pruner.current_rate == rate
        delivered = pruner.masks_at(rate)
        for name, param in pruner.latent().items():
            band = pruner.controller.scales[name] * pruner.controller.q[name]
            assert torch.equal(param.detach().abs() > band, delivered[name]), name


def test_allocation_is_exact_and_keeps_every_tensor():
    sizes = {"a": 10, "b": 1000, "c": 7}
    for total in (3, 10, 500, 1017):
        counts = largest_remainder({"a": 0.5, "b": 20.0, "c": 1e-9}, total, sizes)
        assert sum(counts.values()) == total
        assert all(1 <= counts[k] <= sizes[k] for k in sizes)


def test_srmp_serves_its_rate_and_mrmp_any_rate():
    _, srmp = attached("srmp", (0.9,))
    with pytest.raises(GcnshrinkError, match="trained for rate 0.9"):
        srmp.masks_at(0.8)
    with pytest.raises(GcnshrinkError, match="trains for one rate"):
        create_method("srmp", PruneSpec((0.5, 0.9)))
    _, mrmp = attached("mrmp", (0.5, 0.9))
    assert mrmp.serves(0.123) and mrmp.masks_at(0.123)


@pytest.mark.parametrize("sampling", ["cycle", "weighted", "random", "interval"])
def test_rate_sampling_is_deterministic_and_in_range(sampling):
    rates = (0.5, 0.9, 0.99)
    seen = []
    for _ in range(2):
        _, pruner = attached("mrmp", rates, sampling=sampling, distill="none")
        drawn = []
        for step in range(30):
            pruner.on_step(step / 29)
            drawn.append(pruner.current_rate)
        seen.append(drawn)
    assert seen[0] == seen[1]
    assert all(0.5 <= r <= 0.99 for r in seen[0])
    if sampling == "cycle":
        assert seen[0][:6] == [0.5, 0.9, 0.99, 0.5, 0.9, 0.99]
    elif sampling == "weighted":  # frequencies ∝ −ln(1 − r): 0.69, 2.30, 4.61
        assert seen[0].count(0.99) > seen[0].count(0.9) > seen[0].count(0.5) > 0
    elif sampling == "random":
        assert set(seen[0]) == set(rates)
    else:
        assert len(set(seen[0])) == 30


@pytest.mark.parametrize("sampling", ["cycle", "weighted"])
def test_sandwich_labelled_pass_takes_the_lower_rates_in_turn(sampling):
    """--distill sandwich: the labelled pass goes through the trained rates but the highest, in
    turn (cycle) or in turn with frequencies ∝ −ln(1 − r) (weighted: 0.69, 2.30, 3.00)."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.95, 0.99), sampling=sampling)
    drawn = []
    for step in range(300):
        pruner.on_step(step / 299)
        drawn.append(pruner.current_rate)
    counts = [drawn.count(r) for r in (0.5, 0.9, 0.95)]
    assert sum(counts) == 300
    if sampling == "cycle":
        assert drawn[:6] == [0.5, 0.9, 0.95, 0.5, 0.9, 0.95]
    else:
        expected = [300 * w / 5.991 for w in (0.693, 2.303, 2.996)]
        assert all(abs(c - e) <= 1 for c, e in zip(counts, expected, strict=True))


def test_sandwich_distils_the_step_network_into_sparser_ones(tiny_data):
    """distill=sandwich (mrmp's default): each step trains the lower trained rates in turn with
    labels and distils its logits into one sparse end (the highest rate and the reach end in
    turn) and one rate between."""
    model, pruner = attached("mrmp", (0.5, 0.9, 0.99), tiny_gcn(num_classes=tiny_data.num_classes))
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]
    ends = []
    for step in range(4):
        pruner.on_step(step / 3)
        assert pruner.current_rate == (0.5, 0.9)[step % 2]
        students = pruner.student_rates()
        assert len(students) == 2 and 0.9 <= students[1] <= 0.995  # --reach 2 by default
        ends.append(students[0])
        logits = model(x)
        kl_only = float(pruner.kl().detach())
        total = pruner.loss()
        assert float(total.detach()) > kl_only  # the distillation terms
        assert pruner.controller.q == pruner.band(pruner.current_rate)  # restored
        (torch.nn.functional.cross_entropy(logits, y) + total).backward()
    model.eval()
    with torch.no_grad():  # evaluation forward passes are not captured
        model(x)
    assert pruner._captured is None
    assert ends == [pytest.approx(0.995), 0.99] * 2  # on_step counts the step first


@pytest.mark.parametrize(("weight", "edge"), [(0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.5, 0.25)])
def test_students_fit_the_labels_with_their_weight(tiny_data, weight, edge):
    """--student-labels w: each distilled student's term is (1 - w) * its distillation from the
    step's network + w * its cross-entropy with the step's labels (on_labels, which the training
    loop calls after on_step); a loop that never passes labels gets the distillation alone.
    --reach-student e: the student at the end of the --reach range enters times e."""
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]

    def terms(labels: bool):
        torch.manual_seed(0)
        model, pruner = attached(
            "mrmp", (0.5, 0.9, 0.99), tiny_gcn(num_classes=tiny_data.num_classes),
            student_labels=weight, reach_student=edge, ends="both",
        )  # fmt: skip
        for module in model.modules():  # the passes below recompute the students' exactly
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        pruner.on_step(0.4)
        if labels:
            pruner.on_labels(y)
        teacher = torch.softmax(model(x), dim=-1).detach()
        kl = pruner.kl()
        total = pruner.loss()
        kd, ce = [], []
        with torch.no_grad():
            for rate in pruner.student_rates():
                pruner.controller.q = pruner.band(rate)
                pruner.controller.bridge = pruner.bridge_band(rate)
                student = torch.log_softmax(model(x), dim=-1)
                kd.append(float((teacher * (torch.log(teacher) - student)).sum(-1).mean()))
                ce.append(float(torch.nn.functional.nll_loss(student, y)))
        return float((total - kl).detach()), kd, ce

    scale = [1.0, edge, 1.0] if edge else [1.0, 1.0]  # the highest, the reach end, the random
    with_labels, kd, ce = terms(True)
    assert len(kd) == len(scale)
    wanted = sum(s * ((1 - weight) * d + weight * c) for s, d, c in zip(scale, kd, ce, strict=True))
    assert with_labels == pytest.approx(wanted, rel=1e-4, abs=1e-5)
    without, kd_again, _ = terms(False)
    distilled = sum(s * d for s, d in zip(scale, kd_again, strict=True))
    assert without == pytest.approx(distilled, rel=1e-4, abs=1e-5)
    assert kd == kd_again


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_bad_student_label_weight_is_refused(weight):
    with pytest.raises(GcnshrinkError, match="--student-labels must be a number from 0 to 1"):
        attached("mrmp", (0.5, 0.9), student_labels=weight)


def test_sandwich_with_every_rate_labelled():
    """--labelled all: the labelled pass takes every trained rate in turn, the highest included,
    and a step at the highest distils only into the reach end and the random rate (not into
    itself)."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.99), labelled="all", ends="both")
    for step in range(6):
        pruner.on_step(step / 5)
        assert pruner.current_rate == (0.5, 0.9, 0.99)[step % 3]
        students = pruner.student_rates()
        if pruner.current_rate == 0.99:
            assert len(students) == 2 and students[0] == pytest.approx(0.995)
            assert 0.5 <= students[1] <= 0.995
            assert pruner.student_weights()[0] == (students[0], 1.0)
        else:
            assert students[0] == 0.99 and len(students) == 3


def test_sandwich_random_student_between_the_two_highest_rates():
    """--between top: the random student's rate lies between the two highest trained rates."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.99), between="top", reach=1.0)
    drawn = []
    for step in range(40):
        pruner.on_step(step / 39)
        drawn.append(pruner.student_rates()[-1])
    assert all(0.9 <= r <= 0.99 for r in drawn)
    assert len(set(drawn)) == 40  # a new rate every step


@pytest.mark.parametrize("reach", [1.0, 2.0, 4.0])
def test_sandwich_random_student_reaches_past_the_highest_rate(reach):
    """--reach R: the random student's rate goes from the second highest trained rate up to the
    rate keeping 1/R of the highest rate's weights (0.99 -> 0.995 at R = 2), log-uniformly."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.99), reach=reach)
    top = 1.0 - 0.01 / reach
    drawn = []
    for step in range(200):
        pruner.on_step(step / 199)
        drawn.append(pruner.student_rates()[-1])
    assert all(0.9 <= r <= top + 1e-12 for r in drawn)
    assert max(drawn) > 1.0 - 0.0105 / reach  # the whole range is drawn
    beyond = sum(r > 0.99 for r in drawn) / len(drawn)
    expected = math.log(reach) / math.log(0.1 * reach / 0.01)  # log-uniform in kept fraction
    assert abs(beyond - expected) < 0.1


@pytest.mark.parametrize("projected", [False, True])
def test_students_past_the_trained_rates_train_the_masks_extracted_there(tiny_data, projected):
    """--projected-students: a random student past the highest trained rate runs its forward pass
    with the masks an extraction at its rate gives (the consistent projection), and the gradient
    still reaches the latent weights; without it, with the magnitude band-stop."""
    model, pruner = attached(
        "mrmp", (0.5, 0.9), tiny_gcn(num_classes=tiny_data.num_classes),
        projected_students=projected, reach=10.0,
    )  # fmt: skip
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]
    seen = []

    def record(module, inputs):
        if not pruner._capturing and module.training:  # the students' forward passes
            seen.append({n: getattr(*split_attr(model, n)).detach() != 0 for n in pruner.latent()})

    model.register_forward_pre_hook(record)
    checked = differ = 0
    for step in range(12):
        pruner.on_step(step / 11)
        seen.clear()
        students = pruner.student_rates()
        logits = model(x)
        total = pruner.loss()
        assert pruner.controller.fixed is None  # restored after the students
        (torch.nn.functional.cross_entropy(logits, y) + total).backward()
        assert all(w.grad is not None for w in pruner.latent().values())
        for rate, masks in zip(students, seen, strict=True):
            if rate <= 0.9:
                continue
            checked += 1
            with torch.no_grad():
                extracted = pruner.compute_masks(rate)
                magnitude = super(type(pruner), pruner).compute_masks(rate)
            expected = extracted if projected else magnitude
            assert all(torch.equal(masks[n], expected[n]) for n in masks), rate
            differ += not all(torch.equal(extracted[n], magnitude[n]) for n in masks)
        model.zero_grad()
    assert checked >= 3 and differ >= 1  # the projection moved some student's masks


@pytest.mark.parametrize("reach", [0.5, float("nan"), float("inf")])
def test_bad_reach_is_refused(reach):
    with pytest.raises(GcnshrinkError, match="--reach must be a finite number >= 1"):
        create_method("mrmp", PruneSpec((0.5, 0.9)), {"reach": reach})


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf")])
def test_bad_reach_student_weight_is_refused(weight):
    with pytest.raises(GcnshrinkError, match="--reach-student must be a finite number >= 0"):
        create_method("mrmp", PruneSpec((0.5, 0.9)), {"reach_student": weight})


def test_more_random_students_each_get_their_own_rate():
    """--random-students 3: three random students a step, each at its own rate in the range."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.99), random_students=3, ends="both")
    pruner.on_step(0.0)
    students = pruner.student_rates()
    assert students[:2] == [0.99, pytest.approx(0.995)]  # the highest, the reach end
    assert len(students) == 5 and len(set(students[2:])) == 3
    assert all(0.9 <= r <= 0.995 for r in students[2:])
    for bad in (0, 1.5, True):
        with pytest.raises(GcnshrinkError, match="--random-students must be"):
            create_method("mrmp", PruneSpec((0.5, 0.9)), {"random_students": bad})


def test_averaging_is_mrmps_default_and_srmps_option():
    """--average N reaches the selection (ValidationSelection asks the method); 1 turns it off."""
    assert attached("mrmp", (0.5, 0.9))[1].averaged_epochs() == 5
    assert attached("srmp", (0.9,))[1].averaged_epochs() == 1
    assert attached("srmp", (0.9,), average=3)[1].averaged_epochs() == 3
    for bad in (0, -2, 1.5, True):
        with pytest.raises(GcnshrinkError, match="--average must be"):
            create_method("mrmp", PruneSpec((0.5, 0.9)), {"average": bad})


def test_options_are_checked():
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(GcnshrinkError, match="--kl-weight must be a finite number >= 0"):
            create_method("srmp", PruneSpec((0.9,)), {"kl_weight": bad})
    with pytest.raises(GcnshrinkError, match="--prior must be one of"):
        create_method("srmp", PruneSpec((0.9,)), {"prior": "cauchy"})
    with pytest.raises(GcnshrinkError, match="--sampling applies to mrmp only"):
        create_method("srmp", PruneSpec((0.9,)), {"sampling": "cycle"})


def test_state_refuses_another_prior_and_an_empty_state():
    _, laplace = attached("mrmp", (0.5, 0.9))
    _, gaussian = attached("mrmp", (0.5, 0.9), prior="gaussian")
    with pytest.raises(GcnshrinkError, match="prior is laplace, not gaussian"):
        gaussian.load_state_dict(laplace.state_dict())
    with pytest.raises(GcnshrinkError, match="holds no prior"):
        gaussian.load_state_dict({})


@pytest.mark.parametrize("reach", [1.0, 2.0])
def test_mrmp_selects_its_epoch_over_the_range_it_serves(reach):
    """The validation score of an mrmp epoch covers the trained rates, the log-midpoint (in kept
    fraction) of each pair of neighbours and the end of the --reach range; srmp's is its rate."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.99), reach=reach)
    middles = [1 - math.sqrt(0.5 * 0.1), 1 - math.sqrt(0.1 * 0.01)]
    expected = sorted([0.5, 0.9, 0.99, *middles, *([1 - 0.01 / reach] if reach > 1 else [])])
    assert pruner.selection_rates() == pytest.approx(expected)
    _, single = attached("srmp", (0.9,))
    assert single.selection_rates() == (0.9,)
    _, one_rate = attached("mrmp", (0.9,), reach=reach)  # nothing is drawn past it
    assert one_rate.selection_rates() == (0.9,)
    _, undistilled = attached("mrmp", (0.5, 0.99), reach=reach, distill="none")
    assert undistilled.selection_rates() == pytest.approx((0.5, 1 - math.sqrt(0.5 * 0.01), 0.99))


def test_selected_epoch_is_scored_over_the_selection_rates(tiny_data):
    """fit keeps the epoch with the best mean validation accuracy over selection_rates() (each
    network as extracted: the one between the trained rates bridged); the per-rate record and the
    selected masks are those of the trained rates."""
    model = tiny_gcn(num_classes=tiny_data.num_classes)
    pruner = create_method("mrmp", PruneSpec((0.5, 0.9)), {"reach": 2.0})
    pruner.attach(model.train(), model.unit_graph())
    config = TrainConfig(epochs=2, batch_size=32, lr=0.01, seed=0, progress=False)
    result = fit(model, tiny_data, config, pruner)
    assert set(result.val_accuracy_by_rate) == set(result.masks) == {0.5, 0.9}
    scored = []
    for rate in pruner.selection_rates():
        with delivering(result.model, pruner.masks_at(rate), pruner.scales_at(rate)):
            val = evaluate(result.model, tiny_data.x_val, tiny_data.y_val, tiny_data.num_classes)
        scored.append(val["accuracy"])
        if rate in result.masks:
            assert val["accuracy"] == pytest.approx(result.val_accuracy_by_rate[rate])
    assert len(scored) == 4  # 0.5, 0.9, their middle and the reach end 0.95
    assert result.best_val_accuracy == pytest.approx(sum(scored) / len(scored))


@pytest.mark.parametrize(("score_from", "first"), [(0.5, 2), (0.0, 1), (0.6, 3)])
def test_mrmp_scores_epochs_only_from_score_from_on(tiny_data, score_from, first):
    """--score-from f: the epochs before f x the fine-tune are not scored on validation and never
    kept; the later ones are, and the kept one is the best of them."""
    model = tiny_gcn(num_classes=tiny_data.num_classes)
    options = {"score_from": score_from, "average": 1}
    pruner = create_method("mrmp", PruneSpec((0.5, 0.9)), options)
    pruner.attach(model.train(), model.unit_graph())
    config = TrainConfig(epochs=4, batch_size=32, lr=0.01, seed=0, progress=False)
    result = fit(model, tiny_data, config, pruner)
    scored = {
        r["epoch"]: r["val_accuracy"] for r in result.history if r["val_accuracy"] is not None
    }
    assert sorted(scored) == list(range(first, 5))
    assert result.best_epoch >= first
    assert result.best_val_accuracy == max(scored.values())


def test_score_from_is_mrmps_and_checked():
    assert attached("mrmp", (0.5, 0.9))[1].selection_start() == 0.5
    assert attached("srmp", (0.9,))[1].selection_start() == 0.0
    for bad in (-0.1, 1.0, 2.0, float("nan")):
        with pytest.raises(GcnshrinkError, match="--score-from must be"):
            create_method("mrmp", PruneSpec((0.5, 0.9)), {"score_from": bad})


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("kl", ["histogram", "moments"])
def test_kl_term_decreases_during_training(tiny_data, kl):
    model = tiny_gcn(num_classes=tiny_data.num_classes)
    # a tensor far from the prior: the moment estimator only sees the scale, so halve it
    pruner = create_method("srmp", PruneSpec((0.9,)), {"kl": kl, "kl_weight": 10.0})
    pruner.attach(model.train(), model.unit_graph())
    with torch.no_grad():
        for w in pruner.latent().values():
            w.mul_(0.5)
        before = float(pruner.kl())
    config = TrainConfig(epochs=2, batch_size=32, lr=0.01, seed=0, progress=False)
    fit(model, tiny_data, config, pruner)
    with torch.no_grad():
        after = float(pruner.kl())
    assert after < 0.7 * before, (before, after)


@pytest.fixture(scope="module")
def multi_rate(trained_gcn, tiny_data):
    """A multi-rate mrmp checkpoint trained for 0.5 and 0.9 on the tiny data."""
    return api.prune(
        trained_gcn[0], tiny_data, method="mrmp", rates=[0.5, 0.9], epochs=2, batch_size=32,
        progress=False,
    )  # fmt: skip


def test_extracted_model_at_a_trained_rate_is_the_one_evaluated_in_training(multi_rate, tiny_data):
    ckpt = multi_rate.checkpoint
    record = ckpt.pruning
    assert record["multi_rate"] and record["rates"] == [0.5, 0.9]
    assert set(ckpt.method_state) >= {"prior", "scales"}
    for rate in (0.5, 0.9):
        extracted = api.extract(ckpt, rate)
        val = evaluate(extracted.model, tiny_data.x_val, tiny_data.y_val, tiny_data.num_classes)
        assert val["accuracy"] == record["val_accuracy_by_rate"][f"{rate:g}"]
        assert extracted.summary["realized_rate"] == pytest.approx(rate, abs=1e-4)


def test_extracted_masks_and_logits_are_those_selected_in_training(trained_gcn, tiny_data):
    """fit() keeps, per trained rate, the masks it evaluated on validation; a multi-rate checkpoint
    of the latent weights extracts exactly those masks and the same logits."""
    dense = load_checkpoint(trained_gcn[0])
    model = dense.build_model().train()
    pruner = create_method("mrmp", PruneSpec((0.5, 0.9)), seed=0)
    pruner.attach(model, model.unit_graph())
    config = TrainConfig(epochs=2, batch_size=32, seed=0, progress=False)
    result = fit(model, tiny_data, config, pruner)
    logits = {}
    for rate in (0.5, 0.9):
        with delivering(result.model, result.masks[rate]), torch.no_grad():
            logits[rate] = result.model.eval()(tiny_data.x_val)
    remove_masks(result.model)
    record = {
        "method": "mrmp", "multi_rate": True, "rates": [0.5, 0.9], "scope": "global",
        "exclude": [], "options": pruner.describe(),
    }  # fmt: skip
    multi = Checkpoint.from_model(
        result.model, dense.class_names, {}, pruning=record, method_state=pruner.state_dict()
    )
    for rate in (0.5, 0.9):
        extracted = api.extract(multi, rate)
        for name, mask in result.masks[rate].items():
            assert torch.equal(extracted.checkpoint.masks[name], mask), name
        with torch.no_grad():
            assert torch.equal(extracted.model(tiny_data.x_val), logits[rate])


def test_multi_rate_checkpoint_round_trips_and_extraction_is_deterministic(multi_rate, tmp_path):
    path = save_checkpoint(multi_rate.checkpoint, tmp_path / "multi.pt")
    loaded = load_checkpoint(path)
    assert loaded.pruning == multi_rate.checkpoint.pruning
    assert loaded.method_state == multi_rate.checkpoint.method_state
    for rate in (0.5, 0.73, 0.9, 0.97):
        a = api.extract(multi_rate.checkpoint, rate).checkpoint
        b = api.extract(path, rate).checkpoint
        assert a.state_dict.keys() == b.state_dict.keys()
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_extraction_past_the_trained_rates_is_consistent_and_old_checkpoints_keep_theirs(
    multi_rate,
):
    """Past the highest trained rate the extraction is the exact consistent projection of the
    magnitude masks: exactly the budget, no weight on a unit cut off from the input or the output,
    where the magnitude masks alone have such weights; at and below the trained rates nothing
    changes. A checkpoint written before --beyond existed (its options lack it) extracts with the
    magnitude masks, as it did."""
    ckpt = multi_rate.checkpoint
    legacy_options = {k: v for k, v in ckpt.pruning["options"].items() if k != "beyond"}
    legacy = Checkpoint.from_model(
        ckpt.build_model(), ckpt.class_names, ckpt.provenance,
        pruning={**ckpt.pruning, "options": legacy_options}, method_state=ckpt.method_state,
    )  # fmt: skip
    graph = ckpt.build_model().unit_graph()
    for rate in (0.5, 0.9, 0.97, 0.995):
        new, old = api.extract(ckpt, rate), api.extract(legacy, rate)
        assert new.summary["realized_rate"] == old.summary["realized_rate"]
        assert new.summary["realized_rate"] == pytest.approx(rate, abs=1e-4)
        new_masks, old_masks = new.checkpoint.masks, old.checkpoint.masks
        same = all(torch.equal(new_masks[k], old_masks[k]) for k in new_masks)
        if rate <= 0.9:
            assert same, rate
        else:
            assert topology_summary(graph, new_masks)["inconsistent_connections"] == 0, rate
            if topology_summary(graph, old_masks)["inconsistent_connections"]:
                assert not same, rate
    at_extreme = topology_summary(graph, api.extract(legacy, 0.995).checkpoint.masks)
    assert at_extreme["inconsistent_connections"] > 0  # what the projection is there for


def with_options(ckpt: Checkpoint, **changes) -> Checkpoint:
    """The same multi-rate checkpoint with its recorded options changed (None: removed, as in a
    checkpoint written before the option existed)."""
    options = {k: v for k, v in {**ckpt.pruning["options"], **changes}.items() if v is not None}
    return Checkpoint.from_model(
        ckpt.build_model(), ckpt.class_names, ckpt.provenance,
        pruning={**ckpt.pruning, "options": options}, method_state=ckpt.method_state,
    )  # fmt: skip


def test_bridged_extraction_scales_what_the_next_trained_rate_removes(multi_rate, tiny_data):
    """--bridge scaled (the default): between two trained rates the extraction keeps the same
    weights as without it (the rate exactly), those of the next higher trained rate's network as
    they are and the others times alpha, log-linear in kept fraction (0 at the higher rate, 1 at
    the lower); at the trained rates and past them nothing changes. A checkpoint written before
    --bridge existed (its options lack it) extracts with every kept weight whole, as it did."""
    ckpt = multi_rate.checkpoint
    assert ckpt.pruning["options"]["bridge"] == "scaled"
    plain, legacy = with_options(ckpt, bridge="none"), with_options(ckpt, bridge=None)
    high = api.extract(ckpt, 0.9).checkpoint
    for rate in (0.5, 0.6, 0.77, 0.88, 0.9, 0.97):
        bridged, whole = api.extract(ckpt, rate), api.extract(plain, rate)
        old = api.extract(legacy, rate).checkpoint
        assert bridged.summary["realized_rate"] == whole.summary["realized_rate"]
        assert bridged.summary["realized_rate"] == pytest.approx(rate, abs=1e-4)
        alpha = math.log((1 - rate) / 0.1) / math.log(0.5 / 0.1) if 0.5 < rate < 0.9 else 1.0
        scaled = 0
        for name, mask in whole.checkpoint.masks.items():
            assert torch.equal(bridged.checkpoint.masks[name], mask)
            assert torch.equal(old.state_dict[name], whole.checkpoint.state_dict[name])
            got, full = bridged.checkpoint.state_dict[name], whole.checkpoint.state_dict[name]
            extra = mask & ~high.masks[name]
            assert torch.equal(got[~extra], full[~extra])
            assert torch.allclose(got[extra], alpha * full[extra], rtol=1e-6, atol=0)
            scaled += int(extra.sum()) if alpha < 1 else 0
        assert (scaled > 0) == (0.5 < rate < 0.9), rate


@pytest.mark.parametrize("students", [False, True])
def test_bridged_network_is_the_one_scored_between_the_rates(multi_rate, tiny_data, students):
    """Between two trained rates, what validation scores during the fine-tune (``delivering``
    with the method's scales) is the extracted network; what a training pass at that rate computes
    is that network with --bridge-students, the unscaled one without."""
    ckpt = multi_rate.checkpoint
    model = ckpt.build_model().train()
    options = {k: v for k, v in ckpt.pruning["options"].items() if k != "method"}
    options["bridge_students"] = students
    pruner = create_method("mrmp", PruneSpec((0.5, 0.9)), options, seed=0)
    pruner.attach(model, model.unit_graph())
    pruner.load_state_dict(ckpt.method_state)
    plain = with_options(ckpt, bridge="none")
    x = tiny_data.x_val
    for rate in (0.62, 0.776, 0.85):
        with torch.no_grad():
            expected = api.extract(ckpt, rate).model.eval()(x)
            unscaled = api.extract(plain, rate).model.eval()(x)
            with delivering(model, pruner.masks_at(rate), pruner.scales_at(rate)):
                scored = model.eval()(x)
            pruner.controller.q = pruner.band(rate)
            pruner.controller.bridge = pruner.bridge_band(rate)
            trained = model.eval()(x)
        assert pruner.bridge_at(rate)[0] == 0.9 and 0 < pruner.bridge_at(rate)[1] < 1
        assert torch.equal(scored, expected), rate
        assert not torch.allclose(expected, unscaled), rate
        wanted = expected if students else unscaled
        assert torch.allclose(trained, wanted, rtol=1e-5, atol=1e-6), rate


def test_srmp_prunes_to_the_exact_rate(trained_gcn, tiny_data):
    outcome = api.prune(
        trained_gcn[0], tiny_data, method="srmp", rate=0.9, epochs=1, batch_size=32,
        progress=False,
    )  # fmt: skip
    assert outcome.summary["realized_rate"] == pytest.approx(0.9, abs=1e-4)
    assert outcome.summary["options"]["method"] == "srmp"
    model = outcome.model
    with delivering(model, {}):
        assert not any("parametrizations" in k for k in model.state_dict())


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def multi_rate_file(multi_rate, tmp_path_factory):
    return save_checkpoint(multi_rate.checkpoint, tmp_path_factory.mktemp("mrmp") / "multi.pt")


def test_inspect_and_eval_know_a_multi_rate_checkpoint(cli, multi_rate_file, tiny_spec):
    shown = cli("inspect", multi_rate_file)
    assert shown.exit_code == 0, shown.output
    assert "multi-rate checkpoint" in shown.stdout and "0.5, 0.9" in shown.stdout
    facts = json.loads(cli("inspect", multi_rate_file, "--json").stdout)
    assert facts["multi_rate"] and facts["trained_rates"] == [0.5, 0.9]
    assert facts["method"] == "mrmp"
    result = cli("eval", multi_rate_file, "--data", tiny_spec, "--rates", "0.5,0.8", "--json")
    assert result.exit_code == 0, result.output
    by_rate = json.loads(result.stdout)["by_rate"]
    assert [r["rate"] for r in by_rate] == [0.5, 0.8]
    assert by_rate[1]["realized_rate"] == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize(
    "command",
    [
        ("eval", "--data", TINY),
        ("compact", "--data", TINY, "-o", "OUT/small.pt"),
        ("export", "--data", TINY, "-o", "OUT/x"),
        ("gate", "--max-bytes", "10MB"),
    ],
    ids=["eval", "compact", "export", "gate"],
)
def test_single_model_commands_refuse_a_multi_rate_checkpoint(
    cli, multi_rate_file, tmp_path, command
):
    args = [a.replace("OUT", str(tmp_path)) for a in command]
    result = cli(args[0], multi_rate_file, *args[1:])
    assert result.exit_code == 2, result.output
    assert "multi-rate checkpoint" in result.stderr
    assert f"gcnshrink extract {multi_rate_file} --rate R" in result.stderr.replace("\n", " ")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "rates, message",
    [
        ("", "--rates names no value"),
        ("0.5,,0.9", "has an empty entry"),
        ("0.5,abc", "--rates must be a comma-separated list of numbers"),
        ("0.9,0.9", "--rates lists 0.9 twice"),
        ("0.5,1.5", "each rate of --rates must be a number strictly between 0 and 1"),
        ("0.5,0.9999999", "rate 0.9999999 keeps 0 of"),
    ],
)
def test_extract_refuses_a_bad_rate_list_and_writes_nothing(
    cli, multi_rate_file, tmp_path, rates, message
):
    """``--rates ""`` used to succeed having written nothing; ``0.5,1.5`` wrote 0.5's file;
    0.9999999 kept no weight at all and succeeded (prune refuses such a rate)."""
    result = cli("extract", multi_rate_file, "--rates", rates, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


EDITED_RECORDS = {
    "rates not numbers": ("rates", "abc"),
    "rate out of range": ("rates", [2.0]),
    "no rates": ("rates", []),
    "unknown method": ("method", "nope"),
    "another method's options": ("method", "ctf"),
    "options not a table": ("options", [1, 2]),
    "bad option value": ("options", {"kl_weight": -5.0}),
    "scope": ("scope", "nope"),
    "exclude": ("exclude", 5),
}


@pytest.mark.parametrize("case", list(EDITED_RECORDS))
def test_an_edited_multi_rate_record_is_one_line_that_blames_the_file(
    cli, multi_rate, tmp_path, case
):
    """inspect printed a traceback for rates that were not numbers; extract blamed flags the user
    never gave (``--kl-weight must be ...``)."""
    import copy

    field, value = EDITED_RECORDS[case]
    ckpt = copy.deepcopy(multi_rate.checkpoint)
    ckpt.pruning[field] = value
    path = save_checkpoint(ckpt, tmp_path / "edited.pt")
    result = cli("extract", path, "--rate", "0.7", "-o", tmp_path / "out.pt")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: broken multi-rate checkpoint"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()
    shown = cli("inspect", path)  # what inspect reads of the record is checked; the rest shows
    assert shown.exit_code in (0, 2), shown.output
    if shown.exit_code == 2:
        assert shown.stderr.startswith("error: broken multi-rate checkpoint")
        assert len(shown.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------- sweep
def test_sweep_trains_mrmp_once_per_seed_and_draws_it_as_a_curve(
    trained_gcn, tmp_path, monkeypatch
):
    """``sweep --methods mrmp``: one mrmp fine-tune per seed (all the grid's rates), every cell
    extracted from it at its own rate, and the report's plots draw mrmp as one line through its
    rates, like the per-rate methods."""
    import gcnshrink.sweep as sweep_module
    from gcnshrink.measure import DEPLOYABLE_KEYS
    from gcnshrink.report import _points_by_method
    from gcnshrink.results import load_results

    calls = []
    real_prune = sweep_module.prune

    def counting_prune(*args, **kwargs):
        calls.append((kwargs["method"], kwargs.get("rate"), kwargs.get("rates"), kwargs["seed"]))
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "prune", counting_prune)

    def light_measure(model, data, calibration):
        """What the plot needs, without compaction, ONNX export and latency (tested with the
        sweep itself): test accuracy and the nonzero weights."""
        metrics = evaluate(model, data.x_test, data.y_test, data.num_classes)
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        return {
            **dict.fromkeys(DEPLOYABLE_KEYS, 1),
            "accuracy": metrics["accuracy"],
            "mean_class_accuracy": metrics["mean_class_accuracy"],
            "params": nonzero,
            "nonzero": nonzero,
            "compaction_relative_diff": 0.0,
        }

    monkeypatch.setattr(sweep_module, "measure_deployable", light_measure)
    rates = [0.5, 0.9]
    paths = sweep_module.run_sweep(
        trained_gcn[0], "synthetic:hands?train=120&test=60", tmp_path, methods=["mrmp"],
        rates=rates, epochs=1, seeds=[0, 1], progress=False,
    )  # fmt: skip
    assert sorted(c[3] for c in calls) == [0, 1]  # one fine-tune per seed
    assert all(c[2] == rates for c in calls)  # for every rate of the grid at once
    for seed in (0, 1):
        assert (tmp_path / "cells" / f"mrmp-multi-s{seed}.pt").is_file()
    records = json.loads(paths["results"].read_text())["records"]
    mrmp = [r for r in records if r["method"] == "mrmp"]
    assert sorted((r["rate"], r["seed"]) for r in mrmp) == [(r, s) for r in rates for s in (0, 1)]
    for r in mrmp:
        assert r["realized_rate"] == pytest.approx(r["rate"], abs=1e-3)
    # both seeds' cells at one rate share that seed's one fine-tune time
    by_seed = {s: {r["finetune_seconds"] for r in mrmp if r["seed"] == s} for s in (0, 1)}
    assert all(len(times) == 1 for times in by_seed.values()), by_seed
    (result_set,) = load_results([paths["results"]])
    curve = _points_by_method(result_set, "params")["mrmp"]
    assert len(curve) == len(rates)  # one point per rate (mean over seeds), drawn as one line
    assert (tmp_path / "accuracy_vs_params.png").stat().st_size > 0


@pytest.mark.parametrize("ends", ["alternate", "both"])
@pytest.mark.parametrize(("reach", "weight"), [(2.0, 1.0), (2.0, 0.25), (1.0, 1.0), (2.0, 0.0)])
def test_reach_student_trains_the_end_of_the_reach_range(reach, weight, ends):
    """--reach-student w (mrmp's default 1): sandwich steps also distil into the network at the
    end of the --reach range (0.995 for 0.99 at R = 2), its term times w; --ends alternate (the
    default) takes it in turn with the highest trained rate, one a step, --ends both every step.
    With --reach 1 that end is the highest rate, already a student; with w = 0 nothing is added."""
    _, pruner = attached("mrmp", (0.5, 0.9, 0.99), reach=reach, reach_student=weight, ends=ends)
    for step in range(6):
        pruner.on_step(step / 5)
        students, weights = pruner.student_rates(), [w for _, w in pruner.student_weights()]
        assert 0.9 <= students[-1] <= 0.995 and weights[-1] == 1.0  # the random student
        if not (reach > 1 and weight > 0):
            assert students[0] == 0.99 and weights == [1.0, 1.0]
        elif ends == "both":
            assert students[:2] == [0.99, pytest.approx(0.995)] and weights == [1.0, weight, 1.0]
        elif step % 2 == 0:  # on_step counts the step first: steps 1, 3, 5 take the reach end
            assert students[0] == pytest.approx(0.995) and weights == [weight, 1.0]
        else:
            assert students[0] == 0.99 and weights == [1.0, 1.0]
    defaults = create_method("mrmp", PruneSpec((0.5, 0.9))).options
    assert (defaults.reach_student, defaults.ends) == (1.0, "alternate")
